/**
 * Out-of-process Matrix homeserver stub that replays pre-built `/sync` bodies.
 * Importing this module only defines {@link startReplayServer}; when run as the
 * forked child (`--replay-child <configPath>`) it serves HTTP on 127.0.0.1.
 * @module
 */
import { fork } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { readFileSync, realpathSync, rmSync } from 'node:fs';
import { createServer, type ServerResponse } from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Options for {@link startReplayServer}. */
export interface ReplayServerOptions {
  /** `/sync` bodies in order: no `since` → bodies[0], `since=s<k>…` → bodies[k]. */
  bodies: string[];
  /** Upper bound (ms) on how long an exhausted `/sync` is held before answering empty. */
  longPollMs?: number;
  /**
   * Paced release: body `k` is only served once `k * releaseEveryMs` ms have passed since the first `/sync`
   * request this server received; a request for a body not yet released is held (a long-poll) until then, or
   * answered empty (`next_batch` = `since`) when its `timeout` (capped by `longPollMs`) runs out first.
   * Unset: every body is served at once.
   */
  releaseEveryMs?: number;
}

/** Timing samples recorded by the replay server. */
export interface ReplayStats {
  /** Number of `/sync` requests received. */
  syncRequests: number;
  /** Arrival time of each `/sync` request, epoch ms (`performance.timeOrigin + performance.now()`). */
  requestTimes: number[];
  /** Completion time of the response to `requestTimes[i]`, same clock; `NaN` while still pending. */
  responseTimes: number[];
}

/** Handle to a running replay server child process. */
export interface ReplayServer {
  /** Base URL, e.g. `http://127.0.0.1:40123`. */
  url: string;
  /** Shuts the child down and removes its temp files. */
  stop(): Promise<void>;
  /** Fetches the recorded `/sync` timings from the child over IPC. */
  stats(): Promise<ReplayStats>;
  /** The child's clock (`performance.timeOrigin + performance.now()`, epoch ms), for estimating the offset between processes. */
  clock(): Promise<number>;
}

interface ChildConfig {
  files: string[];
  longPollMs?: number;
  releaseEveryMs?: number;
}

type ChildMessage =
  | { type: 'listening'; port: number }
  | { type: 'stats'; id: number; stats: ReplayStats }
  | { type: 'clock'; id: number; now: number };

const SELF = fileURLToPath(import.meta.url);
const CHILD_FLAG = '--replay-child';

/** Spawns the replay server in its own Node process and resolves once it is listening. */
export async function startReplayServer(opts: ReplayServerOptions): Promise<ReplayServer> {
  const dir = await mkdtemp(join(tmpdir(), 'halcyon-replay-'));
  const files = await Promise.all(
    opts.bodies.map(async (body, i) => {
      const file = join(dir, `body-${i}.json`);
      await writeFile(file, body);
      return file;
    }),
  );
  const configPath = join(dir, 'config.json');
  await writeFile(configPath, JSON.stringify({ files, longPollMs: opts.longPollMs, releaseEveryMs: opts.releaseEveryMs } satisfies ChildConfig));

  const child = fork(SELF, [CHILD_FLAG, configPath], {
    execPath: process.execPath,
    execArgv: ['--import', 'tsx'],
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    serialization: 'advanced',
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));

  let port: number;
  try {
    port = await new Promise<number>((resolve, reject) => {
      child.on('message', (m: ChildMessage) => m.type === 'listening' && resolve(m.port));
      child.once('error', reject);
      child.once('exit', (code) => reject(new Error(`replay server exited early (code ${code})`)));
    });
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }

  let nextId = 0;
  const pending = new Map<number, (s: ReplayStats) => void>();
  const pendingClock = new Map<number, (now: number) => void>();
  child.on('message', (m: ChildMessage) => {
    if (m.type === 'stats') {
      pending.get(m.id)?.(m.stats);
      pending.delete(m.id);
    } else if (m.type === 'clock') {
      pendingClock.get(m.id)?.(m.now);
      pendingClock.delete(m.id);
    }
  });

  return {
    url: `http://127.0.0.1:${port}`,
    stats: () =>
      new Promise<ReplayStats>((resolve, reject) => {
        const id = nextId++;
        pending.set(id, resolve);
        child.send({ type: 'stats', id }, (err) => err && reject(err));
      }),
    clock: () =>
      new Promise<number>((resolve, reject) => {
        const id = nextId++;
        pendingClock.set(id, resolve);
        child.send({ type: 'clock', id }, (err) => err && reject(err));
      }),
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 2000);
        await exited;
        clearTimeout(timer);
      }
      await rm(dir, { recursive: true, force: true });
    },
  };
}

