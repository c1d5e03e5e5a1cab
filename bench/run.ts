/**
 * The benchmark run (`npm run bench`): Halcyon against the raw single-thread floor, side by side, alternating
 * contenders within each round, every measurement repeated (5 rounds; `--quick`: 2 rounds, smaller inputs).
 *
 * A. Throughput on replayed `/sync` bodies (three shapes, 200k events each; `--quick`: 50k): events/s from the
 *    replay server's first `/sync` response to the last handler call, for the floor, Halcyon with a trivial
 *    handler, Halcyon with a handler that reads the content (lazy parse), and a JSON.parse-only rate of the
 *    same bodies (no HTTP); plus main-thread CPU per delivered event.
 * B. `/sync` cadence while a handler burns 500 ms of CPU per event, 20 events/s offered for 5 s (`--quick`: 3 s):
 *    the gap between each `/sync` response and the next `/sync` request, as the replay server saw them.
 * C. Decryption (bench/crypto.ts; 3 rounds of 3,000 encrypted events, `--quick`: 2 rounds of 2,000): events/s a Halcyon bot
 *    delivers from an encrypted room next to a raw `OlmMachine.decryptRoomEvent` loop on the same store type, and
 *    /sync cadence during a paced encrypted burst next to a plaintext one.
 *
 * Results go to bench/results/latest.json and bench/results/latest.md.
 *
 * Usage: node --import tsx bench/run.ts [--quick] [--rounds N] [--only throughput|cadence|crypto]
 *        [--crypto-events N] [--workloads 100x100,1x10k,10kx1] [--contenders LIST] [--offer-seconds S] [--max-queued N] [--out DIR]
 * (`--help` explains them.) To see where Halcyon's time goes, add `--cpu-prof --cpu-prof-dir=DIR` to node
 * and summarise with bench/profile-summary.ts; bench/breakdown.ts times each pipeline stage on one thread.
 * @module
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { cryptoBench, cryptoMarkdown, type CryptoResult } from './crypto.ts';
import { makeSyncBody } from './fixtures.ts';
import { runFloor } from './floor.ts';
import { type HandlerMode, runHalcyon } from './halcyon.ts';
import { startReplayServer, type ReplayServer } from './replay-server.ts';
import { burnCpu, clockOffset, fmt, now, percentile, processCpuMs, type Summary, summarize, threadCpuMs } from './stats.ts';

// ---------------------------------------------------------------- options

const USAGE = `usage: node --import tsx bench/run.ts [options]
  --quick                 2 rounds, 5 batches per throughput workload (50k events), 3 s cadence window
  --rounds N              rounds per measurement (default 5, crypto 3; 2 with --quick)
  --only PART             throughput | cadence | crypto (default: all three)
  --crypto-events N       encrypted events per crypto measurement (default 3000; 2000 with --quick)
  --workloads LIST        comma-separated subset of 100x100,1x10k,10kx1 (default: all)
  --contenders LIST       comma-separated subset of floor,halcyon-trivial,halcyon-content,json-parse,halcyon-baseline (throughput only)
  --baseline DIR          also run another build of Halcyon (its dist/ directory) with the trivial handler, e.g. one
                          without the event journal, and report this tree's build ÷ it
  --offer-seconds S       length of the cadence window (default 5; 3 with --quick)
  --max-queued N          diagnostic: pass maxQueuedEvents N to Halcyon's Client (default: the library default)
  --out DIR               where latest.json / latest.md go (default bench/results)`;

const { values: args } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    rounds: { type: 'string' },
    only: { type: 'string' },
    workloads: { type: 'string' },
    contenders: { type: 'string' },
    'offer-seconds': { type: 'string' },
    'max-queued': { type: 'string' },
    'crypto-events': { type: 'string' },
    baseline: { type: 'string' },
    out: { type: 'string' },
    help: { type: 'boolean', default: false },
  },
});
if (args.help) {
  console.log(USAGE);
  process.exit(0);
}
const QUICK = args.quick;
const ROUNDS = args.rounds !== undefined ? Number(args.rounds) : QUICK ? 2 : 5;
const BATCHES = QUICK ? 5 : 20;
const OFFER_MS = (args['offer-seconds'] !== undefined ? Number(args['offer-seconds']) : QUICK ? 3 : 5) * 1000;
const RELEASE_EVERY_MS = 50; // 20 events/s, one event per body
const BURN_MS = 500;
const OUT_DIR = args.out ?? join(import.meta.dirname, 'results');
const PARTS = args.only === undefined ? ['throughput', 'cadence', 'crypto'] : [args.only];
const CRYPTO_ROUNDS = args.rounds !== undefined ? ROUNDS : QUICK ? 2 : 3;
const CRYPTO_EVENTS = args['crypto-events'] !== undefined ? Number(args['crypto-events']) : QUICK ? 2000 : 3000;
if (!Number.isInteger(CRYPTO_EVENTS) || CRYPTO_EVENTS < 100) throw new Error(`--crypto-events must be an integer ≥ 100, not ${args['crypto-events']}`);
const MAX_QUEUED = args['max-queued'] !== undefined ? Number(args['max-queued']) : undefined;
if (MAX_QUEUED !== undefined && !(MAX_QUEUED > 0)) throw new Error(`bad --max-queued ${args['max-queued']}`);
if (!Number.isInteger(ROUNDS) || ROUNDS < 1) throw new Error(`--rounds must be a positive integer, not ${args.rounds}`);
if (!Number.isFinite(OFFER_MS) || OFFER_MS < RELEASE_EVERY_MS) throw new Error(`bad --offer-seconds ${args['offer-seconds']}`);
if (PARTS.some((p) => p !== 'throughput' && p !== 'cadence' && p !== 'crypto')) throw new Error(`--only must be throughput, cadence or crypto, not ${args.only}`);

interface Workload {
  id: string;
  rooms: number;
  perRoom: number;
}
const ALL_WORKLOADS: Workload[] = [
  { id: '100x100', rooms: 100, perRoom: 100 },
  { id: '1x10k', rooms: 1, perRoom: 10_000 },
  { id: '10kx1', rooms: 10_000, perRoom: 1 },
];
const wanted = args.workloads?.split(',').map((s) => s.trim());
const WORKLOADS = wanted ? ALL_WORKLOADS.filter((w) => wanted.includes(w.id)) : ALL_WORKLOADS;
if (wanted && WORKLOADS.length !== wanted.length) throw new Error(`unknown workload in --workloads ${args.workloads}`);

// A full GC between measurements, so one contender's garbage is not collected on another's time.
setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

const quietProgress = (line: string): void => void process.stdout.write(line + '\n');

// ---------------------------------------------------------------- A. throughput

type ThroughputContender = 'floor' | 'halcyon-trivial' | 'halcyon-content' | 'json-parse' | 'halcyon-baseline';
const ALL_THROUGHPUT_CONTENDERS: ThroughputContender[] = ['floor', 'halcyon-trivial', 'halcyon-content', 'json-parse', 'halcyon-baseline'];
const wantedContenders = args.contenders?.split(',').map((s) => s.trim());
// The baseline (another build, trivial handler) runs only when --baseline names its dist/.
const THROUGHPUT_CONTENDERS = (wantedContenders ? ALL_THROUGHPUT_CONTENDERS.filter((c) => wantedContenders.includes(c)) : ALL_THROUGHPUT_CONTENDERS).filter(
  (c) => c !== 'halcyon-baseline' || args.baseline !== undefined,
);
if (wantedContenders && THROUGHPUT_CONTENDERS.length !== wantedContenders.length) throw new Error(`unknown contender in --contenders ${args.contenders}`);

interface ThroughputSample {
  round: number;
  contender: ThroughputContender;
  events: number;
  messages?: number;
  reactions?: number;
  /** From the first /sync response (server clock, offset-corrected) to the last handler call; for json-parse, the parse loop. */
  seconds: number;
  eventsPerSec: number;
  /** Main-thread CPU (user+system) from the start of the run (runFloor's loop / client.run()) to the last handler call. */
  mainCpuMs?: number;
  mainCpuUsPerEvent?: number;
  /** Whole-process CPU (all threads) from the first to the last handler call, per event after body 0. */
  allThreadsCpuUsPerEvent?: number;
  /** Halcyon: client.run() to the first /sync response (worker start-up, whoami, filter upload). */
  startupMs?: number;
  stopMs?: number;
  problems?: string[];
  error?: string;
}

