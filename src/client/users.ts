/**
 * Users and account data over the client-server API, as functions of the client's core: profiles, presence,
 * the user directory, typing, and account data (answered from the cache actor, which sync keeps current).
 */
import type { HalcyonError } from '../errors.ts';
import type { Presence, Profile } from '../events.ts';
import { seg } from '../http.ts';
import { roomIdArg, userIdArg } from '../ids.ts';
import type { ClientCore } from './core.ts';

/** Typing notices last 30 s; refreshed well before they lapse while work goes on. */
const TYPING_REFRESH_MS = 20_000;

/** A user's profile (display name and avatar) as the server has it. */
export async function getProfile(core: ClientCore, userId: string): Promise<Profile> {
  userIdArg(userId, 'getProfile');
  const res = await core.needHttp().json<{ displayname?: unknown; avatar_url?: unknown }>('GET', `/_matrix/client/v3/profile/${seg(userId)}`);
  return { displayName: typeof res.displayname === 'string' ? res.displayname : null, avatarUrl: typeof res.avatar_url === 'string' ? res.avatar_url : null };
}

/** Sets one field of the bot's profile (`displayname` or `avatar_url`). */
export async function setProfileField(core: ClientCore, field: 'displayname' | 'avatar_url', value: string): Promise<void> {
  const s = core.need();
  await core.needHttp().json('PUT', `/_matrix/client/v3/profile/${seg(s.userId)}/${field}`, { body: { [field]: value } });
}

/** A user's presence as the server has it. */
export async function getPresence(core: ClientCore, userId: string): Promise<Presence> {
  userIdArg(userId, 'getPresence');
  const r = await core.needHttp().json<Record<string, unknown>>('GET', `/_matrix/client/v3/presence/${seg(userId)}/status`);
  return {
    presence: typeof r.presence === 'string' ? r.presence : 'offline',
    statusMsg: typeof r.status_msg === 'string' ? r.status_msg : null,
    lastActiveAgo: typeof r.last_active_ago === 'number' ? r.last_active_ago : null,
    currentlyActive: r.currently_active === true,
  };
}

/** Sets the bot's presence and status message. */
export async function setPresence(core: ClientCore, state: 'online' | 'offline' | 'unavailable', statusMsg?: string): Promise<void> {
  const s = core.need();
  // Polls carry set_presence: change it first, or the poll the server wakes for this change would undo it.
  await core.actors.set?.sync.api.setPresence(state);
  await core.needHttp().json('PUT', `/_matrix/client/v3/presence/${seg(s.userId)}/status`, {
    body: statusMsg === undefined ? { presence: state } : { presence: state, status_msg: statusMsg },
  });
}

/** Searches the user directory (users sharing a room with the bot, or all users if the server allows). */
export async function searchUsers(core: ClientCore, term: string, limit = 10): Promise<{ results: Array<{ userId: string; displayName: string | null; avatarUrl: string | null }>; limited: boolean }> {
  const res = await core.needHttp().json<{ results?: unknown; limited?: unknown }>('POST', '/_matrix/client/v3/user_directory/search', { body: { search_term: term, limit } });
  const results = (Array.isArray(res.results) ? res.results : [])
    .filter((u): u is Record<string, unknown> => typeof u === 'object' && u !== null && typeof (u as Record<string, unknown>).user_id === 'string')
    .map((u) => ({
      userId: u.user_id as string,
      displayName: typeof u.display_name === 'string' ? u.display_name : null,
      avatarUrl: typeof u.avatar_url === 'string' ? u.avatar_url : null,
    }));
  return { results, limited: res.limited === true };
}

/** Shows the bot as typing (true, or a timeout in ms; default 30 s) or stops it (false). */
export async function sendTyping(core: ClientCore, roomId: string, on: boolean | number = true): Promise<void> {
  roomIdArg(roomId, 'sendTyping');
  const s = core.need();
  const body = on === false ? { typing: false } : { typing: true, timeout: typeof on === 'number' ? on : 30_000 };
  await core.needHttp().json('PUT', `/_matrix/client/v3/rooms/${seg(roomId)}/typing/${seg(s.userId)}`, { body });
}

/** Typing in `roomId` until `work` settles (refreshed every 20 s), then stopped; typing failures never fail the work. */
export async function typingWhile<T>(core: ClientCore, roomId: string, work: Promise<T> | (() => Promise<T>)): Promise<T> {
  core.need();
  const quiet = (on: boolean) => sendTyping(core, roomId, on).catch((e: unknown) => core.opts.logger.warn(e, 'typing notice'));
  void quiet(true);
  const timer = setInterval(() => void quiet(true), TYPING_REFRESH_MS);
  try {
    return await (typeof work === 'function' ? work() : work);
  } finally {
    clearInterval(timer);
    if (core.state === 'running') await quiet(false);
  }
}

/** The account-data path of `type`: global (`roomId` null) or of one room. */
function accountDataPath(core: ClientCore, roomId: string | null, type: string): string {
  const user = `/_matrix/client/v3/user/${seg(core.need().userId)}`;
  return roomId === null ? `${user}/account_data/${seg(type)}` : `${user}/rooms/${seg(roomId)}/account_data/${seg(type)}`;
}

/**
 * Global account data of `type` (`roomId` null) or of one room, or null: from the cache (kept current by sync)
 * when it has it; `fresh` asks the server.
 */
export async function getAccountData(core: ClientCore, type: string, opts: { fresh?: boolean } = {}, roomId: string | null = null): Promise<Record<string, unknown> | null> {
  if (roomId !== null) roomIdArg(roomId, 'getRoomAccountData');
  const path = accountDataPath(core, roomId, type);
  if (opts.fresh !== true) {
    const cached = await core.needCache().accountData(roomId, type);
    if (cached) return cached;
  }
  try {
    const content = await core.needHttp().json<Record<string, unknown>>('GET', path);
    await core.actors.set?.cache.api.apply({ rooms: [], accountData: [{ roomId, type, content }] });
    return content;
  } catch (err) {
    if ((err as HalcyonError).errcode === 'M_NOT_FOUND') return null;
    throw err;
  }
}

/** Sets account data of `type`, global (`roomId` null) or of one room; the cache takes it at once. */
export async function setAccountData(core: ClientCore, type: string, content: Record<string, unknown>, roomId: string | null = null): Promise<void> {
  if (roomId !== null) roomIdArg(roomId, 'setRoomAccountData');
  await core.needHttp().json('PUT', accountDataPath(core, roomId, type), { body: content });
  await core.actors.set?.cache.api.apply({ rooms: [], accountData: [{ roomId, type, content }] });
}
