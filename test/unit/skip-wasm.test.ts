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
import { holds, load, MAX_WASM_BODY, reserve, SHRINK_ABOVE, wasmBytes } from '../../src/sync/skipper.ts';

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

test('skipper: a body read into reserved memory is scanned where it is, and other bodies meanwhile do not touch it', () => {
  const text = Buffer.from(JSON.stringify({ a: ['x'.repeat(3000), { b: 'é\n' }], c: 1 }));
  const view = reserve(text.length)!;
  assert.ok(view !== null && view.length === text.length);
  // Another body scanned before the reserved one is filled: it goes to the current instance, not into `view`.
  const other = Buffer.from(JSON.stringify(['z'.repeat(5000)]));
  const sc2 = new Scanner(other);
  sc2.skipValue();
  assert.equal(sc2.i, other.length);
  view.set(text);
  const sc = new Scanner(view);
  sc.skipValue();
  assert.equal(sc.i, text.length);
  // Taken without a copy: the current memory is the reserved one (a copy would have gone to the other's memory).
  assert.equal(wasmBytes(), view.buffer.byteLength);
  // And it reads right through the keys as well.
  sc.i = 0;
  sc.openObject();
  const keys: string[] = [];
  for (let first = true; sc.keyToken(first); first = false) {
    keys.push(sc.decode(sc.ks, sc.ke));
    sc.skipValue();
  }
  assert.deepEqual(keys, ['a', 'c']);
  // A second load of the same view (its instance current already) copies nothing either and still scans right.
  const again = new Scanner(view);
  again.skipValue();
  assert.equal(again.i, text.length);
});

test('skipper: memory that cannot be reserved gives null (the caller reads into its own)', () => {
  assert.equal(reserve(MAX_WASM_BODY + 1), null);
});
