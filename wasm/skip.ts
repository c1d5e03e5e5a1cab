/**
 * The sync scanner's validating skips in WebAssembly (AssemblyScript; built by `npm run build:wasm` into
 * src/sync/skip-wasm.ts): the string and value skips of src/sync/scan.ts over a copy of the body in linear memory,
 * strings 16 bytes at a time with SIMD.
 *
 * It only answers "where does this end, and how": any malformed input, or nesting deeper than its stack, returns
 * -1 and the JS scanner redoes the skip to throw its ScanError (so messages and positions are the JS ones). It
 * never traps: the body is followed by PADDING zero bytes, which stop every loop (zero is a control character,
 * not a digit, not white space), so no read goes past them, and the body's length need not be passed: a string
 * that reaches the padding is unterminated, a value that reaches it is cut off.
 *
 * Memory layout: the container stack, then the body at {@link base} (positions passed in and returned are offsets
 * into the body), then PADDING zeros. The JS door grows the memory to fit the body.
 */

/** Container kinds on the stack. */
const OBJECT: u8 = 1;
const ARRAY: u8 = 2;
/** Nesting deeper than this goes back to the JS scanner (whose stack is a JS array). */
const STACK_SIZE: i32 = 65536;
const stack = memory.data(STACK_SIZE, 16);

/** The zero bytes the door writes after the body: more than the widest read past a position below the end (15). */
export const PADDING: i32 = 32;

/** Where the body starts in linear memory. */
export function base(): usize {
  return (__heap_base + 15) & ~15;
}

/** Result bits: the string skipped (or the last one a value held) had an escape / a byte >= 0x80 / was there. */
const ESCAPED = 1;
const WIDE = 2;
const STRING = 4;
const FLAG_BITS = 3;

// @ts-ignore: decorator
@inline function at(i: i32): i32 {
  return load<u8>(base() + <usize>i);
}

/**
 * Skips the string whose opening quote is at `i`. Returns the offset after its closing quote, shifted left by 3,
 * with the ESCAPED, WIDE and STRING bits; or -1 if it is malformed.
 */
export function skipString(i: i32): i32 {
  return string(i);
}

/** {@link skipString}, inlined where the scanner's hot paths need it (a call is a dependent latency). */
// @ts-ignore: decorator
@inline function string(i: i32): i32 {
  const b = base();
  const quote = i8x16.splat(0x22);
  const backslash = i8x16.splat(0x5c);
  const space = i8x16.splat(0x20);
  let flags = STRING;
  i++;
  while (true) {
    const v = v128.load(b + <usize>i);
    // Bytes that end a run of plain ones: the quote, the backslash, control characters (and the zero padding).
    const stop = i8x16.bitmask(v128.or(v128.or(i8x16.eq(v, quote), i8x16.eq(v, backslash)), i8x16.lt_u(v, space)));
    const high = i8x16.bitmask(v); // bytes >= 0x80
    if (stop === 0) {
      if (high !== 0) flags |= WIDE;
      i += 16;
      continue;
    }
    const k = ctz(stop);
    if ((high & ((1 << k) - 1)) !== 0) flags |= WIDE;
    i += k;
    const c = at(i);
    if (c === 0x22) return ((i + 1) << FLAG_BITS) | flags;
    if (c !== 0x5c) return -1; // a control character, or the padding
    flags |= ESCAPED;
    const e = at(i + 1);
    if (e === 0x75) {
      if (!isHex(at(i + 2)) || !isHex(at(i + 3)) || !isHex(at(i + 4)) || !isHex(at(i + 5))) return -1;
      i += 6;
    } else if (e === 0x22 || e === 0x5c || e === 0x2f || e === 0x62 || e === 0x66 || e === 0x6e || e === 0x72 || e === 0x74) i += 2;
    else return -1;
  }
}

/**
 * Skips the value starting at `i` (no white space before it). Returns the offset after it,
 * shifted left by 3, with the flags of the last string it held (no STRING bit if it held none); or -1 if it is
 * malformed or nested deeper than the stack.
 */
