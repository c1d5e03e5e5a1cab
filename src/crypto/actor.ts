/**
 * The crypto actor: the one owner of the OlmMachine (`@matrix-org/matrix-sdk-crypto-wasm`; this is the only
 * module that imports it, and it loads it with the first `open`: a main thread that never runs a crypto actor
 * itself, as with the default worker threads, never loads it; see src/lazy-require.ts) and of `crypto.sqlite`, its
 * durable store (see idb-journal.ts).
 *
 * Every OlmMachine call runs through one serial queue with two priorities: a batch's sync changes (which the
 * sync actor waits for before its next poll) jump ahead of queued decryption, and decryption runs in small
 * slices of a few milliseconds, so a burst of encrypted events never holds polling up for more than one slice.
 *
 * Consistency of the since token and the crypto state: the sync actor hands over a batch's to-device events
 * before it polls with the batch's token (that poll lets the server delete them). The actor applies them
 * inside one journal group and commits, in the same SQLite transaction, a hash of each applied to-device
 * event. After a crash the sync actor resumes from an older token; the server resends only to-device events
 * it has not deleted, and those already applied are recognised by their hash and skipped. So none is lost
 * (applied before the token that deletes it is used) and none is applied twice.
 */
import type * as Wasm from '@matrix-org/matrix-sdk-crypto-wasm';
import { createHash } from 'node:crypto';
import { HalcyonError, toWireError } from '../errors.ts';
import { MatrixHttp } from '../http.ts';
import { type Port } from '../actors.ts';
import { free, threadMemory, watchWasmMemory } from '../memory.ts';
import {
  type ActorMemory,
  type CryptoActorApi,
  type CryptoConfig,
  type CryptoIdentity,
  type CryptoStatus,
  type CryptoSyncChanges,
  type CryptoToMain,
  type DecryptFailure,
  type DecryptRequest,
  type DecryptResult,
  type EncryptResult,
  EVENT_FLAGS,
  type IdentitySetup,
  type IdentitySetupResult,
  type MainToCrypto,
} from '../protocol.ts';
import { type Database, kvSet } from '../store.ts';
import type { ProcessOptions } from '../sync/process.ts';
import { KeyBackup } from './backup.ts';
import type { IdbJournal } from './idb-journal.ts';
import { openCryptoStore } from './open.ts';
import { setUpIdentity } from './identity.ts';
import { SerialQueue } from './queue.ts';
import { SharingRooms } from './rooms.ts';
import { type Decrypted, decryptedBatch, errMessage, refusal, safeJson, useClearRelation, WITHHELD_FOR_GOOD, withheldReason } from './decrypted.ts';
import { TrustRules } from './trust.ts';
import { OutgoingRequests } from './outgoing.ts';
import { PendingEvents } from './pending.ts';
import { RoomEncryption } from './room-encryption.ts';
import { watchRoomKeys } from './room-keys.ts';
import { Verifications } from './verification.ts';
import { lazyModule } from '../lazy-require.ts';

/**
 * Decryption yields the queue after this many ms (at least one event per turn), so a batch's sync changes, which
 * the sync actor waits for before its next poll, never wait long behind a burst of encrypted events.
 */
const DECRYPT_SLICE_MS = 4;
/** Applied to-device hashes are kept for this many batches (a crash replays at most the last unacknowledged one). */
const KEEP_HASH_BATCHES = 8;
const MEGOLM = 'm.megolm.v1.aes-sha2';

