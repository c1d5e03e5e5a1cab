/**
 * Workload 5, memory with 10,000 rooms: each contender, in a fresh process of its own, starts against a replayed
 * initial sync of 10,000 joined rooms (~100 MB) until ready, collects garbage and waits for its RSS to settle;
 * the RSS and main-thread heap are reported, the RSS split into anonymous and file-backed memory (and Halcyon's
 * per-thread V8 heaps), and bytes per room from a second run with 1,000 rooms.
 * @module
 */
import { goalEntry, ratioOf, roundsVerdict, type Contender, type GoalEntry, type RatioEntry, type Workload } from '../report.ts';
import { fmt, summarize } from '../stats.ts';
import { cell, childContenders, runChild, startInitialSyncServer, type ChildContender, type ChildResult } from './client-child.ts';

const ROOMS = 10_000;
/** The second, smaller run: bytes per room = (RSS at ROOMS − RSS at BASE_ROOMS) / (ROOMS − BASE_ROOMS). */
const BASE_ROOMS = 1000;
/** Longest wait for the RSS to stop changing after ready (matrix-js-sdk keeps working for a while past PREPARED). */
const SETTLE_MAX_MS = 8_000;
/** Longest a child may take from spawn to its result (matrix-js-sdk needs ~30 s to be ready with 10,000 rooms). */
const CHILD_TIMEOUT_MS = 180_000;
/**
 * Rounds: a round of all contenders at both sizes takes ~1–1.5 min (matrix-js-sdk alone ~45 s on a busy machine),
 * so at most 2 by default and 1 with `--quick`, to stay within the few minutes a workload may take.
 */
const MAX_ROUNDS = 2;

/** What each contender keeps, which the ratios must be read with. */
const NOTE =
  "Not the same state kept: Halcyon keeps 1,000 rooms' state in memory (its default `maxRoomsInMemory`; the rest in SQLite), " +
  'matrix-bot-sdk keeps no room state at all, the floor every room\'s state events, matrix-js-sdk every room with its timeline.';

const LABEL: Record<string, string> = { floor: 'floor', halcyon: 'Halcyon', 'matrix-bot-sdk': 'matrix-bot-sdk', 'matrix-js-sdk': 'matrix-js-sdk' };

/** One contender's two runs in one round. */
interface Sample {
  contender: ChildContender;
  round: number;
  big: ChildResult;
  base: ChildResult;
  /** (RSS at ROOMS − RSS at BASE_ROOMS) / (ROOMS − BASE_ROOMS), bytes; NaN if either run failed. */
  bytesPerRoom: number;
}

