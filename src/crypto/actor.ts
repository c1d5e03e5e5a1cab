/**
 * The crypto actor: the one owner of the OlmMachine (`@matrix-org/matrix-sdk-crypto-wasm`; this is the only
 * module that imports it) and of `crypto.sqlite`, its durable store (see idb-journal.ts).
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
import * as W from '@matrix-org/matrix-sdk-crypto-wasm';
import { createHash } from 'node:crypto';
import { HalcyonError, toWireError } from '../errors.ts';
import { MatrixHttp, seg } from '../http.ts';
import type { Port } from '../actors.ts';
import {
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
  type MainToCrypto,
  type MatrixEvent,
  OFF,
  OFFSET_STRIDE,
  type WireBatch,
} from '../protocol.ts';
import { type Database, kvGet, kvSet } from '../store.ts';
import { processSync } from '../sync/process.ts';
import { IdbJournal } from './idb-journal.ts';

/**
 * Decryption yields the queue after this many ms (at least one event per turn), so a batch's sync changes, which
 * the sync actor waits for before its next poll, never wait long behind a burst of encrypted events.
 */
const DECRYPT_SLICE_MS = 4;
/** Applied to-device hashes are kept for this many batches (a crash replays at most the last unacknowledged one). */
const KEEP_HASH_BATCHES = 8;
const MEGOLM = 'm.megolm.v1.aes-sha2';

/** Runs tasks one at a time; `high` tasks go before queued `low` ones. After {@link shut}, tasks are refused. */
class SerialQueue {
  private readonly high: Array<() => Promise<void>> = [];
  private readonly low: Array<() => Promise<void>> = [];
  private running = false;
  private shutErr: HalcyonError | null = null;

  run<T>(fn: () => T | Promise<T>, priority: 'high' | 'low' = 'low'): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      (priority === 'high' ? this.high : this.low).push(async () => {
        // A task queued before the machine closed must not touch it after (wasm: a null pointer).
        if (this.shutErr) return reject(this.shutErr);
        // Awaited inside try: wasm methods may throw synchronously instead of rejecting.
        try {
          resolve(await fn());
        } catch (err) {
          reject(err);
        }
      });
      void this.pump();
    });
  }

  /** Runs `last` as the final task; every task after it is rejected with `HALCYON_STOPPED`. */
  shut(last: () => void): Promise<void> {
    return this.run(() => {
      last();
      this.shutErr = new HalcyonError('HALCYON_STOPPED', 'the crypto actor was closed');
    }, 'low');
  }

  private async pump(): Promise<void> {
    if (this.running) return;
    this.running = true;
    try {
      for (let task = this.high.shift() ?? this.low.shift(); task; task = this.high.shift() ?? this.low.shift()) await task();
    } finally {
      this.running = false;
    }
  }
}

interface Decrypted {
  roomId: string;
  event: Record<string, unknown>;
}

/** Owns the OlmMachine; see the module comment. */
export class CryptoActor implements CryptoActorApi {
  private config!: CryptoConfig;
  private http!: MatrixHttp;
  private journal!: IdbJournal;
  private machine!: W.OlmMachine;
  private identity!: CryptoIdentity;
  private wanted: Set<string> | null = null;
  private readonly queue = new SerialQueue();
  /** Member lists of encrypted rooms we sent into, kept current from sync changes. */
  private readonly members = new Map<string, Set<string>>();
  /** Rooms known not to be encrypted (asked the server); a later m.room.encryption event overrides. */
  private readonly plainRooms = new Set<string>();
  private readonly roomLocks = new Map<string, Promise<unknown>>();
  /** Sessions whose keys arrived during the current sync changes (their pending events are retried after). */
  private arrivedSessions = new Set<string>();
  private retryScheduled = false;
  /** Decrypt requests run one after another (first in, first out), so the first batch is ready first. */
  private decryptTail: Promise<unknown> = Promise.resolve();
  private outgoingRunning: Promise<void> | null = null;
  private outgoingQueued: Promise<void> | null = null;
  private appliedBatches = 0;
  private duplicateToDevice = 0;
  private batchCounter = 0;
  private freshStore = false;
  private closed = false;

