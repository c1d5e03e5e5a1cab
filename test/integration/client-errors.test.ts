/** Client errors: coded run() rejections (bad, revoked and mismatched tokens), failing handlers, malformed answers. */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { inspect } from 'node:util';
import { Client, decodeToken, encodeToken, HalcyonError, type Message } from '../../src/index.ts';
import { startFaultProxy } from '../harness/fault-proxy.ts';
import { testHomeserver, withTimeout, type Homeserver } from '../harness/synapse.ts';
import { defer, deferred, newBot, newClient, newPeer, roomWithBot, tempDataDir, WAIT_MS, waitUntil } from './util.ts';

let hs: Homeserver;
before(async () => {
  hs = await testHomeserver();
});
after(async () => {
  await hs?.stop();
});

/** Asserts that `p` rejects with a HalcyonError of `code`, and returns that error. */
async function rejectsWithCode(p: Promise<unknown>, code: string): Promise<HalcyonError> {
  let caught: unknown;
  try {
    await p;
  } catch (err) {
    caught = err;
  }
  assert.ok(caught, `expected a rejection with ${code}, but it resolved`);
  assert.ok(caught instanceof HalcyonError, `expected a HalcyonError, got ${inspect(caught)}`);
  assert.equal(caught.code, code, `expected ${code}, got ${caught.code}: ${caught.message}`);
  return caught;
}

test('run with a garbage token rejects with HALCYON_INVALID_TOKEN', async (t) => {
  for (const garbage of ['garbage', 'halcyon1.', 'halcyon1.!!!not-base64!!!', `halcyon1.${Buffer.from('{"v":1}').toString('base64url')}`, '']) {
    const client = newClient(t, tempDataDir(t));
    const err = await rejectsWithCode(client.run(garbage), 'HALCYON_INVALID_TOKEN');
    if (garbage.length > 9) assert.ok(!err.message.includes(garbage), 'the error does not echo the token');
  }
});

test('run with a well-formed token whose access token belongs to nobody rejects with HALCYON_UNKNOWN_TOKEN', async (t) => {
  const user = await hs.registerUser();
  const accessToken = 'fake-test-access-token-made-up-0123456789';
  const token = encodeToken({ homeserver: hs.baseUrl, userId: user.userId, deviceId: 'NODEVICE', accessToken });
  const client = newClient(t, tempDataDir(t));
  const err = await rejectsWithCode(client.run(token), 'HALCYON_UNKNOWN_TOKEN');
  assert.ok(!err.message.includes(accessToken));
});

test('run with a revoked token rejects with HALCYON_UNKNOWN_TOKEN without revealing the access token', async (t) => {
  const user = await hs.registerUser();
  const dataDir = tempDataDir(t);
  const token = await Client.login({ homeserver: hs.baseUrl, user: user.localpart, password: user.password, dataDir });
  const { accessToken } = decodeToken(token);
  const res = await fetch(`${hs.baseUrl}/_matrix/client/v3/logout`, { method: 'POST', headers: { authorization: `Bearer ${accessToken}` } });
  assert.equal(res.status, 200, `logout: ${await res.text()}`);

  const client = newClient(t, dataDir);
  const errorEvents: HalcyonError[] = [];
  client.on('error', (e) => void errorEvents.push(e));
  const err = await rejectsWithCode(client.run(token), 'HALCYON_UNKNOWN_TOKEN');
  assert.equal(err.errcode, 'M_UNKNOWN_TOKEN');
  assert.equal(err.status, 401);
  for (const text of [err.message, String(err), err.stack ?? '', inspect(err, { depth: 5 }), JSON.stringify(err)]) {
    assert.ok(!text.includes(accessToken), `the error must not contain the access token: ${text}`);
    assert.ok(!text.includes(token), 'the error must not contain the Halcyon token');
  }
  // The client is back to idle and can be stopped without trouble.
  await client.stop();
});

