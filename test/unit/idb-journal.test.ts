/**
 * The IndexedDB journal (src/crypto/idb-journal.ts) through the plain IndexedDB API: every kind of change must be in
 * SQLite by the time the transaction's `complete` event is seen, and a restart (close, then open the same file; the
 * in-memory databases are deleted in between) must give back exactly what was committed. Crash tests run a child
 * process (test/fixtures/idb-crash.ts) and SIGKILL it.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { DatabaseSync } from 'node:sqlite';
import { test, type TestContext } from 'node:test';
import { deserialize } from 'node:v8';
import * as W from '@matrix-org/matrix-sdk-crypto-wasm';
import type { HalcyonError } from '../../src/errors.ts';
import { canonicalKey, IdbJournal } from '../../src/crypto/idb-journal.ts';

const FILE = 'journal.sqlite';
const root = join(import.meta.dirname, '..', '..');
let prefixCounter = 0;

// ---- IndexedDB as promises ----

function request<T>(r: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
}

/** Resolves on `complete`, rejects on `abort`. */
function done(tx: IDBTransaction): Promise<void> {
  return new Promise((resolve, reject) => {
    tx.addEventListener('complete', () => resolve());
    tx.addEventListener('abort', () => reject(tx.error ?? new Error('aborted')));
  });
}

/** Runs `fn` in a readwrite transaction over `stores` and waits for its `complete`. */
async function write(db: IDBDatabase, stores: string | string[], fn: (tx: IDBTransaction) => void): Promise<void> {
  const tx = db.transaction(stores, 'readwrite');
  const p = done(tx);
  fn(tx);
  await p;
}

/** Every [key, value] of a store (or of an index: [primaryKey, value]), in key order. */
async function entries(db: IDBDatabase, store: string, index?: string): Promise<Array<[IDBValidKey, unknown]>> {
  const tx = db.transaction(store, 'readonly');
  const os = tx.objectStore(store);
  const source = index ? os.index(index) : os;
  const out: Array<[IDBValidKey, unknown]> = [];
  await new Promise<void>((resolve, reject) => {
    const r = source.openCursor();
    r.onerror = () => reject(r.error);
    r.onsuccess = () => {
      const c = r.result;
      if (!c) return resolve();
      out.push([c.primaryKey, c.value]);
      c.continue();
    };
  });
  return out;
}

async function get<T>(db: IDBDatabase, store: string, fn: (os: IDBObjectStore) => IDBRequest<T>): Promise<T> {
  return request(fn(db.transaction(store, 'readonly').objectStore(store)));
}

// ---- a journal that can be restarted ----

/** One journal file and prefix; tracks the connections it opened so a restart can close them first. */
class Journaled {
  readonly failures: HalcyonError[] = [];
  private readonly connections = new Set<IDBDatabase>();
  journal!: IdbJournal;

  private constructor(
    readonly dir: string,
    readonly prefix: string,
  ) {}

  static async open(t: TestContext): Promise<Journaled> {
    const dir = mkdtempSync(join(tmpdir(), 'halcyon-idbj-'));
    const j = new Journaled(dir, `idbj${process.pid}-${++prefixCounter}::`);
    j.journal = await IdbJournal.open(dir, FILE, j.prefix, (e) => void j.failures.push(e));
    t.after(async () => {
      for (const c of j.connections) c.close();
      await j.journal.close().catch(() => {});
      rmSync(dir, { recursive: true, force: true });
    });
    return j;
  }

  get path(): string {
    return join(this.dir, FILE);
  }

  /** Opens `<prefix><name>` at `version`, running `upgrade` if it is an upgrade. */
  openDb(name: string, version = 1, upgrade?: (db: IDBDatabase, tx: IDBTransaction, oldVersion: number) => void): Promise<IDBDatabase> {
    return new Promise((resolve, reject) => {
      const req = indexedDB.open(this.prefix + name, version);
      req.onupgradeneeded = (e) => upgrade?.(req.result, req.transaction!, e.oldVersion);
      req.onsuccess = () => {
        this.connections.add(req.result);
        resolve(req.result);
      };
      req.onerror = () => reject(req.error);
      req.onblocked = () => reject(new Error('blocked'));
    });
  }

  /** A simulated restart: closes the connections and the journal (deleting the in-memory databases), then reopens it. */
  async restart(): Promise<void> {
    for (const c of this.connections) c.close();
    this.connections.clear();
    await this.journal.close();
    const left = (await indexedDB.databases()).filter((d) => d.name?.startsWith(this.prefix));
    assert.deepEqual(left, [], 'close() deleted the in-memory databases, so what follows is rebuilt from SQLite');
    this.journal = await IdbJournal.open(this.dir, FILE, this.prefix, (e) => void this.failures.push(e));
  }

  /** The journaled records of a database as a separate SQLite connection sees them: store → canonical key → [key, value]. */
  sqlRecords(name: string): Map<string, Map<string, [unknown, unknown]>> {
    const s = new DatabaseSync(this.path, { readOnly: true });
    try {
      const out = new Map<string, Map<string, [unknown, unknown]>>();
      for (const row of s.prepare('SELECT store, k, v FROM idb_record WHERE db = ? ORDER BY store, k').all(this.prefix + name) as Array<{ store: string; k: string; v: Uint8Array }>) {
        let m = out.get(row.store);
        if (!m) out.set(row.store, (m = new Map()));
        m.set(row.k, deserialize(row.v) as [unknown, unknown]);
      }
      return out;
    } finally {
      s.close();
    }
  }

