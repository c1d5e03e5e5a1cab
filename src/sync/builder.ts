/**
 * What processing one /sync body builds: the option and result types, and the {@link Builder} that collects the
 * event columns, rooms, state and the rest while the body is scanned.
 */
import type { WireError } from '../errors.ts';
import {
  type AccountDataWire,
  type EventColumns,
  type InviteWire,
  type KnockWire,
  type MatrixEvent,
  OFFSET_STRIDE,
  type ReceiptWire,
  type StateChanges,
} from '../protocol.ts';
import type { Scanner } from './scan.ts';
import { IdGather } from './ids.ts';

/** What processing needs to know beyond the body. */
export interface ProcessOptions {
  /** Timeline event types to keep (state events always go to the cache); null keeps every type. */
  wantedTypes: ReadonlySet<string> | null;
  /** The bot's user ID: its events are flagged {@link EVENT_FLAGS.own}. */
  ownUserId?: string;
  /** Whether the events get ID columns (src/sync/ids.ts; default true): not for timelines handlers never see. */
  ids?: boolean;
}

/** The change batch of one /sync response, before sequencing. */
export interface ProcessedSync {
  nextBatch: string;
  rooms: string[];
  events: EventColumns;
  invites: InviteWire[];
  knocks: KnockWire[];
  left: string[];
  state: StateChanges;
  errors: WireError[];
  /** The body's end-to-end-encryption fields (to-device events, device lists, key counts). */
  crypto: SyncCryptoFields;
  /** Global and per-room account data events. */
  accountData: AccountDataWire[];
  /** Read receipts (`m.receipt` ephemeral events) of joined rooms, one per event, receipt type and user. */
  receipts: ReceiptWire[];
  /** Joined rooms whose timeline is `limited`: events before `prevBatch` (back to the previous sync) are missing. */
  gaps: Array<{ roomId: string; prevBatch: string }>;
}

/** Top-level E2EE fields of a /sync body. */
export interface SyncCryptoFields {
  /** Valid to-device events (malformed ones are reported in `errors`). */
  toDevice: MatrixEvent[];
  deviceListsChanged: string[];
  deviceListsLeft: string[];
  otkCounts: Record<string, number> | null;
  fallbackKeyTypes: string[] | null;
  /** Clear in-room verification events of the timelines (`m.key.verification.*`, and requests sent as messages). */
  verification: Array<{ roomId: string; event: MatrixEvent }>;
}

/** Event capacity the columns start with. */
const INITIAL_EVENTS = 256;
/** Body bytes per event assumed for the columns' first capacity (a timeline event is 250-1,000 bytes). */
const BYTES_PER_EVENT = 200;
/** The most events the first capacity is made for (~2 MB of columns): past it, the columns grow as needed. */
const MAX_INITIAL_EVENTS = 32_768;

/** A type or rel_type string of a body, with what routing asks of it (see {@link Builder.internSpan}). */
export interface TypeToken {
  /** The string token's bytes, quotes included. */
  readonly bytes: Buffer;
  readonly value: string;
  /** Its index in the batch's strings once an event in the columns has it, else −1 (see {@link Builder.indexOf}). */
  index: number;
  /** Whether handlers want events of this type ({@link ProcessOptions.wantedTypes}). */
  readonly wanted: boolean;
  /** An `m.key.verification.*` type: its clear events go to the crypto actor whatever handlers want. */
  readonly verification: boolean;
}

const VERIFICATION = 'm.key.verification.';

/**
 * An empty array already in V8's generic elements kind. An empty `[]` starts as an array of small integers and
 * changes its hidden class on its first string or object: the scan's code, optimized on an earlier body's arrays,
 * then met a new body's array of another class at every push and was deoptimized and compiled again, a few times
 * over a fresh worker's first bodies (each compile on a 2-core machine taking CPU from the pipeline).
 */
function objectArray<T>(): T[] {
  const a: unknown[] = [null];
  a.length = 0;
  return a as T[];
}

/** Collects what one body brings, then {@link Builder.finish} turns it into a {@link ProcessedSync}. */
export class Builder {
  nextBatch: string | null = null;
  readonly rooms: string[] = objectArray();
  readonly strings: string[] = objectArray();
  private readonly stringIndex = new Map<string, number>();
  /** Events in the columns below, which grow by doubling: written in place, no array of boxed numbers to convert. */
  private count = 0;
  private room: Int32Array;
  private type: Int32Array;
  private relType: Int32Array;
  private ts: Float64Array;
  private flags: Uint8Array;
  private offsets: Int32Array;
  readonly invites: InviteWire[] = [];
  readonly knocks: KnockWire[] = [];
  readonly left: string[] = [];
  readonly state: StateChanges['rooms'] = [];
  readonly errors: WireError[] = [];
  readonly crypto: SyncCryptoFields = { toDevice: [], deviceListsChanged: [], deviceListsLeft: [], otkCounts: null, fallbackKeyTypes: null, verification: [] };
  readonly accountData: AccountDataWire[] = [];
  readonly receipts: ReceiptWire[] = [];
  readonly gaps: Array<{ roomId: string; prevBatch: string }> = [];
  /** Whether an event's event_id or sender token has a byte of 0x80 or above (then the columns get no `ids`: src/sync/ids.ts). */
  idsWide = false;
  /** The bot's user ID as the JSON string token a server writes, to flag own events without decoding senders. */
  readonly ownToken: Buffer | null;
  /** Gathers the events' ID columns during the scan (null: the options want none). */
  readonly idGather: IdGather | null;
  /**
   * `bodyBytes` sizes the columns: growing them by doubling from a small start copied them six times for a body
   * of 10,000 events (~0.04 µs per event on the sync worker).
   */
  constructor(
    readonly opts: ProcessOptions,
    bodyBytes = 0,
  ) {
    this.ownToken = opts.ownUserId === undefined ? null : Buffer.from(JSON.stringify(opts.ownUserId), 'utf8');
    const cap = Math.min(MAX_INITIAL_EVENTS, Math.max(INITIAL_EVENTS, Math.ceil(bodyBytes / BYTES_PER_EVENT)));
    this.room = new Int32Array(cap);
    this.type = new Int32Array(cap);
    this.relType = new Int32Array(cap);
    this.ts = new Float64Array(cap);
    this.flags = new Uint8Array(cap);
    this.offsets = new Int32Array(cap * OFFSET_STRIDE);
    this.idGather = opts.ids === false ? null : new IdGather(cap);
  }