test('a token revoked while running stops the client with an HALCYON_UNKNOWN_TOKEN error event', async (t) => {
  const bot = await newBot(t, hs);
  await bot.client.run(bot.token);
  const { accessToken } = decodeToken(bot.token);
  const res = await fetch(`${hs.baseUrl}/_matrix/client/v3/logout`, { method: 'POST', headers: { authorization: `Bearer ${accessToken}` } });
  assert.equal(res.status, 200);
  const err = await waitUntil(() => bot.errors.find((e) => e.code === 'HALCYON_UNKNOWN_TOKEN'), WAIT_MS, 'an HALCYON_UNKNOWN_TOKEN error event');
  assert.ok(!err.message.includes(accessToken));
  assert.ok(!inspect(err, { depth: 5 }).includes(accessToken));
});

test('a data dir used by user A, run with user B’s token, rejects with HALCYON_STORE_MISMATCH', async (t) => {
  const a = await newBot(t, hs);
  await a.client.run(a.token);
  await a.client.stop();

  const userB = await hs.registerUser();
  const tokenB = await Client.login({ homeserver: hs.baseUrl, user: userB.localpart, password: userB.password });
  const clientB = newClient(t, a.dataDir);
  const err = await rejectsWithCode(clientB.run(tokenB), 'HALCYON_STORE_MISMATCH');
  assert.ok(err.message.includes(a.user.userId), 'the message names the owner of the data dir');
  assert.ok(!err.message.includes(decodeToken(tokenB).accessToken));

  // The dir still belongs to A: A can run on it again.
  const again = newClient(t, a.dataDir);
  await again.run(a.token);
  assert.equal(again.whoami().userId, a.user.userId);
});

test('handlers that throw (sync and async) emit HALCYON_HANDLER_FAILED with roomId and eventId; the room keeps flowing', async (t) => {
  const bot = await newBot(t, hs);
  const peer = await newPeer(hs);
  const delivered: Message[] = [];
  const boomSync = new Error('sync boom');
  const boomAsync = new Error('async boom');
  bot.client.on('message', async (m) => {
    delivered.push(m);
    if (m.body === 'throw sync') throw boomSync;
    if (m.body === 'throw async') {
      await Promise.resolve();
      throw boomAsync;
    }
  });
  // A second listener: it still runs for the events whose first listener failed.
  const second: string[] = [];
  bot.client.on('message', (m) => {
    second.push(m.body);
  });
  await bot.client.run(bot.token);
  const roomId = await roomWithBot(peer, bot.user.userId);

  const syncId = await peer.sendText(roomId, 'throw sync');
  const asyncId = await peer.sendText(roomId, 'throw async');
  const okId = await peer.sendText(roomId, 'still alive?');
  await waitUntil(() => delivered.some((m) => m.eventId === okId), WAIT_MS, 'the message after the failing handlers');
  await waitUntil(() => bot.errors.length >= 2, WAIT_MS, 'two error events');

  const failures = bot.errors.filter((e) => e.code === 'HALCYON_HANDLER_FAILED');
  assert.equal(failures.length, 2, `errors: ${bot.errors.map((e) => `${e.code}: ${e.message}`).join('; ')}`);
  const [f1, f2] = failures as [HalcyonError, HalcyonError];
  assert.equal(f1.roomId, roomId);
  assert.equal(f1.eventId, syncId);
  assert.equal(f1.cause, boomSync);
  assert.match(f1.message, /sync boom/);
  assert.equal(f2.roomId, roomId);
  assert.equal(f2.eventId, asyncId);
  assert.equal(f2.cause, boomAsync);
  assert.match(f2.message, /async boom/);
  assert.deepEqual(delivered.map((m) => m.eventId), [syncId, asyncId, okId]);
  assert.deepEqual(second, ['throw sync', 'throw async', 'still alive?'], 'the next listener runs after one that failed');
});

test('a throwing synchronous-only handler is reported with roomId and eventId too', async (t) => {
  const bot = await newBot(t, hs);
  const peer = await newPeer(hs);
  const seen: string[] = [];
  bot.client.on('message', (m) => {
    seen.push(m.eventId);
    if (m.body === 'boom') throw new Error('plain sync boom');
  });
  await bot.client.run(bot.token);
  const roomId = await roomWithBot(peer, bot.user.userId);
  const boomId = await peer.sendText(roomId, 'boom');
  const nextId = await peer.sendText(roomId, 'next');
  await waitUntil(() => seen.includes(nextId), WAIT_MS, 'the message after the throwing handler');
  const err = await waitUntil(() => bot.errors.find((e) => e.code === 'HALCYON_HANDLER_FAILED'), WAIT_MS, 'the handler error');
  assert.equal(err.roomId, roomId);
  assert.equal(err.eventId, boomId);
  assert.deepEqual(seen, [boomId, nextId]);
  assert.equal(bot.errors.length, 1);
});

