/**
 * An ingest that loses its lease while an actor restart is in progress (a worker died, or the watchdog fired):
 * the restart must not start, or leave running, an actor set — nor serve the workers — while the lease is not
 * held, since another ingest's sync and crypto actors may run for the same device then (to-device messages and
 * Olm state would split). The real client core, supervisor, ingest role and lease, on a fake lease store, a fake
 * broker and fake actors; mocked timers. And Actors.start, which leaves the sync actor unstarted when the start
 * no longer leads.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { Actors, type ActorSet } from '../../src/client/actors.ts';
import { ClientCore } from '../../src/client/core.ts';
import { resolveOptions } from '../../src/client/options.ts';
import { IngestRole } from '../../src/cluster/ingest.ts';
import { Lease } from '../../src/cluster/lease.ts';
import type { Broker, LeaseStore } from '../../src/cluster/nats.ts';
import { HalcyonError } from '../../src/errors.ts';
import type { RoomActions } from '../../src/events.ts';
import type { Session } from '../../src/token.ts';

const TTL = 3_000;
const quiet = { debug() {}, info() {}, warn() {}, error() {} };

/** The ingest key as the NATS bucket keeps it: compare-and-set on the revision. */
function fakeStore() {
  let rev = 0;
  let value: string | null = null;
  const store: LeaseStore = {
    create: async (_k, v) => (value === null ? ((value = v), ++rev) : null),
    update: async (_k, v, r) => (r === rev ? ((value = v), ++rev) : null),
    retake: async (_k, v) => (value === v ? ++rev : null),
    release: async (_k, r) => (r === rev ? ((value = null), null) : value === null ? null : { value, rev }),
    get: async () => value,
    onReconnect: () => () => {},
  };
  return {
    store,
    /** Another process writes the key: the holder loses it at its next renewal. */
    steal: () => void ((value = 'other'), rev++),
    /** The other process goes: the key is free to take. */
    free: () => void (value = null),
  };
}

/**
 * A running ingest's core with fake actors whose start waits for {@link gate} to open. `violations` collects every
 * start of actors, serve of the workers, or running actor set found while this process does not hold the lease.
 */
function ingest() {
  const s = fakeStore();
  const opts = resolveOptions({ dataDir: '/nonexistent', logger: quiet, cluster: { servers: 'nats://127.0.0.1:1', name: 't', role: 'ingest', leaseTtlMs: TTL } });
  const core = new ClientCore(opts, {} as RoomActions);
  const lease = new Lease(s.store, TTL, 'me', quiet);
  const violations: string[] = [];
  const st = { up: false, serving: false, starts: 0, syncStarts: 0, gateOpen: true, opened: () => {} };
  const broker = {
    serve: () => {
      if (!lease.held) violations.push('served the workers without the lease');
      st.serving = true;
      return () => void (st.serving = false);
    },
    leaseStore: () => new Promise(() => {}), // the partitions' load is not written here
    close: async () => {},
  } as unknown as Broker;
  Object.assign(core.actors, {
    start: async (_session: Session, leads: () => boolean) => {
      if (!lease.held) violations.push('started actors without the lease');
      st.starts++;
      st.up = true;
      if (!st.gateOpen) await new Promise<void>((r) => (st.opened = r));
      // As Actors.start: the sync actor, last, only if the start still leads.
      if (!leads()) return;
      if (!lease.held) violations.push('started the sync actor without the lease');
      st.syncStarts++;
    },
    stop: async () => void (st.up = false),
  });
  const role = new IngestRole(core, broker, 8, lease);
  core.bus.add('error', () => {});
  return {
    core,
    lease,
    s,
    st,
    violations,
    async start() {
      assert.equal(await lease.tryAcquire(), true);
      core.session = {} as Session;
      core.cluster = role;
      core.state = 'running';
      role.running();
    },
    /** Checks that nothing runs now without the lease. */
    check(when: string) {
      if (!lease.held && st.up) violations.push(`actors running without the lease ${when}`);
      if (!lease.held && st.serving) violations.push(`serving without the lease ${when}`);
    },
    end() {
      core.state = 'stopping';
      core.lifecycle.abort();
      lease.abandon();
    },
  };
}

/** Advances the mocked clock by `ms` in small steps, letting promise callbacks run between them. */
async function advance(t: TestContext, ms: number): Promise<void> {
  for (let done = 0; done < ms; done += 50) {
    t.mock.timers.tick(50);
    for (let i = 0; i < 20; i++) await Promise.resolve();
  }
}

const died = () => new HalcyonError('HALCYON_ACTOR_DIED', 'a worker died');

test('Step-down during an actor restart: lease lost while the restart starts its actors — they are stopped, nothing serves, it leads again once it holds the lease', async (t) => {
  t.mock.timers.enable({ apis: ['setInterval', 'setTimeout', 'Date'], now: 0 });
  const i = ingest();
  await i.start();
  i.st.gateOpen = false; // the restart's start takes a while (workers spawning, stores opening)
  i.core.supervisor.restart(died());
  await advance(t, 1_100); // its back-off: it is now starting its actors, while holding the lease
  assert.equal(i.st.starts, 1);
  i.s.steal();
  await advance(t, TTL / 6 + 100); // the next renewal finds the key taken: the ingest steps down
  assert.equal(i.lease.held, false);
  i.st.gateOpen = true;
  i.st.opened(); // the restart's actors are up now
  await advance(t, 200);
  assert.equal(i.st.syncStarts, 0, 'its sync actor never started');
  i.check('after the restart ended');
  await advance(t, 3 * TTL); // the other ingest leads meanwhile
  i.check('while standing by');
  i.s.free();
  await advance(t, 2_000);
  assert.equal(i.lease.held, true, 'holds the lease again');
  assert.equal(i.st.up, true, 'its actors run again');
  assert.equal(i.st.serving, true, 'it serves the workers again');
  assert.equal(i.st.syncStarts, 1);
  assert.deepEqual(i.violations, []);
  i.end();
});

