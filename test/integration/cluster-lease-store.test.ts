/**
 * The lease bucket on a real nats-server (src/cluster/nats.ts, `Broker.leaseStore`): compare-and-set on the
 * revision, and a renewal whose answer was lost (the server stored it, then restarted or the connection dropped
 * before the answer came) is recognised on the next try instead of being taken for another holder's write, and by a
 * release, which then deletes the key by its current revision; a holder takes its own key back by its revision
 * (retake); a release NATS does not answer fails (a closed
 * connection, a stopped server) and the key is freed after the restart; a listing of the keys names each once, even
 * while they are renewed.
 */
import assert from 'node:assert/strict';
import { after, before, test, type TestContext } from 'node:test';
import { Lease } from '../../src/cluster/lease.ts';
import { Broker, type KeyStore, LIST_KEYS_MS, type LeaseStore } from '../../src/cluster/nats.ts';
import { resolveCluster } from '../../src/cluster/options.ts';
import type { HalcyonError } from '../../src/errors.ts';
import { type NatsServer, startNats } from '../harness/nats.ts';
import { clusterName } from '../helpers/cluster.ts';
import { waitUntil } from './util.ts';

let nats: NatsServer;
before(async () => {
  nats = await startNats();
});
after(async () => {
  await nats?.stop();
});

const quiet = { debug() {}, info() {}, warn() {}, error() {} };
/** The lease TTL of the stopped-server test: longer than a release into the outage takes, and the restart. */
const RESTART_TTL_MS = 15_000;
/**
 * How long a release may take when NATS does not answer (lease.ts: the renewals out, then the delete, each ended by
 * nats.js's 5 s timeout), with a second for a loaded machine.
 */
const RELEASE_DEADLINE_MS = 11_000;

/** The lease bucket of a fresh cluster name (its TTL `ttlMs`), on a connection closed after the test. */
async function freshStore(t: TestContext, ttlMs: number): Promise<KeyStore> {
  const broker = await Broker.connect(resolveCluster({ servers: nats.url, name: clusterName(), role: 'ingest' }), quiet, 'ingest');
  t.after(() => broker.close());
  return broker.leaseStore(ttlMs);
}

test('lease store: a renewal sent again after its answer was lost resolves with the revision it wrote; another holder still gets null', async (t) => {
  const store = await freshStore(t, 10_000);
  const r1 = await store.create('ingest', 'me');
  assert.ok(r1 !== null);
  assert.equal(await store.create('ingest', 'other'), null, 'held: nobody else creates it');
  const r2 = await store.update('ingest', 'me', r1);
  assert.ok(r2 !== null && r2 > r1);
  // The holder never saw r2 (the answer was lost): it renews from r1 again. The key holds its own value: renewed.
  assert.equal(await store.update('ingest', 'me', r1), r2);
  assert.equal(await store.update('ingest', 'other', r1), null, 'a stale revision of another holder is refused');
  assert.equal(await store.get('ingest'), 'me');
  const r3 = await store.update('ingest', 'me', r2);
  assert.ok(r3 !== null && r3 > r2, 'renewals go on from the recognised revision');
});

test('lease store: retake writes a key that holds the holder\'s value again by its current revision; another holder\'s key, or none, it leaves', async (t) => {
  const store = await freshStore(t, 10_000);
  const r1 = await store.create('ingest', 'me');
  assert.ok(r1 !== null);
  const r2 = await store.update('ingest', 'me', r1); // a renewal the holder never saw the answer of
  assert.ok(r2 !== null);
  const r3 = await store.retake('ingest', 'me');
  assert.ok(r3 !== null && r3 > r2, 'written again, by the revision the key had');
  assert.equal(await store.update('ingest', 'me', r3), r3 + 1, 'renewals go on from it');
  assert.equal(await store.retake('ingest', 'other'), null, 'another holder\'s key is left');
  assert.equal(await store.get('ingest'), 'me');
  assert.equal(await store.retake('absent', 'me'), null, 'no key, nothing taken');
  assert.equal(await store.get('absent'), null);
});

