/**
 * Server-side key backup (`m.megolm_backup.v1.curve25519-aes-sha2`) for the crypto actor: room keys are encrypted
 * to the backup's public key and uploaded, so a device that lost its store (or a new one) gets them back with the
 * private key, which lives in secret storage (see identity.ts).
 *
 * - At open, if the store holds a backup key, the backup is enabled when the server's current version is still
 *   that key's (one `GET /room_keys/version`, in the background: a bot without a backup pays nothing).
 * - Room keys are uploaded as they arrive: the actor's outgoing-request loop kicks {@link KeyBackup.kick} when the
 *   machine has nothing else to send, and one upload loop at a time sends `backupRoomKeys` batches (sends never
 *   wait for it).
 * - An event kept for a late key has its session looked up in the backup (once per session and run); a key found
 *   there is imported, and the engine's key callback retries the event like any late key.
 * - Login with the recovery key downloads the whole backup and imports it ({@link KeyBackup.restoreAll}).
 */
import { HalcyonError, isTransient } from '../errors.ts';
import { type MatrixHttp, seg } from '../http.ts';
import type { KeyBackupStatus } from '../protocol.ts';
import type { SerialQueue } from './queue.ts';
import { fromBase64, toBase64 } from './secret-storage.ts';

/** The backup algorithm of the spec that crypto-wasm implements. */
export const BACKUP_ALGORITHM = 'm.megolm_backup.v1.curve25519-aes-sha2';
const VERSION_PATH = '/_matrix/client/v3/room_keys/version';
const KEYS_PATH = '/_matrix/client/v3/room_keys/keys';
/** Backed-up sessions imported per engine call when restoring (the queue is free between calls). */
const IMPORT_CHUNK = 500;
/** Sessions looked up in the backup per run, at most (a flood of undecryptable events must not become a flood of requests). */
const MAX_LOOKUPS = 10_000;
/** The whole backup is downloaded at once (`GET /room_keys/keys`): allow big ones. */
const RESTORE_MAX_BYTES = 512 * 1024 * 1024;
const RESTORE_TIMEOUT_MS = 300_000;
/** After a transient failure to enable the backup at start, the next kick at least this much later tries again. */
const ENABLE_RETRY_MS = 60_000;
/** Transient upload failures in a row before one is reported (each kick retries; a blip is not worth an error event). */
const REPORT_AFTER_FAILURES = 3;

/**
 * crypto-wasm, as the actor hands it over: the actor is the one module that imports the binding (its door); only
 * its types are named here.
 */
export type Wasm = typeof import('@matrix-org/matrix-sdk-crypto-wasm');
/** The actor's OlmMachine. */
export type Machine = import('@matrix-org/matrix-sdk-crypto-wasm').OlmMachine;
type KeysBackupRequest = import('@matrix-org/matrix-sdk-crypto-wasm').KeysBackupRequest;

/** What the backup needs from its crypto actor. */
export interface BackupContext {
  W: Wasm;
  machine: Machine;
  queue: SerialQueue;
  http: MatrixHttp;
  /** Reports a problem that does not stop the bot (an `error` event on main). */
  report(err: HalcyonError): void;
  /** True once the actor is closing: loops stop. */
  closed(): boolean;
}

/** A backup version and its private key (unpadded base64). */
export interface BackupKey {
  version: string;
  keyBase64: string;
}

/** The server's current backup version, as far as Halcyon uses it. */
interface ServerVersion {
  version: string;
  algorithm: string;
  publicKey: string | null;
}

/** The crypto actor's key backup; see the module comment. */
export class KeyBackup {
  /** The enabled version (null: backup off for this run). */
  private version: string | null = null;
  private decryptionKey: string | null = null;
  private uploading = false;
  private uploadAgain = false;
  /** Upload failures in a row; one is reported (once) past {@link REPORT_AFTER_FAILURES}, or at once if it is no blip. */
  private uploadFailures = 0;
  /** When a transient failure kept the backup off at start: the first kick after this tries again. */
  private enableRetryAt: number | null = null;
  private kept: () => Array<{ roomId: string; sessionId: string }> = () => [];
  private readonly looked = new Set<string>();
  /** Sessions to look up once the backup is enabled (events kept before {@link start} finished). */
  private waiting: Array<{ roomId: string; sessionId: string }> = [];
  private lookupTail: Promise<void> = Promise.resolve();
  private started: Promise<void> = Promise.resolve();
  /** Until {@link start} has settled, lookups wait in {@link waiting}; after, they need an enabled backup. */
  private starting = false;