test('Step-down during an actor restart: lease lost during its back-off — the restart starts nothing, the stand-by starts one set once it holds the lease', async (t) => {
  t.mock.timers.enable({ apis: ['setInterval', 'setTimeout', 'Date'], now: 0 });
  const i = ingest();
  await i.start();
  i.core.supervisor.restart(died());
  await advance(t, 100);
  i.s.steal();
  await advance(t, TTL / 6 + 100); // stepped down, within the restart's 1 s back-off
  assert.equal(i.lease.held, false);
  await advance(t, 3 * TTL);
  i.check('while standing by');
  assert.equal(i.st.starts, 0, 'nothing started while standing by');
  i.s.free();
  await advance(t, 2_000);
  assert.equal(i.lease.held, true);
  assert.equal(i.st.up, true);
  assert.equal(i.st.serving, true);
  assert.equal(i.st.starts, 1, 'one set started: the restart was superseded by the stand-by, not run after it');
  assert.deepEqual(i.violations, []);
  i.end();
});

test('Actors.start: a step-down before the sync actor starts keeps it from starting (the others opened; the set is stopped next)', async () => {
  const dataDir = mkdtempSync(join(tmpdir(), 'halcyon-stepdown-'));
  const calls: string[] = [];
  const set = {
    sync: { api: { start: async () => void calls.push('sync start') }, onDeath() {} },
    cache: { api: { open: async () => void calls.push('cache open'), summaries: async () => [] }, onDeath() {} },
    crypto: null,
    port: { onMessage() {} },
    cryptoPort: null,
  } as unknown as ActorSet;
  const hooks = { onSyncMessage() {}, onCryptoMessage() {}, onDeath() {}, onSummary() {}, wantedTypes: () => null, seqFloor: () => 0, strategy: () => ({ build: () => set }) };
  try {
    const actors = new Actors(resolveOptions({ dataDir, logger: quiet, encryption: false }), hooks);
    const session = { homeserver: 'https://hs.example', userId: '@bot:hs.example', deviceId: 'DEV' } as Session;
    await actors.start(session, () => false);
    assert.deepEqual(calls, ['cache open']);
    actors.set = null;
    await actors.start(session, () => true);
    assert.deepEqual(calls, ['cache open', 'cache open', 'sync start']);
  } finally {
    rmSync(dataDir, { recursive: true, force: true });
  }
});

test('Actors.start: a cluster ingest\'s crypto actor sends nothing unless the ingest still leads once its store is open', async () => {
  const dataDir = mkdtempSync(join(tmpdir(), 'halcyon-stepdown-'));
  const calls: string[] = [];
  const crypto = {
    api: {
      open: async (config: { holdRequests?: boolean }) => {
        calls.push(`crypto open, held: ${config.holdRequests === true}`);
        return { userId: '@bot:hs.example', deviceId: 'DEV', curve25519: 'c', ed25519: 'e' };
      },
      release: async () => void calls.push('crypto release'),
    },
    onDeath() {},
  };
  const newSet = () =>
    ({
      sync: { api: { start: async () => void calls.push('sync start') }, onDeath() {} },
      cache: { api: { open: async () => void calls.push('cache open'), summaries: async () => [] }, onDeath() {} },
      crypto,
      port: { onMessage() {} },
      cryptoPort: { onMessage() {} },
    }) as unknown as ActorSet;
  const hooks = { onSyncMessage() {}, onCryptoMessage() {}, onDeath() {}, onSummary() {}, wantedTypes: () => null, seqFloor: () => 0, strategy: () => ({ build: newSet }) };
  const session = { homeserver: 'https://hs.example', userId: '@bot:hs.example', deviceId: 'DEV', accessToken: 'secret' } as Session;
  try {
    const cluster = { servers: 'nats://127.0.0.1:4222', name: 'bot', role: 'ingest' as const };
    const actors = new Actors(resolveOptions({ dataDir, logger: quiet, encryption: { passphrase: 'p' }, cluster }), hooks);
    await actors.start(session, () => false);
    assert.deepEqual(calls.filter((c) => c.startsWith('crypto')), ['crypto open, held: true'], 'opened held, never released');
    actors.set = null;
    calls.length = 0;
    await actors.start(session, () => true);
    assert.deepEqual(calls.filter((c) => c.startsWith('crypto')), ['crypto open, held: true', 'crypto release']);
    // A single process holds nothing.
    calls.length = 0;
    const single = new Actors(resolveOptions({ dataDir, logger: quiet, encryption: { passphrase: 'p' } }), hooks);
    await single.start(session);
    assert.deepEqual(calls.filter((c) => c.startsWith('crypto')), ['crypto open, held: false']);
  } finally {
    rmSync(dataDir, { recursive: true, force: true });
  }
});
