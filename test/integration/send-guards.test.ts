/**
 * Guards on the way out, against the real Synapse: with encryption off, a room the bot's cache has not seen is
 * asked of the server (plain text never goes into an encrypted room for want of a sync), one send at a time so
 * that concurrent sends keep their order; a send into a room the bot is not in names the send; `via` joins; the
 * crypto status during a restart; the client never shows its secrets to `util.inspect`.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { inspect } from 'node:util';
import { Client, decodeToken, type HalcyonError } from '../../src/index.ts';
import { testHomeserver, type Homeserver } from '../harness/synapse.ts';
import { repliesInRoom } from '../helpers/fault-stream.ts';
import { proxiedBot } from '../helpers/proxied-bot.ts';
import { defer, deferred, loggingProxy, newBot, newClient, newPeer, roomWithBot, tempDataDir, WAIT_MS, waitUntil } from './util.ts';
import { crashActorForTests } from '../../src/client/testing.ts';
import { cores } from '../../src/client/core.ts';

let hs: Homeserver;
before(async () => {
  hs = await testHomeserver();
});
after(async () => {
  await hs?.stop();
});

/** A bot behind a logging proxy whose /sync answers can be held (the bot then sees nothing new). */
async function blindableBot(t: Parameters<typeof newClient>[0], opts: Parameters<typeof newClient>[2] = {}) {
  let blind = false;
  const released = deferred();
  const proxy = await loggingProxy(t, hs.baseUrl, {
    hold: (_m, url) => (blind && url.startsWith('/_matrix/client/v3/sync') ? released.promise : null),
    release: () => released.resolve(),
  });
  const user = await hs.registerUser();
  const dataDir = tempDataDir(t);
  const token = await Client.login({ homeserver: proxy.url, user: user.localpart, password: user.password, dataDir });
  const client = newClient(t, dataDir, opts);
  await client.run(token);
  /** Holds every later /sync answer; resolves once a poll is held (the one in flight has ended). */
  const goBlind = async () => {
    blind = true;
    const n = proxy.log.length;
    await waitUntil(() => proxy.log.slice(n).some((l) => l.includes('/_matrix/client/v3/sync')), WAIT_MS, 'a held poll');
  };
  return { user, client, proxy, goBlind };
}

test('encryption off: a just-joined encrypted room the cache has not seen is asked of the server; plain text is refused, nothing is PUT', async (t) => {
  const bot = await blindableBot(t, { encryption: false, autoJoin: false });
  await bot.goBlind();
  const peer = await newPeer(hs);
  const roomId = await peer.createRoom({ invite: [bot.user.userId], encrypted: true });
  await bot.client.joinRoom(roomId);
  assert.equal(await bot.client.getRoom(roomId), undefined, 'the cache has not seen the room');
  await assert.rejects(bot.client.sendMessage(roomId, 'secret'), (e: HalcyonError) => e.code === 'HALCYON_ROOM_ENCRYPTED');
  await assert.rejects(bot.client.sendNotice(roomId, 'secret too'), (e: HalcyonError) => e.code === 'HALCYON_ROOM_ENCRYPTED');
  assert.deepEqual(bot.proxy.log.filter((l) => l.startsWith('PUT') && l.includes('/send/')), [], 'nothing was sent');
  // The explicit opt-out still sends.
  const id = await bot.client.sendMessage(roomId, 'public on purpose', { allowPlaintext: true });
  const ev = await peer.waitFor((e) => e.event_id === id, WAIT_MS);
  assert.equal(ev.type, 'm.room.message');
});

test('encryption off: an unencrypted room the cache has not seen is asked too, and the send goes out', async (t) => {
  const bot = await blindableBot(t, { encryption: false, autoJoin: false });
  await bot.goBlind();
  const peer = await newPeer(hs);
  const roomId = await peer.createRoom({ invite: [bot.user.userId] });
  await bot.client.joinRoom(roomId);
  const id = await bot.client.sendMessage(roomId, 'hello');
  const ev = await peer.waitFor((e) => e.event_id === id, WAIT_MS);
  assert.equal(ev.content.body, 'hello');
});

