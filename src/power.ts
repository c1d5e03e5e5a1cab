/**
 * Matrix power levels as pure functions: who has which level in a room, and whether a user may do something.
 *
 * Sources (the current spec text, `matrix-org/matrix-spec`):
 * - Client-Server API, `m.room.power_levels` (https://spec.matrix.org/latest/client-server-api/#mroompower_levels):
 *   the defaults (`users_default` 0, `events_default` 0, `state_default` 50, `ban`/`kick`/`redact` 50, `invite` 0,
 *   `notifications.room` 50; no power-levels event → the creator 100, everyone else 0).
 * - Room versions, "Authorization rules" (https://spec.matrix.org/latest/rooms/v11/#authorization-rules and
 *   https://spec.matrix.org/latest/rooms/v12/#authorization-rules): membership rules for invite, leave (kick/unban)
 *   and ban, the required power level of an event type, and the `@`-prefixed state key rule.
 * - Room version 12 / MSC4289 "Explicitly privilege room creators" (https://spec.matrix.org/latest/rooms/v12/):
 *   creators (the `m.room.create` sender plus `additional_creators`) have infinite power.
 * - Room versions 1–9 "`m.room.power_levels` events accept values as strings" and 1–5 "... accept values as floats".
 *
 * Nothing here knows about membership: `can` answers the power-level part of the auth rules and assumes the actor is
 * joined (the rules refuse almost everything to non-members).
 */

/** What the power rules need to know about a room. Build one with {@link powerContext} from the room's state. */
export interface PowerContext {
  /** The content of the room's `m.room.power_levels` state event, or `null` when the room has none. */
  powerLevels: Record<string, unknown> | null;
  /** The room's creator(s): `m.room.create`'s sender (or `content.creator` before v11), plus `additional_creators` from v12. */
  creators: string[];
  /** `m.room.create`'s `content.room_version`; `null` (absent) means `"1"`. */
  roomVersion: string | null;
}

/** Something a user may want to do in a room, as `can()` understands it. */
export type Action =
  /** Send a message (non-state) event of this type, e.g. `m.room.message`, `m.reaction`. */
  | { kind: 'send'; eventType: string }
  /** Send a state event of this type; `stateKey` matters for `m.room.member` and for keys starting with `@`. */
  | { kind: 'state'; eventType: string; stateKey?: string }
  /** Invite a user. */
  | { kind: 'invite' }
  /** Kick `target` (a user may always "kick" themselves: that is leaving). */
  | { kind: 'kick'; target: string }
  /** Ban `target`. */
  | { kind: 'ban'; target: string }
  /** Lift the ban on `target`. */
  | { kind: 'unban'; target: string }
  /** Redact an event: one's own when `ownEvent` is true, someone else's otherwise. */
  | { kind: 'redact'; ownEvent?: boolean }
  /** Trigger a notification of this `key` in `notifications` (default `'room'`, i.e. `@room`). */
  | { kind: 'notify'; key?: string };

/**
 * `m.room.power_levels` content with every level parsed and every default filled in.
 * Invariants: all numbers are finite integers; `users`, `events` and `notifications` are null-prototype maps holding
 * only the entries whose values parsed; `notifications.room` is always present.
 */
export interface PowerLevels {
  users: Readonly<Record<string, number>>;
  users_default: number;
  events: Readonly<Record<string, number>>;
  events_default: number;
  state_default: number;
  ban: number;
  kick: number;
  redact: number;
  invite: number;
  notifications: Readonly<Record<string, number>>;
}

/** The level a creator has in a privileged-creator room (v12+): above every level the JSON can hold. */
export const CREATOR_POWER = Infinity;

/** Unstable identifiers of room versions built on MSC4289 (Synapse's room version table: `msc4289_creator_power_enabled`). */
const PRIVILEGED_UNSTABLE = new Set(['org.matrix.hydra.11', 'org.matrix.msc4242.12']);
/** Unstable versions based on v11 or later, where the creator is the create event's sender (no `content.creator`). */
const IMPLICIT_CREATOR_UNSTABLE = new Set(['org.matrix.msc3757.11', 'org.matrix.msc4291.11', ...PRIVILEGED_UNSTABLE]);

