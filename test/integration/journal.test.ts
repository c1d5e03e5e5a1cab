/**
 * The event journal through the whole client, on the real Synapse with a peer streaming messages: handlers that
 * fall behind do not stop polling, memory holds at most `maxQueuedEvents` unhandled events while the rest waits on
 * disk (the client's own `health()` and `backpressure` events say so), polling stops once `maxJournalEvents` wait
 * unhandled, and a restart delivers what was left, in order, flagging what an earlier run had already handed to
 * handlers.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { BackpressureInfo, Client, Message } from '../../src/index.ts';
import type { RequestRecord } from '../harness/fault-proxy.ts';
import { testHomeserver, type Homeserver } from '../harness/synapse.ts';
import { startStream } from '../helpers/fault-stream.ts';
import { peerRoomWithBot, proxiedBot } from '../helpers/proxied-bot.ts';
import { defer, deferred, newBot, newClient, newPeer, roomWithBot, WAIT_MS, waitUntil } from './util.ts';

let hs: Homeserver;
before(async () => {
  hs = await testHomeserver();
});
after(async () => {
  await hs?.stop();
});

const isSync = (r: RequestRecord) => r.method === 'GET' && r.path.endsWith('/sync');

/** `health()` of the client, also tracking the most queued events any call saw. */
function healthWatch(client: Client) {
  const w = {
    maxQueued: 0,
    async health() {
      const h = await client.health();
      w.maxQueued = Math.max(w.maxQueued, h.queuedEvents);
      return h;
    },
  };
  return w;
}

test('a stuck handler while a peer streams 80 messages: polling goes on, memory holds maxQueuedEvents, the rest waits in the journal; then all arrive in order', async (t) => {
  const maxQueuedEvents = 20;
  const count = 80;
  const bot = await newBot(t, hs, { encryption: false, maxQueuedEvents });
  const gate = deferred();
  defer(t, () => gate.resolve());
  const seen: number[] = [];
  const pressure: BackpressureInfo[] = [];
  bot.client.on('backpressure', (b) => void pressure.push(b));
  bot.client.on('message', async (m) => {
    seen.push(Number(m.body.slice(1)));
    await gate.promise;
  });
  await bot.client.run(bot.token);
  const peer = await newPeer(hs);
  const roomId = await roomWithBot(peer, bot.user.userId);
  const watch = healthWatch(bot.client);

  const sent = await startStream({ baseUrl: hs.baseUrl, accessToken: peer.user.accessToken, roomId, count, perSecond: 200, prefix: 'n' }).done;
  // Every message is fetched and journaled although the first handler never returns.
  const h = await waitUntil(async () => {
    const x = await watch.health();
    return x.backlogEvents === count ? x : undefined;
  }, WAIT_MS, `all ${count} messages journaled`);
  assert.equal(h.backpressure, true);
  assert.ok(h.queuedEvents <= maxQueuedEvents, `at most maxQueuedEvents in memory (${h.queuedEvents})`);
  assert.deepEqual(seen, [0], 'one room: the first handler holds the rest');
  assert.equal(pressure[0]?.active, true, 'a backpressure event said handlers fell behind');

  gate.resolve();
  await waitUntil(() => seen.length === count, WAIT_MS, `all ${count} messages handled (got ${seen.length})`);
  assert.deepEqual(seen, sent.map((s) => s.index), 'in order, each once');
  await waitUntil(() => pressure.at(-1)?.active === false, WAIT_MS, 'backpressure to end');
  await waitUntil(async () => (await watch.health()).backlogEvents === 0, WAIT_MS, 'the journal to empty');
  assert.ok(watch.maxQueued <= maxQueuedEvents, `queued events stayed under the bound (max seen ${watch.maxQueued})`);
  for (const p of pressure) assert.ok(p.queuedEvents <= maxQueuedEvents, `a backpressure event reported ${p.queuedEvents} queued events`);
  assert.deepEqual(bot.errors, []);
});

