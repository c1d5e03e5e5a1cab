/**
 * Property-based fuzzing with fast-check: generated /sync bodies (rooms, timelines, state, invites, ephemeral
 * events, account data, to-device events; well-formed, malformed and "tainted" events mixed, the last with a
 * repeated or escaped name the scanner routes on) and byte-level mutations of them go through sync processing and
 * on through the main thread's delivery (BatchReader, event objects, the dispatcher). Properties: the only
 * exception that may escape processing is HALCYON_BAD_SYNC, for a body that is not JSON or not a sync response;
 * every well-formed event is delivered, in order, with its fields intact, whatever malformed events sit next to
 * it; no tainted event is delivered; a handler reading any field never throws. 100,000 cases per run (seed in
 * HALCYON_FUZZ_SEED to reproduce or vary).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { Dispatcher } from '../../src/dispatcher.ts';
import { HalcyonError } from '../../src/errors.ts';
import { BatchReader, Message, Room, RoomEvent } from '../../src/events.ts';
import type { RoomActions } from '../../src/events.ts';
import { OFF, type WireBatch } from '../../src/protocol.ts';
import { processSync } from '../../src/sync/process.ts';

const SEED = Number(process.env.HALCYON_FUZZ_SEED ?? 20261201);

/** A well-formed timeline event whose `marker` body lets the test find it after processing. */
const goodEvent = (marker: string) =>
  fc.record({
    type: fc.constantFrom('m.room.message', 'm.reaction', 'org.example.custom'),
    event_id: fc.string({ minLength: 1, maxLength: 12 }).map((s) => `$${s}${marker}`),
    sender: fc.string({ maxLength: 10 }).map((s) => `@${s}:x`),
    origin_server_ts: fc.integer({ min: 0, max: 2 ** 42 }),
    content: fc.record({ body: fc.constant(marker), msgtype: fc.constant('m.text'), extra: fc.jsonValue({ maxDepth: 2 }) }),
    unsigned: fc.option(fc.record({ age: fc.nat() }), { nil: undefined }),
  });

/** Anything at all, standing where an event should be: malformed or not even an object. */
const junk = fc.oneof(
  fc.jsonValue({ maxDepth: 3 }),
  fc.record({ type: fc.jsonValue({ maxDepth: 1 }), event_id: fc.jsonValue({ maxDepth: 1 }), sender: fc.jsonValue({ maxDepth: 1 }), content: fc.jsonValue({ maxDepth: 2 }) }, { requiredKeys: [] }),
);

const stateEvent = fc.record({
  type: fc.constantFrom('m.room.name', 'm.room.member', 'm.room.topic', 'm.room.power_levels', 'm.room.create', 'x.custom'),
  state_key: fc.string({ maxLength: 8 }),
  sender: fc.constant('@a:x'),
  event_id: fc.string({ maxLength: 8 }).map((s) => `$s${s}`),
  origin_server_ts: fc.nat(),
  content: fc.dictionary(fc.string({ maxLength: 6 }), fc.jsonValue({ maxDepth: 2 })),
});

/**
 * Names an event may repeat, or spell with an escape, to make the scanner and `JSON.parse` disagree (placeholders
 * in the generated object, swapped in the text by {@link taintText}): at the top level, in `content` and in
 * `m.relates_to`. Processing must skip such an event, whatever the value.
 */
const TAINT_NAMES = {
  T: ['content', 'cont\\u0065nt', 'type', 'typ\\u0065', 'event_id', 'sender', 'state_key', 'st\\u0061te_key', 'origin_server_ts', '\\u0075nsigned'],
  C: ['m.relates_to', 'm.rel\\u0061tes_to'],
  R: ['rel_type', 'rel_typ\\u0065', 'event_id', 'ev\\u0065nt_id'],
} as const;
const taintText = (text: string) => text.replace(/"@@([TCR])(\d+)@@"/g, (_, level: keyof typeof TAINT_NAMES, n: string) => `"${TAINT_NAMES[level][Number(n)]}"`);

