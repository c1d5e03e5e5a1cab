/**
 * Sync processing as a pure function: one /sync body (text) in, one change batch out. No threads, no I/O; the
 * sync actor calls it and tests call it directly on recorded bodies.
 */
import { HalcyonError, type WireError } from '../errors.ts';
import {
  type AccountDataWire,
  EVENT_FLAGS,
  type EventColumns,
  type InviteWire,
  type KnockWire,
  type MatrixEvent,
  OFF,
  OFFSET_STRIDE,
  type ReceiptWire,
  type RoomSummary,
  type StateChanges,
  type WireBatch,
} from '../protocol.ts';
import { redactedEventId } from '../redaction.ts';
import { keyBytes, Scanner, ScanError } from './scan.ts';

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
}

type Membership = RoomSummary['membership'];
type StateRoom = StateChanges['rooms'][number];

/**
 * Processes one /sync body (its UTF-8 bytes). Malformed events are reported in `errors` and skipped; a body
 * that is not valid JSON or lacks `next_batch` throws a `HALCYON_BAD_SYNC` error (the caller retries the same
 * `since`). The returned event columns point into `body`.
 */
export function processSync(body: Uint8Array, opts: ProcessOptions): ProcessedSync {
  const b = new Builder(opts);
  const sc = new Scanner(body);
  try {
    if (!sc.atObject()) sc.fail('the body is not a JSON object');
    sc.openObject();
    for (let k: string | null, first = true; (k = sc.key(first)) !== null; first = false) {
      if (k === 'next_batch' && sc.atString()) b.nextBatch = sc.readString();
      else if (k === 'rooms' && sc.atObject()) readRooms(sc, b);
      else if (k === 'to_device' && sc.atObject()) readToDevice(sc.readValue() as Record<string, unknown>, b);
      else if (k === 'account_data' && sc.atObject()) readAccountData(sc.readValue() as Record<string, unknown>, b, null);
      else if (k === 'device_lists' && sc.atObject()) {
        const dl = sc.readValue() as Record<string, unknown>;
        b.crypto.deviceListsChanged = stringList(dl.changed);
        b.crypto.deviceListsLeft = stringList(dl.left);
      } else if (k === 'device_one_time_keys_count' && sc.atObject()) {
        const counts: Record<string, number> = {};
        for (const [alg, n] of Object.entries(sc.readValue() as Record<string, unknown>)) if (typeof n === 'number') counts[alg] = n;
        b.crypto.otkCounts = counts;
      } else if (k === 'device_unused_fallback_key_types' && sc.atArray()) b.crypto.fallbackKeyTypes = stringList(sc.readValue());
      else sc.skipValue();
    }
    sc.end();
  } catch (err) {
    if (err instanceof ScanError || err instanceof SyntaxError) {
      throw new HalcyonError('HALCYON_BAD_SYNC', `malformed /sync body: ${err.message}`, { cause: err });
    }
    throw err;
  }
  if (b.nextBatch === null) throw new HalcyonError('HALCYON_BAD_SYNC', 'malformed /sync body: no next_batch string');
  return b.finish();
}

