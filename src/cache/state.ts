/**
 * Room state as a pure reducer over state events: no I/O, no threads. The cache actor owns the instances.
 */
import { powerContext } from '../power.ts';
import type { MatrixEvent, RoomInfo, RoomSummary, StateChanges } from '../protocol.ts';
import { redactContent } from '../redaction.ts';

/** One member of a room as the cache knows it. */
export interface Member {
  displayName: string | null;
  avatarUrl: string | null;
  membership: string;
  /** The ID of the member event these come from (null when it had none), so a redaction of it is recognised. */
  eventId: string | null;
}

/** The cached state of one room. */
export interface RoomState {
  roomId: string;
  membership: RoomSummary['membership'];
  name: string | null;
  topic: string | null;
  canonicalAlias: string | null;
  avatarUrl: string | null;
  encrypted: boolean;
  /**
   * The `m.room.create` event's sender and content, or null before it is known. The creators and the room version
   * follow from it by src/power.ts's rules ({@link powerContext}), never by a second copy of them here.
   */
  create: { sender: string; content: Record<string, unknown> } | null;
  historyVisibility: string | null;
  joinRule: string | null;
  powerLevels: Record<string, unknown> | null;
  /**
   * Event IDs of the current room-wide state events the fields above come from, by type (member events keep
   * theirs in {@link Member.eventId}): a redaction is applied when it targets one of them.
   */
  eventIds: Record<string, string>;
  /**
   * While the bot is invited or has knocked: the stripped state's events that {@link summarize} shows (name,
   * topic, avatar, canonical alias, encryption), one per type, else null. Nothing authenticates stripped state,
   * so it never reaches the fields above; a join or a leave drops it.
   */
  stripped: MatrixEvent[] | null;
  /** Counts from the server's sync summary; null until it sends one (then members are counted). */
  joinedCount: number | null;
  invitedCount: number | null;
  members: Map<string, Member>;
}

/** A room with nothing known yet. */
export function emptyRoom(roomId: string): RoomState {
  return {
    roomId,
    membership: 'join',
    name: null,
    topic: null,
    canonicalAlias: null,
    avatarUrl: null,
    encrypted: false,
    create: null,
    historyVisibility: null,
    joinRule: null,
    powerLevels: null,
    eventIds: {},
    stripped: null,
    joinedCount: null,
    invitedCount: null,
    members: new Map(),
  };
}

const str = (v: unknown): string | null => (typeof v === 'string' ? v : null);

/**
 * Applies one state event. Returns the user ID whose membership row changed (for the caller to persist), or
 * null. Events of unknown types are ignored, and so are the room-wide types (name, topic, ...) with a non-empty
 * state key, which are other state; an `m.room.encryption` event can never turn encryption off.
 */
export function applyStateEvent(room: RoomState, ev: MatrixEvent): string | null {
  if (ev.type === 'm.room.member') {
    const c = ev.content;
    const userId = ev.state_key;
    if (!userId) return null;
    const membership = str(c.membership) ?? 'leave';
    room.members.set(userId, { displayName: str(c.displayname), avatarUrl: str(c.avatar_url), membership, eventId: str(ev.event_id) });
    return userId;
  }
  if (ev.state_key !== '' || !applyRoomWide(room, ev)) return null;
  const id = str(ev.event_id);
  if (id !== null) room.eventIds[ev.type] = id;
  else delete room.eventIds[ev.type];
  return null;
}

/** Applies a room-wide state event (state key ''); false for a type the cache does not keep. */
function applyRoomWide(room: RoomState, ev: MatrixEvent): boolean {
  const c = ev.content;
  switch (ev.type) {
    case 'm.room.name':
      room.name = str(c.name) || null;
      return true;
    case 'm.room.topic':
      room.topic = str(c.topic) || null;
      return true;
    case 'm.room.canonical_alias':
      room.canonicalAlias = str(c.alias) || null;
      return true;
    case 'm.room.avatar':
      room.avatarUrl = str(c.url) || null;
      return true;
    case 'm.room.encryption':
      // Per the spec, once a room is encrypted it stays encrypted, whatever later events say.
      if (typeof c.algorithm === 'string') room.encrypted = true;
      return true;
    case 'm.room.create':
      room.create = { sender: str(ev.sender) ?? '', content: c };
      return true;
    case 'm.room.history_visibility':
      room.historyVisibility = str(c.history_visibility);
      return true;
    case 'm.room.join_rules':
      room.joinRule = str(c.join_rule);
      return true;
    case 'm.room.power_levels':
      room.powerLevels = c;
      return true;
    default:
      return false;
  }
}

/**
 * The content of the room's current `type` event as far as the cache keeps it: all a redaction needs, since the
 * redaction algorithm keeps or drops whole keys and these are the keys the fields above come from.
 */
function heldContent(room: RoomState, type: string): Record<string, unknown> {
  switch (type) {
    case 'm.room.name':
      return { name: room.name };
    case 'm.room.topic':
      return { topic: room.topic };
    case 'm.room.canonical_alias':
      return { alias: room.canonicalAlias };
    case 'm.room.avatar':
      return { url: room.avatarUrl };
    case 'm.room.history_visibility':
      return { history_visibility: room.historyVisibility };
    case 'm.room.join_rules':
      return { join_rule: room.joinRule };
    case 'm.room.power_levels':
      return room.powerLevels ?? {};
    default:
      return {}; // m.room.encryption: encryption stays on whatever its content says
  }
}

/**
 * Applies the redaction of `eventId` when it is one of the room's current state events: its content becomes
 * the redacted content ({@link redactContent}, by the room's version) and is applied again, e.g. a redacted
 * name leaves no name, redacted power levels keep only the keys the version keeps. Returns the user ID whose
 * member row changed, or null. Any other event ID changes nothing. The create event is left alone: Synapse
 * refuses to redact it, and a room's version never changes.
 */