  constructor(private readonly ctx: BackupContext) {}

  /**
   * Enables the backup in the background when the store holds a key for the server's current version, then looks
   * up the sessions of the events kept from earlier runs. {@link ready} resolves when it is done.
   */
  start(kept: () => Array<{ roomId: string; sessionId: string }>): void {
    this.kept = kept;
    this.starting = true;
    this.started = this.tryEnable().finally(() => {
      this.starting = false;
      this.waiting = [];
    });
  }

  /** Enables the backup, then looks up the kept events' sessions; a transient failure is retried by a later kick. */
  private async tryEnable(): Promise<void> {
    try {
      if (!(await this.enable())) return;
      for (const s of [...this.kept(), ...this.waiting.splice(0)]) this.lookup(s.roomId, s.sessionId);
    } catch (err) {
      if (this.ctx.closed()) return;
      if (isTransient(err)) this.enableRetryAt = Date.now() + ENABLE_RETRY_MS;
      else this.warn(`the key backup could not be enabled: ${message(err)}`, err);
    }
  }

  /** Resolves once {@link start} has finished (enabled or not). */
  ready(): Promise<void> {
    return this.started;
  }

  private async enable(): Promise<boolean> {
    const { machine, queue } = this.ctx;
    const keys = await queue.run(() => machine.getBackupKeys(), 'low');
    const stored = keys.decryptionKey?.toBase64();
    const version = keys.backupVersion;
    if (!stored || !version) return false;
    const current = await this.serverVersion();
    const publicKey = this.ctx.W.BackupDecryptionKey.fromBase64(stored).megolmV1PublicKey.publicKeyBase64;
    if (!current || current.version !== version || current.publicKey !== publicKey) {
      const now = current ? `version ${current.version} is another key's` : 'there is none now';
      this.warn(`room keys are not backed up: the server's key backup changed (this device has the key of version ${version}; ${now}); log in again with the recovery key to use the current one`);
      return false;
    }
    await queue.run(() => machine.enableBackupV1(publicKey, version), 'low');
    this.version = version;
    this.decryptionKey = stored;
    this.kick();
    return true;
  }

  /** Starts an upload of the room keys not yet backed up, unless one runs (then it runs once more after). */
  kick(): void {
    if (this.ctx.closed()) return;
    if (this.version === null) {
      if (this.enableRetryAt !== null && Date.now() >= this.enableRetryAt) {
        this.enableRetryAt = null;
        void this.tryEnable();
      }
      return;
    }
    if (this.uploading) {
      this.uploadAgain = true;
      return;
    }
    this.uploading = true;
    void this.uploadLoop().finally(() => (this.uploading = false));
  }

  private async uploadLoop(): Promise<void> {
    const { machine, queue, http } = this.ctx;
    do {
      this.uploadAgain = false;
      for (;;) {
        if (this.ctx.closed() || this.version === null) return;
        let req: KeysBackupRequest | undefined;
        try {
          req = await queue.run(() => machine.backupRoomKeys(), 'low');
          if (!req) break;
          const res = await http.json('PUT', KEYS_PATH, { query: { version: req.version }, body: JSON.parse(req.body) as unknown });
          await queue.run(() => machine.markRequestAsSent(req!.id, this.ctx.W.RequestType.KeysBackup, JSON.stringify(res)), 'low');
          this.uploadFailures = 0;
        } catch (err) {
          await this.uploadFailed(err);
          return;
        }
      }
    } while (this.uploadAgain);
  }

  /** A version replaced or deleted on the server ends backups for this run; anything else is retried at the next kick. */
  private async uploadFailed(err: unknown): Promise<void> {
    if (this.ctx.closed() || (err as HalcyonError).code === 'HALCYON_STOPPED') return;
    const e = err as HalcyonError;
    if (e.errcode === 'M_WRONG_ROOM_KEYS_VERSION' || e.errcode === 'M_NOT_FOUND') {
      const version = this.version;
      this.version = null;
      await this.ctx.queue.run(() => this.ctx.machine.disableBackup(), 'low').catch(() => {});
      this.warn(`room keys are no longer backed up: key backup version ${version} was replaced or deleted on the server; log in again with the recovery key to use the current one`, err);
      return;
    }
    this.uploadFailures++;
    if (this.uploadFailures === REPORT_AFTER_FAILURES || (this.uploadFailures === 1 && !isTransient(err))) {
      this.warn(`uploading room keys to the key backup failed ${this.uploadFailures > 1 ? `${this.uploadFailures} times in a row ` : ''}(retried with the next sync): ${message(err)}`, err);
    }
  }

