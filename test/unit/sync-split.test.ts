/**
 * A /sync body processed as a stream (src/sync/split.ts: its joined rooms in slices as the bytes arrive, then the
 * rest) gives what processing it whole gives: the same room state, account data, invites, leaves, errors, crypto
 * fields and timeline events, whatever the chunk and slice sizes; and a body processing whole refuses is refused.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { HalcyonError } from '../../src/errors.ts';
import { type ProcessedSync, processSync } from '../../src/sync/process.ts';
import { COLLECT_EVERY_BYTES, processStream } from '../../src/sync/split.ts';

const OPTS = { wantedTypes: null, ownUserId: '@bot:x' };

/** What the cache and the crypto actor get from a processed body, in an order-independent form. */
function outcome(parts: ProcessedSync[], rest: ProcessedSync) {
  const all = [...parts, rest];
  const sorted = <T>(xs: T[]) => xs.map((x) => JSON.stringify(x)).sort();
  return {
    nextBatch: rest.nextBatch,
    state: sorted(all.flatMap((p) => p.state.rooms)),
    accountData: sorted(all.flatMap((p) => p.state.accountData ?? [])),
    invites: rest.invites,
    knocks: rest.knocks,
    left: rest.left,
    errors: sorted(all.flatMap((p) => p.errors)),
    crypto: { ...rest.crypto, verification: sorted(all.flatMap((p) => p.crypto.verification)) },
    receipts: sorted(all.flatMap((p) => p.receipts)),
    events: all.reduce((n, p) => n + p.events.count, 0),
  };
}

/** The body's bytes in chunks of `size`. */
async function* chunks(bytes: Uint8Array, size: number): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < bytes.length; i += size) yield bytes.subarray(i, i + size);
}

async function streamed(bytes: Uint8Array, chunkSize: number, sliceBytes: number) {
  const slices: ProcessedSync[] = [];
  const { rest, bytes: n } = await processStream(chunks(bytes, chunkSize), { ...OPTS, maxBytes: 1e9, sliceBytes, onSlice: async (s) => void slices.push(s) });
  assert.equal(n, bytes.length);
  return { outcome: outcome(slices, rest), slices: slices.length };
}

const ev = (type: string, stateKey: string | undefined, content: unknown, id: string) => ({
  type, sender: '@a:x', event_id: id, origin_server_ts: 1, content, ...(stateKey === undefined ? {} : { state_key: stateKey }),
});

/** A body with what could trip a splitter: brackets, commas and quotes in strings, escaped names, nested `rooms`. */
function trickyBody(rooms: number): string {
  const join: Record<string, unknown> = {};
  for (let r = 0; r < rooms; r++) {
    join[`!r${r}:x`] = {
      state: { events: [ev('m.room.name', '', { name: `n}{,"]${r}\\` }, `$n${r}`), ev('m.room.member', `@u${r}:x`, { membership: 'join' }, `$m${r}`), { bad: true }] },
      timeline: { events: [ev('m.room.message', undefined, { body: '{"rooms":{"join":{}}}', msgtype: 'm.text' }, `$t${r}`), ev('m.room.topic', '', { topic: 't' }, `$s${r}`)], limited: false },
      account_data: { events: [{ type: 'x.room', content: { r } }] },
      ephemeral: { events: [{ type: 'm.receipt', content: { [`$t${r}`]: { 'm.read': { '@a:x': { ts: 1 } } } } }] },
      summary: { 'm.joined_member_count': r },
    };
  }
  const text = JSON.stringify({
    account_data: { events: [{ type: 'x.global', content: { rooms: { join: { '!fake:x': {} } } } }] },
    next_batch: 's9',
    rooms: { invite: { '!i:x': { invite_state: { events: [ev('m.room.name', '', { name: 'inv' }, '$i')] } } }, join, leave: { '!l:x': { timeline: { events: [] } } } },
    to_device: { events: [{ type: 'm.x', sender: '@a:x', content: {} }] },
    device_lists: { changed: ['@c:x'], left: [] },
  });
  // An escaped spelling of `join` and of a room ID: the scanner decodes them, so must the splitter.
  return text.replace('"join":{"!r0:x"', '"j\\u006fin":{"!r\\u0030:x"');
}

