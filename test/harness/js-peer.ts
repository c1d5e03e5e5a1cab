/**
 * An independent Matrix peer built on matrix-js-sdk with its Rust crypto (in-memory store), for end-to-end
 * encryption interop tests against the test Synapse. Every wait is driven by js-sdk events (sync, timeline,
 * decryption, membership, device-list updates) and bounded by a timeout; there are no fixed sleeps.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import {
  ClientEvent,
  createClient,
  EventStatus,
  type MatrixError,
  MatrixEventEvent,
  Preset,
  RoomEvent,
  RoomStateEvent,
  SyncState,
  type MatrixClient,
  type MatrixEvent,
} from 'matrix-js-sdk';
import {
  AllDevicesIsolationMode,
  type CryptoApi,
  CryptoEvent,
  OnlySignedDevicesIsolationMode,
  type VerificationRequest,
  VerificationPhase,
  VerificationRequestEvent,
  VerifierEvent,
} from 'matrix-js-sdk/lib/crypto-api/index.js';
import { logger as sdkGlobalLogger, type Logger } from 'matrix-js-sdk/lib/logger.js';
import type { TestContext } from 'node:test';
import { type Homeserver, withTimeout } from './synapse.ts';
import { defer, waitUntil } from '../integration/util.ts';

/** The homeserver type of the harness (see synapse.ts). */
export type TestHomeserver = Homeserver;

/** A room message as this peer sees it. */
export interface PeerMessage {
  /** The (decrypted) body; '' when the event could not be decrypted (or is still being decrypted). */
  body: string;
  eventId: string;
  sender: string;
  /** Whether the event was encrypted on the wire (m.room.encrypted). */
  encrypted: boolean;
  roomId: string;
  /** The decrypted content, or the wire (ciphertext) content when it could not be decrypted. */
  content: Record<string, unknown>;
  /** Set when `encrypted` and there is no plaintext: the js-sdk DecryptionFailureCode, or 'PENDING' while decrypting. */
  decryptionFailure?: string;
}

