/**
 * Workload 8, soak on Synapse: a reply bot under steady traffic for minutes, its RSS sampled from /proc. A sender
 * in this process posts 20 messages/s round-robin into 10 rooms; the contender (Halcyon with its defaults but
 * `rateLimit: false`, or matrix-bot-sdk) runs in a process of its own (bench/workloads/soak-child.ts) and answers
 * every message with a rich reply. The contenders run one after the other, each on a fresh Synapse: both at once
 * (80 events/s with the replies) is more than Synapse on SQLite persists on two cores, and both fell behind by the
 * same thousands of messages. Reported: RSS over time, its growth after the first minute (%/hour), the steady RSS,
 * Halcyon ÷ matrix-bot-sdk, Halcyon's per-thread breakdown, and, from the rooms' history on the server, whether
 * every message got exactly one reply.
 *
 * Duration per contender: 10 minutes, 2 with `--quick`, or `--soak SECONDS`.
 * @module
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { MemoryReport } from '../../src/memory.ts';
import type { ActorMemory } from '../../src/protocol.ts';
import type { Homeserver, TestUser } from '../../test/harness/synapse.ts';
import type { GoalEntry, RatioEntry, Workload } from '../report.ts';
import { fmt } from '../stats.ts';
import type { ChildArgs, ChildLine, SoakContender } from './soak-child.ts';
import { Api, newDevice, now, sleep, withSynapse, withTimeout } from './synapse-common.ts';

const RATE_PER_S = 20;
const ROOMS = 10;
/** RSS sampling period. */
const SAMPLE_MS = 2_000;
/** Growth is fitted from this point of the stream on (the first minute is start-up and warm-up). */
const SETTLE_S = 60;
/** Halcyon's per-thread breakdown is taken this often. */
const BREAKDOWN_MS = 30_000;
const CHILD = fileURLToPath(new URL('./soak-child.ts', import.meta.url));
const LABEL: Record<SoakContender, string> = { halcyon: 'Halcyon', 'matrix-bot-sdk': 'matrix-bot-sdk' };
const CONTENDERS: SoakContender[] = ['halcyon', 'matrix-bot-sdk'];
/** After the stream, replies are waited for as long as they keep coming, giving up after this long without one. */
const DRAIN_STALL_MS = 60_000;
/** Most sender PUTs unanswered at once: two seconds of the stream (see `stream`). */
const MAX_PUTS_IN_FLIGHT = 2 * RATE_PER_S;
const MB = 2 ** 20;
/** glibc's arena limit the contenders inherit from this process's environment, if any: it changes their RSS, so the report says so. */
const ARENA_MAX = process.env.MALLOC_ARENA_MAX;

/** One contender's run. */
interface SoakSample {
  contender: SoakContender;
  /**
   * [seconds since the measured stream started (negative before), RSS MiB, messages sent − handled, replies not
   * yet sent: handled − replied − failed (the bot's send backlog, held in its memory)].
   */
  rss: Array<[number, number, number, number]>;
  /** Halcyon's per-thread breakdowns: [seconds, report]. */
  breakdowns: Array<[number, MemoryReport]>;
  sent: number;
  handled: number;
  replied: number;
  failedReplies: number;
  /** From the rooms' history: messages without a reply, and replies beyond the first. */
  lost: number;
  duplicates: number;
  /** RSS figures, MiB; growth in % of the steady RSS per hour. */
  startMb: number;
  steadyMb: number;
  peakMb: number;
  growthPctPerHour: number;
  secondHalfGrowthPctPerHour: number;
  maxBehind: number;
  /** Most replies the bot had asked for and the server not yet accepted, at a sample during the stream. */
  maxRepliesQueued: number;
  /** Most sender PUTs not yet answered by Synapse at a sample (messages "behind" that the server had not accepted). */
  maxPutsInFlight: number;
  /** Messages sent while the stream ran: below `seconds × RATE_PER_S`, Synapse did not take them as fast. */
  sentInStream: number;
  /** Messages handled while the stream ran: below `sentInStream`, the bot was behind when it ended. */
  handledInStream: number;
  error?: string;
}

