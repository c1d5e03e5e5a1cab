import assert from 'node:assert/strict';
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { CacheActor } from '../../src/cache/actor.ts';
import type { MatrixEvent } from '../../src/protocol.ts';
import { RoomDetails } from '../../src/rooms.ts';
import { openDatabase } from '../../src/store.ts';
import { tempDataDir } from '../integration/util.ts';

const st = (type: string, stateKey: string, content: Record<string, unknown>, sender = '@alice:x'): MatrixEvent => ({ type, state_key: stateKey, content, sender });

test('cache actor: applies state, reports only changed summaries, and reads rooms back from SQLite after a restart', async (t) => {
  const dataDir = tempDataDir(t);
  const a = new CacheActor();
  await a.open({ dataDir, maxRoomsInMemory: 1 });
  const changed = await a.apply({
    rooms: [
      {
        roomId: '!a:x',
        membership: 'join',
        state: [
          st('m.room.create', '', { creator: '@alice:x' }),
          st('m.room.name', '', { name: 'Room A' }),
          st('m.room.topic', '', { topic: 'Topic A' }),
          st('m.room.join_rules', '', { join_rule: 'invite' }),
          st('m.room.power_levels', '', { users: { '@alice:x': 100 } }),
          st('m.room.member', '@alice:x', { membership: 'join', displayname: 'Alice' }),
          st('m.room.member', '@bot:x', { membership: 'join' }),
        ],
      },
      { roomId: '!b:x', membership: 'join', state: [st('m.room.encryption', '', { algorithm: 'm.megolm.v1.aes-sha2' })], summary: { 'm.joined_member_count': 7, 'm.invited_member_count': 1 } },
    ],
  });
  assert.deepEqual(changed.map((s) => s.roomId), ['!a:x', '!b:x']);
  assert.equal(changed[0]!.joinedMemberCount, 2);
  assert.equal(changed[1]!.joinedMemberCount, 7);
  assert.equal(changed[1]!.encrypted, true);
  // A no-op change reports nothing; an encryption event can never switch encryption off.
  assert.deepEqual(await a.apply({ rooms: [{ roomId: '!b:x', membership: 'join', state: [st('m.room.encryption', '', {})] }] }), []);
  const renamed = await a.apply({ rooms: [{ roomId: '!a:x', membership: 'join', state: [st('m.room.name', '', { name: 'Renamed' }), st('m.room.member', '@alice:x', { membership: 'leave' })] }] });
  assert.deepEqual(renamed.map((s) => [s.name, s.joinedMemberCount]), [['Renamed', 1]]);
  // While the store is open its WAL and shared-memory files exist too (a clean close folds them away).
  for (const f of ['cache.sqlite', 'cache.sqlite-wal', 'cache.sqlite-shm']) assert.equal(statSync(join(dataDir, f)).mode & 0o777, 0o600, f);
  await a.close();
  assert.equal(statSync(join(dataDir, 'cache.sqlite')).mode & 0o777, 0o600);
  assert.equal(statSync(dataDir).mode & 0o777, 0o700);

  const b = new CacheActor();
  await b.open({ dataDir, maxRoomsInMemory: 1 });
  assert.deepEqual((await b.summaries()).map((s) => s.roomId).sort(), ['!a:x', '!b:x']);
  const room = await b.getRoom('!a:x');
  assert.equal(room?.name, 'Renamed');
  assert.equal(room?.topic, 'Topic A');
  assert.equal(room?.creator, '@alice:x');
  assert.equal(room?.joinRule, 'invite');
  assert.deepEqual(room?.powerLevels, { users: { '@alice:x': 100 } });
  assert.deepEqual(room?.members.sort((x, y) => x.userId.localeCompare(y.userId)), [
    { userId: '@alice:x', displayName: null, avatarUrl: null, membership: 'leave' },
    { userId: '@bot:x', displayName: null, avatarUrl: null, membership: 'join' },
  ]);
  assert.equal((await b.getRoom('!b:x'))?.encrypted, true); // evicts !a:x from the 1-room LRU
  assert.equal((await b.getRoom('!a:x'))?.name, 'Renamed'); // and reads it back from disk
  assert.equal(await b.getRoom('!nope:x'), undefined);
  await b.close();
});