/** Owns the OlmMachine; see the module comment. */
export class CryptoActor implements CryptoActorApi {
  private config!: CryptoConfig;
  private http!: MatrixHttp;
  private journal!: IdbJournal;
  private machine!: Wasm.OlmMachine;
  private identity!: CryptoIdentity;
  private trust!: TrustRules;
  private verification!: Verifications;
  private wanted: Set<string> | null = null;
  private readonly queue = new SerialQueue();
  /** Members (joined and invited) and history visibility of the rooms we send into. */
  private rooms!: SharingRooms;
  /** Undecryptable events kept for a late key (pending.ts); set in `open`. */
  private pending!: PendingEvents;
  /** Which rooms are encrypted, and how (room-encryption.ts); set in `open`. */
  private roomEncryption!: RoomEncryption;
  private readonly roomLocks = new Map<string, Promise<unknown>>();
  /** Who sent the withheld notices of this run, by session (room-keys.ts keeps the newest). */
  private readonly withheldBy = new Map<string, string>();
  /** Sessions whose keys arrived during the current sync changes (their pending events are retried after). */
  private arrivedSessions = new Set<string>();
  private retryScheduled = false;
  /** Decrypt requests run one after another (first in, first out), so the first batch is ready first. */
  private decryptTail: Promise<unknown> = Promise.resolve();
  /** Server-side key backup (see backup.ts); null until `open`. */
  private backup: KeyBackup | null = null;
  /** The machine's outgoing requests (outgoing.ts); set in `open`. */
  private outgoing!: OutgoingRequests;
  private appliedBatches = 0;
  private duplicateToDevice = 0;
  private batchCounter = 0;
  private freshStore = false;
  /** The requests `open` sent first (a new store's device keys): awaited by open, or by release when held. */
  private firstFlush: Promise<void> = Promise.resolve();
  /** Set when `open` resolves; until then (and after `close`) every API call is refused (see {@link ensureOpen}). */
  private opened = false;
  /** The `open` in progress (true once open, false if it failed), or null before `open` is called. */
  private opening: Promise<boolean> | null = null;
  private closed = false;

  constructor(private readonly events: Port<MainToCrypto, CryptoToMain>) {}

  async open(config: CryptoConfig): Promise<CryptoIdentity> {
    const opening = this.openStore(config);
    this.opening = opening.then(() => true, () => false);
    return opening;
  }

  private async openStore(config: CryptoConfig): Promise<CryptoIdentity> {
    W = wasm();
    // The binding instantiates its wasm on first use, synchronously: made here, watched, to find its memory.
    if (wasmMemory === undefined) wasmMemory = watchWasmMemory(() => W.getVersions().free());
    this.config = config;
    this.wanted = config.wantedTypes ? new Set(config.wantedTypes) : null;
    const storeName = `halcyon-${createHash('sha256').update(config.dataDir).digest('hex').slice(0, 16)}`;
    ({ journal: this.journal, machine: this.machine, freshStore: this.freshStore } = await openCryptoStore(W, config, storeName, (err) => this.fatal(err)));
    const db = this.journal.db;
    db.exec('CREATE TABLE IF NOT EXISTS todevice_seen (hash TEXT PRIMARY KEY, batch INTEGER NOT NULL)');
    this.pending = new PendingEvents(db, { maxAgeMs: config.pendingUndecryptableMaxAgeMs, maxCount: config.maxPendingUndecryptable });
    this.batchCounter = (db.prepare('SELECT max(batch) AS b FROM todevice_seen').get() as { b: number | null }).b ?? 0;
    kvSet(db, 'owner', JSON.stringify({ userId: config.userId, deviceId: config.deviceId }));
    const keys = this.machine.identityKeys;
    const [curve, ed] = [keys.curve25519, keys.ed25519];
    this.identity = { userId: config.userId, deviceId: config.deviceId, curve25519: curve.toBase64(), ed25519: ed.toBase64() };
    free(curve, ed, keys);
    this.http = new MatrixHttp(config.homeserver, config.accessToken, { timeoutMs: config.requestTimeoutMs });
    if (config.holdRequests) this.http.hold(); // until release()
    this.rooms = new SharingRooms(db, this.http);
    this.roomEncryption = new RoomEncryption({ W, machine: this.machine, queue: this.queue, http: this.http, db });
    this.outgoing = new OutgoingRequests({
      W, machine: this.machine, queue: this.queue, http: this.http, deviceId: config.deviceId, freshStore: this.freshStore,
      backup: () => this.backup, fatal: (e) => this.fatal(e),
    });
    const backup = new KeyBackup({ W, machine: this.machine, queue: this.queue, http: this.http, report: (e) => this.report(e), closed: () => this.closed });
    this.backup = backup;
    this.openTrust();
    // Keys that arrive retry the events kept for them.
    watchRoomKeys(this.machine, (ids) => (ids.forEach((id) => this.arrivedSessions.add(id)), this.scheduleRetry()), this.withheldBy);
    this.events.onMessage((msg) => {
      if (msg.kind === 'lateHandled') this.forgetPending(msg.ids);
    });
    // A new store's device keys go up before the run goes on: the server refusing them means the store was lost
    // (HALCYON_CRYPTO_STORE fails the run). An existing store's keys are on the server already (or their upload
    // failed and is retried now): its requests (one-time keys, key queries) go out with the first sync's changes
    // (receiveSyncChanges flushes after each batch), not at open, where they ran beside the first sync's reading
    // and scanning and took the cores that needed (run()→ready with encryption, cold-start bench: see README).
    // A cluster ingest's requests are held until release() either way. A failure other than a lost store's keys
    // is reported and retried with the next sync's changes.
    if (this.freshStore || config.holdRequests) {
      const flushing = this.outgoing.flush().catch((e: unknown) => {
        if ((e as HalcyonError).code === 'HALCYON_CRYPTO_STORE') throw e;
        this.report(e);
      });
      this.firstFlush = flushing;
      if (config.holdRequests) flushing.catch(() => {}); // release() awaits it
      else await flushing;
    }
    // Events kept from an earlier run whose key came meanwhile (or whose late delivery was not handled).
    this.pending.unpostAll();
    void this.queue.run(() => this.retryPending(null)).catch((e) => this.report(e));
    backup.start(() => (this.closed ? [] : this.pending.sessions()));
    this.opened = true;
    return this.identity;
  }

