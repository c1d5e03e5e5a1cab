/**
 * Splits a /sync body, as its bytes arrive, into slices of its joined rooms and the rest, so that a big initial
 * sync is never held whole: neither its bytes (100 MB with 10,000 rooms) nor what processing them builds.
 *
 * The splitter only follows the bracket structure (strings, escapes, nesting) and cuts it without judging it:
 * each entry of `rooms.join` goes, byte for byte, into a slice, a small body of its own
 * (`{"next_batch":"","rooms":{"join":{…}}}`), and everything else, with `rooms.join` left as `{}`, into the rest.
 * Every byte of the body is in exactly one of them, and each is then processed (so validated) by
 * {@link processSync} like any body: a malformed body fails as it would whole, only later.
 */
import { collectYoungGeneration } from '../actors.ts';
import { HalcyonError } from '../errors.ts';
import { readBody } from '../http.ts';
import { type ProcessedSync, type ProcessOptions, processSync } from './process.ts';
import { BACKSLASH, CLOSE_ARR, CLOSE_OBJ, COLON, COMMA, MIN_WASM_BODY, OPEN_ARR, OPEN_OBJ, QUOTE } from './scan.ts';
import { reserve } from './skipper.ts';

const OBJ = 1;
const ARR = 2;

/** The index of byte `c` in `b[from, n)`, or `n`. */
function indexIn(b: Buffer, c: number, from: number, n: number): number {
  const k = b.indexOf(c, from);
  return k < 0 ? n : k;
}

/** A copy of `c[a, b)` with a buffer of its own. */
const copy = (c: Uint8Array, a: number, b: number): Uint8Array => new Uint8Array(c.subarray(a, b));

const SLICE_HEAD = Buffer.from('{"next_batch":"","rooms":{"join":{', 'utf8');
const SLICE_TAIL = Buffer.from('}}}', 'utf8');
const SEPARATOR = Buffer.from(',', 'utf8');

/** A slice is closed once its room entries add up to this many bytes: a few hundred rooms of a typical account. */
export const SLICE_BYTES = 512 * 1024;

/** See the module comment. */
export class JoinSplitter {
  /** Nesting depth outside the join object; the container types of the first three levels. */
  private depth = 0;
  private readonly types = [0, 0, 0, 0];
  /** The last member names read at depth 1 (top level) and 2 (in `rooms`); null when not plain names. */
  private readonly keys: Array<string | null> = [null, null, null];
  private keyPos = false;
  private inString = false;
  private escape = false;
  /** The next backslash at or after the cursor in the chunk being read (see stringEnd). */
  private backslash = -1;
  /** The member name being read at depth 1 or 2 (its bytes, in parts when it spans chunks), or null. */
  private keyParts: Uint8Array[] | null = null;
  /** Inside `rooms.join`: its depth (0 between entries); −1 outside. */
  private joinDepth = -1;
  private entryParts: Uint8Array[] = [];
  private entryContent = false;
  private entrySeparators = 0;
  private readonly rest: Uint8Array[] = [];
  private slice: Uint8Array[] = [];
  private sliceBytes = 0;
  private sliceRooms = 0;
  private readonly done: Uint8Array[] = [];

  constructor(private readonly maxSliceBytes = SLICE_BYTES) {}

