/**
 * The one protocol file: every message that crosses a thread and every actor API is declared here.
 *
 * Threads: main (handlers, dispatcher), the sync actor (long-polls /sync), the cache actor (room state), the crypto
 * actor (the OlmMachine and its store; encryption on). RPC calls (`*Api`) go through comlink with deadlines; the
 * sync actor's events reach main on a one-way port ({@link SyncToMain}, {@link MainToSync}): it never waits on main.
 */
import type { WireError } from './errors.ts';

/** Where the sync actor finds the account, and how it polls. */
export interface SyncConfig {
  homeserver: string;
  userId: string;
  deviceId: string;
  accessToken: string;
  /** Data directory; the actor owns `sync.sqlite` in it. */
  dataDir: string;
  /** Long-poll timeout sent to the server, in ms. The client-side deadline adds `deadlineMarginMs`. */
  pollTimeoutMs: number;
  deadlineMarginMs: number;
  /** Deadline of the actor's other requests (backfill), in ms (`requestTimeoutMs`). */
  requestTimeoutMs: number;
  /** Events handed to main but not yet handled; past this, batches wait in the journal (on disk) instead. */
  maxInFlightEvents: number;
  /** Events journaled but not yet handled; past this the actor waits before its next poll. */
  maxJournalEvents: number;
  /** Missing events fetched per room when a timeline is limited (0: none). */
  maxGapEvents: number;
  /** Batch numbers start above this (the highest main has seen): a restarted actor never reuses one. */
  seqFloor: number;
  /** Whether the timeline of the very first sync (no saved token) is delivered to handlers. */
  deliverInitialTimeline: boolean;
  /** Backoff after a failed poll: first wait and ceiling, in ms (jitter is added). */
  backoffMinMs: number;
  backoffMaxMs: number;
  /** Presence sent with each poll (`set_presence`). */
  setPresence?: 'online' | 'offline' | 'unavailable';
  /** Timeline event types main wants delivered; `null` means all (an `event` listener exists). */
  wantedTypes: string[] | null;
  /** Whether a crypto actor is connected: the batch's crypto changes go to it before the next poll. */
  encryption: boolean;
}

/** What the sync actor found in its store at start. */
export interface SyncStartInfo {
  /** Whether a since token was saved by an earlier run. */
  resumed: boolean;
}

/** Health of the sync loop. */
export interface SyncStatus {
  running: boolean;
  since: string | null;
  polls: number;
  consecutiveErrors: number;
  /** Events handed to main and not yet handled. */
  inFlightEvents: number;
  /** Events journaled and not yet handled (in flight included). */
  backlogEvents: number;
  /** Polling paused: `maxJournalEvents` are journaled and unhandled. */
  waitingForCredit: boolean;
  /** When the next poll is due after a failure (a backoff or the server's retry time), or null. */
  nextPollAt: number | null;
  /** When the last poll started and the last one succeeded (ms since the epoch), or null. */
  lastPollStartAt: number | null;
  lastSuccessAt: number | null;
  lastError?: WireError;
}

/**
 * Memory of one thread, in bytes, as the thread itself measures it (see src/memory.ts). The V8 figures are the
 * thread's own isolate: every worker has a heap of its own, which `process.memoryUsage()` on main does not show.
 */
export interface ActorMemory {
  /** `worker`: measured on the actor's own thread; `main`: the actor runs inline, these are main's numbers. */
  thread: 'worker' | 'main';
  /** V8 heap in use (live objects and garbage not yet collected). */
  heapUsed: number;
  /** V8 heap committed (what the heap holds of RSS). */
  heapTotal: number;
  /** The most the heap may grow to (a worker's `resourceLimits`, else V8's default for this machine). */
  heapLimit: number;
  /**
   * Of `heapTotal`: the young generation (new space), where short-lived objects are allocated. V8 doubles it under
   * steady allocation and rarely shrinks it; it is what grew under steady traffic (see src/actors.ts).
   */
  youngGeneration: number;
  /** Memory outside the heap held by JS objects (buffers, typed arrays), `arrayBuffers` included. */
  external: number;
  /** Of `external`: ArrayBuffer backing stores (sync bodies, typed arrays). */
  arrayBuffers: number;
  /** Wasm linear memory (never shrinks): crypto-wasm's (crypto actor), the scanner's skipper's (sync actor); else null. */
  wasmBytes: number | null;
  /** The most this thread's SQLite connections may cache (pages × page size); null when it has none open. */
  sqliteCacheLimit: number | null;
}

