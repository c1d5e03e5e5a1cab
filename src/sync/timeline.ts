/**
 * Reading one timeline event of a /sync body: its byte span and routing fields go into the event columns without
 * building strings for its IDs; a state event or a redaction is also parsed (the cache needs it). The hot path of
 * sync processing.
 */
import { EVENT_FLAGS, type MatrixEvent, OFF, OFFSET_STRIDE } from '../protocol.ts';
import { keyBytes, Scanner } from './scan.ts';
import { EVENT_RECORD_FLAGS, EVENT_SLOTS, eventOffsets, eventRecord, eventTs } from './skipper.ts';
import type { Builder, TypeToken } from './builder.ts';

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
/** The msgtype of an in-room verification request (a clear one goes to the crypto actor, as do `m.key.verification.*` events). */
const VERIFICATION_REQUEST_TOKEN = Buffer.from('"m.key.verification.request"', 'utf8');

/** Offsets of the event being read ({@link OFF} slots); reused, since events are read one at a time. */
const span = new Int32Array(OFFSET_STRIDE);
/** Marks a field that is present but not a string. */
const WRONG_TYPE = -2;

/** Bits `1 << slot` of the {@link span} strings read with a byte of 0x80 or above (reset with the span). */
let wideSlots = 0;
/** The event_id and sender slots' {@link wideSlots} bits: either set, and the batch's IDs are not all ASCII. */
const ID_SLOTS = (1 << OFF.eventId) | (1 << OFF.sender);

