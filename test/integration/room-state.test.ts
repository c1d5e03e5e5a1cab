/**
 * Room state against a real Synapse: what an invite and a knock show before the bot is in the room (stripped
 * state, unverified: display fields only, no permissions), the invite's event ID, knocks in the sync batch.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { Invite, RoomDetails } from '../../src/index.ts';
import { processSync } from '../../src/sync/process.ts';
import { Peer } from '../harness/peer.ts';
import { testHomeserver, type Homeserver } from '../harness/synapse.ts';
import { type Bot, newBot, newPeer, roomWithBot, WAIT_MS, waitUntil } from './util.ts';

let hs: Homeserver;
before(async () => {
  hs = await testHomeserver();
});
after(async () => {
  await hs?.stop();
});

const enc = encodeURIComponent;
const ACTIONS = ['send', 'state', 'invite', 'kick', 'ban', 'unban', 'redact', 'notify'] as const;

/** Waits until the bot's cache answers `getRoom(roomId)` with details that satisfy `pred`. */
function cachedRoom(bot: Bot, roomId: string, pred: (r: RoomDetails) => boolean, what: string): Promise<RoomDetails> {
  return waitUntil(
    async () => {
      const r = await bot.client.getRoom(roomId);
      return r && pred(r) ? r : undefined;
    },
    WAIT_MS,
    what,
  );
}

/** Asserts that `room` shows only the display fields of a pending (invited or knocked) room and allows nothing. */
function assertPending(room: RoomDetails, users: string[]): void {
  assert.deepEqual(
    { creator: room.creator, creators: room.creators, roomVersion: room.roomVersion, joinRule: room.joinRule, historyVisibility: room.historyVisibility, powerLevels: room.powerLevels, members: room.members },
    { creator: null, creators: [], roomVersion: null, joinRule: null, historyVisibility: null, powerLevels: null, members: [] },
    'nothing but display fields from stripped state',
  );
  for (const u of users) for (const kind of ACTIONS) assert.equal(room.can(u, kind), false, `can(${u}, ${kind}) while ${room.membership}`);
}

test('an invite: getRoom shows only the stripped display fields and allows nothing until the bot joins; Synapse sends no invite event ID', async (t) => {
  const bot = await newBot(t, hs, { autoJoin: false });
  const peer = await newPeer(hs);
  const invites: Invite[] = [];
  bot.client.on('invite', (inv) => void invites.push(inv));
  await bot.client.run(bot.token);
  const B = bot.user.userId;

  const roomId = await peer.createRoom({ name: 'Guild hall', topic: 'Members only', invite: [B] });
  const inviteEvent = await peer.waitFor((ev, rid) => rid === roomId && ev.type === 'm.room.member' && ev.state_key === B && ev.content.membership === 'invite');
  const invite = await waitUntil(() => invites.find((i) => i.roomId === roomId), WAIT_MS, 'the invite to reach the handler');
  assert.match(inviteEvent.event_id, /^\$/);
  // Synapse 1.163 appends the invite event to invite_state stripped (MSC4319: type, state_key, sender, content),
  // so there is no event ID to report; a server that appends the full event gets it through (unit-tested).
  assert.equal(invite.eventId, null, "Synapse's invite_state carries no event ID");
  assert.equal(invite.inviter, peer.userId);

  const pending = await cachedRoom(bot, roomId, (r) => r.membership === 'invite', 'the invited room in the cache');
  assert.equal(pending.name, 'Guild hall');
  assert.equal(pending.topic, 'Members only');
  assertPending(pending, [peer.userId, B]);

  await invite.accept();
  const joined = await cachedRoom(bot, roomId, (r) => r.membership === 'join' && r.powerLevels !== null, 'the joined room with its state in the cache');
  assert.equal(joined.name, 'Guild hall');
  assert.deepEqual(joined.creators, [peer.userId]);
  assert.equal(joined.can(peer.userId, 'state'), true, 'the real state answers once joined');
  assert.ok(joined.member(peer.userId), 'members come from the real state');
  assert.deepEqual(bot.errors, []);
});

