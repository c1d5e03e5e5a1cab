/**
 * The crypto store's values live in SQLite, not in memory: once a record's commit is journaled, fake-indexeddb keeps
 * its key and reads the value back when asked (src/crypto/idb-journal.ts). Reads, overwrites, deletes, aborts,
 * groups and index maintenance over such records behave as before, and the heap does not grow with the values.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { IdbJournal } from '../../src/crypto/idb-journal.ts';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;
let counter = 0;

function request<T>(r: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
}

/** Runs `fn` in a readwrite transaction and resolves on `complete` (rejects on `abort`). */
function write(db: IDBDatabase, store: string, fn: (os: IDBObjectStore, tx: IDBTransaction) => void): Promise<void> {
  const tx = db.transaction(store, 'readwrite');
  const done = new Promise<void>((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onabort = () => reject(tx.error ?? new Error('aborted'));
  });
  fn(tx.objectStore(store), tx);
  return done;
}

const read = <T>(db: IDBDatabase, store: string, fn: (os: IDBObjectStore) => IDBRequest<T>): Promise<T> => request(fn(db.transaction(store, 'readonly').objectStore(store)));

/** A journal on a fresh directory and one database in it with an object store `s` (keyPath `id`, index `by_tag`). */
async function setUp(t: TestContext): Promise<{ journal: IdbJournal; db: IDBDatabase }> {
  const dir = mkdtempSync(join(tmpdir(), 'halcyon-evict-'));
  const prefix = `evict${process.pid}-${++counter}::`;
  const journal = await IdbJournal.open(dir, 'crypto.sqlite', prefix, (e) => {
    throw e;
  });
  const db = await new Promise<IDBDatabase>((resolve, reject) => {
    const req = indexedDB.open(`${prefix}db`, 1);
    req.onupgradeneeded = () => req.result.createObjectStore('s', { keyPath: 'id' }).createIndex('by_tag', 'tag');
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
  t.after(async () => {
    db.close();
    await journal.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return { journal, db };
}

/** A value of ~8 KB of heap (strings), as the crypto store's pickled sessions are. */
const big = (id: number, tag = 'a') => ({ id, tag, text: `${id}:${'x'.repeat(4000)}`, parts: Array.from({ length: 40 }, (_, k) => `${id}-${k}-${'y'.repeat(40)}`) });

test('2,000 committed records of ~8 KB grow the heap by a small fraction of their size', async (t) => {
  const { db } = await setUp(t);
  gc();
  const before = process.memoryUsage().heapUsed;
  for (let b = 0; b < 20; b++) await write(db, 's', (os) => { for (let i = 0; i < 100; i++) os.put(big(b * 100 + i)); });
  gc();
  const grown = process.memoryUsage().heapUsed - before;
  assert.ok(grown < 4 * 2 ** 20, `the heap grew by ${(grown / 2 ** 20).toFixed(1)} MiB for 2,000 records (~16 MB of values)`);
  const back = await read(db, 's', (os) => os.get(1234));
  assert.deepEqual(back, big(1234), 'a value comes back whole');
});

test('over values read back from SQLite: get, getAll, cursors, the index, count, overwrite, delete, abort', async (t) => {
  const { db } = await setUp(t);
  await write(db, 's', (os) => { for (let i = 0; i < 10; i++) os.put(big(i, i % 2 ? 'odd' : 'even')); });
  assert.deepEqual(await read(db, 's', (os) => os.get(3)), big(3, 'odd'));
  assert.deepEqual((await read(db, 's', (os) => os.getAll())).map((v) => (v as { id: number }).id), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  assert.deepEqual((await read(db, 's', (os) => os.index('by_tag').getAll('odd'))).map((v) => (v as { id: number }).id), [1, 3, 5, 7, 9]);
  assert.equal(await read(db, 's', (os) => os.count()), 10);
  // Overwriting moves the record in the index (the old value's index key comes from SQLite).
  await write(db, 's', (os) => os.put(big(3, 'even')));
  assert.deepEqual((await read(db, 's', (os) => os.index('by_tag').getAllKeys('odd'))), [1, 5, 7, 9]);
  assert.deepEqual(await read(db, 's', (os) => os.get(3)), big(3, 'even'));
  await write(db, 's', (os) => os.delete(5));
  assert.equal(await read(db, 's', (os) => os.get(5)), undefined);
  assert.deepEqual((await read(db, 's', (os) => os.index('by_tag').getAllKeys('odd'))), [1, 7, 9]);
  // An aborted transaction that overwrote and deleted records leaves the committed values, index included.
  await assert.rejects(write(db, 's', (os, tx) => {
    os.put(big(7, 'even'));
    os.delete(9);
    os.put(big(11, 'odd')).onsuccess = () => tx.abort();
  }));
  assert.deepEqual(await read(db, 's', (os) => os.get(7)), big(7, 'odd'));
  assert.deepEqual(await read(db, 's', (os) => os.get(9)), big(9, 'odd'));
  assert.equal(await read(db, 's', (os) => os.get(11)), undefined);
  assert.deepEqual((await read(db, 's', (os) => os.index('by_tag').getAllKeys('odd'))), [1, 7, 9]);
  // A value handed out is a copy: changing it changes nothing stored.
  const copy = (await read(db, 's', (os) => os.get(1))) as { text: string };
  copy.text = 'changed';
  assert.deepEqual(await read(db, 's', (os) => os.get(1)), big(1, 'odd'));
  // cursor.update over a record whose value is in SQLite.
  await write(db, 's', (os) => {
    os.openCursor(IDBKeyRange.bound(2, 2)).onsuccess = (e) => {
      const c = (e.target as IDBRequest<IDBCursorWithValue | null>).result;
      c?.update({ ...(c.value as object), tag: 'updated' });
    };
  });
  assert.equal(((await read(db, 's', (os) => os.get(2))) as { tag: string }).tag, 'updated');
});

test('in a group, a record written twice and then read back is the last value, before and after the group commits', async (t) => {
  const { journal, db } = await setUp(t);
  await write(db, 's', (os) => os.put(big(1)));
  journal.beginGroup();
  await write(db, 's', (os) => os.put({ ...big(1), tag: 'second' }));
  await write(db, 's', (os) => os.put({ ...big(1), tag: 'third' }));
  assert.equal(((await read(db, 's', (os) => os.get(1))) as { tag: string }).tag, 'third');
  journal.commitGroup();
  assert.equal(((await read(db, 's', (os) => os.get(1))) as { tag: string }).tag, 'third');
  assert.deepEqual(await read(db, 's', (os) => os.index('by_tag').getAllKeys('third')), [1]);
});