  constructor(private readonly events: Port<MainToCrypto, CryptoToMain>) {}

  async open(config: CryptoConfig): Promise<CryptoIdentity> {
    this.config = config;
    this.wanted = config.wantedTypes ? new Set(config.wantedTypes) : null;
    const storeName = `halcyon-${createHash('sha256').update(config.dataDir).digest('hex').slice(0, 16)}`;
    this.journal = await IdbJournal.open(config.dataDir, 'crypto.sqlite', `${storeName}::`, (err) => this.fatal(err));
    const db = this.journal.db;
    db.exec(`CREATE TABLE IF NOT EXISTS todevice_seen (hash TEXT PRIMARY KEY, batch INTEGER NOT NULL);
      CREATE TABLE IF NOT EXISTS pending_utd (event_id TEXT PRIMARY KEY, room_id TEXT NOT NULL, session_id TEXT, raw TEXT NOT NULL,
        at INTEGER NOT NULL, posted INTEGER NOT NULL DEFAULT 0);
      CREATE INDEX IF NOT EXISTS pending_utd_session ON pending_utd (session_id);`);
    const owner = kvGet(db, 'owner');
    if (owner) {
      const o = JSON.parse(owner) as { userId: string; deviceId: string };
      if (o.userId !== config.userId || o.deviceId !== config.deviceId) {
        await this.journal.close();
        throw new HalcyonError(
          'HALCYON_STORE_MISMATCH',
          `the crypto store in ${config.dataDir} belongs to ${o.userId} device ${o.deviceId}, not ${config.userId} device ${config.deviceId}; ` +
            'refusing to start rather than create a new identity (use the data dir of this device, or log in again with a fresh data dir)',
        );
      }
    }
    this.freshStore = owner === undefined;
    this.batchCounter = (db.prepare('SELECT max(batch) AS b FROM todevice_seen').get() as { b: number | null }).b ?? 0;
    try {
      this.machine = await W.OlmMachine.initialize(new W.UserId(config.userId), new W.DeviceId(config.deviceId), storeName, config.passphrase);
    } catch (err) {
      await this.journal.close();
      const msg = String((err as Error)?.message ?? err);
      throw new HalcyonError(
        /match/i.test(msg) ? 'HALCYON_STORE_MISMATCH' : 'HALCYON_CRYPTO_STORE',
        `cannot open the crypto store in ${config.dataDir} (wrong passphrase, or another account's store?): ${msg}`,
        { cause: err },
      );
    }
    kvSet(db, 'owner', JSON.stringify({ userId: config.userId, deviceId: config.deviceId }));
    const keys = this.machine.identityKeys;
    this.identity = { userId: config.userId, deviceId: config.deviceId, curve25519: keys.curve25519.toBase64(), ed25519: keys.ed25519.toBase64() };
    this.http = new MatrixHttp(config.homeserver, config.accessToken);
    this.machine.registerRoomKeyUpdatedCallback(async (infos: W.RoomKeyInfo[]) => {
      for (const info of infos) this.arrivedSessions.add(info.sessionId);
      this.scheduleRetry();
    });
    this.events.onMessage((msg) => {
      if (msg.kind === 'lateHandled') this.forgetPending(msg.ids);
    });
    // Device keys must be on the server before anyone can encrypt for this device: upload before syncing. A
    // failure other than a lost store's keys is reported and retried with the next sync's changes.
    await this.flushOutgoing().catch((e: unknown) => {
      if ((e as HalcyonError).code === 'HALCYON_CRYPTO_STORE') throw e;
      this.report(e);
    });
    // Events kept from an earlier run whose key came meanwhile (or whose late delivery was not handled).
    db.exec('UPDATE pending_utd SET posted = 0');
    void this.queue.run(() => this.retryPending(null)).catch((e) => this.report(e));
    return this.identity;
  }

