/**
 * The lease of src/cluster/lease.ts (the ingest's, and each worker's membership and partition keys), on a fake
 * store and mocked timers: a renewal whose answer is lost with the connection (a NATS restart) must not cost the
 * lease while NATS is back in time for another try. nats.js answers a lost request only by its timeout (the
 * JetStream default: 5 s), which is longer than the window a lease has between its renewal and its step-down.
 */
import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import { Lease } from '../../src/cluster/lease.ts';
import { HalcyonError } from '../../src/errors.ts';
import type { LeaseStore } from '../../src/cluster/nats.ts';

const TTL = 10_000;
/** nats.js's default timeout of a JetStream request: a request without its own times out after it. */
const JS_DEFAULT_TIMEOUT_MS = 5_000;
const quiet = { debug() {}, info() {}, warn() {}, error() {} };

/**
 * A one-key store as the NATS bucket behaves: compare-and-set on the revision; while `down`, a request gets no
 * answer and rejects after nats.js's default timeout.
 */
interface FakeStore {
  down: boolean;
  /** When > 0: each write is stored at once, its answer comes this much later (a loaded machine). */
  slowMs: number;
  /** Each write is stored at once, its answer is lost (a NATS restart): it rejects after nats.js's timeout. */
  lost: boolean;
  updates: number;
  /** Deletes asked for (refused ones too). */
  deletes: number;
  /** Runs before each delete is applied (a late write of the holder's arriving first). */
  beforeDelete: () => void;
  /** The key expires on the server (its TTL passed without a write). */
  expire(): void;
  /** Another process writes the key (it expired, and another took it). */
  steal(): void;
  /** A late write of the holder's lands: the key moves on under the same value. */
  rewrite(): void;
  /** The connection is back: what the store's `onReconnect` callbacks are told. */
  reconnect(): void;
  answer<T>(fn: () => T): Promise<T>;
  store: LeaseStore;
}

function fakeStore(): FakeStore {
  let rev = 0;
  let value: string | null = null;
  const reconnected = new Set<() => void>();
  const s: FakeStore = {
    down: false,
    slowMs: 0,
    lost: false,
    updates: 0,
    deletes: 0,
    beforeDelete: () => {},
    expire: () => void (value = null),
    steal: () => void ((value = 'other'), rev++),
    rewrite: () => void rev++,
    reconnect: () => reconnected.forEach((cb) => cb()),
    answer<T>(fn: () => T): Promise<T> {
      if (s.slowMs > 0) {
        const v = fn();
        return new Promise((resolve) => setTimeout(() => resolve(v), s.slowMs));
      }
      if (s.lost) {
        fn();
        return new Promise((_, reject) => setTimeout(() => reject(new Error('timeout')), JS_DEFAULT_TIMEOUT_MS));
      }
      if (!s.down) return Promise.resolve(fn());
      return new Promise((_, reject) => setTimeout(() => reject(new Error('timeout')), JS_DEFAULT_TIMEOUT_MS));
    },
    store: {
      create: (_key: string, v: string) => s.answer(() => (value === null ? ((value = v), ++rev) : null)),
      update: (_key: string, v: string, r: number) => {
        s.updates++;
        // As the NATS store: a stale revision of the holder's own value is its own other renewal (nats.ts).
        return s.answer(() => (r === rev ? ((value = v), ++rev) : value === v ? rev : null));
      },
      retake: (_key: string, v: string) => s.answer(() => (value === v ? ++rev : null)),
      release: (_key: string, r: number) => {
        s.deletes++;
        s.beforeDelete();
        // As the NATS store: refused for a stale revision, it tells what the key holds now; unanswered, a coded error.
        return s
          .answer(() => (r === rev ? ((value = null), rev++, null) : value === null ? null : { value, rev }))
          .catch((err: unknown) => Promise.reject(new HalcyonError('HALCYON_CLUSTER', `cannot release lease key: ${(err as Error).message}`)));
      },
      get: async () => value,
      onReconnect: (cb) => {
        reconnected.add(cb);
        return () => void reconnected.delete(cb);
      },
    },
  };
  return s;
}

/** A lease held by 'me' on `s`, and the reasons it reports for losing it. */
async function heldLease(s: FakeStore): Promise<{ lease: Lease; lost: string[] }> {
  const lease = new Lease(s.store, TTL, 'me', quiet);
  const lost: string[] = [];
  lease.onLost((why) => lost.push(why));
  assert.equal(await lease.tryAcquire(), true);
  return { lease, lost };
}

