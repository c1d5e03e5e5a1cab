/**
 * Runs one contender in its own process (so its peak RSS is its own) for the cold-start and memory workloads:
 * logs in with a password on a replay server, starts the client and waits until it is ready (its first sync
 * processed), then, in `memory` mode, lets it settle; prints one JSON line ({@link ChildResult}) and exits.
 * The parent side ({@link runChild}, {@link startInitialSyncServer}) lives here too.
 *
 * Usage: `node --expose-gc --import tsx bench/workloads/client-child.ts '<ChildArgs as JSON>'`.
 * @module
 */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ReplayServer } from '../replay-server.ts';
import { fmt, type Summary } from '../stats.ts';

/** The contenders a child can run. */
export type ChildContender = 'floor' | 'halcyon' | 'halcyon-e2ee' | 'matrix-bot-sdk' | 'matrix-js-sdk';

/** What the parent passes to a child (argv[2], JSON). */
export interface ChildArgs {
  contender: ChildContender;
  /** Replay server base URL. */
  url: string;
  /** `coldstart`: report as soon as ready. `memory`: after ready, collect garbage and wait for the RSS to settle. */
  mode: 'coldstart' | 'memory';
  /** An empty directory for the client's data (Halcyon); the parent removes it, also when the child is killed. */
  dataDir: string;
  /** `memory`: longest wait for the RSS to stop changing, ms. */
  settleMaxMs?: number;
}

/** The one JSON line a child prints. Memory figures are MB (10^6 bytes); times ms. */
export interface ChildResult {
  contender: ChildContender;
  ok: boolean;
  error?: string;
  /** RSS once the contender's modules are loaded, before logging in. */
  importRssMb: number;
  /** Password login (part of `readyMs`). */
  loginMs: number;
  /** Start of the login to the client's ready. */
  readyMs: number;
  /** Peak RSS of the whole process up to ready (VmHWM; see `peakMb`). */
  peakRssMb: number;
  /** floor: the `JSON.parse` of the /sync body alone, and the body's size. */
  parseMs?: number;
  bodyBytes?: number;
  /** memory: RSS and main-thread heap once settled, the wait for it, and whether the RSS did stop changing. */
  rssMb?: number;
  heapUsedMb?: number;
  settleMs?: number;
  settled?: boolean;
  /** memory: of `rssMb`, anonymous memory (heaps, allocator arenas) and file-backed pages (code, libraries), from /proc. */
  rssAnonMb?: number;
  rssFileMb?: number;
  /** memory, Halcyon: each thread's V8 heap once settled (`client.health().memory`), committed and in use. */
  threads?: { mainHeapMb: number; mainUsedMb: number; syncHeapMb: number; syncUsedMb: number; syncExternalMb: number };
  /**
   * Halcyon, when the bench runs with `HALCYON_TRACE_STARTUP=1`: its start-up steps (src/actors.ts traceStartup), ms
   * from the login's start, in the order they happened, with the process's RSS (MB) at each.
   */
  steps?: StartupStep[];
}

/** One traced start-up step of a Halcyon child (see {@link ChildResult.steps}). */
export interface StartupStep {
  step: string;
  /** The thread it happened on (0: main). */
  thread: number;
  ms: number;
  rssMb: number;
}

/** A started contender. */
interface Running {
  stop(): Promise<void>;
  /** Halcyon: its threads' heaps (see {@link ChildResult.threads}). */
  threads?(): Promise<ChildResult['threads']>;
}

/** A contender's two steps: a password login, then a start that resolves once the client is ready. */
interface Runner {
  login(url: string): Promise<{ userId: string; deviceId: string; accessToken: string; token?: string }>;
  start(url: string, session: { userId: string; deviceId: string; accessToken: string; token?: string }, note: Partial<ChildResult>): Promise<Running>;
}

const USER = 'bot';
const PASSWORD = 'bench-password';
const MB = 1e6;
const rssMb = (): number => process.memoryUsage.rss() / MB;
/**
 * Peak RSS of this process: VmHWM from /proc (Linux). Not `resourceUsage().maxRSS`: Linux carries ru_maxrss over
 * an exec, so a child spawned by the bench would report at least the (large) bench process's RSS at the spawn.
 */
const peakMb = (): number => {
  try {
    const kb = /^VmHWM:\s+(\d+) kB$/m.exec(readFileSync('/proc/self/status', 'utf8'))?.[1];
    if (kb) return (Number(kb) * 1024) / MB;
  } catch {
    // not Linux: fall through
  }
  return (process.resourceUsage().maxRSS * 1024) / MB;
};
/** A logger that drops everything, for the matrix-js-sdk client that only logs in. */
const SILENT = { trace() {}, debug() {}, info() {}, warn() {}, error() {}, getChild: () => SILENT };
const gc = (globalThis as { gc?: () => void }).gc ?? (() => {});

