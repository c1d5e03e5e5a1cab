/**
 * The Client: the public face of Halcyon. It starts the actors (sync, cache), receives batches from the sync
 * actor, and runs the user's handlers through the dispatcher; it also sends. Handlers run on this thread;
 * polling, parsing and room state live on worker threads.
 */
import { checkDataDir, claimDataDir, storedDeviceId } from './account.ts';
import { type ActorHandle, inThreadActor, localPortPair, localRemote, type MessagePort, type Port, portPair, spawnWorkerActor, typedPort } from './actors.ts';
import { CacheActor } from './cache/actor.ts';
import { CryptoActor } from './crypto/actor.ts';
import { Dispatcher } from './dispatcher.ts';
import { fromWireError, HalcyonError } from './errors.ts';
import {
  type AccountDataEvent,
  BatchReader,
  type ContentInput,
  Edit,
  type Invite,
  MemberEvent,
  type Mentions,
  Message,
  type MessageOptions,
  type Presence,
  type Profile,
  Reaction,
  type Receipt,
  Redaction,
  Room,
  type RoomActions,
  RoomEvent,
  User,
} from './events.ts';
import { aliasArg, contentArg, eventIdArg, roomIdArg, roomOrAliasArg, stringArg, userIdArg } from './ids.ts';
import { resolveHomeserver } from './discovery.ts';
import { editProblem, type MentionsContent, newMentions, readMentions } from './edits.ts';
import { htmlToText, sanitizeHtml } from './html.ts';
import { RoomDetails } from './rooms.ts';
import { delay, MatrixHttp, seg } from './http.ts';
import { createMetrics, type MetricsOptions, type MetricsSnapshot, noMetrics, type Recorder } from './metrics.ts';
import { beginHandlerRun, DEFAULT_RATE_LIMIT, endHandlerSyncPart, laneScope, Outbox, type OutboxOp, type OutboxStatus, type RateLimit, type SendFailure } from './outbox.ts';
import { type DownloadOptions, Media, type MediaConfig, type MediaSource, type SendMediaOptions, type UploadOptions } from './media.ts';
import type { Readable } from 'node:stream';
import { inspect } from 'node:util';
import { consoleLogger, type Logger } from './log.ts';
import {
  CACHE_DEADLINES,
  type CacheActorApi,
  CRYPTO_DEADLINES,
  type CryptoActorApi,
  type CryptoIdentity,
  type CryptoStatus,
  type CryptoToMain,
  type DecryptRequest,
  type DecryptResult,
  EVENT_FLAGS,
  type MainToCrypto,
  type MatrixEvent,
  OFF,
  OFFSET_STRIDE,
  type MainToSync,
  type RoomSummary,
  SYNC_DEADLINES,
  type SyncActorApi,
  type SyncConfig,
  type SyncToMain,
  type WireBatch,
} from './protocol.ts';
import { SyncActor, type SyncDeps } from './sync/actor.ts';
import { isDone } from './sync/journal.ts';
import { storePassphrase } from './store.ts';
import { decodeToken, encodeToken, type Session } from './token.ts';

/** Options of a {@link Client}. Only `dataDir` is required. */
export interface ClientOptions {
  /** Where the bot keeps its state (sync token, room cache, account). Created 0700; files are 0600. */
  dataDir: string;
  /**
   * Which invites the bot accepts by itself (default `true`: every invite, from anyone — convenient, and what
   * most bots want, but anyone on the federation can then pull the bot into rooms: a spam and load risk).
   * `false` joins none (accept in an `invite` handler with `invite.accept()`); `{ users, servers }` joins
   * invites whose inviter is one of `users` or on one of `servers`; a function decides per invite (a rejection
   * or throw counts as no, reported as `HALCYON_HANDLER_FAILED`). Invites not joined stay pending.
   */
  autoJoin?: AutoJoinPolicy;
  /** Rooms whose handlers may run at the same time (default 16); within a room, events run in order. */
  concurrency?: number;
  /**
   * Unhandled events held in memory (default 10,000). Past this, new batches wait in the journal on disk (a
   * `backpressure` event says so) while polling goes on.
   */
  maxQueuedEvents?: number;
  /** Unhandled events the journal holds before the sync actor stops polling (default 1,000,000). */
  maxJournalEvents?: number;
  /**
   * When a room's timeline comes back `limited`, the missing events are fetched with `/messages` and delivered
   * first, up to this many per room (default 500; 0 turns it off).
   */
  maxGapEvents?: number;
  /** A pino-compatible logger (default: warnings and errors to stderr). */
  logger?: Logger;
  /** `worker` (default): actors on worker threads. `inline`: actors on the main thread, for tests and debugging. */
  threads?: 'worker' | 'inline';
  /** Long-poll timeout of /sync in ms (default 30,000). */
  pollTimeoutMs?: number;
  /** Deliver the timeline of the very first sync of a new data dir to handlers (default false: no replies to old messages). */
  deliverInitialTimeline?: boolean;
  /** Skip the bot's own messages, edits, reactions and redactions (default true). */
  ignoreOwnEvents?: boolean;
  /**
   * Deliver other senders' `m.notice` messages to `message` handlers (default false: the spec says notices must
   * never be answered automatically — they are what bots send, and two bots answering each other loop). They
   * still reach `event` handlers; `message.isNotice` tells them apart.
   */
  deliverNotices?: boolean;
  /** Backoff after a failed /sync: first wait and ceiling in ms (defaults 5,000 and 300,000). */
  backoffMinMs?: number;
  backoffMaxMs?: number;
  /** Rooms whose full state the cache actor keeps in memory (default 1,000); the rest load from disk. */
  maxRoomsInMemory?: number;
  /**
   * How often the watchdog checks that the sync actor answers and keeps polling (default 30,000 ms); a stuck or
   * dead actor is restarted (worker threads only).
   */
  watchdogMs?: number;
  /** How long `stop()` waits for running handlers, in ms (default 20,000). */
  stopTimeoutMs?: number;
  /** End-to-end encryption: on by default; `false` turns it off, an object configures it. */
  encryption?: boolean | EncryptionOptions;
  /** Accept a token whose homeserver is plain `http://` and not this machine (default false); see LoginOptions. */
  allowInsecureHttp?: boolean;
  /**
   * Pacing of sends (a token bucket): default Synapse's `rc_message` (0.2/s, bursts of 10), so bursts do not run
   * into 429s; `false` when the bot's account is exempt from rate limits.
   */
  rateLimit?: RateLimit | false;
  /** Attempts of a send that keeps failing transiently before it is a dead letter (default 8; backoff 1 s → 60 s). */
  maxSendAttempts?: number;
  /**
   * Prometheus metrics (prom-client): `true` records into a registry of the client's own (`metricsRegistry`);
   * an object can pass the host application's `registry`, a `port` to serve `/metrics` on, and `perRoom` labels.
   */
  metrics?: boolean | MetricsOptions;
}

/** Which invites a client accepts by itself; see {@link ClientOptions.autoJoin}. */
export type AutoJoinPolicy = boolean | { users?: string[]; servers?: string[] } | ((invite: Invite) => boolean | Promise<boolean>);

/** Options of end-to-end encryption. */
export interface EncryptionOptions {
  /**
   * Passphrase that encrypts the crypto store. Default: a random one kept in `<dataDir>/crypto.key` (0600).
   * Give your own (from a secret manager) if whoever can read the data dir must not read the keys.
   */
  passphrase?: string;
  /** Send plain text into encrypted rooms instead of encrypting (default false). */
  allowPlaintext?: boolean;
  /** Undecryptable events kept for a late room key: how many (default 1,000) and how long (default 24 h). */
  maxPendingUndecryptable?: number;
  pendingUndecryptableMaxAgeMs?: number;
}

/** Options of one send. */
export interface SendOptions {
  /** Send in the clear even if the room is encrypted (default false: encrypt, or refuse if encryption is off). */
  allowPlaintext?: boolean;
}

/** Options of {@link Client.createRoom}. */
export interface CreateRoomOptions {
  name?: string;
  topic?: string;
  /** `private_chat` (invite only), `trusted_private_chat` (invitees get the creator's power), or `public_chat`. */
  preset?: 'private_chat' | 'trusted_private_chat' | 'public_chat';
  /** Users to invite. */
  invite?: string[];
  /** Turn end-to-end encryption on from the start (default false). */
  encrypted?: boolean;
  /** Mark it a direct chat for the invitees (`is_direct`). */
  isDirect?: boolean;
  /** Local part of an alias to create (`#<alias>:<server>`). */
  alias?: string;
  /** Whether the room is listed in the server's public directory (default private). */
  visibility?: 'public' | 'private';
  /** Room version (default: the server's). */
  roomVersion?: string;
  /** Overrides of the default `m.room.power_levels` content. */
  powerLevels?: Record<string, unknown>;
  /** Extra initial state events. */
  initialState?: Array<{ type: string; stateKey?: string; content: Record<string, unknown> }>;
}

/** Details passed with a `decryptionError` event. */
export interface DecryptionErrorInfo {
  roomId: string;
  eventId: string;
  sender: string;
  /** The Megolm session the event needs, when known. */
  sessionId: string | null;
  /**
   * True if the event is kept: it is delivered to the usual handlers if its room key arrives later. False for a
   * key its sender withheld for good (`withheldCode` m.unverified, m.blacklisted, m.unauthorised).
   */
  willRetry: boolean;
  /**
   * Why the sender's client did not share the room key, when it said (`m.room_key.withheld`): `m.unverified`
   * (it shares only with verified or cross-signed devices), `m.blacklisted`, `m.unauthorised`, `m.unavailable`,
   * `m.no_olm`; else null.
   */
  withheldCode: string | null;
}

/** A room the bot knocked on, as its sync shows it (the `knock` event). */
export interface Knock {
  roomId: string;
  /** The stripped state the server shares with knockers (name, topic, join rule...); nothing authenticates it. */
  state: MatrixEvent[];
}

/** Options of {@link Client.login}. */
export interface LoginOptions {
  homeserver: string;
  /** Localpart (`bot`) or full user ID (`@bot:example.org`). */
  user: string;
  password: string;
  /** Display name of the new device. */
  deviceName?: string;
  /** With a data dir, the device ID of an earlier login is reused instead of creating a new device. */
  dataDir?: string;
  /**
   * Accept a plain `http://` homeserver that is not this machine (default false: `HALCYON_INSECURE_HOMESERVER`,
   * since the password and token would cross the network in the clear).
   */
  allowInsecureHttp?: boolean;
}

/** Who the client is. */
export interface WhoAmI {
  userId: string;
  deviceId: string;
  homeserver: string;
  /** The device's identity keys (unpadded base64), when encryption is on. */
  identityKeys?: { curve25519: string; ed25519: string };
  /** Whether end-to-end encryption is available (on, and the crypto store open). */
  encryption: boolean;
}

/** What {@link Client.health} reports. */
export interface Health {
  /** `idle`, `starting`, `running`, `stopping` or `stopped`. */
  state: string;
  /** True while running and the sync loop is not failing. */
  ok: boolean;
  sync: {
    /** Polls made this run, and consecutive failed ones now. */
    polls: number;
    consecutiveErrors: number;
    /** When the last poll started and the last one succeeded (ms since the epoch), or null. */
    lastPollStartAt: number | null;
    lastSuccessAt: number | null;
    lastError: { code: string; message: string } | null;
  } | null;
  /** Events waiting for or running in handlers on this thread. */
  queuedEvents: number;
  /** Events journaled and not yet handled (on disk while `backpressure`). */
  backlogEvents: number;
  /** Whether handlers fell behind and batches wait in the journal. */
  backpressure: boolean;
  /** Sends pending, dead, and waiting now by reason (see {@link Client.outboxStatus}); null when not running. */
  outbox: OutboxStatus | null;
}

/** Details passed with a `backpressure` event. */
export interface BackpressureInfo {
  /** True when handlers fell behind and batches wait in the journal on disk; false when they caught up. */
  active: boolean;
  /** Events journaled and not yet handled. */
  backlogEvents: number;
  /** Events in memory waiting for or running in handlers. */
  queuedEvents: number;
}

/** Details passed with a `syncError` event. */
export interface SyncErrorInfo {
  /** Consecutive failed polls so far. */
  attempt: number;
  /** When the next poll is due. */
  retryInMs: number;
}

/** The events a client emits and their handler arguments. */
export interface ClientEvents {
  ready: [];
  message: [message: Message];
  edit: [edit: Edit];
  reaction: [reaction: Reaction];
  member: [member: MemberEvent];
  redaction: [redaction: Redaction];
  invite: [invite: Invite];
  knock: [knock: Knock];
  event: [event: RoomEvent];
  error: [error: HalcyonError];
  syncError: [error: HalcyonError, info: SyncErrorInfo];
  syncRecovered: [info: { afterAttempts: number }];
  decryptionError: [error: HalcyonError, info: DecryptionErrorInfo];
  receipt: [receipt: Receipt];
  backpressure: [info: BackpressureInfo];
  sendFailed: [error: HalcyonError, info: SendFailure];
  accountData: [event: AccountDataEvent];
}

type Listener<K extends keyof ClientEvents> = (...args: ClientEvents[K]) => unknown;
type EventKind = 'message' | 'edit' | 'reaction' | 'member' | 'redaction';

/** Event types the sync actor posts by default; an `event` listener asks for all. */
const DEFAULT_TYPES = ['m.room.message', 'm.reaction', 'm.room.member', 'm.room.redaction', 'm.sticker'];
const ENCRYPTED = 'm.room.encrypted';

/** Decryption of one batch: the result, or why there is none. */
type Decryption = { result: DecryptResult; reader: BatchReader | null } | { error: HalcyonError };

