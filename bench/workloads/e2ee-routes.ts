/**
 * The endpoints matrix-js-sdk asks a homeserver for besides /sync and the key endpoints (which the replay server
 * answers itself), for the E2EE workload's js-sdk contender; loaded into the replay server's process through its
 * `routes` option. The answers are what Synapse 1.163 gives a fresh account (captured once from a test server),
 * for the bench's bot user `@bot:bench`.
 * @module
 */
import type { IncomingMessage, ServerResponse } from 'node:http';

const USER = '@bot:bench';
const LOCALPART = 'bot';

type Json = Record<string, unknown>;

const match = (key: string, pattern: string): Json => ({ kind: 'event_match', key, pattern });
const notify = (highlight: boolean | null, sound?: string): unknown[] => [
  'notify',
  highlight === null ? { set_tweak: 'highlight' } : { set_tweak: 'highlight', value: highlight },
  ...(sound ? [{ set_tweak: 'sound', value: sound }] : []),
];
const rule = (rule_id: string, conditions: Json[], actions: unknown[]): Json => ({ conditions, actions, rule_id, default: true, enabled: true });

// Synapse's default push rules in Synapse's order: js-sdk evaluates them on every event it is handed.
const PUSH_RULES = {
  global: {
    override: [
      { ...rule('.m.rule.master', [], []), enabled: false },
      rule('.m.rule.suppress_notices', [match('content.msgtype', 'm.notice')], []),
      rule('.m.rule.invite_for_me', [match('type', 'm.room.member'), match('content.membership', 'invite'), match('state_key', USER)], ['notify', { set_tweak: 'highlight', value: false }, { set_tweak: 'sound', value: 'default' }]),
      rule('.m.rule.member_event', [match('type', 'm.room.member')], []),
      rule('.m.rule.is_user_mention', [{ kind: 'event_property_contains', key: 'content.m\\.mentions.user_ids', value: USER }], notify(null, 'default')),
      rule('.m.rule.contains_display_name', [{ kind: 'contains_display_name' }], notify(null, 'default')),
      rule('.m.rule.is_room_mention', [{ kind: 'event_property_is', key: 'content.m\\.mentions.room', value: true }, { kind: 'sender_notification_permission', key: 'room' }], notify(null)),
      rule('.m.rule.roomnotif', [{ kind: 'sender_notification_permission', key: 'room' }, match('content.body', '@room')], notify(null)),
      rule('.m.rule.tombstone', [match('type', 'm.room.tombstone'), match('state_key', '')], notify(null)),
      rule('.m.rule.reaction', [match('type', 'm.reaction')], []),
      rule('.m.rule.room.server_acl', [match('type', 'm.room.server_acl'), match('state_key', '')], []),
      rule('.m.rule.suppress_edits', [{ kind: 'event_property_is', key: 'content.m\\.relates_to.rel_type', value: 'm.replace' }], []),
    ],
    content: [{ actions: notify(null, 'default'), rule_id: '.m.rule.contains_user_name', default: true, pattern: LOCALPART, enabled: true }],
    room: [],
    sender: [],
    postcontent: [],
    underride: [
      rule('.m.rule.call', [match('type', 'm.call.invite')], ['notify', { set_tweak: 'sound', value: 'ring' }, { set_tweak: 'highlight', value: false }]),
      rule('.m.rule.encrypted_room_one_to_one', [match('type', 'm.room.encrypted'), { kind: 'room_member_count', is: '2' }], ['notify', { set_tweak: 'sound', value: 'default' }, { set_tweak: 'highlight', value: false }]),
      rule('.m.rule.room_one_to_one', [match('type', 'm.room.message'), { kind: 'room_member_count', is: '2' }], ['notify', { set_tweak: 'sound', value: 'default' }, { set_tweak: 'highlight', value: false }]),
      rule('.m.rule.message', [match('type', 'm.room.message')], notify(false)),
      rule('.m.rule.encrypted', [match('type', 'm.room.encrypted')], notify(false)),
      rule('.im.vector.jitsi', [match('type', 'im.vector.modular.widgets'), match('content.type', 'jitsi'), match('state_key', '*')], notify(false)),
    ],
  },
};

const CAPABILITIES = {
  capabilities: {
    'm.room_versions': { default: '12', available: Object.fromEntries(Array.from({ length: 12 }, (_, i) => [String(i + 1), 'stable'])) },
    'm.change_password': { enabled: true },
    'm.set_displayname': { enabled: true },
    'm.set_avatar_url': { enabled: true },
    'm.3pid_changes': { enabled: true },
    'm.get_login_token': { enabled: false },
  },
};

const ANSWERS: Record<string, [number, Buffer]> = {
  'GET /_matrix/client/v3/pushrules/': [200, Buffer.from(JSON.stringify(PUSH_RULES))],
  'GET /_matrix/client/v3/capabilities': [200, Buffer.from(JSON.stringify(CAPABILITIES))],
  // No server-side key backup, as on a fresh Synapse account.
  'GET /_matrix/client/v3/room_keys/version': [404, Buffer.from(JSON.stringify({ errcode: 'M_NOT_FOUND', error: 'No backup found' }))],
};

/** Answers the js-sdk start-up endpoints above; everything else falls through to the replay server. */
export default function e2eeRoutes(req: IncomingMessage, res: ServerResponse, url: URL): boolean {
  const answer = ANSWERS[`${req.method ?? 'GET'} ${url.pathname}`];
  if (!answer) return false;
  req.resume();
  res.writeHead(answer[0], { 'Content-Type': 'application/json', 'Content-Length': answer[1].length });
  res.end(answer[1]);
  return true;
}