  /**
   * Looks the session of a kept event up in the backup, once per session and run; a key found is imported, which
   * retries the kept events (the engine's room-key callback). Lookups run one at a time, in the background.
   */
  lookup(roomId: string, sessionId: string): void {
    if (this.version === null) {
      if (this.starting && this.waiting.length < MAX_LOOKUPS) this.waiting.push({ roomId, sessionId });
      return;
    }
    const k = `${roomId}|${sessionId}`;
    if (this.looked.has(k) || this.looked.size >= MAX_LOOKUPS) return;
    this.looked.add(k);
    this.lookupTail = this.lookupTail.then(() => this.fetchSession(roomId, sessionId)).catch((err: unknown) => {
      if (!this.ctx.closed()) this.warn(`looking up a room key in the key backup failed: ${message(err)}`, err);
    });
  }

  private async fetchSession(roomId: string, sessionId: string): Promise<void> {
    const version = this.version;
    const key = this.decryptionKey;
    if (version === null || key === null || this.ctx.closed()) return;
    let data: unknown;
    try {
      data = await this.ctx.http.json('GET', `${KEYS_PATH}/${seg(roomId)}/${seg(sessionId)}`, { query: { version } });
    } catch (err) {
      if ((err as HalcyonError).errcode === 'M_NOT_FOUND') return; // not backed up (yet)
      throw err;
    }
    await this.importSessions(key, version, [{ roomId, sessionId, data }]);
  }

  /** The server's current backup version, or null when there is none. */
  async serverVersion(): Promise<ServerVersion | null> {
    let v: Record<string, unknown>;
    try {
      v = await this.ctx.http.json('GET', VERSION_PATH);
    } catch (err) {
      if ((err as HalcyonError).errcode === 'M_NOT_FOUND') return null;
      throw err;
    }
    const authData = (typeof v.auth_data === 'object' && v.auth_data !== null ? v.auth_data : {}) as Record<string, unknown>;
    if (typeof v.version !== 'string') throw new HalcyonError('HALCYON_BAD_RESPONSE', 'GET /room_keys/version: the answer has no version');
    return { version: v.version, algorithm: String(v.algorithm), publicKey: typeof authData.public_key === 'string' ? authData.public_key : null };
  }

  /**
   * Creates a new backup version with a new key (signed by the device and, once cross-signing is set up, the
   * master key, so other devices trust it) and keeps the key in the store. It becomes the server's current version.
   */
  async create(): Promise<BackupKey> {
    const { machine, queue, http } = this.ctx;
    const key = this.ctx.W.BackupDecryptionKey.createRandomKey();
    const keyBase64 = key.toBase64();
    const authData = { public_key: key.megolmV1PublicKey.publicKeyBase64 };
    // Canonical JSON of an object with one string member is JSON.stringify's output.
    const signatures = JSON.parse((await queue.run(() => machine.sign(JSON.stringify(authData)), 'high')).asJSON()) as unknown;
    const res = await http.json<{ version?: unknown }>('POST', VERSION_PATH, { body: { algorithm: BACKUP_ALGORITHM, auth_data: { ...authData, signatures } } });
    if (typeof res.version !== 'string') throw new HalcyonError('HALCYON_BAD_RESPONSE', 'POST /room_keys/version: the answer has no version');
    const version = res.version;
    await queue.run(() => machine.saveBackupDecryptionKey(this.ctx.W.BackupDecryptionKey.fromBase64(keyBase64), version), 'high');
    return { version, keyBase64 };
  }

  /** The backup key in the store, if it is the key of the server's current version; else null. */
  async current(): Promise<BackupKey | null> {
    const keys = await this.ctx.queue.run(() => this.ctx.machine.getBackupKeys(), 'high');
    const keyBase64 = keys.decryptionKey?.toBase64();
    const version = keys.backupVersion;
    if (!keyBase64 || !version) return null;
    const current = await this.serverVersion();
    const publicKey = this.ctx.W.BackupDecryptionKey.fromBase64(keyBase64).megolmV1PublicKey.publicKeyBase64;
    return current?.version === version && current.publicKey === publicKey ? { version, keyBase64 } : null;
  }

