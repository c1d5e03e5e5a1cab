/**
 * The ownership arithmetic of cluster workers (src/cluster/ownership.ts), without NATS: each live worker targets
 * ceil(P / workers) partitions, takes free ones below it, gives its highest-numbered ones up above it; repeated
 * over a membership change, the workers end up with every partition owned once and shares within one of each other.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { planOwnership } from '../../src/cluster/ownership.ts';

test('planOwnership: the target share is ceil(P / live workers)', () => {
  assert.equal(planOwnership(16, 1, [], new Set()).target, 16);
  assert.equal(planOwnership(16, 2, [], new Set()).target, 8);
  assert.equal(planOwnership(16, 3, [], new Set()).target, 6);
  assert.equal(planOwnership(8, 3, [], new Set()).target, 3);
  assert.equal(planOwnership(2, 5, [], new Set()).target, 1);
  assert.equal(planOwnership(16, 0, [], new Set()).target, 16, 'no member seen yet counts as one');
});

test('planOwnership: below the target it takes free partitions only, from its offset on, wrapping around', () => {
  const taken = new Set([0, 1, 2, 5]);
  assert.deepEqual(planOwnership(8, 2, [], taken), { target: 4, take: [3, 4, 6, 7], give: [] });
  assert.deepEqual(planOwnership(8, 2, [], taken, 6), { target: 4, take: [6, 7, 3, 4], give: [] });
  assert.deepEqual(planOwnership(8, 2, [0, 1], taken), { target: 4, take: [3, 4], give: [] }, 'counts what it owns');
  assert.deepEqual(planOwnership(4, 1, [], new Set([0, 1, 2, 3])), { target: 4, take: [], give: [] }, 'nothing free: waits');
});

test('planOwnership: above the target it gives up its highest-numbered partitions; at the target it keeps all', () => {
  assert.deepEqual(planOwnership(16, 2, [0, 3, 9, 12, 15, 1, 2, 4, 5, 6], new Set()), { target: 8, take: [], give: [15, 12] });
  assert.deepEqual(planOwnership(16, 3, [0, 1, 2, 3, 4, 5], new Set([0, 1, 2, 3, 4, 5])), { target: 6, take: [], give: [] });
});

/** Runs the plan of each worker in turn, as their polls would, until nothing changes; returns the owners. */
function converge(partitions: number, workers: string[], owners: Map<number, string>): Map<number, string> {
  for (let round = 0; round < 50; round++) {
    let changed = false;
    for (const [w, me] of workers.entries()) {
      const mine = [...owners].filter(([, o]) => o === me).map(([p]) => p);
      const plan = planOwnership(partitions, workers.length, mine, new Set(owners.keys()), (w * 7) % partitions);
      for (const p of plan.give) owners.delete(p);
      for (const p of plan.take) owners.set(p, me);
      changed ||= plan.give.length + plan.take.length > 0;
    }
    if (!changed) return owners;
  }
  throw new Error('did not converge');
}

test('planOwnership: a worker joining takes its share, one leaving has its share taken; every partition owned once', () => {
  const share = (owners: Map<number, string>) => [...owners.values()].reduce((m, o) => m.set(o, (m.get(o) ?? 0) + 1), new Map<string, number>());
  let owners = converge(16, ['a', 'b'], new Map());
  assert.equal(owners.size, 16);
  assert.deepEqual([...share(owners).values()].sort(), [8, 8]);
  owners = converge(16, ['a', 'b', 'c'], owners);
  assert.equal(owners.size, 16);
  assert.deepEqual([...share(owners).values()].sort((x, y) => x - y), [4, 6, 6], 'the newcomer gets what the others gave up');
  for (const [p, o] of owners) if (o === 'b') owners.delete(p); // b dies: its keys expire
  owners = converge(16, ['a', 'c'], owners);
  assert.equal(owners.size, 16);
  assert.deepEqual([...share(owners).values()].sort(), [8, 8]);
  assert.equal(converge(20, ['a', 'b', 'c'], new Map()).size, 20);
});
