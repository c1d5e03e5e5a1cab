/** Client rooms: join by alias, leave, the room cache (getRoom, listRooms, room handles) and whoami. */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { decodeToken, HalcyonError, type Invite, type MemberEvent } from '../../src/index.ts';
import { testHomeserver, type Homeserver } from '../harness/synapse.ts';
import { newBot, newPeer, rand, roomWithBot, WAIT_MS, waitUntil } from './util.ts';

let hs: Homeserver;
before(async () => {
  hs = await testHomeserver();
});
after(async () => {
  await hs?.stop();
});

test('joinRoom by alias, getRoom follows topic changes, listRooms tracks joins and leaves, whoami', async (t) => {
  const bot = await newBot(t, hs);
  const peer = await newPeer(hs);
  await bot.client.run(bot.token);

  const who = bot.client.whoami();
  const session = decodeToken(bot.token);
  const { identityKeys, ...rest } = who;
  assert.deepEqual(rest, { userId: bot.user.userId, deviceId: session.deviceId, homeserver: hs.baseUrl, encryption: true });
  assert.match(identityKeys?.curve25519 ?? '', /^[A-Za-z0-9+/]{43}$/, 'encryption is on by default: the device has identity keys');

  // A room the bot joins through an invite, and a public room it joins by alias.
  const invitedRoom = await roomWithBot(peer, bot.user.userId, { name: 'Invited' });
  const aliasName = `bakery-${rand()}`;
  const { room_id: publicRoom } = await peer.request('POST', '/createRoom', {
    preset: 'public_chat',
    room_alias_name: aliasName,
    name: 'Public bakery',
    topic: 'Bread',
  });
  const alias = `#${aliasName}:${hs.serverName}`;
  const joinedId = await bot.client.joinRoom(alias);
  assert.equal(joinedId, publicRoom, 'joinRoom by alias resolves with the room ID');
  await peer.waitForJoined(publicRoom, bot.user.userId, WAIT_MS);

  const info = await waitUntil(
    async () => {
      const r = await bot.client.getRoom(publicRoom);
      return r?.name === 'Public bakery' && r.topic === 'Bread' ? r : undefined;
    },
    WAIT_MS,
    'getRoom to show the public room with its name and topic',
  );
  assert.equal(info.roomId, publicRoom);
  assert.equal(info.membership, 'join');
  assert.equal(info.canonicalAlias, alias);
  assert.equal(info.joinRule, 'public');
  assert.equal(info.encrypted, false);
  assert.equal(info.creator, peer.userId);
  const memberIds = info.members.filter((m) => m.membership === 'join').map((m) => m.userId).sort();
  assert.deepEqual(memberIds, [peer.userId, bot.user.userId].sort());
  assert.equal(info.joinedMemberCount, 2);

  // The peer changes the topic: the cache follows.
  await peer.sendState(publicRoom, 'm.room.topic', '', { topic: 'Cakes' });
  const updated = await waitUntil(
    async () => {
      const r = await bot.client.getRoom(publicRoom);
      return r?.topic === 'Cakes' ? r : undefined;
    },
    WAIT_MS,
    "getRoom to show the new topic 'Cakes'",
  );
  assert.equal(updated.name, 'Public bakery');
  // The handle reads main's mirror, which the batch updates one port hop after the cache actor applied it.
  await waitUntil(() => bot.client.room(publicRoom).topic === 'Cakes', WAIT_MS, 'the room handle to see the new topic too');
  assert.equal(bot.client.room(publicRoom).name, 'Public bakery');
  assert.equal(bot.client.room(publicRoom).canonicalAlias, alias);
  assert.equal(bot.client.room(publicRoom).memberCount, 2);

  const listed = await waitUntil(
    async () => {
      const rooms = await bot.client.listRooms();
      const ids = rooms.map((r) => r.roomId);
      return ids.includes(invitedRoom) && ids.includes(publicRoom) ? rooms : undefined;
    },
    WAIT_MS,
    'listRooms to include both joined rooms',
  );
  assert.equal(listed.find((r) => r.roomId === invitedRoom)?.name, 'Invited');
  assert.equal(listed.find((r) => r.roomId === publicRoom)?.topic, 'Cakes');
  assert.ok(listed.every((r) => r.membership === 'join'));

  // Leaving: the server sees it, listRooms drops the room, the cache marks it left.
  await bot.client.leaveRoom(publicRoom);
  await waitUntil(
    async () => {
      const { joined } = await peer.request('GET', `/rooms/${encodeURIComponent(publicRoom)}/joined_members`);
      return !joined[bot.user.userId];
    },
    WAIT_MS,
    'the server to show the bot gone from the public room',
  );
  await waitUntil(
    async () => !(await bot.client.listRooms()).some((r) => r.roomId === publicRoom),
    WAIT_MS,
    'listRooms to drop the room the bot left',
  );
  const left = await waitUntil(async () => {
    const r = await bot.client.getRoom(publicRoom);
    return r?.membership === 'leave' ? r : undefined;
  }, WAIT_MS, "getRoom to show membership 'leave'");
  assert.equal(left.roomId, publicRoom);
  assert.ok((await bot.client.listRooms()).some((r) => r.roomId === invitedRoom), 'the other room is still listed');

  // Joining by ID works too (the room is public).
  assert.equal(await bot.client.joinRoom(publicRoom), publicRoom);
  await waitUntil(
    async () => (await bot.client.listRooms()).some((r) => r.roomId === publicRoom),
    WAIT_MS,
    'listRooms to list the rejoined room',
  );
  assert.equal(await bot.client.getRoom('!unknown:localhost'), undefined, 'getRoom of an unknown room is undefined');
  assert.deepEqual(bot.errors, []);
});

