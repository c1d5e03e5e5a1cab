/**
 * Client options as resolved: defaults filled in, and values that cannot work refused at construction with
 * `HALCYON_INVALID_ARGUMENT` (here: `requestTimeoutMs`, `sendWindow`).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { resolveOptions } from '../../src/client/options.ts';
import { HalcyonError } from '../../src/errors.ts';

const base = { dataDir: '/nonexistent/halcyon-options-test', logger: { debug() {}, info() {}, warn() {}, error() {} } };

test('requestTimeoutMs defaults to 30 s, takes a whole number of ms from 100 to an hour, and refuses anything else', () => {
  assert.equal(resolveOptions(base).requestTimeoutMs, 30_000);
  assert.equal(resolveOptions({ ...base, requestTimeoutMs: 100 }).requestTimeoutMs, 100);
  assert.equal(resolveOptions({ ...base, requestTimeoutMs: 3_600_000 }).requestTimeoutMs, 3_600_000);
  for (const bad of [0, 99, -1, 1.5, Number.NaN, Number.POSITIVE_INFINITY, 3_600_001, '5000' as unknown as number]) {
    assert.throws(
      () => resolveOptions({ ...base, requestTimeoutMs: bad }),
      (e: unknown) => e instanceof HalcyonError && e.code === 'HALCYON_INVALID_ARGUMENT' && /requestTimeoutMs/.test(e.message),
      `requestTimeoutMs ${String(bad)} was accepted`,
    );
  }
});

test('sendWindow takes a whole number from 1 to 64', () => {
  assert.equal(resolveOptions(base).sendWindow, 4);
  for (const bad of [0, 65, 2.5]) assert.throws(() => resolveOptions({ ...base, sendWindow: bad }), /sendWindow must be/);
});