/** RPC surface of the sync actor (main → sync). */
export interface SyncActorApi {
  /** Opens the store, connects the cache actor port and the main event port, and starts polling. */
  start(config: SyncConfig): Promise<SyncStartInfo>;
  /** Stops polling (aborts the long-poll), waits up to `drainMs` for main to acknowledge held batches, saves the token. */
  stop(drainMs?: number): Promise<void>;
  status(): Promise<SyncStatus>;
  /** Changes which timeline event types are posted to main (null: all). */
  setWantedTypes(types: string[] | null): Promise<void>;
  /** Changes the presence sent with each poll. */
  setPresence(state: SyncConfig['setPresence']): Promise<void>;
  /** This actor's memory; `collect` runs a full garbage collection first (for tests: it costs a pause). */
  memory(collect?: boolean): Promise<ActorMemory>;
}

/** Deadlines of actor calls, in ms. `stop` drains in-flight batches first, so it gets longer. */
export const SYNC_DEADLINES = { default: 10_000, stop: 30_000 } as const;
/** Deadlines of cache actor calls, in ms. */
export const CACHE_DEADLINES = { default: 30_000 } as const;
/** Crypto actor call deadlines, ms: a send may share a room key with a big room; `open` rebuilds the store. */
export const CRYPTO_DEADLINES = { default: 30_000, open: 120_000, release: 120_000, encrypt: 120_000, decrypt: 120_000, close: 60_000 } as const;

/**
 * Timeline events of one batch, as an offset table into the body's bytes: no parsed event, no per-event string, a
 * few typed arrays moved (transferred, not copied) with the body's buffer. Main decodes a field when a handler reads it.
 */
export interface EventColumns {
  count: number;
  /** Index into {@link WireBatch.rooms}. */
  room: Int32Array;
  /** Index into `strings` of the event type. */
  type: Int32Array;
  /** Index into `strings` of `content["m.relates_to"].rel_type`, or -1. */
  relType: Int32Array;
  /** The distinct types and relation types of the batch (a small table; types repeat). */
  strings: string[];
  ts: Float64Array;
  /** {@link EVENT_FLAGS} bits per event. */
  flags: Uint8Array;
  /** {@link OFFSET_STRIDE} per event: its JSON's [start, end), then the string tokens (quotes included; -1: absent) of event_id, sender, state_key, relation's event_id. */
  offsets: Int32Array;
  /** Decrypted batches only (absent on clear ones): per event, the sender device's trust as 1 + its index in {@link TRUST_LEVELS}. */
  trust?: Uint8Array;
  /** Decrypted batches only: per event, the index into `strings` of the sender's device ID, or -1 when unknown. */
  device?: Int32Array;
  /** Every event's event_id and sender bytes back to back, when all are ASCII (src/sync/ids.ts): main decodes them once. */
  ids?: Uint8Array;
  /** With `ids`: where event i's event_id (at 2i) and sender (2i + 1) start in it. */
  idAt?: Int32Array;
}

/**
 * What an encrypted event's sender device is to the bot: `verified` (the bot verified it or its owner), `signed`
 * (cross-signed by its owner, whom the bot has not verified), `unsigned` (not cross-signed by its owner), `unknown-device`
 * (not known, or its key came from a source that cannot vouch for it), `identity-changed` (its verified owner has a new identity).
 */
export type TrustLevel = 'verified' | 'signed' | 'unsigned' | 'unknown-device' | 'identity-changed';
/** {@link EventColumns.trust} codes: level `TRUST_LEVELS[code - 1]` (0: not decrypted). */
export const TRUST_LEVELS: readonly TrustLevel[] = ['verified', 'signed', 'unsigned', 'unknown-device', 'identity-changed'];
/**
 * Which devices the bot shares room keys with and accepts encrypted messages from: `all` (every device), `signed`
 * (cross-signed by their owner: spec v1.18, MSC4153), `verified` (devices the bot verified, or whose owner it verified).
 */