  /**
   * Adopts `keyBase64` (from secret storage) if it is the key of the server's current version, and imports every
   * room key of that version; resolves with the version and the count imported, or null when the server has no
   * backup of this key (reported).
   */
  async restoreAll(secret: string): Promise<{ version: string; importedKeys: number } | null> {
    const bytes = fromBase64(secret);
    if (!bytes || bytes.length !== 32) throw new HalcyonError('HALCYON_SECRET_STORAGE', 'the backup key in secret storage is not 32 bytes of base64');
    const keyBase64 = toBase64(bytes);
    const current = await this.serverVersion();
    if (!current) return null;
    const publicKey = this.ctx.W.BackupDecryptionKey.fromBase64(keyBase64).megolmV1PublicKey.publicKeyBase64;
    if (current.algorithm !== BACKUP_ALGORITHM || current.publicKey !== publicKey) {
      this.warn(`the key backup was not restored: its current version ${current.version} is not the backup of the key in secret storage`);
      return null;
    }
    const { machine, queue, http } = this.ctx;
    await queue.run(() => machine.saveBackupDecryptionKey(this.ctx.W.BackupDecryptionKey.fromBase64(keyBase64), current.version), 'high');
    const all = await http.json<{ rooms?: unknown }>('GET', KEYS_PATH, { query: { version: current.version }, maxBytes: RESTORE_MAX_BYTES, timeoutMs: RESTORE_TIMEOUT_MS });
    const sessions: Array<{ roomId: string; sessionId: string; data: unknown }> = [];
    for (const [roomId, room] of Object.entries(objectOr(all.rooms))) {
      for (const [sessionId, data] of Object.entries(objectOr(objectOr(room).sessions))) sessions.push({ roomId, sessionId, data });
    }
    let imported = 0;
    for (let i = 0; i < sessions.length; i += IMPORT_CHUNK) imported += await this.importSessions(keyBase64, current.version, sessions.slice(i, i + IMPORT_CHUNK));
    return { version: current.version, importedKeys: imported };
  }

  /** Decrypts backed-up sessions and imports them; ones that do not decrypt are skipped. Resolves with the count imported. */
  private async importSessions(keyBase64: string, version: string, sessions: Array<{ roomId: string; sessionId: string; data: unknown }>): Promise<number> {
    const key = this.ctx.W.BackupDecryptionKey.fromBase64(keyBase64);
    const byRoom = new Map<string, Map<string, unknown>>();
    let undecryptable = 0;
    for (const s of sessions) {
      const d = objectOr(objectOr(s.data).session_data);
      try {
        const clear = JSON.parse(key.decryptV1(String(d.ephemeral), String(d.mac), String(d.ciphertext))) as unknown;
        if (typeof clear !== 'object' || clear === null) throw new Error('not an object');
        let room = byRoom.get(s.roomId);
        if (!room) byRoom.set(s.roomId, (room = new Map()));
        room.set(s.sessionId, clear);
      } catch {
        undecryptable++;
      }
    }
    if (undecryptable > 0) this.warn(`${undecryptable} room key(s) of key backup version ${version} did not decrypt with its key and were skipped`);
    if (byRoom.size === 0) return 0;
    const map = new Map([...byRoom].map(([roomId, m]) => [new this.ctx.W.RoomId(roomId), m] as const));
    const res = await this.ctx.queue.run(() => this.ctx.machine.importBackedUpRoomKeys(map, () => {}, version), 'low');
    return res.importedCount;
  }

  /** The enabled backup's version and key counts, or null when backup is off. */
  async status(): Promise<KeyBackupStatus | null> {
    const version = this.version;
    if (version === null) return null;
    const counts = await this.ctx.queue.run(() => this.ctx.machine.roomKeyCounts(), 'low');
    return { version, backedUpKeys: counts.backedUp, totalKeys: counts.total };
  }

  private warn(text: string, cause?: unknown): void {
    if (this.ctx.closed()) return;
    this.ctx.report(new HalcyonError('HALCYON_KEY_BACKUP', text, cause === undefined ? {} : { cause }));
  }
}

function objectOr(v: unknown): Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : {};
}

function message(err: unknown): string {
  return err instanceof Error ? err.message : String((err as { description?: unknown })?.description ?? err);
}