export function applyRedaction(room: RoomState, eventId: string): string | null {
  const version = str(room.create?.content.room_version);
  for (const [type, id] of Object.entries(room.eventIds)) {
    if (id !== eventId || type === 'm.room.create') continue;
    applyStateEvent(room, { type, state_key: '', event_id: id, content: redactContent(type, heldContent(room, type), version) });
    return null;
  }
  for (const [userId, m] of room.members) {
    if (m.eventId !== eventId) continue;
    const content = redactContent('m.room.member', { membership: m.membership, displayname: m.displayName, avatar_url: m.avatarUrl }, version);
    return applyStateEvent(room, { type: 'm.room.member', state_key: userId, event_id: eventId, content });
  }
  return null;
}

/** Stripped state types kept for an invited or knocked room: what its summary shows. */
const STRIPPED_KEPT = new Set(['m.room.name', 'm.room.topic', 'm.room.avatar', 'm.room.canonical_alias', 'm.room.encryption']);

/** Whether the bot is only invited to or knocking on the room: its state is unknown, only stripped state claims some. */
export function isPending(room: RoomState): boolean {
  return room.membership === 'invite' || room.membership === 'knock';
}

/**
 * Applies one room of a sync's state changes: its membership, then its state events. For an invite or a knock
 * the events are stripped state: only the kinds {@link RoomState.stripped} keeps are kept there (a later event
 * of a type replaces the earlier one), none reaches the room's state. Any other membership drops the stripped
 * state, and its events go through {@link applyStateEvent}. Returns the user IDs whose member rows changed.
 */
export function applyChange(room: RoomState, change: StateChanges['rooms'][number]): Set<string> {
  room.membership = change.membership;
  const touched = new Set<string>();
  if (isPending(room)) {
    const kept = new Map((room.stripped ?? []).map((ev) => [ev.type, ev]));
    for (const ev of change.state) if (STRIPPED_KEPT.has(ev.type) && ev.state_key === '') kept.set(ev.type, ev);
    room.stripped = [...kept.values()];
    return touched;
  }
  room.stripped = null;
  for (const ev of change.state) {
    const uid = applyStateEvent(room, ev);
    if (uid) touched.add(uid);
  }
  for (const id of change.redactions ?? []) {
    const uid = applyRedaction(room, id);
    if (uid) touched.add(uid);
  }
  return touched;
}

/** Joined and invited member counts: the server's summary when known, else what the member map shows. */
function counts(room: RoomState): [number, number] {
  if (room.joinedCount !== null && room.invitedCount !== null) return [room.joinedCount, room.invitedCount];
  let joined = 0;
  let invited = 0;
  for (const m of room.members.values()) {
    if (m.membership === 'join') joined++;
    else if (m.membership === 'invite') invited++;
  }
  return [room.joinedCount ?? joined, room.invitedCount ?? invited];
}

/**
 * The compact summary main mirrors. For an invited or knocked room: the display fields its stripped state
 * claims, unverified, no member counts, and encrypted if the room is known to be or the claims say so (a claim of
 * encryption can only make the bot more careful, e.g. refuse plaintext media right after accepting).
 */
export function summarize(room: RoomState): RoomSummary {
  if (isPending(room)) {
    const claimed = emptyRoom(room.roomId);
    for (const ev of room.stripped ?? []) applyStateEvent(claimed, ev);
    const { name, topic, canonicalAlias, avatarUrl } = claimed;
    const encrypted = room.encrypted || claimed.encrypted;
    return { roomId: room.roomId, name, topic, canonicalAlias, avatarUrl, encrypted, joinedMemberCount: 0, invitedMemberCount: 0, membership: room.membership };
  }
  const [joined, invited] = counts(room);
  return {
    roomId: room.roomId,
    name: room.name,
    topic: room.topic,
    canonicalAlias: room.canonicalAlias,
    avatarUrl: room.avatarUrl,
    encrypted: room.encrypted,
    joinedMemberCount: joined,
    invitedMemberCount: invited,
    membership: room.membership,
  };
}

/** True when two summaries say the same. */
export function sameSummary(a: RoomSummary, b: RoomSummary): boolean {
  return (
    a.name === b.name &&
    a.topic === b.topic &&
    a.canonicalAlias === b.canonicalAlias &&
    a.avatarUrl === b.avatarUrl &&
    a.encrypted === b.encrypted &&
    a.joinedMemberCount === b.joinedMemberCount &&
    a.invitedMemberCount === b.invitedMemberCount &&
    a.membership === b.membership
  );
}

/**
 * Everything known about the room. For an invited or knocked room only the summary's unverified display fields:
 * no creators, room version, rules, power levels or members.
 */
export function roomInfo(room: RoomState): RoomInfo {
  if (isPending(room)) {
    return { ...summarize(room), creator: null, creators: [], roomVersion: null, historyVisibility: null, joinRule: null, powerLevels: null, members: [] };
  }
  const ctx = powerContext(room.create, room.powerLevels);
  // A create event without a sender (scripted state) names no creator rather than the empty string.
  const creators = ctx.creators.filter((u) => u !== '');
  return {
    ...summarize(room),
    creator: creators[0] ?? null,
    creators,
    roomVersion: room.create ? (ctx.roomVersion ?? '1') : null,
    historyVisibility: room.historyVisibility,
    joinRule: room.joinRule,
    powerLevels: room.powerLevels,
    members: [...room.members].map(([userId, m]) => ({ userId, displayName: m.displayName, avatarUrl: m.avatarUrl, membership: m.membership })),
  };
}