test('lease store: keys() lists each key once while keys are renewed during the listing (a worker listed twice made the others count one worker too many and hand partitions over)', async (t) => {
  const store = await freshStore(t, 10_000);
  const revs = new Map<string, number>();
  for (let i = 0; i < 200; i++) revs.set(`w.k${i}`, (await store.create(`w.k${i}`, `v${i}`))!);
  // Renewals, one after the other, all through the listings (a renewal of a key already listed appends it again).
  let renewing = true;
  const renewer = (async () => {
    while (renewing) for (const [k, rev] of revs) revs.set(k, (await store.update(k, `v${k.slice(3)}`, rev))!);
  })();
  try {
    for (let round = 0; round < 20; round++) {
      const keys = await store.keys('w.*');
      assert.equal(keys.length - new Set(keys).size, 0, `listing ${round}: keys listed twice`);
      assert.equal(keys.length, 200);
    }
  } finally {
    renewing = false;
    await renewer;
  }
});

test('lease store: keys() leaves nothing behind on the server: 1,050 listings all answer (each once left a consumer for 5 minutes, and the server refuses a stream\'s 1,001st: a worker\'s looks failed after ~4 minutes)', async (t) => {
  const store = await freshStore(t, 10_000);
  for (let i = 0; i < 8; i++) await store.create(`p.${i}`, 'me');
  await store.create('w.me', 'me');
  await store.release('p.7', (await store.update('p.7', 'me', 1e9))!);
  for (let i = 0; i < 1_050; i++) {
    const keys = await store.keys(i % 2 === 0 ? 'p.*' : 'w.*');
    assert.deepEqual(keys.sort(), i % 2 === 0 ? ['p.0', 'p.1', 'p.2', 'p.3', 'p.4', 'p.5', 'p.6'] : ['w.me'], `listing ${i}`);
  }
  assert.deepEqual(await store.keys('x.*'), [], 'no key, an empty list');
});

test('lease store: listings in flight when nats-server stops each settle within their deadline (one once waited 100 s and more, and the worker\'s ownership with it: a partition stayed unowned)', { timeout: 90_000 }, async (t) => {
  const store = await freshStore(t, RESTART_TTL_MS);
  for (let i = 0; i < 200; i++) await store.create(`w.k${i}`, `v${i}`);
  const open = new Map<number, number>();
  const took: number[] = [];
  let listing = true;
  let n = 0;
  // Listings one after another, four at a time, from before the stop until the server is back.
  const listers = Array.from({ length: 4 }, async () => {
    while (listing) {
      const id = n++;
      const at = Date.now();
      open.set(id, at);
      await store.keys('w.*').catch(() => []);
      open.delete(id);
      took.push(Date.now() - at);
    }
  });
  await waitUntil(() => took.length >= 20, 10_000, 'listings under way');
  await nats.restart(() => waitUntil(() => open.size > 0, 5_000, 'a listing in flight while stopped'), 'SIGTERM');
  listing = false;
  await waitUntil(() => open.size === 0, LIST_KEYS_MS + 2_000, 'every listing settled');
  await Promise.all(listers);
  t.diagnostic(`${took.length} listings; the slowest took ${Math.max(...took)} ms`);
  assert.equal((await store.keys('w.*')).length, 200, 'listing works after the restart');
});

/**
 * The revision of `key` while it holds 'me', which a lease does not tell: an update by a revision it cannot have
 * (a stale one) of a holder's own key answers with the current one and writes nothing.
 */
async function revOf(store: LeaseStore, key: string): Promise<number> {
  const rev = await store.update(key, 'me', 1e9);
  assert.ok(rev !== null, `${key} holds 'me'`);
  return rev;
}

