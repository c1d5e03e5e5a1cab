/**
 * Rooms over the client-server API, as functions of the client's core (stateless: each call is its requests):
 * creating and joining rooms, direct chats in `m.direct`, membership changes, state events, aliases, and the
 * cache-backed look-ups (`getRoom`, `loadMembers`).
 */
import { HalcyonError } from '../errors.ts';
import { seg } from '../http.ts';
import { aliasArg, contentArg, roomIdArg, roomOrAliasArg, stringArg, userIdArg } from '../ids.ts';
import type { MatrixEvent } from '../protocol.ts';
import { RoomDetails } from '../rooms.ts';
import type { ClientCore } from './core.ts';
import type { CreateRoomOptions } from './options.ts';
import { getAccountData, setAccountData } from './users.ts';

/** Creates a room; resolves with its ID. `encrypted` adds `m.room.encryption` to the initial state. */
export async function createRoom(core: ClientCore, opts: CreateRoomOptions = {}): Promise<string> {
  const initialState = [...(opts.initialState ?? [])].map((e) => ({ type: e.type, state_key: e.stateKey ?? '', content: e.content }));
  if (opts.encrypted) initialState.push({ type: 'm.room.encryption', state_key: '', content: { algorithm: 'm.megolm.v1.aes-sha2' } });
  const body: Record<string, unknown> = { initial_state: initialState };
  if (opts.name !== undefined) body.name = opts.name;
  if (opts.topic !== undefined) body.topic = opts.topic;
  if (opts.preset !== undefined) body.preset = opts.preset;
  if (opts.invite?.length) body.invite = opts.invite;
  if (opts.isDirect) body.is_direct = true;
  if (opts.alias !== undefined) body.room_alias_name = opts.alias;
  if (opts.visibility !== undefined) body.visibility = opts.visibility;
  if (opts.roomVersion !== undefined) body.room_version = opts.roomVersion;
  if (opts.powerLevels !== undefined) body.power_level_content_override = opts.powerLevels;
  const res = await core.needHttp().json<{ room_id?: unknown }>('POST', '/_matrix/client/v3/createRoom', { body });
  if (typeof res.room_id !== 'string') throw new HalcyonError('HALCYON_BAD_RESPONSE', 'createRoom: no room_id in the answer');
  return res.room_id;
}

/**
 * The direct-message room with `userId`: an existing one from `m.direct` that the bot is in and the user is in or
 * invited to, else a new one (invited, `is_direct`, recorded in `m.direct`). One at a time per client: two
 * concurrent calls for the same user must not create two rooms.
 */
export function getOrCreateDm(core: ClientCore, userId: string, opts: { encrypted?: boolean } = {}): Promise<string> {
  userIdArg(userId, 'getOrCreateDm');
  return serially(core, 'dm', () => findOrCreateDm(core, userId, opts));
}

async function findOrCreateDm(core: ClientCore, userId: string, opts: { encrypted?: boolean }): Promise<string> {
  const direct = ((await getAccountData(core, 'm.direct')) ?? {}) as Record<string, unknown>;
  const candidates = Array.isArray(direct[userId]) ? (direct[userId] as unknown[]).filter((r): r is string => typeof r === 'string') : [];
  for (const roomId of [...candidates].reverse()) {
    // The bot's own membership: from its mirror, else from the server (its sync may not have caught up).
    const mine = core.mirror.joined(roomId) || (await memberOnServer(core, roomId, core.need().userId)) === 'join';
    if (!mine) continue;
    let m = (await getRoom(core, roomId))?.member(userId)?.membership;
    if (m === undefined) m = await memberOnServer(core, roomId, userId);
    if (m === 'join' || m === 'invite') return roomId;
  }
  const roomId = await createRoom(core, { isDirect: true, invite: [userId], preset: 'trusted_private_chat', encrypted: opts.encrypted ?? core.opts.encryption !== null });
  await addDirectRoom(core, userId, roomId);
  return roomId;
}

/** A user's membership in a room as the server has it now, or undefined. */
async function memberOnServer(core: ClientCore, roomId: string, userId: string): Promise<string | undefined> {
  const c = await getStateEvent(core, roomId, 'm.room.member', userId).catch(() => null);
  return typeof c?.membership === 'string' ? c.membership : undefined;
}

