/**
 * Power levels against the spec. Sections cited:
 * - [PL]   Client-Server API, "m.room.power_levels" (https://spec.matrix.org/latest/client-server-api/#mroompower_levels)
 * - [AUTH] Room versions, "Authorization rules" (https://spec.matrix.org/latest/rooms/v11/#authorization-rules; v12 adds
 *          creators, https://spec.matrix.org/latest/rooms/v12/#authorization-rules)
 * - [V12]  Room version 12, "Client considerations" / MSC4289 (privileged room creators)
 * - [STR]  Room versions 1–9, "m.room.power_levels events accept values as strings"
 * - [FLT]  Room versions 1–5, "m.room.power_levels events accept values as floats"
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { type Action, type PowerContext, can, creatorsArePrivileged, normalizePowerLevels, parseLevel, powerContext, powerLevel } from '../../src/power.ts';

const CREATOR = '@creator:example.org';
const ALICE = '@alice:example.org';
const BOB = '@bob:example.org';
const MOD = '@mod:example.org';

function ctx(powerLevels: Record<string, unknown> | null, roomVersion: string | null = '10', creators = [CREATOR]): PowerContext {
  return { powerLevels, creators, roomVersion };
}

test('[PL] no m.room.power_levels event: the creator has 100, everyone else 0', () => {
  const c = ctx(null);
  assert.equal(powerLevel(c, CREATOR), 100);
  assert.equal(powerLevel(c, ALICE), 0);
  assert.equal(powerLevel(ctx(null, null), CREATOR), 100, 'room_version absent means "1"');
});

test('[PL] no event: events_default 0, state_default 50 (MSC1304; matrix-spec#1479 removed the old "0" text), kick/ban/redact 50, invite 0, notifications.room 50', () => {
  const c = ctx(null);
  assert.equal(can(c, ALICE, { kind: 'send', eventType: 'm.room.message' }), true);
  assert.equal(can(c, ALICE, { kind: 'state', eventType: 'm.room.name' }), false);
  assert.equal(can(c, CREATOR, { kind: 'state', eventType: 'm.room.name' }), true);
  assert.equal(can(c, ALICE, { kind: 'invite' }), true);
  assert.equal(can(c, ALICE, { kind: 'kick', target: BOB }), false);
  assert.equal(can(c, CREATOR, { kind: 'kick', target: ALICE }), true);
  assert.equal(can(c, CREATOR, { kind: 'ban', target: ALICE }), true);
  assert.equal(can(c, ALICE, { kind: 'redact' }), false);
  assert.equal(can(c, ALICE, { kind: 'notify' }), false);
  assert.equal(can(c, CREATOR, { kind: 'notify' }), true);
  const n = normalizePowerLevels(null);
  assert.deepEqual({ ...n, users: { ...n.users }, events: { ...n.events }, notifications: { ...n.notifications } }, {
    users: {}, users_default: 0, events: {}, events_default: 0, state_default: 50, ban: 50, kick: 50, redact: 50, invite: 0, notifications: { room: 50 },
  });
});

test('[PL] an event with no keys: users_default 0 for everyone, the creator included (the 100 is only for "no event")', () => {
  const c = ctx({});
  assert.equal(powerLevel(c, CREATOR), 0);
  assert.equal(powerLevel(c, ALICE), 0);
  assert.equal(can(c, CREATOR, { kind: 'state', eventType: 'm.room.topic' }), false);
});

test('[PL] explicit levels: users map, then users_default', () => {
  const c = ctx({ users: { [CREATOR]: 100, [MOD]: 50 }, users_default: 10 });
  assert.equal(powerLevel(c, CREATOR), 100);
  assert.equal(powerLevel(c, MOD), 50);
  assert.equal(powerLevel(c, ALICE), 10);
});

test('[PL][AUTH] required level of an event type: events[type] overrides events_default (messages) and state_default (state)', () => {
  const c = ctx({
    users: { [MOD]: 50, [ALICE]: 20 },
    events_default: 10,
    state_default: 40,
    events: { 'm.reaction': 30, 'm.room.topic': 0, 'm.room.power_levels': 100 },
  });
  assert.equal(can(c, BOB, { kind: 'send', eventType: 'm.room.message' }), false, 'bob 0 < events_default 10');
  assert.equal(can(c, ALICE, { kind: 'send', eventType: 'm.room.message' }), true);
  assert.equal(can(c, ALICE, { kind: 'send', eventType: 'm.reaction' }), false, 'events override: 30');
  assert.equal(can(c, MOD, { kind: 'send', eventType: 'm.reaction' }), true);
  assert.equal(can(c, ALICE, { kind: 'state', eventType: 'm.room.name' }), false, 'state_default 40');
  assert.equal(can(c, MOD, { kind: 'state', eventType: 'm.room.name' }), true);
  assert.equal(can(c, BOB, { kind: 'state', eventType: 'm.room.topic' }), true, 'events override: 0');
  assert.equal(can(c, MOD, { kind: 'state', eventType: 'm.room.power_levels' }), false, 'events override: 100');
});

test('[PL] state vs message defaults when the keys are missing: state_default 50, events_default 0', () => {
  const c = ctx({ users: { [MOD]: 50, [ALICE]: 49 } });
  assert.equal(can(c, BOB, { kind: 'send', eventType: 'com.example.custom' }), true);
  assert.equal(can(c, ALICE, { kind: 'state', eventType: 'com.example.custom' }), false);
  assert.equal(can(c, MOD, { kind: 'state', eventType: 'com.example.custom' }), true);
});

test('[AUTH] a state key starting with "@" must be the sender\'s own', () => {
  const c = ctx({ users: { [MOD]: 50 } });
  assert.equal(can(c, MOD, { kind: 'state', eventType: 'com.example.status', stateKey: MOD }), true);
  assert.equal(can(c, MOD, { kind: 'state', eventType: 'com.example.status', stateKey: ALICE }), false);
  assert.equal(can(c, MOD, { kind: 'state', eventType: 'com.example.status', stateKey: 'x' }), true);
});

test('[AUTH] m.room.member goes by the membership rules (own profile yes), m.room.third_party_invite by the invite level', () => {
  const c = ctx({ users: { [MOD]: 50 }, events: { 'm.room.member': 100 }, invite: 50 });
  assert.equal(can(c, ALICE, { kind: 'state', eventType: 'm.room.member', stateKey: ALICE }), true);
  assert.equal(can(c, MOD, { kind: 'state', eventType: 'm.room.member', stateKey: ALICE }), false);
  assert.equal(can(c, MOD, { kind: 'state', eventType: 'm.room.third_party_invite', stateKey: 'tok' }), true);
  assert.equal(can(c, ALICE, { kind: 'state', eventType: 'm.room.third_party_invite', stateKey: 'tok' }), false);
});

test('[AUTH] invite: level >= invite (default 0)', () => {
  assert.equal(can(ctx({}), ALICE, { kind: 'invite' }), true);
  const c = ctx({ users: { [MOD]: 50 }, invite: 50 });
  assert.equal(can(c, ALICE, { kind: 'invite' }), false);
  assert.equal(can(c, MOD, { kind: 'invite' }), true);
});

test('[AUTH] kick and ban: level >= kick/ban AND the target strictly below the actor', () => {
  const c = ctx({ users: { [CREATOR]: 100, [MOD]: 50, '@mod2:example.org': 50, [ALICE]: 20 }, kick: 20, ban: 50 });
  assert.equal(can(c, MOD, { kind: 'kick', target: ALICE }), true);
  assert.equal(can(c, MOD, { kind: 'kick', target: '@mod2:example.org' }), false, 'equal level');
  assert.equal(can(c, MOD, { kind: 'kick', target: CREATOR }), false, 'higher level');
  assert.equal(can(c, ALICE, { kind: 'kick', target: BOB }), true, 'kick 20, bob 0');
  assert.equal(can(c, ALICE, { kind: 'ban', target: BOB }), false, 'ban 50');
  assert.equal(can(c, MOD, { kind: 'ban', target: ALICE }), true);
  assert.equal(can(c, MOD, { kind: 'ban', target: '@mod2:example.org' }), false);
  assert.equal(can(c, CREATOR, { kind: 'ban', target: MOD }), true);
});

test('[AUTH] leaving is always allowed ("kick" oneself); banning oneself never is', () => {
  const c = ctx({ users: { [MOD]: 50 } });
  assert.equal(can(c, ALICE, { kind: 'kick', target: ALICE }), true);
  assert.equal(can(c, MOD, { kind: 'ban', target: MOD }), false);
});

test('[AUTH] unban (leave of a banned user): level >= ban AND >= kick AND the target strictly below', () => {
  const c = ctx({ users: { [CREATOR]: 100, [MOD]: 50, [ALICE]: 60, '@kicker:example.org': 70 }, kick: 70, ban: 50 });
  assert.equal(can(c, MOD, { kind: 'unban', target: BOB }), false, 'mod has ban 50 but not kick 70');
  assert.equal(can(c, MOD, { kind: 'ban', target: BOB }), true);
  assert.equal(can(c, '@kicker:example.org', { kind: 'unban', target: BOB }), true);
  assert.equal(can(c, '@kicker:example.org', { kind: 'unban', target: CREATOR }), false, 'target above');
  const lowKick = ctx({ users: { [MOD]: 50 }, kick: 0, ban: 60 });
  assert.equal(can(lowKick, MOD, { kind: 'unban', target: BOB }), false, 'kick 0 but ban 60');
  assert.equal(can(lowKick, MOD, { kind: 'unban', target: MOD }), false, 'a banned user cannot unban themselves');
});

test('[PL] redact: own events need only the right to send m.room.redaction; others\' also need the redact level', () => {
  const c = ctx({ users: { [MOD]: 50 }, redact: 50 });
  assert.equal(can(c, ALICE, { kind: 'redact', ownEvent: true }), true);
  assert.equal(can(c, ALICE, { kind: 'redact' }), false);
  assert.equal(can(c, MOD, { kind: 'redact' }), true);
  const locked = ctx({ users: { [MOD]: 50 }, redact: 0, events: { 'm.room.redaction': 50 } });
  assert.equal(can(locked, ALICE, { kind: 'redact', ownEvent: true }), false, 'events[m.room.redaction] gates own redactions too');
  assert.equal(can(locked, ALICE, { kind: 'redact' }), false, 'and others\', even with redact 0');
  assert.equal(can(locked, MOD, { kind: 'redact' }), true);
  assert.equal(can(ctx({ events_default: 10 }), ALICE, { kind: 'redact', ownEvent: true }), false, 'events_default applies to m.room.redaction');
});

test('[PL] notify: notifications.room defaults to 50; other keys also default to 50', () => {
  const c = ctx({ users: { [MOD]: 50, [ALICE]: 10 }, notifications: { room: 10 } });
  assert.equal(can(c, ALICE, { kind: 'notify' }), true);
  assert.equal(can(c, BOB, { kind: 'notify', key: 'room' }), false);
  assert.equal(can(c, ALICE, { kind: 'notify', key: 'com.example.ping' }), false);
  assert.equal(can(c, MOD, { kind: 'notify', key: 'com.example.ping' }), true);
});

test('[STR] string levels in old rooms: integers with sign, leading zeroes and surrounding whitespace', () => {
  const c = ctx(
    { users: { [MOD]: ' 0050 ', [ALICE]: '+20', [BOB]: '-1' }, users_default: '5', ban: '050', kick: '20', events_default: '0', state_default: '60', events: { 'm.room.name': '20' }, notifications: { room: ' 20' } },
    '5',
  );
  assert.equal(powerLevel(c, MOD), 50);
  assert.equal(powerLevel(c, ALICE), 20);
  assert.equal(powerLevel(c, BOB), -1);
  assert.equal(powerLevel(c, '@x:example.org'), 5);
  assert.equal(can(c, MOD, { kind: 'ban', target: ALICE }), true);
  assert.equal(can(c, ALICE, { kind: 'ban', target: BOB }), false);
  assert.equal(can(c, ALICE, { kind: 'state', eventType: 'm.room.name' }), true);
  assert.equal(can(c, ALICE, { kind: 'state', eventType: 'm.room.topic' }), false);
  assert.equal(can(c, ALICE, { kind: 'notify' }), true);
});

test('[FLT] float levels (room versions 1–5) are truncated', () => {
  assert.equal(parseLevel(50.57), 50);
  assert.equal(parseLevel(5.114698e4), 51146);
  assert.equal(parseLevel(-0.5), 0);
  assert.ok(!Object.is(parseLevel(-0.5), -0));
});

test('garbage values fall back to the defaults', () => {
  for (const junk of ['abc', '50.5', '', ' ', '1e3', '0x10', true, null, {}, [50], NaN, Infinity, '9'.repeat(400)]) {
    assert.equal(parseLevel(junk), undefined, `parseLevel(${String(junk)})`);
  }
  const c = ctx({ users: { [MOD]: 'lots', [ALICE]: 30 }, users_default: 'x', ban: true, kick: null, events: 'nope', state_default: [1], notifications: 7 });
  assert.equal(powerLevel(c, MOD), 0, 'a garbage users entry falls back to users_default, itself garbage → 0');
  assert.equal(powerLevel(c, ALICE), 30);
  const pl = normalizePowerLevels(c.powerLevels);
  assert.equal(pl.ban, 50);
  assert.equal(pl.kick, 50);
  assert.equal(pl.state_default, 50);
  assert.equal(pl.notifications['room'], 50);
  assert.deepEqual(Object.keys(pl.events), []);
  assert.equal(normalizePowerLevels(['not', 'an', 'object'] as unknown as Record<string, unknown>).users_default, 0);
});

test('prototype keys in the maps are not levels', () => {
  const c = ctx({ users: {}, events: {} });
  assert.equal(powerLevel(c, 'constructor'), 0);
  assert.equal(can(c, ALICE, { kind: 'send', eventType: 'constructor' }), true);
  assert.equal(can(c, ALICE, { kind: 'notify', key: 'toString' }), false);
  const proto = ctx(JSON.parse('{"users":{"__proto__":100}}') as Record<string, unknown>);
  assert.equal(powerLevel(proto, '__proto__'), 100);
  assert.equal(powerLevel(proto, ALICE), 0);
});

test('[V12] privileged creators: infinite power whatever the users map says, creators include additional_creators', () => {
  const second = '@second:example.org';
  const c = ctx({ users: { [CREATOR]: 0, [MOD]: 100 }, ban: 100, kick: 100, events: { 'm.room.tombstone': 150 } }, '12', [CREATOR, second]);
  assert.equal(powerLevel(c, CREATOR), Infinity);
  assert.equal(powerLevel(c, second), Infinity);
  assert.equal(powerLevel(c, MOD), 100);
  assert.equal(can(c, CREATOR, { kind: 'state', eventType: 'm.room.tombstone' }), true);
  assert.equal(can(c, CREATOR, { kind: 'ban', target: MOD }), true);
  assert.equal(can(c, MOD, { kind: 'kick', target: CREATOR }), false, 'nobody outranks a creator');
  assert.equal(can(c, CREATOR, { kind: 'kick', target: second }), false, 'a creator cannot kick another creator');
  assert.equal(can(c, CREATOR, { kind: 'ban', target: second }), false);
  const none = ctx(null, '12', [CREATOR]);
  assert.equal(powerLevel(none, CREATOR), Infinity);
  assert.equal(powerLevel(none, ALICE), 0);
});

test('[V12] which room versions privilege creators: 12 and later integers, org.matrix.hydra.11, org.matrix.msc4242.12', () => {
  for (const v of ['12', '13', '42', 'org.matrix.hydra.11', 'org.matrix.msc4242.12']) assert.equal(creatorsArePrivileged(v), true, v);
  for (const v of [null, '1', '9', '10', '11', 'org.matrix.msc3757.11', 'org.matrix.msc4291.11', '012', 'twelve', '']) assert.equal(creatorsArePrivileged(v), false, String(v));
});

test('[PL] non-privileged creators (v10, v11): 100 only without a power-levels event, otherwise the users map decides', () => {
  for (const v of ['10', '11']) {
    assert.equal(powerLevel(ctx(null, v), CREATOR), 100);
    const c = ctx({ users: { [MOD]: 100 } }, v);
    assert.equal(powerLevel(c, CREATOR), 0, `v${v}: a creator missing from users has users_default`);
    assert.equal(can(c, MOD, { kind: 'kick', target: CREATOR }), true, `v${v}: a creator can be kicked`);
    assert.equal(powerLevel(ctx({ users: { [CREATOR]: 100 } }, v), CREATOR), 100);
  }
});

test('powerContext: creators from the create event per room version', () => {
  const create = (content: Record<string, unknown>, sender = CREATOR) => ({ sender, content });
  assert.deepEqual(powerContext(create({ creator: '@legacy:example.org' }), null), { powerLevels: null, creators: ['@legacy:example.org'], roomVersion: null });
  assert.deepEqual(powerContext(create({ room_version: '10', creator: '@legacy:example.org' }), null).creators, ['@legacy:example.org']);
  assert.deepEqual(powerContext(create({ room_version: '10' }), null).creators, [CREATOR], 'no creator field: the sender');
  assert.deepEqual(powerContext(create({ room_version: '11', creator: '@ignored:example.org' }), null).creators, [CREATOR], 'v11: the sender');
  assert.deepEqual(powerContext(create({ room_version: '11', additional_creators: [ALICE] }), null).creators, [CREATOR], 'no additional creators before v12');
  assert.deepEqual(powerContext(create({ room_version: '12', additional_creators: [ALICE, 7, CREATOR, BOB] }), null).creators, [CREATOR, ALICE, BOB]);
  assert.deepEqual(powerContext(create({ room_version: 'org.matrix.hydra.11', additional_creators: 'x' }), null).creators, [CREATOR]);
  assert.deepEqual(powerContext(null, { users: {} }), { powerLevels: { users: {} }, creators: [], roomVersion: null });
  const v12 = powerContext(create({ room_version: '12', additional_creators: [ALICE] }), { users: { [MOD]: 100 } });
  assert.equal(powerLevel(v12, ALICE), Infinity);
});

test('an unknown action kind (untyped callers) is refused', () => {
  assert.equal(can(ctx(null), CREATOR, { kind: 'destroy' } as unknown as Action), false);
});