export interface JsPeer {
  readonly userId: string;
  readonly deviceId: string;
  /** The js-sdk client, for what the harness does not wrap (prefer the methods below: see unrefPeerTimers). */
  readonly client: MatrixClient;
  /** Creates a room with m.room.encryption (megolm) in its initial state, inviting these users; resolves with the room ID (once this peer's sync shows it joined). */
  createEncryptedRoom(opts: { invite: string[]; name?: string }): Promise<string>;
  /** Joins the room; resolves once this peer's sync shows it joined. */
  joinRoom(roomId: string): Promise<void>;
  /** Resolves once `userId` has membership `membership` (default `join`) in the room (as seen by this peer's sync). */
  waitForMember(roomId: string, userId: string, membership?: 'join' | 'invite', timeoutMs?: number): Promise<void>;
  /**
   * Resolves once this peer's crypto knows device `deviceId` of `userId` (so that messages it sends from now on are
   * encrypted to it). Needed before sending to a device that appeared after this peer first encrypted to its user.
   */
  waitForDevice(userId: string, deviceId: string, timeoutMs?: number): Promise<void>;
  /** Sends an m.text message (encrypted if the room is), resolving with the event ID. */
  sendText(roomId: string, body: string): Promise<string>;
  /** Sends any m.room.message content (encrypted in encrypted rooms); resolves with the event ID. */
  sendContent(roomId: string, content: Record<string, unknown>): Promise<string>;
  /**
   * Resolves with the first message in the room (past, already received, or future) that matches, decrypted.
   * Only settled messages are offered to `match`: decrypted ones, and ones whose decryption failed (`encrypted`,
   * body '', `decryptionFailure` set); a failed one that later decrypts (late key) is offered again.
   */
  waitForMessage(roomId: string, match: (m: PeerMessage) => boolean, timeoutMs?: number): Promise<PeerMessage>;
  /** All messages seen so far in the room (decrypted where possible), in timeline order. */
  messages(roomId: string): PeerMessage[];
  /** Whether this peer's device is cross-signed by its owner (the default; `crossSign: false` leaves it unsigned). */
  readonly crossSigned: boolean;
  /** Requests a (to-device) verification of `userId`'s device `deviceId` (a user this peer tracks: one it shares an encrypted room with). */
  requestVerification(userId: string, deviceId: string, timeoutMs?: number): Promise<VerificationRequest>;
  /** Requests an in-room verification of `userId` in `roomId` (an `m.key.verification.request` message there). */
  requestVerificationInRoom(userId: string, roomId: string): Promise<VerificationRequest>;
  /** Resolves with the next verification request received from `userId` (one received already counts). */
  nextVerificationRequest(userId: string, timeoutMs?: number): Promise<VerificationRequest>;
  /**
   * Runs SAS on a request: accepts it if it came from the other side and is not accepted yet, starts SAS when `start`
   * (else waits for the other side to), then confirms the SAS (or, with `match: false`, says it does not match).
   * Resolves with the SAS emoji names once the verification is done; rejects if it was cancelled.
   */
  runSas(request: VerificationRequest, opts: { start: boolean; match?: boolean; timeoutMs?: number }): Promise<{ emoji: string[] }>;
  /** Resolves once the request is in `phase` (e.g. Cancelled), with the request. */
  waitForPhase(request: VerificationRequest, phase: VerificationPhase, timeoutMs?: number): Promise<VerificationRequest>;
  /** Whether this peer's crypto considers `userId`'s device `deviceId` verified (`getDeviceVerificationStatus().isVerified()`). */
  deviceVerified(userId: string, deviceId: string): Promise<boolean>;
  stop(): Promise<void>;
  /**
   * Turns on MSC4153's "exclude insecure devices" (js-sdk's OnlySignedDevicesIsolationMode, Element's setting): room
   * keys go only to devices cross-signed by their owner, and messages from other devices are not decrypted.
   */
  excludeInsecureDevices(): void;
  /**
   * Sets this peer's account up as Element does: cross-signing (the key upload answers user-interactive auth with
   * the password), then secret storage under a new recovery key holding the cross-signing keys and a new key
   * backup's key. Resolves with the recovery key as printed, and its bytes.
   */
  bootstrapIdentity(): Promise<{ recoveryKey: string; key: Uint8Array }>;
  /** Runs `fn` on the js-sdk client inside the peer's context, so that the timers of its requests do not keep the process alive. */
  call<T>(fn: (client: MatrixClient) => T | Promise<T>): Promise<T>;
  /** Gives js-sdk a secret storage key (32 bytes) to read secret storage with (e.g. a bot's recovery key, decoded). */
  useSecretStorageKey(key: Uint8Array): void;
  /** The shield js-sdk shows for a received event (getEncryptionInfoForEvent), or null for a plain or unknown one. */
  shield(roomId: string, eventId: string): Promise<{ colour: number; reason: number | null } | null>;
  /**
   * Whether js-sdk sees device `deviceId` of `userId` as cross-signed by its owner. Only tracked users' keys are
   * kept (users sharing an encrypted room with the peer, and its own): for others this is false.
   */
  isSignedByOwner(userId: string, deviceId: string): Promise<boolean>;
  /**
   * Cross-signs this device with its account's existing identity, read from secret storage with `key` (e.g. a bot's
   * recovery key, decoded): js-sdk's bootstrapCrossSigning imports the private keys and signs the device. Resolves
   * once the device's own record shows the signature. For a peer started with `crossSign: false`.
   */
  crossSignFromSecretStorage(key: Uint8Array): Promise<void>;
  /**
   * Asks this peer's own other devices for the room keys of the room's undecryptable messages (`m.room_key_request`):
   * js-sdk turns requests off (element-web#26524), so they are turned on in its OlmMachine (a private field of
   * RustCrypto) and the messages decrypted again, which makes the requests; then they are sent.
   */
  requestMissingRoomKeys(roomId: string): Promise<void>;
  /**
   * Replaces this peer's cross-signing identity with a new one (new master key: js-sdk's bootstrapCrossSigning with
   * `setupNewCrossSigning`, the upload authorised with the password) and signs this device with it; resolves once
   * the device's own record shows the new signature.
   */
  resetIdentity(): Promise<void>;
  /** Starts a new outbound room key session for the room's next message (js-sdk's forceDiscardSession). */
  discardRoomKey(roomId: string): Promise<void>;
}

const DEFAULT_TIMEOUT_MS = 20_000;
const MEGOLM = 'm.megolm.v1.aes-sha2';
const LEVELS = { silent: 0, error: 1, warn: 2, info: 3, debug: 4 } as const;
type Level = keyof typeof LEVELS;

/** js-sdk log level: JS_PEER_LOG=silent|error|warn|info|debug (default error: warn is chatty with expected events). */
function logLevel(): Level {
  const v = process.env.JS_PEER_LOG?.toLowerCase();
  return v && v in LEVELS ? (v as Level) : 'error';
}

const rank = (method: string): number => (method === 'error' ? 1 : method === 'warn' ? 2 : method === 'info' ? 3 : 4);

