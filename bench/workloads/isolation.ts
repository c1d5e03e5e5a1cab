/**
 * Workload 2, isolation: one "busy" room whose handler burns 500 ms of main-thread CPU per event, 20 events/s
 * offered, next to "quiet" rooms whose handler only records the time. Per contender: the gap between each
 * `/sync` response and the next `/sync` request (replay server clock), and the end-to-end latency of the quiet
 * rooms' events (handler call − the body's release on the server), plus how the quiet events queue behind burns.
 * @module
 */
import type { Contender, RatioEntry, Workload, WorkloadReport } from '../report.ts';
import { goalEntry, ratioOf, roundsVerdict, runsInRound, sideRoundsNote } from '../report.ts';
import type { PeerClient, PeerEvent, StartPeer } from '../peers/types.ts';
import { startReplayServer, type ReplayServer } from '../replay-server.ts';
import { burnCpu, clockOffset, fmt, now, percentile, type Summary, summarize } from '../stats.ts';

const RELEASE_EVERY_MS = 50; // one body per 50 ms: 20 busy events/s offered
const BURN_MS = 500;
const QUIET_ROOMS = 4;
const BUSY_ROOM = '!busy:localhost';
const quietRoom = (i: number): string => `!quiet${i}:localhost`;
const BUSY_PREFIX = '$isoBusy';
const QUIET_PREFIX = '$isoQuiet';

type IsoContender = Extract<Contender, 'floor' | 'halcyon' | 'matrix-bot-sdk' | 'matrix-js-sdk'>;
const CONTENDERS: IsoContender[] = ['halcyon', 'floor', 'matrix-bot-sdk', 'matrix-js-sdk'];
/** Each contender's adapter module and the name of its StartPeer export. */
const ADAPTERS: Record<IsoContender, [module: string, name: string]> = {
  halcyon: ['../peers/halcyon.ts', 'startHalcyon'],
  floor: ['../peers/floor.ts', 'startFloor'],
  'matrix-bot-sdk': ['../peers/botsdk.ts', 'startBotSdk'],
  'matrix-js-sdk': ['../peers/jssdk.ts', 'startJsSdk'],
};
/** Contenders no goal is decided against (the goal is on Halcyon alone; the floor is the reference): `ctx.sideRounds` rounds. */
const SIDE: ReadonlySet<IsoContender> = new Set(['matrix-bot-sdk', 'matrix-js-sdk']);
const LABELS: Record<IsoContender, string> = {
  halcyon: 'Halcyon',
  floor: 'floor (undici loop, handlers before the next /sync)',
  'matrix-bot-sdk': 'matrix-bot-sdk 0.8',
  'matrix-js-sdk': 'matrix-js-sdk 43',
};

/** One contender's run in one round. */
interface IsoSample {
  round: number;
  contender: IsoContender;
  /** /sync responses completed by the window's end. */
  responsesInWindow: number;
  /** Gap (ms) from each in-window /sync response completing to the next /sync request arriving, server clock. */
  gapsMs: number[];
  gapP50: number;
  gapP99: number;
  gapMax: number;
  /** Bodies (released one per RELEASE_EVERY_MS) the client had fetched by the window's end. */
  bodiesServedInWindow: number;
  /** Per quiet event k (body k): handler call − release of body k, ms, server clock. */
  quietLatencyMs: number[];
  quietP50: number;
  quietP99: number;
  quietMax: number;
  /** Quiet events whose handler ran by the window's end (of `bodies`). */
  quietHandledInWindow: number;
  /** Per quiet event: burns that started after its body's release and before its handler ran (0 or 1 is fair). */
  burnsWaited: number[];
  /**
   * Least-squares slope of quiet latency over release time, over the quiet events handled within the window (ms of
   * latency per ms): 0 is steady, (BURN_MS − RELEASE_EVERY_MS) / RELEASE_EVERY_MS = 9 a quiet event waiting for every earlier burn.
   */
  latencyGrowth: number;
  /** Busy events that burned CPU (those handled inside the window). */
  burns: number;
  /** Wall time of each burn, ms (above BURN_MS when other processes compete for the CPU). */
  burnWallMs: number[];
  error?: string;
}

