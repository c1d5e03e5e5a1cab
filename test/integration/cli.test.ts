/**
 * The `halcyon` bin (dist/cli.js, built by `npm run build`), run as a real process against a real Synapse.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodeToken } from '../../src/index.ts';
import { testHomeserver, type Homeserver, type TestUser } from '../harness/synapse.ts';

const ROOT = join(import.meta.dirname, '..', '..');
const CLI = join(ROOT, 'dist', 'cli.js');

let hs: Homeserver;
let tmp: string;

before(async () => {
  assert.ok(existsSync(CLI), `${CLI} is missing: run \`npm run build\` first`);
  hs = await testHomeserver();
  tmp = mkdtempSync(join(tmpdir(), 'halcyon-cli-'));
}, { timeout: 300_000 });

after(async () => {
  if (tmp) rmSync(tmp, { recursive: true, force: true });
  await hs?.stop();
});

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs the bin with Node 24 (this process's node) and a hard deadline; stdin is `input` through a pipe, or else
 * /dev/null. HALCYON_PASSWORD and HALCYON_TOKEN are only set when `env` sets them.
 */
function halcyon(args: string[], opts: { env?: Record<string, string | undefined>; input?: string; timeoutMs?: number } = {}): Promise<Run> {
  const env: Record<string, string | undefined> = { ...process.env, HALCYON_PASSWORD: undefined, HALCYON_TOKEN: undefined, HALCYON_ACCESS_TOKEN: undefined, ...opts.env };
  for (const k of ['HALCYON_PASSWORD', 'HALCYON_TOKEN', 'HALCYON_ACCESS_TOKEN']) if (env[k] === undefined) delete env[k];
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [CLI, ...args], { cwd: tmp, env, stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
    if (opts.input !== undefined) p.stdin!.end(opts.input);
    let stdout = '';
    let stderr = '';
    p.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    p.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const ms = opts.timeoutMs ?? 30_000;
    const timer = setTimeout(() => {
      p.kill('SIGKILL');
      reject(new Error(`halcyon ${args[0]} did not exit within ${ms} ms; stdout: ${stdout}; stderr: ${stderr}`));
    }, ms);
    p.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    p.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

const show = (r: Run) => `exit ${r.code}${r.signal ? ` (${r.signal})` : ''}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`;

function assertNoSecrets(r: Run, secrets: string[]): void {
  for (const s of secrets) {
    assert.ok(!r.stdout.includes(s), `stdout leaks a secret (${s.slice(0, 4)}...)\n${show(r)}`);
    assert.ok(!r.stderr.includes(s), `stderr leaks a secret (${s.slice(0, 4)}...)\n${show(r)}`);
  }
}

/** A fresh user with a password that never appears by accident. */
async function freshUser(): Promise<TestUser> {
  return hs.registerUser(undefined, `pw-${Math.random().toString(36).slice(2)}-${Date.now().toString(36)}`);
}

test('login --out writes a 0600 token file and prints nothing secret; whoami @file reads it', async () => {
  const user = await freshUser();
  const out = join(tmp, `token-${user.localpart}`);
  const r = await halcyon(['login', '--homeserver', hs.baseUrl, '--user', user.localpart, '--password', user.password, '--out', out]);
  assert.equal(r.code, 0, show(r));
  assert.equal(statSync(out).mode & 0o777, 0o600, `token file mode is ${(statSync(out).mode & 0o777).toString(8)}`);

  const token = readFileSync(out, 'utf8').trim();
  const session = decodeToken(token);
  assert.equal(session.userId, user.userId);
  assert.equal(session.homeserver, hs.baseUrl);
  assert.ok(session.deviceId.length > 0);
  assert.notEqual(session.deviceId, user.deviceId, 'login should create a new device');
  assertNoSecrets(r, [user.password, session.accessToken, token]);
  assert.equal(r.stdout, '', `--out should leave stdout empty\n${show(r)}`);

  // The token works: the homeserver knows it.
  const who = await fetch(`${hs.baseUrl}/_matrix/client/v3/account/whoami`, { headers: { authorization: `Bearer ${session.accessToken}` } });
  assert.equal(who.status, 200);

  const w = await halcyon(['whoami', `@${out}`]);
  assert.equal(w.code, 0, show(w));
  const info = JSON.parse(w.stdout) as { userId?: string; deviceId?: string; homeserver?: string };
  assert.equal(info.userId, user.userId);
  assert.equal(info.deviceId, session.deviceId);
  assert.equal(info.homeserver, hs.baseUrl);
  assertNoSecrets(w, [user.password, session.accessToken, token]);
});

test('login --out over an existing, world-readable file leaves it 0600', async () => {
  const user = await freshUser();
  const out = join(tmp, `existing-${user.localpart}`);
  writeFileSync(out, 'old contents\n');
  chmodSync(out, 0o644);
  const r = await halcyon(['login', '--homeserver', hs.baseUrl, '--user', user.localpart, '--password', user.password, '--out', out]);
  assert.equal(r.code, 0, show(r));
  assert.equal(decodeToken(readFileSync(out, 'utf8').trim()).userId, user.userId);
  assert.equal(statSync(out).mode & 0o777, 0o600, `the token file was left with mode ${(statSync(out).mode & 0o777).toString(8)}`);
});

test('login without --out prints the token on stdout', async () => {
  const user = await freshUser();
  const r = await halcyon(['login', '--homeserver', hs.baseUrl, '--user', user.localpart, '--password', user.password]);
  assert.equal(r.code, 0, show(r));
  const token = r.stdout.trim();
  assert.equal(r.stdout, `${token}\n`, 'stdout should be the token and nothing else');
  const session = decodeToken(token);
  assert.equal(session.userId, user.userId);
  assert.equal(session.homeserver, hs.baseUrl);
  assert.ok(!r.stdout.includes(user.password) && !r.stderr.includes(user.password), `the password was printed\n${show(r)}`);
  assert.ok(!r.stderr.includes(session.accessToken), `stderr leaks the access token\n${show(r)}`);
});

test('login takes the password from HALCYON_PASSWORD', async () => {
  const user = await freshUser();
  const out = join(tmp, `env-${user.localpart}`);
  const r = await halcyon(['login', '--homeserver', hs.baseUrl, '--user', user.userId, '--out', out], { env: { HALCYON_PASSWORD: user.password } });
  assert.equal(r.code, 0, show(r));
  const session = decodeToken(readFileSync(out, 'utf8').trim());
  assert.equal(session.userId, user.userId);
  assert.equal(statSync(out).mode & 0o777, 0o600);
  assertNoSecrets(r, [user.password, session.accessToken]);
  assert.ok(!r.stderr.includes('Password'), `it asked for the password although HALCYON_PASSWORD was set\n${show(r)}`);
});

test('a wrong password exits non-zero with HALCYON_LOGIN_FAILED and does not echo the password', async () => {
  const user = await freshUser();
  const wrong = `wrong-${user.password}`;
  const out = join(tmp, `wrong-${user.localpart}`);
  const r = await halcyon(['login', '--homeserver', hs.baseUrl, '--user', user.localpart, '--password', wrong, '--out', out]);
  assert.notEqual(r.code, 0, show(r));
  assert.match(r.stderr, /HALCYON_LOGIN_FAILED/, show(r));
  assertNoSecrets(r, [wrong, user.password]);
  assert.equal(r.stdout, '', show(r));
  assert.ok(!existsSync(out), 'a failed login wrote a token file');
});

test('whoami with a garbage token exits non-zero with HALCYON_INVALID_TOKEN', async () => {
  const r = await halcyon(['whoami', 'garbage']);
  assert.notEqual(r.code, 0, show(r));
  assert.match(r.stderr, /HALCYON_INVALID_TOKEN/, show(r));
  assert.equal(r.stdout, '', show(r));
  assert.ok(!r.stderr.includes('garbage'), `the (bad) token was echoed\n${show(r)}`);
});

const ARGV_WARNING = /visible to other users.*\bps\b.*shell history/s;
/** What a login without --data-dir says on stderr: its device cannot be cross-signed (no store to keep keys in). */
const NO_DATA_DIR_WARNING = /^halcyon: warning: HALCYON_CROSS_SIGNING_UNAVAILABLE: device \w+ is not cross-signed: login had no dataDir[^\n]*\n/m;
/** stderr without that warning, which must be there once. */
function besidesNoDataDirWarning(r: Run): string {
  assert.match(r.stderr, NO_DATA_DIR_WARNING, `the unsigned device is reported\n${show(r)}`);
  return r.stderr.replace(NO_DATA_DIR_WARNING, '');
}

test('login takes the password from stdin (--password-stdin) or a file (--password-file FILE, --password @FILE) without a warning', async () => {
  const viaStdin = await freshUser();
  const out = join(tmp, `stdin-${viaStdin.localpart}`);
  const r = await halcyon(['login', '--homeserver', hs.baseUrl, '--user', viaStdin.localpart, '--password-stdin', '--out', out], { input: `${viaStdin.password}\n` });
  assert.equal(r.code, 0, show(r));
  assert.equal(decodeToken(readFileSync(out, 'utf8').trim()).userId, viaStdin.userId);
  assert.equal(besidesNoDataDirWarning(r), `token written to ${out} (mode 0600)\n`, `no prompt, no other warning\n${show(r)}`);

  const viaFile = await freshUser();
  const pwFile = join(tmp, `pw-${viaFile.localpart}`);
  writeFileSync(pwFile, `${viaFile.password}\r\n`, { mode: 0o600 });
  for (const args of [['--password-file', pwFile], ['--password', `@${pwFile}`]]) {
    const f = await halcyon(['login', '--homeserver', hs.baseUrl, '--user', viaFile.localpart, ...args]);
    assert.equal(f.code, 0, show(f));
    assert.equal(decodeToken(f.stdout.trim()).userId, viaFile.userId);
    assert.equal(besidesNoDataDirWarning(f), '', `no prompt, no other warning\n${show(f)}`);
    assertNoSecrets(f, [viaFile.password]);
  }
});

test('a password or token given literally in argv still works but warns on stderr, without echoing it', async () => {
  const user = await freshUser();
  const r = await halcyon(['login', '--homeserver', hs.baseUrl, '--user', user.localpart, '--password', user.password]);
  assert.equal(r.code, 0, show(r));
  assert.match(r.stderr, ARGV_WARNING, show(r));
  assert.match(r.stderr, /--password-stdin/, `the warning says what to use instead\n${show(r)}`);
  const token = r.stdout.trim();
  assertNoSecrets({ ...r, stdout: '' }, [user.password, token]);

  const w = await halcyon(['whoami', token]);
  assert.equal(w.code, 0, show(w));
  assert.equal((JSON.parse(w.stdout) as { userId: string }).userId, user.userId);
  assert.match(w.stderr, ARGV_WARNING, show(w));
  assertNoSecrets(w, [token, decodeToken(token).accessToken]);
});

test('whoami takes the token from stdin (whoami -) or HALCYON_TOKEN, without a warning', async () => {
  const user = await freshUser();
  const token = (await halcyon(['login', '--homeserver', hs.baseUrl, '--user', user.localpart, '--password-stdin'], { input: user.password })).stdout.trim();
  for (const run of [halcyon(['whoami', '-'], { input: `${token}\n` }), halcyon(['whoami'], { env: { HALCYON_TOKEN: token } })]) {
    const w = await run;
    assert.equal(w.code, 0, show(w));
    assert.equal((JSON.parse(w.stdout) as { userId: string }).userId, user.userId);
    assert.equal(w.stderr, '', show(w));
  }
  const none = await halcyon(['whoami']);
  assert.notEqual(none.code, 0, show(none));
  assert.match(none.stderr, /^halcyon: HALCYON_INVALID_ARGUMENT: .*HALCYON_TOKEN.*\n$/, show(none));
});

test('login with stdin not a terminal and no password source fails at once with a coded line (no prompt, no empty token)', async () => {
  const user = await freshUser();
  const out = join(tmp, `devnull-${user.localpart}`);
  for (const args of [
    ['--homeserver', hs.baseUrl, '--user', user.localpart, '--out', out],
    ['--homeserver', hs.baseUrl, '--password-stdin', '--out', out],
  ]) {
    const r = await halcyon(['login', ...args]);
    assert.notEqual(r.code, 0, show(r));
    assert.match(r.stderr, /^halcyon: HALCYON_INVALID_ARGUMENT: [^\n]*\n$/, `one coded line\n${show(r)}`);
    assert.doesNotMatch(r.stderr, /Password: |User: /, `it prompted\n${show(r)}`);
    assert.equal(r.stdout, '', show(r));
    assert.ok(!existsSync(out), 'a token file was written');
  }
  const noPw = await halcyon(['login', '--homeserver', hs.baseUrl, '--user', user.localpart]);
  assert.match(noPw.stderr, /--password-stdin.*--password-file.*HALCYON_PASSWORD/s, `it says how to pass the password\n${show(noPw)}`);
  const empty = await halcyon(['login', '--homeserver', hs.baseUrl, '--user', user.localpart, '--password-stdin'], { input: '' });
  assert.match(empty.stderr, /^halcyon: HALCYON_INVALID_ARGUMENT: [^\n]*\n$/, `an empty password is refused\n${show(empty)}`);
  const two = await halcyon(['login', '--homeserver', hs.baseUrl, '--user', user.localpart, '--password-stdin', '--password-file', out], { input: 'x' });
  assert.match(two.stderr, /^halcyon: HALCYON_INVALID_ARGUMENT: [^\n]*\n$/, `two password sources are refused\n${show(two)}`);
  const unknown = await halcyon(['login', '--pasword', 'x']);
  assert.match(unknown.stderr, /^halcyon: HALCYON_INVALID_ARGUMENT: [^\n]*--pasword[^\n]*\n/, `an unknown option is coded\n${show(unknown)}`);
});

test('--help and -h on every command print the usage on stdout and exit 0', async () => {
  for (const args of [['--help'], ['-h'], ['help'], [], ['login', '--help'], ['login', '-h'], ['whoami', '--help'], ['whoami', '-h'], ['token', '--help'], ['token', 'import', '-h']]) {
    const r = await halcyon(args);
    assert.equal(r.code, 0, `${args.join(' ')}: ${show(r)}`);
    assert.match(r.stdout, /^usage:/, `${args.join(' ')}: ${show(r)}`);
    assert.match(r.stdout, args[0] === 'whoami' ? /halcyon whoami/ : args[0] === 'token' ? /halcyon token import/ : /halcyon login/, `${args.join(' ')}: ${show(r)}`);
    assert.equal(r.stderr, '', `${args.join(' ')}: ${show(r)}`);
  }
  const bad = await halcyon(['frobnicate']);
  assert.notEqual(bad.code, 0, show(bad));
  assert.match(bad.stderr, /usage:/, show(bad));
});

test('a missing token or password file is one coded line naming the file', async () => {
  const missing = join(tmp, 'missing.token');
  for (const [args, opts] of [
    [['whoami', `@${missing}`], {}],
    [['login', '--homeserver', hs.baseUrl, '--user', 'x', '--password-file', missing], {}],
    [['login', '--homeserver', hs.baseUrl, '--user', 'x', '--password', `@${missing}`], {}],
  ] as const) {
    const r = await halcyon([...args], opts);
    assert.notEqual(r.code, 0, show(r));
    assert.match(r.stderr, /^halcyon: HALCYON_INVALID_ARGUMENT: [^\n]*\n$/, `one coded line\n${show(r)}`);
    assert.ok(r.stderr.includes(missing), `it names the file\n${show(r)}`);
    assert.doesNotMatch(r.stderr, /ENOENT: ENOENT/, show(r));
  }
});

/**
 * Drives a command on a real pseudo-terminal (python3's `pty`/`termios`, the only way to get one without a native
 * addon). `steps` are run in order: `['expect', text]` reads the terminal until `text` has appeared (in what was
 * read since the last expect), `['send', bytes]` types bytes (each array item is one write, so a character can
 * be split between writes). Then it reads until the command exits and reports everything the terminal received,
 * and whether the terminal was left with echo and line editing on.
 */
const PTY_DRIVER = String.raw`
import json, os, select, subprocess, sys, termios, time
steps, cmd, cwd = json.loads(sys.argv[1]), sys.argv[2:], os.getcwd()
master, slave = os.openpty()
p = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
deadline = time.monotonic() + 60
seen = b''
def pump(timeout):
    global seen
    r, _, _ = select.select([master], [], [], timeout)
    if r:
        try: chunk = os.read(master, 65536)
        except OSError: chunk = b''
        seen += chunk
        return len(chunk) > 0
    return False
mark = 0
try:
    for kind, arg in steps:
        if kind == 'expect':
            want = arg.encode()
            while want not in seen[mark:]:
                if time.monotonic() > deadline or (p.poll() is not None and not pump(0.05)):
                    raise SystemExit('never saw %r; terminal got %r' % (arg, seen))
                pump(0.05)
            mark = seen.index(want, mark) + len(want)
        else:
            for chunk in arg: os.write(master, bytes(chunk))
    while p.poll() is None or pump(0.05):
        if time.monotonic() > deadline: p.kill(); raise SystemExit('still running; terminal got %r' % seen)
        pump(0.05)
finally:
    if p.poll() is None: p.kill()
lflag = termios.tcgetattr(slave)[3]
print(json.dumps({'code': p.returncode, 'output': seen.decode('utf-8', 'replace'), 'echo': bool(lflag & termios.ECHO), 'icanon': bool(lflag & termios.ICANON)}))
`;

type PtyStep = ['expect', string] | ['send', number[][]];
interface PtyRun {
  code: number;
  output: string;
  echo: boolean;
  icanon: boolean;
}

/** Types `text` as one write (a paste), or as several when `splitAt` byte offsets are given. */
function typed(text: string, ...splitAt: number[]): ['send', number[][]] {
  const bytes = [...Buffer.from(text, 'utf8')];
  const cuts = [0, ...splitAt, bytes.length];
  return ['send', cuts.slice(1).map((end, i) => bytes.slice(cuts[i], end))];
}

/** Runs the bin on a pty (see {@link PTY_DRIVER}), HALCYON_PASSWORD unset. */
function halcyonOnPty(args: string[], steps: PtyStep[]): Promise<PtyRun> {
  const env: Record<string, string | undefined> = { ...process.env };
  delete env.HALCYON_PASSWORD;
  delete env.HALCYON_TOKEN;
  return new Promise((resolve, reject) => {
    const p = spawn('python3', ['-c', PTY_DRIVER, JSON.stringify(steps), process.execPath, CLI, ...args], { cwd: tmp, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    p.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    p.on('error', reject);
    p.on('close', (code) => (code === 0 ? resolve(JSON.parse(stdout) as PtyRun) : reject(new Error(`pty driver exited ${code}: ${stderr}`))));
  });
}

test('on a terminal, login asks for the user (echoed) and the password (never echoed), and succeeds', async () => {
  // Non-ASCII, typed with one character split across two writes, with a typo erased by Backspace (DEL).
  const user = await hs.registerUser(undefined, `pässwörd-${Date.now().toString(36)}-😀x`);
  const out = join(tmp, `pty-${user.localpart}`);
  const pw = Buffer.from(user.password, 'utf8');
  const r = await halcyonOnPty(['login', '--homeserver', hs.baseUrl, '--out', out], [
    ['expect', 'User: '],
    typed(`${user.localpart}\r`),
    ['expect', 'Password: '],
    typed(`${user.password}Z\x7f\r`, 2, pw.length - 2),
  ]);
  const show = JSON.stringify(r);
  assert.equal(r.code, 0, show);
  assert.ok(r.output.includes(user.localpart), `the user name is echoed as it is typed: ${show}`);
  for (const piece of [user.password, user.password.slice(0, 8), user.password.slice(-6), '*'.repeat(user.password.length)]) {
    assert.ok(!r.output.includes(piece), `the terminal shows (part of) the password: ${show}`);
  }
  assert.equal(decodeToken(readFileSync(out, 'utf8').trim()).userId, user.userId);
  assert.ok(r.echo && r.icanon, `the terminal was left without echo or line editing: ${show}`);
});

test('on a terminal, Ctrl-C at the password prompt aborts with a non-zero exit and restores the terminal', async () => {
  const user = await freshUser();
  const out = join(tmp, `pty-abort-${user.localpart}`);
  const r = await halcyonOnPty(['login', '--homeserver', hs.baseUrl, '--user', user.localpart, '--out', out], [
    ['expect', 'Password: '],
    typed(`${user.password.slice(0, 5)}\x03`),
  ]);
  const show = JSON.stringify(r);
  assert.equal(r.code, 130, `exit as after SIGINT: ${show}`);
  assert.ok(!r.output.includes(user.password.slice(0, 5)), `the typed characters were echoed: ${show}`);
  assert.ok(!existsSync(out), 'an aborted login wrote a token file');
  assert.ok(r.echo && r.icanon, `the terminal was left without echo or line editing: ${show}`);

  const d = await halcyonOnPty(['login', '--homeserver', hs.baseUrl, '--user', user.localpart, '--out', out], [['expect', 'Password: '], typed('\x04')]);
  assert.notEqual(d.code, 0, `Ctrl-D on an empty password must not log in: ${JSON.stringify(d)}`);
  assert.ok(d.echo && d.icanon, `the terminal was left without echo or line editing: ${JSON.stringify(d)}`);
});

test('token import wraps an existing access token (stdin, a file, or HALCYON_ACCESS_TOKEN) into a token for its device', async () => {
  const user = await freshUser();
  const file = join(tmp, 'access.txt');
  writeFileSync(file, `${user.accessToken}\n`);
  for (const [how, args, opts] of [
    ['stdin', ['--access-token-stdin'], { input: `${user.accessToken}\n` }],
    ['file', ['--access-token-file', file], {}],
    ['env', [], { env: { HALCYON_ACCESS_TOKEN: user.accessToken } }],
  ] as const) {
    const r = await halcyon(['token', 'import', '--homeserver', hs.baseUrl, ...args], opts);
    assert.equal(r.code, 0, `${how}: ${show(r)}`);
    const session = decodeToken(r.stdout.trim());
    assert.deepEqual([session.userId, session.deviceId, session.homeserver], [user.userId, user.deviceId, hs.baseUrl], how);
    assert.equal(session.accessToken, user.accessToken);
    assert.equal(r.stderr, '', `${how}: nothing on stderr (no warning, no echo)`);
  }
  const none = await halcyon(['token', 'import', '--homeserver', hs.baseUrl]);
  assert.equal(none.code, 1, show(none));
  assert.match(none.stderr, /^halcyon: HALCYON_INVALID_ARGUMENT: no access token/);
  const wrong = await halcyon(['token', 'import', '--homeserver', hs.baseUrl, '--access-token-stdin'], { input: 'syt_not_a_real_token' });
  assert.equal(wrong.code, 1, show(wrong));
  assert.match(wrong.stderr, /^halcyon: HALCYON_UNKNOWN_TOKEN: /);
  assertNoSecrets(wrong, ['syt_not_a_real_token']);
});