/** A Logger for one client writing `level` and above to stderr, prefixed with `prefix`. */
function peerLogger(prefix: string, level: Level): Logger {
  const max = LEVELS[level];
  const at = (method: string) => (...msg: unknown[]) => {
    if (rank(method) > max) return;
    const text = msg.map((m) => (m instanceof Error ? m.stack ?? m.message : typeof m === 'string' ? m : safeJson(m))).join(' ');
    process.stderr.write(`[js-peer ${prefix}] ${method}: ${text}\n`);
  };
  return { trace: at('trace'), debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error'), getChild: (ns: string) => peerLogger(`${prefix}${ns}`, level) };
}

function safeJson(v: unknown): string {
  try { return JSON.stringify(v) ?? String(v); } catch { return String(v); }
}

type LoglevelLogger = { methodFactory: (method: string, level: number, name: unknown) => (...args: unknown[]) => void; rebuild(): void };
let globalLoggerQuieted = false;
/**
 * Some js-sdk modules log through its global loglevel-based logger, and its children (created later, e.g. per
 * MatrixRTC session) start at DEBUG; children copy the parent's methodFactory, so filter there.
 */
function quietGlobalLogger(): void {
  if (globalLoggerQuieted) return;
  globalLoggerQuieted = true;
  const root = sdkGlobalLogger as unknown as LoglevelLogger;
  const max = LEVELS[logLevel()];
  const factory = root.methodFactory;
  root.methodFactory = (method, level, name) => (rank(method) <= max ? factory(method, level, name) : () => {});
  root.rebuild();
  sdkGlobalLogger.getChild('RoomStickyEvents'); // a child made at module load: re-applies the filtered factory
}

/**
 * js-sdk arms timers that it never clears: every request with a local timeout (sync: poll timeout + 80 s, crypto
 * requests: 60 s) gets a setTimeout from its AbortSignal.timeout ponyfill. They would keep the test process alive
 * for up to two minutes after stop(). So setTimeout is wrapped (once per process) to unref timers created inside
 * a js-peer's async context: js-sdk work started by this harness (the sync loop, crypto, the JsPeer methods).
 * Timers elsewhere are untouched, except ones armed synchronously by listeners that js-sdk calls from that work.
 * Calls made directly on `client` run outside it: ones that encrypt or sync may delay the process exit by up to 60 s.
 */
const peerContext = new AsyncLocalStorage<true>();
let timersWrapped = false;
function unrefPeerTimers(): void {
  if (timersWrapped) return;
  timersWrapped = true;
  const original = globalThis.setTimeout;
  const wrapped = function (this: unknown, ...args: unknown[]) {
    const timer = Reflect.apply(original, this, args) as ReturnType<typeof setTimeout>;
    if (peerContext.getStore()) timer.unref?.();
    return timer;
  };
  Object.defineProperties(wrapped, Object.getOwnPropertyDescriptors(original)); // keeps util.promisify.custom
  globalThis.setTimeout = wrapped as unknown as typeof setTimeout;
}
/** Runs `fn` (and all async work it starts) in the js-peer context. */
const inPeerContext = <T>(fn: () => T): T => peerContext.run(true, fn);

async function passwordLogin(baseUrl: string, user: string, password: string): Promise<{ userId: string; accessToken: string; deviceId: string }> {
  const res = await fetch(`${baseUrl}/_matrix/client/v3/login`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ type: 'm.login.password', identifier: { type: 'm.id.user', user }, password, initial_device_display_name: 'js-peer' }),
    signal: AbortSignal.timeout(30_000),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`js-peer: login as ${user} -> ${res.status}: ${text}`);
  const data = JSON.parse(text) as { user_id: string; access_token: string; device_id: string };
  return { userId: data.user_id, accessToken: data.access_token, deviceId: data.device_id };
}

/**
 * The cross-signing private keys of the users whose identity a js-peer of this process created, so that a later
 * device of the same user (`login`) is signed by the same identity instead of replacing it.
 */
const identities = new Map<string, Awaited<ReturnType<NonNullable<CryptoApi['exportSecretsBundle']>>>>();

/**
 * Registers a new user (or logs in again as an existing one, making a new device, when `login` is given) and starts
 * syncing with rust crypto. Unless `crossSign: false`, the device is then cross-signed by its owner (a new
 * cross-signing identity, uploaded with the password for user-interactive auth; or, for another device of a user
 * a peer of this process set up, that identity), as spec v1.18 clients expect (MSC4153).
 */