  /** Sets up the `trust` option's rules and interactive verification (trust.ts, verification.ts). */
  private openTrust(): void {
    const own = { userId: this.config.userId, deviceId: this.config.deviceId };
    this.trust = new TrustRules(W, this.config.trust ?? 'all', own, (message) => this.events.post({ kind: 'warning', message }));
    this.verification = new Verifications(W, {
      machine: this.machine,
      ownDeviceId: this.config.deviceId,
      run: (fn) => this.queue.run(fn, 'high'),
      send: (req) => this.outgoing.send(req),
      flush: () => this.outgoing.flush(),
      post: (msg) => this.events.post(msg),
      verified: () => this.trust.forget(),
    });
  }

  /**
   * Refuses a call made before `open` resolved or after `close`: during an actor restart main may call before the
   * store and machine exist, and must get a coded error it can tell from a refusal by the server, not a TypeError.
   */
  private ensureOpen(): void {
    if (!this.opened || this.closed) throw new HalcyonError('HALCYON_NOT_RUNNING', 'the crypto actor is not open');
  }

  async receiveSyncChanges(ch: CryptoSyncChanges): Promise<void> {
    // The sync actor starts while this actor opens (client/actors.ts): its first batch waits for the open here,
    // and is refused if the open failed (its token is then not saved: nothing of it is lost).
    if (!this.opened && this.opening) await this.opening;
    this.ensureOpen();
    await this.queue.run(() => this.applySyncChanges(ch), 'high');
    // The bot's own devices changed (one added, or cross-signed): once they are fetched, kept events are retried.
    const own = ch.deviceListsChanged.includes(this.config.userId);
    void this.outgoing.flush().then(() => (own ? this.askOwnDevices() : undefined)).catch((e) => this.report(e));
    void this.verification.retryUnknownSenders().catch((e) => this.report(e));
  }

