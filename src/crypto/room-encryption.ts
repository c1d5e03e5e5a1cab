/**
 * Which rooms are encrypted, with what, and the sharing settings their `m.room.encryption` content asks for. Part
 * of the crypto actor: setting a room's encryption is a machine call, so it runs in the actor's queue (the caller's
 * job when it comes from a sync batch, this module's when the server is asked).
 */
import type { HalcyonError } from '../errors.ts';
import { type MatrixHttp, seg } from '../http.ts';
import { free } from '../memory.ts';
import { type Database, kvGet, kvSetMany } from '../store.ts';
import type { Machine, Wasm } from './backup.ts';
import { safeJson } from './decrypted.ts';
import type { SerialQueue } from './queue.ts';
import type { HistoryVisibility } from './rooms.ts';

/** What the room settings need from their crypto actor. */
export interface RoomEncryptionContext {
  W: Wasm;
  machine: Machine;
  queue: SerialQueue;
  http: MatrixHttp;
  db: Database;
}

/** Rooms' encryption as the crypto store knows it; see the module comment. */
export class RoomEncryption {
  /** Rooms known not to be encrypted (asked the server); a later m.room.encryption event overrides. */
  private readonly plain = new Set<string>();

  constructor(private readonly ctx: RoomEncryptionContext) {}

  /** Records a room's `m.room.encryption` content (in the machine and the store). Call it in the actor's queue. */
  async set(roomId: string, content: Record<string, unknown>): Promise<void> {
    await this.setMany([{ roomId, content }]);
  }

  /**
   * {@link set} for a sync batch's rooms: the store's rows in one transaction (a first sync of many encrypted rooms
   * wrote two commits a room), those of the rooms the machine took even if a later one fails.
   */
  async setMany(rooms: ReadonlyArray<{ roomId: string; content: Record<string, unknown> }>): Promise<void> {
    const { W, machine, db } = this.ctx;
    const rows: Array<[string, string]> = [];
    try {
      for (const { roomId, content } of rooms) {
        this.plain.delete(roomId);
        const s = new W.RoomSettings();
        // Unknown algorithms still mark the room encrypted (plaintext is refused); megolm is all we can send.
        s.algorithm = W.EncryptionAlgorithm.MegolmV1AesSha2;
        if (typeof content.rotation_period_ms === 'number') s.sessionRotationPeriodMs = content.rotation_period_ms;
        if (typeof content.rotation_period_msgs === 'number') s.sessionRotationPeriodMessages = content.rotation_period_msgs;
        const room = new W.RoomId(roomId);
        await machine.setRoomSettings(room, s).finally(() => free(room, s));
        rows.push([`algorithm:${roomId}`, typeof content.algorithm === 'string' ? content.algorithm : 'unknown'], [`encryption:${roomId}`, JSON.stringify(content)]);
      }
    } finally {
      if (rows.length > 0) kvSetMany(db, rows);
    }
  }

  /** The room's encryption algorithm, or null if it is not encrypted; asks the server for a room not synced yet. */
  async algorithm(roomId: string): Promise<string | null> {
    const { db, http, queue } = this.ctx;
    const known = kvGet(db, `algorithm:${roomId}`);
    if (known !== undefined) return known;
    if (this.plain.has(roomId)) return null;
    // Not seen in a sync of this store (the room predates encryption support, or we have not synced it yet).
    try {
      const content = await http.json('GET', `/_matrix/client/v3/rooms/${seg(roomId)}/state/m.room.encryption/`);
      await queue.run(() => this.set(roomId, content), 'high');
      return kvGet(db, `algorithm:${roomId}`) ?? null;
    } catch (err) {
      if ((err as HalcyonError).errcode === 'M_NOT_FOUND') {
        this.plain.add(roomId);
        return null;
      }
      throw err;
    }
  }

  /**
   * Sharing settings: the room's history visibility, and the session rotation periods of its m.room.encryption
   * content. The caller frees them.
   */
  settings(roomId: string, visibility: HistoryVisibility): InstanceType<Wasm['EncryptionSettings']> {
    const { W, db } = this.ctx;
    const settings = new W.EncryptionSettings();
    settings.historyVisibility = historyVisibility(W, visibility);
    const content = safeJson(kvGet(db, `encryption:${roomId}`) ?? '{}') ?? {};
    if (typeof content.rotation_period_ms === 'number' && content.rotation_period_ms > 0) {
      settings.rotationPeriod = BigInt(Math.round(content.rotation_period_ms)) * 1000n; // microseconds
    }
    if (typeof content.rotation_period_msgs === 'number' && content.rotation_period_msgs > 0) {
      settings.rotationPeriodMessages = BigInt(Math.round(content.rotation_period_msgs));
    }
    return settings;
  }
}

function historyVisibility(W: Wasm, v: HistoryVisibility): InstanceType<Wasm['EncryptionSettings']>['historyVisibility'] {
  const H = W.HistoryVisibility;
  return v === 'invited' ? H.Invited : v === 'joined' ? H.Joined : v === 'shared' ? H.Shared : H.WorldReadable;
}