/** A marker event (body `t<room>e<index>`) with one repeated or escaped routed name: never delivered. */
const taintedEvent = (marker: string) =>
  fc.tuple(goodEvent(marker), fc.constantFrom<keyof typeof TAINT_NAMES>('T', 'C', 'R'), fc.nat(), fc.jsonValue({ maxDepth: 1 })).map(([ev, level, n, value]) => {
    const key = `@@${level}${n % TAINT_NAMES[level].length}@@`;
    const relatesTo: Record<string, unknown> = { rel_type: 'm.thread', event_id: '$root' };
    if (level === 'R') relatesTo[key] = value;
    const content: Record<string, unknown> = { ...ev.content, body: `t${marker}`, 'm.relates_to': relatesTo };
    if (level === 'C') content[key] = value;
    if (level !== 'T') return { ...ev, content };
    // A repeated state_key needs a first one.
    return TAINT_NAMES.T[n % TAINT_NAMES.T.length] === 'state_key' ? { ...ev, state_key: '', content, [key]: value } : { ...ev, content, [key]: value };
  });

/** A room's timeline: good events (with markers), tainted events and junk, interleaved. */
const room = (r: number) =>
  fc
    .array(
      fc.oneof(
        { weight: 3, arbitrary: fc.constant({ kind: 'good' as const }) },
        { weight: 1, arbitrary: fc.constant({ kind: 'tainted' as const }) },
        { weight: 1, arbitrary: junk.map((j) => ({ kind: 'junk' as const, j })) },
      ),
      { maxLength: 12 },
    )
    .chain((slots) =>
      fc.tuple(
        fc.tuple(...slots.map((s, k) => (s.kind === 'good' ? goodEvent(`r${r}e${k}`) : s.kind === 'tainted' ? taintedEvent(`r${r}e${k}`) : fc.constant(s.j)))),
        fc.array(fc.oneof(stateEvent, junk), { maxLength: 3 }),
        fc.jsonValue({ maxDepth: 2 }),
        fc.boolean(),
      ),
    )
    .map(([timeline, state, ephemeral, limited]) => ({ timeline: { events: timeline, limited, prev_batch: 'p' }, state: { events: state }, ephemeral, account_data: { events: [ephemeral] } }));

const body = fc
  .tuple(fc.array(room(0), { maxLength: 1 }), fc.array(room(1), { maxLength: 1 }), fc.jsonValue({ maxDepth: 2 }), fc.array(junk, { maxLength: 2 }))
  .map(([a, b, extra, toDevice]) => ({
    next_batch: 's',
    rooms: { join: { ...(a[0] ? { '!a:x': a[0] } : {}), ...(b[0] ? { '!b:x': b[0] } : {}) }, invite: { '!i:x': { invite_state: { events: [extra] } } }, leave: {} },
    to_device: { events: toDevice },
    account_data: { events: [extra] },
    device_lists: { changed: [extra], left: ['@z:x'] },
    device_one_time_keys_count: { signed_curve25519: 5 },
  }));

/** What a careful reference would call the good events of a body: well-formed marker events, in order per room. */
function expectedGood(b: ReturnType<typeof JSON.parse>): Array<{ room: string; id: string; body: string }> {
  const out: Array<{ room: string; id: string; body: string }> = [];
  for (const [roomId, r] of Object.entries<any>(b.rooms?.join ?? {})) {
    for (const e of r.timeline?.events ?? []) {
      if (e && typeof e === 'object' && typeof e.content?.body === 'string' && /^r\de\d+$/.test(e.content.body) && typeof e.event_id === 'string' && e.event_id.endsWith(e.content.body)) {
        out.push({ room: roomId, id: e.event_id, body: e.content.body });
      }
    }
  }
  return out;
}

const noActions = new Proxy({}, { get: () => () => Promise.resolve('') }) as RoomActions;