interface ThroughputResult {
  workload: Workload & { batches: number; events: number; bodyBytes: number; bytesPerEvent: number; messages: number; reactions: number };
  samples: ThroughputSample[];
  summary: Record<ThroughputContender, { eventsPerSec: Summary; mainCpuUsPerEvent?: Summary; allThreadsCpuUsPerEvent?: Summary }>;
  /** Halcyon ÷ floor: ratio of the medians, and min/median/max of the per-round ratios. */
  ratios: Record<'trivial' | 'content', { eventsPerSec: RatioSummary; mainCpuPerEvent: RatioSummary }>;
  /** This tree's build ÷ the `--baseline` build (trivial handlers), when one ran. */
  vsBaseline?: { eventsPerSec: RatioSummary; mainCpuPerEvent: RatioSummary };
}

interface RatioSummary {
  ofMedians: number;
  perRound: Summary;
}

async function measureFloor(server: ReplayServer, offsetMs: number, total: number, perBatch: number): Promise<ThroughputSample> {
  const before = (await server.stats()).syncRequests;
  let n = 0;
  let reactions = 0;
  let sink = 0;
  let lastAt = NaN;
  let procFirst = NaN;
  let procLast = NaN;
  const r = await runFloor(server.url, total, (ev: { type: string; sender: string; event_id: string }) => {
    sink += ev.sender.length + ev.event_id.length;
    if (ev.type === 'm.reaction') reactions++;
    if (++n === 1) procFirst = processCpuMs();
    if (n === total) {
      lastAt = now();
      procLast = processCpuMs();
    }
  });
  const st = await server.stats();
  const seconds = (lastAt - (st.responseTimes[before]! - offsetMs)) / 1000;
  if (sink === 0) throw new Error('unreachable');
  return {
    round: 0,
    contender: 'floor',
    events: r.events,
    messages: n - reactions,
    reactions,
    seconds,
    eventsPerSec: r.events / seconds,
    mainCpuMs: r.mainCpuMs,
    mainCpuUsPerEvent: (r.mainCpuMs * 1000) / r.events,
    allThreadsCpuUsPerEvent: ((procLast - procFirst) * 1000) / (total - perBatch),
  };
}