export async function startJsPeer(
  hs: TestHomeserver,
  opts: { localpart?: string; login?: { user: string; password: string }; crossSign?: boolean } = {},
): Promise<JsPeer & { password: string }> {
  let creds: { userId: string; accessToken: string; deviceId: string; password: string };
  if (opts.login) {
    creds = { ...(await passwordLogin(hs.baseUrl, opts.login.user, opts.login.password)), password: opts.login.password };
  } else {
    const u = await hs.registerUser(opts.localpart);
    creds = { userId: u.userId, accessToken: u.accessToken, deviceId: u.deviceId, password: u.password };
  }
  quietGlobalLogger();
  unrefPeerTimers();
  // Secret storage reads and writes ask this callback for the key: the one bootstrapIdentity made, or useSecretStorageKey's.
  const storageKey: { key: Uint8Array | null } = { key: null };
  const client = createClient({
    baseUrl: hs.baseUrl,
    userId: creds.userId,
    deviceId: creds.deviceId,
    accessToken: creds.accessToken,
    logger: peerLogger(`${creds.userId}/${creds.deviceId}`, logLevel()),
    cryptoCallbacks: {
      getSecretStorageKey: async ({ keys }) => {
        const id = Object.keys(keys)[0];
        return storageKey.key && id !== undefined ? [id, storageKey.key as Uint8Array<ArrayBuffer>] : null;
      },
    },
  });
  const peer = new JsPeerImpl(client, creds.userId, creds.deviceId, creds.password, storageKey);
  try {
    await peer.start();
    if (opts.crossSign !== false) await peer.crossSign();
  } catch (err) {
    await peer.stop();
    throw err;
  }
  return peer;
}

class JsPeerImpl implements JsPeer {
  /** Timeline events per room, in the order this peer's timeline received them (local echoes included). */
  private readonly timeline = new Map<string, MatrixEvent[]>();
  private readonly seen = new WeakSet<MatrixEvent>();
  /** Re-check callbacks of the pending waits, run on every relevant js-sdk event. */
  private readonly waiters = new Set<() => void>();
  private readonly detach: Array<() => void> = [];
  private readonly requests: VerificationRequest[] = [];
  private stopped = false;
  crossSigned = false;

  constructor(
    readonly client: MatrixClient,
    readonly userId: string,
    readonly deviceId: string,
    readonly password: string,
    private readonly storageKey: { key: Uint8Array | null } = { key: null },
  ) {}

  start(): Promise<void> {
    return inPeerContext(() => this.doStart());
  }

  private async doStart(): Promise<void> {
    const { client } = this;
    await client.initRustCrypto({ useIndexedDB: false });
    const crypto = client.getCrypto();
    if (!crypto) throw new Error('js-peer: initRustCrypto did not set up a CryptoApi');
    // Bots are unverified devices: encrypt to them and decrypt from them (these are the js-sdk defaults too).
    crypto.globalBlacklistUnverifiedDevices = false;
    crypto.setDeviceIsolationMode(new AllDevicesIsolationMode(false));
    // RustCrypto.onLiveEventFromSync arms a 5-minute timer for every encrypted live event (to process in-room
    // verification events once decrypted) that is only cleared by a later decryption, so a stopped client keeps
    // Node alive for 5 minutes. The harness does no in-room verification: skip encrypted events there.
    const rc = crypto as unknown as { onLiveEventFromSync?: (ev: MatrixEvent) => Promise<void> };
    const onLive = rc.onLiveEventFromSync?.bind(crypto);
    if (!onLive) throw new Error('js-peer: RustCrypto.onLiveEventFromSync is gone (js-sdk internals changed)');
    rc.onLiveEventFromSync = async (ev) => { if (!ev.isEncrypted() && !ev.isDecryptionFailure()) await onLive(ev); };

    const notify = () => { for (const w of [...this.waiters]) w(); };
    const listen = (event: string, fn: (...args: any[]) => void) => {
      (client as any).on(event, fn);
      this.detach.push(() => (client as any).off(event, fn));
    };
    listen(RoomEvent.Timeline, (ev: MatrixEvent, room: { roomId: string } | undefined, toStartOfTimeline: boolean | undefined) => {
      const roomId = room?.roomId ?? ev.getRoomId();
      if (!roomId || toStartOfTimeline || this.seen.has(ev)) return;
      this.seen.add(ev);
      let list = this.timeline.get(roomId);
      if (!list) this.timeline.set(roomId, (list = []));
      list.push(ev);
      notify();
    });
    for (const e of [MatrixEventEvent.Decrypted, RoomEvent.LocalEchoUpdated, RoomStateEvent.Members, RoomEvent.MyMembership,
      ClientEvent.Room, ClientEvent.Sync, CryptoEvent.DevicesUpdated]) listen(e, notify);
    listen(CryptoEvent.VerificationRequestReceived, (req: VerificationRequest) => {
      this.requests.push(req);
      this.watchRequest(req);
      notify();
    });

    let syncState: string | null = null;
    const prepared = this.until(() => syncState === SyncState.Prepared || syncState === SyncState.Syncing, DEFAULT_TIMEOUT_MS * 3,
      () => `the first sync of ${this.userId}/${this.deviceId} (sync state: ${syncState})`);
    listen(ClientEvent.Sync, (state: string) => { syncState = state; notify(); });
    await client.startClient({ initialSyncLimit: 50 });
    await prepared;
    await this.flushCryptoRequests();
    // Other peers claim our keys as soon as we return: make sure the homeserver has them.
    const keys = await client.downloadKeysForUsers([this.userId]);
    if (!keys.device_keys?.[this.userId]?.[this.deviceId]) {
      throw new Error(`js-peer: device keys of ${this.userId}/${this.deviceId} are not on the homeserver after the initial key upload`);
    }
  }

