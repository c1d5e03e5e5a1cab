/**
 * The ID columns of a batch ({@link EventColumns.ids}, {@link EventColumns.idAt}): the bytes of every event's
 * event_id and sender, gathered back to back by the thread that scanned the body. Main then decodes them with one
 * call per batch and hands out substrings (`BatchReader.str`), where it decoded each string from the body: two
 * decodes per event for a handler reading both, each touching the body's bytes for the first time on that thread,
 * were ~40% of main's work per event (bench/breakdown.ts `deliver`, 100 × 100: 0.27–0.29 → 0.19–0.26 µs per
 * event). Only for batches whose IDs are all ASCII: there a byte is one UTF-16 code unit, so the offsets in `ids`
 * are those in the decoded text.
 * @module
 */
import { type EventColumns, OFF, OFFSET_STRIDE } from '../protocol.ts';
import type { Scanner } from './scan.ts';
import { holds, memoryBytes } from './skipper.ts';

/** The two string slots gathered, in their order in `ids`. */
const SLOTS = [OFF.eventId, OFF.sender] as const;

/**
 * Copies `src`'s bytes [from, to) to `dst` at `at`; returns the bytes OR-ed together (0x80 set: one is not ASCII).
 * A loop, not set(subarray()): ~30 bytes a string, where a view and a call into the runtime cost more.
 */
function copyBytes(src: Uint8Array, from: number, to: number, dst: Uint8Array, at: number): number {
  let high = 0;
  for (let p = from; p < to; p++) high |= dst[at++] = src[p]!;
  return high;
}

/**
 * The ID columns of `ev` (whose offsets point into `body`), or null when a byte of an ID is 0x80 or above, or the
 * batch has no events. An escaped ID's raw bytes are gathered too (keeping the offsets simple); its reader decodes
 * it from the body with its escapes (see EVENT_FLAGS.escaped).
 */
export function gatherIds(body: Uint8Array, ev: EventColumns): Pick<EventColumns, 'ids' | 'idAt'> | null {
  const n = ev.count;
  if (n === 0) return null;
  const o = ev.offsets;
  let total = 0;
  for (let i = 0; i < n; i++) {
    for (const slot of SLOTS) {
      const s = o[i * OFFSET_STRIDE + slot]!;
      if (s >= 0) total += o[i * OFFSET_STRIDE + slot + 1]! - s - 2; // the token without its quotes
    }
  }
  // Each its own buffer: both are transferred to main.
  const ids = new Uint8Array(total);
  const idAt = new Int32Array(2 * n);
  let at = 0;
  let high = 0;
  for (let i = 0; i < n; i++) {
    for (let k = 0; k < 2; k++) {
      idAt[2 * i + k] = at;
      const slot = SLOTS[k]!;
      const s = o[i * OFFSET_STRIDE + slot]!;
      if (s < 0) continue;
      const e = o[i * OFFSET_STRIDE + slot + 1]! - 1;
      high |= copyBytes(body, s + 1, e, ids, at);
      at += e - s - 1;
    }
  }
  return high < 0x80 ? { ids, idAt } : null;
}

/** `ev` with its ID columns, as {@link gatherIds} makes them (none when it makes none). */
export function withIds(body: Uint8Array, ev: EventColumns): EventColumns {
  const cols = gatherIds(body, ev);
  return cols ? { ...ev, ...cols } : ev;
}

/**
 * Gathers a body's ID columns while it is scanned: the WebAssembly event reader copies an event's IDs into the room
 * after the body in the skipper's memory (scan.ts `idRoomAt`) with 16-byte moves (~0.05 µs per event less than
 * {@link gatherIds}' JS copy after the scan); an event the JS reader read is copied here. Gives up (its
 * {@link finish} is null, and the caller gathers after the scan) when the body is not in the skipper, or another
 * body took the skipper's memory meanwhile.
 */
export class IdGather {
  private room: { load: number; at: number } | null | undefined;
  private n = 0;
  private at = 0;
  private idAt: Int32Array;
  private failed = false;

  constructor(capacity: number) {
    this.idAt = new Int32Array(2 * Math.max(capacity, 1));
  }

  /**
   * Where the WebAssembly reader copies the next event's IDs (an address), or -1 for nowhere: also once another
   * body took the skipper's memory (the scanner's own then comes back with a new load, maybe in a new memory).
   */
  dst(sc: Scanner): number {
    const room = this.roomOf(sc);
    return room === null || this.failed || !holds(room.load) ? -1 : room.at + this.at;
  }

  /** The event with offsets `o` went into the columns; `copied`: the WebAssembly reader copied its IDs to {@link dst}. */
  keep(sc: Scanner, o: Int32Array, copied: boolean): void {
    const room = this.roomOf(sc);
    const idS = o[OFF.eventId]!;
    const senderS = o[OFF.sender]!;
    if (this.failed || room === null || !holds(room.load) || idS < 0 || senderS < 0) {
      this.failed = true;
      return;
    }
    const idLen = o[OFF.eventId + 1]! - idS - 2;
    const senderLen = o[OFF.sender + 1]! - senderS - 2;
    if (!copied) {
      copyBytes(sc.b, idS + 1, idS + 1 + idLen, memoryBytes, room.at + this.at);
      copyBytes(sc.b, senderS + 1, senderS + 1 + senderLen, memoryBytes, room.at + this.at + idLen);
    }
    if (2 * this.n + 2 > this.idAt.length) {
      const more = new Int32Array(this.idAt.length * 2);
      more.set(this.idAt);
      this.idAt = more;
    }
    this.idAt[2 * this.n] = this.at;
    this.idAt[2 * this.n + 1] = this.at + idLen;
    this.at += idLen + senderLen;
    this.n++;
  }

  /** The room for the IDs, asked of the scanner once (null: the body is not in the skipper, or has none). */
  private roomOf(sc: Scanner): { load: number; at: number } | null {
    if (this.room === undefined) this.room = sc.idRoomAt();
    return this.room;
  }

  /** The ID columns of the `count` events kept, or null (see the class comment). */
  finish(count: number): Pick<EventColumns, 'ids' | 'idAt'> | null {
    const room = this.room;
    if (this.failed || !room || !holds(room.load) || this.n !== count || count === 0) return null;
    return { ids: memoryBytes.slice(room.at, room.at + this.at), idAt: this.idAt.slice(0, 2 * count) };
  }
}