test('encryption off: concurrent sends into a room the bot has not synced yet go out in call order while the server is asked whether it is encrypted', async (t) => {
  const bot = await proxiedBot(t, hs, { reply: false });
  await bot.client.run(bot.token);
  // The bot's sync sees nothing from now on: the room it joins below is unknown to its cache.
  const blind = deferred();
  defer(t, () => blind.resolve());
  const held = bot.proxy.inject({ method: 'GET', path: '/sync', fault: { kind: 'stall', until: blind.promise }, label: 'blind' });
  await waitUntil(() => held.hits > 0, WAIT_MS, 'a held poll');
  const peer = await newPeer(hs);
  const roomId = await peer.createRoom({ invite: [bot.user.userId] });
  await bot.client.joinRoom(roomId);
  // The first "is it encrypted?" answer is slow (a slow server): later sends must not overtake the first.
  const slow = bot.proxy.inject({ method: 'GET', path: '/state/m.room.encryption', fault: { kind: 'stall', ms: 1000 }, times: 1, label: 'slow state' });
  const ids = await Promise.all(Array.from({ length: 5 }, (_, i) => bot.client.sendMessage(roomId, `c${i}`)));
  assert.equal(slow.hits, 1, 'the server was asked');
  assert.deepEqual((await repliesInRoom(hs.baseUrl, peer.user.accessToken, roomId, bot.user.userId)).map((r) => r.body), ['c0', 'c1', 'c2', 'c3', 'c4'], 'in call order');
  assert.deepEqual((await repliesInRoom(hs.baseUrl, peer.user.accessToken, roomId, bot.user.userId)).map((r) => r.eventId), ids);
});

test('encryption off: the cache\'s "not encrypted" holds, unasked, until it makes a room encrypted; a room it made encrypted is refused even where main\'s mirror lags', async (t) => {
  const bot = await newBot(t, hs, { encryption: false });
  await bot.client.run(bot.token);
  const peer = await newPeer(hs);
  const plain = await roomWithBot(peer, bot.user.userId);
  const other = await roomWithBot(peer, bot.user.userId);
  await waitUntil(async () => (await bot.client.getRoom(other)) !== undefined && (await bot.client.getRoom(plain)) !== undefined, WAIT_MS, 'both rooms in the cache');
  // The cache actor's handle, counting what sends ask it (its api is a proxy: wrapped, not patched).
  const set = cores.get(bot.client)!.actors.set!;
  const api = set.cache.api;
  let asked = 0;
  set.cache = { ...set.cache, api: new Proxy(api, { get: (target, key) => (key === 'getRoom' ? (roomId: string) => (asked++, api.getRoom(roomId)) : Reflect.get(target, key)) }) };
  await bot.client.sendMessage(plain, 'one');
  await bot.client.sendMessage(plain, 'two');
  assert.equal(asked, 1, 'the second send trusts the first answer');
  // Another room becomes encrypted: every answer from before is asked again.
  await peer.sendState(other, 'm.room.encryption', '', { algorithm: 'm.megolm.v1.aes-sha2' });
  await waitUntil(async () => (await bot.client.getRoom(other))?.encrypted === true, WAIT_MS, 'the cache to see the other room encrypted');
  asked = 0;
  await bot.client.sendMessage(plain, 'three');
  assert.equal(asked, 1);
  // The room itself becomes encrypted; main's mirror is made to lag (as while main works through earlier batches).
  await peer.sendState(plain, 'm.room.encryption', '', { algorithm: 'm.megolm.v1.aes-sha2' });
  await waitUntil(async () => (await bot.client.getRoom(plain))?.encrypted === true, WAIT_MS, 'the cache to see the room encrypted');
  const mirror = cores.get(bot.client)!.mirror;
  mirror.set({ ...mirror.get(plain)!, encrypted: false });
  await assert.rejects(bot.client.sendMessage(plain, 'secret'), (e: HalcyonError) => e.code === 'HALCYON_ROOM_ENCRYPTED');
});

