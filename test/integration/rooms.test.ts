/**
 * Rooms against a real Synapse: room info from the cache actor, permissions (`RoomDetails.can`) checked against what
 * Synapse actually allows, room operations (create, DMs, join, leave, forget, invite/kick/ban/unban with reasons,
 * name/topic/avatar, state events, aliases, joined rooms, loadMembers) and the cache after a restart (no per-room
 * requests, checked through a logging proxy in front of Synapse).
 */
import assert from 'node:assert/strict';
import { after, before, test, type TestContext } from 'node:test';
import { Client, type HalcyonError, type MemberEvent, type RoomDetails } from '../../src/index.ts';
import type { Peer } from '../harness/peer.ts';
import { testHomeserver, type Homeserver } from '../harness/synapse.ts';
import { type Bot, loggingProxy, newBot, newClient, newPeer, rand, roomWithBot, tempDataDir, WAIT_MS, waitUntil } from './util.ts';

let hs: Homeserver;
before(async () => {
  hs = await testHomeserver();
});
after(async () => {
  await hs?.stop();
});

const enc = encodeURIComponent;

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

/**
 * Waits until the bot's own room list (main's summaries, which getOrCreateDm reads) shows `roomId` joined. The
 * cache actor's getRoom can show the join a moment earlier: it applies a batch before main receives it.
 */
function joinedInSummaries(bot: Bot, roomId: string): Promise<unknown> {
  return waitUntil(async () => (await bot.client.listRooms()).some((r) => r.roomId === roomId), WAIT_MS, `listRooms to show ${roomId} joined`);
}

/** A peer's membership operation (kick, ban, unban, invite) with an optional reason. */
function peerOp(peer: Peer, op: 'kick' | 'ban' | 'unban' | 'invite', roomId: string, userId: string, reason?: string): Promise<unknown> {
  return peer.request('POST', `/rooms/${enc(roomId)}/${op}`, reason === undefined ? { user_id: userId } : { user_id: userId, reason });
}

/** What Synapse said to an attempt: allowed, forbidden (M_FORBIDDEN), or some other error. */
async function outcome(attempt: () => Promise<unknown>): Promise<string> {
  try {
    await attempt();
    return 'allowed';
  } catch (err) {
    const code = (err as { errcode?: string }).errcode;
    return code === 'M_FORBIDDEN' ? 'forbidden' : `error ${code ?? ''} ${(err as Error).message}`;
  }
}

/**
 * Collects permission checks: for each, what the spec's rules say (`expected`), what `can()` answered, and what
 * Synapse did when the action was attempted. `verify()` asserts all three agree, listing every disagreement.
 */
function permissionTable() {
  const rows: Array<{ what: string; expected: boolean; can: boolean; synapse: string }> = [];
  return {
    async check(what: string, expected: boolean, canAnswer: boolean, attempt: () => Promise<unknown>): Promise<void> {
      rows.push({ what, expected, can: canAnswer, synapse: await outcome(attempt) });
    },
    verify(): void {
      const bad = rows.filter((r) => r.can !== r.expected || r.synapse !== (r.can ? 'allowed' : 'forbidden'));
      const show = (r: (typeof rows)[number]) => `  ${r.what}: spec says ${r.expected}, can() says ${r.can}, Synapse: ${r.synapse}`;
      assert.equal(bad.length, 0, `permission answers disagree in ${bad.length} of ${rows.length} checks:\n${bad.map(show).join('\n')}`);
    },
  };
}

/** The joined members of a room, as the server says. */
async function joinedOnServer(peer: Peer, roomId: string): Promise<string[]> {
  const { joined } = await peer.request('GET', `/rooms/${enc(roomId)}/joined_members`);
  return Object.keys(joined ?? {}).sort();
}