async function measureHalcyon(server: ReplayServer, offsetMs: number, total: number, perBatch: number, mode: HandlerMode, dist?: string): Promise<ThroughputSample> {
  const before = (await server.stats()).syncRequests;
  const h = await runHalcyon({ url: server.url, expectedEvents: total, mode, ...(MAX_QUEUED !== undefined ? { maxQueuedEvents: MAX_QUEUED } : {}), ...(dist ? { dist } : {}) });
  const st = await server.stats();
  if (st.syncRequests <= before) throw new Error('the replay server saw no /sync from Halcyon');
  const firstResponse = st.responseTimes[before]! - offsetMs;
  const seconds = (h.lastHandlerAt - firstResponse) / 1000;
  const s: ThroughputSample = {
    round: 0,
    contender: dist ? 'halcyon-baseline' : mode === 'trivial' ? 'halcyon-trivial' : 'halcyon-content',
    events: h.events,
    messages: h.messages,
    reactions: h.reactions,
    seconds,
    eventsPerSec: h.events / seconds,
    mainCpuMs: h.mainCpuMs,
    mainCpuUsPerEvent: (h.mainCpuMs * 1000) / h.events,
    allThreadsCpuUsPerEvent: (h.procCpuFirstToLastMs * 1000) / (total - perBatch),
    startupMs: firstResponse - h.startAt,
    stopMs: h.stopMs,
  };
  if (h.problems.length > 0) s.problems = h.problems;
  return s;
}

function measureParse(bodies: readonly string[], total: number, bytes: number): ThroughputSample & { mbPerSec: number } {
  const c0 = threadCpuMs();
  const t0 = performance.now();
  let events = 0;
  for (const b of bodies) {
    const join = (JSON.parse(b) as { rooms: { join: Record<string, { timeline: { events: unknown[] } }> } }).rooms.join;
    for (const roomId in join) events += join[roomId]!.timeline.events.length;
  }
  const seconds = (performance.now() - t0) / 1000;
  const cpu = threadCpuMs() - c0;
  if (events !== total) throw new Error(`JSON.parse pass counted ${events} of ${total} events`);
  return {
    round: 0,
    contender: 'json-parse',
    events,
    seconds,
    eventsPerSec: events / seconds,
    mainCpuMs: cpu,
    mainCpuUsPerEvent: (cpu * 1000) / events,
    mbPerSec: bytes / 1e6 / seconds,
  };
}

function ratio(h: ThroughputSample[], f: ThroughputSample[], key: 'eventsPerSec' | 'mainCpuUsPerEvent'): RatioSummary {
  const hv = h.map((s) => s[key]!).filter(Number.isFinite);
  const fv = f.map((s) => s[key]!).filter(Number.isFinite);
  const perRound: number[] = [];
  for (const s of h) {
    const p = f.find((x) => x.round === s.round);
    if (p && Number.isFinite(s[key]!) && Number.isFinite(p[key]!)) perRound.push(s[key]! / p[key]!);
  }
  return { ofMedians: percentile(hv, 50) / percentile(fv, 50), perRound: summarize(perRound) };
}

