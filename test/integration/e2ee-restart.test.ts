/**
 * E2EE across restarts against a real Synapse and an independent peer (matrix-js-sdk 43, Rust crypto): a clean
 * stop/start, a kill -9 of a bot in a child process, a wrong store passphrase, and a data dir used with another
 * device's or another user's token. The identity (device ID, identity keys) must survive; events encrypted
 * while the bot was down must decrypt afterwards; a store that is not the token's must be refused.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { after, before, test, type TestContext } from 'node:test';
import { Client, decodeToken, type HalcyonError, type Message } from '../../src/index.ts';
import { newJsPeer } from '../harness/js-peer.ts';
import { testHomeserver, withTimeout, type Homeserver } from '../harness/synapse.ts';
import { defer, newBot, newClient, newPeer, WAIT_MS, waitUntil } from './util.ts';

const repoRoot = join(import.meta.dirname, '..', '..');
const BOT_SCRIPT = join(repoRoot, 'test', 'fixtures', 'e2ee-bot.ts');

let hs: Homeserver;
before(async () => {
  hs = await testHomeserver();
});
after(async () => {
  await hs?.stop();
});

/** Runs `p` and returns the HalcyonError it rejects with (fails if it resolves). */
async function rejection(p: Promise<unknown>, what: string): Promise<HalcyonError> {
  return p.then(
    () => assert.fail(`${what} resolved; it should have been refused`),
    (e: HalcyonError) => e,
  );
}

for (const threads of ['worker', 'inline'] as const) test(`clean restart (threads: ${threads}): same device and identity keys; the 3 messages encrypted while stopped are delivered decrypted, in order, exactly once`, async (t) => {
  const bot = await newBot(t, hs, { threads });
  const first: Message[] = [];
  bot.client.on('message', (m) => void first.push(m));
  await bot.client.run(bot.token);
  const who1 = bot.client.whoami();
  assert.ok(who1.identityKeys, 'identity keys with encryption on');

  const peer = await newJsPeer(t, hs);
  const roomId = await peer.createEncryptedRoom({ invite: [bot.user.userId] });
  await peer.waitForMember(roomId, bot.user.userId, 'join');
  const beforeId = await peer.sendText(roomId, 'before stop');
  await waitUntil(() => first.find((m) => m.eventId === beforeId), WAIT_MS, "the first client's 'before stop' message");
  await bot.client.stop();

  // The peer already shares its room session with the bot's device: these are encrypted to it.
  const missedIds: string[] = [];
  for (let i = 1; i <= 3; i++) missedIds.push(await peer.sendText(roomId, `while stopped ${i}`));

  const second = newClient(t, bot.dataDir, { threads });
  const received: Message[] = [];
  const decryptionErrors: Array<{ code: string; eventId: string; willRetry: boolean }> = [];
  const errors: HalcyonError[] = [];
  second.on('message', (m) => void received.push(m));
  second.on('decryptionError', (e, info) => void decryptionErrors.push({ code: e.code, eventId: info.eventId, willRetry: info.willRetry }));
  second.on('error', (e) => void errors.push(e));
  await second.run(bot.token);
  const who2 = second.whoami();
  assert.equal(who2.deviceId, who1.deviceId, 'same device ID');
  assert.deepEqual(who2.identityKeys, who1.identityKeys, 'same identity keys');

  await waitUntil(() => received.length >= 3, WAIT_MS, `the 3 missed messages (got ${received.length}; decryption errors: ${JSON.stringify(decryptionErrors)})`);
  // A message after the resume marks the end: anything redelivered would come before it.
  const afterId = await peer.sendText(roomId, 'after resume');
  await waitUntil(() => received.some((m) => m.eventId === afterId), WAIT_MS, "the 'after resume' message");

  assert.deepEqual(received.map((m) => m.eventId), [...missedIds, afterId], 'exactly the 3 missed messages, in order, then the new one');
  assert.deepEqual(received.map((m) => m.body), ['while stopped 1', 'while stopped 2', 'while stopped 3', 'after resume']);
  assert.ok(received.every((m) => m.isEncrypted), 'all were encrypted');
  assert.deepEqual(decryptionErrors, []);
  assert.deepEqual(errors, []);
  assert.deepEqual(bot.errors, []);
});

type Line = { kind: string; [k: string]: any };

