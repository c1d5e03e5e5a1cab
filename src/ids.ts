/**
 * Checks of the identifiers and content a caller passes, before any request: a typo (`'not-a-room'`, a user ID
 * without its server, a message without `msgtype`) fails at once with `HALCYON_INVALID_ARGUMENT` naming the
 * argument, instead of reaching the server and ending as a dead letter minutes later. The grammar is the
 * spec's ("Appendices: identifier grammar"), leniently: historical user IDs and room versions 12+ room IDs
 * (no server part) pass.
 */
import { HalcyonError } from './errors.ts';

/** Identifiers are at most 255 bytes (spec); more is a mistake, not an ID. */
const MAX_ID = 255;
const ROOM_ID = /^![^\s:]+(:[^\s]+)?$/;
const USER_ID = /^@[^\s:]+:[^\s]+$/;
const ALIAS = /^#[^\s:]+:[^\s]+$/;
const EVENT_ID = /^\$[^\s]+$/;

function check(v: unknown, re: RegExp, what: string, method: string, example: string): string {
  if (typeof v !== 'string' || v.length > MAX_ID || !re.test(v)) {
    const shown = typeof v === 'string' ? JSON.stringify(v.length > 80 ? `${v.slice(0, 80)}…` : v) : String(v);
    throw new HalcyonError('HALCYON_INVALID_ARGUMENT', `${method}: ${shown} is not ${what} (like ${example})`);
  }
  return v;
}

/** Throws `HALCYON_INVALID_ARGUMENT` unless `v` is a room ID (`!opaque:server`, or `!opaque` in room v12+). */
export function roomIdArg(v: unknown, method: string): string {
  return check(v, ROOM_ID, 'a room ID', method, '!abc123:example.org');
}

/** Throws `HALCYON_INVALID_ARGUMENT` unless `v` is a user ID (`@local:server`). */
export function userIdArg(v: unknown, method: string): string {
  return check(v, USER_ID, 'a user ID', method, '@alice:example.org');
}

/** Throws `HALCYON_INVALID_ARGUMENT` unless `v` is an event ID (`$opaque`). */
export function eventIdArg(v: unknown, method: string): string {
  return check(v, EVENT_ID, 'an event ID', method, '$abc123');
}

/** Throws `HALCYON_INVALID_ARGUMENT` unless `v` is a room alias (`#alias:server`). */
export function aliasArg(v: unknown, method: string): string {
  return check(v, ALIAS, 'a room alias', method, '#room:example.org');
}

/** Throws `HALCYON_INVALID_ARGUMENT` unless `v` is a room ID or a room alias. */
export function roomOrAliasArg(v: unknown, method: string): string {
  return typeof v === 'string' && v.startsWith('#') ? aliasArg(v, method) : roomIdArg(v, method);
}

/** Throws `HALCYON_INVALID_ARGUMENT` unless `v` is a non-empty string (an event type, a state key may be ''). */
export function stringArg(v: unknown, method: string, what: string, allowEmpty = false): string {
  if (typeof v !== 'string' || (!allowEmpty && v === '')) {
    throw new HalcyonError('HALCYON_INVALID_ARGUMENT', `${method}: ${what} must be a${allowEmpty ? '' : ' non-empty'} string`);
  }
  return v;
}

/**
 * Throws `HALCYON_INVALID_ARGUMENT` unless `content` is an object and, for `m.room.message`, has the string
 * `msgtype` and `body` every message needs (the spec's required fields: clients drop messages without them).
 */
export function contentArg(type: string, content: unknown, method: string): Record<string, unknown> {
  if (typeof content !== 'object' || content === null || Array.isArray(content)) {
    throw new HalcyonError('HALCYON_INVALID_ARGUMENT', `${method}: the content must be an object`);
  }
  const c = content as Record<string, unknown>;
  if (type === 'm.room.message' && (typeof c.msgtype !== 'string' || typeof c.body !== 'string')) {
    throw new HalcyonError('HALCYON_INVALID_ARGUMENT', `${method}: m.room.message content needs a string msgtype (e.g. "m.text") and a string body`);
  }
  return c;
}
