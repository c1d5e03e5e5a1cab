/**
 * The door to the WebAssembly skipper (wasm/skip.ts, bytes in ./skip-wasm.ts): compiles it once per thread, holds
 * its instance and linear memory, and copies a body into that memory for the {@link Scanner} of src/sync/scan.ts.
 *
 * One body at a time is in the memory: the last one {@link load}ed, known by the id `load` returned. A scanner
 * whose body is no longer there loads it again (the sync actor scans one body at a time, so that does not happen
 * in practice). Linear memory never shrinks, so after a big body (a non-streamed initial sync) the next small one
 * gets a fresh instance and the big memory is left to the garbage collector.
 *
 * The skips return -1 for anything they do not finish (malformed input, nesting deeper than their stack); the
 * scanner then redoes the skip in JS, which throws the ScanError. A body the memory cannot take (over
 * {@link MAX_WASM_BODY}, or the memory cannot grow) is scanned by JS alone: same results, only slower.
 */
import { OFFSET_STRIDE } from '../protocol.ts';
import { SKIPPER_WASM } from './skip-wasm.ts';

/** The skipper's exports (see wasm/skip.ts). */
interface Exports {
  memory: WebAssembly.Memory;
  base(): number;
  PADDING: WebAssembly.Global;
  /** The offset after the string at `i` shifted left by {@link FLAG_BITS}, with {@link FLAGS}; or -1. */
  skipString(i: number): number;
  /** The offset after the value at `i` shifted left by {@link FLAG_BITS}, with the last string's {@link FLAGS}; or -1. */
  skipValue(i: number): number;
  /** The scanner's keyToken (see wasm/skip.ts): the offset after the colon (or `}`), shifted, with flags; or -1. */
  keyToken(i: number, first: number): number;
  /** Address of the four i32s where keyToken leaves the name's bounds and its string value's skip. */
  keySpan(): number;
  /** The routing read of one timeline event at `i` into the event record: the offset after it, or -1 (see wasm/skip.ts); its IDs copied to address `dst` (-1: not). */
  readEvent(i: number, dst: number): number;
  /** Address of the event record ({@link EVENT_SLOTS}). */
  eventRecord(): number;
}

/**
 * The event record's layout beyond its first {@link OFFSET_STRIDE} slots, which are the event columns' offsets as
 * they are (src/protocol.ts OFF: the event's span, its event_id, sender, state_key and relation event ID tokens):
 * the type's and rel_type's tokens, the flags ({@link EVENT_RECORD_FLAGS}); the timestamp is f64 number `ts`.
 */
export const EVENT_SLOTS = { type: 10, relType: 12, flags: 14, ts: 8 } as const;
/** The record's flag bits: the columns' own (EVENT_FLAGS), then the reader's; `idsWide`: event_id or sender has a byte ≥ 0x80. */
export const EVENT_RECORD_FLAGS = { columns: 2 | 4 | 8 | 16 | 32, verificationRequest: 64, typeEscaped: 128, typeWide: 256, relTypeEscaped: 512, relTypeWide: 1024, idsWide: 2048 } as const;

/**
 * The flag bits of a skip's result: the string (or the last one a value held) was escaped, wide, present; for
 * keyToken, whose result never has `string`, its bit means the object's `}` was consumed instead of a name.
 */
export const FLAGS = { escaped: 1, wide: 2, string: 4, closed: 4 } as const;
/** How far a skip's result is shifted to make room for its {@link FLAGS}. */
export const FLAG_BITS = 3;
/** The largest body the skipper takes: offsets shifted by {@link FLAG_BITS} must stay positive int32s. */
export const MAX_WASM_BODY = 2 ** (31 - FLAG_BITS) - 64;
/**
 * Once the memory is larger than this, a body that fits in it gets a fresh instance (see the module comment): an
 * incremental sync's body or a streamed initial sync's slice (512 KiB) is far smaller.
 */
export const SHRINK_ABOVE = 4 * 1024 * 1024;
const PAGE = 65536;

let compiled: WebAssembly.Module | null = null;
let wasm: Exports | null = null;
/** Id of the body in the memory (0: none); ids only grow. */
let current = 0;
let lastId = 0;

function instantiate(): Exports {
  compiled ??= new WebAssembly.Module(Buffer.from(SKIPPER_WASM, 'base64'));
  return new WebAssembly.Instance(compiled, {}).exports as unknown as Exports;
}

/** Instances made by {@link reserve}, by their memory's buffer, until their body is loaded. */
const reservations = new WeakMap<ArrayBufferLike, Exports>();

/**
 * Memory for a body of `length` bytes about to be read (a non-delivered initial sync, 10 MB with 1,000 rooms):
 * a view into the memory of a fresh instance, which {@link load} of that very view then takes without a copy,
 * the body never held twice. The instance is the body's own until then: another body scanned on this thread
 * meanwhile (another client's, threads inline) goes to the current one and cannot write over it. Null when the
 * memory cannot take it (the caller reads into memory of its own).
 */