test('getRoom: name, topic, alias, avatar, join rule, history visibility, creator, version, members with names, counts, power levels', async (t) => {
  const bot = await newBot(t, hs);
  const peer = await newPeer(hs);
  const invitee = await newPeer(hs);
  await bot.client.run(bot.token);

  const aliasName = `info-${rand()}`;
  const { room_id: roomId } = await peer.request('POST', '/createRoom', {
    preset: 'public_chat',
    room_alias_name: aliasName,
    name: 'Bakery',
    topic: 'Fresh bread daily',
    invite: [bot.user.userId, invitee.userId],
    initial_state: [{ type: 'm.room.avatar', state_key: '', content: { url: 'mxc://localhost/bakery-avatar' } }],
  });
  await peer.waitForJoined(roomId, bot.user.userId, WAIT_MS);
  await peer.sendState(roomId, 'm.room.member', peer.userId, { membership: 'join', displayname: 'Head Baker' });
  const alias = `#${aliasName}:${hs.serverName}`;

  const info = await cachedRoom(
    bot,
    roomId,
    (r) => r.member(peer.userId)?.displayName === 'Head Baker' && r.membership === 'join',
    "getRoom to show the room with the peer's display name",
  );
  const create = await bot.client.getStateEvent(roomId, 'm.room.create');
  assert.ok(create, 'the room has a create event');
  assert.equal(info.roomId, roomId);
  assert.equal(info.name, 'Bakery');
  assert.equal(info.topic, 'Fresh bread daily');
  assert.equal(info.canonicalAlias, alias);
  assert.equal(info.avatarUrl, 'mxc://localhost/bakery-avatar');
  assert.equal(info.joinRule, 'public');
  assert.equal(info.historyVisibility, 'shared');
  assert.equal(info.encrypted, false);
  assert.equal(info.creator, peer.userId);
  assert.deepEqual(info.creators, [peer.userId]);
  assert.equal(info.roomVersion, create.room_version, "the cache's room version is m.room.create's");
  assert.equal(info.membership, 'join');
  assert.equal(info.joinedMemberCount, 2);
  assert.equal(info.invitedMemberCount, 1);
  assert.deepEqual(info.member(peer.userId), { userId: peer.userId, displayName: 'Head Baker', avatarUrl: null, membership: 'join' });
  assert.equal(info.member(bot.user.userId)?.membership, 'join');
  assert.equal(info.member(invitee.userId)?.membership, 'invite');
  assert.deepEqual(info.membersWith('join').map((m) => m.userId).sort(), [peer.userId, bot.user.userId].sort());
  assert.deepEqual(info.membersWith('invite').map((m) => m.userId), [invitee.userId]);
  const serverPl = await bot.client.getStateEvent(roomId, 'm.room.power_levels');
  assert.deepEqual(info.powerLevels, serverPl, "the cached power levels are the server's");

  // The room handle mirrors main's summary (which can trail the cache actor by a moment); room.info() is getRoom.
  const room = bot.client.room(roomId);
  await waitUntil(() => room.memberCount === 2 && room.name === 'Bakery', WAIT_MS, 'the room handle to catch up');
  assert.equal(room.name, 'Bakery');
  assert.equal(room.topic, 'Fresh bread daily');
  assert.equal(room.canonicalAlias, alias);
  assert.equal(room.avatarUrl, 'mxc://localhost/bakery-avatar');
  assert.equal(room.memberCount, 2);
  assert.equal(room.encrypted, false);
  assert.equal((await room.info())?.name, 'Bakery');

  // Changes by the peer reach the cache with the next sync: a member joins, the name and avatar change.
  await invitee.join(roomId);
  await peer.sendState(roomId, 'm.room.name', '', { name: 'Patisserie' });
  await peer.sendState(roomId, 'm.room.avatar', '', { url: 'mxc://localhost/patisserie' });
  const changed = await cachedRoom(
    bot,
    roomId,
    (r) => r.name === 'Patisserie' && r.avatarUrl === 'mxc://localhost/patisserie' && r.member(invitee.userId)?.membership === 'join',
    'getRoom to show the new name, avatar and the invitee joined',
  );
  assert.equal(changed.joinedMemberCount, 3);
  assert.equal(changed.invitedMemberCount, 0);
  await waitUntil(() => room.name === 'Patisserie' && room.memberCount === 3, WAIT_MS, 'the room handle to show the new name and 3 members');

  // An encrypted room.
  const encryptedRoom = await peer.createRoom({ invite: [bot.user.userId], encrypted: true, name: 'Secret' });
  const enc1 = await cachedRoom(bot, encryptedRoom, (r) => r.membership === 'join' && r.name === 'Secret', 'the encrypted room in the cache');
  assert.equal(enc1.encrypted, true);
  assert.equal(enc1.joinRule, 'invite');
  await waitUntil(() => bot.client.room(encryptedRoom).encrypted, WAIT_MS, 'the room handle to show the room encrypted');
  assert.equal(await bot.client.isRoomEncrypted(encryptedRoom), true);
  assert.deepEqual(bot.errors, []);
});