  /**
   * Cross-signs this device: with the identity an earlier peer of the same user made (imported), or a new one
   * (bootstrapCrossSigning, its upload authorised with the password: the first attempt gets the UIA session).
   */
  crossSign(): Promise<void> {
    return inPeerContext(async () => {
      const crypto = this.client.getCrypto()!;
      const known = identities.get(this.userId);
      if (known) {
        // With the private keys imported, bootstrapCrossSigning does nothing (the keys exist): sign the device here.
        await crypto.importSecretsBundle!(known);
        await crypto.crossSignDevice(this.deviceId);
      } else await crypto.bootstrapCrossSigning({
        authUploadDeviceSigningKeys: async (makeRequest) => {
          let session: string | undefined;
          try {
            await makeRequest(null);
            return;
          } catch (err) {
            session = (err as { data?: { session?: string } }).data?.session;
            if (!session) throw err;
          }
          await makeRequest({ type: 'm.login.password', identifier: { type: 'm.id.user', user: this.userId }, password: this.password, session } as never);
        },
      });
      if (!known) identities.set(this.userId, await crypto.exportSecretsBundle!());
      await this.flushCryptoRequests();
      // The device's own record learns of the signature by a key query of our user (the server says it changed).
      await this.until(async () => (await crypto.getDeviceVerificationStatus(this.userId, this.deviceId))?.signedByOwner, DEFAULT_TIMEOUT_MS,
        () => `${this.userId}/${this.deviceId} to be cross-signed by its owner`);
      this.crossSigned = true;
    });
  }

  /** Re-checks the waits on every change of a verification request and of its verifier. */
  private watchRequest(req: VerificationRequest): void {
    const notify = () => { for (const w of [...this.waiters]) w(); };
    req.on(VerificationRequestEvent.Change, () => {
      notify();
      req.verifier?.on(VerifierEvent.ShowSas, notify);
    });
  }