test('cache actor: room version, creators and history visibility; account data stored and read back after a restart', async (t) => {
  const dataDir = tempDataDir(t);
  const a = new CacheActor();
  await a.open({ dataDir, maxRoomsInMemory: 10 });
  await a.apply({
    rooms: [
      {
        roomId: '!v12:x',
        membership: 'join',
        state: [
          st('m.room.create', '', { room_version: '12', additional_creators: ['@carol:x', 7] }, '@alice:x'),
          st('m.room.history_visibility', '', { history_visibility: 'joined' }),
        ],
      },
      { roomId: '!old:x', membership: 'join', state: [st('m.room.create', '', { creator: '@bob:x' }, '@bob:x')] },
    ],
    accountData: [
      { roomId: null, type: 'm.direct', content: { '@a:x': ['!dm:x'] } },
      { roomId: '!v12:x', type: 'm.tag', content: { tags: { 'm.favourite': {} } } },
    ],
  });
  const v12 = (await a.getRoom('!v12:x'))!;
  assert.equal(v12.roomVersion, '12');
  assert.deepEqual(v12.creators, ['@alice:x', '@carol:x']);
  assert.equal(v12.historyVisibility, 'joined');
  const old = (await a.getRoom('!old:x'))!;
  assert.equal(old.roomVersion, '1', 'no room_version means version 1');
  assert.deepEqual(old.creators, ['@bob:x']);
  // Later account data replaces earlier of the same type.
  await a.apply({ rooms: [], accountData: [{ roomId: null, type: 'm.direct', content: { '@a:x': ['!dm:x', '!dm2:x'] } }] });
  await a.close();

  const b = new CacheActor();
  await b.open({ dataDir, maxRoomsInMemory: 10 });
  assert.deepEqual(await b.accountData(null, 'm.direct'), { '@a:x': ['!dm:x', '!dm2:x'] });
  assert.deepEqual(await b.accountData('!v12:x', 'm.tag'), { tags: { 'm.favourite': {} } });
  assert.equal(await b.accountData('!old:x', 'm.tag'), undefined);
  assert.equal(await b.accountData(null, 'm.tag'), undefined, 'room account data is not global');
  assert.deepEqual((await b.getRoom('!v12:x'))!.creators, ['@alice:x', '@carol:x']);
  await b.close();
});

test("cache actor: creators follow src/power.ts's rule per room version (content.creator only before v11, additional_creators only from v12)", async (t) => {
  const dataDir = tempDataDir(t);
  const a = new CacheActor();
  await a.open({ dataDir, maxRoomsInMemory: 10 });
  const create = (roomId: string, content: Record<string, unknown>) => ({ roomId, membership: 'join' as const, state: [st('m.room.create', '', content, '@alice:x')] });
  await a.apply({
    rooms: [
      create('!v11:x', { room_version: '11', creator: '@mallory:x', additional_creators: ['@carol:x'] }),
      create('!v12:x', { room_version: '12', creator: '@mallory:x', additional_creators: ['@carol:x'] }),
      create('!v10:x', { room_version: '10', creator: '@bob:x', additional_creators: ['@carol:x'] }),
    ],
  });
  const v11 = new RoomDetails((await a.getRoom('!v11:x'))!);
  assert.equal(v11.creator, '@alice:x', 'v11: the sender, whatever content.creator says');
  assert.deepEqual(v11.creators, ['@alice:x'], 'v11: no additional creators');
  // No power-levels event: the creator has 100, anyone else 0.
  assert.equal(v11.powerLevel('@mallory:x'), 0);
  assert.equal(v11.can('@mallory:x', 'state'), false);
  assert.equal(v11.powerLevel('@alice:x'), 100);
  const v12 = new RoomDetails((await a.getRoom('!v12:x'))!);
  assert.deepEqual(v12.creators, ['@alice:x', '@carol:x']);
  assert.equal(v12.powerLevel('@mallory:x'), 0);
  assert.equal(v12.powerLevel('@carol:x'), Infinity);
  const v10 = new RoomDetails((await a.getRoom('!v10:x'))!);
  assert.equal(v10.creator, '@bob:x', 'before v11: content.creator');
  assert.deepEqual(v10.creators, ['@bob:x']);
  assert.equal(v10.powerLevel('@alice:x'), 0);
  await a.close();
  // The same after a restart (read back from SQLite).
  const b = new CacheActor();
  await b.open({ dataDir, maxRoomsInMemory: 10 });
  assert.deepEqual((await b.getRoom('!v11:x'))!.creators, ['@alice:x']);
  assert.deepEqual((await b.getRoom('!v12:x'))!.creators, ['@alice:x', '@carol:x']);
  assert.equal((await b.getRoom('!v10:x'))!.roomVersion, '10');
  await b.close();
});