export type TrustPolicy = 'all' | 'signed' | 'verified';

/** Int32 slots per event in {@link EventColumns.offsets}. */
export const OFFSET_STRIDE = 10;
/** Slot positions in {@link EventColumns.offsets}. */
export const OFF = { rawStart: 0, rawEnd: 1, eventId: 2, sender: 4, stateKey: 6, relEventId: 8 } as const;
/** Bits of {@link EventColumns.flags}. */
export const EVENT_FLAGS = {
  /** Sent by the bot's own user. */
  own: 1,
  /** An `m.room.message` whose `msgtype` is `m.notice` (bots' messages, which must never be answered automatically). */
  notice: 2,
  /** The string field at slot k (eventId 2, sender 4, stateKey 6, relEventId 8) contains escapes: bit 1 << (1 + k / 2). */
  escaped: (slot: number) => 1 << (1 + slot / 2),
  /** Decrypted by the crypto actor: the event arrived as `m.room.encrypted`. */
  encrypted: 64,
  /** Decrypted after its batch was delivered, when its room key arrived late. */
  late: 128,
} as const;

/** A compact room description kept on main so every message carries its room cheaply. */
export interface RoomSummary {
  roomId: string;
  name: string | null;
  topic: string | null;
  canonicalAlias: string | null;
  avatarUrl: string | null;
  encrypted: boolean;
  joinedMemberCount: number;
  invitedMemberCount: number;
  membership: 'join' | 'invite' | 'leave' | 'ban' | 'knock';
}

/** A pending invite seen in a sync. */
export interface InviteWire {
  roomId: string;
  /** Who invited us, when the stripped state says. */
  inviter: string | null;
  /** Room name from the stripped state, when present. */
  name: string | null;
  /** Whether the inviter marked it a direct chat (`is_direct` on the bot's invite). */
  isDirect: boolean;
  /**
   * The `event_id` of the bot's own `m.room.member` invite event, when the server appends that event in full to
   * `invite_state`; else null. Synapse 1.163 appends it stripped (MSC4319: type, state_key, sender and content
   * only), so null there. Unverified, like all invite state.
   */
  eventId: string | null;
}

/** A room the bot knocked on, seen in a sync (`rooms.knock`). */
export interface KnockWire {
  roomId: string;
  /** `knock_state.events`: stripped state, which nothing authenticates (the room's own state stays apart from it). */
  state: MatrixEvent[];
}

/** An account data event (global when `roomId` is null), as a sync delivers it. */
export interface AccountDataWire {
  roomId: string | null;
  type: string;
  content: Record<string, unknown>;
}

/** One read receipt: `userId` has read up to `eventId` in `roomId`. */
export interface ReceiptWire {
  roomId: string;
  eventId: string;
  userId: string;
  /** `m.read` or `m.read.private` (the latter only for the bot's own receipts). */
  receiptType: string;
  /** When the receipt was sent (ms since the epoch), when the server says. */
  ts: number | null;
  /** The thread the receipt is for (`main` for the main timeline), or null for an unthreaded receipt. */
  threadId: string | null;
}

/** One /sync response after processing, as handed to main. Holds no parsed event objects. */
export interface WireBatch {
  /** Increasing across runs (the journal's row number); main acknowledges handled events by it. */
  seq: number;
  /** Handed to handlers by an earlier run that did not finish them: its events are redeliveries. */
  redelivered: boolean;
  /** Bitmap of events already handled by an earlier run (bit i: event i), to skip; null when none. */
  done: Uint8Array | null;
  nextBatch: string;
  /** True for the first batch of this run. */
  first: boolean;
  /** False when the timeline must not reach handlers (first ever sync, unless configured). */
  deliver: boolean;
  rooms: string[];
  /** The /sync body's UTF-8 bytes (the buffer is transferred to main); events point into it. */
  body: Uint8Array;
  events: EventColumns;
  invites: InviteWire[];
  /** Rooms the bot knocked on. Journaled batches of older versions lack it: read undefined as []. */
  knocks: KnockWire[];
  /** Rooms we left or were removed from. */
  left: string[];
  /** Room summaries that changed in this batch (computed by the cache actor). */
  summaries: RoomSummary[];
  /** Per-event problems: the events were skipped, the rest of the batch is delivered. */
  errors: WireError[];
  /** Account data that changed (global and per room). */
  accountData: AccountDataWire[];
  /** Read receipts of joined rooms. */
  receipts: ReceiptWire[];
}