/** The e2ee-bot fixture in a child process; killed (SIGKILL) when the test ends if still alive. */
function startChildBot(t: TestContext, token: string, dataDir: string, opts: { threads?: 'worker' | 'inline'; hold?: boolean } = {}) {
  const child: ChildProcessWithoutNullStreams = spawn(process.execPath, ['--import', 'tsx', BOT_SCRIPT], {
    cwd: repoRoot,
    env: { ...process.env, HC_TOKEN: token, HC_DIR: dataDir, HC_THREADS: opts.threads ?? 'worker', HC_HOLD: opts.hold ? '1' : '0' },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const lines: Line[] = [];
  let stderr = '';
  let exitCode: number | null | undefined;
  let exitSignal: NodeJS.Signals | null = null;
  const exited = new Promise<void>((resolve) =>
    child.on('exit', (code, signal) => {
      exitCode = code;
      exitSignal = signal;
      resolve();
    }),
  );
  child.stderr.on('data', (d) => (stderr += d));
  createInterface({ input: child.stdout }).on('line', (l) => {
    try {
      lines.push(JSON.parse(l) as Line);
    } catch {
      stderr += `(stdout, not JSON) ${l}\n`;
    }
  });
  defer(t, async () => {
    if (exitCode === undefined) {
      child.kill('SIGKILL');
      await exited;
    }
  });
  const describe = () => `child exit=${exitCode === undefined ? 'running' : `${exitCode}/${exitSignal}`}; lines=${JSON.stringify(lines)}; stderr tail:\n${stderr.split('\n').slice(-30).join('\n')}`;
  return {
    child,
    lines,
    exited,
    /** Resolves with the first line matching `pred`; fails early if the child exits. */
    async waitFor(pred: (l: Line) => boolean, what: string, timeoutMs = WAIT_MS): Promise<Line> {
      try {
        return await waitUntil(() => {
          const l = lines.find(pred);
          if (l) return l;
          if (exitCode !== undefined) throw new Error('the child exited');
          return undefined;
        }, timeoutMs, what);
      } catch (e) {
        throw new Error(`${(e as Error).message}\n${describe()}`);
      }
    },
    async kill9(): Promise<void> {
      child.kill('SIGKILL');
      await withTimeout(exited, 10_000, 'the child to die after SIGKILL');
    },
    /** SIGTERM: the fixture stops the client and exits. */
    async stop(): Promise<void> {
      if (exitCode !== undefined) return;
      child.kill('SIGTERM');
      await withTimeout(exited, 20_000, 'the child to exit after SIGTERM').catch(async (e) => {
        child.kill('SIGKILL');
        await exited;
        throw e;
      });
    },
    describe,
  };
}

/** Modes (permission bits) of the data dir and every file in it (directories as `dir:<mode>`). */
function modes(dir: string): Record<string, string> {
  const out: Record<string, string> = { '.': (statSync(dir).mode & 0o777).toString(8) };
  for (const name of readdirSync(dir)) {
    const st = statSync(join(dir, name));
    out[name] = `${st.isFile() ? '' : 'dir:'}${(st.mode & 0o777).toString(8)}`;
  }
  return out;
}

test('kill -9 of a bot process: same identity keys after the restart; the 3 messages sent meanwhile are delivered decrypted; the store is 0600 in a 0700 dir', async (t) => {
  const bot = await newBot(t, hs); // its Client is never run: the child process is the bot
  const run1 = startChildBot(t, bot.token, bot.dataDir);
  const ready1 = await run1.waitFor((l) => l.kind === 'ready', 'the first child to be ready');
  assert.ok(ready1.identityKeys?.curve25519 && ready1.identityKeys?.ed25519, 'the child reported identity keys');

  const peer = await newJsPeer(t, hs);
  const roomId = await peer.createEncryptedRoom({ invite: [bot.user.userId] });
  await peer.waitForMember(roomId, bot.user.userId, 'join');
  const echoId = await peer.sendText(roomId, '!echo one');
  await run1.waitFor((l) => l.kind === 'message' && l.eventId === echoId, "the child's decrypted '!echo one'");
  const echo = await peer.waitForMessage(roomId, (m) => m.sender === bot.user.userId && m.body === 'echo: one');
  assert.equal(echo.encrypted, true);

  await run1.kill9();
  const newIds: string[] = [];
  for (let i = 1; i <= 3; i++) newIds.push(await peer.sendText(roomId, `while dead ${i}`));

  const dirModes = modes(bot.dataDir);
  const run2 = startChildBot(t, bot.token, bot.dataDir);
  const ready2 = await run2.waitFor((l) => l.kind === 'ready', 'the second child to be ready');
  assert.equal(ready2.deviceId, ready1.deviceId, 'same device ID');
  assert.deepEqual(ready2.identityKeys, ready1.identityKeys, 'same identity keys after kill -9');

  const msgs = () => run2.lines.filter((l) => l.kind === 'message');
  await run2.waitFor(() => newIds.every((id) => msgs().some((m) => m.eventId === id)), 'the 3 messages sent while the bot was dead');
  const endId = await peer.sendText(roomId, 'end marker');
  await run2.waitFor((l) => l.kind === 'message' && l.eventId === endId, 'the end marker');

  const got = msgs();
  for (const [i, id] of newIds.entries()) {
    const copies = got.filter((m) => m.eventId === id);
    assert.ok(copies.length >= 1);
    assert.equal(copies[0]!.body, `while dead ${i + 1}`);
    assert.equal(copies[0]!.isEncrypted, true);
  }
  const firstIdx = newIds.map((id) => got.findIndex((m) => m.eventId === id));
  assert.deepEqual([...firstIdx].sort((a, b) => a - b), firstIdx, 'the 3 arrive in order');
  const counts = Object.fromEntries([echoId, ...newIds, endId].map((id) => [id, got.filter((m) => m.eventId === id).length]));
  t.diagnostic(`deliveries after kill -9 (echo redelivered: ${counts[echoId]}): ${JSON.stringify(counts)}`);
  // At-least-once across a crash is allowed for what was in flight at the kill; the messages sent while the
  // process was dead were never seen before, so each must arrive exactly once.
  assert.deepEqual(newIds.map((id) => counts[id]), [1, 1, 1], 'each message sent while dead delivered once (no duplicates)');
  assert.deepEqual(run2.lines.filter((l) => l.kind === 'decryptionError' || l.kind === 'error'), [], 'no decryption errors or errors');

  // The data dir and the crypto store are private.
  const expected = { dir: '700', 'crypto.sqlite': '600', 'crypto.key': '600' };
  assert.deepEqual({ dir: dirModes['.'], 'crypto.sqlite': dirModes['crypto.sqlite'], 'crypto.key': dirModes['crypto.key'] }, expected, `modes: ${JSON.stringify(dirModes)}`);
  for (const [name, mode] of Object.entries(dirModes)) {
    // Files come and go (journal segments): the modes were read together, before the second run started.
    if (name === '.' || mode.startsWith('dir:')) continue;
    assert.equal(mode, '600', `${name} in the data dir is ${mode}, not 600 (all modes: ${JSON.stringify(dirModes)})`);
  }
  await run2.stop();
});

test('kill -9 while the first encrypted message is being handled: after the restart it is redelivered, decrypted with the stored room key', async (t) => {
  const bot = await newBot(t, hs);
  // The first run's handlers hang: the kill lands while the message is handled, before it is acknowledged.
  const run1 = startChildBot(t, bot.token, bot.dataDir, { hold: true });
  const ready1 = await run1.waitFor((l) => l.kind === 'ready', 'the first child to be ready');
  const peer = await newJsPeer(t, hs);
  const roomId = await peer.createEncryptedRoom({ invite: [bot.user.userId] });
  await peer.waitForMember(roomId, bot.user.userId, 'join');
  // The room key of this message reaches the bot by to-device just before it; the handler is held and killed
  // (before the batch is acknowledged), so the next run resumes from an older token.
  const id = await peer.sendText(roomId, '!echo in flight');
  await run1.waitFor((l) => l.kind === 'message' && l.eventId === id, "the child's decrypted '!echo in flight'");
  await run1.kill9();
  assert.deepEqual(run1.lines.filter((l) => l.kind === 'replied'), [], 'the held handler did not reply before the kill');

  const run2 = startChildBot(t, bot.token, bot.dataDir);
  const ready2 = await run2.waitFor((l) => l.kind === 'ready', 'the second child to be ready');
  assert.deepEqual(ready2.identityKeys, ready1.identityKeys);
  const endId = await peer.sendText(roomId, 'end marker');
  await run2.waitFor((l) => l.kind === 'message' && l.eventId === endId, 'the end marker');
  const again = run2.lines.filter((l) => l.kind === 'message' && l.eventId === id);
  assert.equal(again.length, 1, 'the unacknowledged message is redelivered once (at-least-once across a crash)');
  assert.equal(again[0]!.body, '!echo in flight');
  assert.equal(again[0]!.isEncrypted, true);
  assert.deepEqual(run2.lines.filter((l) => l.kind === 'decryptionError' || l.kind === 'error'), []);
  await run2.waitFor((l) => l.kind === 'replied' && l.eventId === id, 'the reply of the redelivered message');
  await run2.stop();
});

for (const threads of ['worker', 'inline'] as const) test(`a different passphrase on an existing crypto store (threads: ${threads}): run() rejects with HALCYON_CRYPTO_STORE; the right one still opens it`, async (t) => {
  const bot = await newBot(t, hs, { threads, encryption: { passphrase: 'one' } });
  await bot.client.run(bot.token);
  const keys = bot.client.whoami().identityKeys;
  await bot.client.stop();

  const warnings: string[] = [];
  const capture = (obj: unknown, msg?: string) => void warnings.push(`${msg ?? ''}: ${obj instanceof Error ? `${(obj as HalcyonError).code} ${obj.message}` : JSON.stringify(obj)}`);
  const wrong = newClient(t, bot.dataDir, { threads, encryption: { passphrase: 'two' }, logger: { debug() {}, info() {}, warn: capture, error: capture } });
  const err = await rejection(wrong.run(bot.token), "run() with passphrase 'two'");
  assert.equal(err.code, 'HALCYON_CRYPTO_STORE', `got ${err.code}: ${err.message}`);

  // The refused attempt left the store intact: the right passphrase opens it, with the same identity.
  const right = newClient(t, bot.dataDir, { threads, encryption: { passphrase: 'one' } });
  await right.run(bot.token);
  assert.deepEqual(right.whoami().identityKeys, keys, 'same identity with the right passphrase');
  // The refused start cleans up quietly (no internal errors while closing what did not open).
  assert.deepEqual(warnings.filter((w) => /HALCYON_INTERNAL/.test(w)), [], `warnings of the refused run: ${JSON.stringify(warnings)}`);
});

/** The device keys the server holds for `userId`, by device ID. */
async function serverDeviceKeys(userId: string): Promise<Record<string, unknown>> {
  const asker = await newPeer(hs);
  const res = await asker.request('POST', '/keys/query', { device_keys: { [userId]: [] } });
  return res.device_keys?.[userId] ?? {};
}

test("another device's token on the data dir: run() rejects with HALCYON_STORE_MISMATCH and uploads no keys for it", async (t) => {
  const bot = await newBot(t, hs);
  await bot.client.run(bot.token);
  const first = bot.client.whoami();
  await bot.client.stop();

  // A login without a data dir makes a new device of the same user.
  const otherDeviceToken = await Client.login({ homeserver: hs.baseUrl, user: bot.user.localpart, password: bot.user.password });
  const other = decodeToken(otherDeviceToken);
  assert.equal(other.userId, first.userId);
  assert.notEqual(other.deviceId, first.deviceId);

  const c = newClient(t, bot.dataDir);
  const err = await rejection(c.run(otherDeviceToken), "run() with another device's token");
  assert.equal(err.code, 'HALCYON_STORE_MISMATCH', `got ${err.code}: ${err.message}`);
  const keys = await serverDeviceKeys(first.userId);
  assert.ok(keys[first.deviceId], 'the original device still has its keys on the server');
  assert.equal(keys[other.deviceId], undefined, 'no keys were uploaded for the other device');

  // The refused run must not have re-pointed the data dir at the other device: a login with the data dir
  // still reuses the original device, and the original token still runs with the original identity.
  const problems: string[] = [];
  const relogin = decodeToken(await Client.login({ homeserver: hs.baseUrl, user: bot.user.localpart, password: bot.user.password, dataDir: bot.dataDir }));
  if (relogin.deviceId !== first.deviceId) {
    problems.push(`after the refused run, Client.login with the data dir returned device ${relogin.deviceId} (the refused token's device is ${other.deviceId}), not the store's device ${first.deviceId}`);
  }
  const again = newClient(t, bot.dataDir);
  await again.run(bot.token);
  if (JSON.stringify(again.whoami().identityKeys) !== JSON.stringify(first.identityKeys)) problems.push('the original token no longer runs with the original identity keys');
  assert.deepEqual(problems, []);
});

test("another user's token on the data dir: run() rejects with HALCYON_STORE_MISMATCH", async (t) => {
  const x = await newBot(t, hs);
  await x.client.run(x.token);
  await x.client.stop();
  // Y's login must not upload keys itself (with encryption on, login sets the device up in Y's own data dir).
  const y = await newBot(t, hs, { encryption: false });
  const c = newClient(t, x.dataDir);
  const err = await rejection(c.run(y.token), "run() with user Y's token on X's data dir");
  assert.equal(err.code, 'HALCYON_STORE_MISMATCH', `got ${err.code}: ${err.message}`);
  const keys = await serverDeviceKeys(y.user.userId);
  assert.equal(keys[decodeToken(y.token).deviceId], undefined, "no keys were uploaded for Y's device");
});
