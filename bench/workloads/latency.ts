/**
 * Workload 3, latency on Synapse: a sender in this process PUTs messages at a fixed rate into a room each
 * contender's user has joined; latency is the contender's handler call minus the send's start (same clock).
 * @module
 */
import { randomBytes } from 'node:crypto';
import type { TestUser } from '../../test/harness/synapse.ts';
import type { PeerClient, PeerEvent } from '../peers/types.ts';
import { combineVerdicts, goalEntry, ratioOf, roundsVerdict, runsInRound, sideRoundsNote, type BenchContext, type GoalEntry, type RatioEntry, type Workload, type WorkloadReport } from '../report.ts';
import { fmt, percentile, summarize, type Summary } from '../stats.ts';
import { Api, availablePeers, newDevice, now, sleep, startPeer, stopPeer, withSynapse, withTimeout, type PeerName } from './synapse-common.ts';

const RATE_PER_S = 10;
/** Warm-up messages sent (each awaited through the handler) before the measured stream; never counted. */
const WARMUP = 2;

/** One contender's run in one round. */
interface LatencySample {
  contender: PeerName;
  round: number;
  /** Handler call − send start, ms, in send order (NaN: never delivered). */
  latenciesMs: number[];
  p50: number;
  p99: number;
  max: number;
  /** Messages the handler never saw within the deadline. */
  missing: number;
  /** Handler calls for a measured message seen a second time. */
  duplicates: number;
  /** The sender's PUT round trips (send start → 200), ms: what the server itself takes to accept a message. */
  putMs: number[];
  /** Why the run failed (the contender did not start or did not handle the warm-up), if it did. */
  error?: string;
}

/** Contenders no goal is decided against (the goal is on the floor): they run `ctx.sideRounds` rounds. */
const SIDE: ReadonlySet<PeerName> = new Set(['matrix-bot-sdk', 'matrix-js-sdk']);

const LABEL: Record<PeerName, string> = { halcyon: 'Halcyon', floor: 'floor', 'matrix-bot-sdk': 'matrix-bot-sdk', 'matrix-js-sdk': 'matrix-js-sdk' };

/** Runs one fresh client of `contender` and measures `count` messages sent at {@link RATE_PER_S}. */
async function measure(
  contender: PeerName,
  round: number,
  count: number,
  hsUrl: string,
  fresh: () => Promise<{ accessToken: string; deviceId: string }>,
  user: TestUser,
  sender: Api,
  senderId: string,
  roomId: string,
): Promise<LatencySample> {
  const tag = randomBytes(4).toString('hex');
  const seen = new Map<number, number>(); // seq (warm-ups negative) → handler call time
  let duplicates = 0;
  const waiters = new Map<number, () => void>();
  const onEvent = (ev: PeerEvent): void => {
    const at = now(); // first thing: the handler call time
    if (ev.type !== 'm.room.message' || ev.sender !== senderId || ev.roomId !== roomId) return;
    const body = ev.content().body;
    if (typeof body !== 'string') return;
    const [kind, t, seq, t0] = body.split(':');
    if (kind !== 'lat' || t !== tag) return;
    const n = Number(seq);
    if (seen.has(n)) {
      duplicates++;
      return;
    }
    // The body's start time: the latency is measured against what the message itself carries.
    seen.set(n, at - Number(t0));
    waiters.get(n)?.();
  };
  const arrived = (n: number, ms: number, what: string): Promise<void> =>
    seen.has(n) ? Promise.resolve() : withTimeout(new Promise<void>((r) => waiters.set(n, r)), ms, `${contender} to handle ${what}`);
  const putMs: number[] = [];
  const send = async (n: number): Promise<void> => {
    const t0 = now();
    const r = await sender.send(roomId, { msgtype: 'm.text', body: `lat:${tag}:${n}:${t0}` });
    if (r.status !== 200) throw new Error(`sender PUT -> ${r.status}: ${JSON.stringify(r.json)}`);
    if (n >= 0) putMs.push(now() - t0);
  };

  const { accessToken, deviceId } = await fresh();
  let peer: PeerClient | undefined;
  try {
    peer = await startPeer(contender, { homeserverUrl: hsUrl, userId: user.userId, accessToken, deviceId, onEvent, deliverInitial: false });
    // Warm-up: the first message after start-up meets cold paths (first long poll, first handler, JIT); wait for each.
    for (let w = 1; w <= WARMUP; w++) {
      await send(-w);
      await arrived(-w, 30_000, `warm-up message ${w}`);
    }
    const interval = 1000 / RATE_PER_S;
    const start = now() + interval;
    const puts: Promise<void>[] = [];
    for (let i = 0; i < count; i++) {
      // Absolute schedule: a late timer does not push every later send back.
      const wait = start + i * interval - now();
      if (wait > 0) await sleep(wait);
      const put = send(i);
      put.catch(() => {}); // handled by Promise.all below; until then a failed PUT must not count as unhandled
      puts.push(put);
    }
    await Promise.all(puts);
    const deadline = now() + 10_000;
    for (let i = 0; i < count; i++) {
      const left = deadline - now();
      if (left <= 0) break;
      await arrived(i, left, `message ${i}`).catch(() => {});
    }
  } finally {
    await stopPeer(contender, peer);
  }
  const latenciesMs = Array.from({ length: count }, (_, i) => seen.get(i) ?? NaN);
  const got = latenciesMs.filter(Number.isFinite);
  return {
    contender,
    round,
    latenciesMs,
    p50: percentile(got, 50),
    p99: percentile(got, 99),
    max: got.length ? Math.max(...got) : NaN,
    missing: count - got.length,
    duplicates,
    putMs,
  };
}

