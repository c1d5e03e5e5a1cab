import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MIN_WASM_BODY, Scanner, ScanError } from '../../src/sync/scan.ts';
import { FLAG_BITS, keyToken, load, skipValue } from '../../src/sync/skipper.ts';

/** A small seeded PRNG (mulberry32): failures reproduce. */
function rng(seed: number): () => number {
  return () => {
    seed |= 0;
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function randomValue(r: () => number, depth: number): unknown {
  const k = Math.floor(r() * (depth > 3 ? 5 : 7));
  switch (k) {
    case 0:
      return null;
    case 1:
      return r() < 0.5;
    case 2:
      return [0, -1, 1.5, -2.5e-7, 1e21, 123456789, -0.0001][Math.floor(r() * 7)];
    case 3:
    case 4: {
      const chars = ['a', 'Z', ' ', '"', '\\', '/', '\n', '\t', '\u0001', 'é', '🎉', '\ud800', '\u2028'];
      let s = '';
      for (let i = Math.floor(r() * 8); i > 0; i--) s += chars[Math.floor(r() * chars.length)];
      return s;
    }
    case 5:
      return Array.from({ length: Math.floor(r() * 4) }, () => randomValue(r, depth + 1));
    default: {
      const o: Record<string, unknown> = {};
      for (let i = Math.floor(r() * 4); i > 0; i--) o[String(randomValue(r, 9))] = randomValue(r, depth + 1);
      return o;
    }
  }
}

const NOISE = ['{', '}', '[', ']', '"', '\\', ',', ':', ' ', '1', '-', '.', 'e', 't', 'n', 'u', '0', '\u0000', 'x'];
function mutate(s: string, r: () => number): string {
  const i = Math.floor(r() * (s.length + 1));
  switch (Math.floor(r() * 4)) {
    case 0:
      return s.slice(0, i) + s.slice(i + 1); // delete
    case 1:
      return s.slice(0, i) + NOISE[Math.floor(r() * NOISE.length)] + s.slice(i); // insert
    case 2:
      return s.slice(0, i); // truncate
    default:
      return s.slice(0, i) + NOISE[Math.floor(r() * NOISE.length)] + s.slice(i + 1); // replace
  }
}

/** Scanner verdict: the parsed value, or ScanError. Any other exception fails the test. */
function scan(text: string): { ok: true; value: unknown } | { ok: false } {
  try {
    const sc = new Scanner(Buffer.from(text, 'utf8'));
    const v = sc.readValue();
    sc.end();
    return { ok: true, value: v };
  } catch (err) {
    if (err instanceof ScanError) return { ok: false };
    throw err;
  }
}
/** JSON.parse of the text the scanner sees: the UTF-8 bytes decoded (a lone surrogate becomes U+FFFD). */
function parse(text: string): { ok: true; value: unknown } | { ok: false } {
  try {
    return { ok: true, value: JSON.parse(Buffer.from(text, 'utf8').toString('utf8')) };
  } catch {
    return { ok: false };
  }
}

test('scanner accepts exactly what JSON.parse accepts (20,000 generated and mutated texts)', () => {
  const r = rng(42);
  let accepted = 0;
  for (let n = 0; n < 20_000; n++) {
    let text = JSON.stringify(randomValue(r, 0), null, r() < 0.2 ? 1 : undefined);
    if (n % 2 === 1) text = mutate(text, r);
    const a = scan(text);
    const b = parse(text);
    assert.equal(a.ok, b.ok, `disagreement on ${JSON.stringify(text)}`);
    if (a.ok && b.ok) {
      assert.deepEqual(a.value, b.value);
      accepted++;
    }
  }
  assert.ok(accepted > 10_000);
});

test('scanner: hand-picked edge cases agree with JSON.parse', () => {
  const cases = ['', ' ', '01', '-', '-0', '1.', '.5', '1e', '1e+', '1E+5', '"\\u12"', '"\\u12G4"', '"\\x"', '"a\u0000"', 'tru', 'nul', 'true ', '[1,]', '{"a":1,}', '{"a"1}', '{1:2}', '[1 2]', '{}x', '"\u2028"', '{"a":{"b":[]}}', '\t[\r\n]'];
  for (const c of cases) assert.equal(scan(c).ok, parse(c).ok, `case ${JSON.stringify(c)}`);
});

test('scanner: raw bytes that are not UTF-8 text: high bytes outside strings are rejected, inside strings decoded leniently', () => {
  const bad = (bytes: number[]) => {
    try {
      const sc = new Scanner(Uint8Array.from(bytes));
      sc.skipValue();
      sc.end();
      return true;
    } catch (e) {
      assert.ok(e instanceof ScanError);
      return false;
    }
  };
  assert.equal(bad([0x5b, 0xff, 0x5d]), false); // [\xff]
  assert.equal(bad([0x22, 0xff, 0xfe, 0x22]), true); // "\xff\xfe": a string; decoding gives U+FFFD
  assert.equal(new Scanner(Uint8Array.from([0x22, 0xc3, 0xa9, 0x22])).readString(), 'é');
});

test('scanner: deep nesting is a ScanError, not a stack overflow', () => {
  assert.equal(scan('['.repeat(200_000)).ok, false);
  const deep = '['.repeat(50_000) + ']'.repeat(50_000);
  const sc = new Scanner(Buffer.from(deep));
  sc.skipValue();
  sc.end();
});

test('scanner: object and array walking reads keys, strings and numbers', () => {
  const sc = new Scanner(Buffer.from(' { "a" : "x\\"y" , "b" : [ 1 , -2.5e3 ] , "c": {} } '));
  sc.openObject();
  const seen: unknown[] = [];
  for (let k: string | null, first = true; (k = sc.key(first)) !== null; first = false) {
    if (k === 'a') seen.push(sc.readString());
    else if (k === 'b') {
      sc.openArray();
      for (let f = true; sc.item(f); f = false) seen.push(sc.readNumber());
    } else seen.push(k, sc.readValue());
  }
  sc.end();
  assert.deepEqual(seen, ['x"y', 1, -2500, 'c', {}]);
});

test('scanner: a member name read by keyToken reports whether it was escaped (the sync processor refuses routed names that are)', () => {
  const sc = new Scanner(Buffer.from('{"content":1,"cont\\u0065nt":2}'));
  sc.openObject();
  const seen: Array<[boolean, string]> = [];
  for (let first = true; sc.keyToken(first); first = false) {
    seen.push([sc.escaped, sc.decode(sc.ks, sc.ke)]);
    sc.skipValue();
  }
  assert.deepEqual(seen, [[false, 'content'], [true, 'content']]);
});

// The WebAssembly skips (src/sync/skipper.ts) run for bodies of MIN_WASM_BODY bytes or more; smaller ones are
// scanned by JS alone. The same text, after PAD bytes of white space, goes through WebAssembly: every read, flag
// and error (its position shifted by PAD) must be the same.
const PAD = MIN_WASM_BODY;

/** Everything a scanner reports while walking `bytes` (reads, flags, skips chosen by `r`), ending with its error. */
function walk(bytes: Uint8Array, r: () => number, offset: number): unknown[] {
  const sc = new Scanner(bytes);
  const trace: unknown[] = [];
  const value = (depth: number): void => {
    if (r() < 0.25 || depth > 20) {
      trace.push(sc.skipValue() - offset, sc.i - offset, sc.escaped);
    } else if (sc.atObject()) {
      sc.openObject();
      for (let first = true; sc.keyToken(first); first = false) {
        trace.push(sc.escaped, sc.decode(sc.ks, sc.ke));
        value(depth + 1);
      }
    } else if (sc.atArray()) {
      sc.openArray();
      for (let first = true; sc.item(first); first = false) value(depth + 1);
    } else if (sc.atString()) trace.push(sc.readString(), sc.escaped);
    else if (sc.atNumber()) trace.push(sc.readNumber());
    else trace.push(sc.readValue());
  };
  try {
    value(0);
    sc.end();
  } catch (err) {
    if (!(err instanceof ScanError)) throw err;
    trace.push(`error: ${err.message.replace(/\d+$/, '')}${err.pos - offset}`);
  }
  return trace;
}

/** Walks `text` with JS alone and through WebAssembly (same choices), and checks they agree. */
function sameBothWays(text: string | Uint8Array, seed: number): void {
  const bytes = typeof text === 'string' ? Buffer.from(text, 'utf8') : Buffer.from(text);
  assert.ok(bytes.length < PAD, 'the JS-alone text is small');
  const padded = Buffer.concat([Buffer.alloc(PAD, 32), bytes]);
  const js = walk(bytes, rng(seed), 0);
  assert.deepEqual(walk(padded, rng(seed), PAD), js, `on ${JSON.stringify(bytes.toString('latin1'))}`);
  // The JS redo hides a WebAssembly skip that gives up on valid input: ask the skipper itself.
  const sc = new Scanner(bytes);
  let start = -1;
  try {
    start = sc.skipValue();
  } catch (err) {
    assert.ok(err instanceof ScanError);
  }
  if (start >= 0) {
    assert.ok(load(padded) > 0);
    const r = skipValue(PAD + start);
    assert.equal(r >> FLAG_BITS, PAD + sc.i, `the skipper finishes ${JSON.stringify(bytes.toString('latin1'))}`);
    if (bytes[start] === 0x7b) assert.ok(keyToken(PAD + start + 1, 1) >= 0, 'the skipper reads the first member name');
  }
}

test('scanner: the WebAssembly skips agree with the JS ones on 20,000 generated and mutated texts (reads, flags, errors and their positions)', () => {
  const r = rng(7);
  for (let n = 0; n < 20_000; n++) {
    let text = JSON.stringify(randomValue(r, 0), null, r() < 0.2 ? 1 : undefined);
    if (n % 2 === 1) text = mutate(text, r);
    if (Buffer.byteLength(text) < PAD) sameBothWays(text, n);
  }
});

test('scanner: the WebAssembly skips agree with the JS ones across SIMD block boundaries', () => {
  const specials = ['\\"', '\\\\', '\\n', '\\u00e9', '\\uD83D', '\\u12', '\\u', '\\', '\\x', 'é', '🎉', '\u0001', '\u001f', '\u007f', '\xff'];
  for (let shift = 0; shift < 16; shift++) {
    for (let at = 0; at < 40; at++) {
      for (const s of specials) {
        const body = `${'a'.repeat(at)}${s}${'b'.repeat(40 - at)}`;
        // A string, a member name, and both cut off at every length near the special byte.
        for (const text of [`${' '.repeat(shift)}"${body}"`, `{${' '.repeat(shift)}"${body}":1}`]) {
          sameBothWays(text, at);
          for (let cut = shift + at; cut < shift + at + 8; cut++) sameBothWays(text.slice(0, cut), at);
        }
      }
    }
  }
  // Raw bytes that are not UTF-8 text, and a string ending exactly at the end of the input.
  for (let len = 0; len < 34; len++) {
    sameBothWays(Uint8Array.from([0x22, ...Array<number>(len).fill(0x80), 0x22]), len);
    sameBothWays(Uint8Array.from([0x22, ...Array<number>(len).fill(0x41)]), len);
    sameBothWays(Uint8Array.from([0x22, ...Array<number>(len).fill(0x41), 0x5c]), len);
    sameBothWays(Uint8Array.from([0x22, ...Array<number>(len).fill(0x41), 0x5c, 0x75, 0x31, 0x32, 0x33]), len);
  }
});

test('scanner: the WebAssembly skips agree with the JS ones on numbers, literals and containers cut at every byte', () => {
  const texts = ['[-0.5e+10,1E-3,0,-0,12345678901234567890,true,false,null,{},[],{"a":[{"b":null}]}]', '{"k" :\t[ 1 , "x" ] ,\n"m":{ }}', '[01]', '[1.]', '[-]', '[tru]', '[nul]', '[fals]', '{"a" 1}', '[1 2]', '{"a":1,}'];
  for (const t of texts) for (let cut = 0; cut <= t.length; cut++) sameBothWays(t.slice(0, cut), cut);
});

test('scanner: nesting around the WebAssembly stack depth (65,536) agrees with JS, closed or not', () => {
  for (const depth of [65_535, 65_536, 65_537, 200_000]) {
    for (const closed of [true, false]) {
      const text = '['.repeat(depth) + (closed ? ']'.repeat(depth) : '');
      const viaWasm = new Scanner(Buffer.from(text));
      if (closed) {
        assert.equal(viaWasm.skipValue(), 0);
        assert.equal(viaWasm.i, text.length);
      } else assert.throws(() => viaWasm.skipValue(), (e) => e instanceof ScanError && e.pos === text.length);
    }
  }
});
