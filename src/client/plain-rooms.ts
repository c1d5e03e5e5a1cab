/**
 * What a send with encryption off knows without asking the cache actor again. A send into a joined room must not go
 * out in the clear if the room is encrypted, and main's summary mirror may lag the cache by a batch or more, so
 * each send asked the cache (an actor round trip: 0.3–0.4 ms per send against Synapse, the sync worker often busy
 * with the previous send's echo). The cache actor now counts the rooms it has made encrypted, in shared memory:
 * an answer "joined and not encrypted" holds while that count has not moved since just before it was asked, so the
 * check stays as strict as asking, without asking again.
 */

/** Rooms remembered; past it the oldest answer goes (a bot sending into more rooms asks again, as before). */
const MAX_ROOMS = 10_000;

/** The cache's "not encrypted" answers for one actor set, and its count of rooms made encrypted. */
export class PlainRoomMemo {
  /** The cache actor's count of rooms it made encrypted (index 0), shared with it (CacheConfig.encryptedRooms). */
  readonly counter = new Int32Array(new SharedArrayBuffer(4));
  /** Room → the count just before the cache said it was joined and not encrypted. */
  private readonly rooms = new Map<string, number>();

  /** The count to remember an answer with: read before the cache is asked, so a change while it answers is caught. */
  now(): number {
    return Atomics.load(this.counter, 0);
  }

  /** Whether the cache said `roomId` was joined and not encrypted, and no room has become encrypted since. */
  plain(roomId: string): boolean {
    const at = this.rooms.get(roomId);
    return at !== undefined && at === this.now();
  }

  /** The cache said `roomId` is joined and not encrypted; `at` is {@link now} from before it was asked. */
  remember(roomId: string, at: number): void {
    this.rooms.delete(roomId);
    this.rooms.set(roomId, at);
    if (this.rooms.size > MAX_ROOMS) this.rooms.delete(this.rooms.keys().next().value!);
  }
}
