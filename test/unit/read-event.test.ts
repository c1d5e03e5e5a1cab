/**
 * The WebAssembly event reader (wasm/skip.ts readEvent, used by src/sync/timeline.ts) against the JS reader: on
 * generated and mutated timeline events, processSync must give the same columns, errors and parsed events either
 * way. A body under MIN_WASM_BODY bytes is read by JS alone; the same body after MIN_WASM_BODY bytes of white
 * space goes through WebAssembly, its offsets shifted by that much.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { HalcyonError } from '../../src/errors.ts';
import { processSync } from '../../src/sync/process.ts';
import { MIN_WASM_BODY, Scanner, ScanError } from '../../src/sync/scan.ts';
import { EVENT_RECORD_FLAGS, EVENT_SLOTS, eventRecord, eventTs } from '../../src/sync/skipper.ts';
import { OFF, OFFSET_STRIDE } from '../../src/protocol.ts';
import { seededRandom } from '../harness/fault-proxy.ts';

const PAD = MIN_WASM_BODY;
const OWN = '@me:x';

const rng = seededRandom;

const pick = <T>(r: () => number, xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;

/** JSON texts of values, some escaped or not ASCII (what a server may send). */
const STRINGS = ['"m.room.message"', '"m.reaction"', '"m.room.member"', '"m.room.redaction"', '"m.key.verification.start"', '"m.room.\\u006dessage"', '"m.rööm"', '"x"', '""', '"a\\"b"'];
const IDS = ['"$e1"', '"$e\\u0032"', '"$é3"', `"${OWN}"`, '"@u:x"', '"@u\\/x"'];
const TS = ['1', '1700000000000', '123456789012345', '1234567890123456', '12345678901234567', '0', '-5', '1.5', '1e3', '17E2', '"1"', 'null', '99999999999999'];
const MSGTYPES = ['"m.text"', '"m.notice"', '"m.key.verification.request"', '"m.n\\u006ftice"', '7', 'null', '"m.noticee"'];
const OTHER = ['{}', '[]', '[1,{"a":[true,false,null]}]', '{"age":5,"x":{"y":"z"}}', 'true', '-0.5e-7', '"v"'];

/** Joins members as an object, sometimes with white space around the tokens. */
function object(r: () => number, members: Array<[string, string]>): string {
  const sp = (): string => (r() < 0.1 ? pick(r, [' ', '\n', '\t ', '\r\n']) : '');
  return `{${sp()}${members.map(([k, v]) => `${k}${sp()}:${sp()}${v}`).join(`${sp()},${sp()}`)}${sp()}}`;
}

function shuffle<T>(r: () => number, xs: T[]): T[] {
  for (let i = xs.length - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [xs[i], xs[j]] = [xs[j]!, xs[i]!];
  }
  return xs;
}

function relatesTo(r: () => number): string {
  if (r() < 0.1) return pick(r, OTHER);
  const m: Array<[string, string]> = [];
  if (r() < 0.8) m.push([pick(r, ['"rel_type"', '"rel_type"', '"rel\\u005ftype"']), pick(r, ['"m.annotation"', '"m.replace"', '"m.th\\u0072ead"', '"m.réf"', '5'])]);
  if (r() < 0.8) m.push([pick(r, ['"event_id"', '"event_id"', '"event\\u005fid"']), pick(r, [...IDS, '3'])]);
  if (r() < 0.2) m.push([pick(r, ['"rel_type"', '"event_id"']), pick(r, IDS)]);
  if (r() < 0.3) m.push(['"key"', pick(r, ['"👍"', '"x"'])]);
  return object(r, shuffle(r, m));
}

