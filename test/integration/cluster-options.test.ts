/**
 * Cluster mode, bad input: a malformed `cluster` option fails in `new Client()` with HALCYON_INVALID_ARGUMENT
 * naming what is wrong, and a NATS that cannot be reached fails `run()` with HALCYON_CLUSTER (real Synapse; no
 * NATS needed). And the wire format: the partition hash, an event's round trip, garbage refused.
 */
import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import { after, before, test } from 'node:test';
import { Client, type ClusterOptions, type HalcyonError } from '../../src/index.ts';
import { decodeEvent, encodeEvent, partitionOf } from '../../src/cluster/wire.ts';
import { testHomeserver, type Homeserver } from '../harness/synapse.ts';
import { newBot, tempDataDir } from './util.ts';

let hs: Homeserver;
before(async () => {
  hs = await testHomeserver();
});
after(async () => {
  await hs?.stop();
});

test('a malformed cluster option is refused by new Client() with HALCYON_INVALID_ARGUMENT naming the field', (t) => {
  const dataDir = tempDataDir(t);
  const bad: Array<[unknown, RegExp]> = [
    [{ servers: [], name: 'bot' }, /servers/],
    [{ servers: 'nats://127.0.0.1:4222', name: 'my.bot' }, /name/],
    [{ servers: 'nats://127.0.0.1:4222', name: '' }, /name/],
    [{ servers: 'nats://127.0.0.1:4222', name: 'bot', role: 'leader' }, /role/],
    [{ servers: 'nats://127.0.0.1:4222', name: 'bot', partitions: 0 }, /partitions/],
    [{ servers: 'nats://127.0.0.1:4222', name: 'bot', leaseTtlMs: 10 }, /leaseTtlMs/],
    [{ servers: 'nats://127.0.0.1:4222', name: 'bot', ackWaitMs: 1.5 }, /ackWaitMs/],
    [{ servers: 'nats://127.0.0.1:4222', name: 'bot', auth: { user: 'u' } }, /auth/],
    [null, /object/],
  ];
  for (const [cluster, field] of bad) {
    assert.throws(
      () => new Client({ dataDir, cluster: cluster as ClusterOptions }),
      (e: HalcyonError) => e.code === 'HALCYON_INVALID_ARGUMENT' && field.test(e.message),
      JSON.stringify(cluster),
    );
  }
});

test('run() with no NATS listening rejects with HALCYON_CLUSTER and stops cleanly', async (t) => {
  // A port nothing listens on: bound, then closed.
  const port = await new Promise<number>((resolve) => {
    const srv = createServer().listen(0, '127.0.0.1', () => {
      const p = (srv.address() as { port: number }).port;
      srv.close(() => resolve(p));
    });
  });
  const bot = await newBot(t, hs, { encryption: false, cluster: { servers: `nats://127.0.0.1:${port}`, name: 'nobody', role: 'ingest' } });
  await assert.rejects(bot.client.run(bot.token), (e: HalcyonError) => e.code === 'HALCYON_CLUSTER' && e.message.includes(`127.0.0.1:${port}`));
  await bot.client.stop();
});

test('the wire: a room always maps to the same partition in range; an event round-trips; anything else is refused', () => {
  const rooms = Array.from({ length: 200 }, (_, i) => `!r${i}:localhost`);
  for (const r of rooms) {
    const p = partitionOf(r, 16);
    assert.ok(Number.isInteger(p) && p >= 0 && p < 16);
    assert.equal(partitionOf(r, 16), p);
  }
  assert.ok(new Set(rooms.map((r) => partitionOf(r, 16))).size === 16, 'rooms spread over every partition');
  const head = { roomId: '!a:localhost', flags: 64, summary: null, redelivered: false };
  const event = { type: 'm.room.message', event_id: '$e', sender: '@u:localhost', content: { body: 'multi\nline' } };
  assert.deepEqual(decodeEvent(encodeEvent(head, JSON.stringify(event))), { head, event });
  for (const garbage of ['', 'no head line', '{"roomId":1,"flags":0}\n{}', `${JSON.stringify(head)}\nnull`, `${JSON.stringify(head)}\n{`]) {
    assert.throws(() => decodeEvent(Buffer.from(garbage)), Error, garbage);
  }
});