test('joinRoom of an unknown alias rejects with a coded HALCYON_MATRIX error', async (t) => {
  const bot = await newBot(t, hs);
  await bot.client.run(bot.token);
  let caught: unknown;
  try {
    await bot.client.joinRoom(`#no-such-room-${rand()}:${hs.serverName}`);
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof HalcyonError, 'joinRoom should reject with a HalcyonError');
  assert.equal(caught.code, 'HALCYON_MATRIX');
  assert.equal(caught.errcode, 'M_NOT_FOUND');
  assert.equal(caught.status, 404);
});

test('room methods need a running client', async (t) => {
  const bot = await newBot(t, hs);
  for (const call of [
    () => bot.client.whoami(),
    () => bot.client.getRoom('!x:localhost'),
    () => bot.client.joinRoom('!x:localhost'),
    () => bot.client.sendMessage('!x:localhost', 'hi'),
  ]) {
    await assert.rejects(async () => call(), (e: HalcyonError) => e.code === 'HALCYON_NOT_RUNNING');
  }
  await bot.client.run(bot.token);
  await bot.client.stop();
  assert.throws(() => bot.client.whoami(), (e: HalcyonError) => e.code === 'HALCYON_NOT_RUNNING');
});

test('autoJoin false: the invite is only reported; invite.accept() joins; a kick shows as a member leave and drops the room', async (t) => {
  const bot = await newBot(t, hs, { autoJoin: false });
  const peer = await newPeer(hs);
  const invites: Invite[] = [];
  const members: MemberEvent[] = [];
  bot.client.on('invite', (i) => void invites.push(i));
  bot.client.on('member', (m) => void members.push(m));
  await bot.client.run(bot.token);
  const roomId = await peer.createRoom({ invite: [bot.user.userId], name: 'Manual' });
  const invite = await waitUntil(() => invites.find((i) => i.roomId === roomId), WAIT_MS, 'the invite');
  assert.equal(invite.inviter, peer.userId);
  assert.equal(invite.name, 'Manual');
  const { joined } = await peer.request('GET', `/rooms/${encodeURIComponent(roomId)}/joined_members`);
  assert.ok(!joined[bot.user.userId], 'with autoJoin false the bot has not joined');

  assert.equal(await invite.accept(), roomId);
  await peer.waitForJoined(roomId, bot.user.userId, WAIT_MS);
  await waitUntil(async () => (await bot.client.listRooms()).some((r) => r.roomId === roomId && r.name === 'Manual'), WAIT_MS, 'listRooms to list the accepted room');

  await peer.request('POST', `/rooms/${encodeURIComponent(roomId)}/kick`, { user_id: bot.user.userId, reason: 'bye' });
  const kick = await waitUntil(
    () => members.find((m) => m.userId === bot.user.userId && m.membership === 'leave'),
    WAIT_MS,
    "a 'member' leave event for the kicked bot",
  );
  assert.equal(kick.sender, peer.userId);
  assert.equal(kick.roomId, roomId);
  await waitUntil(async () => !(await bot.client.listRooms()).some((r) => r.roomId === roomId), WAIT_MS, 'listRooms to drop the room after the kick');
  assert.equal((await bot.client.getRoom(roomId))?.membership, 'leave');
  assert.deepEqual(bot.errors, []);
});

test('getRoom members follow display-name changes', async (t) => {
  const bot = await newBot(t, hs);
  const peer = await newPeer(hs);
  await bot.client.run(bot.token);
  const roomId = await roomWithBot(peer, bot.user.userId);
  await peer.sendState(roomId, 'm.room.member', peer.userId, { membership: 'join', displayname: 'Pastry Chef' });
  const info = await waitUntil(
    async () => {
      const r = await bot.client.getRoom(roomId);
      return r?.members.find((m) => m.userId === peer.userId)?.displayName === 'Pastry Chef' ? r : undefined;
    },
    WAIT_MS,
    "getRoom to show the peer's new display name",
  );
  assert.equal(info.members.find((m) => m.userId === peer.userId)?.membership, 'join');
});