test(`permissions in the server's default room version: raised kick/ban/redact, PL 50 vs 100, events overrides, @-state keys, the creator`, async (t) => {
  const bot = await newBot(t, hs);
  const creator = await newPeer(hs);
  const hundred = await newPeer(hs);
  const zero = await newPeer(hs);
  const victim1 = await newPeer(hs);
  const victim2 = await newPeer(hs);
  const newcomer = await newPeer(hs);
  await bot.client.run(bot.token);
  const B = bot.user.userId;
  const P = creator.userId;
  const H = hundred.userId;
  const Z = zero.userId;

  const { room_id: roomId } = await creator.request('POST', '/createRoom', {
    preset: 'private_chat',
    name: 'Guarded',
    invite: [B, H, Z, victim1.userId, victim2.userId],
    power_level_content_override: {
      users: { [B]: 50, [H]: 100 },
      kick: 75,
      ban: 75,
      redact: 75,
      invite: 50,
      events: { 'm.room.power_levels': 100, 'm.room.topic': 100, 'org.example.open': 0, 'm.reaction': 60 },
    },
  });
  for (const p of [hundred, zero, victim1, victim2]) await p.join(roomId);
  await creator.waitForJoined(roomId, B, WAIT_MS);

  const create = await creator.request('GET', `/rooms/${enc(roomId)}/state/m.room.create/`);
  const serverVersion: string = create.room_version;
  t.diagnostic(`Synapse's default room version: ${serverVersion}`);
  assert.equal(serverVersion, '12', 'Synapse 1.163.2 creates version 12 rooms by default');
  const serverPl = await creator.request('GET', `/rooms/${enc(roomId)}/state/m.room.power_levels/`);
  assert.equal(Object.hasOwn(serverPl.users, P), false, 'in v12 the creator is not in the users map');

  const room = await cachedRoom(bot, roomId, (r) => r.membership === 'join' && (r.powerLevels as { kick?: number } | null)?.kick === 75, 'the cache to hold the power levels');
  assert.equal(room.roomVersion, '12');
  assert.deepEqual(room.creators, [P]);
  assert.equal(room.powerLevel(P), Infinity, 'v12: the creator has infinite power');
  assert.equal(room.powerLevel(B), 50);
  assert.equal(room.powerLevel(H), 100);
  assert.equal(room.powerLevel(Z), 0);
  assert.equal(room.powerLevel(`@nobody-${rand()}:${hs.serverName}`), 0, 'users_default');

  const table = permissionTable();
  const botMsg = await bot.client.sendMessage(roomId, 'a message of the bot');
  const zeroMsg = await zero.sendText(roomId, 'a message of Z');

  // Sending: events_default 0, m.reaction raised to 60.
  await table.check('bot (50) sends m.room.message', true, room.can(B, 'send'), () => bot.client.sendMessage(roomId, 'hello'));
  await table.check('bot (50) sends m.reaction (events: 60)', false, room.can(B, { kind: 'send', eventType: 'm.reaction' }), () => bot.client.react(roomId, zeroMsg, '👍'));
  await table.check('H (100) sends m.reaction (events: 60)', true, room.can(H, { kind: 'send', eventType: 'm.reaction' }), () => hundred.react(roomId, zeroMsg, '👍'));

  // State: m.room.topic raised to 100, org.example.open lowered to 0, others at state_default 50.
  await table.check('bot (50) sets m.room.topic (events: 100)', false, room.can(B, { kind: 'state', eventType: 'm.room.topic' }), () => bot.client.setRoomTopic(roomId, 'by bot'));
  await table.check('H (100) sets m.room.topic (events: 100)', true, room.can(H, { kind: 'state', eventType: 'm.room.topic' }), () => hundred.sendState(roomId, 'm.room.topic', '', { topic: 'by H' }));
  await table.check('bot (50) sets m.room.name (state_default 50)', true, room.can(B, 'state'), () => bot.client.setRoomName(roomId, 'Named by the bot'));
  await table.check('Z (0) sets m.room.name (state_default 50)', false, room.can(Z, { kind: 'state', eventType: 'm.room.name' }), () => zero.sendState(roomId, 'm.room.name', '', { name: 'by Z' }));
  await table.check('Z (0) sets org.example.open (events: 0)', true, room.can(Z, { kind: 'state', eventType: 'org.example.open' }), () => zero.sendState(roomId, 'org.example.open', '', { by: 'Z' }));
  await table.check(
    "bot sets org.example.open with Z's user ID as state key",
    false,
    room.can(B, { kind: 'state', eventType: 'org.example.open', stateKey: Z }),
    () => bot.client.sendStateEvent(roomId, 'org.example.open', Z, { by: 'bot' }),
  );
  await table.check(
    'bot sets org.example.open with its own user ID as state key',
    true,
    room.can(B, { kind: 'state', eventType: 'org.example.open', stateKey: B }),
    () => bot.client.sendStateEvent(roomId, 'org.example.open', B, { by: 'bot' }),
  );
  await table.check('Z (0) sets m.room.power_levels (events: 100)', false, room.can(Z, { kind: 'state', eventType: 'm.room.power_levels' }), () =>
    zero.sendState(roomId, 'm.room.power_levels', '', { ...serverPl, users: { ...serverPl.users, [Z]: 100 } }),
  );

  // Invite raised to 50.
  await table.check('Z (0) invites (invite: 50)', false, room.can(Z, 'invite'), () => peerOp(zero, 'invite', roomId, newcomer.userId));
  await table.check('bot (50) invites (invite: 50)', true, room.can(B, 'invite'), () => bot.client.inviteUser(roomId, newcomer.userId));

  // Redaction: redact raised to 75; one's own events need only the right to send m.room.redaction.
  await table.check("bot (50) redacts Z's message (redact: 75)", false, room.can(B, 'redact'), () => bot.client.redactEvent(roomId, zeroMsg));
  await table.check('bot (50) redacts its own message', true, room.can(B, { kind: 'redact', ownEvent: true }), () => bot.client.redactEvent(roomId, botMsg));
  await table.check("H (100) redacts Z's message (redact: 75)", true, room.can(H, { kind: 'redact' }), () => hundred.redact(roomId, zeroMsg));

  // Kick and ban raised to 75.
  await table.check('bot (50) kicks victim1 (0) (kick: 75)', false, room.can(B, { kind: 'kick', target: victim1.userId }), () => bot.client.kickUser(roomId, victim1.userId));
  await table.check('H (100) kicks victim1 (0) (kick: 75)', true, room.can(H, { kind: 'kick', target: victim1.userId }), () => peerOp(hundred, 'kick', roomId, victim1.userId));
  await table.check('bot (50) bans victim2 (0) (ban: 75)', false, room.can(B, { kind: 'ban', target: victim2.userId }), () => bot.client.banUser(roomId, victim2.userId));
  await table.check('H (100) bans victim2 (0) (ban: 75)', true, room.can(H, { kind: 'ban', target: victim2.userId }), () => peerOp(hundred, 'ban', roomId, victim2.userId));
  await table.check('bot (50) unbans victim2', false, room.can(B, { kind: 'unban', target: victim2.userId }), () => bot.client.unbanUser(roomId, victim2.userId));
  await table.check('H (100) unbans victim2', true, room.can(H, { kind: 'unban', target: victim2.userId }), () => peerOp(hundred, 'unban', roomId, victim2.userId));

  // The creator (infinite power in v12) outranks everyone and nobody outranks it.
  await table.check('H (100) kicks the creator', false, room.can(H, { kind: 'kick', target: P }), () => peerOp(hundred, 'kick', roomId, P));
  await table.check('H (100) bans the creator', false, room.can(H, { kind: 'ban', target: P }), () => peerOp(hundred, 'ban', roomId, P));
  await table.check('the creator kicks H (100)', true, room.can(P, { kind: 'kick', target: H }), () => peerOp(creator, 'kick', roomId, H));
  table.verify();

  // And the cache follows what happened (kick, unban, topic by H, name by the bot).
  const after = await cachedRoom(
    bot,
    roomId,
    (r) => r.member(H)?.membership === 'leave' && r.member(victim2.userId)?.membership === 'leave' && r.name === 'Named by the bot' && r.topic === 'by H',
    'the cache to reflect the kicks, unban, name and topic',
  );
  assert.equal(after.member(victim1.userId)?.membership, 'leave');
  assert.equal(after.member(newcomer.userId)?.membership, 'invite');
  assert.deepEqual(bot.errors, []);
});