/** What a withheld room key means for the bot, by `m.room_key.withheld` code (for the default log line). */
const WITHHELD: Record<string, string> = {
  'm.unverified': "its sender's client shares room keys only with verified devices (m.unverified): the bot's device is not cross-signed or verified",
  'm.blacklisted': "its sender's client blocked the bot's device (m.blacklisted)",
  'm.unauthorised': 'its sender does not allow the bot to read it (m.unauthorised)',
  'm.unavailable': "its sender's client does not have the room key (m.unavailable)",
  'm.no_olm': "its sender's client could not open a secure channel to the bot's device (m.no_olm)",
};

/** Actor restarts allowed within {@link RESTART_WINDOW_MS} before the client gives up. */
const MAX_RESTARTS = 5;
const RESTART_WINDOW_MS = 5 * 60_000;
/** Bound of each call to the actors while restarting them (one of them is dead or stuck). */
const RESTART_CALL_MS = 5_000;
/** How long the sync actor may take to answer the watchdog. */
const WATCHDOG_ANSWER_MS = 10_000;
/** Summaries of rooms the bot is not joined to (invites, rooms left) kept on main. */
const MAX_OTHER_ROOMS = 1_000;
/** Room handles kept for reuse (one per room handlers see; recreated on demand past this). */
const MAX_ROOM_HANDLES = 10_000;
/** Typing notices last 30 s; refreshed well before they lapse while work goes on. */
const TYPING_REFRESH_MS = 20_000;

/** A Matrix bot client; see the README for a tour. */
export class Client implements RoomActions {
  private readonly opts: Required<Omit<ClientOptions, 'logger' | 'encryption' | 'rateLimit' | 'metrics'>> & {
    logger: Logger;
    encryption: EncryptionOptions | null;
    rateLimit: RateLimit | null;
    metrics: MetricsOptions | null;
  };
  private metrics: Recorder = noMetrics;
  private readonly listeners: { [K in keyof ClientEvents]?: Listener<K>[] } = {};
  private readonly summaries = new Map<string, RoomSummary>();
  private readonly roomHandles = new Map<string, Room>();
  /** Mentions of the current version of messages the bot sent this run (see editMessage), most recent last. */
  private readonly sentMentions = new BoundedMap<string, MentionsContent>(1_000);
  /** With encryption off: rooms the server said are not encrypted, while the cache had not seen them. */
  private readonly plainRooms = new Set<string>();
  /** Rooms in {@link summaries} the bot is not joined to, oldest first (see setSummary). */
  private readonly otherRooms = new Set<string>();
  private state: 'idle' | 'starting' | 'running' | 'stopping' | 'stopped' = 'idle';
  private session: Session | null = null;
  private http: MatrixHttp | null = null;
  private media: Media | null = null;
  private outbox: Outbox | null = null;
  private readonly serial = new Map<string, Promise<unknown>>();
  private readonly roomWaiters = new Map<string, Array<{ membership: string; resolve: () => void }>>();
  private sync: ActorHandle<SyncActorApi> | null = null;
  private cache: ActorHandle<CacheActorApi> | null = null;
  private crypto: ActorHandle<CryptoActorApi> | null = null;
  /**
   * The crypto actor once its store is open. Null while encryption is off, and for the whole of an actor restart
   * (≥1 s: the old actor is gone, the new one is starting or opening): sends wait on {@link cryptoGate} instead
   * of going out unencrypted or reaching an actor that cannot answer yet.
   */
  private cryptoOpen: ActorHandle<CryptoActorApi> | null = null;
  private cryptoGate = new Gate();
  private cryptoPort: Port<CryptoToMain, MainToCrypto> | null = null;
  private identity: CryptoIdentity | null = null;
  /** Batches wait here, in order, while an earlier one is being decrypted (null when none is). */
  private batchChain: Promise<void> | null = null;
  private port: Port<SyncToMain, MainToSync> | null = null;
  /** Handled events and batches, sent to the sync actor's journal once per turn of the loop. */
  private readonly acks = new AckTracker(
    (msg) => this.port?.post(msg),
    (seq) => this.held.get(seq)?.doneEvents() ?? null,
  );
  /** Batches being handled, by seq: what of them runs or is done (a restarted sync actor posts them again). */
  private readonly held = new Map<number, HeldBatch>();
  /** Recently completed batches (a restarted sync actor may post them again: they are acknowledged, not rerun). */
  private readonly completed = new Set<number>();
  /** The highest batch number seen: a restarted sync actor numbers its batches above it. */
  private maxSeqSeen = 0;
  private backpressure = false;
  /** Aborted by stop(): ends a restart's wait. */
  private lifecycle = new AbortController();
  private restarting: Promise<void> | null = null;
  private restartTimes: number[] = [];
  private watchdog: NodeJS.Timeout | null = null;
  private dispatcher: Dispatcher;
  private pendingBatches: WireBatch[] | null = [];
  private readyWaiter: { resolve: () => void; reject: (e: HalcyonError) => void } | null = null;
  private starting: Promise<void> | null = null;

  constructor(options: ClientOptions) {
    if (!options || typeof options.dataDir !== 'string' || options.dataDir === '') {
      throw new HalcyonError('HALCYON_INVALID_ARGUMENT', 'new Client({ dataDir }) needs a data directory');
    }
    this.opts = {
      autoJoin: true,
      concurrency: 16,
      maxQueuedEvents: 10_000,
      maxJournalEvents: 1_000_000,
      maxGapEvents: 500,
      threads: 'worker',
      pollTimeoutMs: 30_000,
      deliverInitialTimeline: false,
      ignoreOwnEvents: true,
      deliverNotices: false,
      backoffMinMs: 5_000,
      backoffMaxMs: 300_000,
      watchdogMs: 30_000,
      maxRoomsInMemory: 1_000,
      stopTimeoutMs: 20_000,
      maxSendAttempts: 8,
      allowInsecureHttp: false,
      ...options,
      rateLimit: options.rateLimit === false ? null : (options.rateLimit ?? DEFAULT_RATE_LIMIT),
      metrics: options.metrics === true ? {} : options.metrics ? options.metrics : null,
      logger: options.logger ?? consoleLogger(),
      encryption: options.encryption === false ? null : options.encryption === true || options.encryption === undefined ? {} : options.encryption,
    };
    checkAutoJoin(this.opts.autoJoin);
    this.dispatcher = new Dispatcher(this.opts.concurrency, (err, roomId) => this.handlerFailed(err, 'handler', roomId), laneScope);
  }

  /**
   * Logs in with a password and returns a long-lived token (homeserver, user ID, device ID, access token; never
   * the password). With `dataDir`, the device of an earlier login there is reused.
   */
  static async login(opts: LoginOptions): Promise<string> {
    if (typeof opts !== 'object' || opts === null) throw new HalcyonError('HALCYON_INVALID_ARGUMENT', 'Client.login({ homeserver, user, password }) needs an options object');
    stringArg(opts.homeserver, 'Client.login', 'homeserver');
    stringArg(opts.user, 'Client.login', 'user');
    stringArg(opts.password, 'Client.login', 'password (read it from an environment variable or a secret store)');
    // A bare server name is resolved with the spec's discovery (.well-known); plain http off this machine is refused.
    const homeserver = await resolveHomeserver(opts.homeserver, { allowInsecureHttp: opts.allowInsecureHttp === true });
    const http = new MatrixHttp(homeserver);
    try {
      // Refuses (HALCYON_STORE_MISMATCH) before logging in if the data dir belongs to another account.
      const deviceId = opts.dataDir ? storedDeviceId(opts.dataDir, homeserver, opts.user) : undefined;
      let res: { user_id?: unknown; access_token?: unknown; device_id?: unknown };
      try {
        res = await http.json('POST', '/_matrix/client/v3/login', {
          anonymous: true,
          body: {
            type: 'm.login.password',
            identifier: { type: 'm.id.user', user: opts.user },
            password: opts.password,
            device_id: deviceId,
            initial_device_display_name: opts.deviceName ?? 'Halcyon bot',
          },
        });
      } catch (err) {
        const e = err as HalcyonError;
        if (e.code === 'HALCYON_MATRIX' || e.code === 'HALCYON_UNKNOWN_TOKEN') {
          throw new HalcyonError('HALCYON_LOGIN_FAILED', `login refused: ${e.message}`, { status: e.status, errcode: e.errcode, cause: e } as never);
        }
        throw err;
      }
      if (typeof res.user_id !== 'string' || typeof res.access_token !== 'string' || typeof res.device_id !== 'string') {
        throw new HalcyonError('HALCYON_BAD_RESPONSE', 'login: the answer lacks user_id, access_token or device_id');
      }
      if (opts.dataDir) claimDataDir(opts.dataDir, homeserver, res.user_id, res.device_id);
      return encodeToken({ homeserver, userId: res.user_id, deviceId: res.device_id, accessToken: res.access_token });
    } finally {
      await http.close();
    }
  }

  /** What `util.inspect` shows of a client: its state and user, never the access token or the store passphrase. */
  [inspect.custom](): string {
    return `Client { state: '${this.state}', userId: ${this.session ? `'${this.session.userId}'` : 'null'} }`;
  }

  /** What `JSON.stringify` shows of a client (as {@link inspect.custom}: no secrets). */
  toJSON(): { state: string; userId: string | null } {
    return { state: this.state, userId: this.session?.userId ?? null };
  }

  /** Adds a handler. Handlers may be async; within a room the next event waits for them. */
  on<K extends keyof ClientEvents>(event: K, listener: Listener<K>): this {
    ((this.listeners[event] ??= []) as Listener<K>[]).push(listener);
    // Sends an async handler makes after an await are traced to its event through a context per lane run.
    if ((listener as { constructor?: { name?: string } }).constructor?.name === 'AsyncFunction') this.dispatcher.useLaneScopes();
    if (event === 'event' && this.state === 'running') {
      void this.sync?.api.setWantedTypes(null).catch(() => {});
      void this.crypto?.api.setWantedTypes(null).catch(() => {});
    }
    return this;
  }

  /** Removes a handler added with {@link on}. */
  off<K extends keyof ClientEvents>(event: K, listener: Listener<K>): this {
    const list = this.listeners[event] as Listener<K>[] | undefined;
    const i = list?.indexOf(listener) ?? -1;
    if (list && i >= 0) list.splice(i, 1);
    return this;
  }

  /** Adds a handler that runs once. */
  once<K extends keyof ClientEvents>(event: K, listener: Listener<K>): this {
    if ((listener as { constructor?: { name?: string } }).constructor?.name === 'AsyncFunction') this.dispatcher.useLaneScopes();
    const wrapped: Listener<K> = (...args) => {
      this.off(event, wrapped);
      return listener(...args);
    };
    return this.on(event, wrapped);
  }

  /**
   * Starts the bot with a token from {@link Client.login}. Resolves once `ready` has fired (the first sync is
   * processed and the `ready` handlers have settled). Rejects with a coded error: `HALCYON_INVALID_TOKEN`,
   * `HALCYON_UNKNOWN_TOKEN` (revoked), `HALCYON_STORE_MISMATCH`, ...
   */
  async run(token: string): Promise<void> {
    if (this.state !== 'idle') throw new HalcyonError('HALCYON_ALREADY_RUNNING', `run() called on a client that is ${this.state}`);
    this.state = 'starting';
    const attempt = this.startUp(token).catch(async (err: unknown) => {
      await this.shutdown();
      throw err;
    });
    // stop() during start-up waits for this, so the half-started actors are always ended by one party.
    this.starting = attempt.then(
      () => {},
      () => {},
    );
    try {
      await attempt;
    } catch (err) {
      if (this.state === 'starting') this.state = 'idle';
      throw err;
    } finally {
      this.starting = null;
    }
  }

  private async startUp(token: string): Promise<void> {
    const session = decodeToken(token);
    await resolveHomeserver(session.homeserver, { allowInsecureHttp: this.opts.allowInsecureHttp });
    this.session = session;
    this.http = new MatrixHttp(session.homeserver, session.accessToken);
    this.media = new Media({
      http: this.http,
      sendEvent: (roomId, type, content, opts) => this.sendEvent(roomId, type, content, opts),
      encryptAttachments: async (roomId, allowPlaintext) => {
        if (allowPlaintext || this.opts.encryption?.allowPlaintext === true || !(await this.isRoomEncrypted(roomId))) return false;
        if (!this.opts.encryption) throw new HalcyonError('HALCYON_ROOM_ENCRYPTED', `room ${roomId} is encrypted and encryption is off; pass { allowPlaintext: true } to send in the clear`, { roomId });
        return true;
      },
      dataDir: this.opts.dataDir,
      logger: this.opts.logger,
    });
    checkDataDir(this.opts.dataDir, session.homeserver, session.userId);
    const who = await this.http.json<{ user_id?: unknown }>('GET', '/_matrix/client/v3/account/whoami');
    this.checkStarting();
    if (who.user_id !== session.userId) {
      throw new HalcyonError('HALCYON_INVALID_TOKEN', `the token's access token belongs to ${String(who.user_id)}, not ${session.userId}`);
    }
    const ready = new Promise<void>((resolve, reject) => (this.readyWaiter = { resolve, reject }));
    ready.catch(() => {}); // observed below, or superseded by an earlier failure
    this.lifecycle = new AbortController();
    if (this.opts.metrics) this.metrics = await createMetrics(this.opts.metrics, () => this.metricsSnapshot());
    await this.startActors(session);
    if (this.opts.threads === 'worker') this.watchdog = setInterval(() => void this.checkSync(), this.opts.watchdogMs).unref();
    this.outbox = new Outbox({
      dataDir: this.opts.dataDir,
      attempt: (roomId, txnId, op, allowPlaintext, signal) => this.attemptSend(roomId, txnId, op, allowPlaintext, signal),
      failed: (err, info) => void this.emit('sendFailed', err, info)?.catch(() => {}),
      outcome: (r) => this.metrics.send(r),
      notice: (info, msg) => this.opts.logger.warn(info, msg),
      rateLimit: this.opts.rateLimit,
      maxAttempts: this.opts.maxSendAttempts,
      retryMinMs: 1_000,
      retryMaxMs: 60_000,
    });
    // Sends an earlier run left unacknowledged go out first (same transaction IDs: no duplicates).
    this.outbox.resume();
    this.checkStarting();
    this.state = 'running';
    await ready;
  }

