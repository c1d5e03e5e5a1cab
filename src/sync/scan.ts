/**
 * A validating JSON scanner that walks a /sync body without building objects.
 *
 * Why: `JSON.parse` of a whole body and then re-serialising each event to hand it to another thread costs more
 * than the parse itself. Scanning lets the sync actor slice each timeline event's own JSON text out of the body
 * (V8 slices are cheap) and read only the few fields it routes on. Skipped values are validated to the JSON
 * grammar, so any slice it hands out is guaranteed to `JSON.parse` (the fuzz test holds it to that).
 */

/** Thrown when the text is not valid JSON at `pos`. */
export class ScanError extends Error {
  constructor(
    message: string,
    readonly pos: number,
  ) {
    super(`${message} at offset ${pos}`);
  }
}

const OPEN_OBJ = 123; // {
const CLOSE_OBJ = 125; // }
const OPEN_ARR = 91; // [
const CLOSE_ARR = 93; // ]
const QUOTE = 34;
const BACKSLASH = 92;
const COMMA = 44;
const COLON = 58;
const MINUS = 45;

/** Cursor over a JSON text; every read validates what it passes. */
export class Scanner {
  readonly s: string;
  i = 0;
  /** Whether the last string read or skipped contained an escape. */
  private escaped = false;

  constructor(text: string) {
    this.s = text;
  }

  /** Skips white space and returns the next char code (NaN at end of input). */
  peek(): number {
    const s = this.s;
    let i = this.i;
    for (;;) {
      const c = s.charCodeAt(i);
      if (c === 32 || c === 10 || c === 13 || c === 9) i++;
      else break;
    }
    this.i = i;
    return s.charCodeAt(i);
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

  /** Consumes `{`; iterate members with {@link key}. */
  openObject(): void {
    if (this.peek() !== OPEN_OBJ) this.fail('expected an object');
    this.i++;
  }

  /**
   * Reads the next member key of the open object and its colon, or consumes `}` and returns null.
   * `first` is true for the first call after {@link openObject}.
   */
  key(first: boolean): string | null {
    let c = this.peek();
    if (c === CLOSE_OBJ) {
      this.i++;
      return null;
    }
    if (!first) {
      if (c !== COMMA) this.fail('expected , or }');
      this.i++;
      c = this.peek();
    }
    if (c !== QUOTE) this.fail('expected a member name');
    const k = this.readString();
    if (this.peek() !== COLON) this.fail('expected :');
    this.i++;
    return k;
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
    // Plain strings (the common case: ids, types) are a cheap slice; escaped ones go through JSON.parse.
    return this.escaped ? (JSON.parse(this.s.slice(start, this.i)) as string) : this.s.slice(start + 1, this.i - 1);
  }

  /** Reads a number value. */
  readNumber(): number {
    this.peek();
    const start = this.i;
    this.i = this.skipNumber(start);
    return Number(this.s.slice(start, this.i));
  }

  /** Reads any value by validating it and parsing its slice (for the small parts of a body). */
  readValue(): unknown {
    const start = this.skipValue();
    return JSON.parse(this.s.slice(start, this.i));
  }

  /** Validates and skips any value; returns the start offset (after white space) of the value skipped. */
  skipValue(): number {
    const s = this.s;
    this.peek();
    const begin = this.i;
    let i = begin;
    // An explicit stack (1 object, 2 array) instead of recursion: a hostile body of nested brackets must
    // produce a ScanError, not a stack overflow.
    const stack: number[] = [];
    for (;;) {
      i = ws(s, i);
      const c = s.charCodeAt(i);
      if (c === OPEN_OBJ) {
        i = ws(s, i + 1);
        if (s.charCodeAt(i) === CLOSE_OBJ) i++;
        else {
          stack.push(1);
          i = this.memberName(i);
          continue;
        }
      } else if (c === OPEN_ARR) {
        i = ws(s, i + 1);
        if (s.charCodeAt(i) === CLOSE_ARR) i++;
        else {
          stack.push(2);
          continue;
        }
      } else if (c === QUOTE) i = this.skipString(i);
      else if (c === MINUS || (c >= 48 && c <= 57)) i = this.skipNumber(i);
      else if (c === 116 && s.startsWith('true', i)) i += 4;
      else if (c === 102 && s.startsWith('false', i)) i += 5;
      else if (c === 110 && s.startsWith('null', i)) i += 4;
      else throw new ScanError(Number.isNaN(c) ? 'unexpected end of input' : 'unexpected character', i);
      // A value is complete: close containers until one expects another member or item.
      for (;;) {
        if (stack.length === 0) {
          this.i = i;
          return begin;
        }
        i = ws(s, i);
        const d = s.charCodeAt(i);
        const top = stack[stack.length - 1];
        if (d === COMMA) {
          i++;
          if (top === 1) i = this.memberName(ws(s, i));
          break;
        }
        if ((top === 1 && d === CLOSE_OBJ) || (top === 2 && d === CLOSE_ARR)) {
          stack.pop();
          i++;
          continue;
        }
        throw new ScanError(Number.isNaN(d) ? 'unexpected end of input' : 'expected , or a closing bracket', i);
      }
    }
  }

  /** Checks that only white space follows. */
  end(): void {
    if (!Number.isNaN(this.peek())) this.fail('unexpected data after the JSON value');
  }

  private memberName(i: number): number {
    if (this.s.charCodeAt(i) !== QUOTE) throw new ScanError('expected a member name', i);
    i = ws(this.s, this.skipString(i));
    if (this.s.charCodeAt(i) !== COLON) throw new ScanError('expected :', i);
    return i + 1;
  }

  /** Skips the string starting at `i` (a quote) and returns the offset after its closing quote. */
  private skipString(i: number): number {
    const s = this.s;
    const n = s.length;
    let escaped = false;
    for (i++; i < n; i++) {
      const c = s.charCodeAt(i);
      if (c === QUOTE) {
        this.escaped = escaped;
        return i + 1;
      }
      if (c === BACKSLASH) {
        escaped = true;
        const e = s.charCodeAt(++i);
        if (e === 117) {
          // \uXXXX
          for (let k = 1; k <= 4; k++) if (!isHex(s.charCodeAt(i + k))) throw new ScanError('bad \\u escape', i);
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
    const s = this.s;
    const start = i;
    if (s.charCodeAt(i) === MINUS) i++;
    let c = s.charCodeAt(i);
    if (c === 48) i++;
    else if (c >= 49 && c <= 57) while (isDigit(s.charCodeAt(++i)));
    else throw new ScanError('bad number', start);
    if (s.charCodeAt(i) === 46) {
      if (!isDigit(s.charCodeAt(++i))) throw new ScanError('bad number', start);
      while (isDigit(s.charCodeAt(++i)));
    }
    c = s.charCodeAt(i);
    if (c === 101 || c === 69) {
      c = s.charCodeAt(++i);
      if (c === 43 || c === MINUS) i++;
      if (!isDigit(s.charCodeAt(i))) throw new ScanError('bad number', start);
      while (isDigit(s.charCodeAt(++i)));
    }
    return i;
  }
}

function ws(s: string, i: number): number {
  for (;;) {
    const c = s.charCodeAt(i);
    if (c === 32 || c === 10 || c === 13 || c === 9) i++;
    else return i;
  }
}
function isDigit(c: number): boolean {
  return c >= 48 && c <= 57;
}
function isHex(c: number): boolean {
  return (c >= 48 && c <= 57) || (c >= 65 && c <= 70) || (c >= 97 && c <= 102);
}
