/**
 * The outbox through the whole client, against the real Synapse behind the fault proxy (test/harness/fault-proxy.ts):
 * transaction IDs derived from the triggering event make a re-run handler's sends the same requests, and Synapse
 * itself de-duplicates them; its refusals become dead letters with HALCYON_SEND_FAILED and `sendFailed`; 429
 * storms and 5xx from the proxy are waited out without losing or reordering sends; pacing spaces sends; sends
 * left unfinished by a stop go out with the next run under the same transaction IDs.
 *
 * What went out is read from the proxy's records (one per attempt, with the status the client got) and from the
 * room as the peer sees it, never from a server of the test's own making.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { HalcyonError, SendFailure } from '../../src/index.ts';
import type { RequestRecord } from '../harness/fault-proxy.ts';
import { testHomeserver, type Homeserver } from '../harness/synapse.ts';
import { countBy, repliesInRoom } from '../helpers/fault-stream.ts';
import { peerRoomWithBot, proxiedBot, type ProxiedBot } from '../helpers/proxied-bot.ts';
import { deferred, newClient, WAIT_MS, waitUntil } from './util.ts';

let hs: Homeserver;
before(async () => {
  hs = await testHomeserver();
});
after(async () => {
  await hs?.stop();
});

/** Date.now() and timers disagree by a millisecond or two. */
const CLOCK_MS = 5;

const isSend = (r: RequestRecord) => r.method === 'PUT' && r.path.includes('/send/');
/** The transaction ID of a send's path (`.../send/<type>/<txn>`). */
const txnOf = (r: RequestRecord) => decodeURIComponent(r.path.slice(r.path.lastIndexOf('/') + 1));
/** The bot's send attempts so far, in arrival order. */
const sends = (bot: ProxiedBot) => bot.proxy.records.filter(isSend);
/** Attempts per transaction ID that the client saw answered 200. */
const okPerTxn = (records: RequestRecord[]) => countBy(records.filter((r) => r.status === 200), txnOf);

/** The bot's messages in the room, as the peer reads them from Synapse. */
const inRoom = (bot: ProxiedBot, peer: { user: { accessToken: string } }, roomId: string) => repliesInRoom(hs.baseUrl, peer.user.accessToken, roomId, bot.user.userId);

test('a handler run again after a stop repeats the same transaction IDs: Synapse de-duplicates, the room gets each reply once', async (t) => {
  const bot = await proxiedBot(t, hs, { reply: false, client: { stopTimeoutMs: 1000 } });
  const replied = deferred();
  const gate = deferred();
  bot.client.on('message', async (m) => {
    await m.reply('first reply');
    replied.resolve();
    await gate.promise;
    await m.reply('second reply');
  });
  await bot.client.run(bot.token);
  const { peer, roomId } = await peerRoomWithBot(hs, bot);
  const asked = await peer.sendText(roomId, 'please reply twice');
  await replied.promise;
  // The second reply reaches Synapse, which stores it, but its answer never reaches the bot.
  const held = bot.proxy.inject({ method: 'PUT', path: '/send/', fault: { kind: 'stall', forward: true }, times: 1, label: 'answer lost' });
  gate.resolve();
  await waitUntil(() => held.records[0]?.upstreamStatus === 200, WAIT_MS, 'Synapse to take the second reply');
  await bot.client.stop(); // the handler is abandoned; its event and its send are left unfinished

  const second = newClient(t, bot.dataDir, { encryption: false });
  const redelivered: boolean[] = [];
  const ids: string[] = [];
  second.on('message', async (m) => {
    redelivered.push(m.redelivered);
    ids.push(await m.reply('first reply'));
    ids.push(await m.reply('second reply'));
  });
  await second.run(bot.token);
  await waitUntil(() => ids.length === 2, WAIT_MS, 'the redelivered handler to finish');
  await waitUntil(() => second.outboxStatus().pending === 0, WAIT_MS, 'the outbox to empty');

  assert.deepEqual(redelivered, [true]);
  const room = await inRoom(bot, peer, roomId);
  assert.deepEqual(room.map((r) => [r.body, r.inReplyTo]), [['first reply', asked], ['second reply', asked]], 'each reply once in the room');
  assert.deepEqual(room.map((r) => r.eventId), ids, 'the re-run handler got the event IDs of the replies in the room');
  const attempts = sends(bot);
  const [firstTxn, secondTxn] = [...new Set(attempts.map(txnOf))];
  assert.equal(new Set(attempts.map(txnOf)).size, 2, `two transaction IDs for ${attempts.length} attempts`);
  assert.match(firstTxn!, /^hcr\./, 'derived from the triggering event');
  assert.match(secondTxn!, /^hcr\./);
  // The first reply was acknowledged before the stop: the re-run handler got its event ID from disk, no request.
  assert.deepEqual(attempts.filter((r) => txnOf(r) === firstTxn).map((r) => r.status), [200], 'the acknowledged reply was not sent again');
  // The second: the lost answer, then the repeat (by the outbox's resume or the re-run handler), answered once.
  const repeats = attempts.filter((r) => txnOf(r) === secondTxn);
  assert.deepEqual([repeats[0]!.upstreamStatus, repeats[0]!.status], [200, null], 'Synapse took the first attempt; the bot got no answer');
  assert.equal(okPerTxn(repeats).get(secondTxn!), 1, `one attempt answered 200: ${repeats.map((r) => r.status).join(', ')}`);
});

