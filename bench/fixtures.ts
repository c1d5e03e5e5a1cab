/**
 * Deterministic, Synapse-shaped `/sync` response bodies for benchmarks.
 * @module
 */

/** Options for {@link makeSyncBody}. */
export interface SyncBodyOptions {
  /** Number of joined rooms in the body. */
  rooms: number;
  /** Timeline events per room. */
  eventsPerRoom: number;
  /** Zero-based batch index; the body's `next_batch` is `s<batch+1>_…`. */
  batch: number;
  /** PRNG seed; the same options always produce the same body. */
  seed?: number;
}

const BASE_TS = 1_700_000_000_000;
const B64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
const ALPHA = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';
const WORDS = (
  'the a to and of in is it you that for on was with he as I his they be at one have this from ' +
  'or had by hot word but what some we can out other were all there when up use your how said an ' +
  'each she which do their time if will way about many then them write would like so these her ' +
  'long make thing see him two has look more day could go come did number sound no most people ' +
  'deploy server matrix room sync bot ping latency release merge review tomorrow lunch meeting ok'
).split(' ');
const SPECIAL_BODIES = [
  'He said "ship it" — naïve café déjà vu 🎉🚀',
  'quote \\"nested\\" and a path C:\\temp\\x 😅',
  '日本語のメッセージ 👍 and "quoted" text',
  'Ünïcödé ✓ ∑ π ≠ ∞ — "tabs"\tand\nnewlines 🔥',
];
const REACTION_KEYS = ['👍', '❤️', '😂', '🎉', '👀', '+1'];

type Rng = () => number;