const row = (s: Summary, d = 1): string => `${fmt(s.min, d)} / **${fmt(s.median, d)}** / ${fmt(s.max, d)}`;

/** Workload 3: send → handler latency on a real Synapse, per contender. */
export const run: Workload = async (ctx: BenchContext): Promise<WorkloadReport> => {
  const seconds = ctx.quick ? 5 : 8;
  const count = RATE_PER_S * seconds;
  const contenders = availablePeers();
  const samples: LatencySample[] = [];

  await withSynapse(undefined, async (hs) => {
    const senderUser = await hs.registerUser();
    const sender = new Api(hs.baseUrl, senderUser.accessToken);
    try {
      const users = new Map<PeerName, { user: TestUser; roomId: string }>();
      for (const c of contenders) {
        const user = await hs.registerUser();
        const roomId = await sender.createRoom([user.userId]);
        const api = new Api(hs.baseUrl, user.accessToken);
        await api.join(roomId);
        await api.close();
        users.set(c, { user, roomId });
      }
      for (let round = 0; round < ctx.rounds; round++) {
        // Each contender goes first in turn.
        const order = contenders.map((_, i) => contenders[(i + round) % contenders.length]!).filter((c) => runsInRound(ctx, round, SIDE.has(c)));
        for (const c of order) {
          const { user, roomId } = users.get(c)!;
          ctx.gc();
          const s = await measure(c, round, count, hs.baseUrl, () => newDevice(hs, user), user, sender, senderUser.userId, roomId).catch(
            (e: unknown): LatencySample => ({ contender: c, round, latenciesMs: [], p50: NaN, p99: NaN, max: NaN, missing: count, duplicates: 0, putMs: [], error: e instanceof Error ? e.message : String(e) }),
          );
          samples.push(s);
          if (s.error) {
            ctx.progress(`latency round ${round + 1}/${ctx.rounds} ${LABEL[c]}: FAILED: ${s.error}`);
            continue;
          }
          ctx.progress(`latency round ${round + 1}/${ctx.rounds} ${LABEL[c]}: p50 ${fmt(s.p50, 1)} ms, p99 ${fmt(s.p99, 1)} ms, max ${fmt(s.max, 1)} ms${s.missing ? `, ${s.missing} MISSING` : ''}${s.duplicates ? `, ${s.duplicates} duplicates` : ''}`);
        }
      }
    } finally {
      await sender.close();
    }
  });

  const of = (c: PeerName) => samples.filter((s) => s.contender === c);
  const series = (c: PeerName, k: 'p50' | 'p99') => of(c).map((s) => ({ round: s.round, value: s[k] }));
  const pooled = (c: PeerName) => of(c).flatMap((s) => s.latenciesMs).filter(Number.isFinite);

  const ratios: RatioEntry[] = [];
  for (const other of contenders.filter((c) => c !== 'halcyon')) {
    for (const k of ['p50', 'p99'] as const) {
      const value = `${fmt(summarize(of('halcyon').map((s) => s[k])).median, 1)} ms`;
      ratios.push({ workload: 'latency', metric: `Synapse send→handler ${k}`, versus: other, ...ratioOf(series('halcyon', k), series(other, k)), better: 'lower', value });
    }
  }

  const med = (c: PeerName, k: 'p50' | 'p99') => summarize(of(c).map((s) => s[k])).median;
  const goals: GoalEntry[] = [];
  if (contenders.includes('halcyon') && contenders.includes('floor')) {
    // Round by round (each round runs every contender once, back to back): Halcyon's percentile against the limit
    // the floor's percentile of the same round sets.
    const parts = (['p50', 'p99'] as const).map((k) => {
      const rounds = of('halcyon')
        .filter((h) => Number.isFinite(h[k]))
        .flatMap((h) => {
          const f = of('floor').find((x) => x.round === h.round && Number.isFinite(x[k]));
          return f ? [{ h: h[k], limit: 1.1 * f[k] + 2 }] : [];
        });
      const verdict = roundsVerdict(rounds.map((r) => r.h <= r.limit));
      const passed = rounds.filter((r) => r.h <= r.limit).length;
      return { k, verdict, text: `${k} ${fmt(med('halcyon', k), 1)} ms vs limit ${fmt(1.1 * med('floor', k) + 2, 1)} ms (medians); within the round's limit in ${passed} of ${rounds.length} rounds (${verdict})` };
    });
    goals.push(goalEntry('Synapse latency ≤1.1× the floor + 2 ms', parts.map((p) => p.text).join('; '), combineVerdicts(parts.map((p) => p.verdict))));
  }

  const lost = samples.filter((s) => !s.error && (s.missing > 0 || s.duplicates > 0));
  const failed = samples.filter((s) => s.error);
  const markdown = [
    `A sender in the benchmark process PUTs ${count} messages at ${RATE_PER_S}/s (raw HTTP, its own user) into a room each contender's user has joined; each body carries the send's start time and latency is the contender's handler call minus it (one clock: same process). Each contender runs alone, a fresh client on a new device per round (Halcyon with encryption off, as the others run: none has a crypto stack here), the order rotating across ${ctx.rounds} rounds. ${sideRoundsNote(contenders.filter((c) => SIDE.has(c)).map((c) => LABEL[c]), ctx.sideRounds, ctx.rounds)} Before the measured stream, ${WARMUP} warm-up messages go through the handler one at a time (the first after start-up meets cold paths); they are not counted. Values: min / **median** / max over rounds of each round's percentile, in ms; "pooled" is over all rounds' samples; the sender's PUT round trip (send start → 200) shows what Synapse itself takes to accept a message during that contender's runs.`,
    '',
    '| contender | p50 (ms) | p99 (ms) | max (ms) | pooled p50 / p99 | sender PUT p50 (pooled) |',
    '|---|---|---|---|---|---|',
    ...contenders.map((c) => {
      const p = pooled(c);
      return `| ${LABEL[c]} | ${row(summarize(of(c).map((s) => s.p50)))} | ${row(summarize(of(c).map((s) => s.p99)))} | ${row(summarize(of(c).map((s) => s.max)))} | ${fmt(percentile(p, 50), 1)} / ${fmt(percentile(p, 99), 1)} | ${fmt(percentile(of(c).flatMap((s) => s.putMs), 50), 1)} |`;
    }),
    '',
    lost.length
      ? `**Not every message was handled exactly once:** ${lost.map((s) => `${LABEL[s.contender]} round ${s.round + 1}: ${s.missing} missing, ${s.duplicates} duplicates`).join('; ')}.`
      : `Every measured message reached every contender's handler exactly once.`,
    ...(failed.length ? ['', `**Failed runs:** ${failed.map((s) => `${LABEL[s.contender]} round ${s.round + 1}: ${s.error}`).join('; ')}.`] : []),
  ];

  return {
    id: 'latency',
    title: '3. Latency on Synapse',
    ratios,
    goals,
    markdown,
    data: { ratePerSecond: RATE_PER_S, messagesPerRound: count, warmup: WARMUP, contenders, samples },
  };
};