test("permissions in an explicit room version 10: the creator is an ordinary 100, equal levels cannot kick each other", async (t) => {
  const bot = await newBot(t, hs);
  const q = await newPeer(hs); // 100
  const f = await newPeer(hs); // 50
  const v = await newPeer(hs); // 0
  await bot.client.run(bot.token);
  const B = bot.user.userId;

  const roomId = await bot.client.createRoom({
    roomVersion: '10',
    preset: 'private_chat',
    name: 'Version ten',
    invite: [q.userId, f.userId, v.userId],
    powerLevels: { users: { [B]: 100, [q.userId]: 100, [f.userId]: 50 } },
  });
  for (const p of [q, f, v]) await p.join(roomId);
  const create = await bot.client.getStateEvent(roomId, 'm.room.create');
  assert.equal(create?.room_version, '10');
  assert.equal(create?.creator, B, 'v10 create events carry content.creator');

  const room = await cachedRoom(
    bot,
    roomId,
    (r) => r.membership === 'join' && r.member(v.userId)?.membership === 'join' && r.powerLevels !== null,
    'the v10 room with everyone joined in the cache',
  );
  assert.equal(room.roomVersion, '10');
  assert.equal(room.creator, B);
  assert.equal(room.powerLevel(B), 100, 'v10: the creator has its users entry, not infinite power');
  assert.equal(room.powerLevel(q.userId), 100);
  assert.equal(room.powerLevel(f.userId), 50);
  assert.equal(room.powerLevel(v.userId), 0);

  const table = permissionTable();
  await table.check('creator bot (100) kicks Q (100)', false, room.can(B, { kind: 'kick', target: q.userId }), () => bot.client.kickUser(roomId, q.userId));
  await table.check('Q (100) kicks the creator bot (100)', false, room.can(q.userId, { kind: 'kick', target: B }), () => peerOp(q, 'kick', roomId, B));
  await table.check('F (50) kicks Q (100)', false, room.can(f.userId, { kind: 'kick', target: q.userId }), () => peerOp(f, 'kick', roomId, q.userId));
  await table.check('F (50) sets m.room.power_levels (events: 100)', false, room.can(f.userId, { kind: 'state', eventType: 'm.room.power_levels' }), async () => {
    const pl = await f.request('GET', `/rooms/${enc(roomId)}/state/m.room.power_levels/`);
    await f.sendState(roomId, 'm.room.power_levels', '', { ...pl, users: { ...pl.users, [f.userId]: 100 } });
  });
  await table.check('F (50) sets m.room.history_visibility (events: 100)', false, room.can(f.userId, { kind: 'state', eventType: 'm.room.history_visibility' }), () =>
    f.sendState(roomId, 'm.room.history_visibility', '', { history_visibility: 'joined' }),
  );
  await table.check('F (50) sets m.room.name (events: 50)', true, room.can(f.userId, { kind: 'state', eventType: 'm.room.name' }), () => f.sendState(roomId, 'm.room.name', '', { name: 'By F' }));
  await table.check('V (0) sets org.example.thing (state_default 50)', false, room.can(v.userId, { kind: 'state', eventType: 'org.example.thing' }), () => v.sendState(roomId, 'org.example.thing', '', {}));
  await table.check('V (0) invites (private_chat: invite 0)', true, room.can(v.userId, 'invite'), async () => {
    const other = await hs.registerUser();
    await peerOp(v, 'invite', roomId, other.userId);
  });
  await table.check('F (50) kicks V (0) (kick: 50)', true, room.can(f.userId, { kind: 'kick', target: v.userId }), () => peerOp(f, 'kick', roomId, v.userId, 'out you go'));
  await table.check('V kicks itself (leaving)', true, room.can(v.userId, { kind: 'kick', target: v.userId }), async () => {
    // V was just kicked: rejoin needs an invite; leaving is the same rule as kicking oneself, so test it with F's consent.
    await peerOp(f, 'invite', roomId, v.userId);
    await v.join(roomId);
    await v.leave(roomId);
  });
  await table.check('bot (100) bans F (50)', true, room.can(B, { kind: 'ban', target: f.userId }), () => bot.client.banUser(roomId, f.userId, 'too many croissants'));
  await table.check('Q (100) unbans F (50)', true, room.can(q.userId, { kind: 'unban', target: f.userId }), () => peerOp(q, 'unban', roomId, f.userId));
  table.verify();

  const kicked = await bot.client.getStateEvent(roomId, 'm.room.member', v.userId);
  assert.equal(kicked?.membership, 'leave');
  assert.deepEqual(bot.errors, []);
});

