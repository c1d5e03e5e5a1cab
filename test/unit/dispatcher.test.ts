import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Dispatcher } from '../../src/dispatcher.ts';

function deferred() {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

test('dispatcher: tasks of one key run in order, one at a time, sync and async mixed', async () => {
  const d = new Dispatcher(4, (e) => assert.fail(String(e)));
  const seen: number[] = [];
  let active = 0;
  for (let i = 0; i < 50; i++) {
    d.push('room', i % 3 === 0 ? () => void seen.push(i) : async () => {
      assert.equal(++active, 1);
      await new Promise((r) => setImmediate(r));
      seen.push(i);
      active--;
    });
  }
  await d.idle();
  assert.deepEqual(seen, Array.from({ length: 50 }, (_, i) => i));
});

test('dispatcher: keys run concurrently, bounded by the concurrency limit, and a blocked key does not block others', async () => {
  const d = new Dispatcher(2, (e) => assert.fail(String(e)));
  const gate = deferred();
  const done: string[] = [];
  let running = 0;
  let peak = 0;
  d.push('slow', async () => {
    await gate.promise;
    done.push('slow');
  });
  for (const key of ['a', 'b', 'c', 'd']) {
    d.push(key, async () => {
      peak = Math.max(peak, ++running + 1); // +1: the slow lane holds a slot
      await new Promise((r) => setImmediate(r));
      running--;
      done.push(key);
    });
  }
  while (done.length < 4) await new Promise((r) => setImmediate(r));
  assert.deepEqual(done, ['a', 'b', 'c', 'd']);
  assert.ok(peak <= 2, `peak ${peak}`);
  assert.equal(d.size, 1);
  gate.resolve();
  await d.idle();
  assert.equal(d.size, 0);
});

test('dispatcher: a task that throws or rejects is reported and the next task of that key still runs', async () => {
  const errors: Array<[string, string]> = [];
  const d = new Dispatcher(1, (e, key) => errors.push([key, (e as Error).message]));
  const seen: string[] = [];
  d.push('r', () => {
    throw new Error('sync boom');
  });
  d.push('r', async () => {
    throw new Error('async boom');
  });
  d.push('r', () => void seen.push('after'));
  await d.idle();
  assert.deepEqual(errors, [['r', 'sync boom'], ['r', 'async boom']]);
  assert.deepEqual(seen, ['after']);
});

test('pushAll: 20,000 one-task lanes of synchronous tasks all run, in push order per lane, without deep recursion', async () => {
  const errors: unknown[] = [];
  const d = new Dispatcher(16, (e) => errors.push(e));
  const ran: number[] = [];
  d.pushAll(() => {
    for (let i = 0; i < 20_000; i++) d.push(`room${i}`, () => void ran.push(i));
  });
  await d.idle();
  assert.equal(ran.length, 20_000);
  assert.deepEqual(errors, []);
});

test('dispatcher: a room whose handlers burn CPU yields between them, so a room pushed meanwhile waits one task, not the backlog', async () => {
  const d = new Dispatcher(8, (e) => assert.fail(String(e)));
  const order: string[] = [];
  const burn = (ms: number) => {
    const end = performance.now() + ms;
    while (performance.now() < end);
  };
  // Queued before the busy room's tasks start: runs at the first turn boundary the dispatcher gives the event loop.
  setImmediate(() => d.push('quiet', () => void order.push('quiet')));
  d.pushAll(() => {
    for (let i = 1; i <= 5; i++) d.push('busy', () => (burn(25), void order.push(`busy${i}`)));
  });
  await d.idle();
  assert.equal(order.length, 6);
  assert.deepEqual(order.filter((x) => x !== 'quiet'), ['busy1', 'busy2', 'busy3', 'busy4', 'busy5']);
  assert.ok(order.indexOf('quiet') <= 1, `the quiet room ran after ${order.indexOf('quiet')} busy tasks: ${order.join(', ')}`);
});

test('dispatcher: synchronous tasks of one lane keep running in one turn while they are fast, and yield once their stretch passes the 10 ms slice', async (t) => {
  // The slice is measured with performance.now(): a clock the test moves makes "fast" exact, whatever the load
  // of the machine (a busy one preempted the loop long enough for a real clock to end the stretch early).
  let now = 0;
  t.mock.method(performance, 'now', () => now);
  const d = new Dispatcher(8, (e) => assert.fail(String(e)));
  let n = 0;
  d.pushAll(() => {
    for (let i = 0; i < 10_000; i++) d.push('fast', () => void n++);
  });
  assert.equal(n, 10_000, 'tasks that take no time all run in the turn that pushed them');
  await d.idle();

  // Tasks of 3 ms each: four fit in the slice (0, 3, 6 and 9 ms into the stretch); the fifth waits for a turn.
  let m = 0;
  const turns: number[] = [];
  d.pushAll(() => {
    for (let i = 0; i < 10; i++) d.push('slow', () => void ((now += 3), m++));
  });
  turns.push(m);
  while (m < 10) {
    await new Promise<void>((r) => setImmediate(r));
    turns.push(m);
  }
  assert.deepEqual(turns.filter((x, i) => x !== turns[i - 1]), [4, 8, 10], 'four tasks per turn');
  await d.idle();
});

test('pushBatch: batches taken in during one turn start together, so a later batch\'s room does not wait for an earlier batch\'s slow handler', async () => {
  const d = new Dispatcher(8, (e) => assert.fail(String(e)));
  const order: string[] = [];
  const burn = (ms: number) => {
    const end = performance.now() + ms;
    while (performance.now() < end);
  };
  // Two batches arriving in one turn, as queued port messages do: each has a slow event in "busy" and one in a quiet room.
  d.pushBatch(() => {
    d.push('busy', () => (burn(25), void order.push('busy1')));
    d.push('quiet-a', () => void order.push('quiet-a'));
  });
  d.pushBatch(() => {
    d.push('busy', () => (burn(25), void order.push('busy2')));
    d.push('quiet-b', () => void order.push('quiet-b'));
  });
  assert.deepEqual(order, [], 'lanes start at the end of the turn');
  await d.idle();
  assert.deepEqual(order, ['busy1', 'quiet-a', 'quiet-b', 'busy2']);
});