/** Runs `fn` after every earlier call with the same `key` has settled. */
function serially<T>(core: ClientCore, key: string, fn: () => Promise<T>): Promise<T> {
  const prev = core.serial.get(key) ?? Promise.resolve();
  const run = prev.catch(() => {}).then(fn);
  const tail = run.catch(() => {});
  core.serial.set(key, tail);
  void tail.then(() => {
    if (core.serial.get(key) === tail) core.serial.delete(key);
  });
  return run;
}

/** Records `roomId` as a direct chat with `userId` in `m.direct` (read, modify, write; one at a time). */
export function addDirectRoom(core: ClientCore, userId: string, roomId: string): Promise<void> {
  return serially(core, 'm.direct', async () => {
    const direct = { ...(((await getAccountData(core, 'm.direct', { fresh: true })) ?? {}) as Record<string, unknown>) };
    const list = Array.isArray(direct[userId]) ? (direct[userId] as unknown[]).filter((r): r is string => typeof r === 'string') : [];
    if (list.includes(roomId)) return;
    direct[userId] = [...list, roomId];
    await setAccountData(core, 'm.direct', direct);
  });
}

/** `?via=a&via=b` (the spec's name since v1.14; `server_name` is gone), or ''. */
function viaQuery(via: string[] | undefined): string {
  return via?.length ? `?${via.map((s) => `via=${encodeURIComponent(s)}`).join('&')}` : '';
}

/** Joins (`join`) or knocks on (`knock`) a room by ID or alias; resolves with the room ID. */
async function enter(core: ClientCore, how: 'join' | 'knock', roomIdOrAlias: string, opts: { reason?: string; via?: string[] }): Promise<string> {
  roomOrAliasArg(roomIdOrAlias, `${how}Room`);
  const body = opts.reason === undefined ? {} : { reason: opts.reason };
  const res = await core.needHttp().json<{ room_id?: unknown }>('POST', `/_matrix/client/v3/${how}/${seg(roomIdOrAlias)}${viaQuery(opts.via)}`, { body });
  if (typeof res.room_id !== 'string') throw new HalcyonError('HALCYON_BAD_RESPONSE', `${how}: no room_id in the answer`);
  return res.room_id;
}

/** Joins a room by ID or alias (`via`: servers to join through); resolves with the room ID. */
export function joinRoom(core: ClientCore, roomIdOrAlias: string, opts: { reason?: string; via?: string[] } = {}): Promise<string> {
  return enter(core, 'join', roomIdOrAlias, opts);
}

/** Knocks on a room by ID or alias; resolves with the room ID. */
export function knockRoom(core: ClientCore, roomIdOrAlias: string, opts: { reason?: string; via?: string[] } = {}): Promise<string> {
  return enter(core, 'knock', roomIdOrAlias, opts);
}

/** Leaves a room. */
export async function leaveRoom(core: ClientCore, roomId: string, reason?: string): Promise<void> {
  roomIdArg(roomId, 'leaveRoom');
  await core.needHttp().json('POST', `/_matrix/client/v3/rooms/${seg(roomId)}/leave`, { body: reason === undefined ? {} : { reason } });
}

/** Forgets a room the bot has left. */
export async function forgetRoom(core: ClientCore, roomId: string): Promise<void> {
  roomIdArg(roomId, 'forgetRoom');
  await core.needHttp().json('POST', `/_matrix/client/v3/rooms/${seg(roomId)}/forget`, { body: {} });
}

/** Invites, kicks, bans or unbans a user, with an optional reason. */
export async function membershipOp(core: ClientCore, roomId: string, op: 'invite' | 'kick' | 'ban' | 'unban', userId: string, reason?: string): Promise<void> {
  roomIdArg(roomId, `${op}User`);
  userIdArg(userId, `${op}User`);
  const body: Record<string, unknown> = { user_id: userId };
  if (reason !== undefined) body.reason = reason;
  await core.needHttp().json('POST', `/_matrix/client/v3/rooms/${seg(roomId)}/${op}`, { body });
}

/** Sets a user's power level in a room (reading the current levels from the server first). */
export async function setPowerLevel(core: ClientCore, roomId: string, userId: string, level: number): Promise<string> {
  roomIdArg(roomId, 'setPowerLevel');
  const pl = { ...((await getStateEvent(core, roomId, 'm.room.power_levels')) ?? {}) };
  pl.users = { ...((pl.users as Record<string, number> | undefined) ?? {}), [userId]: level };
  return sendStateEvent(core, roomId, 'm.room.power_levels', '', pl);
}

