/** Real Synapse homeserver fixture for integration tests (one throwaway server per startSynapse()). */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, createHmac, randomBytes } from 'node:crypto';
import { closeSync, openSync, readFileSync, rmSync } from 'node:fs';
import * as fs from 'node:fs/promises';
import { createServer } from 'node:net';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';

const VERSION = '1.163.2';
const SERVER_NAME = 'localhost';

/** A user registered on a test homeserver, already logged in with one device. */
export interface TestUser { userId: string; localpart: string; password: string; accessToken: string; deviceId: string }

/** A running throwaway Synapse instance. */
export interface Homeserver {
  baseUrl: string; // http://127.0.0.1:<port>
  serverName: string; // 'localhost'
  port: number;
  dataDir: string; // temp dir holding homeserver.yaml, homeserver.db and synapse.log (WARNING+ and stdio)
  /** The shared secret for admin registration. */
  registrationSecret: string;
  /** Registers via the shared-secret admin API (random localpart/password if omitted), then logs in with m.login.password. */
  registerUser(localpart?: string, password?: string): Promise<TestUser>;
  /** SIGTERM, SIGKILL after 10 s, then removes dataDir; safe to call twice. */
  stop(): Promise<void>;
  /**
   * Restarts the same homeserver (same data dir, database and port) and resolves once /health answers 200 again:
   * SIGTERM (or SIGKILL with `kill: true`), then a new process. `down` runs while no process is serving. Only for
   * homeservers this process started (the test runner's shared one refuses).
   */
  restart(opts?: { kill?: boolean; down?: () => unknown }): Promise<void>;
}

type Log = (s: string) => void;
type Secrets = { registration_shared_secret: string; macaroon_secret_key: string; form_secret: string };

const defaultLog: Log = (s) => process.stderr.write(`[synapse] ${s}\n`);
const root = () => join(process.env.HALCYON_CACHE_DIR ?? join(homedir(), '.cache', 'halcyon'), `synapse-${VERSION}`);
const tail = (text: string, n: number) => text.trimEnd().split('\n').slice(-n).join('\n');