test('a DM is created once and reused: m.direct, is_direct invite, trusted_private_chat creators, and an incoming DM the bot auto-joins', async (t) => {
  const bot = await newBot(t, hs);
  const peer = await newPeer(hs);
  const other = await newPeer(hs);
  await bot.client.run(bot.token);
  const B = bot.user.userId;

  assert.equal(await bot.client.getAccountData('m.direct'), null, 'a new account has no m.direct');
  const dm = await bot.client.getOrCreateDm(peer.userId);
  // Reuse needs the bot's sync to have shown the new room joined; calling before that is the 'sync lags behind' test.
  await joinedInSummaries(bot, dm);
  const again = await bot.client.getOrCreateDm(peer.userId);
  assert.equal(again, dm, 'getOrCreateDm the second time returns the same room');
  assert.equal(await bot.client.user(peer.userId).dm(), dm, 'user(id).dm() is the same room');
  assert.deepEqual(await bot.client.getAccountData('m.direct'), { [peer.userId]: [dm] });
  assert.deepEqual(await bot.client.getAccountData('m.direct', { fresh: true }), { [peer.userId]: [dm] }, 'm.direct on the server');

  // The peer sees an is_direct invite, joins; the room is encrypted by default (encryption is on).
  const invite = await peer.waitFor((ev, rid, section) => section === 'invite' && rid === dm && ev.type === 'm.room.member' && ev.state_key === peer.userId);
  assert.equal(invite.content.is_direct, true);
  await peer.join(dm);
  const info = await cachedRoom(bot, dm, (r) => r.member(peer.userId)?.membership === 'join', 'the peer joined in the DM');
  assert.equal(info.encrypted, true, 'the DM is encrypted when encryption is on');
  assert.equal(info.joinRule, 'invite');
  const create = await bot.client.getStateEvent(dm, 'm.room.create');
  // Synapse 1.163 creates rooms in version 12 by default: its creator rules apply.
  assert.equal(info.roomVersion, '12', "the server's default room version");
  // trusted_private_chat in v12: invitees become additional creators (infinite power), not users-map 100s.
  assert.deepEqual(create?.additional_creators, [peer.userId]);
  assert.deepEqual([...info.creators].sort(), [B, peer.userId].sort());
  assert.equal(info.powerLevel(peer.userId), Infinity);
  assert.equal(info.powerLevel(B), Infinity);
  assert.equal(info.can(peer.userId, { kind: 'kick', target: B }), false, 'one creator cannot kick another');
  const tried = await outcome(() => peerOp(peer, 'kick', dm, B));
  assert.equal(tried, 'forbidden', 'Synapse agrees: a creator cannot kick another creator');
  assert.equal(await bot.client.getOrCreateDm(peer.userId), dm, 'still the same room after the peer joined');

  // The peer leaves: the old DM is not reused; a new one is made and recorded next to it.
  await peer.leave(dm);
  await cachedRoom(bot, dm, (r) => r.member(peer.userId)?.membership === 'leave', 'the cache to see the peer leave the DM');
  const fresh = await bot.client.getOrCreateDm(peer.userId);
  assert.notEqual(fresh, dm, 'a DM the other user left is not reused');
  assert.deepEqual(((await bot.client.getAccountData('m.direct', { fresh: true })) ?? {})[peer.userId], [dm, fresh]);

  // An incoming DM: the other user invites the bot with is_direct; the bot auto-joins and records it.
  const { room_id: incoming } = await other.request('POST', '/createRoom', { preset: 'trusted_private_chat', is_direct: true, invite: [B] });
  await other.waitForJoined(incoming, B, WAIT_MS);
  const direct = await waitUntil(
    async () => {
      const d = await bot.client.getAccountData('m.direct');
      return Array.isArray(d?.[other.userId]) && (d[other.userId] as string[]).includes(incoming) ? d : undefined;
    },
    WAIT_MS,
    'm.direct to record the incoming DM',
  );
  assert.deepEqual(direct[peer.userId], [dm, fresh], 'the earlier DMs are kept');
  // m.direct is written right after the join request, before the bot's sync shows the room joined; reuse is checked
  // once main's room list does (the window before is the subject of the 'sync lags behind' test below).
  await joinedInSummaries(bot, incoming);
  const state = async () =>
    JSON.stringify({
      cachedDirect: await bot.client.getAccountData('m.direct'),
      summary: (await bot.client.listRooms()).find((r) => r.roomId === incoming)?.membership ?? 'not listed',
      cache: (await bot.client.getRoom(incoming))?.membership,
      otherMember: (await bot.client.getRoom(incoming))?.member(other.userId)?.membership,
    });
  const before = await state();
  const reused = await bot.client.getOrCreateDm(other.userId);
  assert.equal(reused, incoming, `getOrCreateDm reuses the DM the other user started (before the call: ${before})`);
  assert.deepEqual(((await bot.client.getAccountData('m.direct', { fresh: true })) ?? {})[other.userId], [incoming]);
  assert.deepEqual(bot.errors, []);
});