test('cache actor: a room saved by an earlier version (creator, additionalCreators, roomVersion instead of the create event; no member event IDs) keeps its creators', async (t) => {
  const dataDir = tempDataDir(t);
  const db = openDatabase(dataDir, 'cache.sqlite');
  // The tables as earlier versions made them.
  db.exec(`CREATE TABLE rooms (room_id TEXT PRIMARY KEY, data TEXT NOT NULL, summary TEXT NOT NULL);
    CREATE TABLE members (room_id TEXT NOT NULL, user_id TEXT NOT NULL, display_name TEXT, avatar_url TEXT, membership TEXT NOT NULL,
      PRIMARY KEY (room_id, user_id)) WITHOUT ROWID;`);
  db.prepare('INSERT INTO members (room_id, user_id, display_name, avatar_url, membership) VALUES (?, ?, ?, ?, ?)').run('!old:x', '@alice:x', 'Alice', null, 'join');
  const legacy = { membership: 'join', name: 'Old', creator: '@alice:x', additionalCreators: ['@carol:x'], roomVersion: '12', powerLevels: { users: {} } };
  db.prepare('INSERT INTO rooms (room_id, data, summary) VALUES (?, ?, ?)').run('!old:x', JSON.stringify(legacy), '{}');
  db.close();
  const b = new CacheActor();
  await b.open({ dataDir, maxRoomsInMemory: 10 });
  const room = new RoomDetails((await b.getRoom('!old:x'))!);
  assert.equal(room.roomVersion, '12');
  assert.deepEqual(room.creators, ['@alice:x', '@carol:x']);
  assert.equal(room.powerLevel('@carol:x'), Infinity);
  assert.deepEqual(room.member('@alice:x'), { userId: '@alice:x', displayName: 'Alice', avatarUrl: null, membership: 'join' });
  // A member event (with its ID) saves and redacts as in a new database.
  await b.apply({ rooms: [{ roomId: '!old:x', membership: 'join', state: [{ ...st('m.room.member', '@alice:x', { membership: 'join', displayname: 'A2' }), event_id: '$a2' }] }] });
  await b.apply({ rooms: [{ roomId: '!old:x', membership: 'join', state: [], redactions: ['$a2'] }] });
  assert.equal((await b.getRoom('!old:x'))!.members[0]!.displayName, null);
  await b.close();
});

/** Stripped state as an invite or knock brings it: claims nothing authenticates. */
const strippedClaims = (): MatrixEvent[] => [
  st('m.room.create', '', { room_version: '10', creator: '@mallory:x' }, '@mallory:x'),
  st('m.room.name', '', { name: 'X' }, '@mallory:x'),
  st('m.room.topic', '', { topic: 'Claimed topic' }, '@mallory:x'),
  st('m.room.avatar', '', { url: 'mxc://x/claimed' }, '@mallory:x'),
  st('m.room.canonical_alias', '', { alias: '#claimed:x' }, '@mallory:x'),
  st('m.room.join_rules', '', { join_rule: 'public' }, '@mallory:x'),
  st('m.room.history_visibility', '', { history_visibility: 'world_readable' }, '@mallory:x'),
  st('m.room.encryption', '', { algorithm: 'm.megolm.v1.aes-sha2' }, '@mallory:x'),
  st('m.room.power_levels', '', { users: { '@mallory:x': 100, '@bot:x': 100 }, users_default: 100 }, '@mallory:x'),
  st('m.room.member', '@mallory:x', { membership: 'join', displayname: 'Mallory' }, '@mallory:x'),
  st('m.room.member', '@bot:x', { membership: 'invite' }, '@mallory:x'),
];