class Builder {
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
  readonly state: StateRoom[] = [];
  readonly errors: WireError[] = [];
  readonly crypto: SyncCryptoFields = { toDevice: [], deviceListsChanged: [], deviceListsLeft: [], otkCounts: null, fallbackKeyTypes: null };
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

/** Keeps the well-formed to-device events (type, sender, content); reports the rest. */
function readToDevice(td: Record<string, unknown>, b: Builder): void {
  if (!Array.isArray(td.events)) return;
  for (const ev of td.events as unknown[]) {
    if (isObject(ev) && typeof ev.type === 'string' && typeof ev.sender === 'string' && isObject(ev.content)) b.crypto.toDevice.push(ev as unknown as MatrixEvent);
    else b.error('to-device event skipped: not an object with type, sender and content');
  }
}

/** Keeps the well-formed account data events (type and object content); reports the rest. */
function readAccountData(ad: Record<string, unknown>, b: Builder, roomId: string | null): void {
  if (!Array.isArray(ad.events)) return;
  for (const ev of ad.events as unknown[]) {
    if (isObject(ev) && typeof ev.type === 'string' && isObject(ev.content)) b.accountData.push({ roomId, type: ev.type, content: ev.content });
    else b.error('account data event skipped: not an object with type and content', roomId ?? undefined);
  }
}

/** Flattens `m.receipt` ephemeral events; other ephemeral types (typing) are ignored. */
function readEphemeral(eph: Record<string, unknown>, b: Builder, roomId: string): void {
  if (!Array.isArray(eph.events)) return;
  for (const ev of eph.events as unknown[]) {
    if (!isObject(ev) || ev.type !== 'm.receipt') continue;
    if (!isObject(ev.content)) {
      b.error('receipt event skipped: content is not an object', roomId);
      continue;
    }
    for (const [eventId, byType] of Object.entries(ev.content)) {
      if (!isObject(byType)) continue;
      for (const [receiptType, byUser] of Object.entries(byType)) {
        if (!isObject(byUser)) continue;
        for (const [userId, r] of Object.entries(byUser)) {
          const rec = isObject(r) ? r : {};
          b.receipts.push({
            roomId,
            eventId,
            userId,
            receiptType,
            ts: typeof rec.ts === 'number' ? rec.ts : null,
            threadId: typeof rec.thread_id === 'string' ? rec.thread_id : null,
          });
        }
      }
    }
  }
}

function stringList(v: unknown): string[] {
  return Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : [];
}

function readRooms(sc: Scanner, b: Builder): void {
  sc.openObject();
  for (let section: string | null, first = true; (section = sc.key(first)) !== null; first = false) {
    const membership: Membership | null =
      section === 'join' ? 'join' : section === 'invite' ? 'invite' : section === 'leave' ? 'leave' : section === 'knock' ? 'knock' : null;
    if (membership === null || !sc.atObject()) {
      sc.skipValue();
      continue;
    }
    sc.openObject();
    for (let roomId: string | null, f = true; (roomId = sc.key(f)) !== null; f = false) {
      if (!sc.atObject()) {
        b.error(`room ${section} entry is not an object`, roomId);
        sc.skipValue();
        continue;
      }
      if (membership === 'invite') readInvite(sc, b, roomId);
      else if (membership === 'knock') readKnock(sc, b, roomId);
      else readRoom(sc, b, roomId, membership);
    }
  }
}

function readRoom(sc: Scanner, b: Builder, roomId: string, membership: Membership): void {
  const st: StateRoom = { roomId, membership, state: [] };
  const timelineState: MatrixEvent[] = [];
  const redactions: string[] = [];
  let roomIndex = -1;
  let limited = false;
  let prevBatch: string | null = null;
  sc.openObject();
  for (let k: string | null, first = true; (k = sc.key(first)) !== null; first = false) {
    if (k === 'timeline' && sc.atObject()) {
      sc.openObject();
      for (let t: string | null, f = true; (t = sc.key(f)) !== null; f = false) {
        if (t === 'limited') {
          limited = sc.readValue() === true;
          continue;
        }
        if (t === 'prev_batch' && sc.atString()) {
          prevBatch = sc.readString();
          continue;
        }
        if (t !== 'events' || !sc.atArray()) {
          sc.skipValue();
          continue;
        }
        sc.openArray();
        for (let fi = true; sc.item(fi); fi = false) {
          if (roomIndex < 0) roomIndex = b.rooms.push(roomId) - 1;
          const ev = readTimelineEvent(sc, b, roomId, roomIndex);
          if (ev?.state_key !== undefined) timelineState.push(ev);
          else if (ev && membership === 'join') {
            const id = redactedEventId(ev);
            if (id !== null) redactions.push(id);
          }
        }
      }
    } else if (k === 'state' && sc.atObject()) {
      sc.openObject();
      for (let t: string | null, f = true; (t = sc.key(f)) !== null; f = false) {
        if (t === 'events' && sc.atArray()) readStateEvents(sc, b, roomId, st.state);
        else sc.skipValue();
      }
    } else if (k === 'account_data' && sc.atObject()) {
      readAccountData(sc.readValue() as Record<string, unknown>, b, roomId);
    } else if (k === 'ephemeral' && sc.atObject() && membership === 'join') {
      readEphemeral(sc.readValue() as Record<string, unknown>, b, roomId);
    } else if (k === 'summary' && sc.atObject()) {
      const summary = sc.readValue() as StateRoom['summary'];
      if (summary && Object.keys(summary).length > 0) st.summary = summary;
    } else sc.skipValue();
  }
  // Timeline state events apply after the state block: the block is the state at the start of the timeline.
  for (const ev of timelineState) st.state.push(ev);
  if (redactions.length > 0) st.redactions = redactions;
  if (membership === 'leave') b.left.push(roomId);
  // A gappy timeline: events between the previous sync and this timeline were left out.
  if (membership === 'join' && limited && prevBatch !== null) b.gaps.push({ roomId, prevBatch });
  // A joined room with no state change has nothing for the cache: skipping it keeps a 10,000-room batch from
  // costing 10,000 cache writes.
  if (membership !== 'join' || st.state.length > 0 || st.summary || st.redactions) b.state.push(st);
}

function readStateEvents(sc: Scanner, b: Builder, roomId: string, out: MatrixEvent[]): void {
  sc.openArray();
  for (let f = true; sc.item(f); f = false) {
    const ev = sc.readValue();
    const problem = stateProblem(ev);
    if (problem) b.error(`state event skipped: ${problem}`, roomId, eventIdOf(ev));
    else out.push(ev as MatrixEvent);
  }
}

function readInvite(sc: Scanner, b: Builder, roomId: string): void {
  const invite: InviteWire = { roomId, inviter: null, name: null, isDirect: false, eventId: null };
  const state = readStrippedState(sc, b, roomId, 'invite_state');
  for (const ev of state) {
    if (ev.type === 'm.room.name' && typeof ev.content.name === 'string') invite.name = ev.content.name;
    if (ev.type === 'm.room.member' && ev.content.membership === 'invite' && typeof ev.sender === 'string') {
      invite.inviter = ev.sender;
      if (ev.state_key === b.opts.ownUserId) {
        if (ev.content.is_direct === true) invite.isDirect = true;
        if (typeof ev.event_id === 'string') invite.eventId = ev.event_id;
      }
    }
  }
  b.invites.push(invite);
  // The cache keeps an invite's stripped state apart from the room's state: nothing authenticates it.
  b.state.push({ roomId, membership: 'invite', state });
}

function readKnock(sc: Scanner, b: Builder, roomId: string): void {
  const state = readStrippedState(sc, b, roomId, 'knock_state');
  b.knocks.push({ roomId, state });
  b.state.push({ roomId, membership: 'knock', state });
}

/** Reads the well-formed events of `<section>.events` (stripped state) from the room object at the cursor. */
function readStrippedState(sc: Scanner, b: Builder, roomId: string, section: 'invite_state' | 'knock_state'): MatrixEvent[] {
  const out: MatrixEvent[] = [];
  sc.openObject();
  for (let k: string | null, first = true; (k = sc.key(first)) !== null; first = false) {
    if (k !== section || !sc.atObject()) {
      sc.skipValue();
      continue;
    }
    sc.openObject();
    for (let t: string | null, f = true; (t = sc.key(f)) !== null; f = false) {
      if (t !== 'events' || !sc.atArray()) {
        sc.skipValue();
        continue;
      }
      sc.openArray();
      for (let fi = true; sc.item(fi); fi = false) {
        const ev = sc.readValue() as MatrixEvent;
        // Stripped state has no event_id or timestamp, so only type, state_key, sender and content are checked.
        if (!isObject(ev) || typeof ev.type !== 'string' || typeof ev.state_key !== 'string' || !isObject(ev.content)) {
          b.error(`${section.replace('_', ' ')} event skipped: not a stripped state event`, roomId);
          continue;
        }
        out.push(ev);
      }
    }
  }
  return out;
}

const K = {
  type: keyBytes('type'),
  eventId: keyBytes('event_id'),
  sender: keyBytes('sender'),
  stateKey: keyBytes('state_key'),
  ts: keyBytes('origin_server_ts'),
  content: keyBytes('content'),
  relatesTo: keyBytes('m.relates_to'),
  relType: keyBytes('rel_type'),
  msgtype: keyBytes('msgtype'),
};

/** The `m.notice` msgtype as the string token a server writes (compared without decoding). */
const NOTICE_TOKEN = Buffer.from('"m.notice"', 'utf8');

/** Offsets of the event being read ({@link OFF} slots); reused, since events are read one at a time. */
const span = new Int32Array(OFFSET_STRIDE);
/** Marks a field that is present but not a string. */
const WRONG_TYPE = -2;

/** Records the span of the string at the cursor in slot `slot` (or marks it mistyped); returns its escape flag. */
function readSpan(sc: Scanner, slot: number): number {
  if (!sc.atString()) {
    sc.skipValue();
    span[slot] = WRONG_TYPE;
    return 0;
  }
  span[slot] = sc.skipStringToken();
  span[slot + 1] = sc.i;
  return sc.escaped ? EVENT_FLAGS.escaped(slot) : 0;
}

/** Bits of the top-level member names {@link readTimelineEvent} routes on, to catch a repeated one. */
const SEEN = { type: 1, eventId: 2, sender: 4, stateKey: 8, ts: 16, content: 32 } as const;

/**
 * Reads one timeline event: records its byte span and routing fields in the columns (no strings are made for
 * IDs), and returns the parsed event when it is a state event or a redaction (the cache needs them).
 *
 * The columns and a handler's `JSON.parse` of the span must agree. They would not if a routed name came twice
 * (`JSON.parse` keeps the last) or escaped (`"cont\u0065nt"` is `content` to `JSON.parse`, not to the byte
 * comparison): such an event is skipped and reported. Any escaped top-level name is refused (the key token's
 * escape flag is known); in `content` and `m.relates_to`, where user data may escape names, only one that
 * decodes to a routed name is.
 */
function readTimelineEvent(sc: Scanner, b: Builder, roomId: string, roomIndex: number): MatrixEvent | undefined {
  if (!sc.atObject()) {
    sc.skipValue();
    b.error('timeline event is not an object', roomId);
    return undefined;
  }
  const start = sc.i;
  let type: string | null = null;
  let relType: string | null = null;
  let ts: number | null = null;
  let contentOk = false;
  let bad: string | null = null;
  let flags = 0;
  let typeSeen = false;
  let tsSeen = false;
  let seen = 0;
  span.fill(-1);
  sc.openObject();
  for (let first = true; sc.keyToken(first); first = false) {
    if (sc.escaped) {
      bad ??= 'a top-level member name contains an escape';
      sc.skipValue();
      continue;
    }
    const bit = topLevelBit(sc);
    if (bit !== 0) {
      if ((seen & bit) !== 0) bad ??= `member "${sc.decode(sc.ks, sc.ke)}" appears twice`;
      seen |= bit;
    }
    if (bit === SEEN.type) {
      typeSeen = true;
      if (sc.atString()) type = b.internToken(sc);
      else sc.skipValue();
    } else if (bit === SEEN.eventId) flags |= readSpan(sc, OFF.eventId);
    else if (bit === SEEN.sender) flags |= readSpan(sc, OFF.sender);
    else if (bit === SEEN.stateKey) flags |= readSpan(sc, OFF.stateKey);
    else if (bit === SEEN.ts) {
      tsSeen = true;
      if (sc.atNumber()) ts = sc.readNumber();
      else sc.skipValue();
    } else if (bit === SEEN.content) {
      if (!sc.atObject()) {
        sc.skipValue();
        bad ??= 'content is not an object';
        continue;
      }
      contentOk = true;
      const problem = readContent(sc, b); // read whatever `bad` holds: `??=` would skip the call
      bad ??= problem;
      relType = rel.type;
      flags |= rel.flags;
    } else sc.skipValue();
  }
  const end = sc.i;
  const senderS = span[OFF.sender]!;
  const senderE = span[OFF.sender + 1]!;
  bad ??= type === null ? (typeSeen ? 'type is not a string' : 'missing type') : missingField(contentOk, ts === null ? tsSeen : null);
  if (bad !== null) {
    b.error(`timeline event skipped: ${bad}`, roomId, decodeToken(sc, span[OFF.eventId]!, span[OFF.eventId + 1]!));
    return undefined;
  }
  const isState = span[OFF.stateKey]! >= 0;
  if (b.opts.wantedTypes === null || b.opts.wantedTypes.has(type!)) {
    const own = b.ownToken;
    if (own !== null && senderE - senderS === own.length && sc.b.compare(own, 0, own.length, senderS, senderE) === 0) flags |= EVENT_FLAGS.own;
    b.room.push(roomIndex);
    b.type.push(b.intern(type!));
    b.relType.push(relType === null ? -1 : b.intern(relType));
    b.ts.push(ts!);
    b.flags.push(flags);
    span[OFF.rawStart] = start;
    span[OFF.rawEnd] = end;
    for (let k = 0; k < OFFSET_STRIDE; k++) b.offsets.push(span[k]!);
  }
  return isState || type === 'm.room.redaction' ? (JSON.parse(sc.b.toString('utf8', start, end)) as MatrixEvent) : undefined;
}

/**
 * What the event being read (its {@link span}) lacks or has mistyped among event_id, sender, content,
 * origin_server_ts and state_key, or null. `tsSeen` is null when a numeric timestamp was read, else whether a
 * mistyped one was present.
 */
function missingField(contentOk: boolean, tsSeen: boolean | null): string | null {
  const idS = span[OFF.eventId]!;
  const senderS = span[OFF.sender]!;
  if (idS < 0) return idS === WRONG_TYPE ? 'event_id is not a string' : 'missing event_id';
  if (senderS < 0) return senderS === WRONG_TYPE ? 'sender is not a string' : 'missing sender';
  if (!contentOk) return 'missing content';
  if (tsSeen !== null) return tsSeen ? 'origin_server_ts is not a number' : 'missing origin_server_ts';
  return span[OFF.stateKey] === WRONG_TYPE ? 'state_key is not a string' : null;
}

/** Which routed top-level name the last key token is ({@link SEEN} bit), or 0. */
function topLevelBit(sc: Scanner): number {
  if (sc.keyIs(K.type)) return SEEN.type;
  if (sc.keyIs(K.eventId)) return SEEN.eventId;
  if (sc.keyIs(K.sender)) return SEEN.sender;
  if (sc.keyIs(K.stateKey)) return SEEN.stateKey;
  if (sc.keyIs(K.ts)) return SEEN.ts;
  if (sc.keyIs(K.content)) return SEEN.content;
  return 0;
}

/** Whether the last key token is escaped and decodes to `name` (escaped names never match {@link Scanner.keyIs}). */
function escapedAs(sc: Scanner, name: string): boolean {
  return sc.escaped && sc.decode(sc.ks, sc.ke) === name;
}

/** What {@link readContent} found: `m.relates_to` and the notice flag (reused: events are read one at a time, on the hot path). */
const rel = { type: null as string | null, flags: 0 };

/**
 * Reads an event's `content` object at the cursor for its `m.relates_to`: the relation type and event ID span
 * go to {@link rel}; returns what makes the event unusable (a repeated or escaped routed name), or null.
 */
function readContent(sc: Scanner, b: Builder): string | null {
  let bad: string | null = null;
  let relatesSeen = false;
  rel.type = null;
  rel.flags = 0;
  sc.openObject();
  for (let f = true; sc.keyToken(f); f = false) {
    if (sc.keyIs(K.msgtype)) {
      // A notice is flagged so main can keep other senders' notices from `message` handlers without parsing
      // (the last msgtype counts, as for JSON.parse).
      rel.flags &= ~EVENT_FLAGS.notice;
      if (!sc.atString()) sc.skipValue();
      else if (isToken(sc, NOTICE_TOKEN)) rel.flags |= EVENT_FLAGS.notice;
      continue;
    }
    const relates = sc.keyIs(K.relatesTo);
    if (relates || escapedAs(sc, 'm.relates_to')) {
      if (relatesSeen || !relates) bad ??= relates ? 'content member "m.relates_to" appears twice' : 'content member "m.relates_to" is escaped';
      relatesSeen = true;
    }
    if (!relates || !sc.atObject()) {
      sc.skipValue();
      continue;
    }
    let relTypeSeen = false;
    let idSeen = false;
    sc.openObject();
    for (let g = true; sc.keyToken(g); g = false) {
      const isRelType = sc.keyIs(K.relType);
      const isId = !isRelType && sc.keyIs(K.eventId);
      if (escapedAs(sc, 'rel_type') || escapedAs(sc, 'event_id')) bad ??= 'an "m.relates_to" member name is escaped';
      else if ((isRelType && relTypeSeen) || (isId && idSeen)) bad ??= `"m.relates_to" member "${isRelType ? 'rel_type' : 'event_id'}" appears twice`;
      relTypeSeen ||= isRelType;
      idSeen ||= isId;
      if (isRelType && sc.atString()) rel.type = b.internToken(sc);
      else if (isId && sc.atString()) rel.flags |= readSpan(sc, OFF.relEventId);
      else sc.skipValue();
    }
  }
  return bad;
}

/** Consumes the string token at the cursor; true if its bytes are `token`'s (quotes included). */
function isToken(sc: Scanner, token: Buffer): boolean {
  const s = sc.skipStringToken();
  return sc.i - s === token.length && sc.b.compare(token, 0, token.length, s, sc.i) === 0;
}

/** Decodes a string token [s, e) of the scanner's bytes, or undefined when absent (s < 0). */
function decodeToken(sc: Scanner, s: number, e: number): string | undefined {
  return s >= 0 ? new Scanner(sc.b.subarray(s, e)).readString() : undefined;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function eventIdOf(ev: unknown): string | undefined {
  return isObject(ev) && typeof ev.event_id === 'string' ? ev.event_id : undefined;
}

function stateProblem(ev: unknown): string | null {
  if (!isObject(ev)) return 'not an object';
  if (typeof ev.type !== 'string') return 'missing or mistyped type';
  if (typeof ev.state_key !== 'string') return 'missing or mistyped state_key';
  if (!isObject(ev.content)) return 'missing or mistyped content';
  if (ev.sender !== undefined && typeof ev.sender !== 'string') return 'sender is not a string';
  return null;
}

/** A batch as the sync actor journals it (no sequence number or delivery state yet). */
export type TimelineBatch = Omit<WireBatch, 'seq' | 'redelivered' | 'done'>;

/**
 * A timeline-only batch made of events by room (a gap backfill's, or decrypted ones): they go through the same
 * processing as a /sync body, so validation, flags and wanted types apply exactly as to it. The body owns its
 * whole buffer (a small `Buffer.from` is a slice of a shared pool, which must never be transferred).
 */
export function timelineBatch(byRoom: Map<string, unknown[]>, opts: ProcessOptions): TimelineBatch {
  const join: Record<string, { timeline: { events: unknown[] } }> = {};
  for (const [roomId, events] of byRoom) join[roomId] = { timeline: { events } };
  const body = new Uint8Array(Buffer.from(JSON.stringify({ next_batch: '', rooms: { join } }), 'utf8'));
  const p = processSync(body, opts);
  return {
    nextBatch: '',
    first: false,
    deliver: true,
    rooms: p.rooms,
    body,
    events: p.events,
    invites: [],
    knocks: [],
    left: [],
    summaries: [],
    errors: p.errors,
    accountData: [],
    receipts: [],
  };
}