async function throughput(w: Workload): Promise<ThroughputResult> {
  const total = w.rooms * w.perRoom * BATCHES;
  const perBatch = w.rooms * w.perRoom;
  const tGen = performance.now();
  const bodies = Array.from({ length: BATCHES }, (_, batch) => makeSyncBody({ rooms: w.rooms, eventsPerRoom: w.perRoom, batch, seed: 42 }));
  const bytes = bodies.reduce((n, b) => n + Buffer.byteLength(b), 0);
  // What the floor and Halcyon must both deliver: every timeline event, split by type for a cross-check.
  let messages = 0;
  let reactions = 0;
  for (const b of bodies) {
    const join = (JSON.parse(b) as { rooms: { join: Record<string, { timeline: { events: Array<{ type: string }> } }> } }).rooms.join;
    for (const id in join) for (const ev of join[id]!.timeline.events) ev.type === 'm.reaction' ? reactions++ : messages++;
  }
  quietProgress(
    `[A ${w.id}] ${BATCHES} bodies × ${fmt(w.rooms)} rooms × ${fmt(w.perRoom)} events = ${fmt(total)} events ` +
      `(${fmt(messages)} messages, ${fmt(reactions)} reactions), ${fmt(bytes / 1e6, 1)} MB, ${fmt(bytes / total)} B/event; ` +
      `built in ${fmt((performance.now() - tGen) / 1000, 1)} s`,
  );
  const server = await startReplayServer({ bodies, longPollMs: 1000, keys: true });
  const samples: ThroughputSample[] = [];
  try {
    const { offsetMs, rttMs } = await clockOffset(server);
    quietProgress(`[A ${w.id}] replay server ${server.url}; clock offset ${fmt(offsetMs, 2)} ms (ping ${fmt(rttMs, 2)} ms)`);
    measureParse(bodies, total, bytes); // warm-up pass, not recorded
    for (let round = 1; round <= ROUNDS; round++) {
      // Alternate: each round starts with the next contender.
      const order = THROUGHPUT_CONTENDERS.map((_, i) => THROUGHPUT_CONTENDERS[(i + round - 1) % THROUGHPUT_CONTENDERS.length]!);
      for (const c of order) {
        gc();
        let s: ThroughputSample;
        try {
          s =
            c === 'floor' ? await measureFloor(server, offsetMs, total, perBatch)
            : c === 'json-parse' ? measureParse(bodies, total, bytes)
            : c === 'halcyon-baseline' ? await measureHalcyon(server, offsetMs, total, perBatch, 'trivial', args.baseline)
            : await measureHalcyon(server, offsetMs, total, perBatch, c === 'halcyon-trivial' ? 'trivial' : 'content');
        } catch (err) {
          s = { round, contender: c, events: 0, seconds: NaN, eventsPerSec: NaN, error: (err as Error).message };
        }
        s.round = round;
        samples.push(s);
        const mismatch =
          s.messages !== undefined && (s.messages !== messages || s.reactions !== reactions) ? ` COUNT MISMATCH (${s.messages}/${s.reactions})` : '';
        quietProgress(
          `[A ${w.id} r${round}/${ROUNDS}] ${c.padEnd(15)} ` +
            (s.error
              ? `FAILED: ${s.error}`
              : `${fmt(s.eventsPerSec).padStart(9)} events/s in ${fmt(s.seconds, 3)} s; main CPU ${fmt(s.mainCpuUsPerEvent!, 2)} µs/event` +
                (s.allThreadsCpuUsPerEvent !== undefined ? `; all threads ${fmt(s.allThreadsCpuUsPerEvent, 2)} µs/event` : '') +
                (s.startupMs !== undefined ? `; start-up ${fmt(s.startupMs)} ms, stop ${fmt(s.stopMs!)} ms` : '') +
                (s.problems ? `; PROBLEMS: ${s.problems.join(' | ')}` : '') +
                mismatch),
        );
      }
    }
  } finally {
    await server.stop();
  }

  const of = (c: ThroughputContender) => samples.filter((s) => s.contender === c && !s.error);
  const sum = (c: ThroughputContender) => {
    const ss = of(c);
    const out: ThroughputResult['summary'][ThroughputContender] = { eventsPerSec: summarize(ss.map((s) => s.eventsPerSec)) };
    if (ss.some((s) => s.mainCpuUsPerEvent !== undefined)) out.mainCpuUsPerEvent = summarize(ss.map((s) => s.mainCpuUsPerEvent!));
    if (ss.some((s) => s.allThreadsCpuUsPerEvent !== undefined)) out.allThreadsCpuUsPerEvent = summarize(ss.map((s) => s.allThreadsCpuUsPerEvent!));
    return out;
  };
  const summary = Object.fromEntries(ALL_THROUGHPUT_CONTENDERS.map((c) => [c, sum(c)])) as ThroughputResult['summary'];
  const floor = of('floor');
  const ratios = {
    trivial: { eventsPerSec: ratio(of('halcyon-trivial'), floor, 'eventsPerSec'), mainCpuPerEvent: ratio(of('halcyon-trivial'), floor, 'mainCpuUsPerEvent') },
    content: { eventsPerSec: ratio(of('halcyon-content'), floor, 'eventsPerSec'), mainCpuPerEvent: ratio(of('halcyon-content'), floor, 'mainCpuUsPerEvent') },
  };
  const parts = THROUGHPUT_CONTENDERS.map((c) => {
    const r = c === 'halcyon-trivial' ? ratios.trivial : c === 'halcyon-content' ? ratios.content : null;
    const x = r && Number.isFinite(r.eventsPerSec.ofMedians) ? ` (×${fmt(r.eventsPerSec.ofMedians, 2)}; main CPU/event ×${fmt(r.mainCpuPerEvent.ofMedians, 2)})` : '';
    return `${c} ${fmt(summary[c].eventsPerSec.median)}${x}`;
  });
  quietProgress(`[A ${w.id}] median events/s: ${parts.join(', ')}`);
  const base = of('halcyon-baseline');
  const vsBaseline =
    base.length > 0 ? { eventsPerSec: ratio(of('halcyon-trivial'), base, 'eventsPerSec'), mainCpuPerEvent: ratio(of('halcyon-trivial'), base, 'mainCpuUsPerEvent') } : undefined;
  if (vsBaseline) quietProgress(`[A ${w.id}] this build ÷ baseline: events/s ×${fmt(vsBaseline.eventsPerSec.ofMedians, 2)}, main CPU/event ×${fmt(vsBaseline.mainCpuPerEvent.ofMedians, 2)}`);
  return {
    workload: { ...w, batches: BATCHES, events: total, bodyBytes: bytes, bytesPerEvent: bytes / total, messages, reactions },
    samples,
    summary,
    ratios,
    ...(vsBaseline ? { vsBaseline } : {}),
  };
}

