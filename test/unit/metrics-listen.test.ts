/**
 * A metrics port that cannot be listened on is a coded error and leaves the host's registry as it was, so the
 * host can retry (another port, or none) on the same registry.
 */
import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import { test } from 'node:test';
import { Registry } from 'prom-client';
import { createMetrics, type MetricsSnapshot } from '../../src/metrics.ts';

test('metrics: a port in use is HALCYON_INVALID_ARGUMENT and registers nothing; a retry on the same registry works', async (t) => {
  const taken = createServer();
  await new Promise<void>((r) => taken.listen(0, '127.0.0.1', r));
  t.after(() => new Promise<void>((r) => taken.close(() => r())));
  const port = (taken.address() as { port: number }).port;
  const registry = new Registry();
  const snapshot = async (): Promise<MetricsSnapshot> => ({ secondsSinceLastSync: null, polls: null, queuedEvents: 0, backlogEvents: 0, outboxPending: 0, outboxDead: 0, pendingUndecryptable: null });
  await assert.rejects(createMetrics({ registry, port }, snapshot), { code: 'HALCYON_INVALID_ARGUMENT' });
  assert.deepEqual(registry.getMetricsAsArray().map((m) => m.name), [], 'nothing left registered');
  const rec = await createMetrics({ registry }, snapshot);
  assert.match(await registry.metrics(), /halcyon_queued_events 0/);
  await rec.close();
});