/** Rejects with "Timed out after <ms> ms: <what>" unless `p` settles within `ms` milliseconds. */
export function withTimeout<T>(p: Promise<T>, ms: number, what: string | (() => string)): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    // A function is asked at the timeout: the state it describes then, not at the call.
    timer = setTimeout(() => reject(new Error(`Timed out after ${ms} ms: ${typeof what === 'function' ? what() : what}`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

/** Runs a command to completion, collecting stdout+stderr and feeding each line to `onLine`. */
function run(cmd: string, args: string[], onLine?: Log): Promise<{ code: number; output: string }> {
  return new Promise((resolve) => {
    const lines: string[] = [];
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    for (const stream of [p.stdout, p.stderr]) createInterface({ input: stream }).on('line', (l) => { lines.push(l); onLine?.(l); });
    p.on('error', (e) => resolve({ code: -1, output: `${lines.join('\n')}\n${e.message}` }));
    p.on('close', (code) => resolve({ code: code ?? -1, output: lines.join('\n') }));
  });
}

function alive(pid: number): boolean {
  try { process.kill(pid, 0); return true; } catch (e) { return (e as NodeJS.ErrnoException).code === 'EPERM'; }
}

/** Runs `fn` holding a cross-process mkdir lock in the cache dir; steals locks of dead processes. */
async function withLock<T>(log: Log, fn: () => Promise<T>): Promise<T> {
  const dir = join(root(), '.lock');
  await fs.mkdir(root(), { recursive: true });
  const deadline = Date.now() + 20 * 60_000;
  for (let told = false; ;) {
    try { await fs.mkdir(dir); break; } catch (e) { if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e; }
    const owner = Number(await fs.readFile(join(dir, 'pid'), 'utf8').catch(() => '0'));
    const stale = owner ? !alive(owner) : Date.now() - (await fs.stat(dir).then((s) => s.mtimeMs, () => 0)) > 10_000;
    if (stale) { await fs.rm(dir, { recursive: true, force: true }); continue; }
    if (Date.now() > deadline) throw new Error(`Timed out waiting for lock ${dir} held by pid ${owner}`);
    if (!told) { log(`waiting for pid ${owner} holding ${dir}`); told = true; }
    await sleep(250);
  }
  await fs.writeFile(join(dir, 'pid'), String(process.pid));
  try { return await fn(); } finally { await fs.rm(dir, { recursive: true, force: true }); }
}

/** Makes sure matrix-synapse is importable from the cached venv (installing it if needed) and returns that venv's python path. */
export async function ensureSynapseInstalled(log: Log = defaultLog): Promise<string> {
  const env = join(root(), 'env');
  const python = join(env, 'bin', 'python');
  const importable = async () => (await run(python, ['-c', 'import synapse'])).code === 0;
  if (await importable()) return python;
  return withLock(log, async () => {
    if (await importable()) return python;
    log(`installing matrix-synapse==${VERSION} into ${env} (a few minutes)`);
    const venv = await run('python3', ['-m', 'venv', env]);
    if (venv.code !== 0) {
      throw new Error(`Cannot install Synapse: "python3 -m venv ${env}" failed (needs Python >= 3.10 with venv):\n${tail(venv.output, 30)}`);
    }
    const progress = (l: string) => { if (/^(Collecting|Installing|Successfully)/.test(l)) log(l); };
    const pip = await run(join(env, 'bin', 'pip'), ['install', '--disable-pip-version-check', `matrix-synapse==${VERSION}`], progress);
    await fs.writeFile(join(root(), 'pip.log'), pip.output);
    if (pip.code !== 0 || !(await importable())) {
      throw new Error(`Cannot install Synapse: pip install matrix-synapse==${VERSION} exited ${pip.code} (full log ${join(root(), 'pip.log')}):\n${tail(pip.output, 30)}`);
    }
    return python;
  });
}

function synapseConfig(dataDir: string, port: number, secrets: Secrets, overrides: Record<string, unknown> = {}) {
  const open = { per_second: 9999, burst_count: 9999 };
  return {
    server_name: SERVER_NAME,
    public_baseurl: `http://127.0.0.1:${port}/`,
    report_stats: false,
    listeners: [{ port, bind_addresses: ['127.0.0.1'], type: 'http', tls: false, x_forwarded: false, resources: [{ names: ['client'], compress: false }] }],
    database: { name: 'sqlite3', args: { database: join(dataDir, 'homeserver.db') } },
    media_store_path: join(dataDir, 'media_store'),
    signing_key_path: join(dataDir, 'signing.key'),
    log_config: join(dataDir, 'log.yaml'),
    ...secrets,
    enable_registration: true,
    enable_registration_without_verification: true,
    rc_message: open, rc_registration: open, rc_login: { address: open, account: open, failed_attempts: open },
    rc_admin_redaction: open, rc_joins: { local: open, remote: open }, rc_joins_per_room: open,
    rc_invites: { per_room: open, per_user: open, per_issuer: open }, rc_3pid_validation: open,
    rc_presence: { per_user: open }, rc_room_creation: open, rc_delayed_event_mgmt: open, rc_user_directory: open,
    rc_media_create: open, rc_reports: open, rc_third_party_invite: open, rc_key_requests: open, rc_profile: open,
    trusted_key_servers: [],
    suppress_key_server_warning: true,
    federation_domain_whitelist: [],
    presence: { enabled: true },
    url_preview_enabled: false,
    bcrypt_rounds: 4,
    user_directory: { enabled: true, search_all_users: true },
    caches: { sync_response_cache_duration: 0 },
    max_upload_size: '50M',
    ...overrides,
  };
}

/** Python dictConfig: WARNING+ (and Python's own stderr, see launch) into <dataDir>/synapse.log. */
function logConfig(dataDir: string) {
  return {
    version: 1,
    formatters: { precise: { format: '%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s' } },
    filters: { context: { '()': 'synapse.logging.context.LoggingContextFilter', request: '' } },
    handlers: { file: { class: 'logging.FileHandler', formatter: 'precise', filters: ['context'], filename: join(dataDir, 'synapse.log') } },
    root: { level: 'WARNING', handlers: ['file'] },
    disable_existing_loggers: false,
  };
}

const templateKey = () => {
  const fake: Secrets = { registration_shared_secret: 's', macaroon_secret_key: 'm', form_secret: 'f' };
  const text = JSON.stringify([synapseConfig('/data', 0, fake), logConfig('/data')]);
  return `${VERSION} ${createHash('sha256').update(text).digest('hex')}`;
};

/** A TCP port free on 127.0.0.1 now (for a server the harness is about to start). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer().once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as { port: number };
      srv.close(() => resolve(port));
    });
  });
}

/** Live Synapse processes, with the temp dir to delete if we have to kill them at exit. */
const live = new Map<ChildProcess, string | undefined>();
let exitHooked = false;
function hookExit() {
  if (exitHooked) return;
  exitHooked = true;
  const killAll = () => {
    for (const [proc, dir] of live) {
      proc.kill('SIGKILL');
      if (dir) try { rmSync(dir, { recursive: true, force: true }); } catch { /* best effort */ }
    }
  };
  process.on('exit', killAll);
  // Fatal signals skip 'exit': clean up, then re-raise with the default action (only if nobody else handles them).
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    if (process.listenerCount(sig) === 0) process.once(sig, () => { killAll(); process.kill(process.pid, sig); });
  }
}

async function json(method: string, url: string, body?: unknown): Promise<any> {
  const res = await fetch(url, { method, headers: { 'content-type': 'application/json' }, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${url} -> ${res.status}: ${text}`);
  return JSON.parse(text);
}

/** Registers a user with the shared-secret admin API and logs it in. */
export async function register(baseUrl: string, secret: string, localpart = `u${randomBytes(6).toString('hex')}`, password = randomBytes(12).toString('hex')): Promise<TestUser> {
  const url = `${baseUrl}/_synapse/admin/v1/register`;
  const { nonce } = await json('GET', url);
  const mac = createHmac('sha1', secret).update([nonce, localpart, password, 'notadmin'].join('\0')).digest('hex');
  await json('POST', url, { nonce, username: localpart, password, admin: false, mac });
  const login = await json('POST', `${baseUrl}/_matrix/client/v3/login`, { type: 'm.login.password', identifier: { type: 'm.id.user', user: localpart }, password });
  return { userId: login.user_id, localpart, password, accessToken: login.access_token, deviceId: login.device_id };
}

/** The environment variable through which the test runner shares one running Synapse with every test file. */
export const SHARED_HS_ENV = 'HALCYON_TEST_HS';

/**
 * The homeserver for a test file: the one the test runner started (see test/run.ts), or, when the file runs on
 * its own, a fresh one. `stop()` of a shared one does nothing (the runner owns it).
 */
export async function testHomeserver(): Promise<Homeserver> {
  const shared = process.env[SHARED_HS_ENV];
  if (!shared) return startSynapse();
  const info = JSON.parse(shared) as { baseUrl: string; port: number; dataDir: string; registrationSecret: string };
  return {
    ...info,
    serverName: SERVER_NAME,
    registerUser: (localpart?: string, password?: string) => register(info.baseUrl, info.registrationSecret, localpart, password),
    stop: async () => {},
    restart: async () => {
      throw new Error('the shared test homeserver belongs to the test runner: start one with startSynapse() to restart it');
    },
  };
}

/** One Synapse process serving `dataDir` on `port`, up and answering /health. */
interface Instance {
  /** SIGTERM (SIGKILL after 10 s), or SIGKILL at once; resolves when the process has exited. */
  halt(signal?: 'SIGTERM' | 'SIGKILL'): Promise<void>;
}

/** Spawns Synapse on `port` (config already written) and waits for /health; throws with the log tail if it fails. */
async function startInstance(python: string, dataDir: string, port: number, removeDir: boolean): Promise<Instance> {
  const logFile = join(dataDir, 'synapse.log');
  const cfgPath = join(dataDir, 'homeserver.yaml');
  const baseUrl = `http://127.0.0.1:${port}`;
  const fd = openSync(logFile, 'a');
  const proc = spawn(python, ['-m', 'synapse.app.homeserver', '-c', cfgPath], { cwd: dataDir, stdio: ['ignore', fd, fd] });
  closeSync(fd);
  live.set(proc, removeDir ? dataDir : undefined);
  let exitInfo: string | undefined;
  const exited = new Promise<void>((resolve) => {
    const done = (why: string) => { exitInfo ??= why; live.delete(proc); resolve(); };
    proc.once('exit', (code, signal) => done(`exited with ${signal ?? `code ${code}`}`));
    proc.once('error', (e) => done(`failed to spawn: ${e.message}`));
  });
  const halt = async (signal: 'SIGTERM' | 'SIGKILL' = 'SIGTERM') => {
    if (exitInfo !== undefined) return;
    proc.kill(signal);
    const timer = setTimeout(() => proc.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(timer);
  };
  const deadline = Date.now() + 120_000;
  while (exitInfo === undefined && Date.now() < deadline) {
    const res = await fetch(`${baseUrl}/health`, { signal: AbortSignal.timeout(2000) }).catch(() => undefined);
    if (res?.status === 200) return { halt };
    await sleep(100);
  }
  const why = exitInfo ?? 'did not answer /health with 200 within 120 s';
  await halt();
  const logTail = tail(readFileSync(logFile, 'utf8'), 40);
  throw Object.assign(new Error(`Synapse ${why} at ${baseUrl}; last log lines:\n${logTail}`), { addressInUse: /Address already in use/.test(logTail) });
}

/** Starts Synapse on a free port with `dataDir` (which must already hold signing.key and possibly homeserver.db). */
async function launch(python: string, dataDir: string, secrets: Secrets, removeDir: boolean, log: Log, overrides: Record<string, unknown> = {}): Promise<Homeserver> {
  hookExit();
  await fs.writeFile(join(dataDir, 'log.yaml'), JSON.stringify(logConfig(dataDir), null, 2));
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    const baseUrl = `http://127.0.0.1:${port}`;
    const cfgPath = join(dataDir, 'homeserver.yaml');
    await fs.writeFile(cfgPath, JSON.stringify(synapseConfig(dataDir, port, secrets, overrides), null, 2)); // JSON is YAML
    let current: Instance;
    try {
      current = await startInstance(python, dataDir, port, removeDir);
    } catch (e) {
      if (attempt < 3 && (e as { addressInUse?: boolean }).addressInUse) { log(`port ${port} was taken, retrying`); continue; }
      if (removeDir) await fs.rm(dataDir, { recursive: true, force: true });
      throw e;
    }
    let stopped = false;
    const stop = async () => {
      stopped = true;
      await current.halt();
      if (removeDir) await fs.rm(dataDir, { recursive: true, force: true });
    };
    const restart = async (opts: { kill?: boolean; down?: () => unknown } = {}) => {
      if (stopped) throw new Error('restart() of a stopped homeserver');
      await current.halt(opts.kill ? 'SIGKILL' : 'SIGTERM');
      await opts.down?.();
      // The same port: a listener that just closed may linger for a moment.
      for (let again = 1; ; again++) {
        try {
          current = await startInstance(python, dataDir, port, removeDir);
          return;
        } catch (e) {
          if (again < 5 && (e as { addressInUse?: boolean }).addressInUse) { log(`port ${port} still taken after the restart, retrying`); await sleep(500); continue; }
          throw e;
        }
      }
    };
    return {
      baseUrl, port, dataDir, serverName: SERVER_NAME, stop, restart,
      registrationSecret: secrets.registration_shared_secret,
      registerUser: (localpart?: string, password?: string) => register(baseUrl, secrets.registration_shared_secret, localpart, password),
    };
  }
}

/** Builds (once, under the lock) a template dir holding a fully migrated homeserver.db, signing key and secrets. */
async function ensureTemplate(python: string, log: Log): Promise<string> {
  const dir = join(root(), 'template');
  const key = templateKey();
  const ready = async () => (await fs.readFile(join(dir, 'key'), 'utf8').catch(() => '')) === key;
  if (await ready()) return dir;
  return withLock(log, async () => {
    if (await ready()) return dir;
    const t0 = Date.now();
    log(`building migrated Synapse ${VERSION} template in ${dir} (first run only, about a minute)`);
    const build = join(root(), 'template.build');
    await fs.rm(build, { recursive: true, force: true });
    await fs.mkdir(build);
    const generated = join(build, 'generated.yaml');
    const gen = await run(python, ['-m', 'synapse.app.homeserver', '--server-name', SERVER_NAME, '--config-path', generated,
      '--data-directory', build, '--generate-config', '--report-stats=no']);
    if (gen.code !== 0) throw new Error(`synapse --generate-config failed:\n${tail(gen.output, 40)}`);
    const yaml = await fs.readFile(generated, 'utf8');
    const pick = (k: string) => {
      const m = new RegExp(`^${k}: "?([^"\\n]+)"?$`, 'm').exec(yaml);
      if (!m) throw new Error(`no ${k} in generated ${generated}`);
      return m[1]!;
    };
    const secrets: Secrets = { registration_shared_secret: pick('registration_shared_secret'), macaroon_secret_key: pick('macaroon_secret_key'), form_secret: pick('form_secret') };
    await fs.writeFile(join(build, 'secrets.json'), JSON.stringify(secrets));
    await fs.rename(join(build, `${SERVER_NAME}.signing.key`), join(build, 'signing.key'));
    const hs = await launch(python, build, secrets, false, log); // first start runs every schema migration
    await hs.stop();
    await fs.writeFile(join(build, 'key'), key);
    await fs.rm(dir, { recursive: true, force: true });
    await fs.rename(build, dir);
    log(`template ready after ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    return dir;
  });
}

/**
 * Starts a fresh Synapse (copied from the migrated template, own temp dir and free port) and resolves once /health answers 200.
 * `config` overrides top-level homeserver.yaml keys, e.g. `{ rc_message: { per_second: 0.2, burst_count: 10 } }` to restore a default rate limit.
 */
export async function startSynapse(opts: { log?: Log; config?: Record<string, unknown> } = {}): Promise<Homeserver> {
  const log = opts.log ?? defaultLog;
  const python = await ensureSynapseInstalled(log);
  const template = await ensureTemplate(python, log);
  const dataDir = await fs.mkdtemp(join(tmpdir(), 'halcyon-synapse-'));
  try {
    for (const f of await fs.readdir(template)) {
      if (f.startsWith('homeserver.db') || f === 'signing.key') await fs.copyFile(join(template, f), join(dataDir, f));
    }
    const secrets: Secrets = JSON.parse(await fs.readFile(join(template, 'secrets.json'), 'utf8'));
    return await launch(python, dataDir, secrets, true, log, opts.config);
  } catch (e) {
    await fs.rm(dataDir, { recursive: true, force: true });
    throw e;
  }
}
