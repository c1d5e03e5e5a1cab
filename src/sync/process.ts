/**
 * Sync processing as a pure function: one /sync body (text) in, one change batch out. No threads, no I/O; the
 * sync actor calls it and tests call it directly on recorded bodies.
 */
import { HalcyonError, type WireError } from '../errors.ts';
import type { EventColumns, InviteWire, MatrixEvent, RoomSummary, StateChanges } from '../protocol.ts';
import { Scanner, ScanError } from './scan.ts';

/** What processing needs to know beyond the body. */
export interface ProcessOptions {
  /** Timeline event types to keep (state events always go to the cache); null keeps every type. */
  wantedTypes: ReadonlySet<string> | null;
}

/** The change batch of one /sync response, before sequencing. */
export interface ProcessedSync {
  nextBatch: string;
  rooms: string[];
  events: EventColumns;
  invites: InviteWire[];
  left: string[];
  state: StateChanges;
  errors: WireError[];
}

type Membership = RoomSummary['membership'];
type StateRoom = StateChanges['rooms'][number];

/**
 * Processes one /sync body. Malformed events are reported in `errors` and skipped; a body that is not valid
 * JSON or lacks `next_batch` throws a `HALCYON_BAD_SYNC` error (the caller retries the same `since`).
 */
export function processSync(text: string, opts: ProcessOptions): ProcessedSync {
  const b = new Builder(opts);
  const sc = new Scanner(text);
  try {
    if (!sc.atObject()) sc.fail('the body is not a JSON object');
    sc.openObject();
    for (let k: string | null, first = true; (k = sc.key(first)) !== null; first = false) {
      if (k === 'next_batch' && sc.atString()) b.nextBatch = sc.readString();
      else if (k === 'rooms' && sc.atObject()) readRooms(sc, b);
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
  readonly type: string[] = [];
  readonly eventId: string[] = [];
  readonly sender: string[] = [];
  readonly ts: number[] = [];
  readonly stateKey: (string | null)[] = [];
  readonly relType: (string | null)[] = [];
  readonly relEventId: (string | null)[] = [];
  readonly raw: string[] = [];
  readonly invites: InviteWire[] = [];
  readonly left: string[] = [];
  readonly state: StateRoom[] = [];
  readonly errors: WireError[] = [];
  constructor(readonly opts: ProcessOptions) {}

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
        count: this.raw.length,
        room: Int32Array.from(this.room),
        type: this.type,
        eventId: this.eventId,
        sender: this.sender,
        ts: Float64Array.from(this.ts),
        stateKey: this.stateKey,
        relType: this.relType,
        relEventId: this.relEventId,
        raw: this.raw,
      },
      invites: this.invites,
      left: this.left,
      state: { rooms: this.state },
      errors: this.errors,
    };
  }
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
      else readRoom(sc, b, roomId, membership);
    }
  }
}

function readRoom(sc: Scanner, b: Builder, roomId: string, membership: Membership): void {
  const st: StateRoom = { roomId, membership, state: [] };
  const timelineState: MatrixEvent[] = [];
  let roomIndex = -1;
  sc.openObject();
  for (let k: string | null, first = true; (k = sc.key(first)) !== null; first = false) {
    if (k === 'timeline' && sc.atObject()) {
      sc.openObject();
      for (let t: string | null, f = true; (t = sc.key(f)) !== null; f = false) {
        if (t !== 'events' || !sc.atArray()) {
          sc.skipValue();
          continue;
        }
        sc.openArray();
        for (let fi = true; sc.item(fi); fi = false) {
          if (roomIndex < 0) roomIndex = b.rooms.push(roomId) - 1;
          const ev = readTimelineEvent(sc, b, roomId, roomIndex);
          if (ev) timelineState.push(ev);
        }
      }
    } else if (k === 'state' && sc.atObject()) {
      sc.openObject();
      for (let t: string | null, f = true; (t = sc.key(f)) !== null; f = false) {
        if (t === 'events' && sc.atArray()) readStateEvents(sc, b, roomId, st.state);
        else sc.skipValue();
      }
    } else if (k === 'summary' && sc.atObject()) {
      const summary = sc.readValue() as StateRoom['summary'];
      if (summary && Object.keys(summary).length > 0) st.summary = summary;
    } else sc.skipValue();
  }
  // Timeline state events apply after the state block: the block is the state at the start of the timeline.
  for (const ev of timelineState) st.state.push(ev);
  if (membership === 'leave') b.left.push(roomId);
  b.state.push(st);
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
  const invite: InviteWire = { roomId, inviter: null, name: null };
  const st: StateRoom = { roomId, membership: 'invite', state: [] };
  sc.openObject();
  for (let k: string | null, first = true; (k = sc.key(first)) !== null; first = false) {
    if (k !== 'invite_state' || !sc.atObject()) {
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
          b.error('invite state event skipped: not a stripped state event', roomId);
          continue;
        }
        st.state.push(ev);
        if (ev.type === 'm.room.name' && typeof ev.content.name === 'string') invite.name = ev.content.name;
        if (ev.type === 'm.room.member' && ev.content.membership === 'invite' && typeof ev.sender === 'string') {
          invite.inviter = ev.sender;
        }
      }
    }
  }
  b.invites.push(invite);
  b.state.push(st);
}