export function skipValue(i: i32): i32 {
  let depth = 0;
  let last = 0;
  while (true) {
    i = ws(i);
    const c = at(i);
    if (c === 0x7b || c === 0x5b) {
      const j = ws(i + 1);
      if (at(j) === c + 2) i = j + 1; // {} or []
      else {
        if (depth === STACK_SIZE) return -1;
        store<u8>(stack + <usize>depth, c === 0x7b ? OBJECT : ARRAY);
        depth++;
        if (c === 0x7b) {
          const r = memberName(j);
          if (r < 0) return -1;
          last = r & 7;
          i = r >> FLAG_BITS;
        } else i = j;
        continue;
      }
    } else if (c === 0x22) {
      const r = skipString(i);
      if (r < 0) return -1;
      last = r & 7;
      i = r >> FLAG_BITS;
    } else if (c === 0x2d || (c >= 0x30 && c <= 0x39)) {
      i = skipNumber(i);
      if (i < 0) return -1;
    } else if (c === 0x74 && load<u32>(base() + <usize>i) === 0x65757274) i += 4; // true
    else if (c === 0x66 && load<u32>(base() + <usize>i + 1) === 0x65736c61) i += 5; // false
    else if (c === 0x6e && load<u32>(base() + <usize>i) === 0x6c6c756e) i += 4; // null
    else return -1;
    // A value is complete: close containers until one expects another member or item.
    while (true) {
      if (depth === 0) return (i << FLAG_BITS) | last;
      i = ws(i);
      const d = at(i);
      const top = load<u8>(stack + <usize>(depth - 1));
      if (d === 0x2c) {
        i++;
        if (top === OBJECT) {
          const r = memberName(ws(i));
          if (r < 0) return -1;
          last = r & 7;
          i = r >> FLAG_BITS;
        }
        break;
      }
      if ((top === OBJECT && d === 0x7d) || (top === ARRAY && d === 0x5d)) {
        depth--;
        i++;
        continue;
      }
      return -1;
    }
  }
}

/**
 * What {@link keyToken} leaves for the JS scanner: the bounds of the member name it read (its quotes included),
 * then, when the member's value is a well-formed string, where it starts and skipString's result for it (else -1
 * and -1): the scanner's next call would be that skip, and a call is the cost here.
 */
const key = memory.data(16, 8);

/** The key span's address (for the door's view of it). */
export function keySpan(): usize {
  return key;
}

/** The result bit {@link keyToken} sets when it consumed the object's `}` (no name read). */
const CLOSED = 4;

/**
 * The JS scanner's keyToken: at `i` (white space allowed), with `first` 0 when a `,` is due, reads the next
 * member name and its colon (the name's bounds, and its value's skip if a string, go to {@link keySpan}) and
 * returns the offset after the colon shifted left by 3 with the name's ESCAPED and WIDE bits; or consumes `}` and
 * returns the offset after it, shifted, with CLOSED; or -1.
 */
export function keyToken(i: i32, first: i32): i32 {
  i = ws(i);
  let c = at(i);
  if (c === 0x7d) return ((i + 1) << FLAG_BITS) | CLOSED;
  if (!first) {
    if (c !== 0x2c) return -1;
    i = ws(i + 1);
    c = at(i);
  }
  if (c !== 0x22) return -1;
  const r = string(i);
  if (r < 0) return -1;
  const e = r >> FLAG_BITS;
  store<i32>(key, i);
  store<i32>(key, e, 4);
  const j = ws(e);
  if (at(j) !== 0x3a) return -1;
  const v = ws(j + 1);
  const s = at(v) === 0x22 ? string(v) : -1;
  store<i32>(key, s < 0 ? -1 : v, 8);
  store<i32>(key, s, 12);
  return ((j + 1) << FLAG_BITS) | (r & (ESCAPED | WIDE));
}

/** Skips a member name at `i` and its colon: the offset after the colon with the name's flags, or -1. */
function memberName(i: i32): i32 {
  if (at(i) !== 0x22) return -1;
  const r = skipString(i);
  if (r < 0) return -1;
  const j = ws(r >> FLAG_BITS);
  if (at(j) !== 0x3a) return -1;
  return ((j + 1) << FLAG_BITS) | (r & 7);
}