  /** Runs `fn` on a separate, read-only SQLite connection to the journal file. */
  peek<T>(fn: (s: DatabaseSync) => T): T {
    const s = new DatabaseSync(this.path, { readOnly: true });
    try {
      return fn(s);
    } finally {
      s.close();
    }
  }
}

function isConstraintError(e: unknown): boolean {
  return (e as { name?: string })?.name === 'ConstraintError';
}

// ---- object stores and keys ----

test('out-of-line keys: put, add, overwrite, delete(key), delete(range) and clear are as committed after a restart', async (t) => {
  const j = await Journaled.open(t);
  let db = await j.openDb('kv', 1, (d) => {
    d.createObjectStore('kv');
    d.createObjectStore('other');
  });
  await write(db, ['kv', 'other'], (tx) => {
    const kv = tx.objectStore('kv');
    for (const k of 'abcdefghij') kv.put({ v: k }, k);
    kv.add({ v: 'added' }, 'k');
    tx.objectStore('other').put(1, 'x');
    tx.objectStore('other').put(2, 'y');
  });
  await write(db, 'kv', (tx) => {
    const kv = tx.objectStore('kv');
    kv.put({ v: 'a2' }, 'a');
    kv.delete('b');
    kv.delete(IDBKeyRange.bound('d', 'f'));
    kv.delete('not-there');
  });
  await write(db, 'other', (tx) => tx.objectStore('other').clear());
  const before = await entries(db, 'kv');
  assert.deepEqual(before.map(([k]) => k), ['a', 'c', 'g', 'h', 'i', 'j', 'k']);

  await j.restart();
  db = await j.openDb('kv');
  assert.deepEqual(await entries(db, 'kv'), before);
  assert.deepEqual(await entries(db, 'other'), []);
  assert.deepEqual(await get(db, 'kv', (os) => os.get('a')), { v: 'a2' });
  await assert.rejects(write(db, 'kv', (tx) => tx.objectStore('kv').add({ v: 'again' }, 'k')), isConstraintError);
  assert.equal(j.journal.recordCount(), 7);
  assert.deepEqual(j.failures, []);
});

test('keyPath and compound keyPath stores are rebuilt with their keys', async (t) => {
  const j = await Journaled.open(t);
  let db = await j.openDb('paths', 1, (d) => {
    d.createObjectStore('people', { keyPath: 'id' });
    d.createObjectStore('pairs', { keyPath: ['room', 'n'] });
    d.createObjectStore('nested', { keyPath: 'meta.id' });
  });
  await write(db, ['people', 'pairs', 'nested'], (tx) => {
    tx.objectStore('people').put({ id: 'p1', name: 'Ann' });
    tx.objectStore('people').put({ id: 'p2', name: 'Bo' });
    for (const room of ['!a', '!b']) for (let n = 0; n < 3; n++) tx.objectStore('pairs').put({ room, n, text: `${room}/${n}` });
    tx.objectStore('nested').put({ meta: { id: 7 }, v: 'seven' });
  });
  await write(db, ['people', 'pairs'], (tx) => {
    tx.objectStore('people').put({ id: 'p1', name: 'Ann Again' });
    tx.objectStore('pairs').delete(['!a', 1]);
    tx.objectStore('pairs').delete(IDBKeyRange.bound(['!b', 1], ['!b', 9]));
  });
  await j.restart();
  db = await j.openDb('paths');
  assert.deepEqual(await entries(db, 'people'), [['p1', { id: 'p1', name: 'Ann Again' }], ['p2', { id: 'p2', name: 'Bo' }]]);
  assert.deepEqual((await entries(db, 'pairs')).map(([k]) => k), [['!a', 0], ['!a', 2], ['!b', 0]]);
  assert.deepEqual(await get(db, 'pairs', (os) => os.get(['!a', 2])), { room: '!a', n: 2, text: '!a/2' });
  assert.deepEqual(await get(db, 'nested', (os) => os.get(7)), { meta: { id: 7 }, v: 'seven' });
  const tx = db.transaction(['people', 'pairs', 'nested'], 'readonly');
  assert.equal(tx.objectStore('people').keyPath, 'id');
  assert.deepEqual(tx.objectStore('pairs').keyPath, ['room', 'n']);
  assert.equal(tx.objectStore('nested').keyPath, 'meta.id');
  assert.deepEqual(j.failures, []);
});