  /** Takes the next bytes of the body; returns the slices they completed (bodies of joined rooms), in order. */
  push(chunk: Uint8Array): Uint8Array[] {
    let from = 0; // start of the bytes not yet given to the rest or the current entry
    const n = chunk.length;
    const buf = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    this.backslash = -1;
    for (let i = 0; i < n; i++) {
      if (this.inString) {
        i = this.stringEnd(buf, i, n);
        if (i === n) break;
        this.inString = false;
        if (this.keyParts) {
          this.endKey(copy(chunk, from, i));
          from = i; // the closing quote goes to the rest
        }
        continue;
      }
      const c = chunk[i]!;
      if (this.joinDepth >= 0) {
        if (c === CLOSE_OBJ && this.joinDepth === 0) {
          this.entryParts.push(chunk.subarray(from, i));
          this.endEntry(true);
          this.joinDepth = -1;
          from = i; // the closing bracket goes to the rest
          this.close();
          continue;
        }
        if (c === COMMA && this.joinDepth === 0) {
          this.entryParts.push(chunk.subarray(from, i));
          this.endEntry(false);
          from = i + 1;
          continue;
        }
        if (c !== 32 && c !== 10 && c !== 13 && c !== 9) this.entryContent = true;
        if (c === QUOTE) this.inString = true;
        else if (c === OPEN_OBJ || c === OPEN_ARR) this.joinDepth++;
        else if (c === CLOSE_OBJ || c === CLOSE_ARR) this.joinDepth--;
        continue;
      }
      if (c === QUOTE) {
        this.inString = true;
        if (this.keyPos && (this.depth === 1 || this.depth === 2) && this.types[this.depth] === OBJ) {
          this.rest.push(copy(chunk, from, i + 1));
          from = i + 1;
          this.keyParts = [];
        }
      } else if (c === OPEN_OBJ || c === OPEN_ARR) {
        this.depth++;
        if (this.depth <= 3) this.types[this.depth] = c === OPEN_OBJ ? OBJ : ARR;
        if (this.depth <= 2) this.keys[this.depth] = null;
        this.keyPos = c === OPEN_OBJ;
        if (this.depth === 3 && c === OPEN_OBJ && this.inJoinValue()) {
          // `rooms.join`: its bracket goes to the rest, its entries to the slices.
          this.rest.push(copy(chunk, from, i + 1));
          from = i + 1;
          this.joinDepth = 0;
          this.entrySeparators = 0;
        }
      } else if (c === CLOSE_OBJ || c === CLOSE_ARR) this.close();
      else if (c === COMMA) this.keyPos = this.depth <= 3 && this.types[this.depth] === OBJ;
      else if (c === COLON) this.keyPos = false;
    }
    if (from < n) {
      // An entry's bytes are views of the chunk, copied once when its slice is made (a chunk is held at most until
      // then); the rest's are copies, or it would hold every chunk of the body.
      if (this.joinDepth >= 0) this.entryParts.push(chunk.subarray(from));
      else if (this.keyParts) this.keyParts.push(copy(chunk, from, n));
      else this.rest.push(copy(chunk, from, n));
    }
    return this.done.splice(0);
  }

  /**
   * Ends the body: returns the slices not yet returned and the rest (the body with `rooms.join` emptied, to be
   * processed after the slices). A body cut off inside `rooms.join` leaves the rest unterminated, so it fails.
   */
  end(): { slices: Uint8Array[]; rest: Uint8Array } {
    this.flush();
    if (this.keyParts) this.rest.push(...this.keyParts);
    return { slices: this.done.splice(0), rest: Buffer.concat(this.rest) };
  }

  /**
   * Where the string the cursor is in ends in `buf[i, n)` (its closing quote), or `n`. The quote and the next
   * backslash are found by a native search, not byte by byte: most of a body's bytes are in strings. The
   * backslash is searched again only once passed.
   */
  private stringEnd(buf: Buffer, i: number, n: number): number {
    for (; i < n; i++) {
      if (this.escape) {
        this.escape = false;
        continue;
      }
      if (this.backslash < i) this.backslash = indexIn(buf, BACKSLASH, i, n);
      const quote = indexIn(buf, QUOTE, i, n);
      if (this.backslash >= quote) return quote;
      i = this.backslash;
      this.escape = true;
    }
    return n;
  }

  private close(): void {
    if (this.depth > 0) this.depth--;
    this.keyPos = false;
  }

  /** Whether the object opening now at depth 3 is the value of `rooms.join` (the `rooms` value being an object). */
  private inJoinValue(): boolean {
    return this.types[1] === OBJ && this.types[2] === OBJ && this.keys[1] === 'rooms' && this.keys[2] === 'join';
  }

  private endKey(last: Uint8Array): void {
    const parts = this.keyParts!;
    this.keyParts = null;
    parts.push(last);
    const bytes = Buffer.concat(parts);
    this.rest.push(bytes);
    let name: string | null;
    try {
      // An escaped name is decoded as the scanner decodes it; a malformed one fails there, in the rest.
      name = bytes.includes(BACKSLASH) ? (JSON.parse(`"${bytes.toString('utf8')}"`) as string) : bytes.toString('utf8');
    } catch {
      name = null;
    }
    this.keys[this.depth] = name;
  }

  /** One entry of `rooms.join` is complete (`last`: the object's closing bracket followed it). */
  private endEntry(last: boolean): void {
    const parts = this.entryParts;
    this.entryParts = [];
    const content = this.entryContent;
    this.entryContent = false;
    if (!content) {
      // `{}` (or white space alone) is an empty join; an empty entry between commas is not JSON.
      if (last && this.entrySeparators === 0) return;
      throw new HalcyonError('HALCYON_BAD_SYNC', 'malformed /sync body: an empty member in rooms.join');
    }
    if (!last) this.entrySeparators++;
    if (this.sliceRooms > 0) this.slice.push(SEPARATOR);
    for (const p of parts) {
      this.slice.push(p);
      this.sliceBytes += p.length;
    }
    this.sliceRooms++;
    if (this.sliceBytes >= this.maxSliceBytes) this.flush();
  }

  private flush(): void {
    if (this.sliceRooms === 0) return;
    this.done.push(Buffer.concat([SLICE_HEAD, ...this.slice, SLICE_TAIL]));
    this.slice = [];
    this.sliceBytes = 0;
    this.sliceRooms = 0;
  }
}

