/**
 * Room state as a pure reducer over state events: no I/O, no threads. The cache actor owns the instances.
 */
import { powerContext } from '../power.ts';
import type { MatrixEvent, RoomInfo, RoomSummary } from '../protocol.ts';

/** One member of a room as the cache knows it. */
export interface Member {
  displayName: string | null;
  avatarUrl: string | null;
  membership: string;
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
    joinedCount: null,
    invitedCount: null,
    members: new Map(),
  };
}

const str = (v: unknown): string | null => (typeof v === 'string' ? v : null);

/**
 * Applies one state event. Returns the user ID whose membership row changed (for the caller to persist), or
 * null. Events of unknown types are ignored; an `m.room.encryption` event can never turn encryption off.
 */
export function applyStateEvent(room: RoomState, ev: MatrixEvent): string | null {
  const c = ev.content;
  switch (ev.type) {
    case 'm.room.name':
      room.name = str(c.name) || null;
      return null;
    case 'm.room.topic':
      room.topic = str(c.topic) || null;
      return null;
    case 'm.room.canonical_alias':
      room.canonicalAlias = str(c.alias) || null;
      return null;
    case 'm.room.avatar':
      room.avatarUrl = str(c.url) || null;
      return null;
    case 'm.room.encryption':
      // Per the spec, once a room is encrypted it stays encrypted, whatever later events say.
      if (typeof c.algorithm === 'string') room.encrypted = true;
      return null;
    case 'm.room.create':
      room.create = { sender: str(ev.sender) ?? '', content: c };
      return null;
    case 'm.room.history_visibility':
      room.historyVisibility = str(c.history_visibility);
      return null;
    case 'm.room.join_rules':
      room.joinRule = str(c.join_rule);
      return null;
    case 'm.room.power_levels':
      room.powerLevels = c;
      return null;
    case 'm.room.member': {
      const userId = ev.state_key;
      if (!userId) return null;
      const membership = str(c.membership) ?? 'leave';
      room.members.set(userId, { displayName: str(c.displayname), avatarUrl: str(c.avatar_url), membership });
      return userId;
    }
    default:
      return null;
  }
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

/** The compact summary main mirrors. */
export function summarize(room: RoomState): RoomSummary {
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

/** Everything known about the room. */
export function roomInfo(room: RoomState): RoomInfo {
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
    members: [...room.members].map(([userId, m]) => ({ userId, ...m })),
  };
}