test('autoIncrement: the key generator continues after a restart (not reset, not derived from the highest key left)', async (t) => {
  const j = await Journaled.open(t);
  let db = await j.openDb('auto', 1, (d) => {
    d.createObjectStore('log', { autoIncrement: true });
    d.createObjectStore('items', { keyPath: 'id', autoIncrement: true });
    const seeded = d.createObjectStore('seeded', { autoIncrement: true });
    seeded.add('s1');
    seeded.add('s2'); // written inside the upgrade transaction
  });
  await write(db, ['log', 'items'], (tx) => {
    for (const v of ['a', 'b', 'c']) tx.objectStore('log').add(v);
    for (const v of ['x', 'y', 'z']) tx.objectStore('items').add({ v });
  });
  await write(db, ['log', 'items'], (tx) => {
    tx.objectStore('log').delete(3); // the highest key is gone: a generator rebuilt from the keys would reuse 3
    tx.objectStore('items').clear(); // nothing left at all
  });
  await j.restart();
  db = await j.openDb('auto');
  const keys: IDBValidKey[] = [];
  await write(db, ['log', 'items', 'seeded'], (tx) => {
    tx.objectStore('log').add('d').onsuccess = (e) => void keys.push((e.target as IDBRequest).result);
    tx.objectStore('items').add({ v: 'w' }).onsuccess = (e) => void keys.push((e.target as IDBRequest).result);
    tx.objectStore('seeded').add('s3').onsuccess = (e) => void keys.push((e.target as IDBRequest).result);
  });
  assert.deepEqual(keys, [4, 4, 3]);
  assert.deepEqual(await entries(db, 'items'), [[4, { v: 'w', id: 4 }]]);

  // An explicit numeric key above the generator moves it on; that survives a restart too.
  await write(db, 'log', (tx) => tx.objectStore('log').put('explicit', 10));
  await j.restart();
  db = await j.openDb('auto');
  const next = await new Promise<IDBValidKey>((resolve, reject) => {
    const tx = db.transaction('log', 'readwrite');
    const r = tx.objectStore('log').add('after explicit');
    tx.oncomplete = () => resolve(r.result);
    tx.onabort = () => reject(tx.error);
  });
  assert.equal(next, 11);
  assert.deepEqual((await entries(db, 'log')).map(([k]) => k), [1, 2, 4, 10, 11]);
  assert.deepEqual(j.failures, []);
});

test('indexes (unique, multiEntry, compound) are rebuilt and usable after a restart, constraints included', async (t) => {
  const j = await Journaled.open(t);
  let db = await j.openDb('ix', 1, (d) => {
    const users = d.createObjectStore('users', { keyPath: 'id' });
    users.createIndex('email', 'email', { unique: true });
    users.createIndex('tags', 'tags', { multiEntry: true });
    users.createIndex('name', ['last', 'first']);
  });
  await write(db, 'users', (tx) => {
    const u = tx.objectStore('users');
    u.put({ id: 1, email: 'a@x', tags: ['admin', 'ops'], first: 'Ann', last: 'Ames' });
    u.put({ id: 2, email: 'b@x', tags: ['ops'], first: 'Bo', last: 'Brown' });
    u.put({ id: 3, email: 'c@x', tags: [], first: 'Cy', last: 'Ames' });
  });
  await j.restart();
  db = await j.openDb('ix');
  const tx = db.transaction('users', 'readonly');
  const users = tx.objectStore('users');
  assert.deepEqual(Array.from(users.indexNames).sort(), ['email', 'name', 'tags']);
  assert.equal(users.index('email').unique, true);
  assert.equal(users.index('tags').multiEntry, true);
  assert.deepEqual(users.index('name').keyPath, ['last', 'first']);
  assert.equal(((await request(users.index('email').get('b@x'))) as { id: number }).id, 2);
  assert.deepEqual(await request(users.index('tags').getAllKeys('ops')), [1, 2]);
  assert.deepEqual(await request(users.index('tags').getAllKeys('admin')), [1]);
  assert.deepEqual(await request(users.index('name').getAllKeys(IDBKeyRange.bound(['Ames'], ['Ames', []]))), [1, 3]);
  await assert.rejects(
    write(db, 'users', (t2) => t2.objectStore('users').put({ id: 9, email: 'a@x', tags: [], first: 'Dup', last: 'Licate' })),
    isConstraintError,
    'the unique index still holds a@x',
  );
  await write(db, 'users', (t2) => t2.objectStore('users').put({ id: 2, email: 'b@x', tags: ['admin'], first: 'Bo', last: 'Brown' }));
  await j.restart();
  db = await j.openDb('ix');
  assert.deepEqual(await get(db, 'users', (os) => os.index('tags').getAllKeys('admin')), [1, 2]);
  assert.deepEqual(await get(db, 'users', (os) => os.index('tags').getAllKeys('ops')), [1]);
  assert.deepEqual((await entries(db, 'users', 'email')).map(([k]) => k), [1, 2, 3]);
  assert.deepEqual(j.failures, []);
});