/** A lease held by 'me' on `s` that stepped down in a NATS outage (`s` is left down; its renewals are still out). */
async function steppedDown(t: TestContext, s: FakeStore): Promise<Lease> {
  const { lease, lost } = await heldLease(s);
  s.down = true;
  await advance(t, 0.8 * TTL + TTL / 6 + 100);
  assert.equal(lost.length, 1, 'stepped down');
  return lease;
}

/** Advances the mocked clock by `ms` in small steps, letting promise callbacks run between them. */
async function advance(t: TestContext, ms: number): Promise<void> {
  for (let done = 0; done < ms; done += 50) {
    t.mock.timers.tick(50);
    for (let i = 0; i < 10; i++) await Promise.resolve();
  }
}

test('Lease: a renewal lost with the connection is tried again in time; a short NATS outage keeps the lease', async (t) => {
  t.mock.timers.enable({ apis: ['setInterval', 'setTimeout', 'Date'], now: 0 });
  const s = fakeStore();
  const { lease, lost } = await heldLease(s);
  await advance(t, TTL);
  const before = s.updates;
  s.down = true; // NATS restarts: the renewal sent now is never answered
  await advance(t, 1_000);
  assert.ok(s.updates > before, 'a renewal was sent into the outage');
  s.down = false; // back within a second
  await advance(t, 3 * TTL);
  assert.deepEqual(lost, []);
  assert.equal(lease.held, true);
  lease.abandon();
});

test('Lease: a NATS outage shorter than a third of the TTL, starting at any moment, keeps the lease; one past 80 % of it does not', async (t) => {
  t.mock.timers.enable({ apis: ['setInterval', 'setTimeout', 'Date'], now: 0 });
  // Outages starting at every point of a renewal cycle (a renewal is due a third of the TTL after the last one).
  for (let start = 0; start < TTL / 2; start += 250) {
    const s = fakeStore();
    const { lease, lost } = await heldLease(s);
    await advance(t, 2 * TTL + start);
    s.down = true;
    await advance(t, TTL / 3 - 300);
    s.down = false;
    await advance(t, 2 * TTL);
    assert.deepEqual(lost, [], `an outage from ${start} ms into a renewal cycle`);
    lease.abandon();
  }
  const s = fakeStore();
  const { lease, lost } = await heldLease(s);
  s.down = true;
  await advance(t, 0.8 * TTL + TTL / 6 + 100);
  assert.equal(lost.length, 1, 'the holder steps down before the key can have expired on the server');
  assert.equal(lease.held, false);
});

test('Lease: answers slower than a renewal tick still renew it (a loaded machine); renewals overlap, none is taken for another holder', async (t) => {
  t.mock.timers.enable({ apis: ['setInterval', 'setTimeout', 'Date'], now: 0 });
  const s = fakeStore();
  const { lease, lost } = await heldLease(s);
  s.slowMs = TTL / 4; // longer than a tick (TTL / 6), within the step-down
  await advance(t, 3 * TTL);
  assert.deepEqual(lost, []);
  s.slowMs = 0;
  await advance(t, TTL);
  assert.deepEqual(lost, []);
  assert.equal(lease.held, true);
  await lease.release();
  assert.equal(await s.store.get('k'), null, 'released by the newest revision');
});

test('Lease: lost to an outage past its TTL, taken again by acquire once NATS is back and the key expired; lost again, again', async (t) => {
  t.mock.timers.enable({ apis: ['setInterval', 'setTimeout', 'Date'], now: 0 });
  const s = fakeStore();
  const { lease, lost } = await heldLease(s);
  for (let round = 1; round <= 2; round++) {
    s.down = true;
    await advance(t, TTL + TTL / 6);
    assert.equal(lost.length, round, `round ${round}: stepped down`);
    const again = lease.acquire(new AbortController().signal);
    let held = false;
    void again.then(() => (held = true));
    await advance(t, TTL); // still down: tries, fails, tries again
    assert.equal(held, false);
    s.expire(); // on the server, past its TTL
    s.down = false;
    await advance(t, 2_000);
    assert.equal(held, true, `round ${round}: held again`);
    assert.equal(lease.held, true);
  }
  lease.abandon();
});