/** Skips a number per the JSON grammar: the offset after it, or -1. */
function skipNumber(i: i32): i32 {
  if (at(i) === 0x2d) i++;
  const c = at(i);
  if (c === 0x30) i++;
  else if (c >= 0x31 && c <= 0x39) while (isDigit(at(++i)));
  else return -1;
  if (at(i) === 0x2e) {
    if (!isDigit(at(++i))) return -1;
    while (isDigit(at(++i)));
  }
  const e = at(i);
  if (e === 0x65 || e === 0x45) {
    const s = at(++i);
    if (s === 0x2b || s === 0x2d) i++;
    if (!isDigit(at(i))) return -1;
    while (isDigit(at(++i)));
  }
  return i;
}

// @ts-ignore: decorator
@inline function ws(i: i32): i32 {
  let c = at(i);
  // Compact JSON has none: one comparison rejects every other byte.
  while (c <= 0x20 && (c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09)) c = at(++i);
  return i;
}
// @ts-ignore: decorator
@inline function isDigit(c: i32): bool {
  return <u32>(c - 0x30) <= 9;
}
// @ts-ignore: decorator
@inline function isHex(c: i32): bool {
  return <u32>(c - 0x30) <= 9 || <u32>((c | 0x20) - 0x61) <= 5;
}

/**
 * readEvent's record of the event it read, i32 slots: the event's [start, end) and the string tokens (quotes
 * included; -1 when absent) of event_id, sender, state_key and `m.relates_to`.event_id, in the order of the event
 * columns' offsets (src/protocol.ts OFF: JS copies them as they are), then the tokens of type and
 * `m.relates_to`.rel_type, the flag bits at slot 14; the timestamp is an f64 at byte 64.
 */
const ev = memory.data(72, 8);

/** The record's address (for the door's views of it). */
export function eventRecord(): usize {
  return ev;
}

/** Record slots: each a [start, end) pair but the flags. */
const RAW = 0;
const ID = 2;
const SENDER = 4;
const STATE_KEY = 6;
const REL_ID = 8;
const TYPE = 10;
const REL_TYPE = 12;
const FLAGS_SLOT = 14;

/**
 * The record's flag bits. NOTICE and the four escape bits are the event columns' own (EVENT_FLAGS in
 * src/protocol.ts: notice 2, an escaped string at slot k 1 << (1 + k / 2)), so the door passes them through.
 */
const NOTICE = 2;
const ESC_ID = 4;
const ESC_SENDER = 8;
const ESC_STATE_KEY = 16;
const ESC_REL_ID = 32;
const VERIFICATION_REQUEST = 64;
const TYPE_ESCAPED = 128;
const TYPE_WIDE = 256;
const REL_TYPE_ESCAPED = 512;
const REL_TYPE_WIDE = 1024;
/** event_id or sender holds a byte of 0x80 or above (main then decodes them as UTF-8, not Latin-1). */
const IDS_WIDE = 2048;

/** Top-level names an event is routed on; each may appear once. */
const N_TYPE = 1;
const N_ID = 2;
const N_SENDER = 4;
const N_STATE_KEY = 8;
const N_TS = 16;
const N_CONTENT = 32;
const REQUIRED = N_TYPE | N_ID | N_SENDER | N_TS | N_CONTENT;

// @ts-ignore: decorator
@inline function slot(k: i32, v: i32): void {
  store<i32>(ev + (<usize>k << 2), v);
}

/**
 * keyToken for the event reader: -1 also for an escaped member name (where the reader reads names, the JS reader
 * has an escaped one to report or to decode, so the event goes to it).
 */
function plainKey(i: i32, first: i32): i32 {
  const r = keyToken(i, first);
  return (r & ESCAPED) !== 0 ? -1 : r;
}

/** Whether the body's bytes [s, e) are those of `text` (ASCII). */
function bytesAre(s: i32, e: i32, text: String): bool {
  const n = text.length;
  if (e - s !== n) return false;
  const p = changetype<usize>(text);
  for (let k = 0; k < n; k++) if (at(s + k) !== <i32>load<u16>(p + (<usize>k << 1))) return false;
  return true;
}

