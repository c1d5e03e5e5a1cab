/**
 * Workload 6, sending to Synapse: (a) messages/s into one room with rate limits off, against a raw undici loop;
 * (b) a burst under Synapse's default `rc_message` behind a counting proxy: 429s suffered, sends reported failed,
 * sends lost, and the time to deliver them all.
 * @module
 */
import { randomBytes } from 'node:crypto';
import { startFaultProxy, type FaultProxy } from '../../test/harness/fault-proxy.ts';
import type { Homeserver, TestUser } from '../../test/harness/synapse.ts';
import type { PeerClient } from '../peers/types.ts';
import { goalEntry, ratioOf, ratioVerdict, roundsVerdict, runsInRound, sideRoundsNote, type BenchContext, type Contender, type GoalEntry, type RatioEntry, type Workload, type WorkloadReport } from '../report.ts';
import { fmt, summarize } from '../stats.ts';
import { Api, availablePeers, newDevice, now, sleep, startPeer, stopPeer, withSynapse, withTimeout, type PeerName } from './synapse-common.ts';

/** The floor's sends are a raw loop already: here the raw loop itself stands for it. */
type SendContender = Exclude<Contender, 'floor'>;
/**
 * Part (a) runs Halcyon twice: `halcyon` awaits each send before the next, as every other contender does (the
 * comparison), and `halcyon-pipelined` fires them all at once (what its outbox allows: it keeps them in call order).
 */
type RateContender = SendContender | 'halcyon-pipelined' | 'halcyon-paced';

const LABEL: Record<RateContender, string> = {
  raw: 'raw undici loop',
  halcyon: 'Halcyon, each send awaited',
  'halcyon-pipelined': 'Halcyon, all sends fired at once',
  'halcyon-paced': 'Halcyon, all fired at once, default pacing',
  'matrix-bot-sdk': 'matrix-bot-sdk',
  'matrix-js-sdk': 'matrix-js-sdk',
};
/** Part (b)'s names: there Halcyon fires its sends at once, paced by its outbox. */
const BURST_LABEL: Record<SendContender, string> = { ...LABEL, halcyon: 'Halcyon (all fired at once, default pacing)' };
/** Why the pipelined ratio is not the comparison. */
const PIPELINED_NOTE = "Not alike: Halcyon's sends all fired at once (its outbox sends them one at a time, in order), the others await each.";
/** Part (a)'s contenders no goal is decided against (the goals are on the raw loop and Halcyon): `ctx.sideRounds` rounds. */
const SIDE: ReadonlySet<RateContender> = new Set(['matrix-bot-sdk', 'matrix-js-sdk']);
/** Synapse's default message limit (what the burst runs into). */
const RC_MESSAGE = { per_second: 0.2, burst_count: 10 };

/** What the room holds afterwards, checked through `/messages`. */
interface Arrival {
  /** Distinct bodies of this run that arrived. */
  arrived: number;
  /** Bodies that arrived more than once. */
  duplicates: number;
  /** Whether the distinct bodies arrived in send order. */
  inOrder: boolean;
}

/** Counts this run's bodies (`s:<tag>:<i>`, i < n) in the room, as `user` sent them. */
async function arrivals(api: Api, roomId: string, userId: string, tag: string, n: number): Promise<Arrival> {
  const seqs = (await api.messages(roomId))
    .filter((ev) => ev.sender === userId && typeof ev.content.body === 'string')
    .map((ev) => (ev.content.body as string).split(':'))
    .filter(([kind, t]) => kind === 's' && t === tag)
    .map(([, , i]) => Number(i));
  const distinct = new Set(seqs.filter((i) => i >= 0 && i < n));
  const firsts = seqs.filter((i, k) => seqs.indexOf(i) === k);
  return { arrived: distinct.size, duplicates: seqs.length - distinct.size, inOrder: firsts.every((i, k) => k === 0 || i > firsts[k - 1]!) };
}

/** Starts a fresh client (new device) of a peer, or nothing for the raw loop. */
async function client(c: SendContender | 'floor', hs: Homeserver, baseUrl: string, user: TestUser, rateLimit: boolean): Promise<PeerClient | undefined> {
  if (c === 'raw') return undefined;
  const { accessToken, deviceId } = await newDevice(hs, user);
  return startPeer(c, { homeserverUrl: baseUrl, userId: user.userId, accessToken, deviceId, onEvent: () => {}, deliverInitial: false, rateLimit });
}