test('a handler that is not async gets derived transaction IDs too: sends it makes in its synchronous part, unawaited', async (t) => {
  const bot = await proxiedBot(t, hs, { reply: false });
  const ids: Array<Promise<string>> = [];
  // As many bots write it: a plain function that fires its replies and returns.
  bot.client.on('message', (m) => {
    ids.push(m.reply('one'), m.reply('two'));
  });
  await bot.client.run(bot.token);
  const { peer, roomId } = await peerRoomWithBot(hs, bot);
  await peer.sendText(roomId, 'reply twice, from a plain handler');
  await waitUntil(() => ids.length === 2, WAIT_MS, 'the handler to run');
  await Promise.all(ids);
  const txns = [...new Set(sends(bot).map(txnOf))];
  assert.equal(txns.length, 2, 'one transaction ID per reply');
  for (const txn of txns) assert.match(txn, /^hcr\./, 'derived from the triggering event, so a re-run repeats it');
  assert.deepEqual((await inRoom(bot, peer, roomId)).map((r) => r.body), ['one', 'two'], 'in call order');
});

test('a refused send is a dead letter: the caller gets HALCYON_SEND_FAILED with the errcode, sendFailed fires once, deadLetters() keeps it, later sends still go', async (t) => {
  const bot = await proxiedBot(t, hs, { reply: false });
  const failed: Array<{ code: string; errcode?: string; info: SendFailure }> = [];
  bot.client.on('sendFailed', (e, info) => void failed.push({ code: e.code, errcode: e.errcode, info }));
  await bot.client.run(bot.token);
  // A room where posting needs power level 50: the bot (0) is in it, and Synapse refuses its messages.
  const { peer, roomId: open } = await peerRoomWithBot(hs, bot);
  const { room_id: muted } = await peer.request('POST', '/createRoom', { preset: 'private_chat', invite: [bot.user.userId], power_level_content_override: { events_default: 50 } });
  await peer.waitForJoined(muted, bot.user.userId, WAIT_MS);

  const err = await bot.client.sendMessage(muted, 'forbidden').then(
    () => null,
    (e: HalcyonError) => e,
  );
  assert.equal(err?.code, 'HALCYON_SEND_FAILED');
  assert.equal(err?.errcode, 'M_FORBIDDEN');
  assert.equal(err?.status, 403);
  const refused = sends(bot).filter((r) => r.path.includes(encodeURIComponent(muted)));
  assert.deepEqual(refused.map((r) => r.status), [403], 'one attempt: a refusal is not retried');
  assert.deepEqual(failed, [{ code: 'HALCYON_SEND_FAILED', errcode: 'M_FORBIDDEN', info: { roomId: muted, txnId: txnOf(refused[0]!), type: 'm.room.message', attempts: 1 } }]);

  const fine = await bot.client.sendMessage(open, 'fine');
  assert.deepEqual((await inRoom(bot, peer, open)).map((r) => [r.eventId, r.body]), [[fine, 'fine']]);
  assert.deepEqual({ ...bot.client.outboxStatus(), nextAttemptAt: null }, { pending: 0, dead: 1, waiting: { pacing: 0, rate_limited: 0, retrying: 0 }, nextAttemptAt: null });
  const dead = bot.client.deadLetters();
  assert.equal(dead.length, 1);
  assert.deepEqual({ ...dead[0]!, error: null }, { roomId: muted, txnId: txnOf(refused[0]!), op: { kind: 'send', type: 'm.room.message', content: { msgtype: 'm.text', body: 'forbidden' } }, attempts: 1, error: null });
  assert.match(dead[0]!.error ?? '', /M_FORBIDDEN/);
  assert.deepEqual(await inRoom(bot, peer, muted), [], 'nothing of the bot in the room where it may not post');
});

