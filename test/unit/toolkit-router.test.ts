/** Bad options of `client.commands()` and `router.add()` are refused at once, with a coded error saying which. */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { Client, type CommandOptions, type CommandsOptions } from '../../src/index.ts';

test('bad router and command options: HALCYON_INVALID_ARGUMENT naming the option; nothing is registered', (t) => {
  const dataDir = mkdtempSync(join(tmpdir(), 'halcyon-router-'));
  t.after(() => rmSync(dataDir, { recursive: true, force: true }));
  const client = new Client({ dataDir });
  for (const [opts, why] of [
    [{ prefix: '' }, /prefix/],
    [{ prefix: '! ' }, /prefix/],
    [{ help: 'two words' }, /help must be one word/],
    [{ help: '' }, /help must be one word/],
    [{ admins: '@a:x' }, /admins/],
  ] as Array<[unknown, RegExp]>) {
    assert.throws(() => client.commands(opts as CommandsOptions), (e: Error & { code?: string }) => e.code === 'HALCYON_INVALID_ARGUMENT' && why.test(e.message), JSON.stringify(opts));
  }
  const router = client.commands();
  const noop = () => {};
  for (const [opts, why] of [
    [{ power: 'fly' }, /power must be a level or one of/],
    [{ power: Number.NaN }, /power/],
    [{ cooldownMs: -1 }, /cooldownMs/],
    [{ roomCooldownMs: Infinity }, /roomCooldownMs/],
    [{ allow: '@a:x' }, /allow must be an array/],
    [{ rooms: [1] }, /rooms must be an array/],
  ] as Array<[unknown, RegExp]>) {
    assert.throws(() => router.add('x', opts as CommandOptions, noop), (e: Error & { code?: string }) => e.code === 'HALCYON_INVALID_ARGUMENT' && why.test(e.message), JSON.stringify(opts));
  }
  assert.throws(() => router.add('help', noop), /named "help" exists already/);
  router.add('Ping', noop);
  assert.throws(() => router.add('ping [x]', noop), /named "ping" exists already/);
  assert.throws(() => router.add('pong', {} as never), /a handler function is needed/);
  assert.deepEqual(router.commands.map((c) => c.pattern.source), ['Ping']);
  router.close();
});