// ---------------------------------------------------------------- B. cadence

type CadenceContender = 'floor' | 'halcyon';

interface CadenceSample {
  round: number;
  contender: CadenceContender;
  /** /sync responses completed within the window (first response + offer time). */
  responsesInWindow: number;
  /** Gaps (ms) from each in-window /sync response completing to the next /sync request arriving. */
  gapsMs: number[];
  gapP50: number;
  gapP99: number;
  gapMax: number;
  /** How far the last in-window response trailed the release schedule (body k released at k × releaseEveryMs). */
  lagAtWindowEndMs: number;
  /** Handler calls that burned CPU (the ones inside the window). */
  burns: number;
  events: number;
  error?: string;
}

async function cadenceRun(contender: CadenceContender, bodies: string[], round: number): Promise<CadenceSample> {
  const server = await startReplayServer({ bodies, longPollMs: 1000, releaseEveryMs: RELEASE_EVERY_MS, keys: true });
  try {
    let deadline = Infinity;
    let burns = 0;
    // The window opens at the first handler call: events in it burn BURN_MS of CPU, later ones return at once.
    const work = (): void => {
      if (deadline === Infinity) deadline = performance.now() + OFFER_MS;
      if (performance.now() < deadline) {
        burnCpu(BURN_MS);
        burns++;
      }
    };
    let events: number;
    if (contender === 'floor') {
      events = (await runFloor(server.url, bodies.length, () => work())).events;
    } else {
      events = (
        await runHalcyon({
          url: server.url,
          expectedEvents: bodies.length,
          mode: 'trivial',
          work,
          timeoutMs: OFFER_MS + 120_000,
          ...(MAX_QUEUED !== undefined ? { maxQueuedEvents: MAX_QUEUED } : {}),
        })
      ).events;
    }
    const st = await server.stats();
    const origin = st.requestTimes[0]!; // the release clock starts at the first /sync
    const windowEnd = st.responseTimes[0]! + OFFER_MS;
    const gaps: number[] = [];
    let inWindow = 0;
    let lag = NaN;
    for (let i = 0; i < st.syncRequests; i++) {
      if (!(st.responseTimes[i]! <= windowEnd)) break;
      inWindow++;
      lag = st.responseTimes[i]! - (origin + i * RELEASE_EVERY_MS); // request i carries body i
      if (i + 1 < st.syncRequests) gaps.push(st.requestTimes[i + 1]! - st.responseTimes[i]!);
    }
    return {
      round,
      contender,
      responsesInWindow: inWindow,
      gapsMs: gaps,
      gapP50: percentile(gaps, 50),
      gapP99: percentile(gaps, 99),
      gapMax: gaps.length ? Math.max(...gaps) : NaN,
      lagAtWindowEndMs: lag,
      burns,
      events,
    };
  } finally {
    await server.stop();
  }
}

interface CadenceResult {
  offerMs: number;
  releaseEveryMs: number;
  burnMs: number;
  bodies: number;
  samples: CadenceSample[];
  summary: Record<CadenceContender, { gapP50: Summary; gapP99: Summary; gapMax: Summary; responsesInWindow: Summary; lagAtWindowEndMs: Summary; pooled: { n: number; p50: number; p99: number; max: number } }>;
}

