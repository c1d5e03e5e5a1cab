/**
 * Invites against the real Synapse: the `autoJoin` policies (allow-lists and a function), and the checks on the
 * option itself.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { Client, type HalcyonError, type Invite } from '../../src/index.ts';
import { testHomeserver, type Homeserver } from '../harness/synapse.ts';
import type { Peer } from '../harness/peer.ts';
import { newBot, newPeer, WAIT_MS, waitUntil } from './util.ts';

let hs: Homeserver;
before(async () => {
  hs = await testHomeserver();
});
after(async () => {
  await hs?.stop();
});

/** The bot's membership in the room as the server has it now. */
async function membership(peer: Peer, roomId: string, userId: string): Promise<string> {
  const c = await peer.request('GET', `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/state/m.room.member/${encodeURIComponent(userId)}`);
  return c.membership as string;
}

test('autoJoin { users }: invites from listed users are joined, others stay pending', async (t) => {
  const friend = await newPeer(hs);
  const stranger = await newPeer(hs);
  const bot = await newBot(t, hs, { encryption: false, autoJoin: { users: [friend.userId] } });
  const seen: Invite[] = [];
  bot.client.on('invite', (i) => void seen.push(i));
  await bot.client.run(bot.token);
  const spam = await stranger.createRoom({ invite: [bot.user.userId], name: 'spam' });
  const good = await friend.createRoom({ invite: [bot.user.userId] });
  await friend.waitForJoined(good, bot.user.userId, WAIT_MS);
  // The stranger's invite was seen and its task (the policy's answer included) has settled.
  await waitUntil(async () => seen.some((i) => i.roomId === spam) && (await bot.client.health()).queuedEvents === 0, WAIT_MS, 'the spam invite handled');
  assert.equal(await membership(stranger, spam, bot.user.userId), 'invite', 'not joined');
  assert.deepEqual(bot.errors, []);
});

test('autoJoin { servers } and a function policy; a policy that throws counts as no and is reported', async (t) => {
  const peer = await newPeer(hs);
  const byServer = await newBot(t, hs, { encryption: false, autoJoin: { servers: ['localhost'] } });
  await byServer.client.run(byServer.token);
  const r1 = await peer.createRoom({ invite: [byServer.user.userId] });
  await peer.waitForJoined(r1, byServer.user.userId, WAIT_MS);

  const asked: string[] = [];
  const byFn = await newBot(t, hs, {
    encryption: false,
    autoJoin: async (invite) => {
      asked.push(invite.name ?? '');
      if (invite.name === 'boom') throw new Error('policy failed');
      return invite.name === 'yes';
    },
  });
  await byFn.client.run(byFn.token);
  const no = await peer.createRoom({ invite: [byFn.user.userId], name: 'no' });
  const boom = await peer.createRoom({ invite: [byFn.user.userId], name: 'boom' });
  const yes = await peer.createRoom({ invite: [byFn.user.userId], name: 'yes' });
  await peer.waitForJoined(yes, byFn.user.userId, WAIT_MS);
  await waitUntil(async () => asked.length === 3 && (await byFn.client.health()).queuedEvents === 0, WAIT_MS, 'the three invites asked');
  assert.equal(await membership(peer, no, byFn.user.userId), 'invite');
  assert.equal(await membership(peer, boom, byFn.user.userId), 'invite');
  assert.deepEqual(byFn.errors.map((e) => e.code), ['HALCYON_HANDLER_FAILED']);
  assert.match(byFn.errors[0]!.message, /policy failed/);
});

test('autoJoin of the wrong shape is refused when the client is made', () => {
  for (const bad of [{ users: 'me' }, { servers: [1] }, 'yes', null]) {
    assert.throws(
      () => new Client({ dataDir: '/nonexistent', autoJoin: bad as never }),
      (e: HalcyonError) => e.code === 'HALCYON_INVALID_ARGUMENT',
    );
  }
});

test('a second invite to the same room runs its handler afresh: what it sends goes out again', async (t) => {
  const bot = await newBot(t, hs, { encryption: false, autoJoin: false });
  const peer = await newPeer(hs);
  await bot.client.run(bot.token);
  const control = await bot.client.createRoom({ invite: [peer.userId] });
  await peer.join(control);
  const invites: string[] = [];
  bot.client.on('invite', async (invite) => {
    invites.push(invite.roomId);
    await bot.client.sendMessage(control, `invited to ${invite.roomId}`);
    await invite.decline();
  });
  const roomId = await peer.createRoom({ invite: [bot.user.userId] });
  const first = await peer.waitFor((e, r) => r === control && e.content?.body === `invited to ${roomId}`, WAIT_MS);
  await waitUntil(async () => (await membership(peer, roomId, bot.user.userId)) === 'leave', WAIT_MS, 'the bot to decline');
  await peer.invite(roomId, bot.user.userId);
  const second = await peer.waitFor((e, r) => r === control && e.content?.body === `invited to ${roomId}`, WAIT_MS);
  assert.notEqual(second.event_id, first.event_id, 'a new message, not the first one answered from the outbox');
  assert.deepEqual(invites, [roomId, roomId]);
});

test('knockRoom, and the knock event with the room\'s stripped state', async (t) => {
  const bot = await newBot(t, hs, { encryption: false });
  const knocks: Array<{ roomId: string; state: Array<{ type: string; content: Record<string, unknown> }> }> = [];
  bot.client.on('knock', (k) => void knocks.push(k));
  await bot.client.run(bot.token);
  const peer = await newPeer(hs);
  const { room_id: roomId } = await peer.request('POST', '/createRoom', {
    name: 'knock here',
    initial_state: [{ type: 'm.room.join_rules', state_key: '', content: { join_rule: 'knock' } }],
  });
  assert.equal(await bot.client.knockRoom(roomId, { reason: 'let me in' }), roomId);
  const k = await waitUntil(() => knocks.find((x) => x.roomId === roomId), WAIT_MS, 'the knock event');
  assert.ok(k.state.some((e) => e.type === 'm.room.name' && e.content.name === 'knock here'), `stripped state: ${JSON.stringify(k.state)}`);
  assert.equal(await membership(peer, roomId, bot.user.userId), 'knock');
});