  requestVerification(userId: string, deviceId: string, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<VerificationRequest> {
    // The engine knows the devices of users it tracks (members of encrypted rooms) once their keys are queried.
    return this.until(() => inPeerContext(async () => {
      try {
        const req = await this.client.getCrypto()!.requestDeviceVerification(userId, deviceId);
        this.watchRequest(req);
        return req;
      } catch (err) {
        if (/not a known device/i.test(String((err as Error).message))) return undefined;
        throw err;
      }
    }), timeoutMs, () => `device ${userId}/${deviceId} to be known to this peer's crypto (to request its verification)`);
  }

  requestVerificationInRoom(userId: string, roomId: string): Promise<VerificationRequest> {
    return inPeerContext(async () => {
      const req = await this.client.getCrypto()!.requestVerificationDM(userId, roomId);
      this.watchRequest(req);
      return req;
    });
  }

  nextVerificationRequest(userId: string, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<VerificationRequest> {
    return this.until(() => {
      const i = this.requests.findIndex((r) => r.otherUserId === userId);
      return i < 0 ? undefined : this.requests.splice(i, 1)[0];
    }, timeoutMs, () => `a verification request from ${userId}`);
  }

  waitForPhase(request: VerificationRequest, phase: VerificationPhase, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<VerificationRequest> {
    return this.until(() => request.phase === phase && request, timeoutMs, () => `verification ${request.transactionId} to reach phase ${VerificationPhase[phase]} (now ${VerificationPhase[request.phase]})`);
  }

  runSas(request: VerificationRequest, opts: { start: boolean; match?: boolean; timeoutMs?: number }): Promise<{ emoji: string[] }> {
    const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS * 3;
    let stage = 'its acceptance';
    let sasShown = false;
    const run = inPeerContext(async () => {
      if (!request.initiatedByMe && request.phase === VerificationPhase.Requested) await request.accept();
      let verifier = request.verifier;
      stage = opts.start ? 'the other side to be ready' : 'the other side to start SAS';
      if (opts.start) {
        await this.waitForPhase(request, VerificationPhase.Ready, timeoutMs);
        verifier = await request.startVerification('m.sas.v1');
      } else {
        verifier = await this.until(() => request.verifier, timeoutMs, () => `the other side to start SAS on ${request.transactionId} (phase ${VerificationPhase[request.phase]})`);
      }
      let emoji: string[] = [];
      const shown = new Promise<void>((resolve) => verifier.on(VerifierEvent.ShowSas, (sas) => {
        sasShown = true;
        emoji = (sas.sas.emoji ?? []).map(([, name]) => name);
        if (opts.match === false) sas.mismatch();
        else void sas.confirm();
        resolve();
      }));
      stage = 'the SAS exchange to finish';
      await Promise.all([verifier.verify(), shown]);
      return { emoji };
    });
    // Bounded as a whole (js-sdk's accept() and verify() are not): a side that stops answering fails the test with
    // where it stopped, not at the test's timeout.
    return withTimeout(run, timeoutMs, () => `js-peer ${this.userId}/${this.deviceId} waiting for ${stage} on ${request.transactionId} (phase ${VerificationPhase[request.phase]}, SAS ${sasShown ? 'shown and confirmed here' : 'not shown here'})`);
  }

  async deviceVerified(userId: string, deviceId: string): Promise<boolean> {
    const status = await inPeerContext(() => this.client.getCrypto()!.getDeviceVerificationStatus(userId, deviceId));
    return status?.isVerified() ?? false;
  }

  /**
   * Runs the crypto's outgoing requests (key upload, key queries, to-device) now and waits for them. js-sdk has no
   * public API for this; its OutgoingRequestsManager is a private field of RustCrypto.
   */
  private async flushCryptoRequests(): Promise<void> {
    const manager = (this.client.getCrypto() as unknown as { outgoingRequestsManager?: { doProcessOutgoingRequests(): Promise<void> } })
      .outgoingRequestsManager;
    if (typeof manager?.doProcessOutgoingRequests !== 'function') {
      throw new Error('js-peer: RustCrypto.outgoingRequestsManager.doProcessOutgoingRequests is gone (js-sdk internals changed)');
    }
    // Twice: one pass may queue follow-up requests (e.g. a key query after the upload).
    await manager.doProcessOutgoingRequests();
    await manager.doProcessOutgoingRequests();
  }

  /**
   * Resolves with the first truthy value of `check` (sync or async), evaluated now and after every relevant js-sdk
   * event (runs of an async check never overlap; events during a run cause one more run); rejects after `timeoutMs`
   * with "timed out after <ms> ms waiting for <describe()>".
   */
  private until<T>(check: () => T | undefined | null | false | Promise<T | undefined | null | false>, timeoutMs: number, describe: () => string): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const me = `${this.userId}/${this.deviceId}`;
      if (this.stopped) { reject(new Error(`js-peer ${me} is stopped`)); return; }
      let timer: NodeJS.Timeout | undefined;
      let settled = false;
      let running = false;
      let again = false;
      const finish = (err: Error | undefined, value?: T) => {
        if (settled) return;
        settled = true;
        this.waiters.delete(waiter);
        clearTimeout(timer);
        if (err) reject(err); else resolve(value as T);
      };
      const waiter = () => {
        if (settled) return;
        if (this.stopped) { finish(new Error(`js-peer ${me} stopped while waiting for ${describe()}`)); return; }
        if (running) { again = true; return; }
        running = true;
        again = false;
        Promise.resolve().then(check).then(
          (v) => { running = false; if (v) finish(undefined, v); else if (again) waiter(); },
          (e) => { running = false; finish(e instanceof Error ? e : new Error(String(e))); },
        );
      };
      this.waiters.add(waiter);
      // Outside the js-peer context: this timer must keep the process alive while someone waits.
      timer = peerContext.exit(() => setTimeout(() => finish(new Error(`js-peer ${me}: timed out after ${timeoutMs} ms waiting for ${describe()}`)), timeoutMs));
      waiter();
    });
  }

  private membership(roomId: string, userId: string): string | undefined {
    return this.client.getRoom(roomId)?.getMember(userId)?.membership;
  }

  waitForMember(roomId: string, userId: string, membership: 'join' | 'invite' = 'join', timeoutMs = DEFAULT_TIMEOUT_MS): Promise<void> {
    return this.until(() => this.membership(roomId, userId) === membership, timeoutMs,
      () => `${userId} to have membership ${membership} in ${roomId} (currently: ${this.client.getRoom(roomId) ? this.membership(roomId, userId) ?? 'none' : 'room not known to this peer'})`)
      .then(() => {});
  }