const ACTIONS = ['send', 'state', 'invite', 'kick', 'ban', 'unban', 'redact', 'notify'] as const;

for (const membership of ['invite', 'knock'] as const) {
  test(`cache actor: ${membership} state is kept apart: only its display fields show, nothing reaches the room's state, and joining drops it`, async (t) => {
    const dataDir = tempDataDir(t);
    const a = new CacheActor();
    await a.open({ dataDir, maxRoomsInMemory: 1 });
    const [summary] = await a.apply({ rooms: [{ roomId: '!r:x', membership, state: strippedClaims() }] });
    // A claim of encryption is honoured while pending (it can only make the bot more careful); nothing else is.
    assert.deepEqual(summary, {
      roomId: '!r:x', name: 'X', topic: 'Claimed topic', canonicalAlias: '#claimed:x', avatarUrl: 'mxc://x/claimed', encrypted: true, joinedMemberCount: 0, invitedMemberCount: 0, membership,
    });
    const pending = async (actor: CacheActor) => {
      const info = (await actor.getRoom('!r:x'))!;
      assert.deepEqual(
        { ...info },
        {
          ...summary, creator: null, creators: [], roomVersion: null, historyVisibility: null, joinRule: null, powerLevels: null, members: [],
        },
      );
      const details = new RoomDetails(info);
      for (const user of ['@mallory:x', '@bot:x', '@anyone:x']) for (const kind of ACTIONS) assert.equal(details.can(user, kind), false, `${user} ${kind} while ${membership}`);
    };
    await pending(a);
    await a.close();
    // Kept across a restart.
    const b = new CacheActor();
    await b.open({ dataDir, maxRoomsInMemory: 1 });
    await pending(b);
    // Member events applied to a pending room (loadMembers) do not make it a joined one's state either.
    await b.apply({ rooms: [{ roomId: '!r:x', membership, state: [st('m.room.member', '@mallory:x', { membership: 'join' })] }] });
    await pending(b);
    // The join brings the full state: the room has no name, and nothing of the claims is left.
    const [joined] = await b.apply({
      rooms: [
        {
          roomId: '!r:x',
          membership: 'join',
          state: [st('m.room.create', '', { room_version: '10', creator: '@alice:x' }), st('m.room.member', '@alice:x', { membership: 'join' }), st('m.room.member', '@bot:x', { membership: 'join' })],
        },
      ],
    });
    assert.deepEqual(joined, { roomId: '!r:x', name: null, topic: null, canonicalAlias: null, avatarUrl: null, encrypted: false, joinedMemberCount: 2, invitedMemberCount: 0, membership: 'join' });
    const info = (await b.getRoom('!r:x'))!;
    assert.deepEqual([info.creators, info.powerLevels, info.joinRule, info.historyVisibility], [['@alice:x'], null, null, null]);
    assert.deepEqual(info.members.map((m) => m.userId).sort(), ['@alice:x', '@bot:x']);
    await b.close();
  });
}

test('cache actor: leaving a room the bot was invited to drops the invite state', async (t) => {
  const a = new CacheActor();
  await a.open({ dataDir: tempDataDir(t), maxRoomsInMemory: 10 });
  await a.apply({ rooms: [{ roomId: '!r:x', membership: 'invite', state: strippedClaims() }] });
  const [left] = await a.apply({ rooms: [{ roomId: '!r:x', membership: 'leave', state: [st('m.room.member', '@bot:x', { membership: 'leave' }, '@bot:x')] }] });
  assert.equal(left!.name, null);
  const info = (await a.getRoom('!r:x'))!;
  assert.deepEqual([info.name, info.topic, info.avatarUrl, info.canonicalAlias, info.powerLevels, info.encrypted], [null, null, null, null, null, false]);
  await a.close();
});