/** Delivers every event of a processed body the way main does, touching every field; returns what handlers saw. */
async function deliver(bytes: Uint8Array): Promise<Array<{ room: string; id: string; body: unknown }>> {
  const p = processSync(bytes, { wantedTypes: null, ownUserId: '@bot:x' });
  const batch = { body: bytes, events: p.events, rooms: p.rooms } as unknown as WireBatch;
  const reader = new BatchReader(batch);
  const seen: Array<{ room: string; id: string; body: unknown }> = [];
  const escaped: unknown[] = [];
  const d = new Dispatcher(4, (err) => escaped.push(err));
  const summaries = new Map();
  for (let i = 0; i < p.events.count; i++) {
    const roomId = p.rooms[p.events.room[i]!]!;
    d.push(roomId, async () => {
      const ev = reader.type(i) === 'm.room.message' ? new Message(reader, i, new Room(roomId, summaries, noActions), noActions) : new RoomEvent(reader, i, new Room(roomId, summaries, noActions), noActions);
      // Every accessor a handler may use.
      void [ev.eventId, ev.sender, ev.type, ev.timestamp, ev.stateKey, ev.isEncrypted, ev.redelivered, ev.raw, reader.str(i, OFF.relEventId)];
      if (ev instanceof Message) void [ev.msgtype, ev.body, ev.inReplyTo, ev.threadId, ev.mentions, ev.mentionsRoom, ev.isMedia];
      seen.push({ room: roomId, id: ev.eventId, body: ev.content.body });
    });
  }
  await d.idle();
  assert.deepEqual(escaped, [], 'no handler-side exception');
  return seen;
}

test('fuzz (fast-check): 50,000 generated /sync bodies: good events all delivered in order whatever junk surrounds them; nothing but HALCYON_BAD_SYNC escapes', async () => {
  await fc.assert(
    fc.asyncProperty(body, async (b) => {
      const bytes = Buffer.from(taintText(JSON.stringify(b)), 'utf8');
      const seen = await deliver(bytes);
      const want = expectedGood(b);
      const got = seen.filter((s) => typeof s.body === 'string' && /^r\de\d+$/.test(s.body as string)).map((s) => ({ room: s.room, id: s.id, body: s.body as string }));
      assert.deepEqual(seen.filter((s) => typeof s.body === 'string' && /^tr\de\d+$/.test(s.body)), [], 'no event with a repeated or escaped routed name is delivered');
      // Rooms run concurrently: order is promised within a room.
      for (const r of ['!a:x', '!b:x']) assert.deepEqual(got.filter((x) => x.room === r), want.filter((x) => x.room === r));
    }),
    { numRuns: 50_000, seed: SEED },
  );
});

test('fuzz (fast-check): 50,000 byte-level mutations of generated bodies: processing either works or throws HALCYON_BAD_SYNC; delivery never throws', async () => {
  const mutation = fc.tuple(body, fc.array(fc.tuple(fc.nat(), fc.constantFrom('delete', 'insert', 'truncate', 'replace'), fc.constantFrom('{', '}', '[', ']', '"', '\\', ',', ':', '1', '-', 'e', 'n', '\u0000', 'é', '\ud800')), { minLength: 1, maxLength: 3 }));
  await fc.assert(
    fc.asyncProperty(mutation, async ([b, edits]) => {
      let text = taintText(JSON.stringify(b));
      for (const [at, op, ch] of edits) {
        const i = at % (text.length + 1);
        text = op === 'delete' ? text.slice(0, i) + text.slice(i + 1) : op === 'insert' ? text.slice(0, i) + ch + text.slice(i) : op === 'truncate' ? text.slice(0, i) : text.slice(0, i) + ch + text.slice(i + 1);
      }
      const bytes = Buffer.from(text, 'utf8');
      let parsed: unknown;
      try {
        parsed = JSON.parse(text);
      } catch {
        parsed = undefined;
      }
      try {
        await deliver(bytes);
      } catch (err) {
        assert.ok(err instanceof HalcyonError && err.code === 'HALCYON_BAD_SYNC', `unexpected ${String(err)}`);
        // A body JSON.parse accepts as a sync response is never refused.
        const isSync = typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed) && typeof (parsed as { next_batch?: unknown }).next_batch === 'string';
        assert.ok(!isSync, 'a valid sync body was refused');
      }
    }),
    { numRuns: 50_000, seed: SEED + 1 },
  );
});
