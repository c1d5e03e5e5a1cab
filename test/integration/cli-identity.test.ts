/**
 * `halcyon login` with a data dir and the device's cryptographic identity: the bin (dist/cli.js) run as a real
 * process against a real Synapse. The recovery key of a new identity goes to a 0600 file and only its path is
 * printed; an account that has an identity needs the recovery key (a file, stdin or the environment; argv warns).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { decodeRecoveryKey } from '../../src/crypto/secret-storage.ts';
import { decodeToken } from '../../src/index.ts';
import { testHomeserver, type Homeserver, type TestUser } from '../harness/synapse.ts';

const CLI = join(import.meta.dirname, '..', '..', 'dist', 'cli.js');
let hs: Homeserver;
let tmp: string;

before(async () => {
  assert.ok(existsSync(CLI), `${CLI} is missing: run \`npm run build\` first`);
  hs = await testHomeserver();
  tmp = mkdtempSync(join(tmpdir(), 'halcyon-cli-id-'));
});
after(async () => {
  if (tmp) rmSync(tmp, { recursive: true, force: true });
  await hs?.stop();
});

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `halcyon login` for `user` (password on stdin unless `input` is given) with a deadline. */
function login(user: TestUser, args: string[], opts: { env?: Record<string, string>; input?: string } = {}): Promise<Run> {
  const env: Record<string, string | undefined> = { ...process.env, HALCYON_PASSWORD: undefined, HALCYON_RECOVERY_KEY: undefined, ...opts.env };
  for (const [k, v] of Object.entries(env)) if (v === undefined) delete env[k];
  const argv = [CLI, 'login', '--homeserver', hs.baseUrl, '--user', user.localpart, ...(opts.input === undefined ? ['--password-stdin'] : []), ...args];
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, argv, { cwd: tmp, env, stdio: ['pipe', 'pipe', 'pipe'] });
    p.stdin.end(opts.input ?? `${user.password}\n`);
    let stdout = '';
    let stderr = '';
    p.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    p.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => {
      p.kill('SIGKILL');
      reject(new Error(`halcyon login did not exit in time; stderr: ${stderr}`));
    }, 120_000);
    p.on('error', reject);
    p.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

const show = (r: Run) => `exit ${r.code}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`;

test('login --data-dir sets up cross-signing: the recovery key is written to a 0600 file and only the path is printed; --show-recovery-key prints it', async () => {
  const user = await hs.registerUser();
  const dir = join(tmp, `a-${user.localpart}`);
  const r = await login(user, ['--data-dir', dir, '--out', join(tmp, `a-${user.localpart}.token`)]);
  assert.equal(r.code, 0, show(r));
  const file = join(dir, 'recovery-key.txt');
  const key = readFileSync(file, 'utf8').trim();
  assert.equal(decodeRecoveryKey(key).length, 32, 'the file holds a recovery key');
  assert.equal(statSync(file).mode & 0o777, 0o600);
  assert.match(r.stderr, /set up cross-signing \(master key [A-Za-z0-9+/]+\); the device is signed/, show(r));
  assert.ok(r.stderr.includes(`the recovery key was written to ${file} (mode 0600)`), show(r));
  for (const part of key.split(' ')) assert.ok(!r.stderr.includes(part) && !r.stdout.includes(part), `the recovery key was printed\n${show(r)}`);

  const other = await hs.registerUser();
  const s = await login(other, ['--data-dir', join(tmp, `b-${other.localpart}`), '--show-recovery-key']);
  assert.equal(s.code, 0, show(s));
  const shown = readFileSync(join(tmp, `b-${other.localpart}`, 'recovery-key.txt'), 'utf8').trim();
  assert.ok(s.stderr.includes(`recovery key: ${shown}\n`), `--show-recovery-key prints it on stderr\n${show(s)}`);
  assert.ok(!s.stdout.includes(shown), 'stdout holds the token only');
  assert.equal(decodeToken(s.stdout.trim()).userId, other.userId);
});

test('an account with an identity: without the recovery key the device stays unsigned with a warning; --recovery-key @FILE, - and HALCYON_RECOVERY_KEY sign it; a key in argv works but warns', async () => {
  const user = await hs.registerUser();
  const first = await login(user, ['--data-dir', join(tmp, `c1-${user.localpart}`)]);
  assert.equal(first.code, 0, show(first));
  const keyFile = join(tmp, `c1-${user.localpart}`, 'recovery-key.txt');
  const key = readFileSync(keyFile, 'utf8').trim();

  const none = await login(user, ['--data-dir', join(tmp, `c2-${user.localpart}`)]);
  assert.equal(none.code, 0, `the token is still given\n${show(none)}`);
  assert.match(none.stderr, /^halcyon: warning: HALCYON_CROSS_SIGNING_UNAVAILABLE: device \S+ of \S+ is not cross-signed.*--recovery-key @FILE/m, show(none));
  assert.equal(existsSync(join(tmp, `c2-${user.localpart}`, 'recovery-key.txt')), false, 'no new identity');

  const signedLine = /cross-signing keys taken from secret storage; the device is signed/;
  const viaFile = await login(user, ['--data-dir', join(tmp, `c3-${user.localpart}`), '--recovery-key', `@${keyFile}`]);
  assert.equal(viaFile.code, 0, show(viaFile));
  assert.match(viaFile.stderr, signedLine, show(viaFile));
  assert.doesNotMatch(viaFile.stderr, /warning/, show(viaFile));

  const viaStdin = await login(user, ['--data-dir', join(tmp, `c4-${user.localpart}`), '--recovery-key', '-'], { input: `${key}\n`, env: { HALCYON_PASSWORD: user.password } });
  assert.equal(viaStdin.code, 0, show(viaStdin));
  assert.match(viaStdin.stderr, signedLine, show(viaStdin));

  const viaEnv = await login(user, ['--data-dir', join(tmp, `c5-${user.localpart}`)], { env: { HALCYON_RECOVERY_KEY: key } });
  assert.equal(viaEnv.code, 0, show(viaEnv));
  assert.match(viaEnv.stderr, signedLine, show(viaEnv));

  const inArgv = await login(user, ['--data-dir', join(tmp, `c6-${user.localpart}`), '--recovery-key', key.replace(/ /g, '')]);
  assert.equal(inArgv.code, 0, show(inArgv));
  assert.match(inArgv.stderr, /warning: a recovery key given on the command line is visible to other users in ps/, show(inArgv));
  assert.match(inArgv.stderr, signedLine, show(inArgv));
  assert.ok(!inArgv.stderr.includes(key.replace(/ /g, '')) && !inArgv.stdout.includes(key.replace(/ /g, '')), `the key was echoed\n${show(inArgv)}`);

  const both = await login(user, ['--data-dir', join(tmp, `c7-${user.localpart}`), '--recovery-key', '-']);
  assert.notEqual(both.code, 0, show(both));
  assert.match(both.stderr, /^halcyon: HALCYON_INVALID_ARGUMENT: stdin cannot hold both the password and the recovery key/, show(both));

  const typo = await login(user, ['--data-dir', join(tmp, `c8-${user.localpart}`)], { env: { HALCYON_RECOVERY_KEY: `${key.slice(0, -1)}${key.endsWith('a') ? 'b' : 'a'}` } });
  assert.notEqual(typo.code, 0, show(typo));
  assert.match(typo.stderr, /^halcyon: HALCYON_RECOVERY_KEY_INVALID: /, show(typo));
});