export function reserve(length: number): Uint8Array | null {
  if (length > MAX_WASM_BODY) return null;
  const own = instantiate();
  // A fresh or grown memory is zeros: the padding after the body is there already.
  const need = own.base() + length + (own.PADDING.value as number);
  const have = own.memory.buffer.byteLength;
  try {
    if (need > have) own.memory.grow(Math.ceil((need - have) / PAGE));
  } catch {
    return null;
  }
  reservations.set(own.memory.buffer, own);
  return new Uint8Array(own.memory.buffer, own.base(), length);
}

/**
 * Copies `body` into the skipper's memory (or takes it where it is: a view {@link reserve} gave); returns the id
 * to pass to {@link holds}, or -1 if the memory cannot take it (the caller scans with JS alone). With `idRoom`,
 * the memory after the body has room for its events' IDs ({@link idRegion}; src/sync/ids.ts).
 */
export function load(body: Uint8Array, idRoom = false): number {
  if (body.length > MAX_WASM_BODY) return -1;
  const own = reservations.get(body.buffer);
  if (own !== undefined && body.byteOffset === own.base()) {
    // The body was read into this instance's memory: it becomes the current one (its memory shrinks away at the
    // next small body, as after any big one).
    reservations.delete(body.buffer);
    return bind(own, -1);
  }
  wasm ??= instantiate();
  const padding = wasm.PADDING.value as number;
  // The IDs go after the body and its padding, 16-aligned. They are spans of the body: never more bytes than it,
  // and 16 for the last copy's overrun (wasm/skip.ts copy16).
  const idsAt = (body.length + padding + 15) & ~15;
  const room = idRoom ? body.length + 16 : 0;
  let need = wasm.base() + idsAt + room;
  if (wasm.memory.buffer.byteLength > SHRINK_ABOVE && need <= SHRINK_ABOVE) {
    wasm = instantiate();
    need = wasm.base() + idsAt + room;
  }
  const have = wasm.memory.buffer.byteLength;
  if (need > have) {
    try {
      wasm.memory.grow(Math.ceil((need - have) / PAGE));
    } catch {
      current = 0;
      return -1; // the engine's limit or the machine's memory: JS scans it instead
    }
  }
  const mem = new Uint8Array(wasm.memory.buffer);
  const at = wasm.base();
  mem.set(body, at);
  mem.fill(0, at + body.length, at + body.length + padding);
  return bind(wasm, idRoom ? at + idsAt : -1);
}

/** Makes `instance` the current one, its body loaded (its IDs' room at address `ids`, -1: none): the exported skips and views point at it. */
function bind(instance: Exports, ids: number): number {
  wasm = instance;
  current = ++lastId;
  idRegion = ids;
  if (memoryBytes.buffer !== wasm.memory.buffer) memoryBytes = new Uint8Array(wasm.memory.buffer);
  skipString = wasm.skipString;
  skipValue = wasm.skipValue;
  keyToken = wasm.keyToken;
  readEvent = wasm.readEvent;
  if (keySpan.buffer !== wasm.memory.buffer) {
    keySpan = new Int32Array(wasm.memory.buffer, wasm.keySpan(), 4);
    eventRecord = new Int32Array(wasm.memory.buffer, wasm.eventRecord(), 16);
    eventOffsets = new Int32Array(wasm.memory.buffer, wasm.eventRecord(), OFFSET_STRIDE);
    eventTs = new Float64Array(wasm.memory.buffer, wasm.eventRecord(), 9);
  }
  return current;
}

/** Whether the body loaded under `id` is still the one in the memory. */
export function holds(id: number): boolean {
  return id === current;
}

/** The loaded instance's string skip (see {@link Exports.skipString}); call only while {@link holds} is true. */
export let skipString: (i: number) => number = () => -1;
/** The loaded instance's value skip (see {@link Exports.skipValue}); call only while {@link holds} is true. */
export let skipValue: (i: number) => number = () => -1;

/** The loaded instance's keyToken (see {@link Exports.keyToken}); call only while {@link holds} is true. */
export let keyToken: (i: number, first: number) => number = () => -1;
/**
 * What {@link keyToken} left: the bounds of the name it read (start, end), then the start of its value and the
 * string skip's result for it when the value is a well-formed string (else -1 and -1).
 */
export let keySpan = new Int32Array(4);

/** The loaded instance's readEvent (see {@link Exports.readEvent}); call only while {@link holds} is true. */
export let readEvent: (i: number, dst: number) => number = () => -1;
/** Address of the room for the loaded body's IDs (see {@link load}), or -1 when it has none. */
export let idRegion = -1;
/** The loaded instance's whole linear memory (the IDs are copied out of it). */
export let memoryBytes = new Uint8Array(0);
/** What {@link readEvent} left ({@link EVENT_SLOTS}). */
export let eventRecord = new Int32Array(16);
/** The record's first {@link OFFSET_STRIDE} slots: the event's offsets, in the columns' order. */
export let eventOffsets = new Int32Array(OFFSET_STRIDE);
/** The same record as f64s: the timestamp is at {@link EVENT_SLOTS}.ts. */
export let eventTs = new Float64Array(9);

/** Bytes of linear memory the skipper holds on this thread (the sync actor's memory report), or null before its first use. */
export function wasmBytes(): number | null {
  return wasm?.memory.buffer.byteLength ?? null;
}
