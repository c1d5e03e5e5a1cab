/**
 * A long stream of events leaves nothing behind per event: after thousands of events handled and answered, each
 * thread's heap, once collected, is back near where it was before them. The plain stream comes from a scripted
 * homeserver (a real one would take minutes to hold this many); the bot runs as users run it, on worker threads
 * with encryption on, and answers every message with a reply (main's outbox, the crypto actor's room check). The
 * encrypted stream comes through Synapse from a raw OlmMachine peer: crypto-wasm's linear memory, which never
 * shrinks, must not grow with the events decrypted.
 */
import assert from 'node:assert/strict';
import { createServer, type ServerResponse } from 'node:http';
import { test } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import * as W from '@matrix-org/matrix-sdk-crypto-wasm';
import { Client, encodeToken } from '../../src/index.ts';
import { memoryForTests } from '../../src/client/testing.ts';
import type { MemoryReport } from '../../src/memory.ts';
import { OlmPeer } from '../harness/olm-peer.ts';
import { testHomeserver } from '../harness/synapse.ts';
import { defer, newBot, newClient, tempDataDir, waitUntil } from './util.ts';

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
  (['main', 'sync', 'crypto'] as const).map((k) => `${k} ${((r[k]?.heapUsed ?? NaN) / MB).toFixed(1)}+${((r[k]?.arrayBuffers ?? NaN) / MB).toFixed(1)} MiB`).join(', ');

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
  // Main collects first: a body the sync worker allocated and handed over counts in the sync worker's array buffers
  // until main frees it, so main's uncollected garbage read as the worker's (a full run once saw +3.89 MiB).
  gc();
  const before = await memoryForTests(client);
  const mainBefore = process.memoryUsage().heapUsed;
  await pump(200);
  const events = 200 * PER_BATCH;
  // Committed heap as the stream left it, before any collection: what RSS holds.
  const committed = await memoryForTests(client, { collect: false });
  const growth = (after: MemoryReport): string[] => {
    const problems: string[] = [];
    for (const k of ['sync', 'crypto'] as const) {
      const [b, a, c] = [before[k], after[k], committed[k]];
      assert.ok(a && b && c, `${k} answered memory()`);
      assert.equal(a.thread, 'worker');
      // Generous: 100 bytes kept per event would be 2 MiB over the stream; a retained event or body is hundreds.
      const heap = a.heapUsed - b.heapUsed;
      const buffers = a.arrayBuffers - b.arrayBuffers;
      if (heap > 2 * MB || buffers > 2 * MB) problems.push(`${k}: live heap +${(heap / MB).toFixed(2)} MiB, array buffers +${(buffers / MB).toFixed(2)} MiB`);
      if (c.youngGeneration > 16 * MB) problems.push(`${k}: young generation ${(c.youngGeneration / MB).toFixed(1)} MiB (heap committed ${(c.heapTotal / MB).toFixed(1)} MiB)`);
    }
    return problems;
  };
  // Main's last bodies are freed as its last sends unwind (below): the workers' figures may take as long to settle.
  await waitUntil(async () => {
    gc();
    return growth(await memoryForTests(client)).length === 0;
  }, 30_000, 'the workers\' memory back near where it was').catch(() => {});
  gc();
  const after = await memoryForTests(client);
  const problems = growth(after);
  assert.deepEqual(problems, [], `after ${events} events (before: ${show(before)}; after: ${show(after)})`);
  // Main's heap settles as its last sends' promises and timers unwind: wait for that, not for a leak.
  await waitUntil(() => {
    gc();
    return process.memoryUsage().heapUsed - mainBefore < 2 * MB;
  }, 60_000, `main's heap back within 2 MiB of ${(mainBefore / MB).toFixed(1)} MiB`);
  assert.ok(after.crypto!.wasmBytes! > 0, 'the crypto actor reports its wasm memory');
  assert.ok(after.sync!.sqliteCacheLimit! > 0, 'the sync actor reports its SQLite cache limit');
});

/**
 * Counts, per class, the wasm-bindgen objects made while it is on and neither freed nor handed to the engine:
 * every such class registers its instances with a FinalizationRegistry (so the garbage collector frees the wasm
 * side eventually) and unregisters them on free() or a move. What stays registered is left to the collector.
 */
function countUnfreed(): { stop(): Map<string, number> } {
  const live = new Map<string, number>();
  const proto = FinalizationRegistry.prototype;
  const { register, unregister } = proto;
  const tokens = new WeakMap<object, string>();
  const classes = new Set<unknown>(Object.values(W));
  proto.register = function (this: FinalizationRegistry<unknown>, target: object, held: unknown, token?: object) {
    const name = target.constructor.name;
    if (token && classes.has(target.constructor)) {
      tokens.set(token, name);
      live.set(name, (live.get(name) ?? 0) + 1);
    }
    return register.call(this, target, held, token);
  };
  proto.unregister = function (this: FinalizationRegistry<unknown>, token: object) {
    const name = tokens.get(token);
    const removed = unregister.call(this, token);
    if (name !== undefined && removed) live.set(name, live.get(name)! - 1);
    return removed;
  };
  return {
    stop() {
      Object.assign(proto, { register, unregister });
      return live;
    },
  };
}

const EVENTS = 200;

test('200 encrypted messages decrypted and every tenth answered encrypted leave no crypto-wasm object per event to the garbage collector (threads: inline)', async (t) => {
  const hs = await testHomeserver();
  const bot = await newBot(t, hs, { threads: 'inline' });
  let handled = 0;
  bot.client.on('message', () => void handled++);
  await bot.client.run(bot.token);
  const peer = await OlmPeer.start(hs);
  defer(t, () => peer.stop());
  const roomId = await peer.createEncryptedRoom([bot.user.userId]);
  await peer.http.waitForJoined(roomId, bot.user.userId, 20_000);
  await peer.releaseKeys(await peer.prepareRoomKey(roomId));
  await peer.sendEncrypted(roomId, 'm.room.message', { msgtype: 'm.text', body: 'warm-up' });
  await waitUntil(() => handled === 1, 20_000, 'the warm-up message');
  await bot.client.stop();
  // Sent while the bot is stopped, so that the peer's own objects (same thread) are made before the count starts.
  // A Megolm session expires after 100 messages: a new one is shared every 50.
  for (let i = 0; i < EVENTS; i++) {
    if (i % 50 === 0) {
      await peer.machine.invalidateGroupSession(new W.RoomId(roomId));
      await peer.releaseKeys(await peer.prepareRoomKey(roomId));
    }
    await peer.sendEncrypted(roomId, 'm.room.message', { msgtype: 'm.text', body: `encrypted ${i}` });
  }

  const count = countUnfreed();
  let unfreed: Map<string, number>;
  const again = newClient(t, bot.dataDir, { threads: 'inline' });
  let seen = 0;
  let replied = 0;
  again.on('message', (m) => {
    seen++;
    if (seen % 10 === 0) void m.reply('re').then(() => replied++);
  });
  try {
    await again.run(bot.token);
    await waitUntil(() => seen === EVENTS && replied === EVENTS / 10, 120_000, `${EVENTS} messages decrypted and ${EVENTS / 10} replies sent (${seen}, ${replied})`);
  } finally {
    unfreed = count.stop();
  }
  // One left per reply (every tenth event) or more is per event; a few (a sync batch's, a session's) are not.
  const perEvent = [...unfreed].filter(([, n]) => n >= EVENTS / 10);
  assert.deepEqual(perEvent, [], `crypto-wasm objects left to the garbage collector, by class: ${JSON.stringify([...unfreed].filter(([, n]) => n > 0))}`);
});
