import assert from 'node:assert/strict';
import { test } from 'node:test';
import { bundleExecArgv, spawnWorkerActor } from '../../src/actors.ts';

interface Echo {
  echo(v: unknown): Promise<unknown>;
  fail(): Promise<void>;
  failPlain(): Promise<void>;
  hang(): Promise<void>;
  die(): Promise<void>;
}
const entry = new URL('../fixtures/echo-worker.ts', import.meta.url);

test('worker actor: calls round-trip and errors keep their code across threads', async () => {
  const a = spawnWorkerActor<Echo>(entry, { default: 5000 });
  try {
    assert.deepEqual(await a.api.echo({ x: [1, 'two'] }), { x: [1, 'two'] });
    await assert.rejects(a.api.fail(), (e: { code?: string; status?: number; message: string }) => {
      assert.equal(e.code, 'HALCYON_STORE');
      assert.equal(e.status, 507);
      assert.match(e.message, /disk on fire/);
      return true;
    });
    // A non-Halcyon error still arrives coded, never as a bare object.
    await assert.rejects(a.api.failPlain(), { code: 'HALCYON_INTERNAL', message: 'plain failure' });
  } finally {
    await a.terminate();
  }
});

test('worker actor: a call past its deadline rejects with HALCYON_ACTOR_TIMEOUT', async () => {
  const a = spawnWorkerActor<Echo>(entry, { default: 5000, hang: 100 });
  try {
    await assert.rejects(a.api.hang(), { code: 'HALCYON_ACTOR_TIMEOUT' });
  } finally {
    await a.terminate();
  }
});

test('worker actor: pending calls reject with HALCYON_ACTOR_DIED when the worker dies, and later calls too', async () => {
  const a = spawnWorkerActor<Echo>(entry, { default: 60_000 });
  const died = new Promise((resolve) => a.onDeath(resolve));
  const pending = assert.rejects(a.api.hang(), { code: 'HALCYON_ACTOR_DIED' });
  await assert.rejects(a.api.die(), { code: 'HALCYON_ACTOR_DIED' });
  await pending;
  assert.equal(((await died) as { code: string }).code, 'HALCYON_ACTOR_DIED');
  await assert.rejects(a.api.echo(1), { code: 'HALCYON_ACTOR_DIED' });
});

test('worker actor: terminate() rejects pending calls with HALCYON_STOPPED', async () => {
  const a = spawnWorkerActor<Echo>(entry, { default: 60_000 });
  const pending = a.api.hang();
  await a.api.echo(0); // the worker is up
  const rejected = assert.rejects(pending, { code: 'HALCYON_STOPPED' });
  await a.terminate();
  await rejected;
});

test('worker options: a built bundle\'s worker drops the parent\'s tsx hooks and keeps every other option', () => {
  const js = new URL('file:///app/dist/workers/sync.js');
  assert.deepEqual(bundleExecArgv(js, ['--import', 'tsx', '--enable-source-maps']), ['--enable-source-maps']);
  assert.deepEqual(bundleExecArgv(js, ['--require', '/x/node_modules/tsx/dist/cjs/index.cjs', '--import=tsx/esm', '--trace-warnings']), ['--trace-warnings']);
  assert.deepEqual(bundleExecArgv(js, ['--loader', 'tsx', '--import', './otel.mjs']), ['--import', './otel.mjs']);
  // Nothing to drop, or a TypeScript entry (which needs the loader): inherit as is.
  assert.equal(bundleExecArgv(js, ['--import', './otel.mjs']), undefined);
  assert.equal(bundleExecArgv(new URL('file:///app/workers/sync.ts'), ['--import', 'tsx']), undefined);
  assert.equal(bundleExecArgv(js, ['--import', 'tsxy']), undefined);
});