function runChild(configPath: string): void {
  const config = JSON.parse(readFileSync(configPath, 'utf8')) as ChildConfig;
  const bodies = config.files.map((f) => readFileSync(f));
  rmSync(dirname(configPath), { recursive: true, force: true }); // bodies are in memory now
  const json = (s: unknown) => Buffer.from(JSON.stringify(s));
  const FILTER = json({ filter_id: '1' });
  const WHOAMI = json({ user_id: '@bot:localhost', device_id: 'BENCH' });
  const VERSIONS = json({ versions: ['v1.11'] });
  const SENT = json({ event_id: '$x' });
  const NOT_FOUND = json({ errcode: 'M_UNRECOGNIZED', error: 'Unrecognized request' });

  const now = () => performance.timeOrigin + performance.now();
  const requestTimes: number[] = [];
  const responseTimes: number[] = [];
  let firstSyncAt: number | null = null;

  const send = (res: ServerResponse, status: number, body: Buffer) => {
    res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': body.length });
    res.end(body);
  };

  const server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://localhost');
    const path = url.pathname;
    const method = req.method ?? 'GET';
    req.resume(); // drain any request body

    if (method === 'GET' && path === '/_matrix/client/v3/sync') {
      const arrived = now();
      firstSyncAt ??= arrived;
      const i = requestTimes.push(arrived) - 1;
      responseTimes.push(NaN);
      res.once('finish', () => (responseTimes[i] = now()));
      const since = url.searchParams.get('since');
      const k = since === null ? 0 : Number(/^s(\d+)/.exec(since)?.[1] ?? NaN);
      if (Number.isNaN(k)) return send(res, 400, json({ errcode: 'M_INVALID_PARAM', error: 'bad since' }));
      const releaseIn = k < bodies.length && config.releaseEveryMs ? firstSyncAt + k * config.releaseEveryMs - arrived : 0;
      if (k < bodies.length && releaseIn <= 0) return send(res, 200, bodies[k]!);
      let wait = Number(url.searchParams.get('timeout') ?? 30000);
      if (!Number.isFinite(wait) || wait < 0) wait = 30000;
      if (config.longPollMs !== undefined) wait = Math.min(wait, config.longPollMs);
      // A paced body not yet released is held until its release, if that comes within the poll's wait.
      const timer =
        k < bodies.length && releaseIn <= wait
          ? setTimeout(() => send(res, 200, bodies[k]!), Math.ceil(releaseIn)) // never before the release
          : setTimeout(() => send(res, 200, json({ next_batch: since })), wait);
      res.once('close', () => clearTimeout(timer));
      return;
    }
    if (method === 'POST' && /^\/_matrix\/client\/v3\/user\/[^/]+\/filter$/.test(path)) return send(res, 200, FILTER);
    if (method === 'GET' && path === '/_matrix/client/v3/account/whoami') return send(res, 200, WHOAMI);
    if (method === 'GET' && path === '/_matrix/client/versions') return send(res, 200, VERSIONS);
    if ((method === 'PUT' || method === 'POST') && /^\/_matrix\/client\/v3\/rooms\//.test(path)) return send(res, 200, SENT);
    send(res, 404, NOT_FOUND);
  });
  server.keepAliveTimeout = 120_000;
  server.headersTimeout = 125_000;
  server.requestTimeout = 0;

  const shutdown = () => {
    server.closeAllConnections();
    server.close();
    process.exit(0);
  };
  process.on('disconnect', shutdown);
  process.on('SIGTERM', shutdown);
  process.on('message', (m: { type: string; id: number }) => {
    if (m.type === 'clock') process.send!({ type: 'clock', id: m.id, now: now() });
    else if (m.type === 'stats') {
      const stats: ReplayStats = { syncRequests: requestTimes.length, requestTimes, responseTimes };
      process.send!({ type: 'stats', id: m.id, stats });
    }
  });
  server.listen(0, '127.0.0.1', () => {
    const addr = server.address();
    process.send!({ type: 'listening', port: typeof addr === 'object' && addr ? addr.port : 0 });
  });
}

if (process.argv[2] === CHILD_FLAG && process.argv[1] && realpathSync(process.argv[1]) === realpathSync(SELF)) {
  runChild(process.argv[3]!);
}
