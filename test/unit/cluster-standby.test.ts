/**
 * A cluster ingest that lost its lease stands by through the client's supervisor (src/client/supervisor.ts,
 * `standBy`): its actors stop at once and start again only once the role leads again (the supervisor waits for
 * the role's `leading()` before every start), a stand-by is never counted as an actor failure, an actor restart
 * asked for meanwhile does not start a second set, one still in its back-off is superseded (it starts nothing),
 * and a stop ends a stand-by at once. Fake actors and role; mocked timers where a restart's back-off runs. A
 * step-down while a restart starts its actors: cluster-stepdown.test.ts.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { HalcyonError } from '../../src/errors.ts';
import { unlessAborted } from '../../src/abort.ts';
import { Supervisor, type SupervisorDeps } from '../../src/client/supervisor.ts';

/** A supervisor over fake actors: `calls` records stops and starts; `leading()` waits until `lead()` is called. */
function standbySupervisor() {
  const lifecycle = new AbortController();
  const calls: string[] = [];
  const failed: HalcyonError[] = [];
  const reported: HalcyonError[] = [];
  let state = 'running';
  let leading: Promise<void> = Promise.resolve();
  let lead = () => {};
  const deps = {
    opts: { threads: 'worker', watchdogMs: 60_000 },
    actors: { stop: async () => void calls.push('stop') },
    running: () => state === 'running',
    lifecycle: () => lifecycle.signal,
    leading: () => unlessAborted(leading, [lifecycle.signal]),
    start: async () => void calls.push('start'),
    started() {},
    report: (e: HalcyonError) => void reported.push(e),
    fail: (e: HalcyonError) => void failed.push(e),
    warn() {},
  };
  const sup = new Supervisor(deps as unknown as SupervisorDeps);
  return {
    sup,
    calls,
    failed,
    reported,
    /** The role loses its lease: starts wait until {@link lead}. */
    lose() {
      leading = new Promise((r) => (lead = r));
    },
    lead: () => lead(),
    /** The client stops: as core.ts's shutdown does. */
    async stop() {
      state = 'stopping';
      lifecycle.abort();
      await sup.stop();
    },
  };
}

const lost = () => new HalcyonError('HALCYON_CLUSTER', 'the ingest lost its lease');
const turns = async () => {
  for (let i = 0; i < 20; i++) await Promise.resolve();
};

test('Supervisor.standBy: actors stop at once and start once the role leads again, any number of times, never counted as failures', async () => {
  const s = standbySupervisor();
  for (let round = 0; round < 8; round++) {
    s.lose();
    s.sup.standBy(lost());
    await turns();
    assert.deepEqual(s.calls.splice(0), ['stop'], `round ${round}: stopped, not started while standing by`);
    s.sup.restart(new HalcyonError('HALCYON_ACTOR_DIED', 'a worker died')); // meanwhile: no second set
    s.lead();
    await s.sup.restarting;
    assert.deepEqual(s.calls.splice(0), ['start'], `round ${round}: started once it leads`);
  }
  assert.deepEqual(s.failed, []);
  assert.deepEqual(s.reported, []);
});

test('Supervisor.standBy: a stop while standing by ends the wait at once, nothing started, nothing failed', async () => {
  const s = standbySupervisor();
  s.lose();
  s.sup.standBy(lost());
  await turns();
  await s.stop();
  assert.deepEqual(s.calls, ['stop']);
  assert.equal(s.sup.restarting, null);
  assert.deepEqual(s.failed, []);
});

test('Supervisor.standBy during an actor restart\'s back-off: the restart starts nothing, the stand-by starts one set once leading', async (t) => {
  t.mock.timers.enable({ apis: ['setTimeout'] });
  const s = standbySupervisor();
  s.sup.restart(new HalcyonError('HALCYON_ACTOR_DIED', 'a worker died'));
  await turns();
  s.lose();
  s.sup.standBy(lost());
  await turns();
  assert.deepEqual(s.calls.splice(0), ['stop', 'stop'], 'the back-off ended, nothing started');
  s.lead();
  await turns();
  assert.deepEqual(s.calls.splice(0), ['start']);
  await s.sup.restarting;
  assert.equal(s.sup.restarting, null);
  assert.equal(s.reported.length, 1, 'only the actor failure is reported');
});

test('Supervisor.standBy with inline actors (they cannot stop alone): the client fails with the lease error', () => {
  const s = standbySupervisor();
  (s.sup as unknown as { deps: { opts: { threads: string } } }).deps.opts.threads = 'inline';
  s.sup.standBy(lost());
  assert.deepEqual(s.failed.map((e) => e.code), ['HALCYON_CLUSTER']);
  assert.deepEqual(s.calls, []);
});