  /**
   * Retries the kept events of sessions whose keys arrived. The key callback may fire during or after the call
   * that stored the key, so the retry is queued from the callback, once per burst of keys.
   */
  private scheduleRetry(): void {
    if (this.retryScheduled || this.closed) return;
    this.retryScheduled = true;
    void this.queue
      .run(() => {
        this.retryScheduled = false;
        const sessions = this.arrivedSessions;
        this.arrivedSessions = new Set();
        return this.retryPending(sessions);
      })
      .catch((e) => this.report(e));
  }

  async decrypt(req: DecryptRequest): Promise<DecryptResult> {
    this.ensureOpen();
    // Requests interleaving their slices would finish together, at the end of a burst: one at a time instead.
    const run = this.decryptTail.then(() => this.decryptAll(req));
    this.decryptTail = run.catch(() => {});
    return run;
  }

  private async decryptAll(req: DecryptRequest): Promise<DecryptResult> {
    const ok: Array<Decrypted & { index: number }> = [];
    const failures: DecryptFailure[] = [];
    const unknownSender: Array<{ i: number; sender: string }> = [];
    this.trust.beginRequest();
    let i = 0;
    while (i < req.raw.length) {
      await this.queue.run(async () => {
        const until = performance.now() + DECRYPT_SLICE_MS;
        do {
          const roomId = req.rooms[req.room[i]!]!;
          const r = await this.decryptOne(roomId, req.raw[i]!, true, true);
          if ('event' in r) ok.push({ ...r, index: i });
          else if (r.unknownDevice) unknownSender.push({ i, sender: r.unknownDevice });
          else failures.push(failureAt(r, i));
          i++;
        } while (i < req.raw.length && performance.now() < until);
      });
    }
    // A sender device not known yet (a user the bot does not track, or whose keys are being queried) may pass the
    // `trust` rule once known: its user is tracked, its keys fetched, and the event decrypted again.
    if (unknownSender.length > 0) {
      await this.fetchSenders(unknownSender.map((u) => u.sender));
      for (const { i: k } of unknownSender) {
        const r = await this.queue.run(() => this.decryptOne(req.rooms[req.room[k]!]!, req.raw[k]!, true, false));
        if ('event' in r) ok.push({ ...r, index: k });
        else failures.push(failureAt(r, k));
      }
      ok.sort((a, b) => a.index - b.index); // timeline order
    }
    void this.verification.retryUnknownSenders().catch((e) => this.report(e)); // requests among the events
    // A missing key made the engine queue a request to the bot's own verified devices: sent now, not with the next sync.
    if (failures.some((f) => f.pending)) void this.outgoing.flush().catch((e) => this.report(e));
    const slot: number[] = new Array<number>(req.raw.length).fill(-1);
    const batch = decryptedBatch(ok, 0, this.processOptions());
    if (batch) for (const [k, d] of ok.entries()) slot[d.index] = batch.slots[k]!;
    return { batch: batch?.batch ?? null, slot, failures };
  }

  /** Tracks these senders and fetches their devices and identities, which the `trust` rule needs (outside the queue). */
  private async fetchSenders(senders: Iterable<string>): Promise<void> {
    await this.queue.run(() => this.machine.updateTrackedUsers(userIds(new Set(senders))), 'high');
    await this.outgoing.flush().catch((e: unknown) => this.report(e));
    this.trust.forget();
  }

  async encrypt(roomId: string, type: string, content: Record<string, unknown>): Promise<EncryptResult> {
    this.ensureOpen();
    // One send per room at a time: key sharing and the outbound session are per room.
    const prev = this.roomLocks.get(roomId) ?? Promise.resolve();
    const run = prev.catch(() => {}).then(() => this.encryptLocked(roomId, type, content));
    this.roomLocks.set(roomId, run);
    try {
      return await run;
    } finally {
      if (this.roomLocks.get(roomId) === run) this.roomLocks.delete(roomId);
    }
  }

  async isRoomEncrypted(roomId: string): Promise<boolean> {
    this.ensureOpen();
    return (await this.roomEncryption.algorithm(roomId)) !== null;
  }

  async setWantedTypes(types: string[] | null): Promise<void> {
    this.ensureOpen();
    this.wanted = types ? new Set(types) : null;
  }

