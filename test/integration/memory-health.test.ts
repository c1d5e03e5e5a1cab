/**
 * The client reports its memory by thread: `health().memory` has main's numbers and each worker actor's own, and
 * the metrics expose them as `thread_memory_bytes{thread, kind}` and `rss_bytes`. Against Synapse, encryption on.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { testHomeserver } from '../harness/synapse.ts';
import { newBot } from './util.ts';

test('health().memory and the metrics report main, sync (hosting the cache) and crypto (worker threads, encryption on), and only main once stopped', async (t) => {
  const hs = await testHomeserver();
  const bot = await newBot(t, hs, { metrics: {} });
  await bot.client.run(bot.token);

  const { memory } = await bot.client.health();
  assert.equal(memory.main.thread, 'main');
  for (const k of ['sync', 'crypto'] as const) {
    const m = memory[k];
    assert.ok(m, `${k} answered`);
    assert.equal(m.thread, 'worker', k);
    assert.ok(m.heapUsed > 0 && m.heapUsed <= m.heapTotal && m.heapTotal <= m.heapLimit, `${k}: ${JSON.stringify(m)}`);
    assert.ok(m.sqliteCacheLimit !== null && m.sqliteCacheLimit > 0, `${k} has its store open`);
  }
  assert.ok(memory.crypto!.wasmBytes !== null && memory.crypto!.wasmBytes > 0, 'the crypto actor reports its wasm memory');
  // The sync actor's skipper exists once it has scanned a body of MIN_WASM_BODY bytes or more.
  assert.ok(memory.sync!.wasmBytes === null || memory.sync!.wasmBytes > 0, 'the sync actor reports its skipper memory, if any');
  assert.ok(memory.rss > memory.main.heapUsed);

  const text = await bot.client.metricsRegistry!.metrics();
  for (const thread of ['main', 'sync', 'crypto']) assert.match(text, new RegExp(`halcyon_thread_memory_bytes\\{thread="${thread}",kind="heap_used"\\} [1-9]`), thread);
  assert.match(text, /halcyon_thread_memory_bytes\{thread="crypto",kind="wasm"\} [1-9]/);
  assert.match(text, /halcyon_rss_bytes [1-9]/);

  await bot.client.stop();
  const stopped = (await bot.client.health()).memory;
  assert.deepEqual([stopped.sync, stopped.crypto], [null, null]);
  assert.equal(stopped.main.thread, 'main');
});