  async receiveSyncChanges(ch: CryptoSyncChanges): Promise<void> {
    await this.queue.run(() => this.applySyncChanges(ch), 'high');
    void this.flushOutgoing().catch((e) => this.report(e));
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
    // Requests interleaving their slices would finish together, at the end of a burst: one at a time instead.
    const run = this.decryptTail.then(() => this.decryptAll(req));
    this.decryptTail = run.catch(() => {});
    return run;
  }

  private async decryptAll(req: DecryptRequest): Promise<DecryptResult> {
    const ok: Array<Decrypted & { index: number }> = [];
    const failures: DecryptFailure[] = [];
    let i = 0;
    while (i < req.raw.length) {
      await this.queue.run(async () => {
        const until = performance.now() + DECRYPT_SLICE_MS;
        do {
          const roomId = req.rooms[req.room[i]!]!;
          const r = await this.decryptOne(roomId, req.raw[i]!, true);
          if ('event' in r) ok.push({ ...r, index: i });
          else failures.push({ ...r, index: i });
          i++;
        } while (i < req.raw.length && performance.now() < until);
      });
    }
    const slot: number[] = new Array<number>(req.raw.length).fill(-1);
    const batch = this.buildBatch(ok, 0);
    if (batch) for (const [k, d] of ok.entries()) slot[d.index] = batch.slots[k]!;
    return { batch: batch?.batch ?? null, slot, failures };
  }

  async encrypt(roomId: string, type: string, content: Record<string, unknown>): Promise<EncryptResult> {
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
    return (await this.roomAlgorithm(roomId)) !== null;
  }

  async setWantedTypes(types: string[] | null): Promise<void> {
    this.wanted = types ? new Set(types) : null;
  }