  async status(): Promise<CryptoStatus> {
    this.ensureOpen();
    const n = this.pending.count();
    return {
      identity: this.identity,
      pendingUndecryptable: n,
      storedRecords: this.journal.recordCount(),
      appliedBatches: this.appliedBatches,
      duplicateToDevice: this.duplicateToDevice,
      keyBackup: (await this.backup?.status()) ?? null,
    };
  }

  async memory(collect = false): Promise<ActorMemory> {
    return threadMemory({ collect, wasmBytes: wasmMemory?.buffer.byteLength ?? null });
  }

  // ---- identity and key backup (identity.ts, backup.ts) ----

  async setupIdentity(req: IdentitySetup): Promise<IdentitySetupResult> {
    this.ensureOpen();
    const c = this.config;
    const ctx = { W, machine: this.machine, queue: this.queue, http: this.http, userId: c.userId, deviceId: c.deviceId, accessToken: c.accessToken, backup: this.backup! };
    return setUpIdentity({ ...ctx, send: (r) => this.outgoing.send(r) }, req);
  }

  // Interactive verification: see verification.ts.
  async answerVerification(userId: string, flowId: string, accept: boolean): Promise<void> {
    return this.ensureOpen(), this.verification.answer(userId, flowId, accept);
  }
  async confirmVerification(userId: string, flowId: string): Promise<void> {
    return this.ensureOpen(), this.verification.confirm(userId, flowId);
  }
  async cancelVerification(userId: string, flowId: string): Promise<void> {
    return this.ensureOpen(), this.verification.cancel(userId, flowId);
  }
  async requestVerification(userId: string, deviceId: string | null): Promise<string[]> {
    return this.ensureOpen(), this.verification.request(userId, deviceId);
  }

  async release(): Promise<void> {
    this.ensureOpen();
    this.http.release();
    if (this.freshStore) await this.firstFlush;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.verification?.stop();
    this.http?.dropHeld(); // held requests never went: they fail now, and settle() does not wait for them
    await this.outgoing?.settle();
    // Closed from inside the queue: no machine call can be running or start after it.
    await this.queue.shut(() => this.machine?.close());
    await this.http?.close();
    await this.journal?.close();
  }

  // ---- sync changes ----

  private async applySyncChanges(ch: CryptoSyncChanges): Promise<void> {
    const m = this.machine;
    const db = this.journal.db;
    const all = JSON.parse(ch.toDevice) as unknown[];
    const fresh: unknown[] = [];
    const hashes: string[] = [];
    const seen = db.prepare('SELECT 1 FROM todevice_seen WHERE hash = ?');
    for (const ev of all) {
      const h = createHash('sha256').update(JSON.stringify(ev)).digest('base64');
      if (seen.get(h)) this.duplicateToDevice++;
      else {
        fresh.push(ev);
        hashes.push(h);
      }
    }
    const batch = ++this.batchCounter;
    this.journal.beginGroup();
    let failure: unknown = null;
    try {
      await this.roomEncryption.setMany(ch.encryption);
      const newUsers = this.rooms.apply(ch);
      if (newUsers.length > 0) await m.updateTrackedUsers(userIds(newUsers));
      const changed = ch.deviceListsChanged.map((u) => new W.UserId(u));
      const left = ch.deviceListsLeft.map((u) => new W.UserId(u));
      // Sync v2: a count left out (the whole field, or an algorithm) is zero. Said explicitly rather than left to
      // the engine, which reads a missing count in a key upload's answer as "unchanged".
      const counts = new Map<string, number>(Object.entries({ signed_curve25519: 0, ...ch.otkCounts }));
      const fallback = ch.fallbackKeyTypes ? new Set(ch.fallbackKeyTypes) : undefined;
      // To-device events are decrypted from any device: the `trust` option applies to the room events they unlock.
      const lists = new W.DeviceLists(changed, left);
      const processed = await m
        .receiveSyncChanges(JSON.stringify(fresh), lists, counts, fallback, new W.DecryptionSettings(W.TrustRequirement.Untrusted))
        .finally(() => lists.free());
      this.verification.noticeToDevice(processed);
      for (const v of ch.verification ?? []) await this.verification.noticeRoomEvent(v.roomId, v.event as unknown as Record<string, unknown>);
      for (const p of processed) {
        if (p.type === W.ProcessedToDeviceEventType.UnableToDecrypt || p.type === W.ProcessedToDeviceEventType.Invalid) {
          const raw = safeJson((p as Wasm.UTDToDeviceEvent).rawEvent);
          this.report(new HalcyonError('HALCYON_DECRYPT_FAILED', `a to-device event${raw && typeof raw.sender === 'string' ? ` from ${raw.sender}` : ''} could not be decrypted or was invalid; skipped`));
        }
      }
      free(...processed);
    } catch (err) {
      failure = err;
    } finally {
      // Committed even on failure: whatever the machine changed in memory must reach the disk too.
      this.journal.commitGroup(
        failure
          ? undefined
          : (d: Database) => {
              const ins = d.prepare('INSERT OR IGNORE INTO todevice_seen (hash, batch) VALUES (?, ?)');
              for (const h of hashes) ins.run(h, batch);
              d.prepare('DELETE FROM todevice_seen WHERE batch <= ?').run(batch - KEEP_HASH_BATCHES);
            },
      );
    }
    this.appliedBatches++;
    if (failure) this.report(new HalcyonError('HALCYON_DECRYPT_FAILED', `applying the batch's to-device events failed: ${errMessage(failure)}`, { cause: failure }));
  }