test('a stop with a backlog: the next run delivers the rest in order; what the first run had handed to handlers is flagged redelivered', async (t) => {
  const count = 60;
  const bot = await proxiedBot(t, hs, { reply: false, client: { maxQueuedEvents: 15, stopTimeoutMs: 200 } });
  const gate = deferred();
  defer(t, () => gate.resolve());
  bot.client.on('message', async (m) => {
    if (Number(m.body.slice(1)) >= 12) await gate.promise; // stuck from message 12 on
  });
  await bot.client.run(bot.token);
  const { peer, roomId } = await peerRoomWithBot(hs, bot);
  await startStream({ baseUrl: hs.baseUrl, accessToken: peer.user.accessToken, roomId, count, perSecond: 200, prefix: 'n' }).done;
  await waitUntil(async () => (await bot.client.health()).backlogEvents === count - 12, WAIT_MS, 'the stream journaled with 12 messages handled');
  await bot.client.stop(); // message 12 is abandoned mid-handler
  gate.resolve();

  const second = newClient(t, bot.dataDir, { encryption: false });
  const got: Message[] = [];
  second.on('message', (m) => void got.push(m));
  await second.run(bot.token);
  await waitUntil(() => got.length >= count - 12, WAIT_MS, `the ${count - 12} unhandled messages (got ${got.length})`);
  assert.deepEqual(got.map((m) => Number(m.body.slice(1))), Array.from({ length: count - 12 }, (_, i) => 12 + i), 'exactly the unhandled ones, in order');
  // Message 12 was running when the first run stopped; its batch had been handed over: redelivered.
  assert.equal(got[0]!.redelivered, true);
  // The last batches never left the journal in the first run (15 in memory at most): first deliveries.
  assert.equal(got.at(-1)!.redelivered, false);
  assert.equal(bot.proxy.records.filter((r) => isSync(r) && r.syncSince === false).length, 1, 'the second run resumed from the saved token (no initial sync)');
});

test('maxJournalEvents: once that many events wait unhandled, no poll goes out until handlers catch up; then the rest arrives in order', async (t) => {
  const maxJournalEvents = 10;
  const bot = await proxiedBot(t, hs, { reply: false, client: { maxJournalEvents } });
  const gate = deferred();
  defer(t, () => gate.resolve());
  const seen: number[] = [];
  bot.client.on('message', async (m) => {
    seen.push(Number(m.body.slice(1)));
    await gate.promise;
  });
  await bot.client.run(bot.token);
  const { peer, roomId } = await peerRoomWithBot(hs, bot);

  for (let i = 0; i < maxJournalEvents; i++) await peer.sendText(roomId, `j${i}`);
  await waitUntil(async () => (await bot.client.health()).backlogEvents >= maxJournalEvents, WAIT_MS, 'the journal to fill');
  const fullAt = Date.now();
  // More messages while the journal is full: a bot that kept polling would fetch them (each wakes a long-poll).
  for (let i = maxJournalEvents; i < 2 * maxJournalEvents; i++) await peer.sendText(roomId, `j${i}`);
  assert.equal((await bot.client.health()).backlogEvents, maxJournalEvents, 'nothing more was fetched');
  const releasedAt = Date.now();
  gate.resolve();
  await waitUntil(() => seen.length === 2 * maxJournalEvents, WAIT_MS, `all ${2 * maxJournalEvents} messages handled (got ${seen.length})`);
  assert.deepEqual(seen, Array.from({ length: 2 * maxJournalEvents }, (_, i) => i), 'in order, each once');
  const whileFull = bot.proxy.records.filter((r) => isSync(r) && r.start > fullAt && r.start < releasedAt);
  assert.deepEqual(whileFull.map((r) => r.n), [], 'no /sync request while the journal was full');
  assert.ok(bot.proxy.records.some((r) => isSync(r) && r.start >= releasedAt), 'polling resumed after the handlers caught up');
});