test('Lease: stepped down in an outage, it takes its key back as soon as NATS is back if the key still holds its value (back before the TTL), by the key\'s revision; a key another holder wrote, or one that expired and was taken, it leaves', async (t) => {
  // It used to wait for its own key to expire: an ingest that stepped down at 80 % of the TTL led again up to a
  // fifth of the TTL after NATS was back, for nothing (nobody else can hold a key that holds this holder's value).
  t.mock.timers.enable({ apis: ['setInterval', 'setTimeout', 'Date'], now: 0 });
  const s = fakeStore();
  const lease = await steppedDown(t, s);
  const again = lease.acquire(new AbortController().signal);
  let held = false;
  void again.then(() => (held = true));
  s.rewrite(); // a renewal sent into the outage landed after all: the key moved on, still 'me'
  s.down = false;
  s.reconnect();
  await advance(t, 200);
  assert.equal(held, true, 'taken back at once');
  const updates = s.updates;
  await advance(t, TTL / 6 + 100);
  assert.ok(s.updates > updates, 'renewed from the revision it took it back with');
  assert.equal(lease.held, true);
  lease.abandon();

  const other = fakeStore();
  const stolen = await steppedDown(t, other);
  const ac = new AbortController();
  const waiting = stolen.acquire(ac.signal);
  let got = false;
  waiting.then(() => (got = true), () => {});
  other.down = false;
  other.expire();
  other.steal(); // expired on the server, and another process took it
  other.reconnect();
  await advance(t, 3 * TTL);
  assert.equal(got, false, 'another holder\'s key is not taken');
  assert.equal(await other.store.get('k'), 'other');
  ac.abort();
  await advance(t, 100);
});

test('Lease: a try sent into a NATS outage does not hold acquire up once NATS is back (its answer comes only by the timeout): the next goes at the reconnect; tries do not pile up', async (t) => {
  t.mock.timers.enable({ apis: ['setInterval', 'setTimeout', 'Date'], now: 0 });
  const s = fakeStore();
  const { lease } = await heldLease(s);
  let out = 0;
  let maxOut = 0;
  const create = s.store.create;
  s.store.create = (k, v) => {
    maxOut = Math.max(maxOut, ++out);
    return create(k, v).finally(() => out--);
  };
  s.down = true;
  await advance(t, TTL + TTL / 6); // stepped down
  assert.equal(lease.held, false);
  const again = lease.acquire(new AbortController().signal);
  let heldAt = 0;
  void again.then(() => (heldAt = Date.now()));
  await advance(t, 3 * TTL + 700); // tries keep going out into the outage
  s.expire();
  s.down = false;
  const backAt = Date.now();
  s.reconnect();
  for (let i = 0; i < 100; i++) await Promise.resolve(); // no timer runs: only the reconnect wakes it
  assert.equal(heldAt, backAt, 'held again as soon as NATS reconnected');
  assert.ok(maxOut <= 4, `${maxOut} tries out at once (3, and the one sent at the reconnect)`);
  lease.abandon();
});

test('Lease: acquire aborted while an attempt is out rejects at once; a lease that attempt takes after all is given up', async (t) => {
  t.mock.timers.enable({ apis: ['setInterval', 'setTimeout', 'Date'], now: 0 });
  const s = fakeStore();
  const lease = new Lease(s.store, TTL, 'me', quiet);
  s.slowMs = JS_DEFAULT_TIMEOUT_MS; // the create is stored at once, its answer comes late
  const stop = new AbortController();
  const acquiring = lease.acquire(stop.signal);
  await advance(t, 100);
  let outcome = 'pending';
  acquiring.catch((e: HalcyonError) => (outcome = e.code));
  stop.abort();
  await advance(t, 50);
  assert.equal(outcome, 'HALCYON_STOPPED', 'rejected at once, not after the attempt');
  assert.equal(await s.store.get('k'), 'me', 'the attempt took it on the server');
  await advance(t, JS_DEFAULT_TIMEOUT_MS);
  assert.equal(await s.store.get('k'), null, 'given up once its answer came');
  assert.equal(lease.held, false);
});

test('Lease: released while a renewal is out, the key is deleted by the revision that renewal wrote (not left to expire)', async (t) => {
  // A worker's clean hand-over deleted its partition's key by the revision before the renewal, which the store
  // refused: the key expired a TTL later, and the next owner, finding it absent, waited for the ack wait too (a
  // three-worker bench round stalled 44 s).
  t.mock.timers.enable({ apis: ['setInterval', 'setTimeout', 'Date'], now: 0 });
  const s = fakeStore();
  const { lease } = await heldLease(s);
  s.slowMs = 100;
  const before = s.updates;
  await advance(t, TTL / 6); // a renewal tick: the write is stored, its answer still on its way
  assert.equal(s.updates, before + 1, 'a renewal is out');
  const released = lease.release();
  await advance(t, 200);
  await released;
  assert.equal(await s.store.get('k'), null, 'deleted');
});