  // ---- decryption ----

  /**
   * Decrypts one event. `keep`: a missing key keeps it for a late key. `ask`: an event whose sender device the store
   * does not know fails with `unknownDevice` (the caller fetches the sender's keys and asks again without `ask`),
   * rather than be decided (the `trust` rule) or labelled (`encryption.trust`) on too little.
   */
  private async decryptOne(roomId: string, raw: string, keep: boolean, ask: boolean): Promise<Decrypted | OneFailure> {
    const original = safeJson(raw);
    const eventId = typeof original?.event_id === 'string' ? original.event_id : null;
    const content = original && typeof original.content === 'object' && original.content !== null ? (original.content as Record<string, unknown>) : null;
    const sessionId = typeof content?.session_id === 'string' ? content.session_id : null;
    const fail = (message: string) => ({ code: 'HALCYON_DECRYPT_FAILED' as const, message, sessionId, pending: false, withheldCode: null });
    if (!original || !eventId || !content) return fail('malformed m.room.encrypted event');
    if (content.algorithm !== MEGOLM) return fail(`unsupported algorithm ${JSON.stringify(content.algorithm)}`);
    try {
      const d = await this.trust.decrypt(this.machine, raw, roomId, original.sender);
      // With untrusted devices accepted, a forged `sender` still decrypts; only the shield tells. Refuse it.
      const shield = d.shieldState(false);
      const forged = shield.code === W.ShieldStateCode.MismatchedSender;
      const event = JSON.parse(d.event) as Record<string, unknown>;
      const trust = forged ? null : await this.trust.senderTrust(this.machine, d);
      free(shield, d);
      if (!trust) return fail(`${eventId} claims to be from ${String(original.sender)} but was encrypted by another user's device`);
      if (!trust.known && ask) return { ...fail(`${eventId}: its sender device is not known`), unknownDevice: String(original.sender) };
      const refused = refusal(event, original);
      if (refused) return fail(`${eventId} was refused: ${refused}`);
      const untrusted = this.trust.refusal(trust);
      if (untrusted) return { ...fail(`${eventId} was refused: ${untrusted}`), code: 'HALCYON_DECRYPT_UNTRUSTED' };
      // The clear event carries the encrypted event's envelope.
      for (const k of ['event_id', 'sender', 'origin_server_ts', 'unsigned'] as const) if (event[k] === undefined && original[k] !== undefined) event[k] = original[k];
      useClearRelation(event, content);
      await this.verification.noticeRoomEvent(roomId, event);
      return { roomId, event, trust: { level: trust.level, deviceId: trust.deviceId } };
    } catch (err) {
      const refused = this.trust.engineRefusal(err);
      const unknownDevice = ask && refused?.unknownDevice ? String(original.sender) : undefined;
      if (refused) return { ...fail(`cannot decrypt ${eventId}: ${refused.refused}`), code: 'HALCYON_DECRYPT_UNTRUSTED', unknownDevice };
      const e = err as { code?: unknown; withheldCode?: unknown; maybe_withheld?: unknown };
      const missing = e.code === W.DecryptionErrorCode.MissingRoomKey || e.code === W.DecryptionErrorCode.UnknownMessageIndex;
      const withheldCode = typeof e.withheldCode === 'string' ? e.withheldCode : null;
      // Anyone can send a withheld notice for any session: only the event's sender's own word ends the wait.
      const forGood = withheldCode !== null && WITHHELD_FOR_GOOD.has(withheldCode) && sessionId !== null && this.withheldBy.get(sessionId) === original.sender;
      const pending = missing && keep && sessionId !== null && !forGood;
      if (pending) {
        this.pending.keep(eventId, roomId, sessionId, raw);
        this.backup?.lookup(roomId, sessionId);
      }
      // The engine's text ends in Rust formatting of the withheld code (`withheld code: None` / `Some("m.…")`).
      const why = withheldCode === null ? errMessage(err).replace(/, withheld code: None$/, '') : withheldReason(withheldCode, e.maybe_withheld);
      return { code: missing ? 'HALCYON_DECRYPT_MISSING_KEY' : 'HALCYON_DECRYPT_FAILED', message: `cannot decrypt ${eventId}: ${why}`, sessionId, pending, withheldCode };
    }
  }

