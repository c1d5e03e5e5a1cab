/**
 * The client's public option and event types, their defaults, and {@link resolveOptions}: what `new Client(options)`
 * accepts and what the rest of the client reads (one resolved object, checked once).
 */
import { type ClusterOptions, type ResolvedCluster, resolveCluster } from '../cluster/options.ts';
import type { Client } from '../client.ts';
import { HalcyonError } from '../errors.ts';
import type { AccountDataEvent, Edit, Invite, MemberEvent, Message, Reaction, Receipt, Redaction, RoomEvent, Verification } from '../events.ts';
import { consoleLogger, type Logger } from '../log.ts';
import type { MemoryReport } from '../memory.ts';
import type { MetricsOptions } from '../metrics.ts';
import type { OutboxStatus, RateLimit, SendFailure } from '../outbox.ts';
import type { MatrixEvent, TrustPolicy } from '../protocol.ts';

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
   * Unhandled events held in memory (default 20,000). Past this, new batches wait in the journal on disk (a
   * `backpressure` event says so) while polling goes on. The default holds two bodies of 10,000 events: main
   * then has the next batch in hand when it finishes one, instead of idling while its acknowledgement travels to
   * the sync worker (busy scanning the body after) and the next batch comes back.
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
   * Trim the main thread's V8 heap while the client runs (default true): once a minute, when its old generation has
   * committed more than the live data the last trim left plus 8 MiB or half again, one full collection (a pause
   * of tens of ms in handlers, up to ~200 ms on a busy machine). Under steady traffic V8 otherwise lets main's heap creep towards several times
   * its live data. A trim pausing for over 50 ms (a big application heap) makes the next check wait twice as long.
   * The workers' heaps are always trimmed. `false` leaves main's collections to V8 and the application.
   */
  trimMainHeap?: boolean;
  /**
   * How often the watchdog checks that the sync actor answers and keeps polling (default 30,000 ms); a stuck or
   * dead actor is restarted (worker threads only).
   */
  watchdogMs?: number;
  /** How long `stop()` waits for running handlers, in ms (default 20,000). */
  stopTimeoutMs?: number;
  /**
   * Deadline of each HTTP request but /sync's long-poll (sends, room and user calls, key uploads), in ms (default
   * 30,000): a request without an answer by then fails with `HALCYON_TIMEOUT`, and a send is retried under its
   * transaction ID. The long-poll's own deadline is `pollTimeoutMs` + 15 s.
   */
  requestTimeoutMs?: number;
  /** End-to-end encryption: on by default; `false` turns it off, an object configures it. */
  encryption?: boolean | EncryptionOptions;
  /**
   * Which devices the bot shares room keys with and accepts encrypted messages from (default `'signed'`, what spec
   * v1.18 recommends (MSC4153): devices cross-signed by their owner). Messages from other devices reach
   * `decryptionError` (`HALCYON_DECRYPT_UNTRUSTED`), not handlers, and the bot's messages are not readable there.
   * `'verified'`: only devices the bot verified (or whose owner it verified). `'all'`: every device.
   */
  trust?: TrustPolicy;
  /** Interactive verification (SAS): whose requests the bot accepts; default none (every request is cancelled). */
  verification?: VerificationOptions;
  /** Accept a token whose homeserver is plain `http://` and not this machine (default false); see LoginOptions. */
  allowInsecureHttp?: boolean;
  /**
   * Pacing of sends. `'adaptive'` (default): full speed until the homeserver answers 429, then its pace, learned
   * from what it says (its retry time and the burst it took) and kept per account; a server without limits is
   * never waited on. `{ perSecond, burst }`: a fixed token bucket (`DEFAULT_RATE_LIMIT` is Synapse's
   * `rc_message`). `false`: no pacing (an account exempt from rate limits; 429s are still waited out).
   */
  rateLimit?: RateLimit | 'adaptive' | false;
  /** Attempts of a send that keeps failing transiently before it is a dead letter (default 8; backoff 1 s → 60 s). */
  maxSendAttempts?: number;
  /**
   * Sends into one room in flight at once (default 4). A handler run's sends into its event's room go one at a
   * time in call order, and so do its sends into other rooms per room of its event (a relay keeps its source's
   * order), and sends made outside handlers; different events' replies into a busy room overlap, so a room is
   * not capped at one reply per round trip to the server, and may land out of order under load. `1`: every
   * room's sends one at a time, in call order.
   */
  sendWindow?: number;
  /**
   * Prometheus metrics (prom-client): `true` records into a registry of the client's own (`metricsRegistry`);
   * an object can pass the host application's `registry`, a `port` to serve `/metrics` on, and `perRoom` labels.
   */
  metrics?: boolean | MetricsOptions;
  /**
   * Scale-out over NATS JetStream: this process is the bot's `ingest` (syncs, decrypts and publishes; one leads,
   * others stand by) or one of its `worker`s (runs the handlers). Off by default; see the README's "Scale-out".
   */
  cluster?: ClusterOptions;
}

