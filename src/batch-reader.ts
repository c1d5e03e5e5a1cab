/**
 * The reader of a batch's event columns (see `EventColumns` in protocol.ts): the one place that decodes an event's
 * fields from the body bytes and the offset table. Used on main (handler objects read through it) and by the
 * actors that build batches (the crypto actor maps decrypted events to their slots).
 */
import { EVENT_FLAGS, type MatrixEvent, OFF, OFFSET_STRIDE, type WireBatch } from './protocol.ts';

/**
 * Buffer's own Latin-1 slice, called directly. `toString('latin1', s, e)` gives the same string through an encoding
 * look-up; with it and the UTF-8 decode, the event ID and sender a handler reads cost main ~0.06 µs per event more
 * (bench/breakdown.ts `deliver`). Not in Node's documentation, but on Buffer.prototype since Node 0.x and called so
 * by undici too (`utf8Slice`); should it ever go, `toString` stands in.
 */
const latin1: (buf: Buffer, s: number, e: number) => string =
  typeof (Buffer.prototype as { latin1Slice?: unknown }).latin1Slice === 'function'
    ? (buf, s, e) => (buf as Buffer & { latin1Slice(s: number, e: number): string }).latin1Slice(s, e)
    : (buf, s, e) => buf.toString('latin1', s, e);

/**
 * Reads the events of one batch from its body bytes. Fields are decoded on demand: an event nobody looks at
 * costs nothing on this thread. Event objects keep the batch's body alive while they are referenced.
 */
export class BatchReader {
  private readonly buf: Buffer;
  /** @internal */
  constructor(readonly batch: WireBatch) {
    const body = batch.body;
    this.buf = Buffer.from(body.buffer, body.byteOffset, body.byteLength);
  }
  /** Decodes the string field at `slot` of event `i`, or null when the event has none. */
  str(i: number, slot: number): string | null {
    const ev = this.batch.events;
    const o = ev.offsets;
    const s = o[i * OFFSET_STRIDE + slot]!;
    if (s < 0) return null;
    const e = o[i * OFFSET_STRIDE + slot + 1]!;
    if (ev.flags[i]! & EVENT_FLAGS.escaped(slot)) return JSON.parse(this.buf.toString('utf8', s, e)) as string;
    // The two strings every handler reads, known to be ASCII (the sync actor saw every byte): Latin-1 is the same text.
    if (ev.asciiIds === true && (slot === OFF.eventId || slot === OFF.sender)) return latin1(this.buf, s + 1, e - 1);
    return this.buf.toString('utf8', s + 1, e - 1);
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