/** One contender's part (a) run. */
interface RateSample extends Arrival {
  contender: RateContender;
  round: number;
  seconds: number;
  perSecond: number;
  /** Sends the library reported as failed. */
  failed: number;
  error?: string;
}

/** Part (a): `m` sends into a fresh room, as fast as the contender's API allows while keeping them in order. */
async function sendRate(c: RateContender, round: number, m: number, hs: Homeserver, user: TestUser, api: Api): Promise<RateSample> {
  const tag = randomBytes(4).toString('hex');
  const roomId = await api.createRoom();
  const bodies = Array.from({ length: m }, (_, i) => `s:${tag}:${i}`);
  let peer: PeerClient | undefined;
  let failed = 0;
  let seconds = NaN;
  let error: string | undefined;
  try {
    // The raw loop runs beside the floor's bare /sync loop: a bot always syncs, and each send wakes its long-poll,
    // which costs the homeserver work too (without it the raw loop sent ~20% faster than any syncing client).
    // `halcyon-paced` is Halcyon as a bot author leaves it (adaptive pacing, the default) on a server without limits.
    peer = await client(c === 'raw' ? 'floor' : c === 'halcyon-pipelined' || c === 'halcyon-paced' ? 'halcyon' : c, hs, hs.baseUrl, user, c === 'halcyon-paced');
    const t0 = now();
    const sending = (async () => {
      if (c === 'raw') {
        // The floor: each raw undici PUT awaited in turn (per-room order), nothing else.
        for (const body of bodies) await peer!.sendText(roomId, body).catch(() => failed++);
      } else if (c === 'halcyon-pipelined' || c === 'halcyon-paced') {
        // A bot fires its sends; the outbox queues them per room, in call order.
        failed = (await Promise.allSettled(bodies.map((b) => peer!.sendText(roomId, b)))).filter((r) => r.status === 'rejected').length;
      } else {
        // matrix-bot-sdk and matrix-js-sdk promise nothing about the order of concurrent sends: await each (and
        // Halcyon too, for the comparison).
        for (const body of bodies) await peer!.sendText(roomId, body).catch(() => failed++);
      }
    })();
    await withTimeout(sending, 120_000, `${c} to send ${m} messages`);
    seconds = (now() - t0) / 1000;
  } catch (e) {
    error = e instanceof Error ? e.message : String(e);
  } finally {
    await stopPeer(c, peer);
  }
  return { contender: c, round, seconds, perSecond: m / seconds, failed, ...(await arrivals(api, roomId, user.userId, tag, m)), ...(error ? { error } : {}) };
}

/** One contender's part (b) run. */
interface BurstSample extends Arrival {
  contender: SendContender;
  /** 429 answers to its sends (PUT …/send/…), and to anything else it asked, as the counting proxy saw them. */
  sends429: number;
  other429: number;
  /** PUTs of sends the proxy saw (retries included). */
  sendRequests: number;
  /** Each send PUT the proxy saw: seconds after the burst's start, and the status it got. */
  sendLog: Array<{ atS: number; status: number | null }>;
  /** Sends the library reported as failed (rejected), and those still unsettled at the deadline. */
  failed: number;
  unsettled: number;
  lost: number;
  /** From the burst's start until every send had settled, s (NaN if some never settled). */
  settledSeconds: number;
  /** From the burst's start until the last successful send resolved, s. */
  lastDeliveredSeconds: number;
  error?: string;
}