test('a knock: the batch carries it with its stripped state; getRoom shows the display fields as for an invite', async (t) => {
  const bot = await newBot(t, hs, { autoJoin: false });
  const peer = await newPeer(hs);
  await bot.client.run(bot.token);
  const B = bot.user.userId;

  const { room_id: roomId } = await peer.request('POST', '/createRoom', {
    preset: 'private_chat',
    name: 'Knock here',
    initial_state: [{ type: 'm.room.join_rules', state_key: '', content: { join_rule: 'knock' } }],
  });
  // The bot's user knocks with a plain request (another device of the same user), then reads its own /sync.
  const self = new Peer(hs.baseUrl, bot.user);
  await self.request('POST', `/knock/${enc(roomId)}`, { reason: 'let me in' });

  const knocked = await cachedRoom(bot, roomId, (r) => r.membership === 'knock', 'the knocked room in the cache');
  assert.equal(knocked.name, 'Knock here');
  assertPending(knocked, [peer.userId, B]);

  const res = await fetch(new URL('/_matrix/client/v3/sync?timeout=0', hs.baseUrl), { headers: { authorization: `Bearer ${bot.user.accessToken}` } });
  assert.equal(res.status, 200);
  const p = processSync(new Uint8Array(await res.arrayBuffer()), { wantedTypes: null, ownUserId: B });
  const knock = p.knocks.find((k) => k.roomId === roomId);
  assert.ok(knock, `the knock is in the batch (knocks: ${JSON.stringify(p.knocks.map((k) => k.roomId))})`);
  assert.equal(knock.state.find((e) => e.type === 'm.room.name')?.content.name, 'Knock here');
  assert.equal(knock.state.find((e) => e.type === 'm.room.member' && e.state_key === B)?.content.membership, 'knock', "Synapse appends the bot's knock event");
  assert.deepEqual(p.errors, []);
  assert.deepEqual(bot.errors, []);
});

test("redacted state events: getRoom shows the redacted topic, name and power levels, as the server's state does", async (t) => {
  const bot = await newBot(t, hs);
  const peer = await newPeer(hs);
  await bot.client.run(bot.token);
  const roomId = await roomWithBot(peer, bot.user.userId, { name: 'Before', topic: 'Original topic' });
  const server = (type: string) => peer.request('GET', `/rooms/${enc(roomId)}/state/${type}/`);
  const pl = await server('m.room.power_levels');
  const plId = await peer.sendState(roomId, 'm.room.power_levels', '', { ...pl, invite: 7, notifications: { room: 11 } });
  const topicId = await peer.sendState(roomId, 'm.room.topic', '', { topic: 'Secret plans' });
  await cachedRoom(bot, roomId, (r) => r.topic === 'Secret plans' && (r.powerLevels as { invite?: number } | null)?.invite === 7, 'the new topic and power levels in the cache');

  const nameId = (await peer.request('GET', `/rooms/${enc(roomId)}/messages`, undefined, { dir: 'b', limit: '50' })).chunk.find((e: { type: string }) => e.type === 'm.room.name').event_id;
  for (const id of [topicId, plId, nameId]) await peer.redact(roomId, id, 'oops');
  const redacted = await cachedRoom(bot, roomId, (r) => r.topic === null && r.name === null && (r.powerLevels as { notifications?: unknown } | null)?.notifications === undefined, 'the redactions applied in the cache');
  const serverPl = await server('m.room.power_levels');
  assert.deepEqual(redacted.powerLevels, serverPl, "the cached power levels are the server's redacted ones");
  assert.equal(serverPl.invite, 7, 'v11 and later keep invite');
  assert.equal(serverPl.notifications, undefined, 'notifications are not kept');
  assert.deepEqual(await server('m.room.topic'), {}, "the server's topic is redacted too");
  await waitUntil(() => bot.client.room(roomId).name === null && bot.client.room(roomId).topic === null, WAIT_MS, 'the room handle to show no name or topic');
  assert.deepEqual(bot.errors, []);
});

test("a v11 room whose create event names someone else in content.creator: the sender is the creator, as Synapse's auth rules say", async (t) => {
  const bot = await newBot(t, hs);
  const peer = await newPeer(hs);
  const mallory = await newPeer(hs);
  await bot.client.run(bot.token);
  // Synapse keeps a creation_content creator as given in v11+ (it only adds its own before v11).
  const { room_id: roomId } = await peer.request('POST', '/createRoom', {
    room_version: '11',
    preset: 'public_chat',
    creation_content: { creator: mallory.userId },
    power_level_content_override: { users: { [peer.userId]: 100 }, users_default: 0, state_default: 50 },
    invite: [bot.user.userId],
  });
  assert.equal((await peer.request('GET', `/rooms/${enc(roomId)}/state/m.room.create/`)).creator, mallory.userId);
  await peer.waitForJoined(roomId, bot.user.userId, WAIT_MS);
  await mallory.join(roomId);
  const room = await cachedRoom(bot, roomId, (r) => r.membership === 'join' && r.roomVersion === '11' && r.powerLevels !== null, 'the v11 room in the cache');
  assert.equal(room.creator, peer.userId);
  assert.deepEqual(room.creators, [peer.userId]);
  assert.equal(room.can(mallory.userId, { kind: 'state', eventType: 'm.room.name' }), false);
  await assert.rejects(mallory.sendState(roomId, 'm.room.name', '', { name: 'Mine' }), (e: { errcode?: string }) => e.errcode === 'M_FORBIDDEN', 'Synapse: not a creator, level 0');
  assert.deepEqual(bot.errors, []);
});