/** Whose verification requests a client accepts, and whether it confirms the SAS by itself; see {@link ClientOptions.verification}. */
export interface VerificationOptions {
  /**
   * Users whose requests are accepted: a list of user IDs, or a function deciding per user (a throw or rejection
   * counts as no, reported as `HALCYON_HANDLER_FAILED`). Requests from anyone else are cancelled (`m.user`) and
   * reported as `HALCYON_VERIFICATION_REFUSED`.
   */
  from: string[] | ((userId: string) => boolean | Promise<boolean>);
  /**
   * Confirm the SAS without comparing it (default false: a `verificationRequest` handler shows the emoji and calls
   * `confirm()` or `cancel()`). Safe only if the users in `from` cannot be impersonated towards the bot on the way
   * (the SAS comparison is what detects a man in the middle).
   */
  autoConfirm?: boolean;
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
  /**
   * End-to-end encryption, on by default: with `dataDir`, login opens the data dir's crypto store (the one `run()`
   * opens), uploads the device keys and cross-signs the device, setting up the account's identity, secret storage
   * and key backup if it has none (see the README). `false` skips all of it. Give the same value as to the
   * client: of an object only `passphrase` is used here, and the store must be opened with the client's.
   */
  encryption?: boolean | EncryptionOptions;
  /**
   * The recovery key of the account's secret storage (as printed: base58, spaces allowed). Needed when the account
   * already has a cross-signing identity (set up in another client, or before this data dir was lost): its keys
   * then sign the new device, and the key backup is restored. Read it from a file or a secret store, never from
   * the source. A malformed key fails before logging in, a wrong one after (`HALCYON_RECOVERY_KEY_INVALID`).
   */
  recoveryKey?: string;
  /**
   * Replace the account's cross-signing identity, secret storage and key backup with new ones (default false: an
   * existing identity is never replaced; whoever verified the account sees it change, and old backups are lost to
   * this key).
   */
  resetCrossSigning?: boolean;
  /** Where warnings of the login go (default: stderr), e.g. `HALCYON_CROSS_SIGNING_UNAVAILABLE`. */
  logger?: Logger;
}

/** Options of {@link Client.importToken}. */
export interface ImportTokenOptions {
  /** The homeserver: a URL, or a server name resolved through its `.well-known`. */
  homeserver: string;
  /** An access token of an existing device session. */
  accessToken: string;
  /** Claim this data directory for the token's account and device (as Client.login does). */
  dataDir?: string;
  /** Accept a plain `http://` homeserver that is not this machine (default false). */
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
  /**
   * Memory by thread, each measured on its own thread: main's, and each actor's while it runs (null otherwise, or
   * when it did not answer within 5 s), with the process's RSS. The README's "Memory" section says what to expect.
   */
  memory: MemoryReport;
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
  verificationRequest: [verification: Verification];
  receipt: [receipt: Receipt];
  backpressure: [info: BackpressureInfo];
  sendFailed: [error: HalcyonError, info: SendFailure];
  accountData: [event: AccountDataEvent];
}


/** A handler of event `K`. */
export type Listener<K extends keyof ClientEvents> = (...args: ClientEvents[K]) => unknown;

