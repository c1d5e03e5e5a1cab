/**
 * Real nats-server fixture for the cluster tests (one throwaway server per startNats()). The binary is built once
 * with `go install github.com/nats-io/nats-server/v2@v<VERSION>` into the cache folder (~/.cache/halcyon or
 * $HALCYON_CACHE_DIR, like Synapse) under a cross-process lock; each server runs with JetStream on a temp dir,
 * bound to 127.0.0.1 on a free port. If it cannot be built or started, startNats() rejects and says why: the
 * cluster tests fail, never skip.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, rmSync, statfsSync } from 'node:fs';
import * as fs from 'node:fs/promises';
import { createConnection } from 'node:net';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { freePort } from './synapse.ts';

const VERSION = '2.15.3';
const root = () => join(process.env.HALCYON_CACHE_DIR ?? join(homedir(), '.cache', 'halcyon'), `nats-server-${VERSION}`);
const binary = () => join(root(), 'bin', 'nats-server');

/** A running nats-server with JetStream. */
export interface NatsServer {
  /** `nats://127.0.0.1:<port>` */
  url: string;
  port: number;
  /**
   * Ends the server with `signal` (default SIGKILL: a crash; SIGTERM: a clean shutdown) and starts it again on the
   * same port and store; resolves once it accepts connections. `down` runs while none is serving.
   */
  restart(down?: () => unknown, signal?: NodeJS.Signals): Promise<void>;
  /** Stops the server and removes its store; safe to call twice. */
  stop(): Promise<void>;
}

/** Runs a command to completion; resolves with its exit code and output. */
function run(cmd: string, args: string[], env: Record<string, string>): Promise<{ code: number; output: string }> {
  return new Promise((resolve) => {
    let output = '';
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    p.stdout.on('data', (d) => (output += d));
    p.stderr.on('data', (d) => (output += d));
    p.on('error', (e) => resolve({ code: -1, output: `${output}\n${e.message}` }));
    p.on('close', (code) => resolve({ code: code ?? -1, output }));
  });
}

/** Builds nats-server into the cache folder unless it is there already (one builder at a time, across processes). */
export async function ensureNatsInstalled(log: (s: string) => void = (s) => process.stderr.write(`[nats] ${s}\n`)): Promise<string> {
  if (existsSync(binary())) return binary();
  await fs.mkdir(root(), { recursive: true });
  const lock = join(root(), '.lock');
  const deadline = Date.now() + 15 * 60_000;
  for (;;) {
    try {
      await fs.mkdir(lock);
      break;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    const owner = Number(await fs.readFile(join(lock, 'pid'), 'utf8').catch(() => '0'));
    let alive = false;
    try {
      if (owner) process.kill(owner, 0);
      alive = owner !== 0;
    } catch {
      alive = false;
    }
    if (!alive && Date.now() - (await fs.stat(lock).then((s) => s.mtimeMs, () => 0)) > 10_000) await fs.rm(lock, { recursive: true, force: true });
    if (Date.now() > deadline) throw new Error(`Timed out waiting for the nats-server build lock ${lock} (pid ${owner})`);
    await sleep(250);
  }
  try {
    await fs.writeFile(join(lock, 'pid'), String(process.pid));
    if (existsSync(binary())) return binary();
    log(`building nats-server v${VERSION} with go install into ${root()} (a minute or two)`);
    const r = await run('go', ['install', `github.com/nats-io/nats-server/v2@v${VERSION}`], { GOBIN: join(root(), 'bin') });
    if (r.code !== 0 || !existsSync(binary())) {
      throw new Error(`Cannot build nats-server: "go install github.com/nats-io/nats-server/v2@v${VERSION}" exited ${r.code} (needs Go and the module proxy):\n${r.output.split('\n').slice(-30).join('\n')}`);
    }
    return binary();
  } finally {
    await fs.rm(lock, { recursive: true, force: true });
  }
}

/** Resolves once a TCP connection to the port succeeds; rejects if `proc` exits or after `ms`. */
async function waitListening(port: number, proc: ChildProcess, output: () => string, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    if (proc.exitCode !== null || proc.signalCode !== null) throw new Error(`nats-server exited (${proc.exitCode ?? proc.signalCode}) while starting:\n${output().slice(-3000)}`);
    const ok = await new Promise<boolean>((resolve) => {
      const s = createConnection({ port, host: '127.0.0.1' }, () => {
        s.destroy();
        resolve(true);
      });
      s.on('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`nats-server did not accept connections on 127.0.0.1:${port} within ${ms} ms:\n${output().slice(-3000)}`);
    await sleep(50);
  }
}

/**
 * Where the servers' JetStream stores go: in memory (`/dev/shm`) where the machine has it with 1 GB free (a
 * container's is often 64 MB), else the temp dir. A busy durable consumer rewrites its state file about ten times
 * a second (a temp file, written, renamed): on this VM's ext4 that cost NATS ~0.5 ms of system CPU per event of
 * the cluster bench, on the same two cores as the workers it measures (its store on /dev/shm: half of NATS's CPU).
 * A production NATS runs on machines of its own. A store in memory still outlives the server's process, so the
 * restart tests keep what they test.
 */
const STORE_ROOT = shmFree() >= 1024 ** 3 ? '/dev/shm' : tmpdir();

/** Bytes free in /dev/shm, 0 without one. */
function shmFree(): number {
  if (!existsSync('/dev/shm')) return 0;
  const s = statfsSync('/dev/shm');
  return s.bavail * s.bsize;
}

/** Starts a nats-server with JetStream on a temp store ({@link STORE_ROOT}), 127.0.0.1 and a free port. */
export async function startNats(): Promise<NatsServer> {
  const bin = await ensureNatsInstalled();
  const store = await fs.mkdtemp(join(STORE_ROOT, 'halcyon-nats-'));
  const port = await freePort();
  let proc: ChildProcess | null = null;
  let output = '';
  const launch = async () => {
    output = '';
    const p = spawn(bin, ['-js', '-sd', store, '-a', '127.0.0.1', '-p', String(port), '-n', `halcyon-test-${port}`], { stdio: ['ignore', 'pipe', 'pipe'] });
    p.stdout!.on('data', (d) => (output = (output + d).slice(-20_000)));
    p.stderr!.on('data', (d) => (output = (output + d).slice(-20_000)));
    proc = p;
    await waitListening(port, p, () => output, 30_000);
  };
  const kill = async (signal: NodeJS.Signals = 'SIGKILL') => {
    const p = proc;
    proc = null;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    const gone = new Promise((r) => p.once('exit', r));
    p.kill(signal);
    await gone;
  };
  const onExit = () => {
    proc?.kill('SIGKILL');
    rmSync(store, { recursive: true, force: true });
  };
  process.once('exit', onExit);
  await launch();
  return {
    url: `nats://127.0.0.1:${port}`,
    port,
    async restart(down, signal) {
      await kill(signal);
      await down?.();
      await launch();
    },
    async stop() {
      await kill();
      process.off('exit', onExit);
      await fs.rm(store, { recursive: true, force: true });
    },
  };
}