  /**
   * Retries kept events (of these sessions, or all); posts those that now decrypt to main as a late batch. An event
   * the `trust` rule refuses while its sender's device is not known (a room the bot only reads: its members are not
   * tracked) is retried once more after fetching the sender's keys (`sendersFetched`), then given up.
   */
  private async retryPending(sessions: Set<string> | null, sendersFetched = false): Promise<void> {
    const rows = this.pending.due(sessions);
    const ok: Array<Decrypted & { index: number }> = [];
    const hopeless: string[] = [];
    const unknownSenders = new Set<string>();
    const unknownSessions = new Set<string>();
    for (const r of rows) {
      const res = await this.decryptOne(r.room_id, r.raw, false, !sendersFetched);
      if ('event' in res) ok.push({ ...res, index: ok.length });
      else if (res.unknownDevice && r.session_id !== null) {
        unknownSenders.add(res.unknownDevice);
        unknownSessions.add(r.session_id);
      } else if (res.code !== 'HALCYON_DECRYPT_MISSING_KEY') hopeless.push(r.event_id); // the key came, the event is refused
    }
    this.forgetPending(hopeless);
    if (unknownSenders.size > 0) {
      // Not awaited: this runs in the queue, which the fetch needs.
      void this.fetchSenders(unknownSenders)
        .then(() => (this.closed ? undefined : this.queue.run(() => this.retryPending(unknownSessions, true))))
        .catch((e) => this.report(e));
    }
    const built = decryptedBatch(ok, EVENT_FLAGS.late, this.processOptions());
    if (!built) return;
    const ids = ok.map((d) => d.event.event_id as string);
    this.pending.markPosted(ids);
    // Unwanted types are not delivered, so nothing will acknowledge them: forget them now.
    const delivered = new Set<string>();
    for (const [k, d] of ok.entries()) if (built.slots[k]! >= 0) delivered.add(d.event.event_id as string);
    this.forgetPending(ids.filter((id) => !delivered.has(id)));
    if (delivered.size > 0) this.events.post({ kind: 'late', batch: built.batch, ids: [...delivered] });
  }