test('Lease: released while a renewal is out whose answer is lost (the server applied it), the key is deleted by its current revision; a key another holder wrote is left alone', async (t) => {
  // The renewal's answer never comes (nats.js gives up after 5 s): the lease still knows the revision before it, the
  // delete by that revision is refused, and the key stayed until its TTL (the stall of the test above, again).
  t.mock.timers.enable({ apis: ['setInterval', 'setTimeout', 'Date'], now: 0 });
  const s = fakeStore();
  const { lease } = await heldLease(s);
  s.lost = true;
  const before = s.updates;
  await advance(t, TTL / 6); // a renewal tick: the write is stored, its answer lost
  assert.equal(s.updates, before + 1, 'a renewal is out');
  s.lost = false;
  const released = lease.release();
  await advance(t, JS_DEFAULT_TIMEOUT_MS + 100);
  await released;
  assert.equal(await s.store.get('k'), null, 'deleted');

  const other = fakeStore();
  const { lease: stolen } = await heldLease(other);
  other.steal(); // the key expired (an outage), another process took it
  await stolen.release();
  assert.equal(await other.store.get('k'), 'other', 'never deletes a key another holder wrote');
});

test('Lease: a release whose key keeps moving under its own value gives up after a few deletes and rejects with HALCYON_CLUSTER (the key then expires by its TTL)', async (t) => {
  t.mock.timers.enable({ apis: ['setInterval', 'setTimeout', 'Date'], now: 0 });
  const s = fakeStore();
  const { lease } = await heldLease(s);
  // A late renewal of this holder's lands before each delete.
  s.beforeDelete = s.rewrite;
  await assert.rejects(lease.release(), { code: 'HALCYON_CLUSTER' });
  assert.ok(s.deletes >= 2 && s.deletes <= 5, `${s.deletes} deletes`);
  assert.equal(await s.store.get('k'), 'me');
  assert.equal(lease.held, false);
});

test('Lease: stepped down in a NATS outage and released once NATS is back before the TTL, its key (still its own) is deleted at once; a key another holder wrote is left alone', async (t) => {
  // A lease that had stepped down returned from release() without a delete: its key, still this holder's, stayed
  // until its TTL, and the next owner waited that long (a partition's, the ack wait too) for nothing.
  t.mock.timers.enable({ apis: ['setInterval', 'setTimeout', 'Date'], now: 0 });
  const s = fakeStore();
  const lease = await steppedDown(t, s);
  s.down = false; // back before the key expired on the server: it still holds 'me'
  const released = lease.release();
  await advance(t, JS_DEFAULT_TIMEOUT_MS + 100); // renewals sent into the outage end by their timeout first
  await released;
  assert.equal(await s.store.get('k'), null, 'deleted');

  const other = fakeStore();
  const stolen = await steppedDown(t, other);
  other.down = false;
  other.expire();
  other.steal(); // the key expired; another process took it
  const releasing = stolen.release();
  await advance(t, JS_DEFAULT_TIMEOUT_MS + 100);
  await releasing;
  assert.equal(await other.store.get('k'), 'other', 'never deletes a key another holder wrote');
});

test('Lease: stepped down and released while NATS is still away, release rejects with HALCYON_CLUSTER within two request timeouts; released again once NATS is back, the key is deleted', async (t) => {
  t.mock.timers.enable({ apis: ['setInterval', 'setTimeout', 'Date'], now: 0 });
  const s = fakeStore();
  const lease = await steppedDown(t, s);
  let outcome = 'pending';
  const released = lease.release().then(
    () => (outcome = 'resolved'),
    (e: HalcyonError) => (outcome = e.code),
  );
  await advance(t, 2 * JS_DEFAULT_TIMEOUT_MS + 100);
  assert.equal(outcome, 'HALCYON_CLUSTER');
  await released;
  s.down = false;
  await lease.release();
  assert.equal(await s.store.get('k'), null, 'deleted by the release tried again');
});

test('Lease: release of a lease never taken, already released, or abandoned sends no delete', async (t) => {
  t.mock.timers.enable({ apis: ['setInterval', 'setTimeout', 'Date'], now: 0 });
  const s = fakeStore();
  await new Lease(s.store, TTL, 'me', quiet).release();
  assert.equal(s.deletes, 0, 'never taken');
  const { lease } = await heldLease(s);
  await lease.release();
  assert.equal(s.deletes, 1);
  await lease.release();
  assert.equal(s.deletes, 1, 'released already');
  const again = fakeStore();
  const { lease: left } = await heldLease(again);
  left.abandon();
  await left.release();
  assert.equal(again.deletes, 0, 'abandoned: its key is left to expire');
  assert.equal(await again.store.get('k'), 'me');
});