test('Client.login of user B with user A’s data dir does not hand the dir (and A’s sync state) to B', async (t) => {
  const a = await newBot(t, hs);
  const peer = await newPeer(hs);
  await a.client.run(a.token);
  await roomWithBot(peer, a.user.userId, { name: 'A only' });
  await waitUntil(async () => (await a.client.listRooms()).length === 1, WAIT_MS, "A's room in the cache");
  await a.client.stop();

  const userB = await hs.registerUser();
  let tokenB: string;
  try {
    tokenB = await Client.login({ homeserver: hs.baseUrl, user: userB.localpart, password: userB.password, dataDir: a.dataDir });
  } catch (err) {
    // Refusing the login outright is fine too.
    assert.equal((err as HalcyonError).code, 'HALCYON_STORE_MISMATCH');
    return;
  }
  const clientB = newClient(t, a.dataDir);
  const syncError = deferred<HalcyonError>();
  clientB.on('syncError', (e) => syncError.resolve(e));
  const running = clientB.run(tokenB);
  running.catch(() => {});
  const outcome = await withTimeout(
    Promise.race([
      running.then(
        () => 'run() resolved',
        (e: HalcyonError) => e,
      ),
      syncError.promise.then((e) => `a syncError before run() settled: ${e.code}: ${e.message}`),
    ]),
    WAIT_MS,
    "B's run() on A's data dir to settle",
  );
  await clientB.stop();
  assert.ok(
    outcome instanceof HalcyonError && outcome.code === 'HALCYON_STORE_MISMATCH',
    `B's run() on A's data dir should reject with HALCYON_STORE_MISMATCH (or B's login should); got ${outcome instanceof HalcyonError ? `${outcome.code}: ${outcome.message}` : outcome}`,
  );
  // A still owns its data dir.
  const again = newClient(t, a.dataDir);
  await again.run(a.token);
  assert.ok((await again.listRooms()).some((r) => r.name === 'A only'));
});

test('an invite handler that throws is reported with the roomId, and the bot still autojoins', async (t) => {
  const bot = await newBot(t, hs);
  const peer = await newPeer(hs);
  bot.client.on('invite', () => {
    throw new Error('invite boom');
  });
  await bot.client.run(bot.token);
  const roomId = await roomWithBot(peer, bot.user.userId);
  const err = await waitUntil(() => bot.errors.find((e) => e.code === 'HALCYON_HANDLER_FAILED'), WAIT_MS, 'the invite handler error');
  assert.match(err.message, /invite boom/);
  assert.equal(err.roomId, roomId, 'the error names the room of the invite');
});

test('answers that are not the JSON the spec describes are HALCYON_BAD_RESPONSE: a login answer cut short, a createRoom answer without room_id', async (t) => {
  const proxy = await startFaultProxy(hs.baseUrl);
  defer(t, () => proxy.close());
  const user = await hs.registerUser();
  proxy.inject({ method: 'POST', path: '/login', fault: { kind: 'truncate' }, times: 1 });
  const login = await rejectsWithCode(Client.login({ homeserver: proxy.url, user: user.localpart, password: user.password }), 'HALCYON_BAD_RESPONSE');
  assert.ok(!login.message.includes(user.password), 'the message does not echo the password');

  const dataDir = tempDataDir(t);
  const token = await Client.login({ homeserver: proxy.url, user: user.localpart, password: user.password, dataDir });
  const client = newClient(t, dataDir, { encryption: false });
  await client.run(token);
  // Synapse creates the room; the answer the bot gets is an empty object.
  const lost = proxy.inject({ method: 'POST', path: '/createRoom', fault: { kind: 'status', status: 200, body: '{}', forward: true }, times: 1 });
  const err = await rejectsWithCode(client.createRoom({ name: 'answer lost' }), 'HALCYON_BAD_RESPONSE');
  assert.match(err.message, /no room_id/);
  assert.deepEqual([lost.records[0]?.upstreamStatus, lost.records[0]?.status], [200, 200]);
});