function content(r: () => number): string {
  if (r() < 0.05) return pick(r, OTHER.filter((v) => !v.startsWith('{')));
  const m: Array<[string, string]> = [];
  if (r() < 0.7) m.push([pick(r, ['"msgtype"', '"msgtype"', '"msg\\u0074ype"']), pick(r, MSGTYPES)]);
  if (r() < 0.6) m.push(['"body"', pick(r, ['"hi"', '"h\\u00e9 \\"q\\""', '"ünïcode"', '""'])]);
  if (r() < 0.4) m.push([pick(r, ['"m.relates_to"', '"m.relates_to"', '"m.relates\\u005fto"']), relatesTo(r)]);
  if (r() < 0.1) m.push([pick(r, ['"m.relates_to"', '"msgtype"']), r() < 0.5 ? relatesTo(r) : pick(r, MSGTYPES)]);
  if (r() < 0.3) m.push(['"extra"', pick(r, OTHER)]);
  return object(r, shuffle(r, m));
}

/** One timeline event's text: usually well formed, sometimes with a field missing, mistyped, repeated or escaped. */
function event(r: () => number): string {
  const m: Array<[string, string]> = [];
  const field = (name: string, value: () => string, p = 0.95): void => {
    if (r() < p) m.push([r() < 0.03 ? `"${name.slice(0, 1)}\\u00${name.charCodeAt(1).toString(16)}${name.slice(2)}"` : `"${name}"`, r() < 0.03 ? pick(r, OTHER) : value()]);
  };
  field('type', () => pick(r, STRINGS));
  field('event_id', () => pick(r, IDS));
  field('sender', () => pick(r, IDS));
  field('origin_server_ts', () => pick(r, TS));
  field('content', () => content(r));
  field('state_key', () => pick(r, ['""', '"@u:x"', '"k\\u0065y"']), 0.2);
  field('unsigned', () => pick(r, OTHER), 0.4);
  field('redacts', () => pick(r, IDS), 0.1);
  if (r() < 0.05) m.push([pick(r, ['"type"', '"event_id"', '"sender"', '"content"', '"origin_server_ts"', '"state_key"']), r() < 0.5 ? content(r) : pick(r, STRINGS)]);
  return object(r, shuffle(r, m));
}

/** Cuts, duplicates or replaces a few bytes (malformed JSON, mostly). */
function mutate(r: () => number, text: string): string {
  let s = text;
  for (let n = 1 + Math.floor(r() * 3); n > 0; n--) {
    const i = Math.floor(r() * s.length);
    const k = r();
    if (k < 0.4) s = s.slice(0, i) + s.slice(i + 1);
    else if (k < 0.7) s = s.slice(0, i) + pick(r, ['"', '\\', '{', '}', ',', ':', '[', ']', '1', 'x', ' ', '\u0001']) + s.slice(i);
    else s = s.slice(0, i) + s[Math.floor(r() * s.length)] + s.slice(i + 1);
  }
  return s;
}

function body(events: string[]): string {
  return `{"next_batch":"s1","rooms":{"join":{"!r:x":{"timeline":{"events":[${events.join(',')}]}}}}}`;
}

/** What processSync gives for `bytes`, offsets relative to `offset`, errors with their position likewise. */
function outcome(bytes: Buffer, offset: number, wanted: Set<string> | null): unknown {
  try {
    const p = processSync(bytes, { wantedTypes: wanted, ownUserId: OWN });
    const e = p.events;
    const events = Array.from({ length: e.count }, (_, i) => [
      p.rooms[e.room[i]!],
      e.strings[e.type[i]!],
      e.relType[i]! < 0 ? null : e.strings[e.relType[i]!],
      e.ts[i],
      e.flags[i],
      Array.from(e.offsets.subarray(i * OFFSET_STRIDE, (i + 1) * OFFSET_STRIDE), (o) => (o < 0 ? o : o - offset)),
    ]);
    return { events, ids: e.ids ? [Buffer.from(e.ids).toString('latin1'), Array.from(e.idAt!)] : null, errors: p.errors, state: p.state, verification: p.crypto.verification };
  } catch (err) {
    assert.ok(err instanceof HalcyonError, String(err));
    const cause = err.cause;
    assert.ok(cause instanceof ScanError || cause instanceof SyntaxError, String(cause));
    return `${err.code}: ${cause instanceof ScanError ? `${cause.message.replace(/\d+$/, '')}${cause.pos - offset}` : 'SyntaxError'}`;
  }
}