/** Messages from the sync actor to main on the event port. */
export type SyncToMain =
  | { kind: 'batch'; batch: WireBatch }
  | { kind: 'syncError'; error: WireError; attempt: number; retryInMs: number }
  | { kind: 'syncRecovered'; afterAttempts: number }
  /** Handlers fell behind: batches wait in the journal on disk (`active`), or they caught up again. */
  | { kind: 'backpressure'; active: boolean; backlogEvents: number; inFlightEvents: number }
  | { kind: 'fatal'; error: WireError };

/** Messages from main to the sync actor on the event port. */
export type MainToSync =
  /**
   * Handlers settled: `progress` lists events by batch and index, `complete` the batches all of whose events
   * and items are handled. The journal marks them done (coalesced: one message per turn of main's loop).
   */
  { kind: 'acks'; progress: Array<{ seq: number; indices: number[] }>; complete: number[] };

/** State a sync batch changes, sent from the sync actor to the cache actor (parsed: state events are few). */
export interface StateChanges {
  rooms: Array<{
    roomId: string;
    membership: RoomSummary['membership'];
    /** State events in order (state block first, then state events from the timeline). */
    state: MatrixEvent[];
    /** `summary` block of the sync room (heroes, member counts), when present. */
    summary?: { 'm.joined_member_count'?: number; 'm.invited_member_count'?: number; 'm.heroes'?: string[] };
    /**
     * Event IDs redacted by the `m.room.redaction` events of a joined room's timeline, in order; the cache applies
     * them to its current state events after `state`. Absent when none (callers other than sync leave it out).
     */
    redactions?: string[];
  }>;
  /** Account data to store (the cache actor answers `accountData` from it). */
  accountData?: AccountDataWire[];
}

/** Full cached information about a room. */
export interface RoomInfo extends RoomSummary {
  creator: string | null;
  /** Every creator: the `m.room.create` sender, plus `additional_creators` (room versions 12 and later). */
  creators: string[];
  /** `room_version` of `m.room.create` ("1" when absent), or null before the create event is known. */
  roomVersion: string | null;
  /** `history_visibility` of `m.room.history_visibility`, or null. */
  historyVisibility: string | null;
  joinRule: string | null;
  powerLevels: Record<string, unknown> | null;
  /** Known members (lazy-loaded: members who spoke or changed, plus any fetched). */
  members: Array<{ userId: string; displayName: string | null; avatarUrl: string | null; membership: string }>;
}

/** Where the cache actor keeps its data and how much it holds in memory. */
export interface CacheConfig {
  dataDir: string;
  /** Rooms held fully in memory; the rest stay in SQLite and load on demand. */
  maxRoomsInMemory: number;
  /** Shared memory whose Int32 at 0 the actor adds one to whenever a room becomes encrypted (src/client/plain-rooms.ts). */
  encryptedRooms?: Int32Array;
}

/** RPC surface of the cache actor. */
export interface CacheActorApi {
  open(config: CacheConfig): Promise<void>;
  /** Applies a batch of state changes; resolves with the summaries that changed. `deferWrite`: in SQLite at commit(). */
  apply(changes: StateChanges, deferWrite?: boolean): Promise<RoomSummary[]>;
  commit(): Promise<void>;
  getRoom(roomId: string): Promise<RoomInfo | undefined>;
  /** Summaries of every known room (main mirrors them at start). */
  summaries(): Promise<RoomSummary[]>;
  /** Stored account data of `type` (global when `roomId` is null), or undefined. */
  accountData(roomId: string | null, type: string): Promise<Record<string, unknown> | undefined>;
  close(): Promise<void>;
}

