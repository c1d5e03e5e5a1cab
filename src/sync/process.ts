/**
 * Sync processing as a pure function: one /sync body (text) in, one change batch out. No threads, no I/O; the
 * sync actor calls it and tests call it directly on recorded bodies.
 */
import { HalcyonError } from '../errors.ts';
import { type InviteWire, type MatrixEvent, type RoomSummary, type StateChanges, type WireBatch } from '../protocol.ts';
import { redactedEventId } from '../redaction.ts';
import { keyNames, Scanner, ScanError } from './scan.ts';
import { Builder, type ProcessedSync, type ProcessOptions } from './builder.ts';
import { gatherIds } from './ids.ts';
import { readTimelineEvent } from './timeline.ts';

export type { ProcessedSync, ProcessOptions, SyncCryptoFields } from './builder.ts';

type Membership = RoomSummary['membership'];

/** The member names of the rooms part of a body, recognised without decoding (see {@link Scanner.keyOf}). */
const SECTION_KEYS = keyNames('join', 'invite', 'leave', 'knock');
const ROOM_KEYS = keyNames('timeline', 'state', 'account_data', 'ephemeral', 'summary', 'unread_notifications');
const TIMELINE_KEYS = keyNames('events', 'limited', 'prev_batch');
/** A room's parts as a server sends them when nothing is in them: skipped without a parse. */
const EMPTY_EVENTS = Buffer.from('{"events":[]}', 'utf8');
const EMPTY_OBJECT = Buffer.from('{}', 'utf8');
const TRUE = Buffer.from('true', 'utf8');
type StateRoom = StateChanges['rooms'][number];

/**
 * Processes one /sync body (its UTF-8 bytes). Malformed events are reported in `errors` and skipped; a body
 * that is not valid JSON or lacks `next_batch` throws a `HALCYON_BAD_SYNC` error (the caller retries the same
 * `since`). The returned event columns point into `body`.
 */
export function processSync(body: Uint8Array, opts: ProcessOptions): ProcessedSync {
  const b = new Builder(opts, body.length);
  const sc = new Scanner(body, b.idGather !== null);
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
  const p = b.finish();
  // Gathered during the scan (ids.ts IdGather), else after it: a body the skipper did not take (a small one).
  const ids = b.idGather === null || b.idsWide ? null : (b.idGather.finish(p.events.count) ?? gatherIds(body, p.events));
  if (ids) p.events = { ...p.events, ...ids };
  return p;
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
  for (let section: string | null, first = true; (section = sc.keyOf(first, SECTION_KEYS)) !== null; first = false) {
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
  for (let k: string | null, first = true; (k = sc.keyOf(first, ROOM_KEYS)) !== null; first = false) {
    if (k === 'timeline' && sc.atObject()) {
      sc.openObject();
      for (let t: string | null, f = true; (t = sc.keyOf(f, TIMELINE_KEYS)) !== null; f = false) {
        if (t === 'limited') {
          // Only `true` counts (as for JSON.parse): a literal is matched, not parsed.
          limited = sc.skipIf(TRUE);
          if (!limited) sc.skipValue();
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
      if (sc.skipIf(EMPTY_EVENTS)) continue;
      sc.openObject();
      for (let t: string | null, f = true; (t = sc.keyOf(f, TIMELINE_KEYS)) !== null; f = false) {
        if (t === 'events' && sc.atArray()) readStateEvents(sc, b, roomId, st.state);
        else sc.skipValue();
      }
    } else if (k === 'account_data' && sc.atObject()) {
      if (!sc.skipIf(EMPTY_EVENTS)) readAccountData(sc.readValue() as Record<string, unknown>, b, roomId);
    } else if (k === 'ephemeral' && sc.atObject() && membership === 'join') {
      if (!sc.skipIf(EMPTY_EVENTS)) readEphemeral(sc.readValue() as Record<string, unknown>, b, roomId);
    } else if (k === 'summary' && sc.atObject()) {
      if (sc.skipIf(EMPTY_OBJECT)) continue;
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
  if (!sc.atArray()) sc.openArray(); // its error
  // The array in one parse, not an item at a time: a fresh start's initial sync holds ~12 state events per room,
  // and each parse of its own paid a decode and a JSON.parse call.
  for (const ev of sc.readValue() as unknown[]) {
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
