/**
 * The room mirror: main's copy of every room's summary (name, topic, encryption, member counts, membership),
 * kept current by each batch's summaries from the cache actor, so a handler reads `message.room.name` without an
 * actor call; the `Room` handles over it; and the `waitForRoom` waiters it wakes.
 */
import { HalcyonError } from '../errors.ts';
import { Room, type RoomActions } from '../events.ts';
import type { RoomSummary } from '../protocol.ts';

/** Summaries of rooms the bot is not joined to (invites, rooms left) kept on main. */
export const MAX_OTHER_ROOMS = 1_000;
/** Room handles kept for reuse (one per room handlers see; recreated on demand past this). */
const MAX_ROOM_HANDLES = 10_000;

/** Main's room summaries and handles; see the module comment. */
export class RoomMirror {
  readonly summaries = new Map<string, RoomSummary>();
  private readonly handles = new Map<string, Room>();
  /** Rooms in {@link summaries} the bot is not joined to, oldest first (see set). */
  private readonly others = new Set<string>();
  private readonly waiters = new Map<string, Array<{ membership: string; resolve: () => void }>>();

  constructor(
    private readonly actions: RoomActions,
    /** The bot left a room (or was removed): per-room metric series go. */
    private readonly left: (roomId: string) => void,
  ) {}

  /**
   * Takes a summary and wakes `waitForRoom` callers. Joined rooms are as many as the server lets the bot join;
   * the others (invites, rooms left) are kept up to {@link MAX_OTHER_ROOMS}, oldest out first, so invite spam
   * cannot grow the mirror (or the room handles, or per-room metrics) without bound.
   */
  set(s: RoomSummary): void {
    this.summaries.set(s.roomId, s);
    this.others.delete(s.roomId);
    if (s.membership !== 'join') {
      this.others.add(s.roomId);
      if (s.membership !== 'invite' && s.membership !== 'knock') this.left(s.roomId);
      if (this.others.size > MAX_OTHER_ROOMS) {
        const oldest = this.others.values().next().value!;
        this.others.delete(oldest);
        this.summaries.delete(oldest);
        this.handles.delete(oldest);
      }
    }
    const list = this.waiters.get(s.roomId);
    if (!list) return;
    for (const w of list.filter((x) => x.membership === s.membership)) {
      list.splice(list.indexOf(w), 1);
      w.resolve();
    }
    if (list.length === 0) this.waiters.delete(s.roomId);
  }

  /** The room's summary, or undefined. */
  get(roomId: string): RoomSummary | undefined {
    return this.summaries.get(roomId);
  }

  /** Whether the bot is joined to the room, as the mirror knows. */
  joined(roomId: string): boolean {
    return this.summaries.get(roomId)?.membership === 'join';
  }

  /** Summaries of the joined rooms. */
  joinedRooms(): RoomSummary[] {
    return [...this.summaries.values()].filter((s) => s.membership === 'join');
  }

  /** A handle on a room (reused while it is kept; cheap to make again). */
  room(roomId: string): Room {
    let r = this.handles.get(roomId);
    if (!r) {
      r = new Room(roomId, this.summaries, this.actions);
      // Past the cap the oldest goes (a caller keeping one still has it).
      if (this.handles.size >= MAX_ROOM_HANDLES) this.handles.delete(this.handles.keys().next().value!);
      this.handles.set(roomId, r);
    }
    return r;
  }

  /** Resolves with the room's handle once its summary shows `membership`; `HALCYON_TIMEOUT` after `timeoutMs`. */
  waitFor(roomId: string, membership: RoomSummary['membership'], timeoutMs: number): Promise<Room> {
    if (this.summaries.get(roomId)?.membership === membership) return Promise.resolve(this.room(roomId));
    return new Promise<Room>((resolve, reject) => {
      const w = {
        membership,
        resolve: () => {
          clearTimeout(timer);
          resolve(this.room(roomId));
        },
      };
      const timer = setTimeout(() => {
        const list = this.waiters.get(roomId);
        list?.splice(list.indexOf(w), 1);
        reject(new HalcyonError('HALCYON_TIMEOUT', `room ${roomId} did not show membership ${membership} within ${timeoutMs} ms`, { roomId }));
      }, timeoutMs);
      let list = this.waiters.get(roomId);
      if (!list) this.waiters.set(roomId, (list = []));
      list.push(w);
    });
  }
}