/** Which routed top-level name the member name token [s, e) is (an N_ bit), or 0. */
function topLevelName(s: i32, e: i32): i32 {
  switch (e - s) {
    case 6: return bytesAre(s, e, '"type"') ? N_TYPE : 0;
    case 10: return bytesAre(s, e, '"event_id"') ? N_ID : 0;
    case 8: return bytesAre(s, e, '"sender"') ? N_SENDER : 0;
    case 11: return bytesAre(s, e, '"state_key"') ? N_STATE_KEY : 0;
    case 18: return bytesAre(s, e, '"origin_server_ts"') ? N_TS : 0;
    case 9: return bytesAre(s, e, '"content"') ? N_CONTENT : 0;
  }
  return 0;
}

/**
 * Copies the body's bytes [s, s + n) to address `dst`, 16 at a time: up to 15 bytes past each end are read and
 * written too (the body's padding covers the reads; the caller's room the writes, and a next copy writes over them).
 */
function copy16(dst: usize, s: i32, n: i32): void {
  const src = base() + <usize>s;
  for (let k = 0; k < n; k += 16) v128.store(dst + <usize>k, v128.load(src + <usize>k));
}

/**
 * The routing read of src/sync/timeline.ts for the common event, in one call: at `i`, the event's `{`, reads its
 * members into the record and returns the offset after its `}`. Anything the JS reader would report or treat
 * specially returns -1 and the JS reader reads the event instead (so every message stays the JS one): an escaped
 * member name at any level it reads, a routed name twice, a routed field missing or of another type, a timestamp
 * that is not a plain integer of at most 15 digits, malformed JSON. With `dst` (an address; -1: none), the event
 * ID's and the sender's bytes, quotes left out, are copied there back to back (src/sync/ids.ts: the ID columns).
 */
export function readEvent(i: i32, dst: i32): i32 {
  if (at(i) !== 0x7b) return -1;
  slot(RAW, i);
  for (let k = ID; k < FLAGS_SLOT; k++) slot(k, -1);
  let flags = 0;
  let seen = 0;
  let first = 1;
  i++;
  while (true) {
    const r = plainKey(i, first);
    if (r < 0) return -1;
    if ((r & CLOSED) !== 0) {
      i = r >> FLAG_BITS;
      break;
    }
    first = 0;
    const name = topLevelName(load<i32>(key), load<i32>(key, 4));
    if ((seen & name) !== 0) return -1;
    seen |= name;
    const v = ws(r >> FLAG_BITS);
    if (name === N_CONTENT) {
      i = content(v);
      if (i < 0) return -1;
      flags |= load<i32>(ev + (<usize>FLAGS_SLOT << 2));
      continue;
    }
    if (name === N_TS) {
      i = timestamp(v);
      if (i < 0) return -1;
      continue;
    }
    if (name === 0) {
      const s = skipValue(v);
      if (s < 0) return -1;
      i = s >> FLAG_BITS;
      continue;
    }
    // A routed string: keyToken skipped it already.
    const s = load<i32>(key, 12);
    if (load<i32>(key, 8) < 0 || s < 0) return -1;
    i = s >> FLAG_BITS;
    const escaped = (s & ESCAPED) !== 0;
    if (name === N_TYPE) {
      slot(TYPE, v);
      slot(TYPE + 1, i);
      if (escaped) flags |= TYPE_ESCAPED;
      if ((s & WIDE) !== 0) flags |= TYPE_WIDE;
    } else {
      const k = name === N_ID ? ID : name === N_SENDER ? SENDER : STATE_KEY;
      slot(k, v);
      slot(k + 1, i);
      if (escaped) flags |= name === N_ID ? ESC_ID : name === N_SENDER ? ESC_SENDER : ESC_STATE_KEY;
      if ((s & WIDE) !== 0 && name !== N_STATE_KEY) flags |= IDS_WIDE;
    }
  }
  if ((seen & REQUIRED) !== REQUIRED) return -1;
  slot(RAW + 1, i);
  slot(FLAGS_SLOT, flags);
  if (dst >= 0) {
    const id = load<i32>(ev + (<usize>ID << 2)) + 1;
    const idLen = load<i32>(ev + (<usize>(ID + 1) << 2)) - 1 - id;
    const sender = load<i32>(ev + (<usize>SENDER << 2)) + 1;
    copy16(<usize>dst, id, idLen);
    copy16(<usize>dst + <usize>idLen, sender, load<i32>(ev + (<usize>(SENDER + 1) << 2)) - 1 - sender);
  }
  return i;
}