test('429 storms (retry_after_ms, Retry-After, neither) and a 5xx are waited out: every send arrives once, in order', async (t) => {
  const bot = await proxiedBot(t, hs, { reply: false });
  await bot.client.run(bot.token);
  const { peer, roomId } = await peerRoomWithBot(hs, bot);
  const failed: string[] = [];
  bot.client.on('sendFailed', (e) => void failed.push(e.message));
  // In this order, on the first attempts: two 429s asking for 30 ms, one with only `Retry-After: 0`, one with
  // no retry time (a backoff), one 502 (Synapse took the event; only the answer is replaced).
  const rules = [
    bot.proxy.inject({ method: 'PUT', path: '/send/', fault: { kind: 'rateLimit', retryAfterMs: 30 }, times: 2, label: '429 30 ms' }),
    bot.proxy.inject({ method: 'PUT', path: '/send/', fault: { kind: 'rateLimit', retryAfterSeconds: 0 }, times: 1, label: '429 Retry-After' }),
    bot.proxy.inject({ method: 'PUT', path: '/send/', fault: { kind: 'rateLimit' }, times: 1, label: '429 bare' }),
    bot.proxy.inject({ method: 'PUT', path: '/send/', fault: { kind: 'status', status: 502, forward: true }, times: 1, label: '502' }),
  ];
  const ids = await Promise.all(Array.from({ length: 6 }, (_, i) => bot.client.sendMessage(roomId, `n${i}`)));
  for (const r of rules) assert.equal(r.hits, r.spec.times, `${r.label} fired`);

  const attempts = sends(bot);
  const order = [...new Set(attempts.map(txnOf))];
  assert.equal(order.length, 6, 'one transaction ID per send, kept across its retries');
  assert.deepEqual([...okPerTxn(attempts).values()], [1, 1, 1, 1, 1, 1], 'each transaction ID answered 200 exactly once');
  assert.deepEqual([...okPerTxn(attempts).keys()], order, 'in call order');
  // The waits really taken after a 429 that named one.
  for (const r of rules[0]!.records) {
    const retry = attempts.find((x) => x.n > r.n && txnOf(x) === txnOf(r))!;
    assert.ok(retry.start - r.start >= 30 - CLOCK_MS, `retried ${retry.start - r.start} ms after a 429 asking for 30 ms`);
  }
  const room = await inRoom(bot, peer, roomId);
  assert.deepEqual(room.map((r) => r.body), ['n0', 'n1', 'n2', 'n3', 'n4', 'n5'], 'each once in the room, in call order');
  assert.deepEqual(room.map((r) => r.eventId), ids);
  assert.deepEqual(failed, []);
});

test('pacing: with 20 sends per second and bursts of 3, sends are spaced by the token bucket', async (t) => {
  const bot = await proxiedBot(t, hs, { reply: false, client: { rateLimit: { perSecond: 20, burst: 3 } } });
  await bot.client.run(bot.token);
  const { peer, roomId } = await peerRoomWithBot(hs, bot);
  await Promise.all(Array.from({ length: 9 }, (_, i) => bot.client.sendMessage(roomId, `p${i}`)));
  const at = sends(bot).map((r) => r.start);
  assert.equal(at.length, 9);
  // The first 3 use the burst; the next 6 need at least 6 × 50 ms of refill (the bucket refills a little slower still).
  assert.ok(at.at(-1)! - at[0]! >= 6 * 50 - CLOCK_MS, `9 sends spanned ${at.at(-1)! - at[0]!} ms`);
  assert.equal((await inRoom(bot, peer, roomId)).length, 9);
});