  async status(): Promise<CryptoStatus> {
    const n = (this.journal.db.prepare('SELECT count(*) AS n FROM pending_utd').get() as { n: number }).n;
    return {
      identity: this.identity,
      pendingUndecryptable: n,
      storedRecords: this.journal.recordCount(),
      appliedBatches: this.appliedBatches,
      duplicateToDevice: this.duplicateToDevice,
    };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.outgoingRunning?.catch(() => {});
    await this.outgoingQueued?.catch(() => {});
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
      for (const e of ch.encryption) await this.setRoomEncryption(e.roomId, e.content);
      const newUsers = new Set<string>();
      for (const mc of ch.members) {
        const set = this.members.get(mc.roomId);
        if (!set) continue;
        if (mc.membership === 'join' || mc.membership === 'invite') {
          if (!set.has(mc.userId)) newUsers.add(mc.userId);
          set.add(mc.userId);
        } else set.delete(mc.userId);
      }
      for (const r of ch.left) this.members.delete(r);
      if (newUsers.size > 0) await m.updateTrackedUsers([...newUsers].map((u) => new W.UserId(u)));
      const changed = ch.deviceListsChanged.map((u) => new W.UserId(u));
      const left = ch.deviceListsLeft.map((u) => new W.UserId(u));
      const counts = new Map<string, number>(Object.entries(ch.otkCounts ?? {}));
      const fallback = ch.fallbackKeyTypes ? new Set(ch.fallbackKeyTypes) : undefined;
      const processed = await m.receiveSyncChanges(JSON.stringify(fresh), new W.DeviceLists(changed, left), counts, fallback, untrusted());
      for (const p of processed) {
        if (p.type === W.ProcessedToDeviceEventType.UnableToDecrypt || p.type === W.ProcessedToDeviceEventType.Invalid) {
          const raw = safeJson((p as W.UTDToDeviceEvent).rawEvent);
          this.report(new HalcyonError('HALCYON_DECRYPT_FAILED', `a to-device event${raw && typeof raw.sender === 'string' ? ` from ${raw.sender}` : ''} could not be decrypted or was invalid; skipped`));
        }
      }
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

  private async setRoomEncryption(roomId: string, content: Record<string, unknown>): Promise<void> {
    this.plainRooms.delete(roomId);
    const s = new W.RoomSettings();
    // Unknown algorithms still mark the room encrypted (plaintext is refused); megolm is all we can send.
    s.algorithm = W.EncryptionAlgorithm.MegolmV1AesSha2;
    if (typeof content.rotation_period_ms === 'number') s.sessionRotationPeriodMs = content.rotation_period_ms;
    if (typeof content.rotation_period_msgs === 'number') s.sessionRotationPeriodMessages = content.rotation_period_msgs;
    await this.machine.setRoomSettings(new W.RoomId(roomId), s);
    kvSet(this.journal.db, `algorithm:${roomId}`, typeof content.algorithm === 'string' ? content.algorithm : 'unknown');
    kvSet(this.journal.db, `encryption:${roomId}`, JSON.stringify(content));
  }

  /** The room's encryption algorithm, or null if it is not encrypted. */
  private async roomAlgorithm(roomId: string): Promise<string | null> {
    const known = kvGet(this.journal.db, `algorithm:${roomId}`);
    if (known !== undefined) return known;
    if (this.plainRooms.has(roomId)) return null;
    // Not seen in a sync of this store (the room predates encryption support, or we have not synced it yet).
    try {
      const content = await this.http.json('GET', `/_matrix/client/v3/rooms/${seg(roomId)}/state/m.room.encryption/`);
      await this.queue.run(() => this.setRoomEncryption(roomId, content), 'high');
      return kvGet(this.journal.db, `algorithm:${roomId}`) ?? null;
    } catch (err) {
      if ((err as HalcyonError).errcode === 'M_NOT_FOUND') {
        this.plainRooms.add(roomId);
        return null;
      }
      throw err;
    }
  }

  // ---- decryption ----

  private async decryptOne(roomId: string, raw: string, keep: boolean): Promise<Decrypted | Omit<DecryptFailure, 'index'>> {
    const original = safeJson(raw);
    const eventId = typeof original?.event_id === 'string' ? original.event_id : null;
    const content = original && typeof original.content === 'object' && original.content !== null ? (original.content as Record<string, unknown>) : null;
    const sessionId = typeof content?.session_id === 'string' ? content.session_id : null;
    if (!original || !eventId || !content) {
      return { code: 'HALCYON_DECRYPT_FAILED', message: 'malformed m.room.encrypted event', sessionId, pending: false };
    }
    if (content.algorithm !== MEGOLM) {
      return { code: 'HALCYON_DECRYPT_FAILED', message: `unsupported algorithm ${JSON.stringify(content.algorithm)}`, sessionId, pending: false };
    }
    try {
      const d = await this.machine.decryptRoomEvent(raw, new W.RoomId(roomId), untrusted());
      // With untrusted devices accepted, a forged `sender` still decrypts; only the shield tells. Refuse it.
      const forged = d.shieldState(false).code === W.ShieldStateCode.MismatchedSender;
      const event = JSON.parse(d.event) as Record<string, unknown>;
      d.free();
      if (forged) {
        return { code: 'HALCYON_DECRYPT_FAILED', message: `${eventId} claims to be from ${String(original.sender)} but was encrypted by another user's device`, sessionId, pending: false };
      }
      // The clear event carries the encrypted event's envelope; relations stay in the clear part of the content.
      for (const k of ['event_id', 'sender', 'origin_server_ts', 'unsigned'] as const) if (event[k] === undefined && original[k] !== undefined) event[k] = original[k];
      const c = event.content as Record<string, unknown> | undefined;
      if (c && typeof c === 'object' && c['m.relates_to'] === undefined && content['m.relates_to'] !== undefined) c['m.relates_to'] = content['m.relates_to'];
      return { roomId, event };
    } catch (err) {
      const code = (err as { code?: unknown }).code;
      const missing = code === W.DecryptionErrorCode.MissingRoomKey || code === W.DecryptionErrorCode.UnknownMessageIndex;
      const message = `cannot decrypt ${eventId}: ${errMessage(err)}`;
      if (missing && keep && sessionId) this.keepPending(eventId, roomId, sessionId, raw);
      return { code: missing ? 'HALCYON_DECRYPT_MISSING_KEY' : 'HALCYON_DECRYPT_FAILED', message, sessionId, pending: missing && keep && sessionId !== null };
    }
  }

  private keepPending(eventId: string, roomId: string, sessionId: string, raw: string): void {
    const db = this.journal.db;
    const now = Date.now();
    db.prepare('INSERT OR IGNORE INTO pending_utd (event_id, room_id, session_id, raw, at) VALUES (?, ?, ?, ?, ?)').run(eventId, roomId, sessionId, raw, now);
    db.prepare('DELETE FROM pending_utd WHERE at < ?').run(now - this.config.pendingUndecryptableMaxAgeMs);
    db.prepare('DELETE FROM pending_utd WHERE event_id IN (SELECT event_id FROM pending_utd ORDER BY at DESC, rowid DESC LIMIT -1 OFFSET ?)').run(this.config.maxPendingUndecryptable);
  }

  /** Retries kept events (of these sessions, or all); posts those that now decrypt to main as a late batch. */
  private async retryPending(sessions: Set<string> | null): Promise<void> {
    const db = this.journal.db;
    db.prepare('DELETE FROM pending_utd WHERE at < ?').run(Date.now() - this.config.pendingUndecryptableMaxAgeMs);
    const rows = (db.prepare('SELECT event_id, room_id, session_id, raw FROM pending_utd WHERE posted = 0 ORDER BY at, rowid').all() as {
      event_id: string; room_id: string; session_id: string | null; raw: string;
    }[]).filter((r) => sessions === null || (r.session_id !== null && sessions.has(r.session_id)));
    const ok: Array<Decrypted & { index: number }> = [];
    for (const r of rows) {
      const res = await this.decryptOne(r.room_id, r.raw, false);
      if ('event' in res) ok.push({ ...res, index: ok.length });
    }
    const built = this.buildBatch(ok, EVENT_FLAGS.late);
    if (!built) return;
    const ids = ok.map((d) => d.event.event_id as string);
    const mark = db.prepare('UPDATE pending_utd SET posted = 1 WHERE event_id = ?');
    for (const id of ids) mark.run(id);
    // Unwanted types are not delivered, so nothing will acknowledge them: forget them now.
    const delivered = new Set<string>();
    for (const [k, d] of ok.entries()) if (built.slots[k]! >= 0) delivered.add(d.event.event_id as string);
    this.forgetPending(ids.filter((id) => !delivered.has(id)));
    if (delivered.size > 0) this.events.post({ kind: 'late', batch: built.batch, ids: [...delivered] });
  }

  private forgetPending(ids: string[]): void {
    if (this.closed) return;
    const del = this.journal.db.prepare('DELETE FROM pending_utd WHERE event_id = ?');
    for (const id of ids) del.run(id);
  }

  /**
   * Turns decrypted events into a batch in the same column format as a /sync batch, by running them through the
   * same pure processing (so validation, flags and wanted types are applied exactly as for clear events).
   */
  private buildBatch(items: Decrypted[], extraFlags: number): { batch: WireBatch; slots: number[] } | null {
    if (items.length === 0) return null;
    const byRoom = new Map<string, number[]>();
    items.forEach((d, k) => {
      let list = byRoom.get(d.roomId);
      if (!list) byRoom.set(d.roomId, (list = []));
      list.push(k);
    });
    const join: Record<string, { timeline: { events: unknown[] } }> = {};
    for (const [roomId, ks] of byRoom) join[roomId] = { timeline: { events: ks.map((k) => items[k]!.event) } };
    const body = Buffer.from(JSON.stringify({ next_batch: '', rooms: { join } }), 'utf8');
    const p = processSync(body, { wantedTypes: this.wanted, ownUserId: this.config.userId });
    const ev = p.events;
    const idToSlot = new Map<string, number>();
    for (let i = 0; i < ev.count; i++) {
      const s = ev.offsets[i * OFFSET_STRIDE + OFF.eventId]!;
      const e = ev.offsets[i * OFFSET_STRIDE + OFF.eventId + 1]!;
      idToSlot.set(JSON.parse(body.toString('utf8', s, e)) as string, i);
      ev.flags[i] = ev.flags[i]! | EVENT_FLAGS.encrypted | extraFlags;
    }
    const slots = items.map((d) => idToSlot.get(d.event.event_id as string) ?? -1);
    if (ev.count === 0) return null;
    const batch: WireBatch = {
      seq: 0,
      redelivered: false,
      done: null,
      nextBatch: '',
      first: false,
      deliver: true,
      rooms: p.rooms,
      body: new Uint8Array(body.buffer, body.byteOffset, body.byteLength),
      events: ev,
      invites: [],
      knocks: [],
      left: [],
      summaries: [],
      errors: p.errors,
      accountData: [],
      receipts: [],
    };
    return { batch, slots };
  }

  // ---- encryption ----

  private async encryptLocked(roomId: string, type: string, content: Record<string, unknown>): Promise<EncryptResult> {
    const algorithm = await this.roomAlgorithm(roomId);
    if (algorithm === null) return { encrypted: false };
    if (algorithm !== MEGOLM) {
      throw new HalcyonError('HALCYON_ENCRYPT_FAILED', `room ${roomId} uses the encryption algorithm ${algorithm}, which Halcyon cannot send with`, { roomId });
    }
    const m = this.machine;
    // wasm-bindgen moves IDs and settings passed by value: every call gets fresh ones.
    const room = () => new W.RoomId(roomId);
    let members = this.members.get(roomId);
    if (!members) {
      members = await this.fetchMembers(roomId);
      this.members.set(roomId, members);
      const tracked = userIds(members);
      await this.queue.run(() => m.updateTrackedUsers(tracked), 'high');
    }
    const users = members;
    // Device lists of new members are queried first (a key share skips users whose devices are unknown).
    await this.flushOutgoing();
    const claim = await this.queue.run(() => m.getMissingSessions(userIds(users)), 'high');
    if (claim) await this.send(claim);
    const toDevice = await this.queue.run(() => m.shareRoomKey(room(), userIds(users), this.encryptionSettings(roomId)), 'high');
    for (const req of toDevice) await this.send(req);
    const encrypted = await this.queue.run(() => m.encryptRoomEvent(room(), type, JSON.stringify(content)), 'high');
    return { encrypted: true, content: JSON.parse(encrypted) as Record<string, unknown> };
  }

  /** Sharing settings from the room's m.room.encryption content: its session rotation periods, when given. */
  private encryptionSettings(roomId: string): W.EncryptionSettings {
    const settings = new W.EncryptionSettings();
    const content = safeJson(kvGet(this.journal.db, `encryption:${roomId}`) ?? '{}') ?? {};
    if (typeof content.rotation_period_ms === 'number' && content.rotation_period_ms > 0) {
      settings.rotationPeriod = BigInt(Math.round(content.rotation_period_ms)) * 1000n; // microseconds
    }
    if (typeof content.rotation_period_msgs === 'number' && content.rotation_period_msgs > 0) {
      settings.rotationPeriodMessages = BigInt(Math.round(content.rotation_period_msgs));
    }
    return settings;
  }

  private async fetchMembers(roomId: string): Promise<Set<string>> {
    const res = await this.http.json<{ chunk?: MatrixEvent[] }>('GET', `/_matrix/client/v3/rooms/${seg(roomId)}/members`, { query: { not_membership: 'leave' } });
    const set = new Set<string>();
    for (const ev of res.chunk ?? []) {
      const membership = ev.content?.membership;
      if ((membership === 'join' || membership === 'invite') && typeof ev.state_key === 'string') set.add(ev.state_key);
    }
    return set;
  }

  // ---- outgoing requests ----

  /**
   * Sends the machine's outgoing requests until none are left. Callers share loops: a call made while a loop
   * runs waits for one more loop after it (so requests created by the caller's own changes are included).
   */
  private flushOutgoing(): Promise<void> {
    if (this.outgoingQueued) return this.outgoingQueued;
    if (!this.outgoingRunning) {
      const run = this.outgoingLoop().finally(() => (this.outgoingRunning = null));
      this.outgoingRunning = run;
      return run;
    }
    const queued = this.outgoingRunning.catch(() => {}).then(() => {
      this.outgoingQueued = null;
      return this.flushOutgoing();
    });
    this.outgoingQueued = queued;
    return queued;
  }

  private async outgoingLoop(): Promise<void> {
    for (let round = 0; round < 10; round++) {
      const reqs = await this.queue.run(() => this.machine.outgoingRequests(), 'high');
      if (reqs.length === 0) return;
      for (const r of reqs) await this.send(r as OutgoingRequest);
    }
  }

  private async send(req: OutgoingRequest): Promise<void> {
    const T = W.RequestType;
    let path: string;
    let method = 'POST';
    switch (req.type) {
      case T.KeysUpload: path = '/_matrix/client/v3/keys/upload'; break;
      case T.KeysQuery: path = '/_matrix/client/v3/keys/query'; break;
      case T.KeysClaim: path = '/_matrix/client/v3/keys/claim'; break;
      case T.SignatureUpload: path = '/_matrix/client/v3/keys/signatures/upload'; break;
      case T.ToDevice: {
        const r = req as W.ToDeviceRequest;
        method = 'PUT';
        path = `/_matrix/client/v3/sendToDevice/${seg(r.event_type)}/${seg(r.txn_id)}`;
        break;
      }
      case T.RoomMessage: {
        const r = req as W.RoomMessageRequest;
        method = 'PUT';
        path = `/_matrix/client/v3/rooms/${seg(r.room_id)}/send/${seg(r.event_type)}/${seg(r.txn_id)}`;
        break;
      }
      default:
        return; // key backup is not enabled; nothing else is produced
    }
    let res: unknown;
    try {
      res = await this.http.json(method, path, { body: JSON.parse(req.body) as unknown });
    } catch (err) {
      if (req.type === T.KeysUpload && this.freshStore && (err as HalcyonError).status === 400) {
        // The server holds keys of an earlier store of this device: a new identity would be rejected forever.
        const e = new HalcyonError(
          'HALCYON_CRYPTO_STORE',
          `the homeserver already holds other keys for device ${this.config.deviceId} (its crypto store was lost); log in again for a new device: ${errMessage(err)}`,
          { cause: err },
        );
        this.fatal(e);
        throw e;
      }
      throw err;
    }
    await this.queue.run(() => this.machine.markRequestAsSent(req.id, req.type, JSON.stringify(res)), 'high');
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

type OutgoingRequest = { id: string; type: W.RequestType; body: string };

/**
 * Decryption settings accepting unverified devices (bots rarely verify). A new object per call: wasm-bindgen
 * moves arguments passed by value, so a reused settings object is a null pointer on its second use.
 */
function untrusted(): W.DecryptionSettings {
  return new W.DecryptionSettings(W.TrustRequirement.Untrusted);
}

function userIds(users: Iterable<string>): W.UserId[] {
  return [...users].map((u) => new W.UserId(u));
}

function safeJson(text: string): Record<string, unknown> | null {
  try {
    const v = JSON.parse(text) as unknown;
    return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}

function errMessage(err: unknown): string {
  if (err instanceof Error) return err.message;
  const d = (err as { description?: unknown })?.description;
  return typeof d === 'string' ? d : String(err);
}