function versionNumber(v: string): number | null {
  return /^[1-9]\d*$/.test(v) ? Number(v) : null;
}

/**
 * Whether room creators have infinite power in this room version (MSC4289): `"12"` and every later integer version,
 * plus the unstable `org.matrix.hydra.11` and `org.matrix.msc4242.12`. `null` means `"1"`, so false.
 */
export function creatorsArePrivileged(roomVersion: string | null): boolean {
  const v = roomVersion ?? '1';
  const n = versionNumber(v);
  return n !== null ? n >= 12 : PRIVILEGED_UNSTABLE.has(v);
}

/**
 * Parses one power level value the way the auth rules accept it: an integer; a float, truncated (room versions 1–5
 * allow floats); or a string holding a base-10 integer with optional sign, leading zeroes and surrounding whitespace
 * (room versions 1–9). Anything else (booleans, `"50.5"`, `"abc"`, objects, non-finite numbers) is `undefined`.
 * Invariant: a returned number is a finite integer (never `-0`).
 */
export function parseLevel(value: unknown): number | undefined {
  let n: number;
  if (typeof value === 'number') n = Math.trunc(value);
  else if (typeof value === 'string' && /^\s*[+-]?\d+\s*$/.test(value)) n = Number(value.trim());
  else return undefined;
  return Number.isFinite(n) ? n + 0 : undefined;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function levelMap(v: unknown): Record<string, number> {
  const out: Record<string, number> = Object.create(null);
  if (!isObject(v)) return out;
  for (const [k, raw] of Object.entries(v)) {
    const n = parseLevel(raw);
    if (n !== undefined) out[k] = n;
  }
  return out;
}

/**
 * Fills in the spec's defaults over an `m.room.power_levels` content (or over nothing, for a room without the event):
 * `users_default` 0, `events_default` 0, `state_default` 50, `ban`/`kick`/`redact` 50, `invite` 0,
 * `notifications.room` 50. Values that do not parse (see {@link parseLevel}) count as absent.
 * Note: the creator's 100 in a room without the event, and creators' infinite power in v12, are not in here; they
 * depend on the create event, see {@link powerLevel}.
 */
export function normalizePowerLevels(content: Record<string, unknown> | null | undefined): PowerLevels {
  const c = isObject(content) ? content : {};
  const num = (key: string, dflt: number) => parseLevel(c[key]) ?? dflt;
  const notifications = levelMap(c['notifications']);
  if (!Object.hasOwn(notifications, 'room')) notifications['room'] = 50;
  return {
    users: levelMap(c['users']),
    users_default: num('users_default', 0),
    events: levelMap(c['events']),
    events_default: num('events_default', 0),
    // 50 also when the room has no power-levels event: MSC1304 (r0.5.0), spec text fixed by matrix-spec#1479.
    state_default: num('state_default', 50),
    ban: num('ban', 50),
    kick: num('kick', 50),
    redact: num('redact', 50),
    invite: num('invite', 0),
    notifications,
  };
}

/**
 * Builds a {@link PowerContext} from the room's `m.room.create` event (sender and content) and the content of its
 * `m.room.power_levels` event (or `null`). Creators: `content.creator` in room versions 1–10 (falling back to the
 * sender), the sender from v11, plus the string entries of `additional_creators` where creators are privileged.
 * Without a create event the context has no creators and room version `"1"`.
 */
export function powerContext(
  create: { sender: string; content: Record<string, unknown> } | null,
  powerLevels: Record<string, unknown> | null,
): PowerContext {
  if (!create) return { powerLevels, creators: [], roomVersion: null };
  const rv = create.content['room_version'];
  const roomVersion = typeof rv === 'string' ? rv : null;
  const v = roomVersion ?? '1';
  const n = versionNumber(v);
  const implicit = n !== null ? n >= 11 : IMPLICIT_CREATOR_UNSTABLE.has(v);
  const legacy = create.content['creator'];
  const creators = [!implicit && typeof legacy === 'string' ? legacy : create.sender];
  if (creatorsArePrivileged(roomVersion)) {
    const extra = create.content['additional_creators'];
    if (Array.isArray(extra)) for (const u of extra) if (typeof u === 'string' && !creators.includes(u)) creators.push(u);
  }
  return { powerLevels, creators, roomVersion };
}

function levelOf(ctx: PowerContext, pl: PowerLevels, userId: string): number {
  const isCreator = ctx.creators.includes(userId);
  if (isCreator && creatorsArePrivileged(ctx.roomVersion)) return CREATOR_POWER;
  if (ctx.powerLevels === null) return isCreator ? 100 : 0;
  return Object.hasOwn(pl.users, userId) ? pl.users[userId]! : pl.users_default;
}

/**
 * A user's power level in the room: their `users` entry, else `users_default` (0 by default). In a room without a
 * power-levels event: 100 for the creator(s), 0 for everyone else. Where creators are privileged (v12+, see
 * {@link creatorsArePrivileged}) creators have `Infinity` whatever the `users` map says.
 */
export function powerLevel(ctx: PowerContext, userId: string): number {
  return levelOf(ctx, normalizePowerLevels(ctx.powerLevels), userId);
}

function eventLevel(pl: PowerLevels, eventType: string, isState: boolean): number {
  if (Object.hasOwn(pl.events, eventType)) return pl.events[eventType]!;
  return isState ? pl.state_default : pl.events_default;
}

/**
 * Whether `userId` may do `action`, by the power-level parts of the auth rules (membership is not checked: the user is
 * assumed joined). Rules, per room version auth rules and the `m.room.power_levels` description:
 * - `send`/`state`: level ≥ `events[type]`, else `events_default` (messages) / `state_default` (state). A state key
 *   starting with `@` must be the user's own. `m.room.member` is judged by the membership rules instead: one's own
 *   member event (profile) is allowed, others' go through invite/kick/ban/unban. `m.room.third_party_invite` needs
 *   the invite level.
 * - `invite`: level ≥ `invite`.
 * - `kick`: level ≥ `kick` and target's level < the user's; kicking oneself is leaving, always allowed.
 * - `ban`: level ≥ `ban` and target's level < the user's (so never oneself).
 * - `unban`: level ≥ `ban` and ≥ `kick` and target's level < the user's (a banned user cannot unban themselves).
 * - `redact`: the user may send `m.room.redaction`; for others' events also level ≥ `redact`. (In v1/v2 rooms servers
 *   also let users redact events from their own server; that is not modelled.)
 * - `notify`: level ≥ `notifications[key]` (default key `room`; default level 50).
 * Invariant: a privileged creator (v12+) can do everything except act on another creator.
 */
export function can(ctx: PowerContext, userId: string, action: Action): boolean {
  const pl = normalizePowerLevels(ctx.powerLevels);
  const me = levelOf(ctx, pl, userId);
  const outranks = (target: string) => levelOf(ctx, pl, target) < me;
  switch (action.kind) {
    case 'send':
      return me >= eventLevel(pl, action.eventType, false);
    case 'state': {
      const key = action.stateKey;
      if (action.eventType === 'm.room.member') return key === undefined || key === userId;
      if (key !== undefined && key.startsWith('@') && key !== userId) return false;
      if (action.eventType === 'm.room.third_party_invite') return me >= pl.invite;
      return me >= eventLevel(pl, action.eventType, true);
    }
    case 'invite':
      return me >= pl.invite;
    case 'kick':
      return action.target === userId || (me >= pl.kick && outranks(action.target));
    case 'ban':
      return me >= pl.ban && outranks(action.target);
    case 'unban':
      return action.target !== userId && me >= pl.ban && me >= pl.kick && outranks(action.target);
    case 'redact':
      return me >= eventLevel(pl, 'm.room.redaction', false) && (action.ownEvent === true || me >= pl.redact);
    case 'notify': {
      const key = action.key ?? 'room';
      return me >= (Object.hasOwn(pl.notifications, key) ? pl.notifications[key]! : 50);
    }
    default:
      return false; // an unknown kind (from untyped callers) is never allowed
  }
}