/** Part (b): `k` sends as a burst through a counting proxy, on Synapse's default `rc_message`. */
async function burst(c: SendContender, k: number, hs: Homeserver): Promise<BurstSample> {
  const user = await hs.registerUser();
  const direct = new Api(hs.baseUrl, user.accessToken);
  const roomId = await direct.createRoom();
  // Creating the room took one rc_message token; the burst starts once it is back (1 / 0.2 per s = 5 s).
  const fullBucketAt = now() + 1000 / RC_MESSAGE.per_second + 500;
  const proxy: FaultProxy = await startFaultProxy(hs.baseUrl);
  const viaProxy = new Api(proxy.url, user.accessToken);
  const tag = randomBytes(4).toString('hex');
  const bodies = Array.from({ length: k }, (_, i) => `s:${tag}:${i}`);
  const settledAt: Array<number | undefined> = Array.from({ length: k }, () => undefined);
  const ok: boolean[] = new Array(k).fill(false);
  let peer: PeerClient | undefined;
  let error: string | undefined;
  let t0 = NaN;
  let t0Wall = NaN; // the proxy stamps requests with Date.now()
  // Past the burst, each send needs 5 s at 0.2/s: allow half as much again, plus a minute.
  const deadlineMs = (k - RC_MESSAGE.burst_count) * 1.5 * (1000 / RC_MESSAGE.per_second) + 60_000;
  try {
    peer = await client(c, hs, proxy.url, user, true);
    await sleep(Math.max(0, fullBucketAt - now()));
    t0 = now();
    t0Wall = Date.now();
    const settle = (i: number, p: Promise<unknown>): Promise<void> =>
      p.then(
        () => {
          ok[i] = true;
        },
        () => {},
      ).finally(() => {
        settledAt[i] = now();
      });
    const sending = (async () => {
      if (c === 'raw') {
        // No retry: a 429 is a failed send.
        for (let i = 0; i < k; i++) {
          await settle(i, viaProxy.send(roomId, { msgtype: 'm.text', body: bodies[i]! }).then((r) => (r.status === 200 ? r : Promise.reject(new Error(String(r.status))))));
        }
      } else if (c === 'halcyon') {
        await Promise.all(bodies.map((b, i) => settle(i, peer!.sendText(roomId, b))));
      } else {
        // A bot author's loop: await each, carry on past a failure.
        for (let i = 0; i < k; i++) await settle(i, peer!.sendText(roomId, bodies[i]!));
      }
    })();
    await withTimeout(sending, deadlineMs, `${c} to settle ${k} sends`).catch((e: Error) => {
      error = e.message;
    });
  } catch (e) {
    error = e instanceof Error ? e.message : String(e);
  } finally {
    await stopPeer(c, peer);
    await viaProxy.close();
    await proxy.close();
  }
  const arrival = await arrivals(direct, roomId, user.userId, tag, k);
  await direct.close();
  const isSend = (path: string) => path.includes('/send/');
  const unsettled = settledAt.filter((t) => t === undefined).length;
  const lastOk = Math.max(...settledAt.filter((t, i) => t !== undefined && ok[i]).map((t) => t!));
  return {
    contender: c,
    sends429: proxy.records.filter((r) => r.method === 'PUT' && isSend(r.path) && r.status === 429).length,
    other429: proxy.records.filter((r) => !(r.method === 'PUT' && isSend(r.path)) && r.status === 429).length,
    sendRequests: proxy.records.filter((r) => r.method === 'PUT' && isSend(r.path)).length,
    sendLog: proxy.records.filter((r) => r.method === 'PUT' && isSend(r.path)).map((r) => ({ atS: (r.start - t0Wall) / 1000, status: r.status })),
    failed: ok.filter((x, i) => !x && settledAt[i] !== undefined).length,
    unsettled,
    lost: k - arrival.arrived,
    settledSeconds: unsettled ? NaN : (Math.max(...settledAt.map((t) => t!)) - t0) / 1000,
    lastDeliveredSeconds: Number.isFinite(lastOk) ? (lastOk - t0) / 1000 : NaN,
    ...arrival,
    ...(error ? { error } : {}),
  };
}