  /** Throws `HALCYON_STOPPED` if stop() was called while run() was starting. */
  private checkStarting(): void {
    if (this.state !== 'starting') throw new HalcyonError('HALCYON_STOPPED', 'the client was stopped while starting');
  }

  /** Stops polling, lets running handlers finish (up to `stopTimeoutMs`), saves state and ends the workers. */
  async stop(): Promise<void> {
    if (this.state === 'starting' || (this.state === 'running' && this.starting)) {
      // run() has not resolved yet: make it fail with HALCYON_STOPPED; its own clean-up ends what it started.
      this.state = 'stopping';
      const waiter = this.readyWaiter;
      this.readyWaiter = null;
      waiter?.reject(new HalcyonError('HALCYON_STOPPED', 'the client was stopped while starting'));
      await this.starting;
      this.state = 'stopped';
      return;
    }
    if (this.state !== 'running') return;
    this.state = 'stopping';
    await this.shutdown();
    this.state = 'stopped';
  }

  /** Who the bot is (with its device's identity keys when encryption is on). */
  whoami(): WhoAmI {
    const s = this.need();
    const who: WhoAmI = { userId: s.userId, deviceId: s.deviceId, homeserver: s.homeserver, encryption: this.identity !== null };
    if (this.identity) who.identityKeys = { curve25519: this.identity.curve25519, ed25519: this.identity.ed25519 };
    return who;
  }

  /**
   * How the client is doing, for an embedding service's health check: state, the sync loop's last poll and
   * errors, and the backlog of unhandled events. Never throws; works in every state.
   */
  async health(): Promise<Health> {
    const st = this.sync ? await this.sync.api.status().catch(() => null) : null;
    const sync = st && {
      polls: st.polls,
      consecutiveErrors: st.consecutiveErrors,
      lastPollStartAt: st.lastPollStartAt,
      lastSuccessAt: st.lastSuccessAt,
      lastError: st.lastError ? { code: st.lastError.code, message: st.lastError.message } : null,
    };
    // 'starting' until run() resolves (the first sync processed and the ready handlers settled).
    const state = this.state === 'running' && this.starting ? 'starting' : this.state;
    return {
      state,
      ok: state === 'running' && sync !== null && sync.consecutiveErrors === 0,
      sync,
      queuedEvents: this.dispatcher.size,
      backlogEvents: st?.backlogEvents ?? 0,
      backpressure: this.backpressure,
      outbox: this.outbox?.status() ?? null,
    };
  }

  /** The prom-client registry the client records into (with `metrics` on), or null. */
  get metricsRegistry(): MetricsOptions['registry'] | null {
    return this.metrics.registry;
  }

  private async metricsSnapshot(): Promise<MetricsSnapshot> {
    const [st, crypto] = await Promise.all([this.sync?.api.status().catch(() => null), this.crypto?.api.status().catch(() => null)]);
    const out = this.outbox?.counts() ?? { pending: 0, dead: 0 };
    return {
      secondsSinceLastSync: st?.lastSuccessAt ? (Date.now() - st.lastSuccessAt) / 1000 : null,
      polls: st?.polls ?? null,
      queuedEvents: this.dispatcher.size,
      backlogEvents: st?.backlogEvents ?? 0,
      outboxPending: out.pending,
      outboxDead: out.dead,
      pendingUndecryptable: crypto?.pendingUndecryptable ?? null,
    };
  }

  /** State of end-to-end encryption (store size, events waiting for keys), or null when it is off. */
  async cryptoStatus(): Promise<CryptoStatus | null> {
    this.need();
    if (!this.opts.encryption) return null;
    if (!this.cryptoOpen) throw new HalcyonError('HALCYON_RESTARTING', 'the crypto actor is restarting; ask again in a few seconds');
    return this.cryptoOpen.api.status();
  }

  /**
   * Whether a room is encrypted. With encryption on, the crypto store decides (asking the server once for rooms
   * it has not seen); otherwise the room cache does.
   */
  async isRoomEncrypted(roomId: string): Promise<boolean> {
    this.need();
    if (this.opts.encryption) return (await this.openCrypto()).isRoomEncrypted(roomId);
    if (this.summaries.get(roomId)?.encrypted) return true;
    if (this.plainRooms.has(roomId)) return false;
    const cached = this.cache ? await this.cache.api.getRoom(roomId).catch(() => undefined) : undefined;
    if (cached?.membership === 'join') return cached.encrypted;
    // A room the cache has not seen joined (just joined, or not synced yet): the server says. Fail closed: an
    // error is no answer, and the caller does not send. A plain answer is remembered (an encryption event
    // later reaches the summaries, which are asked first).
    const content = await this.getStateEvent(roomId, 'm.room.encryption');
    const encrypted = content !== null && typeof content.algorithm === 'string';
    if (!encrypted && this.plainRooms.size < MAX_OTHER_ROOMS) this.plainRooms.add(roomId);
    return encrypted;
  }

  /** A handle on a room: its cached summary and room-bound shortcuts. */
  room(roomId: string): Room {
    let r = this.roomHandles.get(roomId);
    if (!r) {
      r = new Room(roomId, this.summaries, this);
      // Handles are cheap to make again: past the cap the oldest goes (a caller keeping one still has it).
      if (this.roomHandles.size >= MAX_ROOM_HANDLES) this.roomHandles.delete(this.roomHandles.keys().next().value!);
      this.roomHandles.set(roomId, r);
    }
    return r;
  }

  /** Everything the cache knows about a room (members, power levels, ...) with permission checks, or undefined. Never asks the server. */
  async getRoom(roomId: string): Promise<RoomDetails | undefined> {
    if (!this.cache) throw new HalcyonError('HALCYON_NOT_RUNNING', 'getRoom needs a running client');
    const info = await this.cache.api.getRoom(roomId);
    return info ? new RoomDetails(info) : undefined;
  }

  /**
   * Loads a room's full member list from the server into the cache (sync lazy-loads members: only those who
   * spoke or changed are known until then), and resolves with the room's details.
   */
  async loadMembers(roomId: string): Promise<RoomDetails | undefined> {
    roomIdArg(roomId, 'loadMembers');
    const res = await this.needHttp().json<{ chunk?: unknown[] }>('GET', `/_matrix/client/v3/rooms/${seg(roomId)}/members`);
    const state = (res.chunk ?? []).filter(
      (e): e is MatrixEvent => typeof e === 'object' && e !== null && (e as MatrixEvent).type === 'm.room.member' && typeof (e as MatrixEvent).state_key === 'string',
    );
    // The cache's own membership wins over main's summary, which may lag it by a batch.
    const membership = (await this.needCache().getRoom(roomId))?.membership ?? this.summaries.get(roomId)?.membership ?? 'join';
    const changed = await this.needCache().apply({ rooms: [{ roomId, membership, state }] });
    for (const s of changed) this.setSummary(s);
    return this.getRoom(roomId);
  }

  /**
   * Resolves with the room's handle once the bot's sync shows it with `membership` (default `join`): after
   * `createRoom` or `joinRoom`, the room reaches the cache and `room()` a poll later. Rejects with
   * `HALCYON_TIMEOUT` after `timeoutMs` (default 30 s).
   */
  waitForRoom(roomId: string, opts: { membership?: RoomSummary['membership']; timeoutMs?: number } = {}): Promise<Room> {
    roomIdArg(roomId, 'waitForRoom');
    this.need();
    const membership = opts.membership ?? 'join';
    if (this.summaries.get(roomId)?.membership === membership) return Promise.resolve(this.room(roomId));
    return new Promise<Room>((resolve, reject) => {
      const w = { membership, resolve: () => {
        clearTimeout(timer);
        resolve(this.room(roomId));
      } };
      const timer = setTimeout(() => {
        const list = this.roomWaiters.get(roomId);
        list?.splice(list.indexOf(w), 1);
        reject(new HalcyonError('HALCYON_TIMEOUT', `room ${roomId} did not show membership ${membership} within ${opts.timeoutMs ?? 30_000} ms`, { roomId }));
      }, opts.timeoutMs ?? 30_000);
      let list = this.roomWaiters.get(roomId);
      if (!list) this.roomWaiters.set(roomId, (list = []));
      list.push(w);
    });
  }

  /**
   * Updates main's summary mirror and wakes `waitForRoom` callers. Joined rooms are as many as the server lets
   * the bot join; the others (invites, rooms left) are kept up to {@link MAX_OTHER_ROOMS}, oldest out first, so
   * invite spam cannot grow the mirror (or the room handles, or per-room metrics) without bound.
   */
  private setSummary(s: RoomSummary): void {
    this.summaries.set(s.roomId, s);
    if (s.membership === 'join') this.otherRooms.delete(s.roomId);
    else {
      this.otherRooms.delete(s.roomId);
      this.otherRooms.add(s.roomId);
      if (s.membership !== 'invite' && s.membership !== 'knock') this.metrics.forgetRoom(s.roomId);
      if (this.otherRooms.size > MAX_OTHER_ROOMS) {
        const oldest = this.otherRooms.values().next().value!;
        this.otherRooms.delete(oldest);
        this.summaries.delete(oldest);
        this.roomHandles.delete(oldest);
      }
    }
    const list = this.roomWaiters.get(s.roomId);
    if (!list) return;
    for (const w of list.filter((x) => x.membership === s.membership)) {
      list.splice(list.indexOf(w), 1);
      w.resolve();
    }
    if (list.length === 0) this.roomWaiters.delete(s.roomId);
  }

  /** Summaries of the rooms the bot has joined (from the cache; no request). */
  async listRooms(): Promise<RoomSummary[]> {
    return [...this.summaries.values()].filter((s) => s.membership === 'join');
  }

  /** The IDs of the rooms the bot has joined, as the server says (`/joined_rooms`). */
  async getJoinedRooms(): Promise<string[]> {
    const res = await this.needHttp().json<{ joined_rooms?: unknown }>('GET', '/_matrix/client/v3/joined_rooms');
    return Array.isArray(res.joined_rooms) ? res.joined_rooms.filter((r): r is string => typeof r === 'string') : [];
  }

  // ---- rooms ----

  /** Creates a room; resolves with its ID. `encrypted` adds `m.room.encryption` to the initial state. */
  async createRoom(opts: CreateRoomOptions = {}): Promise<string> {
    const initialState: Array<{ type: string; state_key: string; content: Record<string, unknown> }> = [...(opts.initialState ?? [])].map((e) => ({
      type: e.type,
      state_key: e.stateKey ?? '',
      content: e.content,
    }));
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
    const res = await this.needHttp().json<{ room_id?: unknown }>('POST', '/_matrix/client/v3/createRoom', { body });
    if (typeof res.room_id !== 'string') throw new HalcyonError('HALCYON_BAD_RESPONSE', 'createRoom: no room_id in the answer');
    return res.room_id;
  }

  /**
   * The direct-message room with `userId`: an existing one from `m.direct` that the bot is in and the user is
   * in or invited to, else a new one (invited, `is_direct`, recorded in `m.direct`). Resolves with the room ID.
   */
  getOrCreateDm(userId: string, opts: { encrypted?: boolean } = {}): Promise<string> {
    userIdArg(userId, 'getOrCreateDm');
    // One at a time per client: two concurrent calls for the same user must not create two rooms.
    return this.serially('dm', () => this.findOrCreateDm(userId, opts));
  }

  private async findOrCreateDm(userId: string, opts: { encrypted?: boolean }): Promise<string> {
    const direct = ((await this.getAccountData('m.direct')) ?? {}) as Record<string, unknown>;
    const candidates = Array.isArray(direct[userId]) ? (direct[userId] as unknown[]).filter((r): r is string => typeof r === 'string') : [];
    for (const roomId of [...candidates].reverse()) {
      // The bot's own membership: from its summaries, else from the server (its sync may not have caught up).
      const mine = this.summaries.get(roomId)?.membership === 'join' || (await this.memberOnServer(roomId, this.need().userId)) === 'join';
      if (!mine) continue;
      let m = (await this.getRoom(roomId))?.member(userId)?.membership;
      if (m === undefined) m = await this.memberOnServer(roomId, userId);
      if (m === 'join' || m === 'invite') return roomId;
    }
    const roomId = await this.createRoom({ isDirect: true, invite: [userId], preset: 'trusted_private_chat', encrypted: opts.encrypted ?? this.opts.encryption !== null });
    await this.addDirectRoom(userId, roomId);
    return roomId;
  }

  /** A user's membership in a room as the server has it now, or undefined. */
  private async memberOnServer(roomId: string, userId: string): Promise<string | undefined> {
    const c = await this.getStateEvent(roomId, 'm.room.member', userId).catch(() => null);
    return typeof c?.membership === 'string' ? c.membership : undefined;
  }

