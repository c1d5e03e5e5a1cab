/**
 * The redaction algorithm against the spec's keep-lists, per room version:
 * - v1 (https://spec.matrix.org/latest/rooms/v1/#redactions): member `membership`; create `creator`; join_rules
 *   `join_rule`; power_levels `ban`, `events`, `events_default`, `kick`, `redact`, `state_default`, `users`,
 *   `users_default`; aliases `aliases`; history_visibility `history_visibility`.
 * - v6: `m.room.aliases` loses its special case. v8: join_rules also keeps `allow`. v9: member also keeps
 *   `join_authorised_via_users_server`.
 * - v11 (https://spec.matrix.org/latest/rooms/v11/#redactions): create keeps all of its content; power_levels also
 *   keeps `invite`; redaction keeps `redacts`; member keeps only `signed` of `third_party_invite`.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { redactContent, redactedEventId } from '../../src/redaction.ts';

const FULL_PL = {
  ban: 50, events: { 'm.room.name': 50 }, events_default: 0, kick: 50, redact: 50, state_default: 50, users: { '@a:x': 100 }, users_default: 0,
  invite: 25, notifications: { room: 50 }, historical: 100,
};
const PL_KEPT = { ban: 50, events: { 'm.room.name': 50 }, events_default: 0, kick: 50, redact: 50, state_default: 50, users: { '@a:x': 100 }, users_default: 0 };
const MEMBER = {
  membership: 'join', displayname: 'A', avatar_url: 'mxc://x/a', reason: 'r', is_direct: true, join_authorised_via_users_server: '@s:x',
  third_party_invite: { display_name: 'a@x', signed: { mxid: '@a:x', token: 't', signatures: {} } },
};
const CREATE = { creator: '@a:x', room_version: '10', 'm.federate': false, predecessor: { room_id: '!old:x' }, type: 'm.space', additional_creators: ['@b:x'] };

test('v1–v5: the original keep-lists, m.room.aliases included', () => {
  for (const v of [null, '1', '3', '5']) {
    assert.deepEqual(redactContent('m.room.member', MEMBER, v), { membership: 'join' }, `v${v}`);
    assert.deepEqual(redactContent('m.room.create', CREATE, v), { creator: '@a:x' });
    assert.deepEqual(redactContent('m.room.join_rules', { join_rule: 'restricted', allow: [{ type: 'm.room_membership' }] }, v), { join_rule: 'restricted' });
    assert.deepEqual(redactContent('m.room.power_levels', FULL_PL, v), PL_KEPT);
    assert.deepEqual(redactContent('m.room.aliases', { aliases: ['#a:x'], other: 1 }, v), { aliases: ['#a:x'] });
    assert.deepEqual(redactContent('m.room.history_visibility', { history_visibility: 'joined', x: 1 }, v), { history_visibility: 'joined' });
    assert.deepEqual(redactContent('m.room.redaction', { redacts: '$e', reason: 'r' }, v), {});
  }
});

test('every other type keeps nothing: name, topic, avatar, canonical alias, encryption, messages, custom state', () => {
  for (const v of ['1', '10', '11', '12']) {
    assert.deepEqual(redactContent('m.room.name', { name: 'N' }, v), {});
    assert.deepEqual(redactContent('m.room.topic', { topic: 'T', 'm.topic': [] }, v), {});
    assert.deepEqual(redactContent('m.room.avatar', { url: 'mxc://x/y', info: {} }, v), {});
    assert.deepEqual(redactContent('m.room.canonical_alias', { alias: '#a:x', alt_aliases: [] }, v), {});
    assert.deepEqual(redactContent('m.room.encryption', { algorithm: 'm.megolm.v1.aes-sha2' }, v), {});
    assert.deepEqual(redactContent('m.room.message', { body: 'secret', msgtype: 'm.text' }, v), {});
    assert.deepEqual(redactContent('org.example.state', { membership: 'join', users: {} }, v), {});
  }
});

test('v6: m.room.aliases keeps nothing; v8: join_rules keeps allow; v9 and v10: member keeps join_authorised_via_users_server', () => {
  assert.deepEqual(redactContent('m.room.aliases', { aliases: ['#a:x'] }, '6'), {});
  assert.deepEqual(redactContent('m.room.join_rules', { join_rule: 'restricted', allow: [{ type: 'm.room_membership' }], x: 1 }, '7'), { join_rule: 'restricted' });
  for (const v of ['8', '9', '10']) {
    assert.deepEqual(redactContent('m.room.join_rules', { join_rule: 'restricted', allow: [{ type: 'm.room_membership' }], x: 1 }, v), {
      join_rule: 'restricted',
      allow: [{ type: 'm.room_membership' }],
    });
  }
  assert.deepEqual(redactContent('m.room.member', MEMBER, '8'), { membership: 'join' });
  for (const v of ['9', '10']) assert.deepEqual(redactContent('m.room.member', MEMBER, v), { membership: 'join', join_authorised_via_users_server: '@s:x' });
  assert.deepEqual(redactContent('m.room.power_levels', FULL_PL, '10'), PL_KEPT, 'invite is only kept from v11');
  assert.deepEqual(redactContent('m.room.create', CREATE, '10'), { creator: '@a:x' });
});

test('v11 and later: create keeps everything, power levels keep invite, redaction keeps redacts, third_party_invite keeps signed', () => {
  for (const v of ['11', '12', 'org.example.future']) {
    assert.deepEqual(redactContent('m.room.create', CREATE, v), CREATE);
    assert.deepEqual(redactContent('m.room.power_levels', FULL_PL, v), { ...PL_KEPT, invite: 25 });
    assert.deepEqual(redactContent('m.room.redaction', { redacts: '$e', reason: 'r' }, v), { redacts: '$e' });
    assert.deepEqual(redactContent('m.room.member', MEMBER, v), {
      membership: 'join',
      join_authorised_via_users_server: '@s:x',
      third_party_invite: { signed: { mxid: '@a:x', token: 't', signatures: {} } },
    });
    assert.deepEqual(redactContent('m.room.member', { membership: 'invite', third_party_invite: { display_name: 'a' } }, v), { membership: 'invite', third_party_invite: {} });
    assert.deepEqual(redactContent('m.room.aliases', { aliases: ['#a:x'] }, v), {});
  }
});

test('absent keys stay absent; the input is not changed', () => {
  const pl = { users: { '@a:x': 100 }, notifications: { room: 0 } };
  const copy = structuredClone(pl);
  assert.deepEqual(redactContent('m.room.power_levels', pl, '11'), { users: { '@a:x': 100 } });
  assert.deepEqual(pl, copy);
  assert.deepEqual(redactContent('m.room.member', {}, '11'), {});
});

test('the redacted event ID: top-level redacts (v1–v10, set by the server), else content.redacts (v11)', () => {
  assert.equal(redactedEventId({ type: 'm.room.redaction', redacts: '$top', content: {} }), '$top');
  assert.equal(redactedEventId({ type: 'm.room.redaction', content: { redacts: '$inner' } }), '$inner');
  // In v1–v10 content is the sender's own: a content.redacts there must not override what the server authorised.
  assert.equal(redactedEventId({ type: 'm.room.redaction', redacts: '$top', content: { redacts: '$forged' } }), '$top');
  assert.equal(redactedEventId({ type: 'm.room.redaction', content: { redacts: 5 } }), null);
  assert.equal(redactedEventId({ type: 'm.room.redaction', content: {} }), null);
  assert.equal(redactedEventId({ type: 'm.room.message', redacts: '$x', content: { redacts: '$y' } }), null, 'only redaction events redact');
});