test('cursor.update and cursor.delete (on a store and through an index) are as committed after a restart', async (t) => {
  const j = await Journaled.open(t);
  let db = await j.openDb('cur', 1, (d) => {
    d.createObjectStore('n');
    d.createObjectStore('m', { keyPath: 'id' }).createIndex('kind', 'kind');
  });
  await write(db, ['n', 'm'], (tx) => {
    for (let i = 0; i < 10; i++) tx.objectStore('n').put({ i }, i);
    for (let i = 0; i < 6; i++) tx.objectStore('m').put({ id: i, kind: i % 2 ? 'odd' : 'even', v: 0 });
  });
  await write(db, ['n', 'm'], (tx) => {
    const r = tx.objectStore('n').openCursor();
    r.onsuccess = () => {
      const c = r.result;
      if (!c) return;
      const i = (c.value as { i: number }).i;
      if (i % 2 === 0) c.update({ i, doubled: i * 2 });
      else c.delete();
      c.continue();
    };
    // A plain key opens a cursor over exactly that key (as a one-key range would).
    const ri = tx.objectStore('m').index('kind').openCursor('odd');
    ri.onsuccess = () => {
      const c = ri.result;
      if (!c) return;
      const v = c.value as { id: number };
      if (v.id === 5) c.delete();
      else c.update({ ...v, v: 'updated through the index' });
      c.continue();
    };
  });
  await j.restart();
  db = await j.openDb('cur');
  assert.deepEqual(await entries(db, 'n'), [0, 2, 4, 6, 8].map((i) => [i, { i, doubled: i * 2 }]));
  assert.deepEqual(await entries(db, 'm'), [
    [0, { id: 0, kind: 'even', v: 0 }],
    [1, { id: 1, kind: 'odd', v: 'updated through the index' }],
    [2, { id: 2, kind: 'even', v: 0 }],
    [3, { id: 3, kind: 'odd', v: 'updated through the index' }],
    [4, { id: 4, kind: 'even', v: 0 }],
  ]);
  assert.deepEqual(j.failures, []);
});

test('an aborted transaction leaves nothing in SQLite, nor after a restart', async (t) => {
  const j = await Journaled.open(t);
  let db = await j.openDb('ab', 1, (d) => {
    d.createObjectStore('s');
    d.createObjectStore('auto', { autoIncrement: true });
    d.createObjectStore('u', { keyPath: 'id' }).createIndex('email', 'email', { unique: true });
  });
  await write(db, ['s', 'auto', 'u'], (tx) => {
    tx.objectStore('s').put('kept', 'a');
    tx.objectStore('s').put('kept', 'b');
    tx.objectStore('auto').add('one');
    tx.objectStore('u').put({ id: 1, email: 'a@x' });
  });
  const records = j.sqlRecords('ab');
  const count = j.journal.recordCount();

  // Aborted by the caller after every kind of change.
  const tx = db.transaction(['s', 'auto'], 'readwrite');
  const aborted = done(tx);
  tx.objectStore('s').put('new', 'c');
  tx.objectStore('s').put('changed', 'a');
  tx.objectStore('s').delete('b');
  tx.objectStore('auto').add('two');
  const last = tx.objectStore('auto').clear();
  last.onsuccess = () => tx.abort();
  await assert.rejects(aborted);

  // Aborted by a failed request (a unique index violation) after a successful put in the same transaction.
  await assert.rejects(
    write(db, ['s', 'u'], (t2) => {
      t2.objectStore('s').put('from the failed transaction', 'z');
      t2.objectStore('u').put({ id: 2, email: 'a@x' });
    }),
    isConstraintError,
  );
  assert.equal(j.journal.recordCount(), count);
  assert.deepEqual(j.sqlRecords('ab'), records);

  // A failed request whose error is prevented does not abort; its transaction commits the rest.
  await write(db, ['s', 'u'], (t3) => {
    t3.objectStore('s').put('committed', 'y');
    const r = t3.objectStore('u').add({ id: 1, email: 'other@x' });
    r.onerror = (e) => e.preventDefault();
  });
  assert.equal(j.journal.recordCount(), count + 1);

  await j.restart();
  db = await j.openDb('ab');
  assert.deepEqual(await entries(db, 's'), [['a', 'kept'], ['b', 'kept'], ['y', 'committed']]);
  assert.deepEqual(await entries(db, 'u'), [[1, { id: 1, email: 'a@x' }]]);
  const next = await new Promise<IDBValidKey>((resolve, reject) => {
    const t4 = db.transaction('auto', 'readwrite');
    const r = t4.objectStore('auto').add('after');
    t4.oncomplete = () => resolve(r.result);
    t4.onabort = () => reject(t4.error);
  });
  assert.equal(next, 2, 'the aborted add did not move the key generator');
  assert.deepEqual(j.failures, []);
});