interface Timeline {
  /** Local epoch ms of each quiet event's (first) handler call, by body index. */
  quietAt: number[];
  /** Local epoch ms each burn started, in order. */
  burnStarts: number[];
  burnWallMs: number[];
  busySeen: number;
  quietSeen: number;
  /** Local epoch ms of the first handler call: the window (and the burns) start there. */
  windowStart: number;
}

/** Body k: one event in the busy room, then one in quiet room k mod QUIET_ROOMS (busy first, so a client handling a body in order burns before it reaches the quiet event). */
function makeBodies(n: number): string[] {
  const event = (id: string, k: number, body: string) => ({
    type: 'm.room.message',
    sender: `@user${k % 7}:localhost`,
    content: { msgtype: 'm.text', body },
    origin_server_ts: 1_700_000_000_000 + k * RELEASE_EVERY_MS,
    unsigned: { age: 50 },
    event_id: id,
  });
  const room = (k: number, ev: unknown) => ({
    timeline: { events: [ev], limited: false, prev_batch: `t${k}_iso` },
    state: { events: [] },
    ephemeral: { events: [] },
    account_data: { events: [] },
    unread_notifications: { highlight_count: 0, notification_count: 1 },
    summary: {},
  });
  return Array.from({ length: n }, (_, k) =>
    JSON.stringify({
      next_batch: `s${k + 1}_iso`,
      account_data: { events: [] },
      to_device: { events: [] },
      presence: { events: [] },
      device_one_time_keys_count: { signed_curve25519: 50 },
      rooms: {
        join: {
          [BUSY_ROOM]: room(k, event(`${BUSY_PREFIX}${k}`, k, `busy ${k}: heavy work`)),
          [quietRoom(k % QUIET_ROOMS)]: room(k, event(`${QUIET_PREFIX}${k}`, k, `quiet ${k}`)),
        },
      },
    }),
  );
}