test('createRoom with name, topic, preset, alias, invites, encryption; resolveAlias; join by ID and alias; getJoinedRooms and listRooms', async (t) => {
  const bot = await newBot(t, hs);
  const peer = await newPeer(hs);
  await bot.client.run(bot.token);
  const B = bot.user.userId;

  const aliasName = `made-${rand()}`;
  const alias = `#${aliasName}:${hs.serverName}`;
  const open = await bot.client.createRoom({ name: 'Open house', topic: 'All welcome', preset: 'public_chat', alias: aliasName, invite: [peer.userId] });
  const secret = await bot.client.createRoom({ name: 'Back office', preset: 'private_chat', encrypted: true });

  // What the server has.
  assert.deepEqual(await bot.client.getStateEvent(open, 'm.room.name'), { name: 'Open house' });
  assert.equal((await bot.client.getStateEvent(open, 'm.room.topic'))?.topic, 'All welcome');
  assert.equal((await bot.client.getStateEvent(open, 'm.room.join_rules'))?.join_rule, 'public');
  assert.equal((await bot.client.getStateEvent(open, 'm.room.canonical_alias'))?.alias, alias);
  assert.equal(await bot.client.getStateEvent(open, 'm.room.encryption'), null, 'not encrypted unless asked');
  assert.equal((await bot.client.getStateEvent(secret, 'm.room.encryption'))?.algorithm, 'm.megolm.v1.aes-sha2');
  assert.equal((await bot.client.getStateEvent(secret, 'm.room.join_rules'))?.join_rule, 'invite');
  assert.deepEqual(await bot.client.resolveAlias(alias), { roomId: open, servers: [hs.serverName] });
  await assert.rejects(bot.client.resolveAlias(`#missing-${rand()}:${hs.serverName}`), (e: HalcyonError) => e.errcode === 'M_NOT_FOUND');

  // The invitee sees the invite and joins by alias.
  await peer.waitFor((ev, rid, section) => section === 'invite' && rid === open && ev.type === 'm.room.member' && ev.state_key === peer.userId);
  assert.equal(await peer.join(alias), open);

  // The cache.
  const openInfo = await cachedRoom(bot, open, (r) => r.member(peer.userId)?.membership === 'join', 'the peer joined in the cache');
  assert.equal(openInfo.name, 'Open house');
  assert.equal(openInfo.topic, 'All welcome');
  assert.equal(openInfo.canonicalAlias, alias);
  assert.equal(openInfo.joinRule, 'public');
  assert.equal(openInfo.encrypted, false);
  assert.equal(openInfo.creator, B);
  assert.deepEqual(openInfo.creators, [B]);
  assert.equal(openInfo.joinedMemberCount, 2);
  assert.equal(openInfo.roomVersion, '12', "the server's default room version");
  assert.equal(openInfo.powerLevel(B), Infinity, 'the bot created the room: a v12 creator');
  assert.equal(openInfo.can(B, { kind: 'state', eventType: 'm.room.tombstone' }), true, 'a creator can even send a tombstone (150)');
  assert.equal(openInfo.can(peer.userId, 'ban'), false);
  const secretInfo = await cachedRoom(bot, secret, (r) => r.name === 'Back office', 'the encrypted room in the cache');
  assert.equal(secretInfo.encrypted, true);
  await waitUntil(() => bot.client.room(secret).encrypted, WAIT_MS, 'the room handle to show the room encrypted');

  // A room of the peer's, joined by ID, and one by alias.
  const { room_id: peerRoom } = await peer.request('POST', '/createRoom', { preset: 'public_chat', name: 'Peer public' });
  assert.equal(await bot.client.joinRoom(peerRoom), peerRoom);
  const peerAliasName = `peer-${rand()}`;
  const { room_id: peerAliased } = await peer.request('POST', '/createRoom', { preset: 'public_chat', room_alias_name: peerAliasName });
  assert.equal(await bot.client.joinRoom(`#${peerAliasName}:${hs.serverName}`), peerAliased);

  const expected = [open, secret, peerRoom, peerAliased].sort();
  assert.deepEqual((await bot.client.getJoinedRooms()).sort(), expected, 'getJoinedRooms asks the server');
  await waitUntil(
    async () => {
      const ids = (await bot.client.listRooms()).map((r) => r.roomId).sort();
      return JSON.stringify(ids) === JSON.stringify(expected);
    },
    WAIT_MS,
    'listRooms to list exactly the four joined rooms',
  );
  const listed = await bot.client.listRooms();
  assert.equal(listed.find((r) => r.roomId === peerRoom)?.name, 'Peer public');
  assert.ok(listed.every((r) => r.membership === 'join'));
  assert.deepEqual(bot.errors, []);
});

test('invite, kick, ban, unban with reasons; leave and forget', async (t) => {
  const bot = await newBot(t, hs);
  const peer = await newPeer(hs);
  const members: MemberEvent[] = [];
  bot.client.on('member', (m) => void members.push(m));
  await bot.client.run(bot.token);
  const B = bot.user.userId;
  const P = peer.userId;
  const roomId = await bot.client.createRoom({ name: 'Door', preset: 'private_chat' });
  // Membership and reason of a member event on the server (Synapse may add profile fields; those are not checked).
  const memberOf = async (u: string) => {
    const c = await bot.client.getStateEvent(roomId, 'm.room.member', u);
    return c && (c.reason === undefined ? { membership: c.membership } : { membership: c.membership, reason: c.reason });
  };

  await bot.client.inviteUser(roomId, P, 'come in');
  assert.deepEqual(await memberOf(P), { membership: 'invite', reason: 'come in' });
  const invite = await peer.waitFor((ev, rid, section) => section === 'invite' && rid === roomId && ev.type === 'm.room.member' && ev.state_key === P);
  assert.equal(invite.content.reason, 'come in', "the invite's reason reaches the invitee");
  await peer.join(roomId);

  await bot.client.kickUser(roomId, P, 'too loud');
  assert.deepEqual(await memberOf(P), { membership: 'leave', reason: 'too loud' });
  const kick = await peer.waitFor((ev, rid) => rid === roomId && ev.type === 'm.room.member' && ev.state_key === P && ev.content.membership === 'leave');
  assert.equal(kick.content.reason, 'too loud', "the kick's reason reaches the kicked user");
  assert.equal(kick.sender, B);

  await bot.client.banUser(roomId, P, 'spam');
  assert.deepEqual(await memberOf(P), { membership: 'ban', reason: 'spam' });
  // Synapse refuses a banned user's join with 403 M_BAD_STATE.
  await assert.rejects(peer.join(roomId), (e: { status?: number }) => e.status === 403, 'a banned user cannot join');

  await bot.client.unbanUser(roomId, P, 'forgiven');
  assert.deepEqual(await memberOf(P), { membership: 'leave', reason: 'forgiven' });
  await bot.client.inviteUser(roomId, P);
  assert.deepEqual(await memberOf(P), { membership: 'invite' }, 'no reason given, none sent');
  await peer.join(roomId);

  // The bot's member handler saw each change with its reason (member events are delivered even when the bot sent them).
  const seen = await waitUntil(
    () => {
      const mine = members.filter((m) => m.roomId === roomId && m.userId === P).map((m) => `${m.membership}:${(m.content.reason as string | undefined) ?? ''}`);
      return mine.length >= 7 ? mine : undefined;
    },
    WAIT_MS,
    "the bot's 7 member events for the peer",
  );
  assert.deepEqual(seen, ['invite:come in', 'join:', 'leave:too loud', 'ban:spam', 'leave:forgiven', 'invite:', 'join:']);

  // Forgetting needs leaving first.
  await assert.rejects(bot.client.forgetRoom(roomId), (e: HalcyonError) => e.code === 'HALCYON_MATRIX' && e.status === 400, 'forget while joined is refused');
  await bot.client.leaveRoom(roomId);
  assert.ok(!(await bot.client.getJoinedRooms()).includes(roomId));
  await bot.client.forgetRoom(roomId);
  await waitUntil(async () => (await joinedOnServer(peer, roomId)).join(',') === P, WAIT_MS, 'the server to show only the peer joined');
  await cachedRoom(bot, roomId, (r) => r.membership === 'leave', "the cache to show the room as left");
  await waitUntil(async () => !(await bot.client.listRooms()).some((r) => r.roomId === roomId), WAIT_MS, 'listRooms to drop the left room');
  assert.deepEqual(bot.errors, []);
});