test('a versionchange that deletes, creates and renames stores and indexes is reflected after a restart', async (t) => {
  const j = await Journaled.open(t);
  let db = await j.openDb('schema', 1, (d) => {
    d.createObjectStore('a').createIndex('ia', 'x');
    const b = d.createObjectStore('b', { keyPath: 'id' });
    b.createIndex('ib1', 'x');
    b.createIndex('ib2', 'y', { unique: true });
  });
  await write(db, ['a', 'b'], (tx) => {
    tx.objectStore('a').put({ x: 1 }, 'a1');
    tx.objectStore('b').put({ id: 1, x: 'one', y: 'uno', z: 'eins' });
    tx.objectStore('b').put({ id: 2, x: 'two', y: 'dos', z: 'zwei' });
  });
  db.close();
  db = await j.openDb('schema', 2, (d, tx, oldVersion) => {
    assert.equal(oldVersion, 1);
    d.deleteObjectStore('a');
    const c = d.createObjectStore('c', { keyPath: 'id', autoIncrement: true });
    c.createIndex('ic', 'tag', { multiEntry: true });
    c.add({ tag: ['t1', 't2'] });
    const b = tx.objectStore('b');
    b.deleteIndex('ib1');
    b.createIndex('ib3', 'z', { unique: true });
    b.index('ib2').name = 'ib2-renamed';
    b.name = 'bee';
    b.put({ id: 3, x: 'three', y: 'tres', z: 'drei' });
  });
  await j.restart();
  await assert.rejects(j.openDb('schema', 1), (e: { name?: string }) => e.name === 'VersionError', 'the version went up to 2');
  db = await j.openDb('schema', 2);
  assert.equal(db.version, 2);
  assert.deepEqual(Array.from(db.objectStoreNames).sort(), ['bee', 'c']);
  const tx = db.transaction(['bee', 'c'], 'readonly');
  const bee = tx.objectStore('bee');
  assert.deepEqual(Array.from(bee.indexNames).sort(), ['ib2-renamed', 'ib3']);
  assert.equal(bee.index('ib2-renamed').unique, true);
  assert.equal(((await request(bee.index('ib3').get('drei'))) as { id: number }).id, 3);
  assert.deepEqual(await request(bee.getAllKeys()), [1, 2, 3]);
  assert.deepEqual(await request(tx.objectStore('c').index('ic').getAllKeys('t2')), [1]);
  assert.equal(j.peek((s) => (s.prepare('SELECT count(*) AS n FROM idb_record WHERE db = ? AND store = ?').get(j.prefix + 'schema', 'a') as { n: number }).n), 0);
  assert.deepEqual(j.failures, []);
});

test('keys of every kind (binary, Date, arrays, mixed) and values with Uint8Array, Map, Set, nested objects round-trip', async (t) => {
  const j = await Journaled.open(t);
  let db = await j.openDb('kinds', 1, (d) => d.createObjectStore('s'));
  const keys: IDBValidKey[] = [
    0,
    1,
    -1.5,
    Number.MAX_VALUE,
    '1',
    '',
    'ü😀 \u0000 "quoted"',
    [1],
    ['1'],
    [],
    new Date(0),
    new Date(1_700_000_000_123),
    new Uint8Array([1, 2, 3]).buffer,
    new Uint8Array([]).buffer,
    [new Date(5), 'x', [2, new Uint8Array([9, 8]).buffer]],
  ];
  const value = (i: number) => ({
    i,
    bytes: new Uint8Array([i, 255, 0, 7]),
    map: new Map<unknown, unknown>([['a', { deep: [1, new Uint8Array([7])] }], [2, new Set(['x', 3])]]),
    set: new Set([1, '2', null]),
    date: new Date(123_456),
    nested: { a: { b: { c: [{ d: 'e' }, [null, true, false]] } } },
    big: 2n ** 70n,
    floats: new Float64Array([0.5, -0, Number.NaN]),
    special: [Number.NaN, -0, Infinity, undefined, null],
    text: 'ü😀',
  });
  await write(db, 's', (tx) => keys.forEach((k, i) => tx.objectStore('s').put(value(i), k)));
  // A binary key given as a view is the same key as its bytes.
  await write(db, 's', (tx) => tx.objectStore('s').put('via a view', new Uint8Array([1, 2, 3])));
  const before = await entries(db, 's');
  assert.equal(before.length, keys.length, 'every key is distinct (a view is the same key as its buffer)');
  await j.restart();
  db = await j.openDb('kinds');
  const after = await entries(db, 's');
  assert.equal(after.length, before.length);
  for (const [n, [k, v]] of after.entries()) {
    assert.equal(indexedDB.cmp(k, before[n]![0]), 0, `key ${n} comes back equal`);
    assert.deepStrictEqual(v, before[n]![1]);
  }
  assert.equal(await get(db, 's', (os) => os.get(new Uint8Array([1, 2, 3]))), 'via a view');
  assert.deepEqual(j.failures, []);
});

test('the number keys Infinity and -Infinity are distinct records after a restart', async (t) => {
  const j = await Journaled.open(t);
  let db = await j.openDb('inf', 1, (d) => d.createObjectStore('s'));
  await write(db, 's', (tx) => {
    tx.objectStore('s').put('plus', Infinity);
    tx.objectStore('s').put('minus', -Infinity);
    tx.objectStore('s').put('zero', 0);
  });
  assert.deepEqual(await entries(db, 's'), [[-Infinity, 'minus'], [0, 'zero'], [Infinity, 'plus']]);
  await j.restart();
  db = await j.openDb('inf');
  assert.deepEqual(await entries(db, 's'), [[-Infinity, 'minus'], [0, 'zero'], [Infinity, 'plus']]);
});

// ---- write-through ----

