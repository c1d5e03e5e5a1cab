/**
 * A long stream of events leaves nothing behind per event: after thousands of events handled and answered, each
 * thread's heap, once collected, is back near where it was before them. The events come from a scripted homeserver
 * (a real one would take minutes to hold this many); the bot runs as users run it, on worker threads with
 * encryption on, and answers every message with a reply (main's outbox, the crypto actor's room check).
 */
import assert from 'node:assert/strict';
import { createServer, type ServerResponse } from 'node:http';
import { test } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { Client, encodeToken } from '../../src/index.ts';
import { memoryForTests } from '../../src/client/testing.ts';
import type { MemoryReport } from '../../src/memory.ts';
import { tempDataDir, defer, waitUntil } from './util.ts';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

const ROOMS = 10;
const PER_BATCH = 100;
const json = (res: ServerResponse, status: number, body: unknown) => {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
};

/**
 * A homeserver serving batch k (k = 1, 2, …) of {@link PER_BATCH} messages spread over {@link ROOMS} rooms while
 * k ≤ `allowed`, holding polls otherwise; it answers the key endpoints as a server with no other devices would, and
 * every send with a fresh event ID.
 */
async function streamServer() {
  let allowed = 0;
  let sends = 0;
  const waiting = new Set<() => void>();
  const batch = (k: number) => {
    const join: Record<string, { timeline: { events: unknown[]; limited: boolean } }> = {};
    for (let i = 0; i < PER_BATCH; i++) {
      const n = (k - 1) * PER_BATCH + i;
      const roomId = `!r${n % ROOMS}:s`;
      (join[roomId] ??= { timeline: { events: [], limited: false } }).timeline.events.push({
        type: 'm.room.message', event_id: `$e${n}`, sender: '@peer:s', origin_server_ts: Date.now(),
        content: { msgtype: 'm.text', body: `message ${n} ${'x'.repeat(200)}` },
      });
    }
    // Key counts that change every batch: the crypto actor gets the batch's changes each time.
    return { next_batch: `s${k}`, rooms: { join }, device_one_time_keys_count: { signed_curve25519: 50 + (k % 2) } };
  };
  const server = createServer((req, res) => {
    const url = new URL(req.url!, 'http://x');
    const path = url.pathname;
    if (path.endsWith('/account/whoami')) return json(res, 200, { user_id: '@bot:s', device_id: 'DEV' });
    if (path.endsWith('/filter')) return json(res, 200, { filter_id: '1' });
    if (path.endsWith('/keys/upload')) return json(res, 200, { one_time_key_counts: { signed_curve25519: 50 } });
    if (path.endsWith('/keys/query')) return json(res, 200, { device_keys: {}, failures: {} });
    if (path.endsWith('/keys/claim')) return json(res, 200, { one_time_keys: {}, failures: {} });
    if (path.includes('/state/m.room.encryption')) return json(res, 404, { errcode: 'M_NOT_FOUND', error: 'no such state' });
    if (req.method === 'PUT' && path.includes('/send/')) {
      req.resume();
      return json(res, 200, { event_id: `$reply${++sends}` });
    }
    if (path.endsWith('/sync')) {
      const since = url.searchParams.get('since');
      const k = since === null ? 0 : Number(since.slice(1));
      const answer = () => (k < allowed ? json(res, 200, batch(k + 1)) : false);
      if (answer() !== false) return;
      const wake = () => {
        if (answer() === false) return;
        waiting.delete(wake);
        clearTimeout(timer);
      };
      const timer = setTimeout(() => {
        waiting.delete(wake);
        json(res, 200, { next_batch: since ?? 's0' });
      }, Number(url.searchParams.get('timeout') ?? 0));
      waiting.add(wake);
      res.on('close', () => {
        waiting.delete(wake);
        clearTimeout(timer);
      });
      return;
    }
    json(res, 404, { errcode: 'M_UNRECOGNIZED', error: 'not scripted' });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as { port: number }).port}`,
    /** Lets `n` more batches out. */
    release(n: number) {
      allowed += n;
      for (const w of [...waiting]) w();
    },
    sends: () => sends,
    close: () => new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); }),
  };
}

const MB = 2 ** 20;
const show = (r: MemoryReport) =>
  (['main', 'sync', 'cache', 'crypto'] as const).map((k) => `${k} ${((r[k]?.heapUsed ?? NaN) / MB).toFixed(1)}+${((r[k]?.arrayBuffers ?? NaN) / MB).toFixed(1)} MiB`).join(', ');

test('20,000 events handled and answered: heaps return near where they were, and no worker\'s young generation grows past 16 MiB (worker threads, encryption on)', async (t) => {
  const hs = await streamServer();
  defer(t, () => hs.close());
  const client = new Client({ dataDir: tempDataDir(t), rateLimit: false, pollTimeoutMs: 1000, stopTimeoutMs: 10_000 });
  defer(t, () => client.stop());
  let handled = 0;
  let replied = 0;
  client.on('message', (m) => {
    handled++;
    void m.reply(`re: ${m.body.slice(0, 12)}`).then(() => replied++);
  });
  await client.run(encodeToken({ homeserver: hs.url, userId: '@bot:s', deviceId: 'DEV', accessToken: 'fake-test-access-token-stream' }));

  /** Lets `batches` out and waits until every event is handled, answered and acknowledged. */
  const pump = async (batches: number) => {
    const target = handled + batches * PER_BATCH;
    hs.release(batches);
    await waitUntil(() => handled === target && replied === target, 180_000, `${target} events handled and answered (at ${handled}/${replied})`);
    await waitUntil(async () => (await client.health()).backlogEvents === 0, 20_000, 'the journal to be empty');
  };

  // Warm-up: the code paths are compiled and the caches (rooms, statements) filled before the baseline.
  await pump(20);
  const before = await memoryForTests(client);
  gc();
  const mainBefore = process.memoryUsage().heapUsed;
  await pump(200);
  const events = 200 * PER_BATCH;
  // Committed heap as the stream left it, before any collection: what RSS holds.
  const committed = await memoryForTests(client, { collect: false });
  const after = await memoryForTests(client);

  const problems: string[] = [];
  for (const k of ['sync', 'cache', 'crypto'] as const) {
    const [b, a, c] = [before[k], after[k], committed[k]];
    assert.ok(a && b && c, `${k} answered memory()`);
    assert.equal(a.thread, 'worker');
    // Generous: 100 bytes kept per event would be 2 MiB over the stream; a retained event or body is hundreds.
    const heap = a.heapUsed - b.heapUsed;
    const buffers = a.arrayBuffers - b.arrayBuffers;
    if (heap > 2 * MB || buffers > 2 * MB) problems.push(`${k}: live heap +${(heap / MB).toFixed(2)} MiB, array buffers +${(buffers / MB).toFixed(2)} MiB`);
    if (c.youngGeneration > 16 * MB) problems.push(`${k}: young generation ${(c.youngGeneration / MB).toFixed(1)} MiB (heap committed ${(c.heapTotal / MB).toFixed(1)} MiB)`);
  }
  assert.deepEqual(problems, [], `after ${events} events (before: ${show(before)}; after: ${show(after)})`);
  // Main holds each send's request deadline (src/http.ts) until it passes (30 s): wait for that, not for a leak.
  await waitUntil(() => {
    gc();
    return process.memoryUsage().heapUsed - mainBefore < 2 * MB;
  }, 60_000, `main's heap back within 2 MiB of ${(mainBefore / MB).toFixed(1)} MiB`);
  assert.ok(after.crypto!.wasmBytes! > 0, 'the crypto actor reports its wasm memory');
  assert.ok(after.sync!.sqliteCacheLimit! > 0, 'the sync actor reports its SQLite cache limit');
});