  /** Runs `fn` after every earlier call with the same `key` has settled. */
  private serially<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.serial.get(key) ?? Promise.resolve();
    const run = prev.catch(() => {}).then(fn);
    const tail = run.catch(() => {});
    this.serial.set(key, tail);
    void tail.then(() => {
      if (this.serial.get(key) === tail) this.serial.delete(key);
    });
    return run;
  }

  /** Records `roomId` as a direct chat with `userId` in `m.direct` (read, modify, write; one at a time). */
  private addDirectRoom(userId: string, roomId: string): Promise<void> {
    return this.serially('m.direct', () => this.addDirectRoomNow(userId, roomId));
  }

  private async addDirectRoomNow(userId: string, roomId: string): Promise<void> {
    const direct = { ...(((await this.getAccountData('m.direct', { fresh: true })) ?? {}) as Record<string, unknown>) };
    const list = Array.isArray(direct[userId]) ? (direct[userId] as unknown[]).filter((r): r is string => typeof r === 'string') : [];
    if (list.includes(roomId)) return;
    direct[userId] = [...list, roomId];
    await this.setAccountData('m.direct', direct);
  }

  /** Joins a room by ID or alias (`via`: servers to join through); resolves with the room ID. */
  async joinRoom(roomIdOrAlias: string, opts: { reason?: string; via?: string[] } = {}): Promise<string> {
    roomOrAliasArg(roomIdOrAlias, 'joinRoom');
    const body = opts.reason === undefined ? {} : { reason: opts.reason };
    const path = `/_matrix/client/v3/join/${seg(roomIdOrAlias)}${opts.via?.length ? `?${opts.via.map((s) => `via=${encodeURIComponent(s)}`).join('&')}` : ''}`;
    const res = await this.needHttp().json<{ room_id?: unknown }>('POST', path, { body });
    if (typeof res.room_id !== 'string') throw new HalcyonError('HALCYON_BAD_RESPONSE', 'join: no room_id in the answer');
    return res.room_id;
  }

  /**
   * Knocks on a room (asks to be let in; rooms with join rule `knock`, room version 7+), by ID or alias (`via`:
   * servers to knock through); resolves with the room ID. The room's stripped state arrives as a `knock` event.
   */
  async knockRoom(roomIdOrAlias: string, opts: { reason?: string; via?: string[] } = {}): Promise<string> {
    roomOrAliasArg(roomIdOrAlias, 'knockRoom');
    const body = opts.reason === undefined ? {} : { reason: opts.reason };
    const path = `/_matrix/client/v3/knock/${seg(roomIdOrAlias)}${opts.via?.length ? `?${opts.via.map((v) => `via=${encodeURIComponent(v)}`).join('&')}` : ''}`;
    const res = await this.needHttp().json<{ room_id?: unknown }>('POST', path, { body });
    if (typeof res.room_id !== 'string') throw new HalcyonError('HALCYON_BAD_RESPONSE', 'knock: no room_id in the answer');
    return res.room_id;
  }

  /** Leaves a room. */
  async leaveRoom(roomId: string, reason?: string): Promise<void> {
    roomIdArg(roomId, 'leaveRoom');
    await this.needHttp().json('POST', `/_matrix/client/v3/rooms/${seg(roomId)}/leave`, { body: reason === undefined ? {} : { reason } });
  }

  /** Forgets a room the bot has left (the server drops it from the bot's history). */
  async forgetRoom(roomId: string): Promise<void> {
    roomIdArg(roomId, 'forgetRoom');
    await this.needHttp().json('POST', `/_matrix/client/v3/rooms/${seg(roomId)}/forget`, { body: {} });
  }

  /** Invites a user. */
  inviteUser(roomId: string, userId: string, reason?: string): Promise<void> {
    return this.membershipOp(roomId, 'invite', userId, reason);
  }

  /** Kicks a user (they may rejoin). */
  kickUser(roomId: string, userId: string, reason?: string): Promise<void> {
    return this.membershipOp(roomId, 'kick', userId, reason);
  }

  /** Bans a user. */
  banUser(roomId: string, userId: string, reason?: string): Promise<void> {
    return this.membershipOp(roomId, 'ban', userId, reason);
  }

  /** Lifts a user's ban. */
  unbanUser(roomId: string, userId: string, reason?: string): Promise<void> {
    return this.membershipOp(roomId, 'unban', userId, reason);
  }

  private async membershipOp(roomId: string, op: 'invite' | 'kick' | 'ban' | 'unban', userId: string, reason?: string): Promise<void> {
    roomIdArg(roomId, `${op}User`);
    userIdArg(userId, `${op}User`);
    const body: Record<string, unknown> = { user_id: userId };
    if (reason !== undefined) body.reason = reason;
    await this.needHttp().json('POST', `/_matrix/client/v3/rooms/${seg(roomId)}/${op}`, { body });
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
  async setPowerLevel(roomId: string, userId: string, level: number): Promise<string> {
    roomIdArg(roomId, 'setPowerLevel');
    const pl = { ...((await this.getStateEvent(roomId, 'm.room.power_levels')) ?? {}) };
    pl.users = { ...((pl.users as Record<string, number> | undefined) ?? {}), [userId]: level };
    return this.sendStateEvent(roomId, 'm.room.power_levels', '', pl);
  }

  /** Sends a state event; resolves with its event ID. State events are never encrypted. */
  async sendStateEvent(roomId: string, type: string, stateKey: string, content: Record<string, unknown>): Promise<string> {
    roomIdArg(roomId, 'sendStateEvent');
    stringArg(type, 'sendStateEvent', 'the event type');
    stringArg(stateKey, 'sendStateEvent', 'the state key', true);
    contentArg(type, content, 'sendStateEvent');
    const res = await this.needHttp().json<{ event_id?: unknown }>('PUT', `/_matrix/client/v3/rooms/${seg(roomId)}/state/${seg(type)}/${seg(stateKey)}`, { body: content });
    if (typeof res.event_id !== 'string') throw new HalcyonError('HALCYON_BAD_RESPONSE', 'state: no event_id in the answer', { roomId });
    return res.event_id;
  }

  /** The content of a state event as the server has it now, or null if the room has none. */
  async getStateEvent(roomId: string, type: string, stateKey = ''): Promise<Record<string, unknown> | null> {
    roomIdArg(roomId, 'getStateEvent');
    stringArg(type, 'getStateEvent', 'the event type');
    stringArg(stateKey, 'getStateEvent', 'the state key', true);
    try {
      return await this.needHttp().json('GET', `/_matrix/client/v3/rooms/${seg(roomId)}/state/${seg(type)}/${seg(stateKey)}`);
    } catch (err) {
      if ((err as HalcyonError).errcode === 'M_NOT_FOUND') return null;
      throw err;
    }
  }

  /** Resolves a room alias (`#room:server`) to its room ID and the servers that know it. */
  async resolveAlias(alias: string): Promise<{ roomId: string; servers: string[] }> {
    aliasArg(alias, 'resolveAlias');
    const res = await this.needHttp().json<{ room_id?: unknown; servers?: unknown }>('GET', `/_matrix/client/v3/directory/room/${seg(alias)}`);
    if (typeof res.room_id !== 'string') throw new HalcyonError('HALCYON_BAD_RESPONSE', 'directory: no room_id in the answer');
    return { roomId: res.room_id, servers: Array.isArray(res.servers) ? res.servers.filter((s): s is string => typeof s === 'string') : [] };
  }

  // ---- messages ----

  /** Sends a message (a string becomes `m.text`), as a reply, in a thread, with mentions; resolves with the event ID. */
  async sendMessage(roomId: string, content: ContentInput, opts: MessageOptions = {}): Promise<string> {
    roomIdArg(roomId, 'sendMessage');
    const c: Record<string, unknown> = typeof content === 'string' ? { msgtype: 'm.text', body: content } : { ...content };
    // A thread message that replies to nothing in particular falls back to the thread's latest event.
    const fallback = opts.threadId !== undefined && opts.replyTo === undefined ? await this.latestInThread(roomId, opts.threadId) : undefined;
    const eventId = await this.sendEvent(roomId, 'm.room.message', withRelations(c, opts, fallback), opts);
    this.sentMentions.set(eventId, readMentions(c['m.mentions']));
    return eventId;
  }

  /** The latest event of a thread (the server's `m.thread` relations), or the root when it has none. */
  private async latestInThread(roomId: string, root: string): Promise<string> {
    const res = await this.needHttp()
      .json<{ chunk?: Array<{ event_id?: unknown }> }>('GET', `/_matrix/client/v1/rooms/${seg(roomId)}/relations/${seg(root)}/m.thread`, { query: { dir: 'b', limit: 1 } })
      .catch(() => null);
    const id = res?.chunk?.[0]?.event_id;
    return typeof id === 'string' ? id : root;
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
  async editMessage(roomId: string, eventId: string, newContent: ContentInput, opts: { mentions?: Mentions } = {}): Promise<string> {
    roomIdArg(roomId, 'editMessage');
    const n: Record<string, unknown> = typeof newContent === 'string' ? { msgtype: 'm.text', body: newContent } : { ...newContent };
    delete n['m.relates_to'];
    if (opts.mentions !== undefined && n['m.mentions'] === undefined) n['m.mentions'] = mentionsContent(opts.mentions);
    const full = readMentions(n['m.mentions']);
    const previous = await this.previousMentions(roomId, eventId);
    const body = typeof n.body === 'string' ? n.body : '';
    const outer: Record<string, unknown> = {
      ...n,
      body: `* ${body}`,
      'm.new_content': n,
      'm.relates_to': { rel_type: 'm.replace', event_id: eventId },
      'm.mentions': newMentions(full, previous),
    };
    if (typeof n.formatted_body === 'string') outer.formatted_body = `* ${n.formatted_body}`;
    const id = await this.sendEvent(roomId, 'm.room.message', outer);
    this.sentMentions.set(eventId, full);
    return id;
  }

  /** The mentions of a message's current version: as the bot sent it this run, else as the server holds it. */
  private async previousMentions(roomId: string, eventId: string): Promise<MentionsContent | null> {
    const known = this.sentMentions.get(eventId);
    if (known) return known;
    const ev = await this.fetchEvent(roomId, eventId);
    if (ev?.type !== 'm.room.message') return null; // encrypted (or gone): unknown
    // The server bundles the latest edit with the original (spec: m.relations); its m.new_content is current.
    const latest = (ev.unsigned?.['m.relations'] as { 'm.replace'?: { content?: Record<string, unknown> } } | undefined)?.['m.replace'];
    const current = latest?.content?.['m.new_content'] as Record<string, unknown> | undefined;
    if (latest) return current ? readMentions(current['m.mentions']) : null;
    return readMentions(ev.content['m.mentions']);
  }

  /** An event as the server holds it (encrypted ones stay encrypted), or null when it cannot be had. */
  private async fetchEvent(roomId: string, eventId: string): Promise<MatrixEvent | null> {
    try {
      const ev = await this.needHttp().json<MatrixEvent>('GET', `/_matrix/client/v3/rooms/${seg(roomId)}/event/${seg(eventId)}`);
      return typeof ev.type === 'string' && typeof ev.content === 'object' && ev.content !== null ? ev : null;
    } catch (err) {
      this.opts.logger.info({ code: (err as HalcyonError).code, roomId, eventId }, 'event not available');
      return null;
    }
  }

  /** Reacts to an event with `key` (usually an emoji); resolves with the reaction's event ID. */
  react(roomId: string, eventId: string, key: string): Promise<string> {
    return this.sendEvent(roomId, 'm.reaction', { 'm.relates_to': { rel_type: 'm.annotation', event_id: eventId, key } });
  }

  /** Sends a read receipt up to `eventId` (`private`: `m.read.private`; `threadId`: a threaded receipt). */
  async sendReadReceipt(roomId: string, eventId: string, opts: { private?: boolean; threadId?: string } = {}): Promise<void> {
    roomIdArg(roomId, 'sendReadReceipt');
    const type = opts.private ? 'm.read.private' : 'm.read';
    await this.needHttp().json('POST', `/_matrix/client/v3/rooms/${seg(roomId)}/receipt/${type}/${seg(eventId)}`, {
      body: opts.threadId === undefined ? {} : { thread_id: opts.threadId },
    });
  }

  /**
   * Sends any room event; resolves with its event ID. In an encrypted room the event is encrypted (the room key
   * is shared with the members' devices first); with encryption off, sending into an encrypted room is refused
   * with `HALCYON_ROOM_ENCRYPTED` unless `allowPlaintext` is given.
   */
  async sendEvent(roomId: string, type: string, content: Record<string, unknown>, opts: SendOptions = {}): Promise<string> {
    roomIdArg(roomId, 'sendEvent');
    stringArg(type, 'sendEvent', 'the event type');
    contentArg(type, content, 'sendEvent');
    this.need();
    const plaintextOk = opts.allowPlaintext === true || this.opts.encryption?.allowPlaintext === true;
    if (this.opts.encryption) return this.needOutbox().send(roomId, { kind: 'send', type, content }, plaintextOk);
    // The check below may ask the server: one at a time per room, so sends still reach the outbox in call order.
    const queued = await this.serially(`send ${roomId}`, async () => {
      if (!plaintextOk && (await this.encryptedForSend(roomId))) {
        throw new HalcyonError('HALCYON_ROOM_ENCRYPTED', `room ${roomId} is encrypted and encryption is off; pass { allowPlaintext: true } to send in the clear`, { roomId });
      }
      return { sent: this.needOutbox().send(roomId, { kind: 'send', type, content }, plaintextOk) };
    });
    return queued.sent;
  }

  /** Redacts an event; resolves with the redaction's event ID. Goes through the outbox like a send. */
  async redactEvent(roomId: string, eventId: string, reason?: string): Promise<string> {
    roomIdArg(roomId, 'redactEvent');
    eventIdArg(eventId, 'redactEvent');
    this.need();
    const op: OutboxOp = reason === undefined ? { kind: 'redact', eventId } : { kind: 'redact', eventId, reason };
    return this.needOutbox().send(roomId, op, true);
  }

  /**
   * Sends left in the outbox (`pending`: not yet acknowledged by the server; `dead`: failed for good), those
   * waiting now by reason (`pacing`: the rate limit's bucket, `rate_limited`: the server's 429, `retrying`: a
   * backoff after a failed attempt) and when the next is due.
   */
  outboxStatus(): OutboxStatus {
    return this.needOutbox().status();
  }

  /** The dead letters kept in the outbox: sends that failed for good, with their error. */
  deadLetters(): Array<{ roomId: string; txnId: string; op: OutboxOp; attempts: number; error: string | null }> {
    return this.needOutbox().deadLetters();
  }

  /**
   * The open crypto actor; while it restarts, waits for the new one (sends must not go out in the clear for want
   * of it). Rejects with `HALCYON_STOPPED` when `signal` aborts or the client stops.
   */
  private async openCrypto(signal?: AbortSignal): Promise<CryptoActorApi> {
    for (;;) {
      if (this.cryptoOpen) return this.cryptoOpen.api;
      if (this.state !== 'running' && this.state !== 'starting') throw new HalcyonError('HALCYON_STOPPED', 'the client stopped while waiting for the crypto actor');
      await unlessAborted(this.cryptoGate.wait(), [signal, this.lifecycle.signal]);
    }
  }

  /** {@link isRoomEncrypted} for a send: a failure to tell says which send it stopped. */
  private async encryptedForSend(roomId: string): Promise<boolean> {
    try {
      return await this.isRoomEncrypted(roomId);
    } catch (err) {
      const e = err as HalcyonError;
      const out = new HalcyonError(e.code ?? 'HALCYON_INTERNAL', `cannot send into ${roomId}: cannot tell whether the room is encrypted (is the bot in it?): ${e.message}`, { roomId, cause: e });
      if (e.status !== undefined) out.status = e.status;
      if (e.errcode !== undefined) out.errcode = e.errcode;
      throw out;
    }
  }

  /** One attempt of an outbox entry: encrypts a send for an encrypted room, then PUTs it with its transaction ID. */
  private async attemptSend(roomId: string, txnId: string, op: OutboxOp, allowPlaintext: boolean, signal: AbortSignal): Promise<string> {
    const http = this.needHttp();
    let res: { event_id?: unknown };
    // 429s are waited out by the outbox (with its pacing), not here.
    if (op.kind === 'redact') {
      res = await http.json('PUT', `/_matrix/client/v3/rooms/${seg(roomId)}/redact/${seg(op.eventId)}/${seg(txnId)}`, {
        body: op.reason === undefined ? {} : { reason: op.reason },
        maxRateLimitRetries: 0,
        signal,
      });
    } else {
      let { type, content } = op;
      if (this.opts.encryption && !allowPlaintext) {
        // Never in the clear for want of an actor: during a restart the send waits for the new one.
        const r = await (await this.openCrypto(signal)).encrypt(roomId, type, content);
        if (r.encrypted) {
          type = ENCRYPTED;
          content = r.content;
        }
      }
      res = await http.json('PUT', `/_matrix/client/v3/rooms/${seg(roomId)}/send/${seg(type)}/${seg(txnId)}`, { body: content, maxRateLimitRetries: 0, signal });
    }
    if (typeof res.event_id !== 'string') throw new HalcyonError('HALCYON_BAD_RESPONSE', 'send: no event_id in the answer', { roomId });
    return res.event_id;
  }

  /** Shows the bot as typing (true, or a timeout in ms; default 30 s) or stops it (false). */
  async sendTyping(roomId: string, on: boolean | number = true): Promise<void> {
    roomIdArg(roomId, 'sendTyping');
    const s = this.need();
    const body = on === false ? { typing: false } : { typing: true, timeout: typeof on === 'number' ? on : 30_000 };
    await this.needHttp().json('PUT', `/_matrix/client/v3/rooms/${seg(roomId)}/typing/${seg(s.userId)}`, { body });
  }

  /** Sets the bot's presence and status message. */
  async setPresence(state: 'online' | 'offline' | 'unavailable', statusMsg?: string): Promise<void> {
    const s = this.need();
    // Polls carry set_presence: change it first, or the poll the server wakes for this change would undo it.
    await this.sync?.api.setPresence(state);
    await this.needHttp().json('PUT', `/_matrix/client/v3/presence/${seg(s.userId)}/status`, {
      body: statusMsg === undefined ? { presence: state } : { presence: state, status_msg: statusMsg },
    });
  }

  /**
   * Shows the bot as typing in `roomId` until `work` settles, refreshing the notice every 20 s (it expires
   * after 30 s), then stops it. Resolves or rejects as `work` does; typing failures never fail the work.
   */
  async typingWhile<T>(roomId: string, work: Promise<T> | (() => Promise<T>)): Promise<T> {
    this.need();
    const quiet = (on: boolean) => this.sendTyping(roomId, on).catch((e: unknown) => this.log('warn', e, 'typing notice'));
    void quiet(true);
    const timer = setInterval(() => void quiet(true), TYPING_REFRESH_MS);
    try {
      return await (typeof work === 'function' ? work() : work);
    } finally {
      clearInterval(timer);
      if (this.state === 'running') await quiet(false);
    }
  }

  // ---- users ----

  /** A handle on a user: profile and presence lookups, and a direct chat with them. */
  user(userId: string): User {
    userIdArg(userId, 'user');
    return new User(userId, this);
  }

  /** A user's profile (display name and avatar) as the server has it. */
  async getProfile(userId: string): Promise<Profile> {
    userIdArg(userId, 'getProfile');
    const res = await this.needHttp().json<{ displayname?: unknown; avatar_url?: unknown }>('GET', `/_matrix/client/v3/profile/${seg(userId)}`);
    return { displayName: typeof res.displayname === 'string' ? res.displayname : null, avatarUrl: typeof res.avatar_url === 'string' ? res.avatar_url : null };
  }

  /** Sets the bot's display name. */
  async setDisplayName(name: string): Promise<void> {
    const s = this.need();
    await this.needHttp().json('PUT', `/_matrix/client/v3/profile/${seg(s.userId)}/displayname`, { body: { displayname: name } });
  }

  /** Sets the bot's avatar (an `mxc://` URI, e.g. from `uploadMedia`). */
  async setAvatarUrl(mxc: string): Promise<void> {
    const s = this.need();
    await this.needHttp().json('PUT', `/_matrix/client/v3/profile/${seg(s.userId)}/avatar_url`, { body: { avatar_url: mxc } });
  }

  /** A user's presence as the server has it. */
  async getPresence(userId: string): Promise<Presence> {
    userIdArg(userId, 'getPresence');
    const r = await this.needHttp().json<Record<string, unknown>>('GET', `/_matrix/client/v3/presence/${seg(userId)}/status`);
    return {
      presence: typeof r.presence === 'string' ? r.presence : 'offline',
      statusMsg: typeof r.status_msg === 'string' ? r.status_msg : null,
      lastActiveAgo: typeof r.last_active_ago === 'number' ? r.last_active_ago : null,
      currentlyActive: r.currently_active === true,
    };
  }

  /** Searches the user directory (users sharing a room with the bot, or all users if the server allows). */
  async searchUsers(term: string, limit = 10): Promise<{ results: Array<{ userId: string; displayName: string | null; avatarUrl: string | null }>; limited: boolean }> {
    const res = await this.needHttp().json<{ results?: unknown; limited?: unknown }>('POST', '/_matrix/client/v3/user_directory/search', { body: { search_term: term, limit } });
    const results = (Array.isArray(res.results) ? res.results : [])
      .filter((u): u is Record<string, unknown> => typeof u === 'object' && u !== null && typeof (u as Record<string, unknown>).user_id === 'string')
      .map((u) => ({
        userId: u.user_id as string,
        displayName: typeof u.display_name === 'string' ? u.display_name : null,
        avatarUrl: typeof u.avatar_url === 'string' ? u.avatar_url : null,
      }));
    return { results, limited: res.limited === true };
  }

  // ---- account data ----

  /**
   * Global account data of `type` (the bot's own key-value store on the server), or null. Answered from the cache
   * (kept current by sync) when it has it; `fresh` asks the server.
   */
  async getAccountData(type: string, opts: { fresh?: boolean } = {}): Promise<Record<string, unknown> | null> {
    const s = this.need();
    return this.readAccountData(null, type, `/_matrix/client/v3/user/${seg(s.userId)}/account_data/${seg(type)}`, opts.fresh === true);
  }

  /** Sets global account data of `type`; an `accountData` event follows when the change comes back by sync. */
  async setAccountData(type: string, content: Record<string, unknown>): Promise<void> {
    const s = this.need();
    await this.needHttp().json('PUT', `/_matrix/client/v3/user/${seg(s.userId)}/account_data/${seg(type)}`, { body: content });
    await this.cache?.api.apply({ rooms: [], accountData: [{ roomId: null, type, content }] });
  }

  /** Account data of `type` for one room, or null (from the cache when it has it; `fresh` asks the server). */
  async getRoomAccountData(roomId: string, type: string, opts: { fresh?: boolean } = {}): Promise<Record<string, unknown> | null> {
    roomIdArg(roomId, 'getRoomAccountData');
    const s = this.need();
    return this.readAccountData(roomId, type, `/_matrix/client/v3/user/${seg(s.userId)}/rooms/${seg(roomId)}/account_data/${seg(type)}`, opts.fresh === true);
  }

  /** Sets account data of `type` for one room. */
  async setRoomAccountData(roomId: string, type: string, content: Record<string, unknown>): Promise<void> {
    roomIdArg(roomId, 'setRoomAccountData');
    const s = this.need();
    await this.needHttp().json('PUT', `/_matrix/client/v3/user/${seg(s.userId)}/rooms/${seg(roomId)}/account_data/${seg(type)}`, { body: content });
    await this.cache?.api.apply({ rooms: [], accountData: [{ roomId, type, content }] });
  }

  private async readAccountData(roomId: string | null, type: string, path: string, fresh: boolean): Promise<Record<string, unknown> | null> {
    if (!fresh) {
      const cached = await this.needCache().accountData(roomId, type);
      if (cached) return cached;
    }
    try {
      const content = await this.needHttp().json<Record<string, unknown>>('GET', path);
      await this.cache?.api.apply({ rooms: [], accountData: [{ roomId, type, content }] });
      return content;
    } catch (err) {
      if ((err as HalcyonError).errcode === 'M_NOT_FOUND') return null;
      throw err;
    }
  }

  // ---- media ----

  /** The homeserver's media configuration (its upload limit). */
  mediaConfig(): Promise<MediaConfig> {
    return this.needMedia().config();
  }

  /** Uploads a file (path, bytes or stream; streamed, not buffered) and resolves with its `mxc://` URI. */
  uploadMedia(source: MediaSource, opts?: UploadOptions): Promise<string> {
    return this.needMedia().upload(source, opts);
  }

  /** Downloads an `mxc://` URI through authenticated media into memory. */
  downloadMedia(mxc: string, opts?: DownloadOptions): Promise<Buffer> {
    return this.needMedia().download(mxc, opts);
  }

  /**
   * Downloads a thumbnail of an `mxc://` URI made by the server (`GET /_matrix/client/v1/media/thumbnail`):
   * `{ width, height, method?: 'crop' | 'scale', animated?, maxBytes? }`. Resolves with the image bytes.
   */
  downloadThumbnail(mxc: string, opts: Parameters<Media['downloadThumbnail']>[1]): Promise<Buffer> {
    return this.needMedia().downloadThumbnail(mxc, opts);
  }

  /** Downloads an `mxc://` URI through authenticated media as a stream (`maxBytes`: refuse past it). */
  downloadMediaStream(mxc: string, opts?: DownloadOptions): Promise<Readable> {
    return this.needMedia().downloadStream(mxc, opts);
  }

  /** Downloads the file of a media message's content: `url`, or `file` (decrypted, its hash checked). */
  downloadContent(content: Record<string, unknown>, opts?: DownloadOptions): Promise<Buffer> {
    return this.needMedia().downloadContent(content, opts);
  }

  /** Sends an image (`m.image`, with size, dimensions, a thumbnail and a blurhash); encrypted in encrypted rooms. */
  async sendImage(roomId: string, source: MediaSource, opts?: SendMediaOptions): Promise<string> {
    roomIdArg(roomId, 'sendImage');
    return this.needMedia().sendImage(roomId, source, opts);
  }

  /** Sends a video (`m.video`); encrypted in encrypted rooms. */
  async sendVideo(roomId: string, source: MediaSource, opts?: SendMediaOptions): Promise<string> {
    roomIdArg(roomId, 'sendVideo');
    return this.needMedia().sendVideo(roomId, source, opts);
  }

  /** Sends an audio file (`m.audio`); encrypted in encrypted rooms. */
  async sendAudio(roomId: string, source: MediaSource, opts?: SendMediaOptions): Promise<string> {
    roomIdArg(roomId, 'sendAudio');
    return this.needMedia().sendAudio(roomId, source, opts);
  }

  /** Sends any file (`m.file`); encrypted in encrypted rooms. */
  async sendFile(roomId: string, source: MediaSource, opts?: SendMediaOptions): Promise<string> {
    roomIdArg(roomId, 'sendFile');
    return this.needMedia().sendFile(roomId, source, opts);
  }

  // ---- internals ----

  private needOutbox(): Outbox {
    this.need();
    if (!this.outbox) throw new HalcyonError('HALCYON_NOT_RUNNING', 'the client is not running (call run(token) first)');
    return this.outbox;
  }

  private needMedia(): Media {
    this.need();
    return this.media!;
  }

  private need(): Session {
    if (!this.session || (this.state !== 'running' && this.state !== 'starting' && this.state !== 'stopping')) {
      throw new HalcyonError('HALCYON_NOT_RUNNING', 'the client is not running (call run(token) first)');
    }
    return this.session;
  }

  private needCache(): ActorHandle<CacheActorApi>['api'] {
    this.need();
    if (!this.cache) throw new HalcyonError('HALCYON_NOT_RUNNING', 'the client is not running (call run(token) first)');
    return this.cache.api;
  }

  private needHttp(): MatrixHttp {
    this.need();
    return this.http!;
  }

  /** Types the sync actor posts: encrypted events always come (to be decrypted, or reported if encryption is off). */
  private wantedTypes(): string[] | null {
    return this.listeners.event?.length ? null : [...DEFAULT_TYPES, ENCRYPTED];
  }

  private async startActors(session: Session): Promise<void> {
    const o = this.opts;
    const e2ee = o.encryption;
    if (o.threads === 'inline') {
      const cacheImpl = new CacheActor();
      const [mainSide, syncSide] = localPortPair<SyncToMain, MainToSync>();
      let cryptoRemote: SyncDeps['crypto'];
      if (e2ee) {
        const [mainCrypto, cryptoSide] = localPortPair<CryptoToMain, MainToCrypto>();
        const cryptoImpl = new CryptoActor(cryptoSide);
        this.crypto = inThreadActor<CryptoActorApi>('crypto', cryptoImpl, CRYPTO_DEADLINES);
        this.cryptoPort = mainCrypto;
        cryptoRemote = localRemote<CryptoActorApi>('crypto', cryptoImpl, CRYPTO_DEADLINES);
      }
      const syncImpl = new SyncActor({ cache: localRemote<CacheActorApi>('cache', cacheImpl, CACHE_DEADLINES), events: syncSide, crypto: cryptoRemote });
      this.cache = inThreadActor<CacheActorApi>('cache', cacheImpl, CACHE_DEADLINES);
      this.sync = inThreadActor<SyncActorApi>('sync', syncImpl, SYNC_DEADLINES);
      this.port = mainSide;
    } else {
      // The sync actor talks to the cache and crypto actors and to main over their own ports, never through this thread.
      const [syncToCache, cacheFromSync] = portPair();
      const [mainEvents, syncEvents] = portPair();
      const syncPorts: Record<string, MessagePort> = { cache: syncToCache, events: syncEvents };
      if (e2ee) {
        const [syncToCrypto, cryptoFromSync] = portPair();
        const [mainCrypto, cryptoEvents] = portPair();
        this.crypto = spawnWorkerActor<CryptoActorApi>('crypto', CRYPTO_DEADLINES, { sync: cryptoFromSync, events: cryptoEvents });
        this.cryptoPort = typedPort<CryptoToMain, MainToCrypto>(mainCrypto);
        syncPorts.crypto = syncToCrypto;
      }
      this.cache = spawnWorkerActor<CacheActorApi>('cache', CACHE_DEADLINES, { sync: cacheFromSync });
      this.sync = spawnWorkerActor<SyncActorApi>('sync', SYNC_DEADLINES, syncPorts);
      this.port = typedPort<SyncToMain, MainToSync>(mainEvents);
    }
    for (const actor of [this.cache, this.sync, this.crypto]) actor?.onDeath((err) => this.restartActors(err));
    this.port.onMessage((msg) => this.onSyncMessage(msg));
    this.cryptoPort?.onMessage((msg) => this.onCryptoMessage(msg));
    if (this.crypto && e2ee) {
      // Opened before the first poll: the device's keys must be uploaded before anyone encrypts for it.
      const crypto = this.crypto;
      this.identity = await crypto.api.open({
        homeserver: session.homeserver,
        userId: session.userId,
        deviceId: session.deviceId,
        accessToken: session.accessToken,
        dataDir: o.dataDir,
        passphrase: e2ee.passphrase ?? storePassphrase(o.dataDir),
        wantedTypes: this.listeners.event?.length ? null : DEFAULT_TYPES,
        maxPendingUndecryptable: e2ee.maxPendingUndecryptable ?? 1_000,
        pendingUndecryptableMaxAgeMs: e2ee.pendingUndecryptableMaxAgeMs ?? 24 * 3600_000,
      });
      // Published only now, and only if no stop or restart replaced it meanwhile: sends waiting on the gate go.
      if (this.crypto === crypto) {
        this.cryptoOpen = crypto;
        this.cryptoGate.open();
      }
    }
    // Only now is the token's device known to fit the crypto store: a refused run must not re-point the data dir.
    claimDataDir(o.dataDir, session.homeserver, session.userId, session.deviceId);
    await this.cache.api.open({ dataDir: o.dataDir, maxRoomsInMemory: o.maxRoomsInMemory });
    for (const s of await this.cache.api.summaries()) this.setSummary(s);
    const config: SyncConfig = {
      homeserver: session.homeserver,
      userId: session.userId,
      deviceId: session.deviceId,
      accessToken: session.accessToken,
      dataDir: o.dataDir,
      pollTimeoutMs: o.pollTimeoutMs,
      deadlineMarginMs: 15_000,
      maxInFlightEvents: o.maxQueuedEvents,
      maxJournalEvents: o.maxJournalEvents,
      maxGapEvents: o.maxGapEvents,
      seqFloor: this.maxSeqSeen,
      deliverInitialTimeline: o.deliverInitialTimeline,
      backoffMinMs: o.backoffMinMs,
      backoffMaxMs: o.backoffMaxMs,
      wantedTypes: this.wantedTypes(),
      encryption: this.crypto !== null,
    };
    await this.sync.api.start(config);
  }

  private async shutdown(): Promise<void> {
    this.lifecycle.abort();
    if (this.watchdog) clearInterval(this.watchdog);
    this.watchdog = null;
    // A restart in progress ends first (its wait is aborted), so there is one set of actors to stop.
    await this.restarting?.catch(() => {});
    const { sync, http } = this;
    if (sync) {
      // Handlers must finish (and acknowledge) while the sync actor drains, so both run together; a handler
      // that never settles is abandoned after stopTimeoutMs (its batch is redelivered by the next run).
      let timer: NodeJS.Timeout | undefined;
      const patience = new Promise<void>((resolve) => (timer = setTimeout(resolve, this.opts.stopTimeoutMs)));
      const handlers = this.dispatcher.idle();
      await Promise.all([
        sync.api.stop(this.opts.stopTimeoutMs).catch((e) => this.log('warn', e, 'sync actor stop')),
        Promise.race([handlers, patience]).then(() => {
          if (this.dispatcher.size > 0) this.log('warn', { pending: this.dispatcher.size }, `stop: handlers still running after ${this.opts.stopTimeoutMs} ms were abandoned`);
        }),
      ]);
      clearTimeout(timer);
    }
    const outbox = this.outbox;
    if (outbox) {
      // Sends made by the handlers that just finished: give them the rest of the stop budget; what is left
      // stays in outbox.sqlite and goes out with the next run.
      await outbox.drain(this.opts.stopTimeoutMs);
      outbox.close();
      if (this.outbox === outbox) this.outbox = null;
    }
    await this.stopActors(true);
    const media = this.media;
    this.media = null;
    await media?.close().catch((e) => this.log('warn', e, 'media pool close'));
    const metrics = this.metrics;
    this.metrics = noMetrics;
    await metrics.close().catch((e) => this.log('warn', e, 'metrics close'));
    await http?.close();
    if (this.http === http) this.http = null;
  }

  /**
   * Ends the actors and their ports. `graceful`: the sync actor was stopped already, the stores close normally.
   * For a restart: the sync actor gets a short stop (no drain) and every call is bounded, since one of the
   * actors is dead or stuck.
   */
  private async stopActors(graceful: boolean): Promise<void> {
    const { sync, cache, crypto, cryptoPort, port } = this;
    // From here until a new crypto actor has opened its store, sends wait (see openCrypto).
    this.cryptoOpen = null;
    this.cryptoGate.close();
    const bounded = <T>(p: Promise<T> | undefined, what: string) =>
      p &&
      Promise.race([p, new Promise<void>((r) => setTimeout(r, graceful ? CRYPTO_DEADLINES.close : RESTART_CALL_MS).unref())]).catch((e) => this.log('warn', e, what));
    if (!graceful) await bounded(sync?.api.stop(0), 'sync actor stop');
    // After the sync actor: it may be handing the crypto actor a batch until it has stopped.
    await Promise.all([bounded(cache?.api.close(), 'cache actor close'), bounded(crypto?.api.close(), 'crypto actor close')]);
    await sync?.terminate();
    await cache?.terminate();
    await crypto?.terminate();
    if (this.crypto === crypto) this.crypto = null;
    if (this.cryptoPort === cryptoPort) this.cryptoPort = null;
    cryptoPort?.close();
    // Cleared only now: handlers finishing during the drain still acknowledge over the port and send over http.
    if (this.sync === sync) this.sync = null;
    if (this.cache === cache) this.cache = null;
    if (this.port === port) this.port = null;
    port?.close();
  }

  /**
   * An actor died or the sync actor is stuck: report it, end the actors and start them again (worker threads
   * only), after 1 s, 2 s, 4 s, ... Handlers and sends go on meanwhile; the restarted sync actor posts the
   * journal's unfinished batches again and main merges them with what it is running. More than
   * `MAX_RESTARTS` restarts within 5 minutes stop the client.
   */
  private restartActors(err: HalcyonError): void {
    if (this.state !== 'running' || this.restarting) return;
    if (this.opts.threads === 'inline') return this.fail(err);
    const now = Date.now();
    this.restartTimes = this.restartTimes.filter((t) => now - t < RESTART_WINDOW_MS);
    if (this.restartTimes.length >= MAX_RESTARTS) {
      return this.fail(new HalcyonError('HALCYON_ACTOR_DIED', `the actors failed ${MAX_RESTARTS} times within 5 minutes; giving up: ${err.message}`, { cause: err }));
    }
    this.restartTimes.push(now);
    this.emitError(err);
    const wait = 1000 * 2 ** (this.restartTimes.length - 1);
    this.restarting = (async () => {
      await this.stopActors(false);
      await delay(wait, this.lifecycle.signal);
      if (this.state !== 'running') return;
      await this.startActors(this.session!);
      this.log('warn', { after: err.code }, 'actors restarted');
    })()
      .catch((e: HalcyonError) => {
        if (this.state === 'running') this.fail(e);
      })
      .finally(() => {
        this.restarting = null;
      });
  }

  /** Checks that the sync actor answers and keeps polling; restarts the actors if not (worker threads only). */
  private async checkSync(): Promise<void> {
    const sync = this.sync;
    if (this.state !== 'running' || this.restarting || !sync) return;
    let timer: NodeJS.Timeout | undefined;
    const silent = new Promise<'silent'>((r) => (timer = setTimeout(() => r('silent'), WATCHDOG_ANSWER_MS)));
    const st = await Promise.race([sync.api.status().catch(() => null), silent]);
    clearTimeout(timer);
    if (this.sync !== sync || this.state !== 'running') return;
    if (st === 'silent') {
      return this.restartActors(new HalcyonError('HALCYON_ACTOR_TIMEOUT', `the sync actor did not answer the watchdog within ${WATCHDOG_ANSWER_MS} ms; restarting it`));
    }
    // Waiting on purpose (a full journal, a backoff or the server's retry time) is not being stuck.
    if (!st || !st.running || st.waitingForCredit || st.lastPollStartAt === null || (st.nextPollAt !== null && st.nextPollAt > Date.now() - 60_000)) return;
    // A poll starts at least this often: its deadline, the longest backoff, and slack for a slow hand-off.
    const stuckMs = this.opts.pollTimeoutMs + 15_000 + this.opts.backoffMaxMs + 60_000;
    if (Date.now() - st.lastPollStartAt > stuckMs) {
      this.restartActors(new HalcyonError('HALCYON_ACTOR_TIMEOUT', `the sync actor started no poll for ${Math.round((Date.now() - st.lastPollStartAt) / 1000)} s; restarting it`));
    }
  }

  /** Crashes one actor's worker as a fault would (for fault-injection tests). @internal */
  async crashActorForTests(name: 'sync' | 'cache' | 'crypto'): Promise<void> {
    await (name === 'sync' ? this.sync : name === 'cache' ? this.cache : this.crypto)?.crash();
  }

  /** Makes one actor stop answering while its worker stays alive, as a stuck actor would (for watchdog tests). @internal */
  async stallActorForTests(name: 'sync' | 'cache' | 'crypto'): Promise<void> {
    await (name === 'sync' ? this.sync : name === 'cache' ? this.cache : this.crypto)?.stall();
  }

  /** A fatal problem (dead token, dead worker): report it, fail `run` if it is still waiting, and shut down. */
  private fail(err: HalcyonError): void {
    if (this.state === 'stopping' || this.state === 'stopped' || this.state === 'idle') return;
    this.emitError(err);
    const waiter = this.readyWaiter;
    this.readyWaiter = null;
    if (waiter) {
      waiter.reject(err);
      return; // run() shuts down itself
    }
    this.state = 'stopping';
    void this.shutdown().then(() => (this.state = 'stopped'));
  }

  private onSyncMessage(msg: SyncToMain): void {
    switch (msg.kind) {
      case 'batch':
        if (msg.batch.seq > this.maxSeqSeen) this.maxSeqSeen = msg.batch.seq;
        if (this.pendingBatches) {
          // Until `ready` has settled, batches wait, in order, so handlers see ready first.
          this.pendingBatches.push(msg.batch);
          if (msg.batch.first) void this.fireReady();
        } else this.enqueueBatch(msg.batch);
        break;
      case 'syncError': {
        this.metrics.syncError(msg.error.code);
        const e = fromWireError(msg.error);
        if (!this.listeners.syncError?.length) this.log('warn', e, `sync failed (attempt ${msg.attempt}); retrying in ${msg.retryInMs} ms`);
        else this.emit('syncError', e, { attempt: msg.attempt, retryInMs: msg.retryInMs });
        break;
      }
      case 'syncRecovered':
        this.emit('syncRecovered', { afterAttempts: msg.afterAttempts });
        break;
      case 'backpressure':
        this.backpressure = msg.active;
        this.emit('backpressure', { active: msg.active, backlogEvents: msg.backlogEvents, queuedEvents: msg.inFlightEvents });
        break;
      case 'fatal':
        this.fail(fromWireError(msg.error));
        break;
    }
  }

  private async fireReady(): Promise<void> {
    // The first batch carries the room summaries; apply them before ready handlers look at rooms.
    for (const b of this.pendingBatches ?? []) for (const s of b.summaries) this.setSummary(s);
    const r = this.emit('ready');
    if (r) await r;
    const batches = this.pendingBatches ?? [];
    this.pendingBatches = null;
    for (const b of batches) this.enqueueBatch(b);
    const waiter = this.readyWaiter;
    this.readyWaiter = null;
    waiter?.resolve();
  }

  /**
   * Takes a batch from the sync actor. A batch with encrypted events is decrypted by the crypto actor first;
   * later batches wait behind it so a room's events still reach handlers in order. Decryption of the next
   * batch starts at once (the crypto actor queues it), and the sync actor keeps polling meanwhile.
   */
  private enqueueBatch(b: WireBatch): void {
    const encrypted = encryptedEvents(b);
    if (encrypted === null && !this.batchChain) {
      this.acceptBatch(b, null);
      return;
    }
    const decrypting: Promise<Decryption | null> = encrypted === null ? Promise.resolve(null) : this.decryptBatch(encrypted, b.redelivered);
    const next = (this.batchChain ?? Promise.resolve()).then(() => decrypting).then((d) => this.acceptBatch(b, d));
    this.batchChain = next;
    void next.finally(() => {
      if (this.batchChain === next) this.batchChain = null;
    });
  }

  private async decryptBatch(req: DecryptRequest, redelivered: boolean): Promise<Decryption> {
    if (!this.opts.encryption) return { error: new HalcyonError('HALCYON_DECRYPT_FAILED', 'encryption is off (the client was created with encryption: false)') };
    // Lost with a restarting actor: the batch's repost after the restart decrypts it (see isActorLoss).
    if (!this.cryptoOpen) return { error: new HalcyonError('HALCYON_RESTARTING', 'the crypto actor is restarting') };
    try {
      const result = await this.cryptoOpen.api.decrypt(req);
      if (result.batch) result.batch.redelivered = redelivered;
      return { result, reader: result.batch ? new BatchReader(result.batch) : null };
    } catch (err) {
      return { error: new HalcyonError('HALCYON_DECRYPT_FAILED', `decryption failed: ${(err as Error).message}`, { cause: err }) };
    }
  }

  /**
   * Queues a batch's events on the dispatcher. Each event is acknowledged to the sync actor (its journal marks it
   * done) when its handlers settle, and the batch when all of it is handled; events an earlier run finished are
   * skipped. A batch posted again by a restarted sync actor is merged with what this thread already does of it:
   * nothing runs twice, and events whose decryption the dead crypto actor left undone run now.
   */
  private acceptBatch(b: WireBatch, dec: Decryption | null): void {
    this.dispatcher.pushBatch(() => this.queueBatch(b, dec));
  }

  private queueBatch(b: WireBatch, dec: Decryption | null): void {
    for (const s of b.summaries) this.setSummary(s);
    for (const e of b.errors) this.emitError(fromWireError(e));
    if (dec && 'result' in dec) for (const e of dec.result.batch?.errors ?? []) this.emitError(fromWireError(e));
    const seq = b.seq;
    if (this.completed.has(seq)) {
      this.acks.finish(seq); // done here already; its acknowledgement died with the old sync actor
      return;
    }
    const ev = b.events;
    const repost = this.held.has(seq);
    // Journaled by an older version: no knocks field.
    const knocks = b.knocks ?? [];
    const held = this.held.get(seq) ?? new HeldBatch(ev.count, b.invites.length + knocks.length + b.accountData.length + b.receipts.length);
    this.held.set(seq, held);
    let left = 1; // held by this function until every item is queued
    const finish = () => {
      if (--left > 0) return;
      if (this.held.get(seq) === held) this.held.delete(seq);
      this.completed.add(seq);
      if (this.completed.size > 10_000) this.completed.delete(this.completed.values().next().value!);
      this.acks.finish(seq);
    };
    /** Item `i` is done or running already (an earlier acceptance of this batch): wait for it, don't run it. */
    const already = (i: number): boolean => {
      const st = held.state[i]!;
      if (st === DONE) {
        if (repost && i < ev.count) this.acks.done(seq);
        return true;
      }
      if (st === STARTED) {
        left++;
        held.whenDone(i, finish);
        return true;
      }
      return false;
    };
    const metrics = this.metrics !== noMetrics ? this.metrics : null;
    const run = (i: number, roomId: string, task: (done: () => void) => unknown) => {
      held.start(i);
      left++;
      this.dispatcher.push(roomId, () => {
        const t0 = metrics ? performance.now() : 0;
        return task(() => {
          if (metrics) {
            const kind = i < ev.count ? (classify(ev.strings[ev.type[i]!]!, ev.relType[i]! < 0 ? null : ev.strings[ev.relType[i]!]!) ?? 'other') : 'other';
            const joined = this.summaries.get(roomId)?.membership === 'join';
            metrics.handled(kind, joined ? roomId : null, (performance.now() - t0) / 1000, i < ev.count ? (Date.now() - ev.ts[i]!) / 1000 : -1);
          }
          held.done(i);
          if (i < ev.count) this.acks.done(seq);
          finish();
        });
      });
    };
    metrics?.eventsReceived(ev.count);
    const reader = ev.count > 0 ? new BatchReader(b) : null;
    const anyEvent = (this.listeners.event?.length ?? 0) > 0;
    const failures = dec && 'result' in dec ? new Map(dec.result.failures.map((f) => [f.index, f])) : null;
    // Decryption lost to a dead crypto actor: those events are left for the batch's repost after the restart.
    const lost = dec !== null && 'error' in dec && isActorLoss(dec.error);
    let k = 0; // ordinal among the batch's encrypted events still to handle (the decrypt request's index)
    for (let i = 0; i < ev.count; i++) {
      if (isDone(b.done, i)) continue; // handled by an earlier run
      const roomId = b.rooms[ev.room[i]!]!;
      const encrypted = ev.strings[ev.type[i]!] === ENCRYPTED && dec !== null;
      const index = encrypted ? k++ : -1;
      if (already(i)) continue;
      if (encrypted) {
        if ('error' in dec) {
          if (lost) continue;
          run(i, roomId, (done) => settle(this.emitDecryptionError(dec.error, reader!, i, roomId, { sessionId: null, willRetry: false, withheldCode: null }), done));
          continue;
        }
        const slot = dec.result.slot[index]!;
        if (slot >= 0 && dec.reader) {
          const task = this.eventTask(dec.reader, slot, roomId, anyEvent);
          if (task) run(i, roomId, task);
          continue;
        }
        const f = failures!.get(index);
        if (!f) continue;
        this.metrics.decryptFailure(f.code);
        const err = new HalcyonError(f.code, f.message, { roomId });
        run(i, roomId, (done) => settle(this.emitDecryptionError(err, reader!, i, roomId, { sessionId: f.sessionId, willRetry: f.pending, withheldCode: f.withheldCode ?? null }), done));
        continue;
      }
      const task = this.eventTask(reader!, i, roomId, anyEvent);
      if (task) run(i, roomId, task);
    }
    let item = ev.count;
    for (const inv of b.invites) {
      const i = item++;
      if (!already(i)) {
        run(i, inv.roomId, (done) => {
          // Keyed by this invite, not by its room: a second invite to the same room must not reuse the first
          // run's transaction IDs (the outbox would answer its sends from disk, and nothing would be sent). The
          // batch's token stands in when the server sends the invite event without its ID (Synapse does); a
          // redelivered batch keeps it, so a re-run stays idempotent.
          beginHandlerRun(`invite:${inv.eventId ?? `${inv.roomId}@${b.nextBatch}`}`);
          try {
            return settle(this.deliverInvite(inv), done);
          } finally {
            endHandlerSyncPart();
          }
        });
      }
    }
    for (const k of knocks) {
      const i = item++;
      if (this.listeners.knock?.length && !already(i)) {
        run(i, k.roomId, (done) => settle(this.emit('knock', { roomId: k.roomId, state: k.state }), done));
      }
    }
    for (const a of b.accountData) {
      const i = item++;
      // Global account data runs in a lane of its own ('' is no room ID).
      if (this.listeners.accountData?.length && !already(i)) {
        run(i, a.roomId ?? '', (done) => settle(this.emit('accountData', { roomId: a.roomId, type: a.type, content: a.content }), done));
      }
    }
    const own = this.session?.userId;
    for (const r of b.receipts) {
      const i = item++;
      if (!this.listeners.receipt?.length || (this.opts.ignoreOwnEvents && r.userId === own) || already(i)) continue;
      run(i, r.roomId, (done) => settle(this.emit('receipt', { ...r, room: this.room(r.roomId) }), done));
    }
    // Never released: a batch with lost decryptions is completed by its repost, not by this acceptance.
    if (lost) left++;
    finish();
  }

  /** The dispatcher task delivering event `i` of a reader, or null if no handler wants it. */
  private eventTask(r: BatchReader, i: number, roomId: string, anyEvent: boolean): ((done: () => void) => unknown) | null {
    const ev = r.batch.events;
    const kind = classify(ev.strings[ev.type[i]!]!, ev.relType[i]! < 0 ? null : ev.strings[ev.relType[i]!]!);
    const skipOwn = this.opts.ignoreOwnEvents;
    const flags = ev.flags[i]!;
    const own = (flags & EVENT_FLAGS.own) !== 0;
    const wantKind =
      kind !== null &&
      (this.listeners[kind]?.length ?? 0) > 0 &&
      !(skipOwn && kind !== 'member' && own) &&
      !(kind === 'message' && !own && (flags & EVENT_FLAGS.notice) !== 0 && !this.opts.deliverNotices);
    if (!wantKind && !anyEvent) return null;
    // The handler run is keyed by its event: sends it makes get transaction IDs derived from it (idempotent replays).
    return (done) => {
      beginHandlerRun(r.str(i, OFF.eventId) ?? '');
      try {
        return settle(this.deliver(r, i, roomId, wantKind ? kind : null, anyEvent), done);
      } finally {
        endHandlerSyncPart();
      }
    };
  }

  /**
   * Reports an event that could not be decrypted: to `decryptionError` handlers, or, when there are none, as a
   * warning (a bot that silently cannot read a room is the complaint users have most of E2EE).
   */
  private emitDecryptionError(err: HalcyonError, r: BatchReader, i: number, roomId: string, why: Pick<DecryptionErrorInfo, 'sessionId' | 'willRetry' | 'withheldCode'>): unknown {
    const eventId = r.str(i, OFF.eventId) ?? '';
    err.eventId = eventId;
    const info: DecryptionErrorInfo = { roomId, eventId, sender: r.str(i, OFF.sender) ?? '', ...why };
    if (this.listeners.decryptionError?.length) return this.emit('decryptionError', err, info);
    const withheld = why.withheldCode === null ? null : (WITHHELD[why.withheldCode] ?? `its sender withheld the room key (${why.withheldCode})`);
    this.opts.logger.warn(
      { code: err.code, ...info },
      `cannot decrypt ${eventId} from ${info.sender} in ${roomId}: ${withheld ?? err.message}${why.willRetry ? ' (kept: it is delivered if its key arrives)' : ''}`,
    );
    return undefined;
  }

  private onCryptoMessage(msg: CryptoToMain): void {
    switch (msg.kind) {
      case 'late':
        this.acceptLate(msg.batch, msg.ids);
        break;
      case 'error':
        this.emitError(fromWireError(msg.error));
        break;
      case 'fatal':
        this.fail(fromWireError(msg.error));
        break;
    }
  }

  /** Delivers events decrypted after their key arrived late; the crypto actor forgets them once handled. */
  private acceptLate(b: WireBatch, ids: string[]): void {
    let left = 1;
    const done = () => {
      if (--left === 0) this.cryptoPort?.post({ kind: 'lateHandled', ids });
    };
    const reader = new BatchReader(b);
    const anyEvent = (this.listeners.event?.length ?? 0) > 0;
    for (let i = 0; i < b.events.count; i++) {
      const roomId = b.rooms[b.events.room[i]!]!;
      const task = this.eventTask(reader, i, roomId, anyEvent);
      if (task) {
        left++;
        this.dispatcher.push(roomId, () => task(done));
      }
    }
    done();
  }

  private deliver(b: BatchReader, i: number, roomId: string, kind: EventKind | null, anyEvent: boolean): unknown {
    const room = this.room(roomId);
    if (kind === 'edit') return this.deliverEdit(b, i, room, anyEvent);
    let first: unknown;
    if (kind !== null) {
      const obj =
        kind === 'message' ? new Message(b, i, room, this)
        : kind === 'reaction' ? new Reaction(b, i, room, this)
        : kind === 'member' ? new MemberEvent(b, i, room, this)
        : new Redaction(b, i, room, this);
      first = this.emit(kind, obj as never);
    }
    if (!anyEvent) return first;
    const generic = () => this.emit('event', new RoomEvent(b, i, room, this));
    return isPromise(first) ? first.then(generic) : generic();
  }

  /**
   * An edit reaches `edit` handlers only if it may replace its original by the spec's rules (same sender and
   * type, no state event, the original not an edit, `m.new_content` present): anyone can send an `m.replace`
   * relation to anyone's message, and servers do not check. Invalid ones are only logged (and still reach
   * `event` handlers, as every event does).
   */
  private async deliverEdit(b: BatchReader, i: number, room: Room, anyEvent: boolean): Promise<void> {
    const edit = new Edit(b, i, room, this);
    const original = await this.fetchEvent(room.id, edit.replaces);
    const problem = editProblem(
      { sender: edit.sender, type: edit.type, encrypted: edit.isEncrypted, stateKey: edit.stateKey, content: edit.content },
      original && { sender: original.sender ?? '', type: original.type, encrypted: original.type === ENCRYPTED, stateKey: original.state_key ?? null, content: original.content },
    );
    if (problem) this.opts.logger.info({ roomId: room.id, eventId: edit.eventId }, `an invalid edit was ignored: ${problem}`);
    else await this.emit('edit', edit);
    if (anyEvent) await this.emit('event', new RoomEvent(b, i, room, this));
  }

  private deliverInvite(inv: WireBatch['invites'][number]): unknown {
    const invite: Invite = { ...inv, accept: () => this.joinRoom(inv.roomId), decline: (reason?: string) => this.leaveRoom(inv.roomId, reason) };
    const r = this.emit('invite', invite);
    if (this.opts.autoJoin === false) return r;
    const join = async () => {
      if (!(await this.acceptsInvite(invite))) return;
      try {
        await this.joinRoom(inv.roomId);
        // A direct chat the inviter started is recorded in m.direct, so getOrCreateDm finds it later.
        if (inv.isDirect && inv.inviter) await this.addDirectRoom(inv.inviter, inv.roomId);
      } catch (err) {
        this.emitError(err as HalcyonError);
      }
    };
    return isPromise(r) ? r.then(join) : join();
  }

  /** Whether the `autoJoin` policy accepts this invite. */
  private async acceptsInvite(invite: Invite): Promise<boolean> {
    const policy = this.opts.autoJoin;
    if (policy === true) return true;
    if (typeof policy === 'function') {
      try {
        return (await policy(invite)) === true;
      } catch (err) {
        this.handlerFailed(err, 'autoJoin', invite.roomId);
        return false;
      }
    }
    if (typeof policy !== 'object' || !invite.inviter) return false;
    const server = invite.inviter.slice(invite.inviter.indexOf(':') + 1);
    return (policy.users?.includes(invite.inviter) ?? false) || (policy.servers?.includes(server) ?? false);
  }

  /**
   * Calls the listeners of `event` in order; returns a promise only if one of them is async. A listener that
   * throws or rejects is reported as `HALCYON_HANDLER_FAILED` and the next listener still runs.
   */
  private emit<K extends keyof ClientEvents>(event: K, ...args: ClientEvents[K]): Promise<void> | undefined {
    const list = this.listeners[event] as Listener<K>[] | undefined;
    if (!list || list.length === 0) {
      if (event === 'error') this.log('error', args[0], 'unhandled error event');
      return undefined;
    }
    const snapshot = list.length === 1 ? list : [...list];
    for (let k = 0; k < snapshot.length; k++) {
      let r: unknown;
      try {
        r = snapshot[k]!(...args);
      } catch (err) {
        this.handlerFailed(err, event, undefined, args[0]);
        continue;
      }
      if (isPromise(r)) return this.emitRest(event, snapshot, k, r, args);
    }
    return undefined;
  }

  private async emitRest<K extends keyof ClientEvents>(event: K, list: Listener<K>[], k: number, pending: Promise<unknown>, args: ClientEvents[K]): Promise<void> {
    try {
      await pending;
    } catch (err) {
      this.handlerFailed(err, event, undefined, args[0]);
    }
    for (let j = k + 1; j < list.length; j++) {
      try {
        await list[j]!(...args);
      } catch (err) {
        this.handlerFailed(err, event, undefined, args[0]);
      }
    }
  }

  private handlerFailed(err: unknown, event: string, roomId?: string, subject?: unknown): void {
    if (event === 'error') {
      // An error handler that fails must not recurse.
      this.log('error', err, 'the error handler threw');
      return;
    }
    const details: { cause: unknown; roomId?: string; eventId?: string } = { cause: err };
    if (subject instanceof RoomEvent) {
      details.roomId = subject.roomId;
      details.eventId = subject.eventId;
    } else if (subject && typeof (subject as { roomId?: unknown }).roomId === 'string') details.roomId = (subject as { roomId: string }).roomId;
    else if (roomId) details.roomId = roomId;
    const msg = err instanceof Error ? err.message : String(err);
    this.metrics.handlerFailed();
    this.emitError(new HalcyonError('HALCYON_HANDLER_FAILED', `a '${event}' handler failed: ${msg}`, details));
  }

  private emitError(err: HalcyonError): void {
    const r = this.emit('error', err);
    if (r) r.catch(() => {});
  }

  private log(level: 'warn' | 'error', obj: unknown, msg: string): void {
    this.opts.logger[level](obj, msg);
  }
}

/** Throws `HALCYON_INVALID_ARGUMENT` unless `p` is an {@link AutoJoinPolicy}. */
function checkAutoJoin(p: unknown): void {
  if (typeof p === 'boolean' || typeof p === 'function') return;
  const lists = p as { users?: unknown; servers?: unknown } | null;
  const strings = (v: unknown) => v === undefined || (Array.isArray(v) && v.every((x) => typeof x === 'string'));
  if (typeof lists === 'object' && lists !== null && strings(lists.users) && strings(lists.servers)) return;
  throw new HalcyonError('HALCYON_INVALID_ARGUMENT', 'autoJoin must be a boolean, a function (invite) => boolean, or { users?: string[], servers?: string[] }');
}

/** The batch's encrypted events as a decrypt request, or null if it has none. */
function encryptedEvents(b: WireBatch): DecryptRequest | null {
  const ev = b.events;
  const typeIndex = ev.strings.indexOf(ENCRYPTED);
  if (typeIndex < 0) return null;
  const req: DecryptRequest = { rooms: b.rooms, room: [], raw: [] };
  const buf = Buffer.from(b.body.buffer, b.body.byteOffset, b.body.byteLength);
  for (let i = 0; i < ev.count; i++) {
    if (ev.type[i] !== typeIndex || isDone(b.done, i)) continue;
    req.room.push(ev.room[i]!);
    req.raw.push(buf.toString('utf8', ev.offsets[i * OFFSET_STRIDE + OFF.rawStart]!, ev.offsets[i * OFFSET_STRIDE + OFF.rawEnd]!));
  }
  return req;
}

function classify(type: string, relType: string | null): EventKind | null {
  switch (type) {
    case 'm.room.message':
      return relType === 'm.replace' ? 'edit' : 'message';
    case 'm.reaction':
      return 'reaction';
    case 'm.room.member':
      return 'member';
    case 'm.room.redaction':
      return 'redaction';
    default:
      return null;
  }
}

function isPromise(v: unknown): v is Promise<unknown> {
  return typeof v === 'object' && v !== null && typeof (v as { then?: unknown }).then === 'function';
}

/** Runs `done` once `r` settles (at once if it is not a promise), keeping a rejection for the dispatcher. */
function settle(r: unknown, done: () => void): unknown {
  if (!isPromise(r)) {
    done();
    return r;
  }
  return r.finally(done);
}

/**
 * Adds reply, thread and mention relations to message content. Replies carry no fallback text (the current spec
 * dropped it); a thread message that is not a reply to a particular event falls back to the thread's last event
 * as clients expect (`is_falling_back`).
 */
function withRelations(content: Record<string, unknown>, opts: MessageOptions, threadFallback?: string): Record<string, unknown> {
  const c = content;
  if (opts.threadId !== undefined) {
    c['m.relates_to'] = {
      rel_type: 'm.thread',
      event_id: opts.threadId,
      is_falling_back: opts.replyTo === undefined,
      'm.in_reply_to': { event_id: opts.replyTo ?? threadFallback ?? opts.threadId },
    };
  } else if (opts.replyTo !== undefined) {
    c['m.relates_to'] = { ...(c['m.relates_to'] as object | undefined), 'm.in_reply_to': { event_id: opts.replyTo } };
  }
  if (opts.mentions !== undefined && c['m.mentions'] === undefined) c['m.mentions'] = mentionsContent(opts.mentions);
  return c;
}

function mentionsContent(m: Mentions): Record<string, unknown> {
  const userIds = Array.isArray(m) ? m : (m.userIds ?? []);
  const out: Record<string, unknown> = { user_ids: [...new Set(userIds)] };
  if (!Array.isArray(m) && m.room) out.room = true;
  return out;
}

/**
 * Collects progress (batches with newly handled events) and complete batches, and sends them to the sync actor
 * in one message per turn of the event loop: a burst of handlers costs one message, not one per event. Handled
 * events are read from each batch's {@link HeldBatch} at send time (a batch that completed meanwhile is sent as
 * complete, without indices: the journal deletes it whole), so recording one costs a set insertion.
 */
class AckTracker {
  private touched = new Set<number>();
  private complete: number[] = [];
  private scheduled = false;

  constructor(
    private readonly send: (msg: MainToSync) => void,
    private readonly doneEvents: (seq: number) => number[] | null,
  ) {}

  /** Batch `seq` has newly handled events. */
  done(seq: number): void {
    this.touched.add(seq);
    this.schedule();
  }

  /** Everything of batch `seq` is handled. */
  finish(seq: number): void {
    this.touched.delete(seq);
    this.complete.push(seq);
    this.schedule();
  }

  /** Sends what is pending now. */
  flush(): void {
    this.scheduled = false;
    if (this.touched.size === 0 && this.complete.length === 0) return;
    const progress: Array<{ seq: number; indices: number[] }> = [];
    for (const seq of this.touched) {
      const indices = this.doneEvents(seq);
      if (indices && indices.length > 0) progress.push({ seq, indices });
    }
    const complete = this.complete;
    this.touched = new Set();
    this.complete = [];
    this.send({ kind: 'acks', progress, complete });
  }

  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => this.flush());
  }
}