  /** Type strings seen so far, by their token bytes: a batch has few distinct types, so most reads decode nothing. */
  private readonly tokens: TypeToken[] = objectArray();

  /** Reads the string value at the cursor as a {@link TypeToken}, reusing that of an identical earlier token. */
  internToken(sc: Scanner): TypeToken {
    const s = sc.skipStringToken();
    return this.internSpan(sc, s, sc.i, sc.escaped, sc.wide);
  }

  /**
   * The {@link TypeToken} of the token [s, e) of the scanner's body (its escape and wide flags as its skip found
   * them), reusing that of an identical earlier token: what routing asks of a type is worked out once per body,
   * not per event (a set look-up, a prefix test and a map look-up per event were ~0.01 µs of processSync).
   */
  internSpan(sc: Scanner, s: number, e: number, escaped: boolean, wide: boolean): TypeToken {
    const len = e - s;
    const buf = sc.b;
    outer: for (const t of this.tokens) {
      const tb = t.bytes;
      if (tb.length !== len) continue;
      for (let k = 0; k < len; k++) if (tb[k] !== buf[s + k]) continue outer;
      return t;
    }
    const value = sc.decodeAs(s, e, escaped, wide);
    const wanted = this.opts.wantedTypes;
    const t: TypeToken = { bytes: Buffer.from(buf.subarray(s, e)), value, index: -1, wanted: wanted === null || wanted.has(value), verification: value.startsWith(VERIFICATION) };
    if (this.tokens.length < 64) this.tokens.push(t);
    return t;
  }

  /** The token's index in the batch's strings, added there on first use. */
  indexOf(t: TypeToken): number {
    return t.index >= 0 ? t.index : (t.index = this.intern(t.value));
  }

  /** The index of `s` in the batch's strings, added on first use (two tokens may decode to one string: one escaped). */
  private intern(s: string): number {
    let k = this.stringIndex.get(s);
    if (k === undefined) {
      k = this.strings.push(s) - 1;
      this.stringIndex.set(s, k);
    }
    return k;
  }

  /** Adds an event to the columns: its room (index in `rooms`), interned type and rel_type (−1: none), flags and {@link OFFSET_STRIDE} offsets. */
  addEvent(room: number, type: number, relType: number, ts: number, flags: number, offsets: Int32Array): void {
    const n = this.count;
    if (n === this.room.length) this.grow();
    this.room[n] = room;
    this.type[n] = type;
    this.relType[n] = relType;
    this.ts[n] = ts;
    this.flags[n] = flags;
    // A loop, not offsets.set(): a call into the runtime for 10 numbers cost more than copying them.
    const o = this.offsets;
    for (let k = 0, at = n * OFFSET_STRIDE; k < OFFSET_STRIDE; k++) o[at + k] = offsets[k]!;
    this.count = n + 1;
  }

  private grow(): void {
    const cap = this.room.length * 2;
    const more = <T extends Int32Array | Float64Array | Uint8Array>(a: T, size: number): T => {
      const b = new (a.constructor as new (n: number) => T)(size);
      b.set(a);
      return b;
    };
    this.room = more(this.room, cap);
    this.type = more(this.type, cap);
    this.relType = more(this.relType, cap);
    this.ts = more(this.ts, cap);
    this.flags = more(this.flags, cap);
    this.offsets = more(this.offsets, cap * OFFSET_STRIDE);
  }

  error(message: string, roomId?: string, eventId?: string): void {
    const e: WireError = { code: 'HALCYON_BAD_EVENT', message };
    if (roomId !== undefined) e.roomId = roomId;
    if (eventId !== undefined) e.eventId = eventId;
    this.errors.push(e);
  }

  finish(): ProcessedSync {
    const n = this.count;
    return {
      nextBatch: this.nextBatch!,
      rooms: this.rooms,
      // Copies of exactly the events' length, each with a buffer of its own: they are transferred to main.
      events: {
        count: n,
        room: this.room.slice(0, n),
        type: this.type.slice(0, n),
        relType: this.relType.slice(0, n),
        strings: this.strings,
        ts: this.ts.slice(0, n),
        flags: this.flags.slice(0, n),
        offsets: this.offsets.slice(0, n * OFFSET_STRIDE),
      },
      invites: this.invites,
      knocks: this.knocks,
      left: this.left,
      state: this.accountData.length > 0 ? { rooms: this.state, accountData: this.accountData } : { rooms: this.state },
      errors: this.errors,
      crypto: this.crypto,
      accountData: this.accountData,
      receipts: this.receipts,
      gaps: this.gaps,
    };
  }
}