/**
 * Reads one timeline event. Keeps its raw text and routing fields in the columns; returns the parsed event when
 * it is a state event (the cache needs it), else undefined.
 */
function readTimelineEvent(sc: Scanner, b: Builder, roomId: string, roomIndex: number): MatrixEvent | undefined {
  if (!sc.atObject()) {
    sc.skipValue();
    b.error('timeline event is not an object', roomId);
    return undefined;
  }
  const start = sc.i;
  let type: unknown, eventId: unknown, sender: unknown, ts: unknown, stateKey: unknown;
  let relType: string | null = null;
  let relEventId: string | null = null;
  let contentOk = false;
  let bad: string | null = null;
  sc.openObject();
  for (let k: string | null, first = true; (k = sc.key(first)) !== null; first = false) {
    switch (k) {
      case 'type':
      case 'event_id':
      case 'sender':
      case 'state_key': {
        const v = sc.atString() ? sc.readString() : (sc.skipValue(), NOT_STRING);
        if (k === 'type') type = v;
        else if (k === 'event_id') eventId = v;
        else if (k === 'sender') sender = v;
        else stateKey = v;
        break;
      }
      case 'origin_server_ts':
        ts = sc.atNumber() ? sc.readNumber() : (sc.skipValue(), NOT_STRING);
        break;
      case 'content':
        if (!sc.atObject()) {
          sc.skipValue();
          bad = 'content is not an object';
          break;
        }
        contentOk = true;
        sc.openObject();
        for (let c: string | null, f = true; (c = sc.key(f)) !== null; f = false) {
          if (c !== 'm.relates_to' || !sc.atObject()) {
            sc.skipValue();
            continue;
          }
          sc.openObject();
          for (let r: string | null, g = true; (r = sc.key(g)) !== null; g = false) {
            if (r === 'rel_type' && sc.atString()) relType = sc.readString();
            else if (r === 'event_id' && sc.atString()) relEventId = sc.readString();
            else sc.skipValue();
          }
        }
        break;
      default:
        sc.skipValue();
    }
  }
  const end = sc.i;
  if (bad === null) {
    if (typeof type !== 'string') bad = type === undefined ? 'missing type' : 'type is not a string';
    else if (typeof eventId !== 'string') bad = eventId === undefined ? 'missing event_id' : 'event_id is not a string';
    else if (typeof sender !== 'string') bad = sender === undefined ? 'missing sender' : 'sender is not a string';
    else if (!contentOk) bad = 'missing content';
    else if (typeof ts !== 'number') bad = ts === undefined ? 'missing origin_server_ts' : 'origin_server_ts is not a number';
    else if (stateKey !== undefined && typeof stateKey !== 'string') bad = 'state_key is not a string';
  }
  if (bad !== null) {
    b.error(`timeline event skipped: ${bad}`, roomId, typeof eventId === 'string' ? eventId : undefined);
    return undefined;
  }
  const raw = sc.s.slice(start, end);
  const isState = typeof stateKey === 'string';
  if (b.opts.wantedTypes === null || b.opts.wantedTypes.has(type as string)) {
    b.room.push(roomIndex);
    b.type.push(type as string);
    b.eventId.push(eventId as string);
    b.sender.push(sender as string);
    b.ts.push(ts as number);
    b.stateKey.push(isState ? (stateKey as string) : null);
    b.relType.push(relType);
    b.relEventId.push(relEventId);
    b.raw.push(raw);
  }
  return isState ? (JSON.parse(raw) as MatrixEvent) : undefined;
}

const NOT_STRING = Symbol('wrong type');

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