const STARTED = 1;
const DONE = 2;

/** What this thread does of one batch: per item (events, then invites, account data, receipts) not started, running or done. */
class HeldBatch {
  readonly state: Uint8Array;
  private readonly waiters = new Map<number, Array<() => void>>();
  constructor(
    private readonly events: number,
    others: number,
  ) {
    this.state = new Uint8Array(events + others);
  }
  /** The events (not other items) done so far. */
  doneEvents(): number[] {
    const out: number[] = [];
    for (let i = 0; i < this.events; i++) if (this.state[i] === DONE) out.push(i);
    return out;
  }
  start(i: number): void {
    this.state[i] = STARTED;
  }
  done(i: number): void {
    this.state[i] = DONE;
    const w = this.waiters.get(i);
    if (!w) return;
    this.waiters.delete(i);
    for (const f of w) f();
  }
  whenDone(i: number, f: () => void): void {
    let w = this.waiters.get(i);
    if (!w) this.waiters.set(i, (w = []));
    w.push(f);
  }
}

/** Errors that mean an actor went away (its work is redone after a restart), not that the input was bad. */
function isActorLoss(e: HalcyonError): boolean {
  const c = (e.cause as HalcyonError | undefined)?.code ?? e.code;
  return c === 'HALCYON_ACTOR_DIED' || c === 'HALCYON_ACTOR_TIMEOUT' || c === 'HALCYON_STOPPED' || c === 'HALCYON_RESTARTING' || c === 'HALCYON_NOT_RUNNING';
}