/** mulberry32: small, fast, deterministic 32-bit PRNG returning [0, 1). */
function rng(seed: number): Rng {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const int = (r: Rng, n: number): number => Math.floor(r() * n);

function chars(r: Rng, alphabet: string, n: number): string {
  let s = '';
  for (let i = 0; i < n; i++) s += alphabet[int(r, alphabet.length)];
  return s;
}

function text(r: Rng): string {
  const target = 20 + int(r, 101);
  let s = WORDS[int(r, WORDS.length)]!;
  while (s.length < target) s += ' ' + WORDS[int(r, WORDS.length)]!;
  return s.slice(0, target).trimEnd().padEnd(20, '.');
}

function roomId(seed: number, index: number): string {
  return `!${chars(rng(seed * 7919 + index + 1), ALPHA, 18)}:localhost`;
}

function buildBody(perRoom: readonly number[], batch: number, seed: number): string {
  const r = rng((seed ^ 0x5bd1e995) + batch * 104729);
  const join: Record<string, unknown> = {};
  let ts = BASE_TS + batch * 60_000;
  const recent: string[] = [];
  for (let room = 0; room < perRoom.length; room++) {
    if (perRoom[room] === 0) continue; // Synapse omits rooms with nothing new
    const events: unknown[] = [];
    for (let e = 0; e < perRoom[room]!; e++) {
      const eventId = `$${chars(r, B64URL, 43)}`;
      const sender = `@user${int(r, 50)}:localhost`;
      ts += 1 + int(r, 40);
      const roll = r();
      let type = 'm.room.message';
      let content: Record<string, unknown>;
      if (roll < 0.02 && recent.length > 0) {
        type = 'm.reaction';
        content = {
          'm.relates_to': {
            rel_type: 'm.annotation',
            event_id: recent[int(r, recent.length)],
            key: REACTION_KEYS[int(r, REACTION_KEYS.length)],
          },
        };
      } else if (roll < 0.03) {
        content = { msgtype: 'm.text', body: SPECIAL_BODIES[int(r, SPECIAL_BODIES.length)] };
      } else {
        content = { msgtype: 'm.text', body: text(r) };
      }
      events.push({
        type,
        sender,
        content,
        origin_server_ts: ts,
        unsigned: { age: 50 + int(r, 5000) },
        event_id: eventId,
      });
      recent.push(eventId);
      if (recent.length > 16) recent.shift();
    }
    join[roomId(seed, room)] = {
      timeline: { events, limited: false, prev_batch: `t${batch * 100 + 1}-${1000 + batch}_0_0_0_0_0_0_0_0` },
      state: { events: [] },
      ephemeral: { events: [] },
      account_data: { events: [] },
      unread_notifications: { highlight_count: 0, notification_count: perRoom[room] },
      summary: {},
    };
  }
  return JSON.stringify({
    next_batch: `s${batch + 1}_${4000 + batch}_0_1_1_1_1_${100 + batch}_0_1`,
    account_data: { events: [] },
    to_device: { events: [] },
    presence: { events: [] },
    device_one_time_keys_count: { signed_curve25519: 50 },
    rooms: { join },
  });
}

/** Builds one deterministic Synapse-shaped `/sync` JSON body with `rooms × eventsPerRoom` timeline events. */
export function makeSyncBody(opts: SyncBodyOptions): string {
  return buildBody(new Array<number>(opts.rooms).fill(opts.eventsPerRoom), opts.batch, opts.seed ?? 1);
}

/** Spreads exactly `totalEvents` events as evenly as possible over `rooms` rooms and `batches` bodies (`next_batch` s1, s2, …). */
export function scaledBodies(rooms: number, totalEvents: number, batches: number, seed = 1): string[] {
  const out: string[] = [];
  for (let b = 0; b < batches; b++) {
    const inBatch = Math.floor(totalEvents / batches) + (b < totalEvents % batches ? 1 : 0);
    const perRoom = Array.from({ length: rooms }, (_, i) => Math.floor(inBatch / rooms) + (i < inBatch % rooms ? 1 : 0));
    out.push(buildBody(perRoom, b, seed));
  }
  return out;
}

/** Options for {@link makeInitialSync}. */
export interface InitialSyncOptions {
  /** Joined rooms. */
  rooms: number;
  /** Joined members per room besides the bot (default 5). */
  membersPerRoom?: number;
  /** Messages in each room's timeline (default 14: with the rest, ~10 KB a room); the timeline is `limited`, the state block holds the rest. */
  messagesPerRoom?: number;
  /** The bot's user ID (default `@bot:localhost`, what the replay server's whoami answers). */
  userId?: string;
  /** PRNG seed; the same options always produce the same body. */
  seed?: number;
}

/** Synapse's default push rules for a user, abridged to the rules it always sends (they arrive in `account_data`). */
function pushRules(userId: string): Record<string, unknown> {
  const notify = ['notify', { set_tweak: 'highlight', value: false }];
  const sound = ['notify', { set_tweak: 'sound', value: 'default' }, { set_tweak: 'highlight', value: false }];
  const rule = (rule_id: string, conditions: unknown[], actions: unknown[]) => ({ conditions, actions, rule_id, default: true, enabled: true });
  const ev = (key: string, pattern: string) => ({ kind: 'event_match', key, pattern });
  const local = userId.slice(1, userId.indexOf(':'));
  return {
    global: {
      underride: [
        rule('.m.rule.call', [ev('type', 'm.call.invite')], ['notify', { set_tweak: 'sound', value: 'ring' }, { set_tweak: 'highlight', value: false }]),
        rule('.m.rule.room_one_to_one', [{ kind: 'room_member_count', is: '2' }, ev('type', 'm.room.message')], sound),
        rule('.m.rule.encrypted_room_one_to_one', [{ kind: 'room_member_count', is: '2' }, ev('type', 'm.room.encrypted')], sound),
        rule('.m.rule.message', [ev('type', 'm.room.message')], notify),
        rule('.m.rule.encrypted', [ev('type', 'm.room.encrypted')], notify),
      ],
      sender: [],
      room: [],
      content: [{ actions: ['notify', { set_tweak: 'sound', value: 'default' }, { set_tweak: 'highlight' }], pattern: local, rule_id: '.m.rule.contains_user_name', default: true, enabled: true }],
      override: [
        { ...rule('.m.rule.master', [], []), enabled: false },
        rule('.m.rule.suppress_notices', [ev('content.msgtype', 'm.notice')], []),
        rule('.m.rule.invite_for_me', [ev('type', 'm.room.member'), ev('content.membership', 'invite'), ev('state_key', userId)], sound),
        rule('.m.rule.member_event', [ev('type', 'm.room.member')], []),
        rule('.m.rule.is_user_mention', [{ kind: 'event_property_contains', key: 'content.m\\.mentions.user_ids', value: userId }], ['notify', { set_tweak: 'sound', value: 'default' }, { set_tweak: 'highlight' }]),
        rule('.m.rule.contains_display_name', [{ kind: 'contains_display_name' }], ['notify', { set_tweak: 'sound', value: 'default' }, { set_tweak: 'highlight' }]),
        rule('.m.rule.is_room_mention', [{ kind: 'event_property_is', key: 'content.m\\.mentions.room', value: true }, { kind: 'sender_notification_permission', key: 'room' }], ['notify', { set_tweak: 'highlight' }]),
        rule('.m.rule.roomnotif', [{ kind: 'sender_notification_permission', key: 'room' }, ev('content.body', '@room')], ['notify', { set_tweak: 'highlight' }]),
        rule('.m.rule.tombstone', [ev('type', 'm.room.tombstone'), ev('state_key', '')], ['notify', { set_tweak: 'highlight' }]),
        rule('.m.rule.reaction', [ev('type', 'm.reaction')], []),
        rule('.m.rule.room.server_acl', [ev('type', 'm.room.server_acl'), ev('state_key', '')], []),
        rule('.m.rule.suppress_edits', [{ kind: 'event_property_is', key: 'content.m\\.relates_to.rel_type', value: 'm.replace' }], []),
      ],
    },
  };
}

/**
 * Builds a deterministic initial `/sync` body (no `since`) the way Synapse answers it for a bot joined to
 * `rooms` rooms: per room a state block (create, power levels, join rules, history visibility, guest access,
 * name, a topic in two rooms of three, an alias in one of three, an avatar in one of four, the members, a
 * third of them with a replaced profile), a short limited timeline of
 * messages (a third with HTML, some of those replies), a summary, unread
 * counts and empty ephemeral/account data; top level: push rules and `m.direct` account data, presence,
 * to-device, device lists and key counts. About 10 KB per room with the defaults.
 */
export function makeInitialSync(opts: InitialSyncOptions): string {
  const userId = opts.userId ?? '@bot:localhost';
  const members = opts.membersPerRoom ?? 5;
  const messages = opts.messagesPerRoom ?? 14;
  const seed = opts.seed ?? 1;
  const r = rng((seed ^ 0x2545f491) >>> 0);
  const join: Record<string, unknown> = {};
  const eventId = () => `$${chars(r, B64URL, 43)}`;
  const nowTs = BASE_TS + 30 * 86_400_000;
  const event = (type: string, sender: string, content: unknown, ts: number, stateKey?: string) => ({
    type,
    sender,
    content,
    ...(stateKey === undefined ? {} : { state_key: stateKey }),
    origin_server_ts: ts,
    unsigned: { membership: 'join', age: nowTs - ts } as Record<string, unknown>,
    event_id: eventId(),
  });
  const presence: unknown[] = [];
  for (let room = 0; room < opts.rooms; room++) {
    const id = roomId(seed, room);
    const others = Array.from({ length: members }, () => `@user${int(r, 5000)}:localhost`);
    const creator = others[0] ?? userId;
    let ts = BASE_TS + int(r, 20 * 86_400_000);
    const at = () => (ts += 1 + int(r, 60_000));
    const named = room % 10 !== 9; // a DM-like unnamed room now and then: its summary lists heroes
    const state: unknown[] = [
      event('m.room.create', creator, { room_version: '10', creator }, at(), ''),
      event('m.room.member', creator, { membership: 'join', displayname: `User ${creator.slice(5, -10)}` }, at(), creator),
      event('m.room.power_levels', creator, {
        users: { [creator]: 100, [userId]: 50 },
        users_default: 0,
        events: {
          'm.room.name': 50,
          'm.room.power_levels': 100,
          'm.room.history_visibility': 100,
          'm.room.canonical_alias': 50,
          'm.room.avatar': 50,
          'm.room.tombstone': 100,
          'm.room.server_acl': 100,
          'm.room.encryption': 100,
        },
        events_default: 0,
        state_default: 50,
        ban: 50,
        kick: 50,
        redact: 50,
        invite: 0,
        historical: 100,
      }, at(), ''),
      event('m.room.join_rules', creator, { join_rule: room % 3 === 0 ? 'public' : 'invite' }, at(), ''),
      event('m.room.history_visibility', creator, { history_visibility: 'shared' }, at(), ''),
      event('m.room.guest_access', creator, { guest_access: 'can_join' }, at(), ''),
    ];
    if (named) state.push(event('m.room.name', creator, { name: `Room ${room}: ${text(r).slice(0, 30)}` }, at(), ''));
    if (room % 4 === 1) state.push(event('m.room.avatar', creator, { url: `mxc://localhost/${chars(r, ALPHA, 24)}`, info: { mimetype: 'image/png', size: 20_000 + int(r, 80_000), w: 256, h: 256 } }, at(), ''));
    if (room % 3 === 0) state.push(event('m.room.canonical_alias', creator, { alias: `#room${room}:localhost` }, at(), ''));
    if (named && room % 3 !== 2) state.push(event('m.room.topic', creator, { topic: text(r) }, at(), ''));
    for (const m of [userId, ...others.slice(1)]) {
      const content: Record<string, unknown> = { membership: 'join', displayname: m === userId ? 'Bench Bot' : `User ${m.slice(5, -10)}` };
      if (int(r, 2) === 0) content.avatar_url = `mxc://localhost/${chars(r, ALPHA, 24)}`;
      const member = event('m.room.member', m, content, at(), m);
      // A member who changed their profile since joining: Synapse adds what the event replaced.
      if (int(r, 3) === 0) Object.assign(member.unsigned, { replaces_state: eventId(), prev_content: { membership: 'join', displayname: m.slice(1, -10) }, prev_sender: m });
      state.push(member);
    }
    const timeline: unknown[] = [];
    for (let e = 0; e < messages; e++) {
      const sender = others[int(r, others.length)] ?? userId;
      const body = text(r);
      // Clients like Element send a third of messages with Markdown rendered to HTML, some of them replies.
      const content: Record<string, unknown> = { msgtype: 'm.text', body, 'm.mentions': {} };
      if (int(r, 3) === 0) {
        content.format = 'org.matrix.custom.html';
        content.formatted_body = `<p>${body.replace(/ (\w+) /, ' <strong>$1</strong> ')}</p>`;
        if (timeline.length > 0 && int(r, 2) === 0) {
          const target = timeline[int(r, timeline.length)] as { event_id: string; sender: string };
          content['m.relates_to'] = { 'm.in_reply_to': { event_id: target.event_id } };
          content['m.mentions'] = { user_ids: [target.sender] };
        }
      }
      timeline.push(event('m.room.message', sender, content, at()));
    }
    const summary: Record<string, unknown> = { 'm.joined_member_count': members + 1, 'm.invited_member_count': 0 };
    if (!named) summary['m.heroes'] = others.slice(0, 5);
    const unread = int(r, 4) === 0 ? messages : 0;
    join[id] = {
      timeline: { events: timeline, limited: true, prev_batch: `t${100 + room}-${2000 + room}_0_0_0_0_0_0_0_0` },
      state: { events: state },
      account_data: { events: [] },
      ephemeral: { events: [] },
      unread_notifications: { notification_count: unread, highlight_count: 0 },
      summary,
    };
    if (room < 50) presence.push({ type: 'm.presence', sender: creator, content: { presence: 'online', last_active_ago: int(r, 600_000), currently_active: int(r, 2) === 0 } });
  }
  return JSON.stringify({
    account_data: {
      events: [
        { type: 'm.push_rules', content: pushRules(userId) },
        { type: 'm.direct', content: {} },
      ],
    },
    to_device: { events: [] },
    device_lists: { changed: [], left: [] },
    presence: { events: presence },
    rooms: { join },
    // What Synapse answers a device whose login uploaded its keys (Halcyon's, encryption on: device keys and 50
    // one-time keys, no fallback key). 0 would say every key was claimed since, and have the client make 50 more.
    device_one_time_keys_count: { signed_curve25519: 50 },
    'org.matrix.msc2732.device_unused_fallback_key_types': [],
    device_unused_fallback_key_types: [],
    next_batch: `s1_${9000 + opts.rooms}_0_1_1_1_1_${500 + opts.rooms}_0_1`,
  });
}