test('setRoomName/Topic/Avatar, sendStateEvent and getStateEvent, setPowerLevel; the cache and the peer follow', async (t) => {
  const bot = await newBot(t, hs);
  const peer = await newPeer(hs);
  await bot.client.run(bot.token);
  const roomId = await bot.client.createRoom({ name: 'Before', invite: [peer.userId] });
  await peer.join(roomId);

  const nameId = await bot.client.setRoomName(roomId, 'After');
  const topicId = await bot.client.setRoomTopic(roomId, 'New topic');
  const avatarId = await bot.client.setRoomAvatar(roomId, 'mxc://localhost/room-avatar');
  const customId = await bot.client.sendStateEvent(roomId, 'org.example.config', 'lang', { value: 'fr', n: 3 });
  for (const id of [nameId, topicId, avatarId, customId]) assert.match(id, /^\$/);
  assert.deepEqual(await bot.client.getStateEvent(roomId, 'm.room.name'), { name: 'After' });
  assert.deepEqual(await bot.client.getStateEvent(roomId, 'm.room.topic'), (await peer.request('GET', `/rooms/${enc(roomId)}/state/m.room.topic/`)));
  assert.deepEqual(await bot.client.getStateEvent(roomId, 'm.room.avatar'), { url: 'mxc://localhost/room-avatar' });
  assert.deepEqual(await bot.client.getStateEvent(roomId, 'org.example.config', 'lang'), { value: 'fr', n: 3 });
  assert.equal(await bot.client.getStateEvent(roomId, 'org.example.config', 'other'), null, 'a missing state event is null');
  assert.equal(await bot.client.getStateEvent(roomId, 'org.example.none'), null);

  // The peer sees the state events.
  const seen = new Map<string, any>();
  await peer.waitFor((ev, rid) => {
    if (rid === roomId && [nameId, topicId, avatarId, customId].includes(ev.event_id)) seen.set(ev.event_id, ev);
    return seen.size === 4;
  });
  assert.equal(seen.get(customId).state_key, 'lang');
  assert.equal(seen.get(customId).type, 'org.example.config');
  assert.equal(seen.get(topicId).content.topic, 'New topic');

  // setPowerLevel keeps the other levels.
  const plBefore = await bot.client.getStateEvent(roomId, 'm.room.power_levels');
  await bot.client.setPowerLevel(roomId, peer.userId, 42);
  const plAfter = await bot.client.getStateEvent(roomId, 'm.room.power_levels');
  assert.equal((plAfter?.users as Record<string, number>)[peer.userId], 42);
  assert.deepEqual({ ...plAfter, users: undefined }, { ...plBefore, users: undefined });

  const info = await cachedRoom(
    bot,
    roomId,
    (r) => r.name === 'After' && r.topic === 'New topic' && r.avatarUrl === 'mxc://localhost/room-avatar' && r.powerLevel(peer.userId) === 42,
    'the cache to show the new name, topic, avatar and power level',
  );
  assert.equal(info.can(peer.userId, 'kick'), false, 'kick 50 > 42');
  assert.equal(info.can(peer.userId, 'invite'), true);
  const handle = bot.client.room(roomId);
  await waitUntil(() => handle.name === 'After' && handle.avatarUrl !== null, WAIT_MS, 'the room handle to catch up');
  assert.equal(handle.name, 'After');
  assert.equal(handle.topic, 'New topic');
  assert.equal(handle.avatarUrl, 'mxc://localhost/room-avatar');
  assert.deepEqual(bot.errors, []);
});

test('loadMembers fills in the members lazy loading left out', async (t) => {
  const bot = await newBot(t, hs);
  const peer = await newPeer(hs);
  const quiet1 = await newPeer(hs);
  const quiet2 = await newPeer(hs);
  await bot.client.run(bot.token);

  const roomId = await peer.createRoom({ name: 'Crowded', invite: [quiet1.userId, quiet2.userId] });
  await quiet1.join(roomId);
  await quiet2.join(roomId);
  await quiet1.sendState(roomId, 'm.room.member', quiet1.userId, { membership: 'join', displayname: 'Quiet One' });
  // More messages than the bot's timeline window (50): the quiet members' events fall outside it.
  for (let i = 0; i < 55; i++) await peer.sendText(roomId, `filler ${i}`);
  await peer.invite(roomId, bot.user.userId);
  await peer.waitForJoined(roomId, bot.user.userId, WAIT_MS);

  const lazy = await cachedRoom(bot, roomId, (r) => r.membership === 'join' && r.name === 'Crowded' && r.joinedMemberCount === 4, 'the room in the cache with 4 joined members counted');
  assert.equal(lazy.member(quiet1.userId), undefined, 'lazy loading: a member who never spoke is unknown before loadMembers');
  assert.equal(lazy.member(peer.userId)?.membership, 'join', 'the sender of the timeline is known');

  const full = await bot.client.loadMembers(roomId);
  assert.ok(full, 'loadMembers resolves with the room details');
  assert.deepEqual(full.member(quiet1.userId), { userId: quiet1.userId, displayName: 'Quiet One', avatarUrl: null, membership: 'join' });
  assert.equal(full.member(quiet2.userId)?.membership, 'join');
  assert.deepEqual(full.membersWith('join').map((m) => m.userId).sort(), [peer.userId, quiet1.userId, quiet2.userId, bot.user.userId].sort());
  assert.equal(full.joinedMemberCount, 4);
  assert.equal((await bot.client.getRoom(roomId))?.member(quiet2.userId)?.membership, 'join', 'getRoom keeps the loaded members');
  assert.deepEqual(bot.errors, []);
});

