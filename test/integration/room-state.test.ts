/**
 * Room state against a real Synapse: what an invite and a knock show before the bot is in the room (stripped
 * state, unverified: display fields only, no permissions), the invite's event ID, knocks in the sync batch,
 * redacted state events, creators in v11 rooms, and the level state events need in a room without power levels.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { after, before, test } from 'node:test';
import { promisify } from 'node:util';
import type { Invite, RoomDetails } from '../../src/index.ts';
import { can, powerContext } from '../../src/power.ts';
import { processSync } from '../../src/sync/process.ts';
import { Peer } from '../harness/peer.ts';
import { ensureSynapseInstalled, testHomeserver, type Homeserver } from '../harness/synapse.ts';
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

/**
 * Runs Synapse's own event auth (synapse.event_auth, from the installed Synapse the harness serves) on a room
 * without an m.room.power_levels event: a create event, the creator's and a user's joins, public join rules.
 * Prints, per room version, whether the creator and the user may send a state event (m.room.name) and a message.
 */
const AUTH_WITHOUT_POWER_LEVELS = `
import json, sys
from synapse.api.room_versions import KNOWN_ROOM_VERSIONS
from synapse.events import make_event_from_dict
from synapse.event_auth import check_state_dependent_auth_rules
from synapse.api.errors import AuthError
creator, user = '@creator:localhost', '@user:localhost'
def run(version):
    rv = KNOWN_ROOM_VERSIONS[version]
    n = [0]
    def ev(type, sender, content, state_key=None):
        n[0] += 1
        d = {'type': type, 'sender': sender, 'room_id': '!r:localhost', 'content': content, 'auth_events': [], 'prev_events': [],
             'depth': n[0], 'origin_server_ts': n[0], 'hashes': {'sha256': 'x'}, 'signatures': {}}
        if state_key is not None: d['state_key'] = state_key
        if rv.event_format == 1: d['event_id'] = '$e%d:localhost' % n[0]
        return make_event_from_dict(d, rv)
    create = {'room_version': version}
    if not rv.implicit_room_creator: create['creator'] = creator
    state = [ev('m.room.create', creator, create, ''), ev('m.room.member', creator, {'membership': 'join'}, creator),
             ev('m.room.member', user, {'membership': 'join'}, user), ev('m.room.join_rules', creator, {'join_rule': 'public'}, '')]
    out = {}
    for who, sender in (('creator', creator), ('user', user)):
        for kind, type, key in (('state', 'm.room.name', ''), ('send', 'm.room.message', None)):
            try:
                check_state_dependent_auth_rules(ev(type, sender, {}, key), state)
                out[who + ' ' + kind] = 'allowed'
            except AuthError as e:
                out[who + ' ' + kind] = e.msg
    return out
print(json.dumps({v: run(v) for v in sys.argv[1:]}))
`;

test("no m.room.power_levels event: state events need 50 (Synapse's own auth code agrees with can()), messages 0", async () => {
  // No client API makes a room without a power-levels event (createRoom always sends one), so the installed
  // Synapse's event auth is run directly on such a room's state.
  const python = await ensureSynapseInstalled();
  const versions = ['1', '10', '11'];
  const { stdout } = await promisify(execFile)(python, ['-c', AUTH_WITHOUT_POWER_LEVELS, ...versions]);
  const synapse = JSON.parse(stdout) as Record<string, Record<string, string>>;
  for (const v of versions) {
    const ctx = powerContext({ sender: '@creator:localhost', content: v === '11' ? { room_version: v } : { room_version: v, creator: '@creator:localhost' } }, null);
    const ours = (u: string, kind: 'state' | 'send') => can(ctx, u, kind === 'state' ? { kind, eventType: 'm.room.name' } : { kind, eventType: 'm.room.message' });
    for (const [who, u] of [['creator', '@creator:localhost'], ['user', '@user:localhost']] as const) {
      for (const kind of ['state', 'send'] as const) {
        const verdict = synapse[v]![`${who} ${kind}`]!;
        assert.equal(ours(u, kind), verdict === 'allowed', `v${v}: ${who} ${kind}: Synapse says ${verdict}`);
      }
    }
    assert.match(synapse[v]!['user state']!, /user_level \(0\) < send_level \(50\)/, `v${v}: Synapse requires 50 for state events`);
  }
});
