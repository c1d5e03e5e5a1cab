/**
 * The Client: the public face of Halcyon, a facade over its core (src/client/core.ts). Each member delegates to
 * the part that does the job: the lifecycle and actors (core.ts, client/actors.ts, client/supervisor.ts), the
 * main-thread end of the sync pipeline (client/intake.ts, client/delivery.ts), the event bus (client/bus.ts),
 * the room mirror (client/mirror.ts), and the API as functions of the core (client/messages.ts,
 * client/rooms-api.ts, client/users.ts, client/login.ts). Handlers run on this thread; polling, parsing, room
 * state and encryption live on worker threads.
 */
import type { Readable } from 'node:stream';
import { inspect } from 'node:util';
import { HalcyonError } from './errors.ts';
import { type ContentInput, type Mentions, type MessageOptions, type Presence, type Profile, type Room, type RoomActions, User } from './events.ts';
import { htmlToText, sanitizeHtml } from './html.ts';
import { roomIdArg, userIdArg } from './ids.ts';
import type { DownloadOptions, MediaConfig, MediaSource, SendMediaOptions, ThumbnailOptions, UploadOptions } from './media.ts';
import type { MetricsOptions } from './metrics.ts';
import type { OutboxOp, OutboxStatus } from './outbox.ts';
import type { CryptoStatus, RoomSummary } from './protocol.ts';
import type { RoomDetails } from './rooms.ts';
import { ClientCore, cores } from './client/core.ts';
import { requestVerification } from './client/delivery.ts';
import { importToken, login } from './client/login.ts';
import * as messages from './client/messages.ts';
import { type ClientEvents, type ClientOptions, type CreateRoomOptions, type Health, type ImportTokenOptions, type Listener, type LoginOptions, resolveOptions, type SendOptions, type WhoAmI } from './client/options.ts';
import * as rooms from './client/rooms-api.ts';
import * as users from './client/users.ts';
import { CommandRouter, type CommandsOptions } from './toolkit/commands.ts';
import { toolkitHost } from './toolkit/host.ts';
import { type ScheduledMessage, Scheduler, type ScheduleOptions } from './toolkit/schedule.ts';

export type {
  AutoJoinPolicy,
  Listener,
  BackpressureInfo,
  ClientEvents,
  ClientOptions,
  CreateRoomOptions,
  DecryptionErrorInfo,
  EncryptionOptions,
  Health,
  ImportTokenOptions,
  Knock,
  LoginOptions,
  SendOptions,
  SyncErrorInfo,
  VerificationOptions,
  WhoAmI,
} from './client/options.ts';

/** A Matrix bot client; see the README for a tour. */
export class Client implements RoomActions {
  readonly #core: ClientCore;
  readonly #scheduler: Scheduler;