async function cadence(): Promise<CadenceResult> {
  const n = Math.round(OFFER_MS / RELEASE_EVERY_MS);
  const bodies = Array.from({ length: n }, (_, batch) => makeSyncBody({ rooms: 1, eventsPerRoom: 1, batch, seed: 7 }));
  quietProgress(
    `[B] ${n} bodies of 1 event, one released every ${RELEASE_EVERY_MS} ms (${fmt(1000 / RELEASE_EVERY_MS)} events/s for ${fmt(OFFER_MS / 1000, 1)} s); ` +
      `handler burns ${BURN_MS} ms CPU per event inside the window`,
  );
  const samples: CadenceSample[] = [];
  const contenders: CadenceContender[] = ['floor', 'halcyon'];
  for (let round = 1; round <= ROUNDS; round++) {
    const order = round % 2 === 1 ? contenders : [...contenders].reverse();
    for (const c of order) {
      gc();
      let s: CadenceSample;
      try {
        s = await cadenceRun(c, bodies, round);
      } catch (err) {
        s = { round, contender: c, responsesInWindow: 0, gapsMs: [], gapP50: NaN, gapP99: NaN, gapMax: NaN, lagAtWindowEndMs: NaN, burns: 0, events: 0, error: (err as Error).message };
      }
      samples.push(s);
      quietProgress(
        `[B r${round}/${ROUNDS}] ${c.padEnd(8)} ` +
          (s.error
            ? `FAILED: ${s.error}`
            : `${s.responsesInWindow} /sync responses in window, gap to next /sync p50 ${fmt(s.gapP50, 1)} ms, p99 ${fmt(s.gapP99, 1)} ms, ` +
              `max ${fmt(s.gapMax, 1)} ms; lag behind release at window end ${fmt(s.lagAtWindowEndMs)} ms; ${s.burns} burns, ${s.events} events`),
      );
    }
  }
  const sum = (c: CadenceContender) => {
    const ss = samples.filter((s) => s.contender === c && !s.error);
    const pooled = ss.flatMap((s) => s.gapsMs);
    return {
      gapP50: summarize(ss.map((s) => s.gapP50)),
      gapP99: summarize(ss.map((s) => s.gapP99)),
      gapMax: summarize(ss.map((s) => s.gapMax)),
      responsesInWindow: summarize(ss.map((s) => s.responsesInWindow)),
      lagAtWindowEndMs: summarize(ss.map((s) => s.lagAtWindowEndMs)),
      pooled: { n: pooled.length, p50: percentile(pooled, 50), p99: percentile(pooled, 99), max: pooled.length ? Math.max(...pooled) : NaN },
    };
  };
  const summary = { floor: sum('floor'), halcyon: sum('halcyon') };
  quietProgress(
    `[B] pooled gap p50/p99/max: floor ${fmt(summary.floor.pooled.p50, 1)}/${fmt(summary.floor.pooled.p99, 1)}/${fmt(summary.floor.pooled.max, 1)} ms, ` +
      `Halcyon ${fmt(summary.halcyon.pooled.p50, 1)}/${fmt(summary.halcyon.pooled.p99, 1)}/${fmt(summary.halcyon.pooled.max, 1)} ms`,
  );
  return { offerMs: OFFER_MS, releaseEveryMs: RELEASE_EVERY_MS, burnMs: BURN_MS, bodies: n, samples, summary };
}

// ---------------------------------------------------------------- report

function gitDescribe(): string {
  try {
    const head = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: import.meta.dirname, encoding: 'utf8' }).trim();
    const dirty = execFileSync('git', ['status', '--porcelain', '--untracked-files=no'], { cwd: import.meta.dirname, encoding: 'utf8' }).trim();
    return dirty ? `${head} (+ uncommitted changes)` : head;
  } catch {
    return 'unknown';
  }
}

const cpus = os.cpus();
const meta = {
  date: new Date().toISOString(),
  cpuModel: cpus[0]?.model ?? 'unknown',
  cores: cpus.length,
  availableParallelism: os.availableParallelism(),
  node: process.version,
  os: `${os.type()} ${os.release()} ${os.arch()}`,
  totalMemGB: os.totalmem() / 2 ** 30,
  /** 1/5/15-minute load averages when the run started (others' processes on a shared machine show up here). */
  loadavgStart: os.loadavg(),
  git: gitDescribe(),
  mode: QUICK ? 'quick' : 'default',
  rounds: ROUNDS,
  cryptoRounds: CRYPTO_ROUNDS,
  cryptoEvents: CRYPTO_EVENTS,
  maxQueuedEvents: MAX_QUEUED ?? 'library default',
  argv: process.argv.slice(2),
};

const mmm = (s: Summary | undefined, d = 0): string => (s && s.n > 0 ? `${fmt(s.min, d)} / **${fmt(s.median, d)}** / ${fmt(s.max, d)}` : '–');
const ratioCell = (r: RatioSummary): string =>
  Number.isFinite(r.ofMedians) ? `**×${fmt(r.ofMedians, 2)}** (rounds ${fmt(r.perRound.min, 2)}–${fmt(r.perRound.max, 2)})` : '–';

const LABELS: Record<ThroughputContender, string> = {
  floor: 'floor (undici + JSON.parse, 1 thread)',
  'halcyon-trivial': 'Halcyon, handler reads sender + eventId',
  'halcyon-content': 'Halcyon, handler reads content (lazy parse)',
  'json-parse': 'JSON.parse only (no HTTP)',
  'halcyon-baseline': 'baseline build (--baseline), handler reads sender + eventId',
};