/** Rejects after `ms` with `what` in the message, so a stuck contender fails its measurement instead of the run. */
function deadline<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([p, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: no result within ${ms} ms`)), ms)))]).finally(() =>
    clearTimeout(timer),
  );
}

/** Least-squares slope of y over x. */
function slope(xs: readonly number[], ys: readonly number[]): number {
  const n = xs.length;
  if (n < 2) return NaN;
  const mx = xs.reduce((a, b) => a + b, 0) / n;
  const my = ys.reduce((a, b) => a + b, 0) / n;
  let num = 0;
  let den = 0;
  for (let i = 0; i < n; i++) {
    num += (xs[i]! - mx) * (ys[i]! - my);
    den += (xs[i]! - mx) ** 2;
  }
  return num / den;
}

const emptySample = (round: number, contender: IsoContender, error: string): IsoSample => ({
  round,
  contender,
  responsesInWindow: 0,
  gapsMs: [],
  gapP50: NaN,
  gapP99: NaN,
  gapMax: NaN,
  bodiesServedInWindow: 0,
  quietLatencyMs: [],
  quietP50: NaN,
  quietP99: NaN,
  quietMax: NaN,
  quietHandledInWindow: 0,
  burnsWaited: [],
  latencyGrowth: NaN,
  burns: 0,
  burnWallMs: [],
  error,
});

/** One contender against a fresh paced replay server, until every event of every body has reached its handler. */
async function measure(contender: IsoContender, start: StartPeer, bodies: string[], offerMs: number, round: number): Promise<IsoSample> {
  const n = bodies.length;
  const server: ReplayServer = await startReplayServer({ bodies, longPollMs: 1000, releaseEveryMs: RELEASE_EVERY_MS, keys: true });
  let client: PeerClient | null = null;
  try {
    const { offsetMs } = await clockOffset(server);
    const tl: Timeline = { quietAt: new Array<number>(n).fill(NaN), burnStarts: [], burnWallMs: [], busySeen: 0, quietSeen: 0, windowStart: NaN };
    const busySeen = new Uint8Array(n);
    let finish!: () => void;
    const finished = new Promise<void>((resolve) => (finish = resolve));
    const onEvent = (ev: PeerEvent): void => {
      const t = now();
      if (Number.isNaN(tl.windowStart)) tl.windowStart = t;
      if (ev.eventId.startsWith(QUIET_PREFIX)) {
        const k = Number(ev.eventId.slice(QUIET_PREFIX.length));
        if (!Number.isNaN(tl.quietAt[k]!)) return; // redelivered
        tl.quietAt[k] = t;
        tl.quietSeen++;
      } else if (ev.eventId.startsWith(BUSY_PREFIX)) {
        const k = Number(ev.eventId.slice(BUSY_PREFIX.length));
        if (busySeen[k]) return;
        busySeen[k] = 1;
        tl.busySeen++;
        // Burns only inside the window, so a contender that falls behind still finishes in bounded time.
        if (t < tl.windowStart + offerMs) {
          tl.burnStarts.push(t);
          burnCpu(BURN_MS);
          tl.burnWallMs.push(now() - t);
        }
      } else return;
      if (tl.busySeen === n && tl.quietSeen === n) finish();
    };
    client = await deadline(start({ homeserverUrl: server.url, userId: '@bot:localhost', accessToken: 'bench', deviceId: 'BENCH', onEvent }), 60_000, `${contender} start`);
    // Falling behind costs at most one burn per in-window body, then the rest drains without burns.
    const limit = offerMs + (offerMs / RELEASE_EVERY_MS) * BURN_MS + 60_000;
    await deadline(finished, limit, `${contender} handled ${tl.busySeen}/${n} busy and ${tl.quietSeen}/${n} quiet events`);

    const st = await server.stats();
    const origin = st.requestTimes[0]!; // the release clock starts at the first /sync (body 0)
    const windowEnd = tl.windowStart + offsetMs + offerMs; // server clock
    const gaps: number[] = [];
    let inWindow = 0;
    let served = 0;
    for (let i = 0; i < st.syncRequests; i++) {
      if (!(st.responseTimes[i]! <= windowEnd)) break;
      inWindow++;
      served = Math.max(served, st.requestBodies[i]! + 1);
      if (i + 1 < st.syncRequests) gaps.push(st.requestTimes[i + 1]! - st.responseTimes[i]!);
    }
    const release = (k: number): number => origin + k * RELEASE_EVERY_MS;
    const handled = tl.quietAt.map((t) => t + offsetMs);
    const lat = handled.map((t, k) => t - release(k));
    const burnStarts = tl.burnStarts.map((t) => t + offsetMs);
    const burnsWaited = handled.map((t, k) => burnStarts.filter((b) => b > release(k) && b < t).length);
    const inWin = lat.map((_, k) => k).filter((k) => handled[k]! <= windowEnd);
    return {
      round,
      contender,
      responsesInWindow: inWindow,
      gapsMs: gaps,
      gapP50: percentile(gaps, 50),
      gapP99: percentile(gaps, 99),
      gapMax: gaps.length ? Math.max(...gaps) : NaN,
      bodiesServedInWindow: served,
      quietLatencyMs: lat,
      quietP50: percentile(lat, 50),
      quietP99: percentile(lat, 99),
      quietMax: Math.max(...lat),
      quietHandledInWindow: handled.filter((t) => t <= windowEnd).length,
      burnsWaited,
      latencyGrowth: slope(
        inWin.map((k) => release(k)),
        inWin.map((k) => lat[k]!),
      ),
      burns: tl.burnStarts.length,
      burnWallMs: tl.burnWallMs,
    };
  } finally {
    try {
      if (client) await deadline(client.stop(), 30_000, `${contender} stop`);
    } finally {
      await server.stop();
    }
  }
}

/** min / median / max over rounds of each per-run figure. */
function summarizeRuns(ss: IsoSample[]) {
  const pick = (f: (s: IsoSample) => number): Summary => summarize(ss.map(f));
  return {
    responsesInWindow: pick((s) => s.responsesInWindow),
    gapP50: pick((s) => s.gapP50),
    gapP99: pick((s) => s.gapP99),
    gapMax: pick((s) => s.gapMax),
    quietP50: pick((s) => s.quietP50),
    quietP99: pick((s) => s.quietP99),
    quietMax: pick((s) => s.quietMax),
    quietHandledInWindow: pick((s) => s.quietHandledInWindow),
    burnsWaitedMedian: pick((s) => percentile(s.burnsWaited, 50)),
    burnsWaitedMax: pick((s) => Math.max(...s.burnsWaited)),
    latencyGrowth: pick((s) => s.latencyGrowth),
    burns: pick((s) => s.burns),
    burnWallMedian: pick((s) => percentile(s.burnWallMs, 50)),
  };
}

/** One data-driven sentence on whether Halcyon's quiet rooms got a turn between burns (medians over rounds). */
function fairness(h: ReturnType<typeof summarizeRuns>, runs: IsoSample[], n: number): string {
  if (runs.length === 0) return 'Halcyon did not complete a measurement.';
  const fetched = summarize(runs.map((s) => s.bodiesServedInWindow)).median;
  const fifo = (h.burnWallMedian.median - RELEASE_EVERY_MS) / RELEASE_EVERY_MS;
  const numbers =
    `up to ${fmt(h.burnsWaitedMax.median)} burns started between a quiet event's release and its handler call (median ${fmt(h.burnsWaitedMedian.median)}); ` +
    `${fmt(h.quietHandledInWindow.median)} of ${n} quiet events were handled in the window while Halcyon's sync worker had fetched ${fmt(fetched)} bodies; ` +
    `quiet latency grew ${fmt(h.latencyGrowth.median, 2)} ms per ms of release time (strict body order behind burns of ${fmt(h.burnWallMedian.median)} ms wall: ${fmt(fifo, 2)}).`;
  return h.burnsWaitedMax.median <= 1
    ? `Halcyon's quiet rooms got a turn between burns (medians over rounds): ${numbers}`
    : `Halcyon's quiet rooms waited behind the busy room's backlog rather than getting a turn between burns (medians over rounds): ${numbers}`;
}

const mmm = (s: Summary, d = 0): string => (s.n > 0 ? `${fmt(s.min, d)} / **${fmt(s.median, d)}** / ${fmt(s.max, d)}` : '–');

/** Runs the isolation workload: every contender once per round, the order rotating by round. */
export const run: Workload = async (ctx): Promise<WorkloadReport> => {
  const offerMs = ctx.quick ? 3000 : 5000;
  const n = Math.round(offerMs / RELEASE_EVERY_MS);
  const bodies = makeBodies(n);
  ctx.progress(
    `[isolation] ${n} bodies, one released every ${RELEASE_EVERY_MS} ms for ${fmt(offerMs / 1000, 1)} s; each holds a busy-room event ` +
      `(handler burns ${BURN_MS} ms CPU inside the window) and a quiet-room event (${QUIET_ROOMS} quiet rooms, handler records the time)`,
  );
  const starters = new Map<IsoContender, StartPeer | Error>();
  for (const c of CONTENDERS) {
    const [path, name] = ADAPTERS[c];
    try {
      const start = ((await import(path)) as Record<string, StartPeer | undefined>)[name];
      starters.set(c, start ?? new Error(`${path} has no export ${name}`));
    } catch (err) {
      starters.set(c, err as Error);
    }
  }
  const samples: IsoSample[] = [];
  for (let round = 1; round <= ctx.rounds; round++) {
    const order = CONTENDERS.map((_, i) => CONTENDERS[(i + round - 1) % CONTENDERS.length]!).filter((c) => runsInRound(ctx, round - 1, SIDE.has(c)));
    for (const c of order) {
      ctx.gc();
      const start = starters.get(c)!;
      let s: IsoSample;
      try {
        if (start instanceof Error) throw new Error(`adapter ${ADAPTERS[c][0]} failed to load: ${start.message}`);
        s = await measure(c, start, bodies, offerMs, round);
      } catch (err) {
        s = emptySample(round, c, (err as Error).message);
      }
      samples.push(s);
      const waited = summarize(s.burnsWaited);
      ctx.progress(
        `[isolation r${round}/${ctx.rounds}] ${c.padEnd(14)} ` +
          (s.error
            ? `FAILED: ${s.error}`
            : `${s.responsesInWindow} /sync responses in window (bodies 0–${s.bodiesServedInWindow - 1} of ${n}); gap p50 ${fmt(s.gapP50, 1)} / p99 ${fmt(s.gapP99, 1)} / ` +
              `max ${fmt(s.gapMax, 1)} ms; quiet latency p50 ${fmt(s.quietP50)} / p99 ${fmt(s.quietP99)} / max ${fmt(s.quietMax)} ms, ` +
              `${s.quietHandledInWindow}/${n} handled in window, burns waited median ${fmt(waited.median)} max ${fmt(waited.max)}, ` +
              `latency growth ${fmt(s.latencyGrowth, 2)} ms/ms; ${s.burns} burns of ${fmt(percentile(s.burnWallMs, 50))} ms wall (median)`),
      );
    }
  }

  const ok = (c: IsoContender) => samples.filter((s) => s.contender === c && !s.error);
  const per = (c: IsoContender, key: 'gapP99' | 'quietP50' | 'quietP99') => ok(c).map((s) => ({ round: s.round, value: s[key] }));
  const ratios: RatioEntry[] = [];
  for (const other of CONTENDERS.filter((c) => c !== 'halcyon')) {
    for (const [key, metric] of [
      ['gapP99', 'gap to next /sync p99 while a handler burns CPU'],
      ['quietP50', 'quiet-room event latency p50 beside a CPU-burning room'],
      ['quietP99', 'quiet-room event latency p99 beside a CPU-burning room'],
    ] as const) {
      const value = `${fmt(summarize(ok('halcyon').map((s) => s[key])).median, key === 'gapP99' ? 1 : 0)} ms`;
      ratios.push({ workload: 'isolation', metric, versus: other, ...ratioOf(per('halcyon', key), per(other, key)), better: 'lower', value });
    }
  }
  const hGap = summarize(ok('halcyon').map((s) => s.gapP99));
  const goals = [
    goalEntry(
      'isolation: next /sync ≤50 ms p99 after a response while handlers burn CPU',
      hGap.n > 0 ? `Halcyon gap p99 ${fmt(hGap.median, 1)} ms (median of ${hGap.n} rounds; ${fmt(hGap.min, 1)}–${fmt(hGap.max, 1)})` : 'not measured (Halcyon failed)',
      roundsVerdict(ok('halcyon').map((s) => s.gapP99 <= 50)),
    ),
  ];

  const summary = {} as Record<IsoContender, ReturnType<typeof summarizeRuns>>;
  for (const c of CONTENDERS) summary[c] = summarizeRuns(ok(c));

  const L: string[] = [];
  L.push(
    `Halcyon runs with encryption off, as the others (none has a crypto stack here). ${n} /sync bodies; the replay server releases body k at k × ${RELEASE_EVERY_MS} ms after the first /sync (holding the long-poll until then). ` +
      `Each body holds one event in a busy room, whose handler burns ${BURN_MS} ms of main-thread CPU (${fmt(1000 / RELEASE_EVERY_MS)} events/s offered), ` +
      `then one event in one of ${QUIET_ROOMS} quiet rooms, whose handler only records the time. The window is ${fmt(offerMs / 1000, 1)} s from the first handler call; ` +
      'busy events burn only inside it, so every run ends. Gap = next /sync request arrival − previous /sync response completion on the replay server, ' +
      'over responses completed in the window. Quiet latency = quiet handler call − release of its body (server clock, offset-corrected), over all quiet ' +
      'events (all are released in the window; those handled after it no longer wait behind burns, so the upper percentiles are a lower bound). ' +
      '"Burns waited" counts burns that started after a quiet event was released and before it was handled (0–1 means quiet rooms get a turn between ' +
      'burns); "latency growth" is the slope of quiet latency over release time for the quiet events handled within the window (0: steady; ' +
      `(burn wall ms − ${RELEASE_EVERY_MS}) / ${RELEASE_EVERY_MS}, i.e. ${fmt((BURN_MS - RELEASE_EVERY_MS) / RELEASE_EVERY_MS)} on an idle machine: each quiet event waits ` +
      "for every earlier body's burn). Burn wall ms is the median wall time of a burn (above its CPU time when other processes compete for the CPU). " +
      `${ctx.rounds} rounds, each starting with the next contender; min / **median** / max over rounds. ` +
      sideRoundsNote(CONTENDERS.filter((c) => SIDE.has(c)).map((c) => LABELS[c]), ctx.sideRounds, ctx.rounds),
    '',
  );
  L.push(
    '| contender | /sync responses in window | gap p50 ms | gap p99 ms | gap max ms | quiet latency p50 ms | quiet latency p99 ms | quiet latency max ms | quiet handled in window (of ' +
      `${n}) | burns waited, median / max | latency growth ms/ms | burn wall ms |`,
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
  );
  for (const c of CONTENDERS) {
    const s = summary[c];
    L.push(
      `| ${LABELS[c]} | ${mmm(s.responsesInWindow)} | ${mmm(s.gapP50, 1)} | ${mmm(s.gapP99, 1)} | ${mmm(s.gapMax, 1)} | ${mmm(s.quietP50)} | ` +
        `${mmm(s.quietP99)} | ${mmm(s.quietMax)} | ${mmm(s.quietHandledInWindow)} | ${s.burnsWaitedMedian.n > 0 ? `${fmt(s.burnsWaitedMedian.median)} / ${fmt(s.burnsWaitedMax.median)}` : '–'} | ` +
        `${mmm(s.latencyGrowth, 2)} | ${mmm(s.burnWallMedian)} |`,
    );
  }
  L.push('', fairness(summary.halcyon, ok('halcyon'), n));
  L.push('', 'Ratios Halcyon ÷ other (of medians; lower is better):', '');
  L.push('| versus | gap p99 | quiet latency p50 | quiet latency p99 |', '| --- | ---: | ---: | ---: |');
  for (const other of CONTENDERS.filter((c) => c !== 'halcyon')) {
    const cell = (m: string) => {
      const r = ratios.find((x) => x.versus === other && x.metric === m)!;
      return Number.isFinite(r.ofMedians) ? `×${fmt(r.ofMedians, 2)} (rounds ${fmt(r.perRound.min, 2)}–${fmt(r.perRound.max, 2)})` : '–';
    };
    L.push(`| ${other} | ${cell(ratios[0]!.metric)} | ${cell(ratios[1]!.metric)} | ${cell(ratios[2]!.metric)} |`);
  }
  const failed = samples.filter((s) => s.error);
  if (failed.length) L.push('', `Failed measurements: ${failed.map((s) => `${s.contender} r${s.round}: ${s.error}`).join('; ')}`);
  L.push('');

  return {
    id: 'isolation',
    title: '2. Isolation: a handler that burns CPU',
    ratios,
    goals,
    markdown: L,
    data: { offerMs, releaseEveryMs: RELEASE_EVERY_MS, burnMs: BURN_MS, quietRooms: QUIET_ROOMS, bodies: n, summary, samples },
  };
};