/** Sends a state event (never encrypted); resolves with its event ID. */
export async function sendStateEvent(core: ClientCore, roomId: string, type: string, stateKey: string, content: Record<string, unknown>): Promise<string> {
  roomIdArg(roomId, 'sendStateEvent');
  stringArg(type, 'sendStateEvent', 'the event type');
  stringArg(stateKey, 'sendStateEvent', 'the state key', true);
  contentArg(type, content, 'sendStateEvent');
  const res = await core.needHttp().json<{ event_id?: unknown }>('PUT', `/_matrix/client/v3/rooms/${seg(roomId)}/state/${seg(type)}/${seg(stateKey)}`, { body: content });
  if (typeof res.event_id !== 'string') throw new HalcyonError('HALCYON_BAD_RESPONSE', 'state: no event_id in the answer', { roomId });
  return res.event_id;
}

/** The content of a state event as the server has it now, or null if the room has none. */
export async function getStateEvent(core: ClientCore, roomId: string, type: string, stateKey = ''): Promise<Record<string, unknown> | null> {
  roomIdArg(roomId, 'getStateEvent');
  stringArg(type, 'getStateEvent', 'the event type');
  stringArg(stateKey, 'getStateEvent', 'the state key', true);
  try {
    return await core.needHttp().json('GET', `/_matrix/client/v3/rooms/${seg(roomId)}/state/${seg(type)}/${seg(stateKey)}`);
  } catch (err) {
    if ((err as HalcyonError).errcode === 'M_NOT_FOUND') return null;
    throw err;
  }
}

/** Resolves a room alias to its room ID and the servers that know it. */
export async function resolveAlias(core: ClientCore, alias: string): Promise<{ roomId: string; servers: string[] }> {
  aliasArg(alias, 'resolveAlias');
  const res = await core.needHttp().json<{ room_id?: unknown; servers?: unknown }>('GET', `/_matrix/client/v3/directory/room/${seg(alias)}`);
  if (typeof res.room_id !== 'string') throw new HalcyonError('HALCYON_BAD_RESPONSE', 'directory: no room_id in the answer');
  return { roomId: res.room_id, servers: Array.isArray(res.servers) ? res.servers.filter((s): s is string => typeof s === 'string') : [] };
}

/** The IDs of the rooms the bot has joined, as the server says. */
export async function getJoinedRooms(core: ClientCore): Promise<string[]> {
  const res = await core.needHttp().json<{ joined_rooms?: unknown }>('GET', '/_matrix/client/v3/joined_rooms');
  return Array.isArray(res.joined_rooms) ? res.joined_rooms.filter((r): r is string => typeof r === 'string') : [];
}

/** Everything the cache knows about a room, with permission checks, or undefined. Never asks the server. */
export async function getRoom(core: ClientCore, roomId: string): Promise<RoomDetails | undefined> {
  const cache = core.actors.set?.cache;
  if (!cache) throw new HalcyonError('HALCYON_NOT_RUNNING', 'getRoom needs a running client');
  const info = await cache.api.getRoom(roomId);
  return info ? new RoomDetails(info) : undefined;
}

/** Loads a room's full member list from the server into the cache; resolves with the room's details. */
export async function loadMembers(core: ClientCore, roomId: string): Promise<RoomDetails | undefined> {
  roomIdArg(roomId, 'loadMembers');
  const res = await core.needHttp().json<{ chunk?: unknown[] }>('GET', `/_matrix/client/v3/rooms/${seg(roomId)}/members`);
  const state = (res.chunk ?? []).filter(
    (e): e is MatrixEvent => typeof e === 'object' && e !== null && (e as MatrixEvent).type === 'm.room.member' && typeof (e as MatrixEvent).state_key === 'string',
  );
  // The cache's own membership wins over main's mirror, which may lag it by a batch.
  const cache = core.needCache();
  const membership = (await cache.getRoom(roomId))?.membership ?? core.mirror.get(roomId)?.membership ?? 'join';
  const changed = await cache.apply({ rooms: [{ roomId, membership, state }] });
  for (const s of changed) core.mirror.set(s);
  return getRoom(core, roomId);
}