/** Workload 6: send rate with limits off, and a burst under Synapse's default `rc_message`. */
export const run: Workload = async (ctx: BenchContext): Promise<WorkloadReport> => {
  const m = ctx.quick ? 100 : 200;
  const k = ctx.quick ? 13 : 20;
  const contenders: SendContender[] = ['raw', ...availablePeers().filter((p): p is Exclude<PeerName, 'floor'> => p !== 'floor')];
  const rateContenders: RateContender[] = ['raw', 'halcyon', 'halcyon-pipelined', 'halcyon-paced', ...contenders.filter((c) => c !== 'raw' && c !== 'halcyon')];

  const rate: RateSample[] = [];
  await withSynapse(undefined, async (hs) => {
    const users = new Map<RateContender, { user: TestUser; api: Api }>();
    try {
      for (const c of rateContenders) {
        const user = await hs.registerUser();
        users.set(c, { user, api: new Api(hs.baseUrl, user.accessToken) });
      }
      for (let round = 0; round < ctx.rounds; round++) {
        const order = rateContenders.map((_, i) => rateContenders[(i + round) % rateContenders.length]!).filter((c) => runsInRound(ctx, round, SIDE.has(c)));
        for (const c of order) {
          const { user, api } = users.get(c)!;
          ctx.gc();
          const s = await sendRate(c, round, m, hs, user, api);
          rate.push(s);
          const check = s.arrived === m && s.duplicates === 0 && s.inOrder ? 'all arrived in order once' : `${s.arrived}/${m} arrived, ${s.duplicates} duplicates, ${s.inOrder ? 'in order' : 'OUT OF ORDER'}`;
          ctx.progress(`sends round ${round + 1}/${ctx.rounds} ${LABEL[c]}: ${s.error ? `FAILED: ${s.error}` : `${fmt(s.perSecond, 1)} msg/s`}; ${check}`);
        }
      }
    } finally {
      for (const { api } of users.values()) await api.close();
    }
  });

  let bursts: BurstSample[] = [];
  await withSynapse({ rc_message: RC_MESSAGE }, async (hs) => {
    ctx.gc();
    // Concurrently, each on its own user: the sends past the burst wait ~5 s each, whoever sends them.
    bursts = await Promise.all(
      contenders.map((c) =>
        burst(c, k, hs).catch(
          (e: unknown): BurstSample => ({ contender: c, sends429: NaN, other429: NaN, sendRequests: NaN, sendLog: [], failed: NaN, unsettled: NaN, lost: NaN, settledSeconds: NaN, lastDeliveredSeconds: NaN, arrived: NaN, duplicates: NaN, inOrder: false, error: e instanceof Error ? e.message : String(e) }),
        ),
      ),
    );
    for (const b of bursts) {
      ctx.progress(`burst of ${k} ${BURST_LABEL[b.contender]}: ${b.sends429} × 429, ${b.failed} failed, ${b.unsettled} unsettled, ${b.arrived}/${k} arrived (${b.lost} lost), settled in ${fmt(b.settledSeconds, 1)} s${b.error ? `; ${b.error}` : ''}`);
    }
  });

  const of = (c: RateContender) => rate.filter((s) => s.contender === c);
  const series = (c: RateContender) => of(c).map((s) => ({ round: s.round, value: s.perSecond }));
  const median = (c: RateContender) => `${fmt(summarize(of(c).map((x) => x.perSecond).filter(Number.isFinite)).median, 1)}/s`;
  const ratios: RatioEntry[] = [];
  for (const other of contenders.filter((c) => c !== 'halcyon')) {
    ratios.push({ workload: 'sends', metric: `sends/s into one room, each awaited, limits off (${m})`, versus: other, ...ratioOf(series('halcyon'), series(other)), better: 'higher', value: median('halcyon') });
  }
  for (const other of contenders.filter((c) => c !== 'halcyon')) {
    ratios.push({
      workload: 'sends',
      metric: `sends/s into one room, Halcyon's fired at once, limits off (${m})`,
      versus: other,
      ...ratioOf(series('halcyon-pipelined'), series(other)),
      better: 'higher',
      value: median('halcyon-pipelined'),
      note: PIPELINED_NOTE,
    });
  }

  const goals: GoalEntry[] = [];
  const vsRaw = ratios.find((r) => r.versus === 'raw');
  if (vsRaw && of('halcyon').length) {
    goals.push(goalEntry('sends ≥0.9× raw with limits off (each send awaited, as the raw loop does)', `×${fmt(vsRaw.ofMedians, 2)} (rounds ${fmt(vsRaw.perRound.min, 2)}–${fmt(vsRaw.perRound.max, 2)})`, ratioVerdict(vsRaw, 'higher', 0.9)));
  }
  // Default pacing against no pacing, both fired at once, round by round on the same server without limits.
  const paced = ratioOf(series('halcyon-paced'), series('halcyon-pipelined'));
  if (of('halcyon-paced').length && of('halcyon-pipelined').length) {
    goals.push(
      goalEntry(
        'default (adaptive) pacing within 1.2× of `rateLimit: false` on a server without limits',
        `sends/s ×${fmt(paced.ofMedians, 2)} of unpaced (rounds ${fmt(paced.perRound.min, 2)}–${fmt(paced.perRound.max, 2)}; goal ≥${fmt(1 / 1.2, 2)})`,
        ratioVerdict(paced, 'higher', 1 / 1.2),
      ),
    );
  }
  const hb = bursts.find((b) => b.contender === 'halcyon');
  if (hb) goals.push(goalEntry('zero lost sends under default limits', `${hb.lost} of ${k} lost, ${hb.duplicates} duplicated, ${hb.sends429} × 429 (one run)`, roundsVerdict([hb.lost === 0 && hb.duplicates === 0])));
  if (hb) goals.push(goalEntry('at most one 429 per burst under default limits (default pacing)', `${hb.sends429} × 429 on ${hb.sendRequests} send PUTs (one run)`, roundsVerdict([hb.sends429 <= 1])));

  const integrity = rate.filter((s) => s.error || s.arrived !== m || s.duplicates || !s.inOrder);
  const markdown = [
    `**(a) Limits off.** Each contender sends ${m} messages into a fresh room as fast as its API allows while keeping them in order: the raw loop awaits each undici PUT in turn; matrix-bot-sdk and matrix-js-sdk await each send in a loop; Halcyon runs three times, once awaiting each send in the same loop (the comparison), once with its sends all fired at once (its outbox sends them one at a time per room, in call order) and awaited together, both with \`rateLimit: false\`, and once fired at once with its default pacing (\`'adaptive'\`: full speed until a 429), which on this server without limits should cost nothing (with encryption off in all three, as the others). Timed from the first send to the last acknowledgement, each client already started (a fresh one on a new device per round, syncing meanwhile; the raw loop's user runs the floor's bare /sync loop meanwhile, as any bot does: each send wakes the sender's long-poll, which costs the homeserver work), ${ctx.rounds} rounds with the order rotating. ${sideRoundsNote(rateContenders.filter((c) => SIDE.has(c)).map((c) => LABEL[c]), ctx.sideRounds, ctx.rounds)} Afterwards \`/messages\` is checked: all ${m} there, in order, exactly once.`,
    '',
    '| contender | messages/s (min / **median** / max) | arrived in order, once |',
    '|---|---|---|',
    ...rateContenders.map((c) => {
      const s = summarize(of(c).map((x) => x.perSecond).filter(Number.isFinite));
      const good = of(c).filter((x) => !x.error && x.arrived === m && !x.duplicates && x.inOrder).length;
      return `| ${LABEL[c]} | ${fmt(s.min, 1)} / **${fmt(s.median, 1)}** / ${fmt(s.max, 1)} | ${good}/${of(c).length} rounds |`;
    }),
    '',
    ...(integrity.length ? [`**Not all sends arrived in order exactly once:** ${integrity.map((s) => `${LABEL[s.contender]} round ${s.round + 1}: ${s.arrived}/${m} arrived, ${s.duplicates} duplicates${s.inOrder ? '' : ', out of order'}${s.error ? `, ${s.error}` : ''}`).join('; ')}.`, ''] : []),
    `**(b) Synapse's default \`rc_message\`** (${RC_MESSAGE.per_second}/s, bursts of ${RC_MESSAGE.burst_count}), a second Synapse. Each contender, on its own user and room and behind its own counting proxy, sends ${k} messages as a burst (Halcyon: all fired at once with its default pacing; the others: a loop awaiting each send and carrying on past a failure; the raw loop does not retry). The ${k - RC_MESSAGE.burst_count} sends past the burst must wait ~5 s each, so the contenders run concurrently and once (one round). Each burst starts once the room creation's rc_message token is back (5.5 s after it). Lost = ${k} − distinct bodies found through \`/messages\`.`,
    '',
    '| contender | 429s on sends | send PUTs | reported failed | lost | duplicated | in order | all settled after | last success after |',
    '|---|---|---|---|---|---|---|---|---|',
    ...bursts.map(
      (b) =>
        `| ${BURST_LABEL[b.contender]} | ${b.sends429}${b.other429 ? ` (+${b.other429} elsewhere)` : ''} | ${b.sendRequests} | ${b.failed}${b.unsettled ? ` (+${b.unsettled} unsettled)` : ''} | ${b.lost} | ${b.duplicates} | ${b.inOrder ? 'yes' : 'no'} | ${Number.isFinite(b.settledSeconds) ? `${fmt(b.settledSeconds, 1)} s` : '—'} | ${Number.isFinite(b.lastDeliveredSeconds) ? `${fmt(b.lastDeliveredSeconds, 1)} s` : '—'} |`,
    ),
    ...bursts
      .filter((b) => b.sends429 > 0)
      .flatMap((b) => ['', `${BURST_LABEL[b.contender]}'s send PUTs (s after the burst's start; ✗ = 429): ${b.sendLog.map((r) => `${fmt(r.atS, 1)}${r.status === 429 ? '✗' : ''}`).join(', ')}.`]),
    ...(bursts.some((b) => b.error) ? ['', `Errors: ${bursts.filter((b) => b.error).map((b) => `${BURST_LABEL[b.contender]}: ${b.error}`).join('; ')}.`] : []),
  ];

  return {
    id: 'sends',
    title: '6. Sending to Synapse',
    ratios,
    goals,
    markdown,
    data: { limitsOff: { messages: m, samples: rate }, defaultLimits: { rcMessage: RC_MESSAGE, burst: k, samples: bursts } },
  };
};
