/**
 * A validating JSON scanner that walks a /sync body's UTF-8 bytes without building objects.
 *
 * Why: `JSON.parse` of a whole body and then re-serialising or cloning each event to hand it to another thread
 * costs more than the parse itself. Scanning the bytes lets the sync actor find each timeline event's extent and
 * read only the few fields it routes on; the body's buffer is then transferred to main as is (zero-copy) with an
 * offset table, and main decodes an event only when a handler reads it. Skipped values are validated to the
 * JSON grammar, so any span it hands out is guaranteed to `JSON.parse` (a differential test holds it to that).
 * Bytes of 0x80 and above are accepted inside strings and decoded as UTF-8 (invalid sequences become U+FFFD).
 *
 * The string and value skips run in WebAssembly with SIMD (src/sync/skipper.ts) over a copy of the body, made on
 * the first skip of a body of {@link MIN_WASM_BODY} bytes or more; the JS skips below stay the reference: they
 * run for small bodies, and redo any skip the WebAssembly one did not finish, to throw the ScanError.
 */
import { FLAG_BITS, FLAGS, holds, idRegion, keySpan, load, keyToken as wasmKeyToken, readEvent as wasmReadEvent, skipString as wasmSkipString, skipValue as wasmSkipValue } from './skipper.ts';

/** Thrown when the bytes are not valid JSON at `pos`. */
export class ScanError extends Error {
  constructor(
    message: string,
    readonly pos: number,
  ) {
    super(`${message} at offset ${pos}`);
  }
}

/** JSON's structural bytes (also read by the initial sync's splitter, src/sync/split.ts). */
export const OPEN_OBJ = 123; // {
/** `}` */
export const CLOSE_OBJ = 125;
/** `[` */
export const OPEN_ARR = 91;
/** `]` */
export const CLOSE_ARR = 93;
/** `"` */
export const QUOTE = 34;
/** `\\` */
export const BACKSLASH = 92;
/** `,` */
export const COMMA = 44;
/** `:` */
export const COLON = 58;
const MINUS = 45;

/** A member name to match without decoding it: its UTF-8 bytes. */
export type KeyBytes = Uint8Array;

/** Encodes member names once, for {@link Scanner.keyIs}. */
export function keyBytes(name: string): KeyBytes {
  return Buffer.from(name, 'utf8');
}

/** Member names {@link Scanner.keyOf} recognises by their bytes, each with its string (made once). */
export type KeyNames = ReadonlyArray<{ bytes: KeyBytes; name: string }>;

/** Encodes member names once, for {@link Scanner.keyOf}. */
export function keyNames(...names: string[]): KeyNames {
  return names.map((name) => ({ bytes: keyBytes(name), name }));
}

/** Cursor over JSON bytes; every read validates what it passes. */
export class Scanner {
  readonly b: Buffer;
  i = 0;
  /** Whether the last string read or skipped contained an escape. */
  escaped = false;
  /** Whether the last string read or skipped contained a byte >= 0x80. */
  wide = false;
  /** Token bounds (quotes included) of the last member name read by {@link keyToken}. */
  ks = 0;
  ke = 0;
  /** Where the last member name's value starts if it is a string keyToken skipped already, and that skip's result. */
  private valueAt = -1;
  private valueSkip = 0;
  /** The id of this body's copy in the skipper's memory (see {@link inWasm}); 0 before the first skip, -1 for none. */
  private wasmId = 0;