test('pacing and a 429: the retry goes out when retry_after_ms says, without waiting for another token; the next send waits a full refill after it', async (t) => {
  // One token every 4 s (4.2 s with the bucket's margin), none spare: a retry that took a token would wait ~4 s.
  const bot = await proxiedBot(t, hs, { reply: false, client: { rateLimit: { perSecond: 0.25, burst: 1 } } });
  await bot.client.run(bot.token);
  const { peer, roomId } = await peerRoomWithBot(hs, bot);
  bot.proxy.inject({ method: 'PUT', path: '/send/', fault: { kind: 'rateLimit', retryAfterMs: 100 }, times: 1 });
  await Promise.all([bot.client.sendMessage(roomId, 'first'), bot.client.sendMessage(roomId, 'second')]);
  const [refused, retry, next] = sends(bot);
  assert.deepEqual([refused?.status, retry?.status, next?.status], [429, 200, 200]);
  assert.equal(txnOf(retry!), txnOf(refused!));
  assert.ok(retry!.start - refused!.start >= 100 - CLOCK_MS, `the retry came ${retry!.start - refused!.start} ms after the 429, before its 100 ms`);
  // Generous: a retry that waited for a token would come 4 s later.
  assert.ok(retry!.start - refused!.start < 3_000, `the retry came ${retry!.start - refused!.start} ms after the 429 (retry_after_ms 100): it waited for a token`);
  assert.ok(next!.start - retry!.start >= 4_000 - CLOCK_MS, `the next send came ${next!.start - retry!.start} ms after the retry, inside the server's window`);
  assert.deepEqual((await inRoom(bot, peer, roomId)).map((r) => r.body), ['first', 'second']);
});

test('sends left pending by a stop go out with the next run under the same transaction IDs: Synapse, which had taken them, keeps one of each', async (t) => {
  const bot = await proxiedBot(t, hs, { reply: false, client: { stopTimeoutMs: 1000 } });
  await bot.client.run(bot.token);
  const { peer, roomId: a } = await peerRoomWithBot(hs, bot);
  const b = await peer.createRoom({ invite: [bot.user.userId] });
  await peer.waitForJoined(b, bot.user.userId, WAIT_MS);
  // Synapse takes every send; the bot only ever sees 503s.
  const down = bot.proxy.inject({ method: 'PUT', path: '/send/', fault: { kind: 'status', status: 503, forward: true }, label: '503' });
  const settled = (p: Promise<string>) => p.then(() => null, (e: HalcyonError) => e);
  const pending = [settled(bot.client.sendMessage(a, 'later 1')), settled(bot.client.sendMessage(a, 'later 2')), settled(bot.client.sendMessage(b, 'later 3'))];
  // One room's sends go one at a time: 'later 1' and 'later 3' are tried, 'later 2' waits behind 'later 1'.
  await waitUntil(() => new Set(down.records.filter((r) => r.upstreamStatus === 200).map(txnOf)).size === 2, WAIT_MS, 'Synapse to take the first send of each room');
  await bot.client.stop();
  for (const p of pending) assert.equal((await p)?.code, 'HALCYON_STOPPED');
  const triedFirst = new Set(down.records.map(txnOf));
  down.remove();

  const second = newClient(t, bot.dataDir, { encryption: false });
  await second.run(bot.token);
  await waitUntil(() => second.outboxStatus().pending === 0, WAIT_MS, 'the outbox to empty');
  const later = sends(bot).filter((r) => r.fault === null);
  assert.deepEqual([...okPerTxn(later).values()], [1, 1, 1], 'each of the three answered 200 once by the next run');
  for (const txn of triedFirst) assert.ok(okPerTxn(later).has(txn), `the next run repeated ${txn}`);
  assert.deepEqual((await inRoom(bot, peer, a)).map((r) => r.body), ['later 1', 'later 2'], 'once each, in order');
  assert.deepEqual((await inRoom(bot, peer, b)).map((r) => r.body), ['later 3']);
});