/**
 * A body announced smaller than this is read whole and processed in one piece: splitting costs a second walk over
 * the bytes and a cache transaction per 500 rooms (a 10 MB initial sync became ready ~0.5 s later), which pays
 * only where holding the whole body and its parsed state would cost hundreds of MB.
 */
export const STREAM_MIN_BYTES = 16 * 1024 * 1024;

/**
 * While a body is read whole (below {@link STREAM_MIN_BYTES}: a fresh start's initial sync), the young generation
 * is collected each time this many more bytes have arrived. Each socket read comes in a 64 KiB buffer of its own,
 * garbage once copied into the body; nothing else allocates on the sync worker meanwhile, so V8 did not collect
 * until the body was in, and a 10 MB initial sync left 10–13 MB of dead buffers in the process's peak RSS at cold
 * start. Collected every MiB (a scavenge with little alive: ~0.2 ms), their memory is reused by the next reads.
 * The first may also finish a full collection whose marking is under way (traced: a 7–10 ms pause, where V8 would
 * have finished it itself a moment later in ~2 ms); over 10 interleaved cold starts each, run()→ready did not move
 * (167.5 → 168.5 ms; 202 → 200.5 with encryption) and the peak fell 155.6 → 148.1 MB (219.9 → 211.3).
 */
export const COLLECT_EVERY_BYTES = 1024 * 1024;

/** Options of {@link processStream}. */
export interface StreamOptions extends ProcessOptions {
  /** Longest body accepted, bytes; past it `HALCYON_RESPONSE_TOO_LARGE`. */
  maxBytes: number;
  /** The answer's Content-Length (NaN: none): below {@link STREAM_MIN_BYTES} the body is processed whole. */
  contentLength?: number;
  /** Bytes of joined rooms per slice (default {@link SLICE_BYTES}). */
  sliceBytes?: number;
  /** Takes each slice's processing (joined rooms only) before the next bytes are read. */
  onSlice(slice: ProcessedSync): Promise<void>;
  /** Bytes between collections while a body is read whole (default {@link COLLECT_EVERY_BYTES}). */
  collectEvery?: number;
  /** Collects the young generation (default {@link collectYoungGeneration}: the worker's; nothing on main). */
  collectYoung?: () => void;
}

/**
 * Processes a /sync body as it is read: its joined rooms slice by slice ({@link JoinSplitter}), each handed to
 * `onSlice` before more is read, then the rest (next_batch, the other rooms, to-device events, ...), which it
 * returns with the body's size. Errors are {@link processSync}'s; a slice handed over stays handed over. A body
 * announced smaller than {@link STREAM_MIN_BYTES} is read whole instead, everything in the returned rest.
 */
export async function processStream(body: AsyncIterable<Uint8Array>, opts: StreamOptions): Promise<{ rest: ProcessedSync; bytes: number }> {
  if (opts.contentLength !== undefined && opts.contentLength >= 0 && opts.contentLength < STREAM_MIN_BYTES) {
    // Read straight into the scanner's WebAssembly memory: the body is not delivered (its timelines are not), so
    // it need not be transferable, and it is then never held twice (10 MB with 1,000 rooms).
    const into = (n: number): Uint8Array => (n >= MIN_WASM_BODY ? reserve(n) : null) ?? Buffer.allocUnsafeSlow(n);
    const every = opts.collectEvery ?? COLLECT_EVERY_BYTES;
    const collect = opts.collectYoung ?? collectYoungGeneration;
    let next = every;
    const progress = (at: number): void => {
      if (at < next) return;
      next = at - (at % every) + every;
      collect();
    };
    const whole = await readBody('GET /sync', body, String(opts.contentLength), opts.maxBytes, false, into, progress).catch((err: unknown) => {
      throw err instanceof HalcyonError ? err : new HalcyonError('HALCYON_HTTP', `GET /sync: ${(err as Error).message}`, { cause: err });
    });
    return { rest: processSync(whole, opts), bytes: whole.byteLength };
  }
  const splitter = new JoinSplitter(opts.sliceBytes);
  let bytes = 0;
  for await (const chunk of body) {
    bytes += chunk.byteLength;
    if (bytes > opts.maxBytes) throw new HalcyonError('HALCYON_RESPONSE_TOO_LARGE', `GET /sync: the answer is over ${bytes} bytes, more than the limit of ${opts.maxBytes}`);
    for (const slice of splitter.push(chunk)) await opts.onSlice(processSync(slice, opts));
  }
  const { slices, rest } = splitter.end();
  for (const slice of slices) await opts.onSlice(processSync(slice, opts));
  return { rest: processSync(rest, opts), bytes };
}
