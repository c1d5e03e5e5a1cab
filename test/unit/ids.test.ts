/**
 * The ID columns (src/sync/ids.ts): an event's ID and sender as main reads them from the columns are what
 * `JSON.parse` of the event gives, however the sync actor gathered them: in WebAssembly during the scan, by the JS
 * reader for an event WebAssembly left to it, or after the scan (a small body, or the skipper's memory taken by
 * another body meanwhile).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BatchReader } from '../../src/batch-reader.ts';
import { OFF, type WireBatch } from '../../src/protocol.ts';
import { gatherIds } from '../../src/sync/ids.ts';
import { processSync } from '../../src/sync/process.ts';
import { MIN_WASM_BODY } from '../../src/sync/scan.ts';
import { SHRINK_ABOVE } from '../../src/sync/skipper.ts';

const message = (n: number, extra: Record<string, unknown> = {}) => ({
  type: 'm.room.message',
  event_id: `$event${n}:example.org`,
  sender: `@user${n % 3}:example.org`,
  origin_server_ts: 1_700_000_000_000 + n,
  content: { msgtype: 'm.text', body: `message ${n}` },
  ...extra,
});

/** Processes a body of `events` in one room, padded with `pad` spaces; checks every event's ID and sender. */
function check(events: unknown[], pad: number, expected: Array<{ event_id: string; sender: string }>): ReturnType<typeof processSync> {
  const body = Buffer.from(' '.repeat(pad) + JSON.stringify({ next_batch: 's', rooms: { join: { '!r:x': { timeline: { events } } } } }), 'utf8');
  const p = processSync(body, { wantedTypes: null });
  assert.equal(p.events.count, expected.length);
  assert.ok(p.events.ids && p.events.idAt, 'ID columns');
  assert.deepEqual(p.events.ids, gatherIds(body, p.events)!.ids, 'gathered during the scan as after it');
  const reader = new BatchReader({ body, events: p.events } as unknown as WireBatch);
  for (let i = 0; i < expected.length; i++) {
    assert.equal(reader.str(i, OFF.eventId), expected[i]!.event_id);
    assert.equal(reader.str(i, OFF.sender), expected[i]!.sender);
  }
  return p;
}

test('ID columns: read in WebAssembly, by the JS reader (a fractional timestamp), and in a small body, they match the events', () => {
  const events = Array.from({ length: 40 }, (_, n) => message(n, n % 7 === 3 ? { origin_server_ts: 1.5 } : {}));
  // Two bodies the skipper takes (padded or not: 40 events are past MIN_WASM_BODY), and one it leaves to JS.
  for (const [evs, pad] of [[events, 0], [events, MIN_WASM_BODY], [events.slice(0, 3), 0]] as const) {
    const p = check([...evs], pad, [...evs]);
    // Back to back: event i's ID at idAt[2i], its sender at idAt[2i + 1], the next event's ID right after.
    assert.equal(p.events.idAt![1], evs[0]!.event_id.length);
    assert.equal(p.events.idAt![2], evs[0]!.event_id.length + evs[0]!.sender.length);
  }
});

test('ID columns: an event skipped with a long event ID (its report decodes it in the skipper, taking its memory) leaves the others right', () => {
  const bad = { type: 'm.room.message', event_id: `$${'x'.repeat(2 * MIN_WASM_BODY)}`, origin_server_ts: 1, content: {} }; // no sender
  const events = [message(0), message(1), bad, message(2), message(3)];
  const body = Buffer.from(JSON.stringify({ next_batch: 's', rooms: { join: { '!r:x': { timeline: { events } } } } }), 'utf8');
  const p = processSync(body, { wantedTypes: null });
  assert.equal(p.errors.length, 1);
  assert.equal(p.errors[0]!.eventId, bad.event_id);
  check(events, 0, [message(0), message(1), message(2), message(3)]);
  // A body past half of SHRINK_ABOVE: its load's memory (body and ID room) is past SHRINK_ABOVE, so the report's
  // small load gets a fresh instance of its own, and the body's next load a memory of another size.
  const many = Array.from({ length: SHRINK_ABOVE / 300 }, (_, n) => message(n));
  check([...many.slice(0, 100), bad, ...many.slice(100)], 0, many);
});

test('ID columns: none for timelines no handler sees (ids: false), nor for non-ASCII IDs', () => {
  const body = Buffer.from(' '.repeat(MIN_WASM_BODY) + JSON.stringify({ next_batch: 's', rooms: { join: { '!r:x': { timeline: { events: [message(0)] } } } } }));
  assert.equal(processSync(body, { wantedTypes: null, ids: false }).events.ids, undefined);
  const wide = message(1, { sender: '@zoë:example.org' });
  const p = processSync(Buffer.from(JSON.stringify({ next_batch: 's', rooms: { join: { '!r:x': { timeline: { events: [message(0), wide] } } } } })), { wantedTypes: null });
  assert.equal(p.events.ids, undefined);
});

test('ID columns: a batch past one decoded piece (1,024 events) reads right in every piece, at its edges and out of order', () => {
  const events = Array.from({ length: 2_500 }, (_, n) => message(n));
  const body = Buffer.from(JSON.stringify({ next_batch: 's', rooms: { join: { '!r:x': { timeline: { events } } } } }), 'utf8');
  const p = processSync(body, { wantedTypes: null });
  const reader = new BatchReader({ body, events: p.events } as unknown as WireBatch);
  for (const i of [2_499, 1_024, 1_023, 0, 2_048, 2_047, 1, 1_500]) {
    assert.equal(reader.str(i, OFF.sender), events[i]!.sender);
    assert.equal(reader.str(i, OFF.eventId), events[i]!.event_id);
  }
  for (let i = 0; i < events.length; i++) assert.equal(reader.str(i, OFF.eventId), events[i]!.event_id);
});