/** A map that forgets its oldest entries past `max` (insertion order). */
class BoundedMap<K, V> extends Map<K, V> {
  constructor(private readonly max: number) {
    super();
  }
  override set(k: K, v: V): this {
    this.delete(k);
    super.set(k, v);
    if (this.size > this.max) this.delete(this.keys().next().value!);
    return this;
  }
}

/**
 * A gate that is open or closed; {@link wait} resolves once it is open. Closing it again gives later waiters a
 * new promise; those waiting already are released by the next {@link open}.
 */
class Gate {
  private promise: Promise<void>;
  private release: (() => void) | null = null;
  constructor() {
    this.promise = new Promise((r) => (this.release = r));
  }
  open(): void {
    this.release?.();
    this.release = null;
  }
  close(): void {
    if (this.release) return;
    this.promise = new Promise((r) => (this.release = r));
  }
  wait(): Promise<void> {
    return this.promise;
  }
}

/** `p`, or a rejection with `HALCYON_STOPPED` as soon as one of the signals aborts. */
function unlessAborted<T>(p: Promise<T>, signals: Array<AbortSignal | undefined>): Promise<T> {
  const live = signals.filter((s): s is AbortSignal => s !== undefined);
  if (live.some((s) => s.aborted)) return Promise.reject(new HalcyonError('HALCYON_STOPPED', 'stopped'));
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => {
      done();
      reject(new HalcyonError('HALCYON_STOPPED', 'stopped'));
    };
    const done = () => {
      for (const s of live) s.removeEventListener('abort', onAbort);
    };
    for (const s of live) s.addEventListener('abort', onAbort, { once: true });
    p.then(
      (v) => {
        done();
        resolve(v);
      },
      (e: unknown) => {
        done();
        reject(e);
      },
    );
  });
}