function markdown(tp: ThroughputResult[], cd: CadenceResult | null, cr: CryptoResult | null, wallS: number): string {
  const L: string[] = [];
  L.push(`# Halcyon benchmark (${meta.mode} run)`, '');
  L.push('| | |', '| --- | --- |');
  L.push(`| date | ${meta.date} |`);
  L.push(`| CPU | ${meta.cpuModel}, ${meta.cores} cores |`);
  L.push(`| Node | ${meta.node} |`);
  L.push(`| OS | ${meta.os}, ${fmt(meta.totalMemGB, 1)} GiB RAM |`);
  L.push(`| commit | ${meta.git} |`);
  const roundsCell = PARTS.includes('crypto') ? (PARTS.length > 1 ? `${ROUNDS} per measurement (crypto: ${CRYPTO_ROUNDS})` : `${CRYPTO_ROUNDS} per measurement`) : `${ROUNDS} per measurement`;
  L.push(`| rounds | ${roundsCell}, contenders alternating |`);
  L.push(`| Halcyon options | deliverInitialTimeline, pollTimeoutMs 30000, maxQueuedEvents ${MAX_QUEUED ?? 'default (10,000)'}, fresh data dir and workers per run |`);
  L.push(`| wall time | ${fmt(wallS)} s |`);
  L.push(
    `| load average (1/5/15 min) | at start ${meta.loadavgStart.map((x) => fmt(x, 2)).join(' / ')}; at end ${os.loadavg().map((x) => fmt(x, 2)).join(' / ')} ` +
      `(on ${meta.cores} cores; above ~1 before the run means other processes competed for the CPU) |`,
    '',
  );
  L.push('Cells are min / **median** / max over the rounds. Ratios are Halcyon ÷ floor of the medians, with the range of the per-round ratios.', '');
  if (tp.length > 0) {
    L.push('## A. Throughput on replayed /sync bodies', '');
    L.push(
      'Every timeline event counts, on both sides (`m.room.message` and `m.reaction`): the floor hands each parsed event to a handler that ' +
        'reads `sender` and `event_id`; Halcyon runs a `message` and a `reaction` handler. "trivial" handlers read `sender` and `eventId`; ' +
        '"content" handlers read `message.content.body` / `reaction.content["m.relates_to"]`, which parses the event on the main thread. ' +
        'Events/s is measured from the replay server\'s first /sync response (server clock, offset-corrected) to the last handler call. ' +
        'Main CPU is `process.threadCpuUsage()` of the main thread from the start of the run (floor loop start / `client.run()`, so ' +
        'Halcyon\'s includes its start-up on main) to the last handler call. "All threads" is `process.cpuUsage()` of the bench process ' +
        '(main + Halcyon\'s workers + GC) from the first to the last handler call, per event after body 0; the replay server is a separate process and not included.',
      '',
    );
    for (const r of tp) {
      const w = r.workload;
      L.push(
        `### ${fmt(w.rooms)} room${w.rooms === 1 ? '' : 's'} × ${fmt(w.perRoom)} event${w.perRoom === 1 ? '' : 's'} × ${w.batches} batches ` +
          `(${fmt(w.events)} events: ${fmt(w.messages)} messages + ${fmt(w.reactions)} reactions; ${fmt(w.bodyBytes / 1e6, 1)} MB, ${fmt(w.bytesPerEvent)} B/event)`,
        '',
      );
      L.push('| contender | events/s | main-thread CPU µs/event | all-threads CPU µs/event |', '| --- | ---: | ---: | ---: |');
      for (const c of ALL_THROUGHPUT_CONTENDERS) {
        const s = r.summary[c];
        if (s.eventsPerSec.n === 0 && !r.samples.some((x) => x.contender === c)) continue;
        L.push(`| ${LABELS[c]} | ${mmm(s.eventsPerSec)} | ${mmm(s.mainCpuUsPerEvent, 2)} | ${mmm(s.allThreadsCpuUsPerEvent, 2)} |`);
      }
      const failed = r.samples.filter((s) => s.error);
      const problems = r.samples.filter((s) => s.problems);
      L.push('');
      if (failed.length) L.push(`Failed measurements: ${failed.map((s) => `${s.contender} r${s.round}: ${s.error}`).join('; ')}`, '');
      if (problems.length) L.push(`Problems reported by Halcyon: ${problems.map((s) => `${s.contender} r${s.round}: ${s.problems!.join(' | ')}`).join('; ')}`, '');
      const startup = summarize(r.samples.filter((s) => s.startupMs !== undefined).map((s) => s.startupMs!));
      L.push(`Halcyon start-up (\`client.run()\` to first /sync response, not in events/s): ${mmm(startup)} ms.`, '');
    }
    L.push('### Ratios Halcyon ÷ floor', '');
    L.push(
      '| workload | events/s, trivial | events/s, content | main CPU/event, trivial | main CPU/event, content |',
      '| --- | ---: | ---: | ---: | ---: |',
    );
    for (const r of tp) {
      L.push(
        `| ${r.workload.id} | ${ratioCell(r.ratios.trivial.eventsPerSec)} | ${ratioCell(r.ratios.content.eventsPerSec)} | ` +
          `${ratioCell(r.ratios.trivial.mainCpuPerEvent)} | ${ratioCell(r.ratios.content.mainCpuPerEvent)} |`,
      );
    }
    L.push('', 'events/s above 1 means Halcyon is faster; main CPU/event below 1 means Halcyon leaves the main thread more idle.', '');
    if (tp.some((r) => r.vsBaseline)) {
      L.push(`### This build ÷ the baseline build (\`--baseline ${args.baseline}\`), trivial handlers`, '');
      L.push('| workload | events/s | main CPU/event |', '| --- | ---: | ---: |');
      for (const r of tp) if (r.vsBaseline) L.push(`| ${r.workload.id} | ${ratioCell(r.vsBaseline.eventsPerSec)} | ${ratioCell(r.vsBaseline.mainCpuPerEvent)} |`);
      L.push('');
    }
  }
  if (cd) {
    L.push('## B. /sync cadence while a handler burns CPU', '');
    L.push(
      `${cd.bodies} bodies of one event each; the replay server releases body k at k × ${cd.releaseEveryMs} ms after the first /sync ` +
        `(${fmt(1000 / cd.releaseEveryMs)} events/s offered for ${fmt(cd.offerMs / 1000, 1)} s), holding the long-poll until then. The \`message\` ` +
        `handler burns ${cd.burnMs} ms of main-thread CPU per event during the window (from the first handler call). Gap = next /sync request ` +
        'arrival − previous /sync response completion, both on the replay server, over responses completed within the window. ' +
        'Lag = how far the last in-window response trailed the release schedule.',
      '',
    );
    L.push(
      '| contender | /sync responses in window | gap p50 ms | gap p99 ms | gap max ms | lag at window end ms | all gaps pooled p50 / p99 / max ms |',
      '| --- | ---: | ---: | ---: | ---: | ---: | ---: |',
    );
    for (const c of ['floor', 'halcyon'] as const) {
      const s = cd.summary[c];
      L.push(
        `| ${c === 'floor' ? 'floor (awaits the handler before the next /sync)' : 'Halcyon (sync actor on a worker)'} | ${mmm(s.responsesInWindow)} | ` +
          `${mmm(s.gapP50, 1)} | ${mmm(s.gapP99, 1)} | ${mmm(s.gapMax, 1)} | ${mmm(s.lagAtWindowEndMs)} | ` +
          `${fmt(s.pooled.p50, 1)} / ${fmt(s.pooled.p99, 1)} / ${fmt(s.pooled.max, 1)} (n=${s.pooled.n}) |`,
      );
    }
    const failed = cd.samples.filter((s) => s.error);
    if (failed.length) L.push('', `Failed measurements: ${failed.map((s) => `${s.contender} r${s.round}: ${s.error}`).join('; ')}`);
    L.push('');
  }
  if (cr) L.push(...cryptoMarkdown(cr));
  return L.join('\n');
}

