/**
 * The reader of a batch's event columns (see `EventColumns` in protocol.ts): the one place that decodes an event's
 * fields from the body bytes and the offset table. Used on main (handler objects read through it) and by the
 * actors that build batches (the crypto actor maps decrypted events to their slots).
 */
import { EVENT_FLAGS, type MatrixEvent, OFF, OFFSET_STRIDE, type WireBatch } from './protocol.ts';

/**
 * Events per decoded piece of a batch's ID text (~60 KB): below V8's large-object size, so a piece is a young
 * string, where one text of a 10,000-event batch was a fresh large object each time (~0.3 ms of page faults and
 * copying, 0.03 µs per event), and a kept ID keeps its piece alive, not the whole text.
 */
const ID_CHUNK_BITS = 10;

/**
 * Reads the events of one batch from its body bytes. Fields are decoded on demand: an event nobody looks at
 * costs nothing on this thread. Event objects keep the batch's body alive while they are referenced; an event ID
 * or sender string kept keeps its piece of the batch's ID text (1,024 events' IDs, ~60 KB; see {@link str}).
 */
export class BatchReader {
  private readonly buf: Buffer;
  /** The batch's `ids` decoded, by chunks of 2^{@link ID_CHUNK_BITS} events, each at its first ID read. */
  private readonly idText: Array<string | undefined> = [];
  /** @internal */
  constructor(readonly batch: WireBatch) {
    const body = batch.body;
    this.buf = Buffer.from(body.buffer, body.byteOffset, body.byteLength);
  }
  /**
   * Decodes the string field at `slot` of event `i`, or null when the event has none. An event ID or sender of a
   * batch with ID columns is a substring of their text, decoded a piece at a time at the first read in it: V8
   * makes it a slice (a view on that piece, which it keeps alive) rather than a copy.
   */
  str(i: number, slot: number): string | null {
    const ev = this.batch.events;
    const o = ev.offsets;
    const s = o[i * OFFSET_STRIDE + slot]!;
    if (s < 0) return null;
    const e = o[i * OFFSET_STRIDE + slot + 1]!;
    if (ev.flags[i]! & EVENT_FLAGS.escaped(slot)) return JSON.parse(this.buf.toString('utf8', s, e)) as string;
    const ids = ev.ids;
    if (ids !== undefined && (slot === OFF.eventId || slot === OFF.sender)) {
      const idAt = ev.idAt!;
      const c = i >> ID_CHUNK_BITS;
      const from = idAt[2 * (c << ID_CHUNK_BITS)]!;
      const text = this.idText[c] ?? this.idChunk(c, from);
      const at = idAt[2 * i + (slot === OFF.sender ? 1 : 0)]! - from;
      return text.substring(at, at + e - s - 2);
    }
    return this.buf.toString('utf8', s + 1, e - 1);
  }
  /** Decodes chunk `c` of the batch's `ids`, whose first event's ID starts at `from`. */
  private idChunk(c: number, from: number): string {
    const ev = this.batch.events;
    const ids = ev.ids!;
    const next = (c + 1) << ID_CHUNK_BITS;
    const to = next < ev.count ? ev.idAt![2 * next]! : ids.byteLength;
    // ASCII (src/sync/ids.ts): Latin-1 is the same text, and a byte offset is a string index.
    return (this.idText[c] = Buffer.from(ids.buffer, ids.byteOffset + from, to - from).toString('latin1'));
  }
  /** The key of event `i`'s handler run (its ID; see `RunKeySource` in outbox.ts): its sends' transaction IDs derive from it. */
  runKey(i: number): string {
    return this.str(i, OFF.eventId) ?? '';
  }
  /** The JSON text of event `i`, as received. */
  rawText(i: number): string {
    const o = this.batch.events.offsets;
    return this.buf.toString('utf8', o[i * OFFSET_STRIDE + OFF.rawStart], o[i * OFFSET_STRIDE + OFF.rawEnd]);
  }
  /** Parses event `i`. */
  parse(i: number): MatrixEvent {
    return JSON.parse(this.rawText(i)) as MatrixEvent;
  }
  /** `origin_server_ts` of event `i`. */
  timestamp(i: number): number {
    return this.batch.events.ts[i]!;
  }
  /** The type of event `i`. */
  type(i: number): string {
    const ev = this.batch.events;
    return ev.strings[ev.type[i]!]!;
  }
  /** The relation type of event `i`, or null. */
  relType(i: number): string | null {
    const ev = this.batch.events;
    const k = ev.relType[i]!;
    return k < 0 ? null : ev.strings[k]!;
  }
}
