/**
 * Public API that no other test exercised, each against the real Synapse and read back from the peer's side:
 * `off` and `once`, `waitForRoom` (and its timeout), `invite.decline(reason)`, the room handle's `sendEmote` and
 * `leave`, `sendEvent` with a custom type, and `sendMessage(..., { replyTo })`.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { HalcyonError, Invite, Message, RoomSummary } from '../../src/index.ts';
import type { Peer } from '../harness/peer.ts';
import { testHomeserver, type Homeserver } from '../harness/synapse.ts';
import { newBot, newPeer, roomWithBot, WAIT_MS, waitUntil } from './util.ts';

let hs: Homeserver;
before(async () => {
  hs = await testHomeserver();
});
after(async () => {
  await hs?.stop();
});

const enc = encodeURIComponent;
/** An event as the server holds it, read by the peer. */
const eventOf = (peer: Peer, roomId: string, eventId: string) => peer.request('GET', `/rooms/${enc(roomId)}/event/${enc(eventId)}`);
/** A member event's content as the server holds it now. */
const memberOf = (peer: Peer, roomId: string, userId: string) => peer.request('GET', `/rooms/${enc(roomId)}/state/m.room.member/${enc(userId)}`);

test('off removes a listener and once runs one for the first event only; the others keep getting every event', async (t) => {
  const bot = await newBot(t, hs, { encryption: false });
  const always: string[] = [];
  const removed: string[] = [];
  const onlyFirst: string[] = [];
  const keep = (m: Message) => void always.push(m.body);
  const drop = (m: Message) => void removed.push(m.body);
  bot.client.on('message', keep).on('message', drop).once('message', (m) => void onlyFirst.push(m.body));
  await bot.client.run(bot.token);
  const peer = await newPeer(hs);
  const roomId = await roomWithBot(peer, bot.user.userId);
  await peer.sendText(roomId, 'one');
  await waitUntil(() => always.length === 1, WAIT_MS, "'one' handled");
  assert.equal(bot.client.off('message', drop), bot.client, 'off chains');
  await peer.sendText(roomId, 'two');
  await peer.sendText(roomId, 'three');
  await waitUntil(() => always.length === 3, WAIT_MS, "'two' and 'three' handled");
  assert.deepEqual(always, ['one', 'two', 'three']);
  assert.deepEqual(removed, ['one'], 'nothing after off');
  assert.deepEqual(onlyFirst, ['one'], 'once: the first event only');
  bot.client.off('message', drop); // removing one that is gone already is harmless
  assert.deepEqual(bot.errors, []);
});

test('waitForRoom resolves with the room handle once the sync shows the membership asked for, and rejects with HALCYON_TIMEOUT after timeoutMs', async (t) => {
  const bot = await newBot(t, hs, { encryption: false, autoJoin: false });
  await bot.client.run(bot.token);
  const created = await bot.client.createRoom({ name: 'made by the bot' });
  const room = await bot.client.waitForRoom(created);
  assert.equal(room.id, created);
  assert.equal((room.toJSON() as RoomSummary).membership, 'join', 'the handle has the summary the sync brought');

  const peer = await newPeer(hs);
  const invitedTo = await peer.createRoom({ invite: [bot.user.userId], name: 'an invitation' });
  const invited = await bot.client.waitForRoom(invitedTo, { membership: 'invite' });
  assert.deepEqual([invited.id, (invited.toJSON() as RoomSummary).membership], [invitedTo, 'invite']);

  const nowhere = `!nowhere${Date.now()}:${hs.serverName}`;
  const err = await bot.client.waitForRoom(nowhere, { timeoutMs: 300 }).then(
    () => assert.fail('waitForRoom resolved for a room the bot is not in'),
    (e: HalcyonError) => e,
  );
  assert.equal(err.code, 'HALCYON_TIMEOUT');
  assert.equal(err.roomId, nowhere);
  assert.match(err.message, /did not show membership join within 300 ms/);
  // The invitation is not joined by waiting for it.
  await assert.rejects(bot.client.waitForRoom(invitedTo, { timeoutMs: 300 }), { code: 'HALCYON_TIMEOUT' });
});

test('invite.decline(reason) leaves the room with the reason; the inviter sees it', async (t) => {
  const bot = await newBot(t, hs, { encryption: false, autoJoin: false });
  bot.client.on('invite', (invite: Invite) => invite.decline('not today'));
  await bot.client.run(bot.token);
  const peer = await newPeer(hs);
  const roomId = await peer.createRoom({ invite: [bot.user.userId] });
  const member = await waitUntil(async () => {
    const m = await memberOf(peer, roomId, bot.user.userId);
    return m.membership === 'leave' ? m : undefined;
  }, WAIT_MS, 'the bot to decline');
  assert.equal(member.reason, 'not today');
  assert.deepEqual(bot.errors, []);
});

test('the room handle: sendEmote and leave reach the peer; the bot then sees itself gone', async (t) => {
  const bot = await newBot(t, hs, { encryption: false });
  await bot.client.run(bot.token);
  const peer = await newPeer(hs);
  const roomId = await roomWithBot(peer, bot.user.userId);
  const room = await bot.client.waitForRoom(roomId);
  const emoteId = await room.sendEmote('waves');
  const emote = await eventOf(peer, roomId, emoteId);
  assert.deepEqual([emote.sender, emote.content.msgtype, emote.content.body], [bot.user.userId, 'm.emote', 'waves']);

  await room.leave();
  assert.equal((await memberOf(peer, roomId, bot.user.userId)).membership, 'leave');
  await bot.client.waitForRoom(roomId, { membership: 'leave' });
  assert.ok(!(await bot.client.listRooms()).some((r) => r.roomId === roomId), 'no longer listed as joined');
});

test('sendEvent with a custom type, and sendMessage with replyTo: the peer reads them as sent', async (t) => {
  const bot = await newBot(t, hs, { encryption: false });
  await bot.client.run(bot.token);
  const peer = await newPeer(hs);
  const roomId = await roomWithBot(peer, bot.user.userId);
  const customId = await bot.client.sendEvent(roomId, 'com.example.cookie', { flavour: 'chocolate', count: 3 });
  const custom = await eventOf(peer, roomId, customId);
  assert.deepEqual([custom.type, custom.sender, custom.content], ['com.example.cookie', bot.user.userId, { flavour: 'chocolate', count: 3 }]);

  const asked = await peer.sendText(roomId, 'a question');
  const answerId = await bot.client.sendMessage(roomId, 'an answer', { replyTo: asked });
  const answer = await eventOf(peer, roomId, answerId);
  // A rich reply without fallback text (the current spec): the body is the answer alone.
  assert.deepEqual(answer.content, { msgtype: 'm.text', body: 'an answer', 'm.relates_to': { 'm.in_reply_to': { event_id: asked } } });
});