function sameBothWays(text: string, wanted: Set<string> | null): void {
  const bytes = Buffer.from(text, 'utf8');
  if (bytes.length >= PAD) return; // JS alone only below PAD
  const padded = Buffer.concat([Buffer.alloc(PAD, 32), bytes]);
  assert.deepEqual(outcome(padded, PAD, wanted), outcome(bytes, 0, wanted), `on ${text}`);
}

test('readEvent: generated events give the same columns, errors and parsed events through WebAssembly as in JS', () => {
  const r = rng(7);
  for (let n = 0; n < 20_000; n++) {
    const wanted = r() < 0.2 ? new Set(['m.room.message', 'm.reaction']) : null;
    sameBothWays(body(Array.from({ length: 1 + Math.floor(r() * 2) }, () => event(r))), wanted);
  }
});

test('readEvent: mutated events (malformed JSON, mostly) agree too, errors at the same positions', () => {
  const r = rng(11);
  for (let n = 0; n < 20_000; n++) sameBothWays(body([mutate(r, event(r))]), null);
});

test('readEvent: a common event is read by WebAssembly itself, not handed back to JS', () => {
  const ev = '{"type":"m.room.message","sender":"@u:x","content":{"msgtype":"m.notice","body":"h\\u00e9","m.relates_to":{"rel_type":"m.replace","event_id":"$o\\u0031"}},"origin_server_ts":1700000000001,"event_id":"$e","unsigned":{"age":1}}';
  const bytes = Buffer.concat([Buffer.alloc(PAD, 32), Buffer.from(ev)]);
  const sc = new Scanner(bytes);
  assert.ok(sc.atObject());
  assert.equal(sc.readEventFast(), true);
  assert.equal(sc.i, bytes.length);
  const token = (slot: number): string => bytes.toString('utf8', eventRecord[slot]!, eventRecord[slot + 1]!);
  assert.equal(token(OFF.rawStart), ev);
  assert.equal(token(EVENT_SLOTS.type), '"m.room.message"');
  assert.equal(token(OFF.sender), '"@u:x"');
  assert.equal(token(OFF.eventId), '"$e"');
  assert.equal(token(EVENT_SLOTS.relType), '"m.replace"');
  assert.equal(token(OFF.relEventId), '"$o\\u0031"');
  assert.equal(eventRecord[OFF.stateKey], -1);
  assert.equal(eventTs[EVENT_SLOTS.ts], 1700000000001);
  // Notice (2) and the relation's escaped event ID (32), the columns' own bits.
  assert.equal(eventRecord[EVENT_SLOTS.flags]! & EVENT_RECORD_FLAGS.columns, 2 | 32);
});

test('readEvent: what JS must report or parse is handed back (the cursor stays)', () => {
  for (const ev of [
    '{"type":"m.room.message","sender":"@u:x","content":{},"origin_server_ts":1,"event_id":"$e","type":"x"}',
    '{"type":"m.room.message","sender":"@u:x","content":{},"origin_server_ts":1.5,"event_id":"$e"}',
    '{"type":"m.room.message","sender":"@u:x","content":{},"event_id":"$e"}',
    '{"typ\\u0065":"m.room.message","sender":"@u:x","content":{},"origin_server_ts":1,"event_id":"$e"}',
    '{"type":"m.room.message","sender":"@u:x","content":{"m.relates\\u005fto":{}},"origin_server_ts":1,"event_id":"$e"}',
    '{"type":"m.room.message","sender":"@u:x","content":{},"origin_server_ts":1,"event_id":"$e"',
  ]) {
    const bytes = Buffer.concat([Buffer.alloc(PAD, 32), Buffer.from(ev)]);
    const sc = new Scanner(bytes);
    assert.ok(sc.atObject());
    assert.equal(sc.readEventFast(), false, ev);
    assert.equal(sc.i, PAD);
  }
});