  /** Retries kept events, sending the key requests that makes (the engine asks on a failed decryption, once per session, while an own device is verified). */
  private async askOwnDevices(): Promise<void> {
    if (this.closed || this.pending.count() === 0) return;
    await this.queue.run(() => this.retryPending(null));
    await this.outgoing.flush();
  }

  private processOptions(): ProcessOptions {
    return { wantedTypes: this.wanted, ownUserId: this.config.userId };
  }

  private forgetPending(ids: string[]): void {
    if (!this.closed) this.pending.forget(ids);
  }

  // ---- encryption ----

  private async encryptLocked(roomId: string, type: string, content: Record<string, unknown>): Promise<EncryptResult> {
    const algorithm = await this.roomEncryption.algorithm(roomId);
    if (algorithm === null) return { encrypted: false };
    if (algorithm !== MEGOLM) {
      throw new HalcyonError('HALCYON_ENCRYPT_FAILED', `room ${roomId} uses the encryption algorithm ${algorithm}, which Halcyon cannot send with`, { roomId });
    }
    const m = this.machine;
    // Borrowed by each call below (not moved): freed once the event is encrypted.
    const room = new W.RoomId(roomId);
    try {
      const { users, visibility, fetched } = await this.rooms.recipients(roomId);
      // Invited members are tracked too: their devices are known by the time they join.
      if (fetched) await this.queue.run(() => m.updateTrackedUsers(userIds(fetched)), 'high');
      // Device lists of new members are queried first (a key share skips users whose devices are unknown).
      await this.outgoing.flush();
      const claim = await this.queue.run(() => m.getMissingSessions(userIds(users)), 'high');
      if (claim) await this.outgoing.sendAll([claim]);
      // The engine starts a new session when the visibility differs from the current session's, or a user it was
      // shared with is not among `users` (left, or invited in a room now visible to joined members only).
      const toDevice = await this.queue.run(async () => {
        const settings = this.roomEncryption.settings(roomId, visibility);
        try {
          settings.sharingStrategy = await this.trust.sharingStrategy(m);
          return await m.shareRoomKey(room, userIds(users), settings);
        } finally {
          settings.free();
        }
      }, 'high');
      await this.outgoing.sendAll(toDevice);
      const encrypted = await this.queue.run(() => m.encryptRoomEvent(room, type, JSON.stringify(content)), 'high');
      return { encrypted: true, content: JSON.parse(encrypted) as Record<string, unknown> };
    } finally {
      room.free();
    }
  }

  // ---- reporting ----

  private report(err: unknown): void {
    if (this.closed) return;
    this.events.post({ kind: 'error', error: toWireError(err, 'HALCYON_INTERNAL') });
  }

  private fatal(err: HalcyonError): void {
    if (this.closed) return;
    this.events.post({ kind: 'fatal', error: toWireError(err, 'HALCYON_CRYPTO_STORE') });
  }
}

/** crypto-wasm's linear memory in this thread: undefined until the first open() looks for it, null if unknown. */
let wasmMemory: WebAssembly.Memory | null | undefined;

/** crypto-wasm, loaded by the first open() into {@link W}, which every other use of it reads (they all come after an open). */
const wasm = lazyModule<typeof Wasm>('@matrix-org/matrix-sdk-crypto-wasm');
let W: typeof Wasm;

/** A failure of {@link CryptoActor.decryptOne}; `unknownDevice`: refused by `trust` while the sender's device is unknown (the sender). */
type OneFailure = Omit<DecryptFailure, 'index'> & { unknownDevice?: string };

/** The failure of request event `index`, as main gets it. */
function failureAt(f: OneFailure, index: number): DecryptFailure {
  return { code: f.code, message: f.message, sessionId: f.sessionId, pending: f.pending, withheldCode: f.withheldCode, index };
}

function userIds(users: Iterable<string>): Wasm.UserId[] {
  return [...users].map((u) => new W.UserId(u));
}