/** A Matrix event as the spec's client format describes it. */
export interface MatrixEvent {
  type: string;
  event_id?: string;
  sender?: string;
  origin_server_ts?: number;
  state_key?: string;
  content: Record<string, unknown>;
  unsigned?: Record<string, unknown>;
  redacts?: string;
  room_id?: string;
}

// ---- crypto ----

/** How the crypto actor opens its store and reaches the homeserver. */
export interface CryptoConfig {
  homeserver: string;
  userId: string;
  deviceId: string;
  accessToken: string;
  /** Data directory; the actor owns `crypto.sqlite` in it. */
  dataDir: string;
  /** Store passphrase (crypto-wasm encrypts the store's values with a key derived from it). */
  passphrase: string;
  /** Timeline event types main wants (applied to decrypted events too); null means all. */
  wantedTypes: string[] | null;
  /** Undecryptable events kept for a late key: at most this many, for at most this long. */
  maxPendingUndecryptable: number;
  pendingUndecryptableMaxAgeMs: number;
  /** Which devices room keys are shared with and messages accepted from (absent: `all`; the client always says). */
  trust?: TrustPolicy;
  /** Deadline of each request (key uploads, queries, to-device sends), in ms (`requestTimeoutMs`; absent: 30 s). */
  requestTimeoutMs?: number;
  /** No request (key uploads...) goes until {@link CryptoActorApi.release} (a cluster ingest may have stepped down). */
  holdRequests?: boolean;
}

/** Who the device is, as the crypto store says. */
export interface CryptoIdentity {
  userId: string;
  deviceId: string;
  curve25519: string;
  ed25519: string;
}

/**
 * The crypto-relevant parts of one /sync batch, sent by the sync actor before it polls with the batch's token (that
 * poll tells the server to delete the batch's to-device events, so they must be applied first).
 */
export interface CryptoSyncChanges {
  /** next_batch of the batch. */
  batchToken: string;
  /** `to_device.events` as a JSON array text (valid events only). */
  toDevice: string;
  toDeviceCount: number;
  deviceListsChanged: string[];
  deviceListsLeft: string[];
  /** `device_one_time_keys_count`, or null when the server left it out; a missing count (null, or an algorithm not listed) is zero. */
  otkCounts: Record<string, number> | null;
  /** `device_unused_fallback_key_types`, when the server sent it. */
  fallbackKeyTypes: string[] | null;
  /** `m.room.encryption` state contents seen in the batch. */
  encryption: Array<{ roomId: string; content: Record<string, unknown> }>;
  /** Membership changes seen in the batch (member lists for key sharing follow them). */
  members: Array<{ roomId: string; userId: string; membership: string }>;
  /** `m.room.history_visibility` state of joined rooms seen in the batch (who gets room keys follows it). */
  historyVisibility: Array<{ roomId: string; visibility: string }>;
  /** Rooms we left: their member lists are dropped. */
  left: string[];
  /** Clear in-room verification events of the batch's timelines, in order (absent: none). */
  verification?: Array<{ roomId: string; event: MatrixEvent }>;
}

/** Encrypted timeline events of one batch, to decrypt in order. */
export interface DecryptRequest {
  rooms: string[];
  /** Per event: index into `rooms`. */
  room: number[];
  /** Per event: the event JSON text as received. */
  raw: string[];
}

/** A failed decryption, reported per event. */
export interface DecryptFailure {
  /** Index of the event in the request. */
  index: number;
  code: 'HALCYON_DECRYPT_MISSING_KEY' | 'HALCYON_DECRYPT_FAILED' | 'HALCYON_DECRYPT_UNTRUSTED';
  message: string;
  sessionId: string | null;
  /** Whether the event is kept and will be delivered if its key arrives. */
  pending: boolean;
  /** The code of the `m.room_key.withheld` notice for its session (e.g. `m.unverified`), when the key was withheld. */
  withheldCode: string | null;
}