/** The options as the client uses them: every default filled in, `false`/`true` shorthands expanded. */
export type ResolvedOptions = Required<Omit<ClientOptions, 'logger' | 'encryption' | 'rateLimit' | 'metrics' | 'verification' | 'cluster'>> & {
  /** Null when no verification request is accepted. */
  verification: VerificationOptions | null;
  logger: Logger;
  /** Null when encryption is off. */
  encryption: EncryptionOptions | null;
  /** Null when pacing is off. */
  rateLimit: RateLimit | 'adaptive' | null;
  /** Null when metrics are off. */
  metrics: MetricsOptions | null;
  /** Null when the client is not part of a cluster. */
  cluster: ResolvedCluster | null;
};

/** Fills in the defaults of `options` and checks what cannot wait for first use; throws `HALCYON_INVALID_ARGUMENT`. */
export function resolveOptions(options: ClientOptions): ResolvedOptions {
  if (!options || typeof options.dataDir !== 'string' || options.dataDir === '') {
    throw new HalcyonError('HALCYON_INVALID_ARGUMENT', 'new Client({ dataDir }) needs a data directory');
  }
  const opts: ResolvedOptions = {
    autoJoin: true,
    concurrency: 16,
    maxQueuedEvents: 20_000,
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
    trimMainHeap: true,
    stopTimeoutMs: 20_000,
    requestTimeoutMs: 30_000,
    maxSendAttempts: 8,
    sendWindow: 4,
    allowInsecureHttp: false,
    trust: 'signed',
    ...options,
    verification: options.verification ?? null,
    rateLimit: options.rateLimit === false ? null : (options.rateLimit ?? 'adaptive'),
    metrics: options.metrics === true ? {} : options.metrics ? options.metrics : null,
    logger: options.logger ?? consoleLogger(),
    encryption: options.encryption === false ? null : options.encryption === true || options.encryption === undefined ? {} : options.encryption,
    cluster: options.cluster === undefined ? null : resolveCluster(options.cluster),
  };
  checkAutoJoin(opts.autoJoin);
  if (!Number.isInteger(opts.sendWindow) || opts.sendWindow < 1 || opts.sendWindow > 64) {
    throw new HalcyonError('HALCYON_INVALID_ARGUMENT', `sendWindow must be a whole number from 1 to 64, not ${String(opts.sendWindow)}`);
  }
  if (!Number.isInteger(opts.requestTimeoutMs) || opts.requestTimeoutMs < 100 || opts.requestTimeoutMs > 3_600_000) {
    throw new HalcyonError('HALCYON_INVALID_ARGUMENT', `requestTimeoutMs must be a whole number of ms from 100 to 3,600,000, not ${String(opts.requestTimeoutMs)}`);
  }
  checkTrust(opts.trust, opts.verification);
  return opts;
}

/** Throws `HALCYON_INVALID_ARGUMENT` unless `p` is an {@link AutoJoinPolicy}. */
function checkAutoJoin(p: unknown): void {
  if (typeof p === 'boolean' || typeof p === 'function') return;
  const lists = p as { users?: unknown; servers?: unknown } | null;
  const strings = (v: unknown) => v === undefined || (Array.isArray(v) && v.every((x) => typeof x === 'string'));
  if (typeof lists === 'object' && lists !== null && strings(lists.users) && strings(lists.servers)) return;
  throw new HalcyonError('HALCYON_INVALID_ARGUMENT', 'autoJoin must be a boolean, a function (invite) => boolean, or { users?: string[], servers?: string[] }');
}

/** Throws `HALCYON_INVALID_ARGUMENT` unless `trust` is a {@link TrustPolicy} and `v` a {@link VerificationOptions} (or null). */
function checkTrust(trust: unknown, v: unknown): void {
  if (trust !== 'all' && trust !== 'signed' && trust !== 'verified') {
    throw new HalcyonError('HALCYON_INVALID_ARGUMENT', `trust must be 'all', 'signed' or 'verified', not ${JSON.stringify(trust)}`);
  }
  if (v === null) return;
  const o = v as { from?: unknown; autoConfirm?: unknown };
  const fromOk = typeof o?.from === 'function' || (Array.isArray(o?.from) && o.from.every((u) => typeof u === 'string'));
  if (typeof v !== 'object' || !fromOk || (o.autoConfirm !== undefined && typeof o.autoConfirm !== 'boolean')) {
    throw new HalcyonError('HALCYON_INVALID_ARGUMENT', 'verification must be { from: string[] | (userId) => boolean, autoConfirm?: boolean }');
  }
}
