/**
 * What the crypto actor knows of the encrypted rooms it sends into, to choose who gets a room key: who is joined
 * and who is only invited, and the room's history visibility. Member lists are fetched on a room's first send of
 * a run and then follow the membership changes of each sync; the visibility is kept in the crypto store, from the
 * syncs' state events or, for a room no sync of this store has shown, asked from the server once.
 */
import type { HalcyonError } from '../errors.ts';
import { type MatrixHttp, seg } from '../http.ts';
import type { CryptoSyncChanges, MatrixEvent } from '../protocol.ts';
import { type Database, kvGet, kvSet, kvSetMany } from '../store.ts';

/** A room's `history_visibility`, as the spec defines them. */
export type HistoryVisibility = 'invited' | 'joined' | 'shared' | 'world_readable';

/** The visibility a `history_visibility` value means: the spec's default, `shared`, when absent or not understood. */
export function toHistoryVisibility(v: unknown): HistoryVisibility {
  return v === 'invited' || v === 'joined' || v === 'world_readable' ? v : 'shared';
}

/** Who gets a room key for a message sent now, and the visibility that decided it. */
export interface Recipients {
  users: string[];
  visibility: HistoryVisibility;
  /** Members fetched from the server for this send (joined and invited): their devices must be tracked. */
  fetched: string[] | null;
}

/** Member lists and history visibility of the rooms the actor encrypts for; see the module comment. */
export class SharingRooms {
  /** Per room: each joined or invited member and which of the two. */
  private readonly members = new Map<string, Map<string, 'join' | 'invite'>>();

  constructor(
    private readonly db: Database,
    private readonly http: MatrixHttp,
  ) {}

  /**
   * Applies a batch's history visibility changes and membership changes (of rooms whose members are known; the
   * others are fetched on their first send), and drops the lists of rooms left. Returns the users who became
   * members of a known room, whose devices must be tracked.
   */
  apply(ch: Pick<CryptoSyncChanges, 'historyVisibility' | 'members' | 'left'>): string[] {
    if (ch.historyVisibility.length > 0) kvSetMany(this.db, ch.historyVisibility.map((v) => [`visibility:${v.roomId}`, toHistoryVisibility(v.visibility)]));
    const added = new Set<string>();
    for (const mc of ch.members) {
      const room = this.members.get(mc.roomId);
      if (!room) continue;
      if (mc.membership === 'join' || mc.membership === 'invite') {
        if (!room.has(mc.userId)) added.add(mc.userId);
        room.set(mc.userId, mc.membership);
      } else room.delete(mc.userId);
    }
    for (const r of ch.left) this.members.delete(r);
    return [...added];
  }

  /**
   * Who gets the room key of a message sent now: the joined members, and the invited ones too unless the room's
   * history is visible to joined members only (an invited user who joins later must not read what was sent
   * before). A member who is no longer in the list, or a new visibility, makes the engine start a new session.
   */
  async recipients(roomId: string): Promise<Recipients> {
    let room = this.members.get(roomId);
    let fetched: string[] | null = null;
    if (!room) {
      room = await this.fetchMembers(roomId);
      this.members.set(roomId, room);
      fetched = [...room.keys()];
    }
    const visibility = await this.visibility(roomId);
    const users: string[] = [];
    for (const [userId, membership] of room) if (membership === 'join' || visibility !== 'joined') users.push(userId);
    return { users, visibility, fetched };
  }

  private async visibility(roomId: string): Promise<HistoryVisibility> {
    const known = kvGet(this.db, `visibility:${roomId}`);
    if (known !== undefined) return toHistoryVisibility(known);
    let visibility: HistoryVisibility = 'shared';
    try {
      const content = await this.http.json<Record<string, unknown>>('GET', `/_matrix/client/v3/rooms/${seg(roomId)}/state/m.room.history_visibility/`);
      visibility = toHistoryVisibility(content.history_visibility);
    } catch (err) {
      if ((err as HalcyonError).errcode !== 'M_NOT_FOUND') throw err;
    }
    // A sync may have brought the state while the request ran: that one is newer.
    const meanwhile = kvGet(this.db, `visibility:${roomId}`);
    if (meanwhile !== undefined) return toHistoryVisibility(meanwhile);
    kvSet(this.db, `visibility:${roomId}`, visibility);
    return visibility;
  }

  private async fetchMembers(roomId: string): Promise<Map<string, 'join' | 'invite'>> {
    const res = await this.http.json<{ chunk?: MatrixEvent[] }>('GET', `/_matrix/client/v3/rooms/${seg(roomId)}/members`, { query: { not_membership: 'leave' } });
    const room = new Map<string, 'join' | 'invite'>();
    for (const ev of res.chunk ?? []) {
      const membership = ev.content?.membership;
      if ((membership === 'join' || membership === 'invite') && typeof ev.state_key === 'string') room.set(ev.state_key, membership);
    }
    return room;
  }
}
