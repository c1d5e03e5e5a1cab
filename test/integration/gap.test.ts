/**
 * Gappy timelines against a real Synapse: while the bot is stopped, a peer sends more messages than one sync
 * returns per room (the filter's timeline limit is 50), so the resumed sync's timeline is `limited`. The bot
 * fetches the missing events with /messages and delivers every message, in order; past `maxGapEvents` the gap is
 * reported with HALCYON_TIMELINE_GAP and the newest events are still delivered.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { HalcyonError, Message } from '../../src/index.ts';
import { testHomeserver, type Homeserver } from '../harness/synapse.ts';
import { newBot, newClient, newPeer, roomWithBot, WAIT_MS, waitUntil } from './util.ts';

let hs: Homeserver;
before(async () => {
  hs = await testHomeserver();
});
after(async () => {
  await hs?.stop();
});

async function sendMany(peer: Awaited<ReturnType<typeof newPeer>>, roomId: string, n: number, tag: string): Promise<string[]> {
  const ids: string[] = [];
  for (let i = 0; i < n; i++) ids.push(await peer.sendText(roomId, `${tag} ${i}`));
  return ids;
}

test('120 messages while the bot was stopped (timeline limit 50): the gap is fetched and all 120 arrive in order', async (t) => {
  const bot = await newBot(t, hs, { encryption: false });
  await bot.client.run(bot.token);
  const peer = await newPeer(hs);
  const roomId = await roomWithBot(peer, bot.user.userId);
  await bot.client.stop();

  const ids = await sendMany(peer, roomId, 120, 'offline');
  const second = newClient(t, bot.dataDir, { encryption: false });
  const got: Message[] = [];
  const errors: HalcyonError[] = [];
  second.on('message', (m) => void got.push(m));
  second.on('error', (e) => void errors.push(e));
  await second.run(bot.token);
  await waitUntil(() => got.length >= 120, WAIT_MS, '120 messages').catch(async (e: Error) => {
    throw new Error(`${e.message} (got ${got.length}); health ${JSON.stringify(await second.health())}`);
  });
  assert.deepEqual(got.map((m) => m.eventId), ids, 'every message, once, in order');
  assert.deepEqual(errors, []);
});

test('a gap larger than maxGapEvents: HALCYON_TIMELINE_GAP is reported; the newest events are delivered in order', async (t) => {
  const bot = await newBot(t, hs, { encryption: false });
  await bot.client.run(bot.token);
  const peer = await newPeer(hs);
  const roomId = await roomWithBot(peer, bot.user.userId);
  await bot.client.stop();

  const ids = await sendMany(peer, roomId, 120, 'offline');
  const second = newClient(t, bot.dataDir, { encryption: false, maxGapEvents: 30 });
  const got: Message[] = [];
  const errors: HalcyonError[] = [];
  second.on('message', (m) => void got.push(m));
  second.on('error', (e) => void errors.push(e));
  await second.run(bot.token);
  await waitUntil(() => errors.length > 0 && got.length >= 80, WAIT_MS, '80 messages and an error').catch(async (e: Error) => {
    throw new Error(`${e.message} (got ${got.length}, errors ${errors.length}); health ${JSON.stringify(await second.health())}`);
  });
  assert.deepEqual(got.map((m) => m.eventId), ids.slice(40), 'the newest 80: 30 fetched + 50 in the sync');
  assert.equal(errors[0]!.code, 'HALCYON_TIMELINE_GAP');
  assert.equal(errors[0]!.roomId, roomId);
});

test('joined but stopped before its sync saw the join: the gap back to the join is fetched, history before the join is not', async (t) => {
  const bot = await newBot(t, hs, { encryption: false, autoJoin: false });
  const peer = await newPeer(hs);
  const early = await peer.createRoom({ invite: [bot.user.userId] });
  const history = await sendMany(peer, early, 5, 'before the join');
  const invited = new Promise<void>((resolve) => bot.client.on('invite', () => resolve()));
  await bot.client.run(bot.token);
  await invited;
  // Join, then stop at once: this run's sync never shows the join.
  await bot.client.joinRoom(early);
  await bot.client.stop();
  await peer.waitForJoined(early, bot.user.userId, WAIT_MS);

  const ids = await sendMany(peer, early, 120, 'after the join');
  const second = newClient(t, bot.dataDir, { encryption: false });
  const got: Message[] = [];
  second.on('message', (m) => void got.push(m));
  await second.run(bot.token);
  await waitUntil(() => got.length >= 120, WAIT_MS, '120 messages').catch((e: Error) => {
    throw new Error(`${e.message} (got ${got.length})`);
  });
  assert.deepEqual(got.map((m) => m.eventId), ids, 'every message after the join, once, in order');
  assert.ok(!got.some((m) => history.includes(m.eventId)), 'nothing from before the join');
});
