/**
 * Memory reports: each thread measures itself, gatherMemory never throws and reports an actor that fails or does
 * not answer as null, a worker actor answers with its own isolate's numbers, and the metrics expose them per thread.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { Worker } from 'node:worker_threads';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { test } from 'node:test';
import { Registry } from 'prom-client';
import { guestActor, portPair, spawnWorkerActor } from '../../src/actors.ts';
import { gatherMemory, MAIN_TRIM, type MemoryReport, oldGeneration, type OldGeneration, shouldTrimHeap, threadMemory, trimHeapPeriodically, type TrimInfo } from '../../src/memory.ts';
import { makeFragmentedHeap, makeOldGarbage } from '../fixtures/heap-garbage.ts';
import { createMetrics, type MetricsSnapshot } from '../../src/metrics.ts';
import { CACHE_DEADLINES, type ActorMemory, type CacheActorApi, SYNC_DEADLINES, type SyncActorApi } from '../../src/protocol.ts';
import { openDatabase } from '../../src/store.ts';

const MB = 2 ** 20;

test('threadMemory: main measures its own heap, and its SQLite cache limit once a database is open', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'hc-mem-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const m = threadMemory();
  assert.equal(m.thread, 'main');
  assert.ok(m.heapUsed > 0 && m.heapUsed <= m.heapTotal && m.heapTotal <= m.heapLimit, JSON.stringify(m));
  assert.ok(m.youngGeneration > 0 && m.youngGeneration <= m.heapTotal);
  assert.ok(m.arrayBuffers <= m.external);
  assert.equal(m.wasmBytes, null);
  const before = m.sqliteCacheLimit ?? 0;
  const db = openDatabase(dir, 'x.sqlite');
  const open = threadMemory().sqliteCacheLimit;
  assert.ok(open !== null && open > before, `an open database counts (${before} → ${open})`);
  db.close();
  assert.equal(threadMemory().sqliteCacheLimit ?? 0, before, 'a closed one no longer does');
});

test('gatherMemory: main and the process RSS always; an actor that fails or does not answer in time is null', async () => {
  const mem = threadMemory();
  const ok = { memory: async (): Promise<ActorMemory> => ({ ...mem, thread: 'worker' }) };
  const failing = { memory: async (): Promise<ActorMemory> => Promise.reject(new Error('dead')) };
  const silent = { memory: (): Promise<ActorMemory> => new Promise(() => {}) };
  const r = await gatherMemory({ sync: ok, crypto: failing }, { timeoutMs: 50 });
  assert.equal(r.main.thread, 'main');
  assert.ok(r.rss > r.main.heapUsed);
  assert.equal(r.sync?.thread, 'worker');
  assert.equal(r.crypto, null);
  assert.equal((await gatherMemory({ sync: silent }, { timeoutMs: 50 })).sync, null);
  const none = await gatherMemory({});
  assert.deepEqual([none.sync, none.crypto], [null, null]);
});

test('a worker actor answers memory() with its own isolate\'s numbers (its guest\'s included), its young generation bounded', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'hc-mem-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const [forMain, cachePort] = portPair();
  const [, events] = portPair();
  const sync = spawnWorkerActor<SyncActorApi>('sync', SYNC_DEADLINES, { cache: cachePort, events });
  t.after(() => sync.terminate());
  // The cache actor is the sync worker's guest: its database opened there shows in the sync thread's figures.
  const cache = guestActor<CacheActorApi>('cache', sync, forMain, CACHE_DEADLINES);
  await cache.api.open({ dataDir: dir, maxRoomsInMemory: 10 });
  const m = await sync.api.memory(true);
  assert.equal(m.thread, 'worker');
  assert.ok(m.heapUsed > 0 && m.heapUsed <= m.heapTotal, JSON.stringify(m));
  assert.ok(m.youngGeneration <= 8 * MB, `young generation ${m.youngGeneration / MB} MiB`);
  assert.ok(m.sqliteCacheLimit !== null && m.sqliteCacheLimit > 0, 'cache.sqlite is open in that thread');
  await cache.api.close();
  assert.equal(m.wasmBytes, null);
});

test('metrics: per-thread memory gauges and the RSS, an inline actor not repeated as a thread of its own', async () => {
  const registry = new Registry();
  const w = (heapUsed: number, thread: 'worker' | 'main' = 'worker'): ActorMemory => ({
    thread, heapUsed, heapTotal: 2 * heapUsed, heapLimit: 1e9, youngGeneration: heapUsed / 2, external: 1000, arrayBuffers: 500, wasmBytes: null, sqliteCacheLimit: 2e6,
  });
  const report: MemoryReport = { rss: 123e6, main: w(10e6, 'main'), sync: w(20e6), crypto: { ...w(40e6), wasmBytes: 5e6 } };
  const snapshot = async (): Promise<MetricsSnapshot> => ({ secondsSinceLastSync: 1, polls: 1, queuedEvents: 0, backlogEvents: 0, outboxPending: 0, outboxDead: 0, pendingUndecryptable: null });
  const rec = await createMetrics({ registry }, snapshot, async () => report);
  const text = await registry.metrics();
  assert.match(text, /halcyon_thread_memory_bytes\{thread="main",kind="heap_used"\} 10000000/);
  assert.match(text, /halcyon_thread_memory_bytes\{thread="sync",kind="heap_total"\} 40000000/);
  assert.match(text, /halcyon_thread_memory_bytes\{thread="sync",kind="young_generation"\} 10000000/);
  assert.match(text, /halcyon_thread_memory_bytes\{thread="crypto",kind="wasm"\} 5000000/);
  assert.doesNotMatch(text, /thread="sync",kind="wasm"/, 'no wasm figure where there is none');
  assert.match(text, /halcyon_rss_bytes 123000000/);
  await rec.close();
  assert.doesNotMatch(await registry.metrics(), /thread_memory_bytes|rss_bytes/, 'removed at close');
  const inline = new Registry();
  const rec2 = await createMetrics({ registry: inline }, snapshot, async () => ({ ...report, sync: w(30e6, 'main'), crypto: null }));
  assert.doesNotMatch(await inline.metrics(), /thread="(sync|crypto)"/, 'an actor running on main is main');
  await rec2.close();
});

test('workers collecting their garbage for the first time at the same instant all succeed (V8 flags are per process)', async () => {
  // The flag that exposes gc is process-wide: one worker turning it back off must not leave another without gc.
  const problems: string[] = [];
  for (let round = 0; round < 8; round++) {
    const barrier = new SharedArrayBuffer(8);
    const counts = new Int32Array(barrier);
    const workers = Array.from({ length: 4 }, () => new Worker(new URL('../fixtures/gc-worker.ts', import.meta.url), { workerData: { barrier }, execArgv: ['--import', 'tsx'] }));
    const answers = workers.map((w) => new Promise<string>((resolve, reject) => {
      w.once('message', resolve);
      w.once('error', reject);
    }));
    // Poll for the workers to reach the barrier (a condition, not a fixed wait): then release them together.
    while (Atomics.load(counts, 1) < workers.length) await delay(2);
    Atomics.store(counts, 0, 1);
    Atomics.notify(counts, 0);
    problems.push(...(await Promise.all(answers)).filter((a) => a !== 'ok'));
    await Promise.all(workers.map((w) => w.terminate()));
  }
  assert.deepEqual(problems, []);
});

test('a worker\'s periodic heap trim gives back an old generation full of garbage, down to its live data plus the slack', async (t) => {
  const worker = new Worker(new URL('../fixtures/trim-worker.ts', import.meta.url), { workerData: { everyMs: 100 }, resourceLimits: { maxYoungGenerationSizeMb: 12 } });
  t.after(() => worker.terminate());
  const r = await new Promise<{ before: OldGeneration; after: OldGeneration }>((resolve, reject) => {
    worker.once('message', resolve);
    worker.once('error', reject);
    worker.once('exit', (code) => reject(new Error(`the worker exited (code ${code}) without a trim`)));
  });
  const mib = (g: OldGeneration) => `${(g.used / MB).toFixed(1)}/${(g.committed / MB).toFixed(1)} MiB`;
  assert.ok(shouldTrimHeap(r.before, 0), `the garbage is there to trim (old generation used/committed ${mib(r.before)})`);
  assert.ok(!shouldTrimHeap(r.after, r.after.used), `trimmed to live data plus the slack: ${mib(r.before)} → ${mib(r.after)}`);
  assert.ok(r.after.committed < r.before.committed / 2, `${mib(r.before)} → ${mib(r.after)}`);
});

test('the main thread\'s heap trim (what `trimMainHeap` runs) gives back a fragmented old generation too', { timeout: 60_000 }, async () => {
  const keptLive = makeFragmentedHeap();
  const before = oldGeneration();
  const after = await new Promise<OldGeneration>((resolve) => {
    const stop = trimHeapPeriodically({
      ...MAIN_TRIM,
      everyMs: 100,
      onTrim: (_old, a) => {
        stop();
        resolve(a);
      },
    });
  });
  const mib = (g: OldGeneration) => `${(g.used / MB).toFixed(1)}/${(g.committed / MB).toFixed(1)} MiB`;
  assert.ok(keptLive.length > 0);
  assert.ok(shouldTrimHeap(before, 0), `the garbage is there to trim (old generation used/committed ${mib(before)})`);
  assert.ok(!shouldTrimHeap(after, after.used), `trimmed to live data plus the slack: ${mib(before)} → ${mib(after)}`);
  assert.ok(after.committed < before.committed / 2, `${mib(before)} → ${mib(after)}`);
});

test('a trim that pauses its thread for longer than the budget doubles the wait before the next check', { timeout: 60_000 }, async () => {
  makeOldGarbage();
  const info = await new Promise<TrimInfo>((resolve) => {
    const stop = trimHeapPeriodically({
      everyMs: 50,
      pauseBudgetMs: 0,
      onTrim: (_old, _after, i) => {
        stop();
        resolve(i);
      },
    });
  });
  assert.equal(info.nextCheckMs, 100);
  assert.ok(info.pauseMs > 0);
});

test('shouldTrimHeap: a trim once the old generation holds more than its live data plus 8 MiB or half again, whichever is larger', () => {
  assert.equal(shouldTrimHeap({ committed: 17 * MB, used: 16 * MB }, 10 * MB), false);
  assert.equal(shouldTrimHeap({ committed: 19 * MB, used: 16 * MB }, 10 * MB), true);
  assert.equal(shouldTrimHeap({ committed: 59 * MB, used: 50 * MB }, 40 * MB), false);
  assert.equal(shouldTrimHeap({ committed: 61 * MB, used: 50 * MB }, 40 * MB), true);
});