  constructor(options: ClientOptions) {
    this.#core = new ClientCore(resolveOptions(options), this);
    cores.set(this, this.#core);
    this.#scheduler = new Scheduler(this, toolkitHost(this.#core));
  }

  /**
   * Logs in with a password and returns a long-lived token (homeserver, user ID, device ID, access token; never
   * the password). With `dataDir`, the device of an earlier login there is reused.
   */
  static login(opts: LoginOptions): Promise<string> {
    return login(opts);
  }

  /**
   * Wraps an access token you already have (from another client, an admin tool, an appservice registration)
   * into a Halcyon token: asks the homeserver whom and which device it belongs to (`whoami`) and resolves with
   * the token string. With `dataDir`, the directory is claimed for that account and device, as by
   * {@link Client.login}. The access token must belong to a device (`whoami` names one): E2EE keys live per
   * device.
   */
  static importToken(opts: ImportTokenOptions): Promise<string> {
    return importToken(opts);
  }

  /** What `util.inspect` shows of a client: its state and user, never the access token or the store passphrase. */
  [inspect.custom](): string {
    const s = this.#core.session;
    return `Client { state: '${this.#core.state}', userId: ${s ? `'${s.userId}'` : 'null'} }`;
  }

  /** What `JSON.stringify` shows of a client (like `util.inspect`: no secrets). */
  toJSON(): { state: string; userId: string | null } {
    return { state: this.#core.state, userId: this.#core.session?.userId ?? null };
  }

  // ---- lifecycle ----

  /** Adds a handler. Handlers may be async; within a room the next event waits for them. */
  on<K extends keyof ClientEvents>(event: K, listener: Listener<K>): this {
    const core = this.#core;
    core.bus.add(event, listener);
    // Sends an async handler makes after an await are traced to its event through a context per lane run.
    if (isAsync(listener)) core.dispatcher.useLaneScopes();
    if (event === 'event' && core.state === 'running') core.actors.wantAllTypes();
    return this;
  }

  /** Removes a handler added with {@link on}. */
  off<K extends keyof ClientEvents>(event: K, listener: Listener<K>): this {
    this.#core.bus.remove(event, listener);
    return this;
  }

  /** Adds a handler that runs once. */
  once<K extends keyof ClientEvents>(event: K, listener: Listener<K>): this {
    if (isAsync(listener)) this.#core.dispatcher.useLaneScopes();
    const wrapped: Listener<K> = (...args) => {
      this.off(event, wrapped);
      return listener(...args);
    };
    return this.on(event, wrapped);
  }

  /**
   * Starts the bot with a token from {@link Client.login}. Resolves once `ready` has fired (the first sync is
   * processed and the `ready` handlers have settled). Rejects with a coded error: `HALCYON_INVALID_TOKEN`,
   * `HALCYON_UNKNOWN_TOKEN` (revoked), `HALCYON_SOFT_LOGOUT` (log in again with the same data dir),
   * `HALCYON_STORE_MISMATCH`, `HALCYON_INSECURE_HOMESERVER`, ...
   */
  run(token: string): Promise<void> {
    return this.#core.run(token);
  }

  /** Stops polling, lets running handlers finish (up to `stopTimeoutMs`), saves state and ends the workers. */
  stop(): Promise<void> {
    return this.#core.stop();
  }

  /** Who the bot is (with its device's identity keys when encryption is on). */
  whoami(): WhoAmI {
    return this.#core.whoami();
  }

  /**
   * How the client is doing, for an embedding service's health check: state, the sync loop's last poll and
   * errors, the backlog of unhandled events and the outbox. Never throws; works in every state.
   */
  health(): Promise<Health> {
    return this.#core.health();
  }

  /** The prom-client registry the client records into (with `metrics` on), or null. */
  get metricsRegistry(): MetricsOptions['registry'] | null {
    return this.#core.metrics.registry;
  }

  /**
   * Starts an interactive verification (SAS) with `userId`'s device `deviceId`, or with each of the user's devices
   * (the first to accept goes on, the others are cancelled). The SAS comes as a `verificationRequest` event (or is
   * confirmed by itself with `verification.autoConfirm`). Resolves with the verified device once both sides have
   * confirmed; rejects with `HALCYON_VERIFICATION_CANCELLED` if it was cancelled or did not match.
   */
  requestVerification(userId: string, deviceId?: string): Promise<{ userId: string; deviceId: string | null }> {
    return requestVerification(this.#core, userId, deviceId);
  }

  /** State of end-to-end encryption (store size, events waiting for keys), or null when it is off. */
  async cryptoStatus(): Promise<CryptoStatus | null> {
    const core = this.#core;
    core.need();
    if (!core.opts.encryption) return null;
    const crypto = core.actors.openCrypto;
    if (!crypto) throw new HalcyonError('HALCYON_RESTARTING', 'the crypto actor is restarting; ask again in a few seconds');
    return crypto.status();
  }

  // ---- rooms ----

  /**
   * Whether a room is encrypted. With encryption on, the crypto store decides (asking the server once for rooms
   * it has not seen); otherwise the room cache does, and the server for a room the cache has not seen.
   */
  isRoomEncrypted(roomId: string): Promise<boolean> {
    return messages.isRoomEncrypted(this.#core, roomId);
  }

  /** A handle on a room: its cached summary and room-bound shortcuts. */
  room(roomId: string): Room {
    return this.#core.mirror.room(roomId);
  }

  /** Everything the cache knows about a room (members, power levels, ...) with permission checks, or undefined. Never asks the server. */
  getRoom(roomId: string): Promise<RoomDetails | undefined> {
    return rooms.getRoom(this.#core, roomId);
  }

  /**
   * Loads a room's full member list from the server into the cache (sync lazy-loads members: only those who
   * spoke or changed are known until then), and resolves with the room's details.
   */
  loadMembers(roomId: string): Promise<RoomDetails | undefined> {
    return rooms.loadMembers(this.#core, roomId);
  }

  /**
   * Resolves with the room's handle once the bot's sync shows it with `membership` (default `join`): after
   * `createRoom` or `joinRoom`, the room reaches the cache and `room()` a poll later. Rejects with
   * `HALCYON_TIMEOUT` after `timeoutMs` (default 30 s).
   */
  waitForRoom(roomId: string, opts: { membership?: RoomSummary['membership']; timeoutMs?: number } = {}): Promise<Room> {
    roomIdArg(roomId, 'waitForRoom');
    this.#core.need();
    return this.#core.mirror.waitFor(roomId, opts.membership ?? 'join', opts.timeoutMs ?? 30_000);
  }

  /** Summaries of the rooms the bot has joined (from the cache; no request). */
  async listRooms(): Promise<RoomSummary[]> {
    return this.#core.mirror.joinedRooms();
  }

  /** The IDs of the rooms the bot has joined, as the server says (`/joined_rooms`). */
  getJoinedRooms(): Promise<string[]> {
    return rooms.getJoinedRooms(this.#core);
  }

  /** Creates a room; resolves with its ID. `encrypted` adds `m.room.encryption` to the initial state. */
  createRoom(opts: CreateRoomOptions = {}): Promise<string> {
    return rooms.createRoom(this.#core, opts);
  }

  /**
   * The direct-message room with `userId`: an existing one from `m.direct` that the bot is in and the user is
   * in or invited to, else a new one (invited, `is_direct`, recorded in `m.direct`). Resolves with the room ID.
   */
  getOrCreateDm(userId: string, opts: { encrypted?: boolean } = {}): Promise<string> {
    return rooms.getOrCreateDm(this.#core, userId, opts);
  }

  /** Joins a room by ID or alias (`via`: servers to join through); resolves with the room ID. */
  joinRoom(roomIdOrAlias: string, opts: { reason?: string; via?: string[] } = {}): Promise<string> {
    return rooms.joinRoom(this.#core, roomIdOrAlias, opts);
  }

  /**
   * Knocks on a room (asks to be let in; rooms with join rule `knock`, room version 7+), by ID or alias (`via`:
   * servers to knock through); resolves with the room ID. The room's stripped state arrives as a `knock` event.
   */
  knockRoom(roomIdOrAlias: string, opts: { reason?: string; via?: string[] } = {}): Promise<string> {
    return rooms.knockRoom(this.#core, roomIdOrAlias, opts);
  }

  /** Leaves a room. */
  leaveRoom(roomId: string, reason?: string): Promise<void> {
    return rooms.leaveRoom(this.#core, roomId, reason);
  }

  /** Forgets a room the bot has left (the server drops it from the bot's history). */
  forgetRoom(roomId: string): Promise<void> {
    return rooms.forgetRoom(this.#core, roomId);
  }

  /** Invites a user. */
  inviteUser(roomId: string, userId: string, reason?: string): Promise<void> {
    return rooms.membershipOp(this.#core, roomId, 'invite', userId, reason);
  }

  /** Kicks a user (they may rejoin). */
  kickUser(roomId: string, userId: string, reason?: string): Promise<void> {
    return rooms.membershipOp(this.#core, roomId, 'kick', userId, reason);
  }

  /** Bans a user. */
  banUser(roomId: string, userId: string, reason?: string): Promise<void> {
    return rooms.membershipOp(this.#core, roomId, 'ban', userId, reason);
  }

  /** Lifts a user's ban. */
  unbanUser(roomId: string, userId: string, reason?: string): Promise<void> {
    return rooms.membershipOp(this.#core, roomId, 'unban', userId, reason);
  }

  /** Sets the room's name; resolves with the state event's ID. */
  setRoomName(roomId: string, name: string): Promise<string> {
    return this.sendStateEvent(roomId, 'm.room.name', '', { name });
  }

  /** Sets the room's topic; resolves with the state event's ID. */
  setRoomTopic(roomId: string, topic: string): Promise<string> {
    return this.sendStateEvent(roomId, 'm.room.topic', '', { topic });
  }

  /** Sets the room's avatar (an `mxc://` URI, e.g. from `uploadMedia`); resolves with the state event's ID. */
  setRoomAvatar(roomId: string, mxc: string): Promise<string> {
    return this.sendStateEvent(roomId, 'm.room.avatar', '', { url: mxc });
  }

  /** Sets a user's power level in a room (reading the current levels from the server first). */
  setPowerLevel(roomId: string, userId: string, level: number): Promise<string> {
    return rooms.setPowerLevel(this.#core, roomId, userId, level);
  }

  /** Sends a state event; resolves with its event ID. State events are never encrypted. */
  sendStateEvent(roomId: string, type: string, stateKey: string, content: Record<string, unknown>): Promise<string> {
    return rooms.sendStateEvent(this.#core, roomId, type, stateKey, content);
  }

  /** The content of a state event as the server has it now, or null if the room has none. */
  getStateEvent(roomId: string, type: string, stateKey = ''): Promise<Record<string, unknown> | null> {
    return rooms.getStateEvent(this.#core, roomId, type, stateKey);
  }

  /** Resolves a room alias (`#room:server`) to its room ID and the servers that know it. */
  resolveAlias(alias: string): Promise<{ roomId: string; servers: string[] }> {
    return rooms.resolveAlias(this.#core, alias);
  }

  // ---- messages ----

  /** Sends a message (a string becomes `m.text`), as a reply, in a thread, with mentions; resolves with the event ID. */
  sendMessage(roomId: string, content: ContentInput, opts: MessageOptions = {}): Promise<string> {
    return messages.sendMessage(this.#core, roomId, content, opts);
  }

  /** Sends an `m.notice` (what bots send when they should not trigger other bots). */
  sendNotice(roomId: string, text: string, opts?: MessageOptions): Promise<string> {
    return this.sendMessage(roomId, { msgtype: 'm.notice', body: text }, opts);
  }

  /** Sends an `m.emote` (`/me` text). */
  sendEmote(roomId: string, text: string, opts?: MessageOptions): Promise<string> {
    return this.sendMessage(roomId, { msgtype: 'm.emote', body: text }, opts);
  }

  /**
   * Sends HTML: it is sanitised to the tags and attributes the spec allows (scripts, handlers and foreign URLs
   * removed), and the plain-text `body` is generated from it unless given.
   */
  sendHtml(roomId: string, html: string, plainText?: string, opts?: MessageOptions): Promise<string> {
    const clean = sanitizeHtml(html);
    return this.sendMessage(roomId, { msgtype: 'm.text', body: plainText ?? htmlToText(clean), format: 'org.matrix.custom.html', formatted_body: clean }, opts);
  }

  /**
   * Edits a message (`m.replace`; clients honour edits of the sender's own messages only); resolves with the
   * edit's ID. `mentions` (or `m.mentions` in the content) is the full set the new version mentions; the edit's
   * top-level `m.mentions` names only those the previous version did not, so nobody is pinged twice (when the
   * previous version is unknown — an encrypted message sent before this run — nobody is pinged).
   */
  editMessage(roomId: string, eventId: string, newContent: ContentInput, opts: { mentions?: Mentions } = {}): Promise<string> {
    return messages.editMessage(this.#core, roomId, eventId, newContent, opts);
  }

  /** Reacts to an event with `key` (usually an emoji); resolves with the reaction's event ID. */
  react(roomId: string, eventId: string, key: string): Promise<string> {
    return this.sendEvent(roomId, 'm.reaction', { 'm.relates_to': { rel_type: 'm.annotation', event_id: eventId, key } });
  }

  /** Sends a read receipt up to `eventId` (`private`: `m.read.private`; `threadId`: a threaded receipt). */
  sendReadReceipt(roomId: string, eventId: string, opts: { private?: boolean; threadId?: string } = {}): Promise<void> {
    return messages.sendReadReceipt(this.#core, roomId, eventId, opts);
  }

  /**
   * Sends any room event; resolves with its event ID. In an encrypted room the event is encrypted (the room key
   * is shared with the members' devices first); with encryption off, sending into an encrypted room is refused
   * with `HALCYON_ROOM_ENCRYPTED` unless `allowPlaintext` is given.
   */
  sendEvent(roomId: string, type: string, content: Record<string, unknown>, opts: SendOptions = {}): Promise<string> {
    return messages.sendEvent(this.#core, roomId, type, content, opts);
  }

  /** Redacts an event; resolves with the redaction's event ID. Goes through the outbox like a send. */
  redactEvent(roomId: string, eventId: string, reason?: string): Promise<string> {
    return messages.redactEvent(this.#core, roomId, eventId, reason);
  }

  /**
   * Sends left in the outbox (`pending`: not yet acknowledged by the server; `dead`: failed for good), those
   * waiting now by reason (`pacing`: the rate limit's bucket, `rate_limited`: the server's 429, `retrying`: a
   * backoff after a failed attempt) and when the next is due.
   */
  outboxStatus(): OutboxStatus {
    return this.#core.needOutbox().status();
  }

  /** The dead letters kept in the outbox: sends that failed for good, with their error. */
  deadLetters(): Array<{ roomId: string; txnId: string; op: OutboxOp; attempts: number; error: string | null }> {
    return this.#core.needOutbox().deadLetters();
  }

  /** Shows the bot as typing (true, or a timeout in ms; default 30 s) or stops it (false). */
  sendTyping(roomId: string, on: boolean | number = true): Promise<void> {
    return users.sendTyping(this.#core, roomId, on);
  }

  /** Sets the bot's presence and status message. */
  setPresence(state: 'online' | 'offline' | 'unavailable', statusMsg?: string): Promise<void> {
    return users.setPresence(this.#core, state, statusMsg);
  }

  /**
   * Shows the bot as typing in `roomId` until `work` settles, refreshing the notice every 20 s (it expires
   * after 30 s), then stops it. Resolves or rejects as `work` does; typing failures never fail the work.
   */
  typingWhile<T>(roomId: string, work: Promise<T> | (() => Promise<T>)): Promise<T> {
    return users.typingWhile(this.#core, roomId, work);
  }

  // ---- toolkit ----

  /**
   * A command router: `client.commands({ prefix: '!' }).add('ban <user:userId> [reason...]', { power: 'ban' },
   * async (ctx) => ...)`. Typed arguments, permission checks, cooldowns, a generated help command, questions
   * (`ctx.ask`) and replies in threads; see the README's "Commands" section.
   */
  commands(opts: CommandsOptions = {}): CommandRouter {
    return new CommandRouter(this, toolkitHost(this.#core), opts);
  }

  /**
   * Sends a message later (`{ at }` or `{ inMs }`): as a server-side delayed event (MSC4140) where the homeserver
   * offers them, else from a durable local schedule in the data dir that fires after a restart; encrypted rooms
   * always use the local one (encrypted at send time). Resolves with its ID and where it is kept.
   */
  schedule(roomId: string, content: ContentInput, opts: ScheduleOptions): Promise<ScheduledMessage> {
    return this.#scheduler.schedule(roomId, content, opts);
  }

  /** Cancels a scheduled message; resolves with false if it was sent or cancelled already (or is unknown). */
  cancelScheduled(id: string): Promise<boolean> {
    return this.#scheduler.cancel(id);
  }

  // ---- users ----

  /** A handle on a user: profile and presence lookups, and a direct chat with them. */
  user(userId: string): User {
    userIdArg(userId, 'user');
    return new User(userId, this);
  }

  /** A user's profile (display name and avatar) as the server has it. */
  getProfile(userId: string): Promise<Profile> {
    return users.getProfile(this.#core, userId);
  }

  /** Sets the bot's display name. */
  setDisplayName(name: string): Promise<void> {
    return users.setProfileField(this.#core, 'displayname', name);
  }

  /** Sets the bot's avatar (an `mxc://` URI, e.g. from `uploadMedia`). */
  setAvatarUrl(mxc: string): Promise<void> {
    return users.setProfileField(this.#core, 'avatar_url', mxc);
  }

  /** A user's presence as the server has it. */
  getPresence(userId: string): Promise<Presence> {
    return users.getPresence(this.#core, userId);
  }

  /** Searches the user directory (users sharing a room with the bot, or all users if the server allows). */
  searchUsers(term: string, limit = 10): Promise<{ results: Array<{ userId: string; displayName: string | null; avatarUrl: string | null }>; limited: boolean }> {
    return users.searchUsers(this.#core, term, limit);
  }

  // ---- account data ----

  /**
   * Global account data of `type` (the bot's own key-value store on the server), or null. Answered from the cache
   * (kept current by sync) when it has it; `fresh` asks the server.
   */
  getAccountData(type: string, opts: { fresh?: boolean } = {}): Promise<Record<string, unknown> | null> {
    return users.getAccountData(this.#core, type, opts);
  }

  /** Sets global account data of `type`; an `accountData` event follows when the change comes back by sync. */
  setAccountData(type: string, content: Record<string, unknown>): Promise<void> {
    return users.setAccountData(this.#core, type, content);
  }

  /** Account data of `type` for one room, or null (from the cache when it has it; `fresh` asks the server). */
  getRoomAccountData(roomId: string, type: string, opts: { fresh?: boolean } = {}): Promise<Record<string, unknown> | null> {
    return users.getAccountData(this.#core, type, opts, roomId);
  }

  /** Sets account data of `type` for one room. */
  setRoomAccountData(roomId: string, type: string, content: Record<string, unknown>): Promise<void> {
    return users.setAccountData(this.#core, type, content, roomId);
  }

  // ---- media ----

  /** The homeserver's media configuration (its upload limit). */
  mediaConfig(): Promise<MediaConfig> {
    return this.#core.needMedia().config();
  }

  /** Uploads a file (path, bytes or stream; streamed, not buffered) and resolves with its `mxc://` URI. */
  uploadMedia(source: MediaSource, opts?: UploadOptions): Promise<string> {
    return this.#core.needMedia().upload(source, opts);
  }

  /** Downloads an `mxc://` URI through authenticated media into memory. */
  downloadMedia(mxc: string, opts?: DownloadOptions): Promise<Buffer> {
    return this.#core.needMedia().download(mxc, opts);
  }

  /**
   * Downloads a thumbnail of an `mxc://` URI made by the server (`GET /_matrix/client/v1/media/thumbnail`):
   * `{ width, height, method?: 'crop' | 'scale', animated?, maxBytes? }`. Resolves with the image bytes.
   */
  downloadThumbnail(mxc: string, opts: ThumbnailOptions): Promise<Buffer> {
    return this.#core.needMedia().downloadThumbnail(mxc, opts);
  }

  /** Downloads an `mxc://` URI through authenticated media as a stream (`maxBytes`: refuse past it). */
  downloadMediaStream(mxc: string, opts?: DownloadOptions): Promise<Readable> {
    return this.#core.needMedia().downloadStream(mxc, opts);
  }

  /** Downloads the file of a media message's content: `url`, or `file` (decrypted, its hash checked). */
  downloadContent(content: Record<string, unknown>, opts?: DownloadOptions): Promise<Buffer> {
    return this.#core.needMedia().downloadContent(content, opts);
  }

  /** Sends an image (`m.image`, with size, dimensions, a thumbnail and a blurhash); encrypted in encrypted rooms. */
  async sendImage(roomId: string, source: MediaSource, opts?: SendMediaOptions): Promise<string> {
    roomIdArg(roomId, 'sendImage');
    return this.#core.needMedia().sendImage(roomId, source, opts);
  }

  /** Sends a video (`m.video`); encrypted in encrypted rooms. */
  async sendVideo(roomId: string, source: MediaSource, opts?: SendMediaOptions): Promise<string> {
    roomIdArg(roomId, 'sendVideo');
    return this.#core.needMedia().sendVideo(roomId, source, opts);
  }

  /** Sends an audio file (`m.audio`); encrypted in encrypted rooms. */
  async sendAudio(roomId: string, source: MediaSource, opts?: SendMediaOptions): Promise<string> {
    roomIdArg(roomId, 'sendAudio');
    return this.#core.needMedia().sendAudio(roomId, source, opts);
  }

  /** Sends any file (`m.file`); encrypted in encrypted rooms. */
  async sendFile(roomId: string, source: MediaSource, opts?: SendMediaOptions): Promise<string> {
    roomIdArg(roomId, 'sendFile');
    return this.#core.needMedia().sendFile(roomId, source, opts);
  }
}

/** Whether a handler is an `async` function (its sends after an await need a context per lane run). */
function isAsync(listener: unknown): boolean {
  return (listener as { constructor?: { name?: string } }).constructor?.name === 'AsyncFunction';
}