/** A contender's process and what it last said. */
class Child {
  readonly proc: ChildProcess;
  stats: { handled: number; replied: number; failed: number; lastError?: string } = { handled: 0, replied: 0, failed: 0 };
  readonly memory: Array<{ at: number; report: MemoryReport }> = [];
  private stderr = '';
  private readonly waiters: Array<{ kind: ChildLine['soak']; resolve: () => void }> = [];
  readonly exited: Promise<number | null>;

  constructor(readonly contender: SoakContender, args: ChildArgs) {
    this.proc = spawn(process.execPath, ['--no-deprecation', '--import', 'tsx', CHILD], { stdio: ['pipe', 'pipe', 'pipe'] });
    this.proc.stdin!.write(`${JSON.stringify(args)}\n`);
    this.exited = new Promise((resolve) => this.proc.once('close', resolve));
    this.proc.stderr!.setEncoding('utf8').on('data', (d: string) => (this.stderr = (this.stderr + d).slice(-4000)));
    createInterface({ input: this.proc.stdout! }).on('line', (l) => {
      if (!l.startsWith('{"soak"')) return; // matrix-bot-sdk logs to stdout too
      const line = JSON.parse(l) as ChildLine;
      if (line.soak === 'stats') this.stats = line;
      if (line.soak === 'memory') this.memory.push(line);
      if (line.soak === 'error') this.stderr += line.error;
      for (const w of this.waiters.filter((x) => x.kind === line.soak)) w.resolve();
    });
  }

  /** Resolves on the next line of `kind`; rejects if the process exits first or `ms` pass. */
  next(kind: ChildLine['soak'], ms: number): Promise<void> {
    const line = new Promise<void>((resolve) => this.waiters.push({ kind, resolve }));
    const died = this.exited.then((code) => {
      throw new Error(`${this.contender} exited (code ${code}): ${this.stderr.trim().slice(-1500)}`);
    });
    return withTimeout(Promise.race([line, died]), ms, `${this.contender} to say ${kind}`);
  }