test('lease store: a lease released by a stale revision of its own key (a renewal whose answer was lost) deletes it by the current one; another holder\'s key stays (the refused delete once passed for a clean release, and the key stayed until its TTL)', async (t) => {
  const store = await freshStore(t, 10_000);
  const lease = new Lease(store, 10_000, 'me', quiet, 'p.0');
  assert.equal(await lease.tryAcquire(), true);
  // A renewal the server applied and whose answer was lost: the lease still knows the revision before it.
  const r0 = await revOf(store, 'p.0');
  const r1 = await store.update('p.0', 'me', r0);
  assert.ok(r1 !== null && r1 > r0);
  await lease.release();
  assert.equal(await store.state('p.0'), 'released', 'deleted at once, not left to expire');

  const again = new Lease(store, 10_000, 'me', quiet, 'p.1');
  assert.equal(await again.tryAcquire(), true);
  await store.update('p.1', 'me', await revOf(store, 'p.1')); // as above: its own renewal, answer lost
  await store.release('p.1', await revOf(store, 'p.1')); // as if the key had expired
  assert.ok((await store.create('p.1', 'someone else')) !== null, 'the key expired; another holder took it');
  await again.release();
  assert.equal(await store.get('p.1'), 'someone else', 'never deletes a key another holder wrote');
});

test('lease store: a release NATS did not answer rejects with HALCYON_CLUSTER (it once passed for a clean release)', async () => {
  const closed = await Broker.connect(resolveCluster({ servers: nats.url, name: clusterName(), role: 'ingest' }), quiet, 'ingest');
  const gone = await closed.leaseStore(10_000);
  const r = await gone.create('k', 'me');
  await closed.close();
  await assert.rejects(gone.release('k', r!), { code: 'HALCYON_CLUSTER' });
});

test('lease: released while nats-server is stopped, release rejects with HALCYON_CLUSTER within its deadline; after the restart the key expires by its TTL, or a release tried again deletes it', { timeout: 90_000 }, async (t) => {
  const unhandled: unknown[] = [];
  const onUnhandled = (err: unknown) => unhandled.push(err);
  process.on('unhandledRejection', onUnhandled);
  t.after(() => process.off('unhandledRejection', onUnhandled));
  const store = await freshStore(t, RESTART_TTL_MS);
  const left = new Lease(store, RESTART_TTL_MS, 'me', quiet, 'ingest');
  const retried = new Lease(store, RESTART_TTL_MS, 'me', quiet, 'w.me');
  assert.equal(await left.tryAcquire(), true);
  assert.equal(await retried.tryAcquire(), true);
  // A request sent before the client reconnects is answered only by its timeout, even once the server is back.
  let off = () => {};
  const reconnected = new Promise<void>((r) => (off = store.onReconnect(r)));
  t.after(() => off());
  let stoppedAt = 0;
  const outcomes: string[] = [];
  const took: number[] = [];
  await nats.restart(async () => {
    stoppedAt = Date.now();
    await Promise.all(
      [left, retried].map((lease) =>
        lease.release().then(
          () => outcomes.push('resolved'),
          (err: HalcyonError) => outcomes.push(err.code),
        ).finally(() => took.push(Date.now() - stoppedAt)),
      ),
    );
  }, 'SIGTERM');
  t.diagnostic(`releases settled ${took.join(' and ')} ms after the stop`);
  assert.deepEqual(outcomes, ['HALCYON_CLUSTER', 'HALCYON_CLUSTER']);
  for (const ms of took) assert.ok(ms <= RELEASE_DEADLINE_MS, `settled ${ms} ms after the stop (deadline ${RELEASE_DEADLINE_MS})`);
  await reconnected;
  await retried.release(); // NATS answers again
  assert.ok(Date.now() - stoppedAt < RESTART_TTL_MS, 'released again before the TTL could have freed it');
  assert.equal(await store.state('w.me'), 'released', 'deleted by the release tried again');
  assert.equal(await store.get('ingest'), 'me', 'the key whose release failed is still there');
  await waitUntil(() => store.state('ingest').then((s) => s !== 'held'), RESTART_TTL_MS, 'the ingest key freed');
  assert.equal(await store.state('ingest'), 'absent', 'expired by its TTL (not deleted)');
  const expiredAfter = Date.now() - stoppedAt;
  t.diagnostic(`the key whose release failed expired ${expiredAfter} ms after the stop (TTL ${RESTART_TTL_MS} ms)`);
  assert.ok(expiredAfter <= RESTART_TTL_MS + 5_000);
  assert.deepEqual(unhandled, [], 'no unhandled rejection');
});