  waitForDevice(userId: string, deviceId: string, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<void> {
    const crypto = this.client.getCrypto()!;
    let known: string[] = [];
    return this.until(async () => {
      const devices = (await inPeerContext(() => crypto.getUserDeviceInfo([userId], true))).get(userId);
      known = [...(devices?.keys() ?? [])];
      return devices?.has(deviceId) ?? false;
    }, timeoutMs, () => `device ${userId}/${deviceId} to be known to this peer's crypto (known devices of ${userId}: ${known.join(', ') || 'none'})`)
      .then(() => {});
  }

  async createEncryptedRoom(opts: { invite: string[]; name?: string }): Promise<string> {
    const { room_id: roomId } = await inPeerContext(() => this.client.createRoom({
      preset: Preset.PrivateChat,
      invite: opts.invite,
      ...(opts.name === undefined ? {} : { name: opts.name }),
      initial_state: [{ type: 'm.room.encryption', state_key: '', content: { algorithm: MEGOLM } }],
    }));
    await this.waitForMember(roomId, this.userId, 'join');
    // The rust crypto takes the room's m.room.encryption from the same sync, but a moment after the membership
    // (it ran late once in a full run): a send before that would go out in the clear.
    const crypto = this.client.getCrypto()!;
    // Polled: no timeline event need follow to wake a wait.
    await waitUntil(() => inPeerContext(() => crypto.isEncryptionEnabledInRoom(roomId)), DEFAULT_TIMEOUT_MS, `${roomId} to be known as encrypted to this peer's crypto`);
    return roomId;
  }

  async joinRoom(roomId: string): Promise<void> {
    await inPeerContext(() => this.client.joinRoom(roomId));
    await this.waitForMember(roomId, this.userId, 'join');
  }

  sendText(roomId: string, body: string): Promise<string> {
    return this.sendContent(roomId, { msgtype: 'm.text', body });
  }

  /** Sends any m.room.message content (encrypted in encrypted rooms); resolves with the event ID. */
  async sendContent(roomId: string, content: Record<string, unknown>): Promise<string> {
    // Send only once our sync has the room (and its encryption state): js-sdk would send plaintext to a room it does not know.
    await this.waitForMember(roomId, this.userId, 'join');
    const stateSaysEncrypted = !!this.client.getRoom(roomId)?.currentState.getStateEvents('m.room.encryption', '');
    if (stateSaysEncrypted && !(await inPeerContext(() => this.client.getCrypto()!.isEncryptionEnabledInRoom(roomId)))) {
      throw new Error(`js-peer ${this.userId}: ${roomId} has m.room.encryption but the crypto does not know it yet; refusing to send plaintext`);
    }
    const { event_id } = await inPeerContext(() => this.client.sendMessage(roomId, content as any));
    return event_id;
  }

  messages(roomId: string): PeerMessage[] {
    return this.collect(roomId, false);
  }

  /** The room's messages in timeline order; with `settledOnly`, without those still being decrypted. */
  private collect(roomId: string, settledOnly: boolean): PeerMessage[] {
    const out: PeerMessage[] = [];
    const ids = new Set<string>();
    for (const ev of this.timeline.get(roomId) ?? []) {
      const m = toMessage(ev, roomId);
      if (!m || ids.has(m.eventId)) continue;
      if (settledOnly && m.decryptionFailure === 'PENDING') continue;
      ids.add(m.eventId);
      out.push(m);
    }
    return out;
  }

  waitForMessage(roomId: string, match: (m: PeerMessage) => boolean, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<PeerMessage> {
    return this.until(() => this.collect(roomId, true).find(match), timeoutMs, () => {
      const seen = this.messages(roomId);
      const list = seen.map((m) => `${m.eventId} from ${m.sender}: ${m.encrypted ? 'encrypted' : 'plain'} ${m.decryptionFailure ? `undecrypted (${m.decryptionFailure})` : JSON.stringify(m.body)}`);
      return `a matching message in ${roomId}; saw ${seen.length} message(s)${list.length ? `:\n  ${list.join('\n  ')}` : ''}`;
    });
  }

  excludeInsecureDevices(): void {
    this.client.getCrypto()!.setDeviceIsolationMode(new OnlySignedDevicesIsolationMode());
  }

  /** Answers the user-interactive auth of a cross-signing key upload with the password (a first upload needs none: MSC3967). */
  private readonly authUpload = async (makeRequest: (auth: never) => Promise<unknown>): Promise<void> => {
    try {
      await makeRequest(null as never);
    } catch (e) {
      const session = (e as MatrixError).data?.session;
      if ((e as MatrixError).httpStatus !== 401 || typeof session !== 'string') throw e;
      await makeRequest({ type: 'm.login.password', identifier: { type: 'm.id.user', user: this.userId }, password: this.password, session } as never);
    }
  };

  resetIdentity(): Promise<void> {
    return inPeerContext(async () => {
      const crypto = this.client.getCrypto()!;
      const before = (await crypto.getCrossSigningKeyId()) ?? null;
      await crypto.bootstrapCrossSigning({ setupNewCrossSigning: true, authUploadDeviceSigningKeys: this.authUpload });
      await this.flushCryptoRequests();
      await this.until(async () => {
        const master = await crypto.getCrossSigningKeyId();
        return master !== null && master !== before && (await crypto.getDeviceVerificationStatus(this.userId, this.deviceId))?.signedByOwner;
      }, DEFAULT_TIMEOUT_MS, () => `${this.userId}/${this.deviceId} to be signed by a new identity`);
    });
  }

  discardRoomKey(roomId: string): Promise<void> {
    return inPeerContext(() => this.client.getCrypto()!.forceDiscardSession(roomId));
  }

  bootstrapIdentity(): Promise<{ recoveryKey: string; key: Uint8Array }> {
    return inPeerContext(async () => {
      const crypto = this.client.getCrypto()!;
      await crypto.bootstrapCrossSigning({ authUploadDeviceSigningKeys: this.authUpload });
      const generated = await crypto.createRecoveryKeyFromPassphrase();
      this.storageKey.key = generated.privateKey;
      await crypto.bootstrapSecretStorage({ createSecretStorageKey: async () => generated, setupNewSecretStorage: true, setupNewKeyBackup: true });
      return { recoveryKey: generated.encodedPrivateKey!, key: generated.privateKey };
    });
  }

  call<T>(fn: (client: MatrixClient) => T | Promise<T>): Promise<T> {
    return inPeerContext(async () => fn(this.client));
  }

  useSecretStorageKey(key: Uint8Array): void {
    this.storageKey.key = key;
  }

  async shield(roomId: string, eventId: string): Promise<{ colour: number; reason: number | null } | null> {
    const ev = (this.timeline.get(roomId) ?? []).find((e) => e.getId() === eventId);
    if (!ev) return null;
    const info = await inPeerContext(() => this.client.getCrypto()!.getEncryptionInfoForEvent(ev));
    return info ? { colour: info.shieldColour, reason: info.shieldReason } : null;
  }

  async isSignedByOwner(userId: string, deviceId: string): Promise<boolean> {
    const crypto = this.client.getCrypto()!;
    return (await inPeerContext(() => crypto.getDeviceVerificationStatus(userId, deviceId)))?.signedByOwner ?? false;
  }

  crossSignFromSecretStorage(key: Uint8Array): Promise<void> {
    this.storageKey.key = key;
    return inPeerContext(async () => {
      const crypto = this.client.getCrypto()!;
      await crypto.bootstrapCrossSigning({});
      await this.flushCryptoRequests();
      await this.until(async () => (await crypto.getDeviceVerificationStatus(this.userId, this.deviceId))?.signedByOwner, DEFAULT_TIMEOUT_MS,
        () => `${this.userId}/${this.deviceId} to be cross-signed from secret storage`);
      this.crossSigned = true;
    });
  }

  requestMissingRoomKeys(roomId: string): Promise<void> {
    return inPeerContext(async () => {
      const crypto = this.client.getCrypto() as unknown as { olmMachine?: { roomKeyRequestsEnabled: boolean } };
      if (!crypto.olmMachine || typeof crypto.olmMachine.roomKeyRequestsEnabled !== 'boolean') {
        throw new Error('js-peer: RustCrypto.olmMachine.roomKeyRequestsEnabled is gone (js-sdk internals changed)');
      }
      crypto.olmMachine.roomKeyRequestsEnabled = true;
      for (const ev of this.timeline.get(roomId) ?? []) {
        if (ev.isDecryptionFailure()) await ev.attemptDecryption(crypto as never, { isRetry: true });
      }
      await this.flushCryptoRequests();
    });
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    for (const w of [...this.waiters]) w(); // rejects them with "stopped"
    for (const off of this.detach.splice(0)) off();
    inPeerContext(() => this.client.stopClient());
  }
}

/** Converts a timeline event to a PeerMessage; undefined for events that are not (or not yet sent) messages. */
function toMessage(ev: MatrixEvent, roomId: string): PeerMessage | undefined {
  const eventId = ev.getId();
  if (!eventId || eventId.startsWith('~')) return undefined; // local echo not sent yet
  if (ev.status !== null && ev.status !== EventStatus.SENT) return undefined;
  if (ev.isState() || ev.isRedacted()) return undefined;
  const sender = ev.getSender() ?? '';
  const encrypted = ev.isEncrypted();
  if (encrypted) {
    const failure = ev.isDecryptionFailure() ? String(ev.decryptionFailureReason ?? 'UNKNOWN_ERROR')
      : ev.isBeingDecrypted() || ev.getClearContent() === null ? 'PENDING' : undefined;
    if (failure) return { body: '', eventId, sender, encrypted, roomId, content: { ...ev.getWireContent() }, decryptionFailure: failure };
  }
  if (ev.getType() !== 'm.room.message') return undefined;
  const content = { ...ev.getContent() } as Record<string, unknown>;
  return { body: typeof content.body === 'string' ? content.body : '', eventId, sender, encrypted, roomId, content };
}

/** A js-peer for one test: started now, stopped when the test ends. */
export async function newJsPeer(t: TestContext, hs: TestHomeserver, opts: Parameters<typeof startJsPeer>[1] = {}): Promise<JsPeer & { password: string }> {
  const p = await startJsPeer(hs, opts);
  defer(t, () => p.stop());
  return p;
}
