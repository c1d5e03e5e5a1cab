/**
 * Runs a Halcyon {@link Client} against a replay server (no login: the token is built with `encodeToken`), with
 * encryption off, and times how it delivers a known number of timeline events to handlers.
 * @module
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
// The built package, as users run it: workers load plain JS bundles (from source, each worker would transpile through tsx).
import type { Logger, Message, Reaction } from '../src/index.ts';
import { now, processCpuMs as procCpuMs, type ThreadCpu, threadCpuMs as cpuMs, threadsCpuMs } from './stats.ts';

const built = (await import('../dist/index.js' as string)) as typeof import('../src/index.ts');
/** Other builds (`--baseline DIR`), loaded once each. */
const others = new Map<string, Promise<typeof import('../src/index.ts')>>();

/** What the handlers read: `trivial` reads routing fields only; `content` reads the content (forcing the lazy parse). */
export type HandlerMode = 'trivial' | 'content';

/** Options of {@link runHalcyon}. */
export interface HalcyonRunOptions {
  /** Replay server base URL. */
  url: string;
  /** Timeline events (messages + reactions) after which the run is complete. */
  expectedEvents: number;
  mode: HandlerMode;
  /** Extra per-event work, run inside the handler after the reads (e.g. a CPU burn). */
  work?: () => void;
  /** Called first in every handler with the event's room (the throughput workload times each body's first call by it). */
  onRoom?: (roomId: string) => void;
  /** Give up after this long (ms) without reaching `expectedEvents`. */
  timeoutMs?: number;
  /** Passed through to the client (default: the library's default). */
  maxQueuedEvents?: number;
  /** Run another build of Halcyon: the `dist/` directory holding its index.js (default: this tree's). */
  dist?: string;
  /**
   * Read every thread's CPU time (/proc) at the first and at the last handler call ({@link HalcyonRunResult.threadsAtFirst}).
   * Off by default: each reading costs the main thread a fraction of a ms (outside the CPU figures' window, inside the events/s one).
   */
  threadCpu?: boolean;
}

/** Result of {@link runHalcyon}. All times are epoch ms (`performance.timeOrigin + performance.now()`). */
export interface HalcyonRunResult {
  /** Handler calls: `message` + `reaction`. */
  events: number;
  messages: number;
  reactions: number;
  /** When `client.run()` was called. */
  startAt: number;
  /** First and last handler call. */
  firstHandlerAt: number;
  lastHandlerAt: number;
  /** Main-thread CPU (user + system, ms) from `client.run()` to the last handler call. */
  mainCpuMs: number;
  /** Main-thread CPU from `client.run()` to the first handler call (start-up, first batch's arrival). */
  mainCpuToFirstMs: number;
  /** CPU of the whole bench process (all threads: main, sync and cache workers, GC) from the first to the last handler call, ms. */
  procCpuFirstToLastMs: number;
  /** With `threadCpu`: each thread's CPU just before the first handler call's other readings and just after the last's (null off Linux). */
  threadsAtFirst?: Map<string, ThreadCpu> | null;
  threadsAtLast?: Map<string, ThreadCpu> | null;
  /** Errors the client emitted (`error`/`syncError` events) and warnings it logged. */
  problems: string[];
  /** A value derived from what the handlers read, so the reads cannot be optimised away. */
  sink: number;
  /** How long `client.stop()` took, ms. */
  stopMs: number;
}

