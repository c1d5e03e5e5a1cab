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
  type ReceiptWire,
  type StateChanges,
} from '../protocol.ts';
import type { Scanner } from './scan.ts';

/** What processing needs to know beyond the body. */
export interface ProcessOptions {
  /** Timeline event types to keep (state events always go to the cache); null keeps every type. */
  wantedTypes: ReadonlySet<string> | null;
  /** The bot's user ID: its events are flagged {@link EVENT_FLAGS.own}. */
  ownUserId?: string;
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

/** Collects what one body brings, then {@link Builder.finish} turns it into a {@link ProcessedSync}. */
export class Builder {
  nextBatch: string | null = null;
  readonly rooms: string[] = [];
  readonly room: number[] = [];
  readonly type: number[] = [];
  readonly relType: number[] = [];
  readonly strings: string[] = [];
  private readonly stringIndex = new Map<string, number>();
  readonly ts: number[] = [];
  readonly flags: number[] = [];
  readonly offsets: number[] = [];
  readonly invites: InviteWire[] = [];
  readonly knocks: KnockWire[] = [];
  readonly left: string[] = [];
  readonly state: StateChanges['rooms'] = [];
  readonly errors: WireError[] = [];
  readonly crypto: SyncCryptoFields = { toDevice: [], deviceListsChanged: [], deviceListsLeft: [], otkCounts: null, fallbackKeyTypes: null, verification: [] };
  readonly accountData: AccountDataWire[] = [];
  readonly receipts: ReceiptWire[] = [];
  readonly gaps: Array<{ roomId: string; prevBatch: string }> = [];
  /** The bot's user ID as the JSON string token a server writes, to flag own events without decoding senders. */
  readonly ownToken: Buffer | null;
  constructor(readonly opts: ProcessOptions) {
    this.ownToken = opts.ownUserId === undefined ? null : Buffer.from(JSON.stringify(opts.ownUserId), 'utf8');
  }

  /** Type strings seen so far, by their token bytes: a batch has few distinct types, so most reads decode nothing. */
  private readonly tokens: Array<{ bytes: Buffer; value: string }> = [];

  /** Reads the string value at the cursor, reusing the string of an identical earlier token. */
  internToken(sc: Scanner): string {
    const s = sc.skipStringToken();
    const e = sc.i;
    const len = e - s;
    const buf = sc.b;
    outer: for (const t of this.tokens) {
      const tb = t.bytes;
      if (tb.length !== len) continue;
      for (let k = 0; k < len; k++) if (tb[k] !== buf[s + k]) continue outer;
      return t.value;
    }
    const value = sc.decode(s, e);
    if (this.tokens.length < 64) this.tokens.push({ bytes: Buffer.from(buf.subarray(s, e)), value });
    return value;
  }

  intern(s: string): number {
    let k = this.stringIndex.get(s);
    if (k === undefined) {
      k = this.strings.push(s) - 1;
      this.stringIndex.set(s, k);
    }
    return k;
  }

  error(message: string, roomId?: string, eventId?: string): void {
    const e: WireError = { code: 'HALCYON_BAD_EVENT', message };
    if (roomId !== undefined) e.roomId = roomId;
    if (eventId !== undefined) e.eventId = eventId;
    this.errors.push(e);
  }

  finish(): ProcessedSync {
    return {
      nextBatch: this.nextBatch!,
      rooms: this.rooms,
      events: {
        count: this.type.length,
        room: Int32Array.from(this.room),
        type: Int32Array.from(this.type),
        relType: Int32Array.from(this.relType),
        strings: this.strings,
        ts: Float64Array.from(this.ts),
        flags: Uint8Array.from(this.flags),
        offsets: Int32Array.from(this.offsets),
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