/** POSTs a password login with undici, as the floor (the least a client must do). */
async function floorLogin(request: typeof import('undici').request, url: string): Promise<{ userId: string; deviceId: string; accessToken: string }> {
  const { statusCode, body } = await request(`${url}/_matrix/client/v3/login`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ type: 'm.login.password', identifier: { type: 'm.id.user', user: USER }, password: PASSWORD }),
  });
  const res = (await body.json()) as { user_id: string; device_id: string; access_token: string };
  if (statusCode !== 200) throw new Error(`login returned ${statusCode}`);
  return { userId: res.user_id, deviceId: res.device_id, accessToken: res.access_token };
}

/** Loads one contender's library (before the clock starts) and returns its runner. */
async function load({ contender, mode, dataDir }: ChildArgs): Promise<Runner> {
  if (contender === 'floor') {
    // undici is the floor's alone: imported here, before the clock, so no other contender's process carries it.
    const { request } = await import('undici');
    // Kept for the memory mode: the state events of every room, as parsed, and nothing else.
    const kept = new Map<string, unknown[]>();
    return {
      login: (url) => floorLogin(request, url),
      async start(url, session, note) {
        const { statusCode, body } = await request(`${url}/_matrix/client/v3/sync?timeout=0`, { headers: { authorization: `Bearer ${session.accessToken}` } });
        const text = await body.text();
        if (statusCode !== 200) throw new Error(`/sync returned ${statusCode}`);
        const p0 = performance.now();
        const sync = JSON.parse(text) as { rooms?: { join?: Record<string, { state?: { events?: Array<{ type: string }> }; timeline?: { events?: Array<{ type: string }> } }> } };
        note.parseMs = performance.now() - p0;
        note.bodyBytes = Buffer.byteLength(text);
        let sink = 0;
        const join = sync.rooms?.join ?? {};
        for (const roomId in join) {
          const room = join[roomId]!;
          for (const ev of room.state?.events ?? []) sink += ev.type.length;
          for (const ev of room.timeline?.events ?? []) sink += ev.type.length;
          if (mode === 'memory') kept.set(roomId, room.state?.events ?? []);
        }
        if (sink < 0) console.error(sink); // keeps the walk observable
        return { stop: async () => kept.clear() };
      },
    };
  }
  if (contender === 'halcyon' || contender === 'halcyon-e2ee') {
    // The built package, as users run it (its workers load plain JS bundles).
    const { Client } = (await import('../../dist/index.js' as string)) as typeof import('../../src/index.ts');
    return {
      async login(url) {
        // Login takes the client's encryption setting: with it on, login also sets up the device's identity.
        const token = await Client.login({ homeserver: url, user: USER, password: PASSWORD, dataDir, ...(contender === 'halcyon' ? { encryption: false } : {}) });
        return { userId: '', deviceId: '', accessToken: '', token };
      },
      async start(_url, session) {
        const problems: string[] = [];
        const note = (obj: unknown, msg?: string) => problems.push(`${msg ?? ''} ${obj instanceof Error ? obj.message : JSON.stringify(obj)}`);
        // `halcyon`: encryption off, as the other contenders run (none of them loads a crypto stack); `halcyon-e2ee`: the default.
        const client = new Client({ dataDir, logger: { debug: () => {}, info: () => {}, warn: note, error: note }, ...(contender === 'halcyon' ? { encryption: false } : {}) });
        client.on('error', (e) => note(e));
        try {
          await client.run(session.token!);
        } catch (err) {
          await client.stop().catch(() => {});
          throw new Error(`${(err as Error).message}; logged: ${problems.join(' | ') || 'nothing'}`);
        }
        const threads = async (): Promise<ChildResult['threads']> => {
          const { main, sync } = (await client.health()).memory;
          return { mainHeapMb: main.heapTotal / MB, mainUsedMb: main.heapUsed / MB, syncHeapMb: (sync?.heapTotal ?? NaN) / MB, syncUsedMb: (sync?.heapUsed ?? NaN) / MB, syncExternalMb: (sync?.external ?? NaN) / MB };
        };
        return { stop: () => client.stop(), threads };
      },
    };
  }
  if (contender === 'matrix-bot-sdk') {
    // The same module instance the adapter loads (bench/node_modules), so the prototype patch below reaches its client.
    const sdk = createRequire(new URL('../node_modules/', import.meta.url))('matrix-bot-sdk') as BotSdk;
    const { startBotSdk } = await import('../peers/botsdk.ts');
    // Its start() resolves before the first /sync (the loop runs detached): ready is when that sync is processed.
    let firstSync!: () => void;
    const processed = new Promise<void>((resolve) => (firstSync = resolve));
    const processSync = sdk.MatrixClient.prototype.processSync;
    sdk.MatrixClient.prototype.processSync = async function (this: unknown, ...a: unknown[]) {
      await processSync.apply(this, a);
      firstSync();
    };
    return {
      async login(url) {
        const client = await new sdk.MatrixAuth(url).passwordLogin(USER, PASSWORD, 'bench');
        // Its login keeps only the access token; user and device are what the replay server logs everyone in as.
        return { userId: '@bot:localhost', deviceId: 'BENCH', accessToken: client.accessToken };
      },
      async start(url, session) {
        const peer = await startBotSdk({ homeserverUrl: url, ...session, onEvent: () => {}, deliverInitial: true });
        await within(processed, 60_000, 'matrix-bot-sdk: the first sync was not processed');
        return peer;
      },
    };
  }
  const { createClient } = await import('matrix-js-sdk');
  const { startJsSdk } = await import('../peers/jssdk.ts');
  return {
    async login(url) {
      const res = await createClient({ baseUrl: url, logger: SILENT }).loginRequest({ type: 'm.login.password', identifier: { type: 'm.id.user', user: USER }, password: PASSWORD });
      return { userId: res.user_id, deviceId: res.device_id, accessToken: res.access_token };
    },
    // The adapter resolves at PREPARED: the first sync processed.
    start: (url, session) => startJsSdk({ homeserverUrl: url, ...session, onEvent: () => {}, deliverInitial: false }),
  };
}

