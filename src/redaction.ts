/**
 * The spec's redaction algorithm for event content, per room version, as pure functions: which content keys of
 * each event type survive a redaction.
 *
 * Sources: "Redactions" in each room version of the spec (https://spec.matrix.org/latest/rooms/v1/#redactions to
 * https://spec.matrix.org/latest/rooms/v11/#redactions; v12 keeps v11's rules):
 * - v1–v5: `m.room.member` keeps `membership`; `m.room.create` `creator`; `m.room.join_rules` `join_rule`;
 *   `m.room.power_levels` `ban`, `events`, `events_default`, `kick`, `redact`, `state_default`, `users`,
 *   `users_default`; `m.room.aliases` `aliases`; `m.room.history_visibility` `history_visibility`.
 * - v6: `m.room.aliases` keeps nothing. v8: `m.room.join_rules` also keeps `allow`. v9 (and v10):
 *   `m.room.member` also keeps `join_authorised_via_users_server`.
 * - v11: `m.room.create` keeps its whole content; `m.room.power_levels` also keeps `invite`; `m.room.redaction`
 *   keeps `redacts`; `m.room.member` also keeps `third_party_invite`, reduced to its `signed` key.
 * Every other type keeps no content. The top-level keys the algorithm strips are not modelled: the cache, the
 * only user, holds content alone.
 */
import type { MatrixEvent } from './protocol.ts';

/** What a room version's redaction rules keep beyond the v1 lists. */
interface Rules {
  /** v1–v5: `m.room.aliases` keeps `aliases`. */
  aliases: boolean;
  /** v8+: `m.room.join_rules` keeps `allow`. */
  allow: boolean;
  /** v9+: `m.room.member` keeps `join_authorised_via_users_server`. */
  joinAuthorised: boolean;
  /** v11+ (MSC2176, MSC3821, MSC3989): the create event whole, power levels' `invite`, `redacts`, `third_party_invite.signed`. */
  v11: boolean;
}

/**
 * The rules of a room version. `null` (no `room_version` in the create event) is `"1"`. A version that is not an
 * integer (an unstable one) gets the newest rules: the stable versions before v11 are all integers.
 */
function rulesOf(roomVersion: string | null): Rules {
  const v = roomVersion ?? '1';
  const n = /^[1-9]\d*$/.test(v) ? Number(v) : Infinity;
  return { aliases: n <= 5, allow: n >= 8, joinAuthorised: n >= 9, v11: n >= 11 };
}

const POWER_LEVELS_KEPT = ['ban', 'events', 'events_default', 'kick', 'redact', 'state_default', 'users', 'users_default'];

/** The content keys `type` keeps under `rules` (null: all of them). */
function keptKeys(type: string, rules: Rules): string[] | null {
  switch (type) {
    case 'm.room.member':
      return rules.joinAuthorised ? ['membership', 'join_authorised_via_users_server'] : ['membership'];
    case 'm.room.create':
      return rules.v11 ? null : ['creator'];
    case 'm.room.join_rules':
      return rules.allow ? ['join_rule', 'allow'] : ['join_rule'];
    case 'm.room.power_levels':
      return rules.v11 ? [...POWER_LEVELS_KEPT, 'invite'] : POWER_LEVELS_KEPT;
    case 'm.room.aliases':
      return rules.aliases ? ['aliases'] : [];
    case 'm.room.history_visibility':
      return ['history_visibility'];
    case 'm.room.redaction':
      return rules.v11 ? ['redacts'] : [];
    default:
      return [];
  }
}

/**
 * The content an event of `type` has once redacted in a room of `roomVersion` (`null` means `"1"`). A new
 * object; `content` is not changed (kept values are shared with it, not copied).
 */
export function redactContent(type: string, content: Record<string, unknown>, roomVersion: string | null): Record<string, unknown> {
  const rules = rulesOf(roomVersion);
  const keys = keptKeys(type, rules);
  if (keys === null) return { ...content };
  const out: Record<string, unknown> = {};
  for (const k of keys) if (Object.hasOwn(content, k)) out[k] = content[k];
  // v11 keeps third_party_invite, but only its signed key (an empty object when it has none).
  const tpi = content['third_party_invite'];
  if (rules.v11 && type === 'm.room.member' && typeof tpi === 'object' && tpi !== null && !Array.isArray(tpi)) {
    out['third_party_invite'] = Object.hasOwn(tpi, 'signed') ? { signed: (tpi as Record<string, unknown>)['signed'] } : {};
  }
  return out;
}

/**
 * The event ID an `m.room.redaction` event redacts, or null: the top-level `redacts` (room versions 1–10, where
 * the server sets it; content there is the sender's own, so it must not override it), else `content.redacts`
 * (v11 and later).
 */
export function redactedEventId(ev: MatrixEvent): string | null {
  if (ev.type !== 'm.room.redaction') return null;
  if (typeof ev.redacts === 'string') return ev.redacts;
  const inner = ev.content['redacts'];
  return typeof inner === 'string' ? inner : null;
}