/** Reads a plain integer timestamp at `i` into the record: the offset after it, or -1 for anything else. */
function timestamp(i: i32): i32 {
  const s = i;
  let c = at(i);
  if (c < 0x31 || c > 0x39) return -1;
  let v: f64 = 0;
  do {
    v = v * 10 + <f64>(c - 0x30);
    c = at(++i);
  } while (isDigit(c) && i - s < 15);
  if (isDigit(c) || c === 0x2e || c === 0x65 || c === 0x45) return -1;
  store<f64>(ev + 64, v);
  return i;
}

/**
 * Reads an event's content object at `i` for its msgtype and `m.relates_to` (into the record; its flags go to
 * the flags slot, which readEvent reads back before setting its own): the offset after it, or -1.
 */
function content(i: i32): i32 {
  if (at(i) !== 0x7b) return -1;
  let flags = 0;
  let relatesSeen = false;
  let first = 1;
  i++;
  while (true) {
    const r = plainKey(i, first);
    if (r < 0) return -1;
    if ((r & CLOSED) !== 0) {
      slot(FLAGS_SLOT, flags);
      return r >> FLAG_BITS;
    }
    first = 0;
    const ks = load<i32>(key);
    const ke = load<i32>(key, 4);
    const v = ws(r >> FLAG_BITS);
    if (bytesAre(ks, ke, '"msgtype"')) {
      // The last msgtype counts, as for JSON.parse.
      flags &= ~(NOTICE | VERIFICATION_REQUEST);
      const s = load<i32>(key, 12);
      if (load<i32>(key, 8) >= 0 && s >= 0) {
        i = s >> FLAG_BITS;
        if (bytesAre(v, i, '"m.notice"')) flags |= NOTICE;
        else if (bytesAre(v, i, '"m.key.verification.request"')) flags |= VERIFICATION_REQUEST;
        continue;
      }
    } else if (bytesAre(ks, ke, '"m.relates_to"')) {
      if (relatesSeen) return -1;
      relatesSeen = true;
      if (at(v) === 0x7b) {
        i = relatesTo(v);
        if (i < 0) return -1;
        flags |= relFlags;
        continue;
      }
    }
    const s = skipValue(v);
    if (s < 0) return -1;
    i = s >> FLAG_BITS;
  }
}

/** The flags relatesTo found (ESC_REL_ID, REL_TYPE_ESCAPED, REL_TYPE_WIDE). */
let relFlags = 0;

/**
 * Reads an `m.relates_to` object at `i` for its rel_type and event_id (into the record, their flags into
 * {@link relFlags}): the offset after it, or -1 (also for either name twice, or either not a string).
 */
function relatesTo(i: i32): i32 {
  relFlags = 0;
  let typeSeen = false;
  let idSeen = false;
  let first = 1;
  i++;
  while (true) {
    const r = plainKey(i, first);
    if (r < 0) return -1;
    if ((r & CLOSED) !== 0) return r >> FLAG_BITS;
    first = 0;
    const ks = load<i32>(key);
    const ke = load<i32>(key, 4);
    const v = ws(r >> FLAG_BITS);
    const isType = bytesAre(ks, ke, '"rel_type"');
    const isId = !isType && bytesAre(ks, ke, '"event_id"');
    if (!isType && !isId) {
      const s = skipValue(v);
      if (s < 0) return -1;
      i = s >> FLAG_BITS;
      continue;
    }
    if ((isType && typeSeen) || (isId && idSeen)) return -1;
    const s = load<i32>(key, 12);
    if (load<i32>(key, 8) < 0 || s < 0) return -1;
    i = s >> FLAG_BITS;
    if (isType) {
      typeSeen = true;
      slot(REL_TYPE, v);
      slot(REL_TYPE + 1, i);
      if ((s & ESCAPED) !== 0) relFlags |= REL_TYPE_ESCAPED;
      if ((s & WIDE) !== 0) relFlags |= REL_TYPE_WIDE;
    } else {
      idSeen = true;
      slot(REL_ID, v);
      slot(REL_ID + 1, i);
      if ((s & ESCAPED) !== 0) relFlags |= ESC_REL_ID;
    }
  }
}