/** The parts of matrix-bot-sdk used here (typed locally: bench/node_modules exists only after setup). */
interface BotSdk {
  MatrixAuth: new (url: string) => { passwordLogin(user: string, password: string, deviceName?: string): Promise<{ accessToken: string }> };
  MatrixClient: { prototype: { processSync(...a: unknown[]): Promise<void> } };
}

/** Rejects with `what` when `p` has not settled within `ms`. */
async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what} within ${ms} ms`)), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

/** Collects garbage, then samples the RSS every 250 ms until it moves less than 1 MB over a second (or `maxMs` passes). */
async function settle(maxMs: number): Promise<{ settleMs: number; settled: boolean }> {
  const t0 = performance.now();
  const samples: number[] = [];
  for (;;) {
    gc();
    await new Promise((r) => setTimeout(r, 250));
    samples.push(rssMb());
    const last = samples.slice(-5);
    if (last.length === 5 && Math.max(...last) - Math.min(...last) < 1) return { settleMs: performance.now() - t0, settled: true };
    if (performance.now() - t0 > maxMs) return { settleMs: performance.now() - t0, settled: false };
  }
}

async function main(): Promise<void> {
  const args = JSON.parse(process.argv[2] ?? '{}') as ChildArgs;
  const result: ChildResult = { contender: args.contender, ok: false, importRssMb: NaN, loginMs: NaN, readyMs: NaN, peakRssMb: NaN };
  let running: Running | null = null;
  try {
    const runner = await load(args);
    gc();
    result.importRssMb = rssMb();
    const t0 = performance.now();
    const session = await runner.login(args.url);
    result.loginMs = performance.now() - t0;
    running = await runner.start(args.url, session, result);
    result.readyMs = performance.now() - t0;
    result.peakRssMb = peakMb();
    if (args.mode === 'memory') {
      Object.assign(result, await settle(args.settleMaxMs ?? 10_000));
      result.rssMb = rssMb();
      result.heapUsedMb = process.memoryUsage().heapUsed / MB;
      const status = readFileSync('/proc/self/status', 'utf8');
      const kb = (k: string) => (Number(new RegExp(`^${k}:\\s+(\\d+) kB$`, 'm').exec(status)?.[1] ?? NaN) * 1024) / MB;
      result.rssAnonMb = kb('RssAnon');
      result.rssFileMb = kb('RssFile');
      if (running.threads) result.threads = await running.threads();
    }
    result.ok = true;
  } catch (err) {
    result.error = (err as Error).stack ?? String(err);
  }
  process.stdout.write(`${JSON.stringify(result)}\n`);
  // Bounded: a stop that hangs must not hold the parent, which waits for this process to end.
  if (running) await within(running.stop(), 10_000, 'stop').catch(() => {});
  process.exit(0);
}

const CHILD = fileURLToPath(import.meta.url);
if (process.argv[1] === CHILD) await main();

/** Runs one child and resolves with its result; a child that fails, exits without a result or outlives `timeoutMs` (then killed) gives `ok: false` and why. */
export async function runChild(args: Omit<ChildArgs, 'dataDir'>, timeoutMs: number): Promise<ChildResult> {
  const dataDir = await mkdtemp(join(tmpdir(), 'halcyon-bench-child-'));
  const failed = (error: string): ChildResult => ({ contender: args.contender, ok: false, error, importRssMb: NaN, loginMs: NaN, readyMs: NaN, peakRssMb: NaN });
  try {
    const child = spawn(process.execPath, ['--expose-gc', '--no-deprecation', '--import', 'tsx', CHILD, JSON.stringify({ ...args, dataDir })], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    // Traced start-up steps (HALCYON_TRACE_STARTUP=1 in the bench's environment) are kept apart from the rest.
    const traced: string[] = [];
    let partial = '';
    child.stderr.setEncoding('utf8').on('data', (d: string) => {
      const lines = (partial + d).split('\n');
      partial = lines.pop()!;
      for (const l of lines) {
        if (l.startsWith('halcyon-startup ')) traced.push(l);
        else err = `${err}${l}\n`.slice(-2000);
      }
    });
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    const code = await new Promise<number | null>((resolve) => child.once('close', resolve));
    clearTimeout(timer);
    if (timedOut) return failed(`${args.contender}: no result within ${timeoutMs} ms (killed); stderr: ${err.trim().slice(-500)}`);
    // The SDKs also print log lines to stdout: the result is the line that parses as one.
    const line = out.split('\n').reverse().find((l) => l.startsWith('{"contender"'));
    if (!line) return failed(`${args.contender}: exited (code ${code}) without a result; stderr: ${err.trim().slice(-500)}`);
    const result = JSON.parse(line) as ChildResult;
    if (traced.length > 0) result.steps = startupSteps(traced);
    if (!result.ok) result.error = `${args.contender}: ${result.error ?? 'failed'}`;
    return result;
  } finally {
    await rm(dataDir, { recursive: true, force: true });
  }
}

/**
 * Starts a replay server whose first `/sync` is {@link makeInitialSync} with `rooms` rooms, with the end-to-end
 * key endpoints (for Halcyon with encryption) and `/joined_rooms` listing those rooms (joined-rooms-routes.ts).
 * Resolves with the server and the body's size in bytes.
 */
export async function startInitialSyncServer(rooms: number): Promise<{ server: ReplayServer; bodyBytes: number }> {
  // Imported here, not at the top: the child process would load them for nothing (and count them in its RSS).
  const [{ makeInitialSync }, { startReplayServer }] = await Promise.all([import('../fixtures.ts'), import('../replay-server.ts')]);
  const body = makeInitialSync({ rooms });
  const dir = await mkdtemp(join(tmpdir(), 'halcyon-bench-joined-'));
  const file = join(dir, 'joined.json');
  try {
    await writeFile(file, JSON.stringify(Object.keys((JSON.parse(body) as { rooms: { join: object } }).rooms.join)));
    // The routes module reads the file when the server's process starts, which inherits this variable at fork.
    process.env.BENCH_JOINED_ROOMS_FILE = file;
    const server = await startReplayServer({ bodies: [body], keys: true, routes: fileURLToPath(new URL('./joined-rooms-routes.ts', import.meta.url)) });
    return { server, bodyBytes: Buffer.byteLength(body) };
  } finally {
    delete process.env.BENCH_JOINED_ROOMS_FILE;
    await rm(dir, { recursive: true, force: true });
  }
}

/** Parses traceStartup lines (`halcyon-startup <thread> <step> rss=<MB> heap=<used>/<total> <epoch ms>`), relative to the login's start. */
function startupSteps(lines: string[]): StartupStep[] {
  const parsed = lines.map((l) => {
    const parts = l.split(' ');
    const rss = parts.find((p) => p.startsWith('rss='));
    return { step: parts.slice(2, -3).join(' '), thread: Number(parts[1]), at: Number(parts.at(-1)), rssMb: Number(rss?.slice(4)) };
  });
  const t0 = parsed.find((p) => p.step === 'login sent')?.at ?? parsed[0]!.at;
  return parsed.sort((a, b) => a.at - b.at).map(({ step, thread, at, rssMb }) => ({ step, thread, ms: at - t0, rssMb }));
}

/** The contenders the child can run, in the order the workloads list them. */
export function childContenders(): ChildContender[] {
  return ['floor', 'halcyon', 'halcyon-e2ee', 'matrix-bot-sdk', 'matrix-js-sdk'];
}

/** `min / **median** / max` of a summary, with `d` decimals. */
export const cell = (s: Summary, d = 0): string => (s.n ? `${fmt(s.min, d)} / **${fmt(s.median, d)}** / ${fmt(s.max, d)}` : 'n/a');