test('write-through: inside the complete listener a separate SQLite connection already sees the commit', async (t) => {
  const j = await Journaled.open(t);
  const seenAtUpgrade: unknown[] = [];
  const db = await j.openDb('wt', 1, (d, tx) => {
    d.createObjectStore('s');
    tx.addEventListener('complete', () => {
      seenAtUpgrade.push(j.peek((s) => s.prepare('SELECT version FROM idb_db WHERE name = ?').get(j.prefix + 'wt')));
      seenAtUpgrade.push(j.peek((s) => s.prepare('SELECT name FROM idb_store WHERE db = ?').all(j.prefix + 'wt')));
    });
  });
  assert.deepEqual(JSON.parse(JSON.stringify(seenAtUpgrade)), [{ version: 1 }, [{ name: 's' }]]);

  const key = ['room', 42];
  const rowAtComplete = (): unknown => j.peek((s) => {
    const row = s.prepare('SELECT v FROM idb_record WHERE db = ? AND store = ? AND k = ?').get(j.prefix + 'wt', 's', canonicalKey(key)) as { v: Uint8Array } | undefined;
    return row ? deserialize(row.v) : null;
  });
  let viaListener: unknown = 'not called';
  let viaProperty: unknown = 'not called';
  const tx = db.transaction('s', 'readwrite');
  tx.addEventListener('complete', () => (viaListener = rowAtComplete()));
  tx.oncomplete = () => (viaProperty = rowAtComplete());
  tx.objectStore('s').put({ hello: new Uint8Array([1, 2]) }, key);
  await done(tx);
  assert.deepEqual(viaListener, [key, { hello: new Uint8Array([1, 2]) }]);
  assert.deepEqual(viaProperty, viaListener);

  let afterDelete: unknown = 'not called';
  const del = db.transaction('s', 'readwrite');
  del.addEventListener('complete', () => (afterDelete = rowAtComplete()));
  del.objectStore('s').delete(key);
  await done(del);
  assert.equal(afterDelete, null, 'the delete is in SQLite at complete time too');
  assert.deepEqual(j.failures, []);
});