  /** Resident set of the child, MiB (VmRSS), or NaN once it is gone. */
  rssMb(): number {
    try {
      const kb = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${this.proc.pid}/status`, 'utf8'))?.[1];
      return kb ? (Number(kb) * 1024) / MB : NaN;
    } catch {
      return NaN;
    }
  }

  get log(): string {
    return this.stderr;
  }
}

/** Least-squares slope of y over x (per unit of x); NaN with fewer than 3 points. */
function slope(points: Array<[number, number]>): number {
  if (points.length < 3) return NaN;
  const n = points.length;
  const mx = points.reduce((s, p) => s + p[0], 0) / n;
  const my = points.reduce((s, p) => s + p[1], 0) / n;
  let num = 0;
  let den = 0;
  for (const [x, y] of points) {
    num += (x - mx) * (y - my);
    den += (x - mx) ** 2;
  }
  return num / den;
}

const median = (xs: number[]): number => {
  const s = xs.filter(Number.isFinite).sort((a, b) => a - b);
  return s.length ? (s[Math.floor((s.length - 1) / 2)]! + s[Math.ceil((s.length - 1) / 2)]!) / 2 : NaN;
};

/**
 * Counts, from the rooms' history, messages of this run without a reply and replies beyond the first. The history
 * is read from Synapse's own event store (its SQLite database, read-only, after the bot stopped): paging
 * `/messages` through an hour's ~100,000 events took Synapse over 50 minutes on this machine (it checks each
 * event's visibility), reading the store takes seconds, and it holds every event the server accepted.
 */
function audit(hs: Homeserver, rooms: string[], senderId: string, botId: string, tag: string): { sent: number; lost: number; duplicates: number } {
  const db = new DatabaseSync(join(hs.dataDir, 'homeserver.db'), { readOnly: true, timeout: 30_000 });
  try {
    const query = db.prepare(
      `SELECT e.sender AS sender, e.event_id AS eventId, j.json AS json FROM events e JOIN event_json j ON j.event_id = e.event_id
       WHERE e.room_id = ? AND e.type = 'm.room.message' AND e.sender IN (?, ?) AND e.outlier = 0`,
    );
    let sent = 0;
    let lost = 0;
    let duplicates = 0;
    for (const roomId of rooms) {
      const replies = new Map<string, number>();
      const asked: string[] = [];
      for (const row of query.iterate(roomId, senderId, botId) as Iterable<{ sender: string; eventId: string; json: string }>) {
        const content = (JSON.parse(row.json) as { content?: Record<string, unknown> }).content ?? {};
        if (row.sender === botId) {
          const to = (content['m.relates_to'] as { 'm.in_reply_to'?: { event_id?: string } } | undefined)?.['m.in_reply_to']?.event_id;
          if (to) replies.set(to, (replies.get(to) ?? 0) + 1);
        } else if (typeof content.body === 'string' && content.body.startsWith(`soak:${tag}:`)) asked.push(row.eventId);
      }
      for (const id of asked) {
        sent++;
        const n = replies.get(id) ?? 0;
        if (n === 0) lost++;
        else duplicates += n - 1;
      }
    }
    return { sent, lost, duplicates };
  } finally {
    db.close();
  }
}

/** Figures of one contender's RSS series. */
function figures(
  rss: SoakSample['rss'],
  seconds: number,
): Pick<SoakSample, 'startMb' | 'steadyMb' | 'peakMb' | 'growthPctPerHour' | 'secondHalfGrowthPctPerHour' | 'maxBehind' | 'maxRepliesQueued'> {
  const during = rss.filter(([t]) => t >= 0 && t <= seconds);
  const steadyMb = median(during.filter(([t]) => t >= (seconds * 2) / 3).map(([, m]) => m));
  const pct = (from: number) => (slope(during.filter(([t]) => t >= from).map(([t, m]) => [t, m])) * 3600 * 100) / steadyMb;
  return {
    startMb: rss.find(([t]) => t >= 0)?.[1] ?? NaN,
    steadyMb,
    peakMb: Math.max(...during.map(([, m]) => m)),
    growthPctPerHour: pct(SETTLE_S),
    secondHalfGrowthPctPerHour: pct(seconds / 2),
    maxBehind: Math.max(0, ...during.map(([, , b]) => b)),
    maxRepliesQueued: Math.max(0, ...during.map(([, , , q]) => q)),
  };
}

const BREAKDOWN_HEAD = ['| thread | heap used | heap committed (of it young generation) | external (array buffers) | wasm | SQLite cache limit |', '|---|---|---|---|---|---|'];

/** A breakdown as table rows (MiB), and what of the RSS the threads' own figures do not cover. */
function breakdownRows(r: MemoryReport): string[] {
  const mb = (x: number | null | undefined) => (x === null || x === undefined ? '–' : fmt(x / MB, 1));
  const row = (name: string, m: ActorMemory | null) =>
    m ? `| ${name} | ${mb(m.heapUsed)} | ${mb(m.heapTotal)} (${mb(m.youngGeneration)}) | ${mb(m.external)} (${mb(m.arrayBuffers)}) | ${mb(m.wasmBytes)} | ${mb(m.sqliteCacheLimit)} |` : `| ${name} | – | – | – | – | – |`;
  // Actors running inline would be main's figures again: only workers add.
  const threads = [r.sync, r.crypto].filter((m): m is ActorMemory => m !== null && m.thread === 'worker').concat([r.main]);
  const counted = threads.reduce((s, m) => s + m.heapTotal + m.external + (m.wasmBytes ?? 0), 0);
  return [
    ...BREAKDOWN_HEAD,
    row('main', r.main),
    row('sync (+ cache)', r.sync),
    row('crypto', r.crypto),
    `| **all** | RSS ${mb(r.rss)} | committed heaps + external + wasm: ${mb(counted)} | rest (code, stacks, allocator, SQLite pages): ${mb(r.rss - counted)} | | |`,
  ];
}

/**
 * Halcyon's RSS beside each thread's committed heap (of it the young generation) at the breakdown nearest each
 * time: a step of the RSS that one thread's heap follows is that heap's doing (V8 grows and shrinks the young
 * generation with the allocation rate), not a leak.
 */
function threadsOverTime(breakdowns: Array<[number, MemoryReport]>, times: number[]): string[] {
  const mb = (x: number | null | undefined) => (x === null || x === undefined ? '–' : fmt(x / MB, 1));
  const heap = (m: ActorMemory | null) => (m ? `${mb(m.heapTotal)} (${mb(m.youngGeneration)})` : '–');
  const rows = times.map((t) => {
    const [at, r] = breakdowns.reduce((best, b) => (Math.abs(b[0] - t) < Math.abs(best[0] - t) ? b : best));
    return `| ${fmt(at / 60, 1)} | ${mb(r.rss)} | ${heap(r.main)} | ${heap(r.sync)} | ${heap(r.crypto)} |`;
  });
  return ['Halcyon over time (MiB): RSS and each thread\'s committed heap (of it the young generation).', '', '| min | RSS | main | sync (+ cache) | crypto |', '|---|---|---|---|---|', ...rows];
}

/** A sample with nothing measured yet. */
function emptySample(contender: SoakContender): SoakSample {
  return {
    contender, rss: [], breakdowns: [], sent: 0, handled: 0, replied: 0, failedReplies: 0, lost: 0, duplicates: 0, startMb: NaN,
    steadyMb: NaN, peakMb: NaN, growthPctPerHour: NaN, secondHalfGrowthPctPerHour: NaN, maxBehind: 0, maxRepliesQueued: 0, maxPutsInFlight: 0, sentInStream: 0, handledInStream: 0,
  };
}

/** The sender's user and the contender's, joined to {@link ROOMS} rooms the sender created. */
async function setUp(hs: Homeserver): Promise<{ sender: Api; senderId: string; user: TestUser; rooms: string[] }> {
  const senderUser = await hs.registerUser();
  const sender = new Api(hs.baseUrl, senderUser.accessToken);
  const user = await hs.registerUser();
  const api = new Api(hs.baseUrl, user.accessToken);
  try {
    const rooms: string[] = [];
    for (let r = 0; r < ROOMS; r++) {
      const roomId = await sender.createRoom([user.userId]);
      await api.join(roomId);
      rooms.push(roomId);
    }
    return { sender, senderId: senderUser.userId, user, rooms };
  } catch (err) {
    await sender.close();
    throw err;
  } finally {
    await api.close();
  }
}

/**
 * The measured stream: for `seconds`, a message every 1/RATE_PER_S s on an absolute schedule, but never more than
 * {@link MAX_PUTS_IN_FLIGHT} unanswered: when Synapse cannot take RATE_PER_S (on SQLite, on a machine shared with
 * other work), the sender slows to what it accepts instead of queueing thousands of requests, which loaded the
 * machine for everyone and left half an hour of backlog to drain after the stream. The bot's RSS is sampled
 * meanwhile; then the replies are waited for as long as they keep coming. Resolves with the stream's start and
 * the number of messages sent in it.
 */
async function stream(bot: Child, send: (i: number) => Promise<{ status: number }>, seconds: number, sample: SoakSample, progress: (l: string) => void): Promise<{ t0: number; sent: number }> {
  const t0 = now() + 1000 / RATE_PER_S;
  const end = t0 + seconds * 1000;
  let sent = 0;
  let inFlight = 0;
  let failures = 0;
  let answered: (() => void) | null = null;
  const behind = () => sent + ROOMS - bot.stats.handled;
  const queued = () => bot.stats.handled - bot.stats.replied - bot.stats.failed;
  const sampler = setInterval(() => {
    sample.maxPutsInFlight = Math.max(sample.maxPutsInFlight, inFlight);
    sample.rss.push([(now() - t0) / 1000, bot.rssMb(), Math.max(0, behind()), queued()]);
  }, SAMPLE_MS);
  try {
    for (let i = 0; ; i++) {
      // Absolute schedule: a late timer does not push every later send back; a full window does (see above).
      const wait = Math.max(t0 + (i * 1000) / RATE_PER_S, now()) - now();
      if (wait > 0) await sleep(wait);
      while (inFlight >= MAX_PUTS_IN_FLIGHT && now() < end) await new Promise<void>((r) => (answered = r));
      if (now() >= end) break;
      inFlight++;
      void send(i)
        .then((r) => void (r.status === 200 ? 0 : failures++), () => void failures++)
        .finally(() => {
          inFlight--;
          answered?.();
          answered = null;
        });
      sent = i + 1;
      if (i > 0 && i % (RATE_PER_S * 60) === 0) progress(`soak ${LABEL[bot.contender]} ${fmt((now() - t0) / 1000)} s: RSS ${fmt(bot.rssMb())} MiB, ${sent} sent, ${behind()} messages behind (${inFlight} not yet accepted by Synapse), ${queued()} replies queued`);
    }
    sample.handledInStream = bot.stats.handled - ROOMS;
    let last = -1;
    let lastAt = now();
    while (inFlight > 0 || bot.stats.replied + bot.stats.failed < sent + ROOMS) {
      const got = bot.stats.replied + bot.stats.failed + (sent - inFlight);
      if (got !== last) [last, lastAt] = [got, now()];
      else if (now() - lastAt > DRAIN_STALL_MS) break;
      await sleep(250);
    }
  } finally {
    clearInterval(sampler);
  }
  if (failures) progress(`soak ${LABEL[bot.contender]}: ${failures} sender PUTs failed`);
  return { t0, sent };
}

/**
 * Runs one contender on a fresh Synapse: its user joins {@link ROOMS} rooms, the bot starts in its own process and
 * answers one warm-up message per room, the measured stream runs for `seconds`, the bot stops, and the rooms'
 * history is audited.
 */
async function soakOne(contender: SoakContender, seconds: number, progress: (l: string) => void): Promise<SoakSample> {
  const sample = emptySample(contender);
  return withSynapse(undefined, async (hs) => {
    const { sender, senderId, user, rooms } = await setUp(hs);
    const tag = randomBytes(4).toString('hex');
    let bot: Child | undefined;
    try {
      const device = await newDevice(hs, user);
      bot = new Child(contender, { contender, homeserverUrl: hs.baseUrl, userId: user.userId, ...device, senderId, memoryEveryMs: BREAKDOWN_MS });
      await bot.next('ready', 90_000);
      const send = (i: number) => sender.send(rooms[((i % ROOMS) + ROOMS) % ROOMS]!, { msgtype: 'm.text', body: `soak:${tag}:${i}` });
      // Warm-up: one message per room, each answered, before the clock starts.
      for (let w = 1; w <= ROOMS; w++) await send(-w);
      const warm = now() + 60_000;
      while (bot.stats.replied < ROOMS && now() < warm) await sleep(200);
      const { t0, sent } = await stream(bot, send, seconds, sample, progress);
      sample.sentInStream = sent;
      const done = bot.next('done', 60_000);
      bot.proc.stdin!.write('stop\n');
      await done.catch((e: unknown) => (sample.error = (e as Error).message));
      const st = bot.stats;
      Object.assign(sample, { handled: st.handled, replied: st.replied, failedReplies: st.failed }, figures(sample.rss, seconds));
      sample.breakdowns = bot.memory.map((m) => [(m.at - t0) / 1000, m.report]);
      if (st.lastError) progress(`soak ${LABEL[contender]}: last reply error: ${st.lastError}`);
      return Object.assign(sample, audit(hs, rooms, senderId, user.userId, tag));
    } finally {
      if (bot && bot.proc.exitCode === null) bot.proc.kill('SIGKILL');
      await sender.close();
    }
  });
}

/** Workload 8: RSS of a reply bot under 20 messages/s on Synapse, against matrix-bot-sdk. */
export const run: Workload = async (ctx) => {
  const seconds = ctx.soakSeconds ?? (ctx.quick ? 120 : 600);
  if (ctx.soakOnly !== undefined && !(CONTENDERS as string[]).includes(ctx.soakOnly)) throw new Error(`--soak-only must be one of ${CONTENDERS.join(', ')}, not ${ctx.soakOnly}`);
  const samples: SoakSample[] = [];
  for (const c of CONTENDERS.filter((x) => ctx.soakOnly === undefined || x === ctx.soakOnly)) {
    ctx.gc();
    const s = await soakOne(c, seconds, ctx.progress).catch((e: unknown): SoakSample => ({ ...emptySample(c), error: e instanceof Error ? e.message : String(e) }));
    samples.push(s);
    ctx.progress(
      `soak ${LABEL[c]}: steady ${fmt(s.steadyMb)} MiB (start ${fmt(s.startMb)}, peak ${fmt(s.peakMb)}), growth ${fmt(s.growthPctPerHour, 1)} %/h after the first minute (${fmt(s.secondHalfGrowthPctPerHour, 1)} %/h over the second half); ` +
        `${s.handledInStream} of ${s.sentInStream} sent handled during the stream (${fmt(s.sentInStream / seconds, 1)} msg/s), ${s.sent} sent in all, ${s.lost} without a reply, ${s.duplicates} duplicate replies${s.error ? `; FAILED: ${s.error}` : ''}`,
    );
  }
  // With --soak-only one of them ran: its own figures, no ratio.
  const h = samples.find((s) => s.contender === 'halcyon');
  const b = samples.find((s) => s.contender === 'matrix-bot-sdk');
  const ratio = h && b ? h.steadyMb / b.steadyMb : NaN;
  const ratios: RatioEntry[] =
    h && b ? [{ workload: 'soak', metric: `steady RSS, reply bot at ${RATE_PER_S} msg/s`, versus: 'matrix-bot-sdk', ofMedians: ratio, perRound: { min: ratio, median: ratio, max: ratio, n: 1 }, better: 'lower' }] : [];
  const goals: GoalEntry[] = [
    ...(h
      ? [{
          goal: 'soak: RSS growth ≤5 % per hour after the first minute',
          actual: `${fmt(h.growthPctPerHour, 1)} %/h over ${fmt(seconds / 60, 1)} min (${fmt(h.secondHalfGrowthPctPerHour, 1)} %/h over the second half)${b ? `; matrix-bot-sdk ${fmt(b.growthPctPerHour, 1)} %/h` : ''}`,
          met: Number.isFinite(h.growthPctPerHour) ? h.growthPctPerHour <= 5 : null,
        }]
      : []),
    ...(h && b
      ? [{ goal: 'soak: steady RSS ≤1.5× matrix-bot-sdk', actual: `${fmt(h.steadyMb)} MiB vs ${fmt(b.steadyMb)} MiB: ×${fmt(ratio, 2)}`, met: Number.isFinite(ratio) ? ratio <= 1.5 : null }]
      : []),
  ];
  const step = Math.max(60, Math.round(seconds / 10 / 60) * 60);
  const near = (s: SoakSample, t: number) => s.rss.filter(([x]) => Math.abs(x - t) <= SAMPLE_MS / 1000);
  const at = (s: SoakSample, t: number) => median(near(s, t).map(([, m]) => m));
  const queuedAt = (s: SoakSample, t: number) => median(near(s, t).map(([, , , q]) => q));
  const times = Array.from({ length: Math.floor(seconds / step) + 1 }, (_, i) => i * step);
  const end = h?.breakdowns.at(-1);
  const first = h?.breakdowns.find(([t]) => t >= 0);
  const markdown = [
    `A sender in the benchmark process posts ${RATE_PER_S} messages/s round-robin into ${ROOMS} rooms for ${fmt(seconds / 60, 1)} min (up to ${fmt(seconds * RATE_PER_S)} messages, after ${ROOMS} warm-up messages; never more than ${MAX_PUTS_IN_FLIGHT} unanswered, so when Synapse takes fewer, the sender keeps to Synapse's pace: the rate column), and the contender answers every one with a rich reply. Halcyon runs with its defaults but \`rateLimit: false\` (so encryption is on; the rooms are not encrypted), matrix-bot-sdk as its README sets a bot up (\`MemoryStorageProvider\`, no crypto). Each runs in a process of its own (Node with \`--import tsx\` for the child script, both alike), one after the other, each on a fresh Synapse: both at once (80 events/s with the replies) is more than Synapse on SQLite persists on this machine, and both fell behind alike. RSS (VmRSS, MiB) is sampled every ${SAMPLE_MS / 1000} s; growth is the least-squares slope from ${SETTLE_S} s on, in % of the steady RSS (the median over the last third) per hour. "Handled in the stream" below "sent in the stream" means the bot was behind when the stream ended (the most messages behind, and of them the most not yet accepted by Synapse); "replies queued" are replies the bot has asked for that Synapse has not yet accepted, which the bot holds in memory meanwhile (a queue that grows through the run shows up as RSS growth). Replies are counted from the rooms' history in Synapse's event store (its database, read after the bot stopped).${ARENA_MAX ? ` The contenders ran with \`MALLOC_ARENA_MAX=${ARENA_MAX}\` in their environment (glibc's malloc arenas; see the README's Memory section).` : ''}`,
    '',
    '| contender | RSS at start | steady RSS | peak | growth after 1 min | growth, 2nd half | rate (msg/s) | sent in the stream | handled in the stream | most behind (not yet accepted by Synapse) | most replies queued | sent | no reply | duplicate replies |',
    '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|',
    ...samples.map((s) => `| ${LABEL[s.contender]} | ${fmt(s.startMb)} | **${fmt(s.steadyMb)}** | ${fmt(s.peakMb)} | ${fmt(s.growthPctPerHour, 1)} %/h | ${fmt(s.secondHalfGrowthPctPerHour, 1)} %/h | ${fmt(s.sentInStream / seconds, 1)} | ${fmt(s.sentInStream)} | ${fmt(s.handledInStream)} | ${fmt(s.maxBehind)} (${fmt(s.maxPutsInFlight)}) | ${fmt(s.maxRepliesQueued)} | ${fmt(s.sent)} | ${fmt(s.lost)} | ${fmt(s.duplicates)} |`),
    '',
    `RSS over time (MiB, with the replies queued): ${times.map((t) => `${fmt(t / 60, 1)} min: ${samples.map((s) => `${LABEL[s.contender]} ${fmt(at(s, t))} (${fmt(queuedAt(s, t))} replies queued)`).join(' / ')}`).join('; ')}.`,
    ...(h && h.breakdowns.length > 0 ? ['', ...threadsOverTime(h.breakdowns, times)] : []),
    ...(end
      ? [
          '',
          `Halcyon by thread (MiB), each thread measuring itself (each actor's \`memory()\`, src/memory.ts): V8 heap used and committed (of it the young generation), external memory (of it array buffers), crypto-wasm's linear memory, and the SQLite page caches' limit. ${first ? `At ${fmt(first[0])} s:` : ''}`,
          '',
          ...(first ? breakdownRows(first[1]) : []),
          '',
          `At the end (${fmt(end[0])} s):`,
          '',
          ...breakdownRows(end[1]),
        ]
      : []),
    '',
    samples.some((s) => s.lost || s.duplicates || s.error)
      ? `**Not every message got exactly one reply, or a run failed:** ${samples.map((s) => `${LABEL[s.contender]}: ${s.lost} without a reply, ${s.duplicates} duplicates${s.error ? `, failed: ${s.error}` : ''}`).join('; ')}.`
      : 'Every message got exactly one reply from each contender.',
  ];
  return { id: 'soak', title: `8. Soak: a reply bot at ${RATE_PER_S} messages/s for ${fmt(seconds / 60, 1)} minutes`, ratios, goals, markdown, data: { seconds, ratePerSecond: RATE_PER_S, rooms: ROOMS, sampleMs: SAMPLE_MS, samples } };
};