test('a send into a room the bot is not in fails at once, naming the send, with the server\'s errcode', async (t) => {
  const bot = await newBot(t, hs, { encryption: false });
  await bot.client.run(bot.token);
  const peer = await newPeer(hs);
  const roomId = await peer.createRoom({});
  await assert.rejects(bot.client.sendMessage(roomId, 'hi'), (e: HalcyonError) => {
    assert.equal(e.code, 'HALCYON_MATRIX');
    assert.equal(e.errcode, 'M_FORBIDDEN');
    assert.equal(e.roomId, roomId);
    assert.match(e.message, new RegExp(`^cannot send into ${roomId.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`));
    return true;
  });
  assert.deepEqual([bot.client.outboxStatus().pending, bot.client.outboxStatus().dead], [0, 0], 'no dead letter');
});

test('joinRoom(..., { via }) sends `via` (server_name was removed in spec v1.14)', async (t) => {
  const bot = await blindableBot(t, { encryption: false, autoJoin: false });
  const peer = await newPeer(hs);
  const roomId = await peer.createRoom({ invite: [bot.user.userId] });
  assert.equal(await bot.client.joinRoom(roomId, { via: ['localhost'] }), roomId);
  const join = bot.proxy.log.find((l) => l.startsWith('POST /_matrix/client/v3/join/'));
  assert.ok(join, 'a join request');
  assert.match(join, /\?via=localhost$/);
  assert.doesNotMatch(join, /server_name/);
});

test('cryptoStatus() while the actors restart rejects with HALCYON_RESTARTING, then answers again', async (t) => {
  const bot = await newBot(t, hs);
  await bot.client.run(bot.token);
  const before = await bot.client.cryptoStatus();
  await crashActorForTests(bot.client, 'crypto');
  await assert.rejects(bot.client.cryptoStatus(), (e: HalcyonError) => e.code === 'HALCYON_RESTARTING');
  const again = await waitUntil(() => bot.client.cryptoStatus().catch(() => null), 60_000, 'the crypto status after the restart');
  assert.deepEqual(again.identity, before!.identity);
});

test('util.inspect and JSON of a running client show neither the access token nor the store passphrase', async (t) => {
  const bot = await newBot(t, hs, { encryption: { passphrase: 'a passphrase nobody may see' } });
  await bot.client.run(bot.token);
  const secrets = [decodeToken(bot.token).accessToken, bot.token, 'a passphrase nobody may see'];
  const texts = [inspect(bot.client, { depth: 20, showHidden: true }), inspect(bot.client), String(bot.client)];
  try {
    texts.push(JSON.stringify(bot.client));
  } catch {
    // Not serialisable is fine too.
  }
  for (const text of texts) for (const s of secrets) assert.ok(!text.includes(s), `a secret shows in: ${text.slice(0, 200)}`);
});

test('sends waiting on pacing are visible: outboxStatus()/health() say how many wait and why, and one warning per stretch says so', async (t) => {
  const warnings: string[] = [];
  const logger = { debug() {}, info() {}, warn: (_o: unknown, msg?: string) => void warnings.push(msg ?? ''), error() {} };
  const bot = await newBot(t, hs, { encryption: false, rateLimit: { perSecond: 2, burst: 1 }, logger });
  await bot.client.run(bot.token);
  const peer = await newPeer(hs);
  const roomId = await roomWithBot(peer, bot.user.userId);
  for (let stretch = 0; stretch < 2; stretch++) {
    const sends = [1, 2, 3].map((i) => bot.client.sendMessage(roomId, `burst ${stretch}.${i}`));
    const status = await waitUntil(() => {
      const s = bot.client.outboxStatus();
      return s.waiting.pacing > 0 ? s : null;
    }, WAIT_MS, 'a send waiting on pacing');
    assert.ok(status.nextAttemptAt !== null && status.pending >= 1);
    assert.ok(((await bot.client.health()).outbox?.pending ?? 0) >= 1);
    await Promise.all(sends);
    assert.deepEqual(bot.client.outboxStatus().waiting, { pacing: 0, rate_limited: 0, retrying: 0 });
    assert.equal(warnings.filter((w) => w.startsWith('sends are paced')).length, stretch + 1, 'one warning per stretch');
  }
  assert.match(warnings[0]!, /rateLimit: false/);
});