test('databases outside the prefix are not journaled; journals with overlapping prefixes are refused', async (t) => {
  const j = await Journaled.open(t);
  const outsider = `not-${j.prefix}outside`;
  const db = await new Promise<IDBDatabase>((resolve, reject) => {
    const req = indexedDB.open(outsider, 1);
    req.onupgradeneeded = () => req.result.createObjectStore('s');
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
  await write(db, 's', (tx) => tx.objectStore('s').put(1, 1));
  db.close();
  await request(indexedDB.deleteDatabase(outsider));
  assert.equal(j.peek((s) => (s.prepare('SELECT count(*) AS n FROM idb_db WHERE name = ?').get(outsider) as { n: number }).n), 0);
  for (const p of [j.prefix, `${j.prefix}sub::`, j.prefix.slice(0, -2)]) {
    await assert.rejects(IdbJournal.open(j.dir, 'other.sqlite', p, () => {}), (e: { code?: string }) => e.code === 'HALCYON_STORE', `prefix ${p}`);
  }
});

test('a commit of one journal made while another journal of the thread is being rebuilt still reaches SQLite', async (t) => {
  const a = await Journaled.open(t);
  const b = await Journaled.open(t);
  // b has enough records that rebuilding it takes many event-loop turns.
  const big = await b.openDb('big', 1, (d) => d.createObjectStore('s'));
  await write(big, 's', (tx) => {
    for (let i = 0; i < 3000; i++) tx.objectStore('s').put({ i }, i);
  });
  big.close();
  await b.journal.close();

  const dbA = await a.openDb('small', 1, (d) => d.createObjectStore('s'));
  let bOpen = false;
  const reopening = IdbJournal.open(b.dir, FILE, b.prefix, () => {}).then((j) => {
    bOpen = true;
    b.journal = j;
  });
  await write(dbA, 's', (tx) => tx.objectStore('s').put('committed during the rebuild of another journal', 'k'));
  const duringRebuild = !bOpen;
  await reopening;
  assert.ok(duringRebuild, 'the commit completed while the other journal was still rebuilding (the case under test)');
  assert.equal(a.sqlRecords('small').get('s')?.size ?? 0, 1, 'the completed commit is in SQLite');
});

// ---- groups ----

test('group: nothing reaches SQLite before commitGroup; then the buffered commits and the extra rows land together', async (t) => {
  const j = await Journaled.open(t);
  let db = await j.openDb('grp', 1, (d) => d.createObjectStore('s'));
  await write(db, 's', (tx) => tx.objectStore('s').put('before', 'k0'));
  j.journal.beginGroup();
  await write(db, 's', (tx) => tx.objectStore('s').put('one', 'k1'));
  await write(db, 's', (tx) => {
    tx.objectStore('s').put('two', 'k2');
    tx.objectStore('s').delete('k0');
  });
  assert.deepEqual((await entries(db, 's')).map(([k]) => k), ['k1', 'k2'], 'IndexedDB already shows the group');
  assert.deepEqual([...(j.sqlRecords('grp').get('s')?.keys() ?? [])], [canonicalKey('k0')], 'SQLite does not yet');
  assert.throws(() => j.journal.beginGroup(), (e: { code?: string }) => e.code === 'HALCYON_INTERNAL', 'groups do not nest');
  j.journal.commitGroup((sql) => sql.prepare('INSERT INTO kv (k, v) VALUES (?, ?)').run('checkpoint', 'batch 1'));
  assert.deepEqual([...(j.sqlRecords('grp').get('s')?.keys() ?? [])].sort(), [canonicalKey('k1'), canonicalKey('k2')].sort());
  assert.deepEqual(j.peek((s) => ({ ...(s.prepare('SELECT v FROM kv WHERE k = ?').get('checkpoint') as object) })), { v: 'batch 1' });

  // A group still open at close() is committed by it.
  j.journal.beginGroup();
  await write(db, 's', (tx) => tx.objectStore('s').put('three', 'k3'));
  await j.restart();
  db = await j.openDb('grp');
  assert.deepEqual(await entries(db, 's'), [['k1', 'one'], ['k2', 'two'], ['k3', 'three']]);
  assert.deepEqual(j.failures, []);
});

test('group: if the extra rows fail, nothing of the group is written, the failure is reported, and the journal stops', async (t) => {
  const j = await Journaled.open(t);
  const db = await j.openDb('grpfail', 1, (d) => d.createObjectStore('s'));
  await write(db, 's', (tx) => tx.objectStore('s').put('durable', 'k0'));
  j.journal.beginGroup();
  await write(db, 's', (tx) => tx.objectStore('s').put('buffered', 'k1'));
  assert.throws(
    () => j.journal.commitGroup((sql) => {
      sql.prepare('INSERT INTO kv (k, v) VALUES (?, ?)').run('checkpoint', 'x');
      throw new Error('the checkpoint cannot be written');
    }),
    (e: { code?: string }) => e.code === 'HALCYON_CRYPTO_STORE',
  );
  assert.deepEqual(j.failures.map((f) => f.code), ['HALCYON_CRYPTO_STORE']);
  assert.deepEqual([...(j.sqlRecords('grpfail').get('s')?.keys() ?? [])], [canonicalKey('k0')]);
  assert.equal(j.peek((s) => s.prepare('SELECT v FROM kv WHERE k = ?').get('checkpoint')), undefined);
  // The store is now ahead of the disk: a later write is neither journaled nor reported complete (the owner
  // was told to stop); reads still complete. The read is queued behind the write, so it finishes after it.
  const outcome: string[] = [];
  const tx = db.transaction('s', 'readwrite');
  tx.oncomplete = () => void outcome.push('complete');
  tx.onabort = () => void outcome.push('abort');
  tx.objectStore('s').put('after the failure', 'k2');
  const read = db.transaction('s', 'readonly').objectStore('s').get('k2');
  const value = await new Promise((resolve, reject) => {
    read.onsuccess = () => resolve(read.result);
    read.onerror = () => reject(read.error);
  });
  await new Promise<void>((resolve) => (read.transaction!.oncomplete = () => resolve()));
  assert.equal(value, 'after the failure', 'the in-memory store has the write');
  assert.deepEqual(outcome, [], 'the write that could not be journaled was not reported complete');
  assert.deepEqual([...(j.sqlRecords('grpfail').get('s')?.keys() ?? [])], [canonicalKey('k0')]);
  assert.equal(j.failures.length, 1, 'reported once');
});

// ---- crashes (child processes) ----

interface Child {
  /** Resolves with the first stdout line matching `re` (rejects if the child exits first or after `ms`). */
  line(re: RegExp, ms?: number): Promise<string>;
  /** Every stdout line so far. */
  lines: string[];
  kill(): Promise<void>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

function child(t: TestContext, args: string[]): Child {
  const proc = spawn(join(root, 'node_modules', '.bin', 'node'), ['--import', 'tsx', join(root, 'test', 'fixtures', 'idb-crash.ts'), ...args], {
    cwd: root,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  proc.stderr.on('data', (d) => (stderr += String(d)));
  const lines: string[] = [];
  const waiters = new Set<() => void>();
  createInterface({ input: proc.stdout }).on('line', (l) => {
    lines.push(l);
    for (const w of [...waiters]) w();
  });
  let status: { code: number | null; signal: NodeJS.Signals | null } | null = null;
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    proc.on('exit', (code, signal) => {
      status = { code, signal };
      for (const w of [...waiters]) w();
      resolve(status);
    }),
  );
  t.after(() => {
    if (!status) proc.kill('SIGKILL');
  });
  return {
    lines,
    exited,
    line: (re, ms = 60_000) =>
      new Promise((resolve, reject) => {
        const check = () => {
          const hit = lines.find((l) => re.test(l));
          const fail = lines.find((l) => /^(error|hang) /.test(l));
          if (hit || fail || status) {
            waiters.delete(check);
            clearTimeout(timer);
            if (hit) resolve(hit);
            else reject(new Error(`child ${args[0]}: no line matching ${re}; ${fail ?? `exited ${JSON.stringify(status)}`}; stdout ${JSON.stringify(lines.slice(-5))}; stderr ${stderr.slice(-2000)}`));
          }
        };
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(new Error(`child ${args[0]}: no line matching ${re} within ${ms} ms; stdout ${JSON.stringify(lines.slice(-5))}; stderr ${stderr.slice(-2000)}`));
        }, ms);
        waiters.add(check);
        check();
      }),
    kill: async () => {
      if (!status) proc.kill('SIGKILL');
      await exited;
    },
  };
}

function tempDir(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'halcyon-idbj-crash-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

test('crash: every transaction acknowledged before a SIGKILL is there after reopening, groups all or nothing', async (t) => {
  const dir = tempDir(t);
  const prefix = `crash${process.pid}::`;
  const N = 60;
  const c = child(t, ['writes', dir, prefix]);
  await c.line(new RegExp(`^ack ${N - 1}$`));
  await c.kill(); // the child was writing transaction N or later when it died
  const acked = c.lines.filter((l) => l.startsWith('ack ')).map((l) => Number(l.slice(4)));
  const maxAcked = Math.max(...acked);
  assert.ok(maxAcked >= N - 1);

  const journal = await IdbJournal.open(dir, FILE, prefix, () => {});
  t.after(() => journal.close());
  const db = await new Promise<IDBDatabase>((resolve, reject) => {
    const req = indexedDB.open(`${prefix}crash`, 1);
    req.onupgradeneeded = () => reject(new Error('the database was not rebuilt (an upgrade was needed)'));
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
  t.after(() => db.close());
  const s = await entries(db, 's');
  const numeric = s.map(([k]) => k).filter((k): k is number => typeof k === 'number');
  const persisted = numeric.length;
  assert.ok(persisted >= maxAcked + 1, `all ${maxAcked + 1} acknowledged transactions survived (found ${persisted})`);
  assert.deepEqual(numeric, [...Array(persisted).keys()], 'no transaction is missing before a later one');
  for (const [k, v] of s) {
    const i = typeof k === 'number' ? k : Number(String(k).slice(1));
    assert.deepEqual(v, { i, payload: new Uint8Array(256).fill(i % 256) });
  }
  // Groups: both transactions and the caller's row, or none of them.
  const groups = numeric.filter((i) => i % 5 === 4);
  assert.deepEqual(s.map(([k]) => k).filter((k) => typeof k === 'string').sort(), groups.map((i) => `g${i}`).sort());
  const kv = journal.db.prepare("SELECT k FROM kv WHERE k LIKE 'group:%'").all().map((r) => (r as { k: string }).k);
  assert.deepEqual(kv.sort(), groups.map((i) => `group:${i}`).sort());
  // The autoIncrement store got one record per transaction and its generator continues after them.
  assert.deepEqual((await entries(db, 'auto')).map(([k]) => k), numeric.map((i) => i + 1));
  const next = await new Promise<IDBValidKey>((resolve, reject) => {
    const tx = db.transaction('auto', 'readwrite');
    const r = tx.objectStore('auto').add({ i: -1 });
    tx.oncomplete = () => resolve(r.result);
    tx.onabort = () => reject(tx.error);
  });
  assert.equal(next, persisted + 1);
});

test('crash: an OlmMachine store survives SIGKILL with the same identity keys; a wrong passphrase is rejected', async (t) => {
  const dir = tempDir(t);
  const store = `olmcrash${process.pid}`;
  const pass = 'the passphrase';
  const c = child(t, ['olm-init', dir, store, pass]);
  const keys = JSON.parse((await c.line(/^keys /)).slice(5)) as { curve25519: string; ed25519: string };
  await c.line(/^published$/);
  await c.kill();
  assert.equal((await c.exited).signal, 'SIGKILL');

  // A second process reopens the store.
  const v = child(t, ['olm-verify', dir, store, pass]);
  const result = JSON.parse((await v.line(/^result /)).slice(7)) as { keys: unknown; uploadsDeviceKeys: boolean; wrongPassphraseError: string | null };
  assert.deepEqual(result.keys, keys, 'same curve25519 and ed25519 keys');
  assert.equal(result.uploadsDeviceKeys, false, 'the device keys were marked published before the crash: not uploaded again');
  assert.ok(result.wrongPassphraseError, 'initialize with a wrong passphrase rejects');

  // And this process too, in-thread.
  const journal = await IdbJournal.open(dir, FILE, `${store}::`, () => {});
  t.after(() => journal.close());
  const m = await W.OlmMachine.initialize(new W.UserId('@crash:example.org'), new W.DeviceId('CRASHDEVICE'), store, pass);
  t.after(() => m.close());
  assert.deepEqual({ curve25519: m.identityKeys.curve25519.toBase64(), ed25519: m.identityKeys.ed25519.toBase64() }, keys);
});

test('a rejected open (wrong passphrase) does not wedge the store: the right passphrase opens it next, in the same thread', async (t) => {
  const dir = tempDir(t);
  const store = `olmretry${process.pid}`;
  const pass = 'the passphrase';
  const c = child(t, ['olm-init', dir, store, pass]);
  const keys = JSON.parse((await c.line(/^keys /)).slice(5)) as unknown;
  await c.line(/^published$/);
  await c.kill();
  const r = child(t, ['olm-retry', dir, store, pass]);
  const result = JSON.parse((await r.line(/^result /)).slice(7)) as { wrongPassphraseError: string | null; keys: unknown };
  assert.ok(result.wrongPassphraseError);
  assert.deepEqual(result.keys, keys);
});

test('a failed journal write is reported to onFailure, throws nothing into the event loop, and the commit is not reported complete', async (t) => {
  const dir = tempDir(t);
  const c = child(t, ['writefail', dir, `wf${process.pid}::`]);
  const result = JSON.parse((await c.line(/^result /)).slice(7)) as { failures: string[]; uncaught: string[]; outcome: string[]; rows: number };
  assert.deepEqual(result.failures, ['HALCYON_CRYPTO_STORE']);
  assert.equal(result.rows, 0);
  assert.ok(!result.outcome.includes('complete'), 'a commit that is not durable must not fire complete');
  assert.deepEqual(result.uncaught, [], 'the failure reaches the owner through onFailure, not as an uncaught exception');
});