/** Decrypted events as a batch of their own (same column format), plus where each request event went. */
export interface DecryptResult {
  /** The decrypted events; `null` when none decrypted. */
  batch: WireBatch | null;
  /** Per request event: its index in `batch.events`, or -1 (failed, or a decrypted type main does not want). */
  slot: number[];
  failures: DecryptFailure[];
}

/** What to send into a room: the content as given, or its encryption. */
export type EncryptResult = { encrypted: false } | { encrypted: true; content: Record<string, unknown> };

/** Crypto actor health, for status and tests. */
export interface CryptoStatus {
  identity: CryptoIdentity;
  pendingUndecryptable: number;
  storedRecords: number;
  /** Batches whose to-device events were applied (this run). */
  appliedBatches: number;
  /** To-device events skipped because an earlier run had applied them already. */
  duplicateToDevice: number;
  /** Server-side key backup: the version room keys go to and how many are backed up, or null when it is off. */
  keyBackup: KeyBackupStatus | null;
}

/** The key backup of a running crypto actor (see {@link CryptoStatus.keyBackup}). */
export interface KeyBackupStatus {
  /** The backup version on the server. */
  version: string;
  /** Room keys of the store that are backed up. */
  backedUpKeys: number;
  /** Room keys in the store. */
  totalKeys: number;
}

/** What login asks the crypto actor to do about the account's cross-signing identity (see crypto/identity.ts). */
export interface IdentitySetup {
  /** The user as given to login, and the password: the user-interactive auth of a cross-signing key upload. */
  user: string;
  password: string;
  /** The recovery key of the account's secret storage (as printed), or null. */
  recoveryKey: string | null;
  /** Replace an existing identity (new cross-signing keys, secret storage and key backup). */
  resetCrossSigning: boolean;
}

/** What the crypto actor did about the account's identity at login. */
export interface IdentitySetupResult {
  /**
   * `created`: a new identity (cross-signing keys, secret storage, key backup); `reset`: a new one replaced the
   * account's; `imported`: the keys came from secret storage with the recovery key; `existing`: the store held
   * the keys already; `unsigned`: the account has an identity whose keys were not given, the device is unsigned.
   */
  crossSigning: 'created' | 'reset' | 'imported' | 'existing' | 'unsigned';
  /** Whether the device is signed by the account's self-signing key (as the server now says). */
  deviceSigned: boolean;
  /** The account's master key (unpadded base64), or null when it has none. */
  masterKey: string | null;
  /** The recovery key of secret storage created by this call (once: it is stored nowhere else), or null. */
  recoveryKey: string | null;
  /** The key backup set up or restored by this call, or null. */
  keyBackup: { version: string; importedKeys: number } | null;
  /** Problems that did not stop the login (`HALCYON_CROSS_SIGNING_UNAVAILABLE`, `HALCYON_KEY_BACKUP`...). */
  warnings: WireError[];
}

/** RPC surface of the crypto actor (main → crypto, and sync → crypto for {@link CryptoActorApi.receiveSyncChanges}). */
export interface CryptoActorApi {
  /** Rebuilds the store, checks it belongs to this user and device, uploads keys if needed. */
  open(config: CryptoConfig): Promise<CryptoIdentity>;
  /** Lets held requests go; resolves once a new store's keys are up (rejects as `open` would if they are refused). */
  release(): Promise<void>;
  /** Applies a batch's to-device events, device-list changes, key counts, room settings and members; durable on return. */
  receiveSyncChanges(changes: CryptoSyncChanges): Promise<void>;
  /** Decrypts a batch's encrypted events in order; undecryptable ones are kept for a late key. */
  decrypt(req: DecryptRequest): Promise<DecryptResult>;
  /** Encrypts content for a room if the room is encrypted (sharing the room key with members' devices first). */
  encrypt(roomId: string, type: string, content: Record<string, unknown>): Promise<EncryptResult>;
  /** Whether the room is encrypted (from the store, else the room's state on the server). */
  isRoomEncrypted(roomId: string): Promise<boolean>;
  /** Changes which decrypted types are delivered. */
  setWantedTypes(types: string[] | null): Promise<void>;
  status(): Promise<CryptoStatus>;
  /** This actor's memory, crypto-wasm's included; `collect` runs a full garbage collection first (for tests). */
  memory(collect?: boolean): Promise<ActorMemory>;
  /**
   * At login (the password is at hand): cross-signs the device, creating the account's identity, secret storage
   * and key backup if it has none, or importing them with the recovery key; see {@link IdentitySetupResult}.
   */
  setupIdentity(req: IdentitySetup): Promise<IdentitySetupResult>;
  close(): Promise<void>;
  /** Accepts an incoming verification request (main's `verification.from` allows its sender), or cancels it (`m.user`). */
  answerVerification(userId: string, flowId: string, accept: boolean): Promise<void>;
  /** Confirms that the SAS matches (the other side must confirm too for the verification to end). */
  confirmVerification(userId: string, flowId: string): Promise<void>;
  /** Cancels a verification (`m.user`). */
  cancelVerification(userId: string, flowId: string): Promise<void>;
  /**
   * Requests a verification of one device of `userId`, or of each of its known devices when `deviceId` is null
   * (the first to accept goes on; the others are cancelled). Resolves with the flow IDs.
   */
  requestVerification(userId: string, deviceId: string | null): Promise<string[]>;
}

