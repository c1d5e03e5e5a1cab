/**
 * The WebAssembly skipper's build and memory (src/sync/skipper.ts; its skips are checked against the JS scanner in
 * scan.test.ts): the committed bytes are those of its source, and a big body does not leave a big memory behind.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { compileSkipper, GENERATED, generatedModule } from '../../wasm/build.ts';
import { Scanner } from '../../src/sync/scan.ts';
import { holds, load, MAX_WASM_BODY, SHRINK_ABOVE, wasmBytes } from '../../src/sync/skipper.ts';

const root = join(import.meta.dirname, '..', '..');

test('skipper: the committed module is a fresh build of wasm/skip.ts (run `npm run build:wasm` after editing it)', async () => {
  const bytes = await compileSkipper();
  assert.equal(readFileSync(join(root, GENERATED), 'utf8'), generatedModule(bytes));
});

test('skipper: after a body bigger than SHRINK_ABOVE, the next small one gets a fresh, small memory', () => {
  const big = Buffer.from(JSON.stringify(['x'.repeat(SHRINK_ABOVE + 1024)]));
  const sc = new Scanner(big);
  sc.skipValue();
  assert.equal(sc.i, big.length);
  assert.ok(wasmBytes()! > SHRINK_ABOVE);
  const small = Buffer.from(JSON.stringify({ a: 'y'.repeat(5000) }));
  const id = load(small);
  assert.ok(id > 0 && holds(id));
  assert.ok(wasmBytes()! < 1024 * 1024, `${wasmBytes()} bytes after the small body`);
  // The big body's scanner is no longer in the memory: it loads its body again and still scans right.
  sc.i = 0;
  sc.skipValue();
  assert.equal(sc.i, big.length);
  assert.ok(!holds(id));
});

test('skipper: a body too large for it is refused, and the scanner uses JS alone', () => {
  assert.equal(load({ length: MAX_WASM_BODY + 1 } as Uint8Array), -1);
});