/** A {@link loggingProxy} whose `holdSync()` holds back the answers of /sync (the bot's sync lags) until the function it returns is called. */
async function syncHoldingProxy(t: TestContext, target: string): Promise<{ url: string; log: string[]; holdSync(): () => void }> {
  let hold: { promise: Promise<void>; release: () => void } | null = null;
  const proxy = await loggingProxy(t, target, {
    hold: (_method, url) => (url.startsWith('/_matrix/client/v3/sync') && hold ? hold.promise : null),
    release: () => hold?.release(),
  });
  return {
    ...proxy,
    holdSync() {
      let release!: () => void;
      const promise = new Promise<void>((r) => (release = r));
      const h = { promise, release };
      hold = h;
      return () => {
        if (hold === h) hold = null;
        h.release();
      };
    },
  };
}

/** A bot user logged in through `homeserver` (a proxy) on a fresh data dir, and its (not running) client. */
async function botVia(t: TestContext, homeserver: string, opts: Parameters<typeof newClient>[2] = {}) {
  const user = await hs.registerUser();
  const dataDir = tempDataDir(t);
  const token = await Client.login({ homeserver, user: user.localpart, password: user.password, dataDir });
  return { user, dataDir, token, client: newClient(t, dataDir, opts) };
}

test('getOrCreateDm called twice in a row returns the same room while the sync lags behind', async (t) => {
  const proxy = await syncHoldingProxy(t, hs.baseUrl);
  const bot = await botVia(t, proxy.url, { encryption: false });
  const peer = await newPeer(hs);
  await bot.client.run(bot.token);

  const release = proxy.holdSync();
  let first: string;
  let second: string;
  try {
    first = await bot.client.getOrCreateDm(peer.userId);
    second = await bot.client.getOrCreateDm(peer.userId);
  } finally {
    release();
  }
  const direct = await bot.client.getAccountData('m.direct', { fresh: true });
  assert.equal(second, first, `the second call reuses the DM (m.direct on the server: ${JSON.stringify(direct)})`);
  assert.deepEqual(direct, { [peer.userId]: [first] });
});

test('after a restart getRoom and account data answer from the cache without any request; a rename arrives by sync alone', async (t) => {
  const proxy = await syncHoldingProxy(t, hs.baseUrl);
  const { user, dataDir, token, client: first } = await botVia(t, proxy.url, { encryption: false });
  const peer = await newPeer(hs);
  await first.run(token);
  const roomId = await roomWithBot(peer, user.userId, { name: 'Remembered', topic: 'Kept on disk' });
  await peer.sendState(roomId, 'm.room.member', peer.userId, { membership: 'join', displayname: 'Rememberer' });
  await waitUntil(async () => (await first.getRoom(roomId))?.member(peer.userId)?.displayName === 'Rememberer', WAIT_MS, 'the first client to cache the room');
  // A gap backfill (/messages, when Synapse marks the join's timeline limited, which depends on timing) is sync's
  // own machinery, not a state fetch: every other per-room request counts.
  const stateFetch = (r: string) => /\/rooms\/|\/members|\/joined_rooms/.test(r) && !/\/rooms\/[^/]+\/messages\?/.test(r);
  const firstRun = proxy.log.filter(stateFetch);
  assert.deepEqual(firstRun, [], `a fresh data dir: the room reaches the cache by sync alone (all requests: ${proxy.log.join(', ')})`);
  await first.setAccountData('org.example.settings', { colour: 'blue' });
  await first.setRoomAccountData(roomId, 'org.example.room', { pinned: true });
  await first.stop();

  const startAt = proxy.log.length;
  const second = newClient(t, dataDir, { encryption: false });
  const errors: unknown[] = [];
  second.on('error', (e) => void errors.push(e));
  await second.run(token);
  const info = await second.getRoom(roomId);
  assert.ok(info, 'getRoom knows the room right after run()');
  assert.equal(info.name, 'Remembered');
  assert.equal(info.topic, 'Kept on disk');
  assert.equal(info.member(peer.userId)?.displayName, 'Rememberer');
  assert.equal(info.creator, peer.userId);
  assert.ok(info.powerLevels, 'power levels are cached');
  assert.equal(info.can(peer.userId, 'ban'), true);
  assert.deepEqual(await second.getAccountData('org.example.settings'), { colour: 'blue' });
  assert.deepEqual(await second.getRoomAccountData(roomId, 'org.example.room'), { pinned: true });

  // The peer renames the room: the next sync carries it into the cache.
  await peer.sendState(roomId, 'm.room.name', '', { name: 'Renamed' });
  await waitUntil(async () => (await second.getRoom(roomId))?.name === 'Renamed', WAIT_MS, 'the rename to reach the cache');
  await waitUntil(() => second.room(roomId).name === 'Renamed', WAIT_MS, 'the room handle to show the rename');

  const requests = proxy.log.slice(startAt);
  const perRoom = requests.filter((r) => stateFetch(r) || /\/account_data\//.test(r));
  assert.deepEqual(perRoom, [], `no per-room or account-data request after the restart (all requests: ${requests.join(', ')})`);
  assert.ok(requests.some((r) => r.startsWith('GET /_matrix/client/v3/sync')), 'the second client did sync through the proxy');
  assert.deepEqual(errors, []);
});