/** Runs one fresh client (fresh data dir, fresh workers) until `expectedEvents` handler calls, then stops it. */
export async function runHalcyon(opts: HalcyonRunOptions): Promise<HalcyonRunResult> {
  let mod = built;
  if (opts.dist) {
    const url = pathToFileURL(join(resolve(opts.dist), 'index.js')).href;
    if (!others.has(url)) others.set(url, import(url) as Promise<typeof import('../src/index.ts')>);
    mod = await others.get(url)!;
  }
  const { Client, encodeToken } = mod;
  const problems: string[] = [];
  const note = (level: string) => (obj: unknown, msg?: string) => {
    if (problems.length < 20) problems.push(`${level}: ${msg ?? ''} ${obj instanceof Error ? obj.message : typeof obj === 'string' ? obj : JSON.stringify(obj)}`.trim());
  };
  const logger: Logger = { debug: () => {}, info: () => {}, warn: note('warn'), error: note('error') };
  const dataDir = await mkdtemp(join(tmpdir(), 'halcyon-bench-data-'));
  const token = encodeToken({ homeserver: opts.url, userId: '@bot:localhost', deviceId: 'BENCH', accessToken: 'bench' });
  const clientOpts: ConstructorParameters<typeof Client>[0] = {
    dataDir,
    deliverInitialTimeline: true,
    pollTimeoutMs: 30_000,
    rateLimit: false,
    // Off, as every contender it is compared with runs without a crypto stack (E2EE has its own workload).
    encryption: false,
    logger,
    stopTimeoutMs: 5_000,
  };
  if (opts.maxQueuedEvents !== undefined) clientOpts.maxQueuedEvents = opts.maxQueuedEvents;
  const client = new Client(clientOpts);

  const expected = opts.expectedEvents;
  const work = opts.work;
  const onRoom = opts.onRoom;
  let messages = 0;
  let reactions = 0;
  let sink = 0;
  let firstHandlerAt = NaN;
  let lastHandlerAt = NaN;
  let cpuAtFirst = NaN;
  let cpuAtLast = NaN;
  let procAtFirst = NaN;
  let procAtLast = NaN;
  let threadsAtFirst: Map<string, ThreadCpu> | null | undefined;
  let threadsAtLast: Map<string, ThreadCpu> | null | undefined;
  let finish!: () => void;
  const finished = new Promise<void>((resolve) => (finish = resolve));
  const counted = (): void => {
    const n = messages + reactions;
    if (n === 1) {
      // Read first (and last, below): the /proc walk's own cost stays outside the other figures' window.
      if (opts.threadCpu) threadsAtFirst = threadsCpuMs();
      firstHandlerAt = now();
      cpuAtFirst = cpuMs();
      procAtFirst = procCpuMs();
    }
    if (n === expected) {
      lastHandlerAt = now();
      cpuAtLast = cpuMs();
      procAtLast = procCpuMs();
      if (opts.threadCpu) threadsAtLast = threadsCpuMs();
      finish();
    }
  };

  if (opts.mode === 'trivial') {
    client.on('message', (m: Message) => {
      if (onRoom) onRoom(m.roomId);
      sink += m.sender.length + m.eventId.length;
      messages++;
      if (work) work();
      counted();
    });
    client.on('reaction', (r: Reaction) => {
      if (onRoom) onRoom(r.roomId);
      sink += r.sender.length + r.eventId.length;
      reactions++;
      if (work) work();
      counted();
    });
  } else {
    client.on('message', (m: Message) => {
      if (onRoom) onRoom(m.roomId);
      const body = m.content.body;
      sink += typeof body === 'string' ? body.length : 0;
      messages++;
      if (work) work();
      counted();
    });
    client.on('reaction', (r: Reaction) => {
      if (onRoom) onRoom(r.roomId);
      const rel = r.content['m.relates_to'] as { key?: unknown } | undefined;
      sink += typeof rel?.key === 'string' ? rel.key.length : 0;
      reactions++;
      if (work) work();
      counted();
    });
  }
  client.on('error', (e) => note('error event')(e));
  client.on('syncError', (e) => note('syncError event')(e));

  const timeoutMs = opts.timeoutMs ?? 180_000;
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), timeoutMs)));
  let stopMs = 0;
  const startAt = now();
  const cpu0 = cpuMs();
  try {
    await client.run(token);
    const outcome = await Promise.race([finished.then(() => 'done' as const), timedOut]);
    if (outcome === 'timeout') {
      throw new Error(`Halcyon delivered ${messages + reactions} of ${expected} events within ${timeoutMs} ms; problems: ${problems.join(' | ') || 'none'}`);
    }
  } finally {
    clearTimeout(timer);
    const s0 = performance.now();
    await client.stop();
    stopMs = performance.now() - s0;
    await rm(dataDir, { recursive: true, force: true });
  }
  return {
    events: messages + reactions,
    messages,
    reactions,
    startAt,
    firstHandlerAt,
    lastHandlerAt,
    mainCpuMs: cpuAtLast - cpu0,
    mainCpuToFirstMs: cpuAtFirst - cpu0,
    procCpuFirstToLastMs: procAtLast - procAtFirst,
    ...(opts.threadCpu ? { threadsAtFirst: threadsAtFirst ?? null, threadsAtLast: threadsAtLast ?? null } : {}),
    problems,
    sink,
    stopMs,
  };
}
