import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { ERROR_CODES } from '../../src/errors.ts';
import { htmlToText } from '../../src/html.ts';
import { kvGet, kvSet, kvSetMany, openDatabase } from '../../src/store.ts';
import { decodeToken, encodeToken } from '../../src/token.ts';
import { tempDataDir } from '../integration/util.ts';

const root = join(import.meta.dirname, '..', '..');

test('token: round-trips the session and never holds a password field', () => {
  const s = { homeserver: 'https://hs.example', userId: '@bot:example', deviceId: 'DEV', accessToken: 'syt_secret' };
  const t = encodeToken(s);
  assert.ok(t.startsWith('halcyon1.'));
  assert.deepEqual(decodeToken(t), s);
  assert.doesNotMatch(Buffer.from(t.slice(9), 'base64url').toString(), /password/);
});

test('token: garbage is HALCYON_INVALID_TOKEN and the message does not echo it', () => {
  for (const bad of ['', 'syt_abcdef', 'halcyon1.!!!', `halcyon1.${Buffer.from('{"hs":"ftp://x"}').toString('base64url')}`]) {
    assert.throws(() => decodeToken(bad), (e: { code: string; message: string }) => e.code === 'HALCYON_INVALID_TOKEN' && (bad.length < 4 || !e.message.includes(bad)));
  }
});

test('htmlToText: tags go, block ends become newlines, entities decode', () => {
  assert.equal(htmlToText('<b>hi</b> &amp; bye'), 'hi & bye');
  assert.equal(htmlToText('<p>one</p><p>two<br>three</p>'), 'one\ntwo\nthree');
  assert.equal(htmlToText('<ul><li>a</li><li>b</li></ul>'), '- a\n- b');
  assert.equal(htmlToText('&lt;script&gt; &#65;&#x42; &quot;q&quot; <script>alert(1)</script>'), '<script> AB "q"');
  assert.equal(htmlToText('&bogus; &#99999999;'), '&bogus; &#99999999;');
});

function sources(dir: string): string[] {
  return readdirSync(dir, { recursive: true })
    .map(String)
    .filter((f) => f.endsWith('.ts'))
    .map((f) => join(dir, f));
}

test('every error code is documented in the README, and every code used in src/ is declared', () => {
  const readme = readFileSync(join(root, 'README.md'), 'utf8');
  for (const code of Object.keys(ERROR_CODES)) assert.ok(readme.includes(`\`${code}\``), `README does not document ${code}`);
  const used = new Set<string>();
  for (const f of [...sources(join(root, 'src')), ...sources(join(root, 'workers'))]) {
    for (const m of readFileSync(f, 'utf8').matchAll(/'(HALCYON_[A-Z_]+)'/g)) used.add(m[1]!);
  }
  for (const code of used) assert.ok(code in ERROR_CODES, `${code} is used in src/ but not declared in ERROR_CODES`);
});

test('one door per dependency: undici, comlink, worker_threads, lru-cache, node:sqlite, the crypto binding, fake-indexeddb and the scanner\'s wasm module are each imported by one module', () => {
  const doors: Record<string, string> = {
    undici: 'src/undici.ts',
    comlink: 'src/actors.ts',
    'node:worker_threads': 'src/actors.ts',
    'lru-cache': 'src/cache/actor.ts',
    'node:sqlite': 'src/store.ts',
    '@matrix-org/matrix-sdk-crypto-wasm': 'src/crypto/actor.ts',
    'fake-indexeddb': 'src/crypto/idb-journal.ts',
    piscina: 'src/pool.ts',
    htmlparser2: 'src/html.ts',
    'prom-client': 'src/metrics.ts',
    '@nats-io/transport-node': 'src/cluster/nats.ts',
    '@nats-io/jetstream': 'src/cluster/nats.ts',
    '@nats-io/kv': 'src/cluster/nats.ts',
    // The scanner's WebAssembly module: loaded, instantiated and given its memory in one place.
    './skip-wasm.ts': 'src/sync/skipper.ts',
  };
  for (const f of [...sources(join(root, 'src')), ...sources(join(root, 'workers'))]) {
    const text = readFileSync(f, 'utf8');
    for (const [dep, door] of Object.entries(doors)) {
      if (new RegExp(`from '${dep}'`).test(text)) assert.equal(f.slice(root.length + 1), door, `${dep} imported outside its door`);
    }
  }
});

test('kvSetMany: writes every value in one transaction, none when one fails, and leaves no transaction open', (t) => {
  const db = openDatabase(tempDataDir(t), 'kv.sqlite');
  t.after(() => db.close());
  kvSet(db, 'a', 'old');
  kvSetMany(db, [['a', 'new'], ['b', '2']]);
  assert.deepEqual([kvGet(db, 'a'), kvGet(db, 'b')], ['new', '2']);
  function* failing(): Generator<[string, string]> {
    yield ['a', 'lost'];
    yield ['c', 'lost'];
    throw new Error('source failed');
  }
  assert.throws(() => kvSetMany(db, failing()), /source failed/);
  assert.deepEqual([kvGet(db, 'a'), kvGet(db, 'c')], ['new', undefined]);
  kvSet(db, 'd', 'after'); // autocommit again: a transaction left open would make this throw at the next BEGIN
  kvSetMany(db, [['e', '5']]);
  assert.deepEqual([kvGet(db, 'd'), kvGet(db, 'e')], ['after', '5']);
});
