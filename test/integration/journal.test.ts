/**
 * The event journal through the whole client, from a scripted homeserver (a real one will not hold 3,000 events
 * back and release them in one burst on demand): handlers that fall behind do not stop polling, memory holds at
 * most `maxQueuedEvents` unhandled events while the rest waits on disk, and a restart delivers what was left,
 * in order, flagging what an earlier run had already handed to handlers.
 */
import assert from 'node:assert/strict';
import { createServer, type ServerResponse } from 'node:http';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { type BackpressureInfo, Client, encodeToken, type Message } from '../../src/index.ts';
import { deferred, waitUntil } from './util.ts';

const PER_BODY = 100;
const BODIES = 30;
const json = (res: ServerResponse, status: number, body: unknown) => {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
};
const ev = (n: number) => ({ type: 'm.room.message', event_id: `$e${n}`, sender: '@peer:s', origin_server_ts: n, content: { msgtype: 'm.text', body: `m${n}` } });

/** Serves an empty initial sync, then BODIES bodies of PER_BODY events as fast as they are asked for, then holds polls. */
async function burstServer() {
  const polls: string[] = [];
  const server = createServer((req, res) => {
    const url = new URL(req.url!, 'http://x');
    if (url.pathname.endsWith('/account/whoami')) return json(res, 200, { user_id: '@bot:s', device_id: 'DEV' });
    if (url.pathname.endsWith('/filter')) return json(res, 200, { filter_id: '1' });
    if (url.pathname.endsWith('/sync')) {
      const since = url.searchParams.get('since');
      polls.push(since ?? '');
      const k = since === null ? 0 : Number(since.slice(1));
      if (k < BODIES) {
        const events = Array.from({ length: since === null ? 0 : PER_BODY }, (_, i) => ev((k - 1) * PER_BODY + i));
        return json(res, 200, { next_batch: `s${k + 1}`, rooms: { join: { '!r:s': { timeline: { events } } } } });
      }
      const t = setTimeout(() => json(res, 200, { next_batch: since }), Number(url.searchParams.get('timeout') ?? 0));
      res.on('close', () => clearTimeout(t));
      return;
    }
    // No encryption state event in the room (what a homeserver answers when an unencrypted bot asks before sending).
    if (url.pathname.includes('/state/m.room.encryption')) return json(res, 404, { errcode: 'M_NOT_FOUND', error: 'no such state' });
    json(res, 404, { errcode: 'M_UNRECOGNIZED', error: 'not scripted' });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  return { url, polls, close: () => new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); }) };
}

const TOTAL = (BODIES - 1) * PER_BODY;

test('handlers stuck: polling goes on, memory holds maxQueuedEvents, the rest waits in the journal; then all arrive in order', async (t) => {
  const hs = await burstServer();
  t.after(() => hs.close());
  const maxQueuedEvents = 250;
  const client = new Client({ dataDir: mkdtempSync(join(tmpdir(), 'hc-journal-')), encryption: false, pollTimeoutMs: 500, maxQueuedEvents });
  t.after(() => client.stop());
  const gate = deferred();
  const seen: number[] = [];
  let maxQueued = 0;
  const pressure: BackpressureInfo[] = [];
  client.on('backpressure', (b) => void pressure.push(b));
  client.on('message', async (m) => {
    seen.push(Number(m.body.slice(1)));
    await gate.promise;
  });
  const token = encodeToken({ homeserver: hs.url, userId: '@bot:s', deviceId: 'DEV', accessToken: 'fake-test-access-token-journal' });
  await client.run(token);

  // Every body is fetched although the first handler never returns.
  await waitUntil(() => hs.polls.includes(`s${BODIES}`), 20_000, 'the sync actor to poll past the last body');
  const h = await waitUntil(async () => {
    const x = await client.health();
    maxQueued = Math.max(maxQueued, x.queuedEvents);
    return x.backlogEvents === TOTAL ? x : undefined;
  }, 20_000, 'the whole burst to be journaled');
  assert.equal(h.backpressure, true);
  assert.ok(h.queuedEvents <= maxQueuedEvents, `at most maxQueuedEvents in memory (${h.queuedEvents})`);
  assert.deepEqual(seen, [0], 'one room: the first handler holds the rest');
  assert.equal(pressure[0]?.active, true);

  gate.resolve();
  await waitUntil(() => seen.length === TOTAL, 30_000, `all ${TOTAL} events (got ${seen.length})`);
  assert.deepEqual(seen, Array.from({ length: TOTAL }, (_, i) => i), 'in order, each once');
  await waitUntil(() => pressure.at(-1)?.active === false, 10_000, 'backpressure to end');
  await waitUntil(async () => (await client.health()).backlogEvents === 0, 10_000, 'the journal to empty');
  assert.ok(maxQueued <= maxQueuedEvents, `queued events stayed under the bound (max seen ${maxQueued})`);
});

test('a stop with a backlog: the next run delivers the rest in order; what the first run had handed to handlers is flagged redelivered', async (t) => {
  const hs = await burstServer();
  t.after(() => hs.close());
  const dataDir = mkdtempSync(join(tmpdir(), 'hc-journal-'));
  const token = encodeToken({ homeserver: hs.url, userId: '@bot:s', deviceId: 'DEV', accessToken: 'fake-test-access-token-journal' });
  const first = new Client({ dataDir, encryption: false, pollTimeoutMs: 500, maxQueuedEvents: 150, stopTimeoutMs: 200 });
  const handled = new Set<number>();
  const gate = deferred();
  first.on('message', async (m) => {
    const n = Number(m.body.slice(1));
    if (n >= 120) await gate.promise; // stuck from event 120 on
    handled.add(n);
  });
  await first.run(token);
  await waitUntil(async () => (await first.health()).backlogEvents === TOTAL - 120, 20_000, 'the burst journaled with 120 events handled');
  await first.stop(); // event 120 is abandoned mid-handler
  gate.resolve();

  const second = new Client({ dataDir, encryption: false, pollTimeoutMs: 500 });
  t.after(() => second.stop());
  const got: Message[] = [];
  second.on('message', (m) => void got.push(m));
  await second.run(token);
  await waitUntil(() => got.length >= TOTAL - 120, 30_000, `the ${TOTAL - 120} unhandled events (got ${got.length})`);
  const ns = got.map((m) => Number(m.body.slice(1)));
  assert.deepEqual(ns, Array.from({ length: TOTAL - 120 }, (_, i) => 120 + i), 'exactly the unhandled ones, in order');
  // Event 120 was running when the first run stopped; its batch had been handed over: redelivered.
  assert.equal(got[0]!.redelivered, true);
  // The last batches never left the journal in the first run: first deliveries.
  assert.equal(got.at(-1)!.redelivered, false);
  assert.equal(hs.polls.filter((s) => s === '').length, 1, 'the second run resumed from the saved token (no initial sync)');
});
