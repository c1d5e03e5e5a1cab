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