/** One verification flow, as the crypto actor tells main about it. */
export interface VerificationWire {
  /** The to-device transaction ID, or the request event's ID for an in-room verification. */
  flowId: string;
  userId: string;
  /** The other device, once known (an in-room request names it when the other side answers). */
  deviceId: string | null;
  /** The room of an in-room verification, else null. */
  roomId: string | null;
  /** Whether the bot sent the request. */
  weStarted: boolean;
}

/** Messages from the crypto actor to main on its event port. */
export type CryptoToMain =
  /** Events whose room key arrived after their batch was delivered; `ids` are their event IDs. */
  | { kind: 'late'; batch: WireBatch; ids: string[] }
  /** A problem that does not stop the bot (a to-device event that could not be decrypted, a failed key upload). */
  | { kind: 'error'; error: WireError }
  /** The crypto store can no longer be trusted (journal write failed, keys rejected): the client stops. */
  | { kind: 'fatal'; error: WireError }
  /** Something the bot's owner should know that is not an error (main logs it as a warning). */
  | { kind: 'warning'; message: string }
  /** An incoming verification request: main answers with {@link CryptoActorApi.answerVerification}. */
  | { kind: 'verificationAsked'; verification: VerificationWire }
  /** The SAS of a verification can be shown and confirmed. */
  | { kind: 'verificationSas'; verification: VerificationWire; emoji: Array<{ symbol: string; description: string }>; decimals: number[] }
  /** A verification ended: done (both sides confirmed), or cancelled (`cancelCode`, by us or by the other side). */
  | { kind: 'verificationEnded'; verification: VerificationWire; done: boolean; cancelCode: string | null; reason: string | null; byUs: boolean };

/** Messages from main to the crypto actor on its event port. */
export type MainToCrypto =
  /** Late-decrypted events whose handlers settled: the actor forgets them. */
  { kind: 'lateHandled'; ids: string[] };

// ---- media ----

/** A task of the media pool (run by workers/media.ts). Bytes are transferred, so the sender must not reuse them. */
export type MediaTask =
  | { op: 'encrypt'; data: Uint8Array }
  | { op: 'encryptFile'; src: string; dst: string }
  | { op: 'decrypt'; data: Uint8Array; info: Record<string, unknown> }
  | { op: 'probe'; kind: 'image' | 'video' | 'audio'; path?: string; data?: Uint8Array };

/** What probing a file found; what could not be read is absent. */
export interface MediaProbe {
  /** Displayed width and height in px (images; video when its container says). */
  w?: number;
  h?: number;
  /** Duration in ms (audio and video). */
  duration?: number;
  /** Blurhash, 4x3 components (PNG and JPEG). */
  blurhash?: string;
  /** JPEG thumbnail, only for PNG/JPEG images larger than 800 px on their longest side. */
  thumbnail?: { data: Uint8Array; w: number; h: number };
}