test('cache actor: an invited room saved by an earlier version (stripped state applied as state) keeps only its display fields, and the join leaves nothing of it', async (t) => {
  const dataDir = tempDataDir(t);
  const a = new CacheActor();
  await a.open({ dataDir, maxRoomsInMemory: 10 });
  await a.close();
  const db = openDatabase(dataDir, 'cache.sqlite');
  const legacy = { membership: 'invite', name: 'X', topic: null, encrypted: false, creator: '@mallory:x', roomVersion: '10', powerLevels: { users_default: 100 } };
  db.prepare('INSERT INTO rooms (room_id, data, summary) VALUES (?, ?, ?)').run('!old:x', JSON.stringify(legacy), '{}');
  db.prepare('INSERT INTO members (room_id, user_id, display_name, avatar_url, membership) VALUES (?, ?, ?, ?, ?)').run('!old:x', '@mallory:x', 'Mallory', null, 'join');
  db.close();
  const b = new CacheActor();
  await b.open({ dataDir, maxRoomsInMemory: 10 });
  const info = (await b.getRoom('!old:x'))!;
  assert.deepEqual([info.name, info.powerLevels, info.creators, info.members], ['X', null, [], []]);
  await b.apply({ rooms: [{ roomId: '!old:x', membership: 'join', state: [st('m.room.create', '', { room_version: '10', creator: '@alice:x' })] }] });
  const joined = (await b.getRoom('!old:x'))!;
  assert.deepEqual([joined.name, joined.powerLevels, joined.creators, joined.members], [null, null, ['@alice:x'], []]);
  await b.close();
});

/** A state event with an event ID, as sync delivers it. */
const sid = (id: string, type: string, stateKey: string, content: Record<string, unknown>): MatrixEvent => ({ ...st(type, stateKey, content), event_id: id });

test('cache actor: a redaction of a current state event applies its redacted content (per room version); other redactions change nothing', async (t) => {
  const dataDir = tempDataDir(t);
  const a = new CacheActor();
  await a.open({ dataDir, maxRoomsInMemory: 10 });
  const pl = { users: { '@alice:x': 100 }, users_default: 5, kick: 60, invite: 30, notifications: { room: 20 }, events: { 'm.room.topic': 70 } };
  const roomState = (version: string) => [
    sid(`$create${version}`, 'm.room.create', '', { room_version: version }),
    sid('$name1', 'm.room.name', '', { name: 'Old name' }),
    sid('$name2', 'm.room.name', '', { name: 'Name' }),
    sid('$topic', 'm.room.topic', '', { topic: 'Topic' }),
    sid('$avatar', 'm.room.avatar', '', { url: 'mxc://x/a' }),
    sid('$alias', 'm.room.canonical_alias', '', { alias: '#a:x' }),
    sid('$rules', 'm.room.join_rules', '', { join_rule: 'invite' }),
    sid('$hist', 'm.room.history_visibility', '', { history_visibility: 'joined' }),
    sid('$enc', 'm.room.encryption', '', { algorithm: 'm.megolm.v1.aes-sha2' }),
    sid('$pl', 'm.room.power_levels', '', pl),
    sid('$alice', 'm.room.member', '@alice:x', { membership: 'join', displayname: 'Alice', avatar_url: 'mxc://x/alice' }),
    sid('$bob', 'm.room.member', '@bob:x', { membership: 'join', displayname: 'Bob' }),
  ];
  await a.apply({ rooms: [{ roomId: '!v10:x', membership: 'join', state: roomState('10') }, { roomId: '!v11:x', membership: 'join', state: roomState('11') }] });
  // Not current (replaced, unknown, or a message): nothing changes.
  assert.deepEqual(await a.apply({ rooms: [{ roomId: '!v10:x', membership: 'join', state: [], redactions: ['$name1', '$nope', '$create10'] }] }), []);
  assert.equal((await a.getRoom('!v10:x'))!.name, 'Name');
  assert.equal((await a.getRoom('!v10:x'))!.roomVersion, '10', 'a create event is never redacted in the cache (Synapse refuses to)');

  const changed = await a.apply({
    rooms: ['!v10:x', '!v11:x'].map((roomId) => ({ roomId, membership: 'join' as const, state: [], redactions: ['$name2', '$topic', '$avatar', '$alias', '$rules', '$hist', '$enc', '$pl', '$alice'] })),
  });
  assert.deepEqual(changed.map((s) => [s.roomId, s.name, s.topic, s.avatarUrl, s.canonicalAlias, s.encrypted]), [
    ['!v10:x', null, null, null, null, true],
    ['!v11:x', null, null, null, null, true],
  ]);
  const kept = { users: { '@alice:x': 100 }, users_default: 5, kick: 60, events: { 'm.room.topic': 70 } };
  const v10 = (await a.getRoom('!v10:x'))!;
  assert.deepEqual(v10.powerLevels, kept, 'v10 power levels keep neither invite nor notifications');
  assert.deepEqual([v10.joinRule, v10.historyVisibility], ['invite', 'joined'], 'join rule and history visibility survive');
  assert.deepEqual(v10.members.find((m) => m.userId === '@alice:x'), { userId: '@alice:x', displayName: null, avatarUrl: null, membership: 'join' });
  assert.deepEqual(v10.members.find((m) => m.userId === '@bob:x')?.displayName, 'Bob');
  assert.deepEqual((await a.getRoom('!v11:x'))!.powerLevels, { ...kept, invite: 30 }, 'v11 power levels keep invite');
  await a.close();

  // Event IDs are kept on disk: a redaction after a restart still finds its target, members included.
  const b = new CacheActor();
  await b.open({ dataDir, maxRoomsInMemory: 1 });
  await b.apply({ rooms: [{ roomId: '!v10:x', membership: 'join', state: [sid('$topic2', 'm.room.topic', '', { topic: 'Again' })] }] });
  await b.getRoom('!v11:x'); // evicts !v10:x from memory
  const [again] = await b.apply({ rooms: [{ roomId: '!v10:x', membership: 'join', state: [], redactions: ['$topic2', '$bob'] }] });
  assert.equal(again!.topic, null);
  assert.equal((await b.getRoom('!v10:x'))!.members.find((m) => m.userId === '@bob:x')?.displayName, null);
  await b.close();
});