  /** `idRoom`: the body's copy in the skipper's memory gets room for its events' IDs ({@link idRegion}). */
  constructor(
    bytes: Uint8Array,
    private readonly idRoom = false,
  ) {
    this.b = Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  /** Skips white space and returns the next byte (NaN at end of input). */
  peek(): number {
    const b = this.b;
    const n = b.length;
    let i = this.i;
    while (i < n) {
      const c = b[i]!;
      if (c === 32 || c === 10 || c === 13 || c === 9) i++;
      else {
        this.i = i;
        return c;
      }
    }
    this.i = i;
    return NaN;
  }

  /** True if the next value is an object. */
  atObject(): boolean {
    return this.peek() === OPEN_OBJ;
  }
  /** True if the next value is an array. */
  atArray(): boolean {
    return this.peek() === OPEN_ARR;
  }
  /** True if the next value is a string. */
  atString(): boolean {
    return this.peek() === QUOTE;
  }
  /** True if the next value is a number. */
  atNumber(): boolean {
    const c = this.peek();
    return c === MINUS || (c >= 48 && c <= 57);
  }

  /** Throws a {@link ScanError} at the cursor. */
  fail(what: string): never {
    throw new ScanError(what, this.i);
  }

  /** Consumes `{`; iterate members with {@link key} or {@link keyToken}. */
  openObject(): void {
    if (this.peek() !== OPEN_OBJ) this.fail('expected an object');
    this.i++;
  }

  /**
   * Reads the next member name of the open object (into `ks`/`ke`) and its colon, returning true; or consumes
   * `}` and returns false. `first` is true for the first call after {@link openObject}. No string is made.
   */
  keyToken(first: boolean): boolean {
    if (this.inWasm()) {
      const r = wasmKeyToken(this.i, first ? 1 : 0);
      if (r >= 0) {
        this.i = r >> FLAG_BITS;
        if ((r & FLAGS.closed) !== 0) return false;
        this.setFlags(r);
        this.ks = keySpan[0]!;
        this.ke = keySpan[1]!;
        this.valueAt = keySpan[2]!;
        this.valueSkip = keySpan[3]!;
        return true;
      }
    }
    return this.keyTokenJs(first);
  }

  /** {@link keyToken} in JS. */
  private keyTokenJs(first: boolean): boolean {
    let c = this.peek();
    if (c === CLOSE_OBJ) {
      this.i++;
      return false;
    }
    if (!first) {
      if (c !== COMMA) this.fail('expected , or }');
      this.i++;
      c = this.peek();
    }
    if (c !== QUOTE) this.fail('expected a member name');
    this.ks = this.i;
    this.i = this.skipString(this.i);
    this.ke = this.i;
    if (this.peek() !== COLON) this.fail('expected :');
    this.i++;
    return true;
  }

  /** True if the last member name equals `key` (an unescaped name; escaped names never match). */
  keyIs(key: KeyBytes): boolean {
    const s = this.ks + 1;
    const len = this.ke - 1 - s;
    if (len !== key.length) return false;
    const b = this.b;
    for (let k = 0; k < len; k++) if (b[s + k] !== key[k]) return false;
    return true;
  }

  /** Like {@link keyToken}, but decodes the name: for the outer levels of a body, where names are room IDs. */
  key(first: boolean): string | null {
    return this.keyToken(first) ? this.decode(this.ks, this.ke) : null;
  }

  /**
   * Like {@link key}, but a name among `names` comes back as its own string, not decoded again: a body's
   * structural names (`timeline`, `events`, ...) repeat in every room. Any other name, or an escaped one, is
   * decoded as {@link key} does, so the result is the same.
   */
  keyOf(first: boolean, names: KeyNames): string | null {
    if (!this.keyToken(first)) return null;
    if (!this.escaped) for (let k = 0; k < names.length; k++) if (this.keyIs(names[k]!.bytes)) return names[k]!.name;
    return this.decode(this.ks, this.ke);
  }

  /**
   * Consumes the value at the cursor if its bytes are exactly `token` (a complete JSON value, e.g. `{"events":[]}`)
   * and returns true; else moves nothing (but white space) and returns false. Lets the common empty parts of a
   * body skip {@link readValue}'s decode and parse.
   */
  skipIf(token: Uint8Array): boolean {
    this.peek();
    const b = this.b;
    const i = this.i;
    const n = token.length;
    if (i + n > b.length) return false;
    for (let k = 0; k < n; k++) if (b[i + k] !== token[k]) return false;
    this.i = i + n;
    return true;
  }

  /** Consumes `[`; iterate items with {@link item}. */
  openArray(): void {
    if (this.peek() !== OPEN_ARR) this.fail('expected an array');
    this.i++;
  }

  /** Positions at the next item of the open array and returns true, or consumes `]` and returns false. */
  item(first: boolean): boolean {
    const c = this.peek();
    if (c === CLOSE_ARR) {
      this.i++;
      return false;
    }
    if (!first) {
      if (c !== COMMA) this.fail('expected , or ]');
      this.i++;
    }
    return true;
  }

  /** Reads a string value. */
  readString(): string {
    if (this.peek() !== QUOTE) this.fail('expected a string');
    const start = this.i;
    this.i = this.skipString(start);
    return this.decode(start, this.i);
  }

  /** Skips a string value and returns its token start (the quote); its end is `i`. */
  skipStringToken(): number {
    if (this.peek() !== QUOTE) this.fail('expected a string');
    const start = this.i;
    this.i = this.skipString(start);
    return start;
  }

  /** Decodes the string token [s, e) (quotes included) as the last skip left it. */
  decode(s: number, e: number): string {
    return this.decodeAs(s, e, this.escaped, this.wide);
  }

  /** Decodes the string token [s, e) (quotes included), whose skip found `escaped` and `wide` as given. */
  decodeAs(s: number, e: number, escaped: boolean, wide: boolean): string {
    // Plain ASCII strings (ids, types, keys: the common case) decode as latin1, the cheapest path.
    if (escaped) return JSON.parse(this.b.toString('utf8', s, e)) as string;
    return this.b.toString(wide ? 'utf8' : 'latin1', s + 1, e - 1);
  }

  /**
   * The skipper's load of this body (see skipper.ts `holds`) and the address of the room for its event IDs there
   * (see skipper.ts `load`), or null when the body is not in the skipper or has no such room.
   */
  idRoomAt(): { load: number; at: number } | null {
    return this.idRoom && this.inWasm() && idRegion >= 0 ? { load: this.wasmId, at: idRegion } : null;
  }

  /**
   * Reads the event object at the cursor (after white space) in WebAssembly, its routing fields into the
   * skipper's event record (src/sync/skipper.ts): true with the cursor after it, or false with the cursor
   * unchanged when the body is not in the skipper or the event needs the JS reader (src/sync/timeline.ts). With
   * `dst` (an address in the skipper's memory), its event ID and sender bytes are copied there (src/sync/ids.ts).
   */
  readEventFast(dst = -1): boolean {
    if (!this.inWasm()) return false;
    const r = wasmReadEvent(this.i, dst);
    if (r < 0) return false;
    this.i = r;
    return true;
  }

  /** Reads a number value. */
  readNumber(): number {
    this.peek();
    const start = this.i;
    // Timestamps are plain integers of up to 15 digits, no leading zero: their digits add up as they are
    // validated, in one pass and with no string made. Anything else is skipped, then parsed by Number.
    const b = this.b;
    let k = start;
    let v = 0;
    let c = b[k];
    if (c !== undefined && c >= 49 && c <= 57) {
      do v = v * 10 + (c - 48);
      while ((c = b[++k]) !== undefined && c >= 48 && c <= 57 && k - start < 15);
      if (!(c !== undefined && ((c >= 48 && c <= 57) || c === 46 || c === 101 || c === 69))) {
        this.i = k;
        return v;
      }
    }
    this.i = this.skipNumber(start);
    return Number(b.toString('latin1', start, this.i));
  }

  /** Reads any value by validating it and parsing its bytes (for the small parts of a body). */
  readValue(): unknown {
    const start = this.skipValue();
    return JSON.parse(this.b.toString('utf8', start, this.i));
  }

  /** Validates and skips any value; returns the start offset (after white space) of the value skipped. */
  skipValue(): number {
    this.peek();
    const begin = this.i;
    if (this.inWasm()) {
      const r = begin === this.valueAt ? this.valueSkip : wasmSkipValue(begin);
      if (r >= 0) {
        if ((r & FLAGS.string) !== 0) this.setFlags(r);
        this.i = r >> FLAG_BITS;
        return begin;
      }
    }
    return this.skipValueJs(begin);
  }

  /** {@link skipValue} in JS, from `begin` (after white space). */
  private skipValueJs(begin: number): number {
    const b = this.b;
    let i = begin;
    // An explicit stack (1 object, 2 array) instead of recursion: a hostile body of nested brackets must
    // produce a ScanError, not a stack overflow.
    const stack: number[] = [];
    for (;;) {
      i = ws(b, i);
      const c = b[i];
      if (c === OPEN_OBJ) {
        i = ws(b, i + 1);
        if (b[i] === CLOSE_OBJ) i++;
        else {
          stack.push(1);
          i = this.memberName(i);
          continue;
        }
      } else if (c === OPEN_ARR) {
        i = ws(b, i + 1);
        if (b[i] === CLOSE_ARR) i++;
        else {
          stack.push(2);
          continue;
        }
      } else if (c === QUOTE) i = this.skipString(i);
      else if (c === MINUS || (c !== undefined && c >= 48 && c <= 57)) i = this.skipNumber(i);
      else if (c === 116 && b[i + 1] === 114 && b[i + 2] === 117 && b[i + 3] === 101) i += 4; // true
      else if (c === 102 && b[i + 1] === 97 && b[i + 2] === 108 && b[i + 3] === 115 && b[i + 4] === 101) i += 5; // false
      else if (c === 110 && b[i + 1] === 117 && b[i + 2] === 108 && b[i + 3] === 108) i += 4; // null
      else throw new ScanError(c === undefined ? 'unexpected end of input' : 'unexpected character', i);
      // A value is complete: close containers until one expects another member or item.
      for (;;) {
        if (stack.length === 0) {
          this.i = i;
          return begin;
        }
        i = ws(b, i);
        const d = b[i];
        const top = stack[stack.length - 1];
        if (d === COMMA) {
          i++;
          if (top === 1) i = this.memberName(ws(b, i));
          break;
        }
        if ((top === 1 && d === CLOSE_OBJ) || (top === 2 && d === CLOSE_ARR)) {
          stack.pop();
          i++;
          continue;
        }
        throw new ScanError(d === undefined ? 'unexpected end of input' : 'expected , or a closing bracket', i);
      }
    }
  }

  /** Checks that only white space follows. */
  end(): void {
    if (!Number.isNaN(this.peek())) this.fail('unexpected data after the JSON value');
  }

  private memberName(i: number): number {
    if (this.b[i] !== QUOTE) throw new ScanError('expected a member name', i);
    i = ws(this.b, this.skipString(i));
    if (this.b[i] !== COLON) throw new ScanError('expected :', i);
    return i + 1;
  }

  /**
   * Whether this body is in the skipper's memory, copying it there on the first call if it is big enough: a small
   * body (a single token's scanner) would pay more for the copy than it saves.
   */
  private inWasm(): boolean {
    const id = this.wasmId;
    if (id > 0 && holds(id)) return true;
    if (id < 0) return false;
    this.wasmId = this.b.length >= MIN_WASM_BODY ? load(this.b, this.idRoom) : -1;
    return this.wasmId > 0;
  }

  /** Sets {@link escaped} and {@link wide} from a WebAssembly skip's result. */
  private setFlags(r: number): void {
    this.escaped = (r & FLAGS.escaped) !== 0;
    this.wide = (r & FLAGS.wide) !== 0;
  }

  /** Skips the string starting at `i` (a quote) and returns the offset after its closing quote. */
  private skipString(i: number): number {
    if (this.inWasm()) {
      const r = i === this.valueAt ? this.valueSkip : wasmSkipString(i);
      if (r >= 0) {
        this.setFlags(r);
        return r >> FLAG_BITS;
      }
    }
    return this.skipStringJs(i);
  }

  /** {@link skipString} in JS. */
  private skipStringJs(i: number): number {
    const b = this.b;
    const n = b.length;
    let escaped = false;
    let wide = false;
    for (i++; i < n; i++) {
      const c = b[i]!;
      // The common bytes first, by one table look-up: printable ASCII but the quote and the backslash.
      const k = STRING_BYTE[c]!;
      if (k === PLAIN) continue;
      if (k === WIDE) {
        wide = true;
        continue;
      }
      if (c === QUOTE) {
        this.escaped = escaped;
        this.wide = wide;
        return i + 1;
      }
      if (c === BACKSLASH) {
        escaped = true;
        const e = b[++i];
        if (e === 117) {
          // \uXXXX
          for (let k = 1; k <= 4; k++) if (!isHex(b[i + k])) throw new ScanError('bad \\u escape', i);
          i += 4;
        } else if (!(e === QUOTE || e === BACKSLASH || e === 47 || e === 98 || e === 102 || e === 110 || e === 114 || e === 116)) {
          throw new ScanError('bad escape', i);
        }
      } else if (c < 32) throw new ScanError('control character in string', i);
    }
    throw new ScanError('unterminated string', i);
  }

  /** Skips a number per the JSON grammar and returns the offset after it. */
  private skipNumber(i: number): number {
    const b = this.b;
    const start = i;
    if (b[i] === MINUS) i++;
    let c = b[i];
    if (c === 48) i++;
    else if (c !== undefined && c >= 49 && c <= 57) while (isDigit(b[++i]));
    else throw new ScanError('bad number', start);
    if (b[i] === 46) {
      if (!isDigit(b[++i])) throw new ScanError('bad number', start);
      while (isDigit(b[++i]));
    }
    c = b[i];
    if (c === 101 || c === 69) {
      c = b[++i];
      if (c === 43 || c === MINUS) i++;
      if (!isDigit(b[i])) throw new ScanError('bad number', start);
      while (isDigit(b[++i]));
    }
    return i;
  }
}

/** Bodies shorter than this are scanned by JS alone (see {@link Scanner.inWasm}). */
export const MIN_WASM_BODY = 1024;

/** {@link STRING_BYTE} classes: a byte a string may hold as it is, one of 0x80 and above (UTF-8), anything else. */
const PLAIN = 0;
const WIDE = 1;
const SPECIAL = 2;
/** The class of each byte inside a string: the quote, the backslash and control characters are SPECIAL. */
const STRING_BYTE = new Uint8Array(256).map((_, c) => (c >= 0x80 ? WIDE : c < 32 || c === QUOTE || c === BACKSLASH ? SPECIAL : PLAIN));

function ws(b: Buffer, i: number): number {
  for (;;) {
    const c = b[i];
    if (c === 32 || c === 10 || c === 13 || c === 9) i++;
    else return i;
  }
}
function isDigit(c: number | undefined): boolean {
  return c !== undefined && c >= 48 && c <= 57;
}
function isHex(c: number | undefined): boolean {
  return c !== undefined && ((c >= 48 && c <= 57) || (c >= 65 && c <= 70) || (c >= 97 && c <= 102));
}