/** Settled RSS and heap at 10,000 rooms, and bytes per room, of every contender. */
export const run: Workload = async (ctx) => {
  // E2EE costs are in the cold-start workload; here Halcyon runs as the peers do, without a crypto stack.
  const contenders = childContenders().filter((c) => c !== 'halcyon-e2ee');
  const rounds = ctx.quick ? 1 : Math.min(ctx.rounds, MAX_ROUNDS);
  const samples: Sample[] = [];
  const big = await startInitialSyncServer(ROOMS);
  try {
    const base = await startInitialSyncServer(BASE_ROOMS);
    try {
      for (let round = 0; round < rounds; round++) {
        const order = round % 2 === 0 ? contenders : [...contenders].reverse();
        for (const c of order) {
          const one = async (url: string): Promise<ChildResult> => {
            ctx.gc();
            return runChild({ contender: c, url, mode: 'memory', settleMaxMs: SETTLE_MAX_MS }, CHILD_TIMEOUT_MS);
          };
          const b = await one(big.server.url);
          const s = await one(base.server.url);
          const bytesPerRoom = b.ok && s.ok ? ((b.rssMb! - s.rssMb!) * 1e6) / (ROOMS - BASE_ROOMS) : NaN;
          samples.push({ contender: c, round, big: b, base: s, bytesPerRoom });
          const failed = [b, s].filter((r) => !r.ok);
          ctx.progress(
            failed.length
              ? `memory round ${round + 1}/${rounds} ${LABEL[c]}: FAILED: ${failed.map((r) => r.error).join('; ')}`
              : `memory round ${round + 1}/${rounds} ${LABEL[c]}: RSS ${fmt(b.rssMb!)} MB at ${fmt(ROOMS)} rooms${b.settled ? '' : ' (not settled)'}, ${fmt(s.rssMb!)} MB at ${fmt(BASE_ROOMS)}: ${fmt(bytesPerRoom)} B/room; heap ${fmt(b.heapUsedMb!)} MB; ready in ${fmt(b.readyMs)} ms`,
          );
        }
      }
    } finally {
      await base.server.stop();
    }
  } finally {
    await big.server.stop();
  }

  const of = (c: ChildContender) => samples.filter((s) => s.contender === c);
  const bigOk = (c: ChildContender) => of(c).filter((s) => s.big.ok);
  const at = (c: ChildContender, k: 'rssMb' | 'heapUsedMb' | 'peakRssMb' | 'readyMs') => summarize(bigOk(c).map((s) => s.big[k] ?? NaN).filter(Number.isFinite));
  const med = (c: ChildContender, f: (r: ChildResult) => number | undefined) => summarize(bigOk(c).map((s) => f(s.big) ?? NaN).filter(Number.isFinite)).median;
  const threads = (f: (t: NonNullable<ChildResult['threads']>) => number) => fmt(med('halcyon', (r) => (r.threads ? f(r.threads) : undefined)));
  const baseRss = (c: ChildContender) => summarize(of(c).filter((s) => s.base.ok).map((s) => s.base.rssMb!));
  const perRoom = (c: ChildContender) => summarize(of(c).map((s) => s.bytesPerRoom).filter(Number.isFinite));

  const ratios: RatioEntry[] = [];
  for (const other of contenders.filter((c): c is Contender & ChildContender => c !== 'halcyon')) {
    ratios.push({
      workload: 'memory',
      metric: `RSS, ${fmt(ROOMS)} rooms`,
      versus: other,
      ...ratioOf(bigOk('halcyon').map((s) => ({ round: s.round, value: s.big.rssMb! })), bigOk(other).map((s) => ({ round: s.round, value: s.big.rssMb! }))),
      better: 'lower',
      value: `${fmt(at('halcyon', 'rssMb').median)} MB`,
      note: NOTE,
    });
    ratios.push({
      workload: 'memory',
      metric: 'bytes per room',
      versus: other,
      ...ratioOf(of('halcyon').map((s) => ({ round: s.round, value: s.bytesPerRoom })), of(other).map((s) => ({ round: s.round, value: s.bytesPerRoom }))),
      better: 'lower',
      value: `${fmt(perRoom('halcyon').median)} B`,
      note: NOTE,
    });
  }

  const rss = at('halcyon', 'rssMb').median;
  const goals: GoalEntry[] = [
    goalEntry(
      `≤300 MB with ${fmt(ROOMS)} rooms`,
      `${fmt(rss)} MB RSS, settled after ready (median; rounds ${fmt(at('halcyon', 'rssMb').min)}–${fmt(at('halcyon', 'rssMb').max)}; peak ${fmt(at('halcyon', 'peakRssMb').median)} MB); ${fmt(perRoom('halcyon').median)} bytes per room`,
      roundsVerdict(bigOk('halcyon').map((s) => s.big.rssMb! <= 300)),
    ),
  ];

  const unsettled = samples.flatMap((s) => [s.big, s.base].filter((r) => r.ok && !r.settled).map((r) => `${LABEL[s.contender]} round ${s.round + 1} (${r === s.big ? fmt(ROOMS) : fmt(BASE_ROOMS)} rooms)`));
  const failed = samples.flatMap((s) => [s.big, s.base].filter((r) => !r.ok).map((r) => `round ${s.round + 1}: ${r.error}`));
  const markdown = [
    `Each contender runs in a fresh process of its own, as in the cold-start workload, against a replayed initial sync of ${fmt(ROOMS)} joined rooms (${fmt(big.bodyBytes / 1e6)} MB, the same room shape) until ready; then it collects garbage (\`global.gc()\` on the main thread; Halcyon's workers are separate isolates, left to their own GC) and samples the RSS every 250 ms until it moves less than 1 MB over a second (at most ${SETTLE_MAX_MS / 1000} s). "RSS" is that settled RSS of the whole process, "heap" the main thread's \`heapUsed\`, "peak" the process's peak RSS up to ready. Bytes per room = (RSS at ${fmt(ROOMS)} − RSS at ${fmt(BASE_ROOMS)} rooms, a second process per round) / ${fmt(ROOMS - BASE_ROOMS)}. Halcyon runs with encryption off like the peers, and keeps its default \`maxRoomsInMemory\` (1,000: the other rooms' state stays in SQLite); the floor keeps every room's parsed state events (and nothing else) in a Map; matrix-bot-sdk keeps no room state; matrix-js-sdk keeps Room objects with their timelines. RSS also counts memory freed after the initial sync was parsed that the allocator has not returned (compare the floor's heap with its RSS), so bytes per room is what a process costs per room known, not only what it retains. ${rounds} round${rounds === 1 ? '' : 's'}${ctx.quick ? ' (quick mode)' : ` (at most ${MAX_ROUNDS}: one round of all contenders takes ~1–1.5 min)`}, contenders alternating order; min / **median** / max.`,
    '',
    `| contender | RSS at ${fmt(ROOMS)} rooms (MB) | heap (MB) | peak (MB) | ready (ms) | RSS at ${fmt(BASE_ROOMS)} rooms (MB) | bytes per room |`,
    '|---|---|---|---|---|---|---|',
    ...contenders.map((c) => `| ${LABEL[c]} | ${cell(at(c, 'rssMb'))} | ${cell(at(c, 'heapUsedMb'))} | ${cell(at(c, 'peakRssMb'))} | ${cell(at(c, 'readyMs'))} | ${cell(baseRss(c))} | ${cell(perRoom(c))} |`),
    '',
    `Settled RSS at ${fmt(ROOMS)} rooms by kind (median, MB, from /proc): ${contenders.map((c) => `${LABEL[c]} ${fmt(med(c, (r) => r.rssAnonMb))} anonymous + ${fmt(med(c, (r) => r.rssFileMb))} file-backed`).join('; ')}. Anonymous memory holds the V8 heaps and the C allocator's arenas; file-backed, Node and the code loaded. Halcyon's V8 heaps (\`client.health().memory\`): main ${threads((t) => t.mainHeapMb)} MB committed (${threads((t) => t.mainUsedMb)} in use), the sync worker (with the cache) ${threads((t) => t.syncHeapMb)} MB (${threads((t) => t.syncUsedMb)} in use; ${threads((t) => t.syncExternalMb)} MB external).`,
    ...(unsettled.length ? ['', `RSS still moving after ${SETTLE_MAX_MS / 1000} s (taken as it stood): ${unsettled.join('; ')}.`] : []),
    ...(failed.length ? ['', `**Failed runs:** ${failed.join('; ')}.`] : []),
  ];

  return {
    id: 'memory',
    title: `5. Memory with ${fmt(ROOMS)} rooms`,
    ratios,
    goals,
    markdown,
    data: { rooms: ROOMS, baseRooms: BASE_ROOMS, bodyBytes: big.bodyBytes, settleMaxMs: SETTLE_MAX_MS, rounds, contenders, samples },
  };
};