test('cache actor: a state event and its redaction in the same batch; a redaction in a pending room is ignored', async (t) => {
  const a = new CacheActor();
  await a.open({ dataDir: tempDataDir(t), maxRoomsInMemory: 10 });
  const [s] = await a.apply({ rooms: [{ roomId: '!r:x', membership: 'join', state: [sid('$c', 'm.room.create', '', { room_version: '11' }), sid('$n', 'm.room.name', '', { name: 'Brief' })], redactions: ['$n'] }] });
  assert.equal(s!.name, null);
  await a.apply({ rooms: [{ roomId: '!i:x', membership: 'invite', state: [st('m.room.name', '', { name: 'Claimed' })], redactions: ['$n'] }] });
  assert.equal((await a.getRoom('!i:x'))!.name, 'Claimed');
  await a.close();
});

test('cache actor: room-wide types with a non-empty state key are other state, not the room name, topic or power levels', async (t) => {
  const a = new CacheActor();
  await a.open({ dataDir: tempDataDir(t), maxRoomsInMemory: 10 });
  await a.apply({ rooms: [{ roomId: '!r:x', membership: 'join', state: [st('m.room.name', '', { name: 'Real' }), st('m.room.power_levels', '', { users: {} })] }] });
  await a.apply({ rooms: [{ roomId: '!r:x', membership: 'join', state: [st('m.room.name', 'x', { name: 'Other' }), st('m.room.power_levels', '@me:x', { users_default: 100 })] }] });
  const info = (await a.getRoom('!r:x'))!;
  assert.equal(info.name, 'Real');
  assert.deepEqual(info.powerLevels, { users: {} });
  await a.close();
});