/** Records the span of the string at the cursor in slot `slot` (or marks it mistyped); returns its escape flag. */
function readSpan(sc: Scanner, slot: number): number {
  if (!sc.atString()) {
    sc.skipValue();
    span[slot] = WRONG_TYPE;
    return 0;
  }
  span[slot] = sc.skipStringToken();
  span[slot + 1] = sc.i;
  if (sc.wide) wideSlots |= 1 << slot;
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
export function readTimelineEvent(sc: Scanner, b: Builder, roomId: string, roomIndex: number): MatrixEvent | undefined {
  if (!sc.atObject()) {
    sc.skipValue();
    b.error('timeline event is not an object', roomId);
    return undefined;
  }
  // The common event in one WebAssembly call; anything it leaves (to report, or unusual) is read in JS below.
  const dst = b.idGather?.dst(sc) ?? -1;
  return sc.readEventFast(dst) ? fromRecord(sc, b, roomId, roomIndex, dst >= 0) : readInJs(sc, b, roomId, roomIndex);
}

/** The event the skipper's readEvent just read, from its record to the columns (`copied`: its IDs too, see src/sync/ids.ts). */
function fromRecord(sc: Scanner, b: Builder, roomId: string, roomIndex: number, copied: boolean): MatrixEvent | undefined {
  const r = eventRecord;
  const f = r[EVENT_SLOTS.flags]!;
  const type = b.internSpan(sc, r[EVENT_SLOTS.type]!, r[EVENT_SLOTS.type + 1]!, (f & EVENT_RECORD_FLAGS.typeEscaped) !== 0, (f & EVENT_RECORD_FLAGS.typeWide) !== 0);
  const rs = r[EVENT_SLOTS.relType]!;
  const relType = rs < 0 ? null : b.internSpan(sc, rs, r[EVENT_SLOTS.relType + 1]!, (f & EVENT_RECORD_FLAGS.relTypeEscaped) !== 0, (f & EVENT_RECORD_FLAGS.relTypeWide) !== 0);
  const verificationRequest = (f & EVENT_RECORD_FLAGS.verificationRequest) !== 0;
  if ((f & EVENT_RECORD_FLAGS.idsWide) !== 0) b.idsWide = true;
  return toColumns(sc, b, roomId, roomIndex, type, relType, eventTs[EVENT_SLOTS.ts]!, f & EVENT_RECORD_FLAGS.columns, verificationRequest, eventOffsets, copied);
}

/** {@link readTimelineEvent} in JS: the reference, which reports what makes an event unusable. */
function readInJs(sc: Scanner, b: Builder, roomId: string, roomIndex: number): MatrixEvent | undefined {
  const start = sc.i;
  let type: TypeToken | null = null;
  let relType: TypeToken | null = null;
  let ts: number | null = null;
  let contentOk = false;
  let bad: string | null = null;
  let flags = 0;
  let typeSeen = false;
  let tsSeen = false;
  let seen = 0;
  span.fill(-1);
  wideSlots = 0;
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
  bad ??= type === null ? (typeSeen ? 'type is not a string' : 'missing type') : missingField(contentOk, ts === null ? tsSeen : null);
  if (bad !== null) {
    b.error(`timeline event skipped: ${bad}`, roomId, decodeToken(sc, span[OFF.eventId]!, span[OFF.eventId + 1]!));
    return undefined;
  }
  span[OFF.rawStart] = start;
  span[OFF.rawEnd] = sc.i;
  if ((wideSlots & ID_SLOTS) !== 0) b.idsWide = true;
  return toColumns(sc, b, roomId, roomIndex, type!, relType, ts!, flags, rel.verificationRequest, span, false);
}

/**
 * Adds a read event to the columns if handlers want its type, and returns it parsed when it is a state event or
 * a redaction (the cache needs them). `offsets` holds its span and string tokens in the columns' order (OFF): the
 * JS reader's {@link span}, or the WebAssembly reader's record.
 */
function toColumns(sc: Scanner, b: Builder, roomId: string, roomIndex: number, type: TypeToken, relType: TypeToken | null, ts: number, flags: number, verificationRequest: boolean, offsets: Int32Array, idsCopied: boolean): MatrixEvent | undefined {
  const start = offsets[OFF.rawStart]!;
  const end = offsets[OFF.rawEnd]!;
  // Clear in-room verification events go to the crypto actor whatever handlers want (encrypted ones reach it anyway).
  if (type.verification || (type.value === 'm.room.message' && verificationRequest)) {
    b.crypto.verification.push({ roomId, event: JSON.parse(sc.b.toString('utf8', start, end)) as MatrixEvent });
  }
  if (type.wanted) {
    const own = b.ownToken;
    const senderS = offsets[OFF.sender]!;
    const senderE = offsets[OFF.sender + 1]!;
    if (own !== null && senderE - senderS === own.length && sc.b.compare(own, 0, own.length, senderS, senderE) === 0) flags |= EVENT_FLAGS.own;
    b.addEvent(roomIndex, b.indexOf(type), relType === null ? -1 : b.indexOf(relType), ts, flags, offsets);
    b.idGather?.keep(sc, offsets, idsCopied);
  }
  return offsets[OFF.stateKey]! >= 0 || type.value === 'm.room.redaction' ? (JSON.parse(sc.b.toString('utf8', start, end)) as MatrixEvent) : undefined;
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
const rel = { type: null as TypeToken | null, flags: 0, verificationRequest: false };

/**
 * Reads an event's `content` object at the cursor for its `m.relates_to`: the relation type and event ID span
 * go to {@link rel}; returns what makes the event unusable (a repeated or escaped routed name), or null.
 */
function readContent(sc: Scanner, b: Builder): string | null {
  let bad: string | null = null;
  let relatesSeen = false;
  rel.type = null;
  rel.flags = 0;
  rel.verificationRequest = false;
  sc.openObject();
  for (let f = true; sc.keyToken(f); f = false) {
    if (sc.keyIs(K.msgtype)) {
      // A notice is flagged so main can keep other senders' notices from `message` handlers without parsing
      // (the last msgtype counts, as for JSON.parse).
      rel.flags &= ~EVENT_FLAGS.notice;
      rel.verificationRequest = false;
      if (!sc.atString()) {
        sc.skipValue();
        continue;
      }
      const s = sc.skipStringToken();
      if (sameToken(sc, s, NOTICE_TOKEN)) rel.flags |= EVENT_FLAGS.notice;
      else rel.verificationRequest = sameToken(sc, s, VERIFICATION_REQUEST_TOKEN);
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

/** Whether the string token just skipped (from `s` to the cursor) is `token`. */
function sameToken(sc: Scanner, s: number, token: Buffer): boolean {
  return sc.i - s === token.length && sc.b.compare(token, 0, token.length, s, sc.i) === 0;
}

/** Decodes a string token [s, e) of the scanner's bytes, or undefined when absent (s < 0). */
function decodeToken(sc: Scanner, s: number, e: number): string | undefined {
  return s >= 0 ? new Scanner(sc.b.subarray(s, e)).readString() : undefined;
}