test('a body processed in slices as its bytes arrive gives the same state, account data, errors and events as processed whole', async () => {
  const bytes = Buffer.from(trickyBody(40), 'utf8');
  const whole = outcome([], processSync(bytes, OPTS));
  assert.equal(whole.invites.length, 1);
  assert.equal(whole.events, 80);
  for (const [chunkSize, sliceBytes] of [[1, 1], [7, 300], [4096, 2000], [bytes.length, 1e9]] as const) {
    const s = await streamed(bytes, chunkSize, sliceBytes);
    assert.deepEqual(s.outcome, whole, `chunks of ${chunkSize}, slices of ${sliceBytes} bytes`);
    if (sliceBytes === 1) assert.equal(s.slices, 40, 'one room per slice');
  }
});

test('a body without joined rooms, or with an empty join, streams as it processes whole', async () => {
  for (const text of ['{"next_batch":"a"}', '{"next_batch":"a","rooms":{"join":{}}}', '{"next_batch":"a","rooms":{"join":{ }, "leave":{"!l:x":{}}}}', '{"rooms":[{"join":{"!x:y":{}}}],"next_batch":"b"}']) {
    const bytes = Buffer.from(text);
    assert.deepEqual((await streamed(bytes, 3, 10)).outcome, outcome([], processSync(bytes, OPTS)), text);
  }
});

test('fuzz (fast-check): byte-level mutations of a body: streamed processing refuses exactly what processing whole refuses, and agrees otherwise', async () => {
  const base = trickyBody(3);
  const mutation = fc.array(fc.tuple(fc.nat(base.length), fc.constantFrom('delete', 'insert', 'truncate'), fc.constantFrom('{', '}', '[', ']', '"', '\\', ',', ':', ' ', '1')), { minLength: 1, maxLength: 3 });
  await fc.assert(
    fc.asyncProperty(mutation, fc.integer({ min: 1, max: 64 }), fc.integer({ min: 1, max: 400 }), async (edits, chunkSize, sliceBytes) => {
      let text = base;
      for (const [at, op, ch] of edits) {
        const i = at % (text.length + 1);
        text = op === 'delete' ? text.slice(0, i) + text.slice(i + 1) : op === 'insert' ? text.slice(0, i) + ch + text.slice(i) : text.slice(0, i);
      }
      const bytes = Buffer.from(text, 'utf8');
      let whole: unknown;
      try {
        whole = outcome([], processSync(bytes, OPTS));
      } catch (err) {
        whole = err;
      }
      let stream: unknown;
      try {
        stream = (await streamed(bytes, chunkSize, sliceBytes)).outcome;
      } catch (err) {
        stream = err;
      }
      if (whole instanceof Error) {
        assert.ok(stream instanceof HalcyonError && stream.code === 'HALCYON_BAD_SYNC', `refused whole (${whole.message}), streamed: ${stream instanceof Error ? stream.message : 'accepted'}`);
      } else assert.deepEqual(stream, whole);
    }),
    { numRuns: 4000, seed: 20261206 },
  );
});

test('a body announced under STREAM_MIN_BYTES is read whole (into the scanner memory) and gives what processing it whole gives', async () => {
  const bytes = Buffer.from(trickyBody(40));
  const whole = processSync(bytes, OPTS);
  const slices: ProcessedSync[] = [];
  const { rest, bytes: n } = await processStream(chunks(bytes, 4096), { ...OPTS, maxBytes: 1e9, contentLength: bytes.length, onSlice: async (s) => void slices.push(s) });
  assert.equal(n, bytes.length);
  assert.equal(slices.length, 0);
  assert.deepEqual(outcome([], rest), outcome([], whole));
});

test('a body read whole has the young generation collected every COLLECT_EVERY_BYTES read, and gives the same result', async () => {
  const bytes = Buffer.from(trickyBody(400));
  const whole = processSync(bytes, OPTS);
  const every = 16 * 1024;
  assert.ok(bytes.length > 5 * every);
  let collected = 0;
  const { rest } = await processStream(chunks(bytes, 4096), { ...OPTS, maxBytes: 1e9, contentLength: bytes.length, collectEvery: every, collectYoung: () => collected++, onSlice: async () => {} });
  // Once per whole `every` read; the chunks (4 KiB) divide it, so the count is exact.
  assert.equal(collected, Math.floor(bytes.length / every));
  assert.deepEqual(outcome([], rest), outcome([], whole));
  assert.ok(COLLECT_EVERY_BYTES >= 256 * 1024 && COLLECT_EVERY_BYTES <= 4 * 1024 * 1024);
});