test("cache actor: a batch applied with deferWrite is answered from memory at once and written by commit(), or before anything reads SQLite", async (t) => {
  const dataDir = tempDataDir(t);
  const rows = (table: string) => {
    const db = openDatabase(dataDir, 'cache.sqlite');
    try {
      return (db.prepare(`SELECT count(*) AS n FROM ${table}`).get() as { n: number }).n;
    } finally {
      db.close();
    }
  };
  const a = new CacheActor();
  await a.open({ dataDir, maxRoomsInMemory: 2 });
  const room = (id: string, name: string) => ({ roomId: id, membership: 'join' as const, state: [st('m.room.name', '', { name }), st('m.room.member', '@bot:x', { membership: 'join' })] });
  const changed = await a.apply({ rooms: [room('!a:x', 'A'), room('!b:x', 'B')], accountData: [{ roomId: null, type: 'm.x', content: { v: 1 } }] }, true);
  assert.deepEqual(changed.map((s) => s.name), ['A', 'B']);
  assert.equal(rows('rooms'), 0, 'held: nothing written yet');
  assert.equal((await a.getRoom('!b:x'))?.name, 'B', 'answered from memory');
  await a.commit();
  assert.deepEqual([rows('rooms'), rows('members'), rows('account_data')], [2, 2, 1], 'written whole by commit()');
  await a.commit(); // nothing held: a no-op

  // Held again, then a room not in memory is read: what is held goes to SQLite first, in one transaction.
  await a.apply({ rooms: [room('!a:x', 'A2')] }, true);
  assert.equal(await a.getRoom('!c:x'), undefined);
  assert.equal(rows('rooms'), 2);
  const b = new CacheActor();
  await b.open({ dataDir, maxRoomsInMemory: 2 });
  assert.equal((await b.getRoom('!a:x'))?.name, 'A2', 'the held change was written before the read');
  await b.close();

  // A batch larger than memory holds is written at once (held rooms must stay in memory until written).
  await a.apply({ rooms: [room('!c:x', 'C'), room('!d:x', 'D'), room('!e:x', 'E')] }, true);
  assert.equal(rows('rooms'), 5);
  // Held at close: written before the database closes.
  await a.apply({ rooms: [room('!f:x', 'F')] }, true);
  await a.close();
  assert.equal(rows('rooms'), 6);
  const c = new CacheActor();
  await c.open({ dataDir, maxRoomsInMemory: 10 });
  assert.deepEqual((await c.summaries()).map((s) => s.name).sort(), ['A2', 'B', 'C', 'D', 'E', 'F']);
  assert.deepEqual(await c.accountData(null, 'm.x'), { v: 1 });
  await c.close();
});

test('cache actor: counts the rooms it makes encrypted in the shared counter main trusts "not encrypted" answers by', async (t) => {
  const counter = new Int32Array(new SharedArrayBuffer(4));
  const a = new CacheActor();
  await a.open({ dataDir: tempDataDir(t), maxRoomsInMemory: 1, encryptedRooms: counter });
  const count = (): number => Atomics.load(counter, 0);
  await a.apply({ rooms: [{ roomId: '!plain:x', membership: 'join', state: [st('m.room.name', '', { name: 'P' })] }] });
  assert.equal(count(), 0, 'a plain room is not counted');
  // Joined already encrypted, and made encrypted later (evicted from memory meanwhile: maxRoomsInMemory is 1).
  await a.apply({ rooms: [{ roomId: '!enc:x', membership: 'join', state: [st('m.room.encryption', '', { algorithm: 'm.megolm.v1.aes-sha2' })] }] });
  assert.equal(count(), 1);
  await a.apply({ rooms: [{ roomId: '!plain:x', membership: 'join', state: [st('m.room.encryption', '', { algorithm: 'm.megolm.v1.aes-sha2' })] }] });
  assert.equal(count(), 2);
  // Other changes to encrypted rooms, a repeated encryption event, and a deferred (held) batch that encrypts a room.
  await a.apply({ rooms: [{ roomId: '!enc:x', membership: 'join', state: [st('m.room.name', '', { name: 'E' }), st('m.room.encryption', '', { algorithm: 'x' })] }] });
  assert.equal(count(), 2);
  await a.apply({ rooms: [{ roomId: '!held:x', membership: 'join', state: [st('m.room.encryption', '', { algorithm: 'm.megolm.v1.aes-sha2' })] }] }, true);
  assert.equal(count(), 3);
  assert.equal((await a.getRoom('!plain:x'))?.encrypted, true);
  await a.close();
});