// ---------------------------------------------------------------- main

const t0 = performance.now();
quietProgress(
  `Halcyon bench (${meta.mode}): ${meta.cpuModel}, ${meta.cores} cores, Node ${meta.node}; load average ${meta.loadavgStart.map((x) => fmt(x, 2)).join(' / ')}; ` +
    `${ROUNDS} rounds${PARTS.includes('crypto') ? ` (crypto: ${CRYPTO_ROUNDS} × ${CRYPTO_EVENTS} events)` : ''}; parts: ${PARTS.join(', ')}` +
    (PARTS.includes('throughput') ? `; workloads: ${WORKLOADS.map((w) => w.id).join(', ')} × ${BATCHES} batches` : ''),
);
const tp: ThroughputResult[] = [];
if (PARTS.includes('throughput')) for (const w of WORKLOADS) tp.push(await throughput(w));
const cd = PARTS.includes('cadence') ? await cadence() : null;
const cr = PARTS.includes('crypto')
  ? await cryptoBench({ rounds: CRYPTO_ROUNDS, events: CRYPTO_EVENTS, warmup: 500, perBody: 100, cadencePerBody: 50, cadenceReleaseEveryMs: 25, gc, progress: quietProgress })
  : null;
const wallS = (performance.now() - t0) / 1000;

mkdirSync(OUT_DIR, { recursive: true });
const md = markdown(tp, cd, cr, wallS);
writeFileSync(
  join(OUT_DIR, 'latest.json'),
  JSON.stringify({ meta: { ...meta, wallSeconds: wallS, loadavgEnd: os.loadavg() }, throughput: tp, cadence: cd, crypto: cr }, null, 2) + '\n',
);
writeFileSync(join(OUT_DIR, 'latest.md'), md + '\n');
quietProgress(`\n${md}\nwritten: ${join(OUT_DIR, 'latest.json')}, ${join(OUT_DIR, 'latest.md')} (${fmt(wallS)} s)`);
