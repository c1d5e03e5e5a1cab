/**
 * A durable IndexedDB for Node: fake-indexeddb in memory, written through to a SQLite journal.
 *
 * crypto-wasm's only persistent store is IndexedDB. In Node that is fake-indexeddb, which lives only as long as
 * the process: a restart would give the same device new identity keys. This module is the only importer of
 * fake-indexeddb. It hooks the commit of every IndexedDB transaction and, before the transaction's `complete`
 * event reaches anyone (the crypto store awaits that event), writes the transaction's effect to SQLite in one
 * SQLite transaction: the final value of every record it touched, and for upgrade transactions a snapshot of
 * the database (schema, version, indexes, records). At start the databases are rebuilt from the journal.
 *
 * Values live in SQLite, not in memory: once a record's commit is written, its in-memory value is dropped and the
 * record keeps only its key ({@link StoredRecord}); a read loads the value back (the last few are cached). Records
 * of transactions not yet written (an open transaction, a group) keep their values until they are. fake-indexeddb
 * would otherwise hold the whole crypto store in the heap for as long as the bot runs: every Megolm session ever
 * received, ~6 KB of heap each, growing for months in busy encrypted rooms.
 *
 * Groups: between `beginGroup()` and `commitGroup()` the journal buffers IndexedDB commits and writes them in a
 * single SQLite transaction together with the caller's own rows. The crypto actor uses this so the effect of
 * one sync batch's to-device events and the checkpoint that says "this batch was applied" are durable
 * together or not at all. Nothing outside the thread observes the buffered state before the group commits
 * (the actor sends no request and answers no call in between), so write-through holds as seen from outside.
 */
import type * as FakeIndexedDb from 'fake-indexeddb';
import { deserialize, serialize } from 'node:v8';
import { HalcyonError } from '../errors.ts';
import { lazyModule } from '../lazy-require.ts';
import { type Database, openDatabase } from '../store.ts';

/**
 * fake-indexeddb, loaded when this thread first opens a crypto store: main runs no crypto actor by default, and the
 * package cost it ~12 MB of RSS and ~30 ms at import.
 */
const fakeIndexedDb = lazyModule<typeof FakeIndexedDb>('fake-indexeddb');

type Key = number | string | Date | ArrayBuffer | Key[];
interface RawRecord { key: Key; value: unknown }
interface RawIndex { name: string; keyPath: string | string[]; multiEntry: boolean; unique: boolean }
interface RawStore {
  name: string;
  keyPath: string | string[] | null;
  autoIncrement: boolean;
  deleted: boolean;
  keyGenerator: { num: number } | null;
  rawIndexes: Map<string, RawIndex>;
  rawDatabase: RawDatabase;
  records: { values(range?: unknown): Iterable<RawRecord>; get(key: unknown): RawRecord | undefined; put(rec: RawRecord, noOverwrite?: boolean): RawRecord | undefined };
  storeRecord(rec: RawRecord, noOverwrite: boolean, rollbackLog?: unknown[]): Key;
  deleteRecord(key: unknown, rollbackLog?: unknown[]): void;
  clear(rollbackLog?: unknown[]): void;
}
interface RawDatabase { name: string; version: number; rawObjectStores: Map<string, RawStore>; processTransactions(): void }
interface FakeTx { mode: string; db: { name: string; _rawDatabase: RawDatabase }; _rollbackLog: unknown[] }

/** What one IndexedDB transaction changed: per raw object store, the keys touched and whether it was cleared. */
interface Dirty { stores: Map<RawStore, { cleared: boolean; keys: Map<string, Key> }> }

/**
 * One row-level change, captured at IndexedDB commit time. `rec` (a put's record) and `raw` (a snapshot's database)
 * are what to drop from memory once the change is written.
 */
type Op =
  | { op: 'put'; db: string; store: string; k: string; v: Uint8Array; raw: RawStore; rec: RawRecord }
  | { op: 'del'; db: string; store: string; k: string }
  | { op: 'clear'; db: string; store: string }
  | { op: 'keygen'; db: string; store: string; num: number }
  | { op: 'snapshot'; db: string; snapshot: DbSnapshot; raw: RawDatabase };

/**
 * Values read back from SQLite kept in memory, by the size of their rows (the sessions a burst of decryption uses
 * are read once, not once per event); the least recently used go first.
 */
const VALUE_CACHE_BYTES = 1024 * 1024;

/**
 * A committed record of an object store whose value is in SQLite only: fake-indexeddb reads `value` (and always
 * clones it before handing it out), which loads it from the row the record was written to.
 */
class StoredRecord implements RawRecord {
  constructor(
    public key: Key,
    private readonly at: { journal: IdbJournal; db: string; store: string },
  ) {}

  get value(): unknown {
    return this.at.journal.load(this.at.db, this.at.store, this.key);
  }
}

interface DbSnapshot {
  version: number;
  stores: { name: string; keyPath: string | string[] | null; autoIncrement: boolean; keyGen: number; indexes: RawIndex[]; records: [string, Uint8Array][] }[];
}

/** The journal for one data directory; IndexedDB databases whose names start with `prefix` belong to it. */
export class IdbJournal {
  private readonly sql: Database;
  private group: Op[] | null = null;
  private failed: HalcyonError | null = null;
  private readonly onFailure: (err: HalcyonError) => void;
  private closed = false;
  private readonly loadStmt: ReturnType<Database['prepare']>;
  /** Values recently loaded by {@link load}, by `db \0 store \0 key`, with their rows' sizes. */
  private readonly cache = new Map<string, { value: unknown; bytes: number }>();
  private cacheBytes = 0;
  /** Where {@link StoredRecord}s read from, one object per database and store (shared by its records). */
  private readonly places = new Map<string, { journal: IdbJournal; db: string; store: string }>();

  private constructor(dataDir: string, file: string, readonly prefix: string, onFailure: (err: HalcyonError) => void) {
    this.sql = openDatabase(dataDir, file);
    this.onFailure = onFailure;
    this.sql.exec(`
      CREATE TABLE IF NOT EXISTS idb_db (name TEXT PRIMARY KEY, version INTEGER NOT NULL);
      CREATE TABLE IF NOT EXISTS idb_store (db TEXT NOT NULL, name TEXT NOT NULL, key_path TEXT, auto_increment INTEGER NOT NULL,
        key_gen INTEGER NOT NULL, indexes TEXT NOT NULL, PRIMARY KEY (db, name));
      CREATE TABLE IF NOT EXISTS idb_record (db TEXT NOT NULL, store TEXT NOT NULL, k TEXT NOT NULL, v BLOB NOT NULL,
        PRIMARY KEY (db, store, k)) WITHOUT ROWID;`);
    this.loadStmt = this.sql.prepare('SELECT v FROM idb_record WHERE db = ? AND store = ? AND k = ?');
  }

  /** The committed value of a record whose value was dropped from memory (see {@link StoredRecord}). */
  load(db: string, store: string, key: Key): unknown {
    const k = canonicalKey(key);
    const id = `${db}\0${store}\0${k}`;
    const hit = this.cache.get(id);
    if (hit) {
      this.cache.delete(id); // re-inserted last: the least recently used goes first
      this.cache.set(id, hit);
      return hit.value;
    }
    if (this.closed) throw new HalcyonError('HALCYON_CRYPTO_STORE', 'the crypto store journal is closed');
    const row = this.loadStmt.get(db, store, k) as { v: Uint8Array } | undefined;
    if (!row) throw new HalcyonError('HALCYON_CRYPTO_STORE', `the crypto store journal has no record ${k} in ${store}`);
    const value = (deserialize(row.v) as [Key, unknown])[1];
    this.cache.set(id, { value, bytes: row.v.length });
    this.cacheBytes += row.v.length;
    for (const [oldest, entry] of this.cache) {
      if (this.cacheBytes <= VALUE_CACHE_BYTES) break;
      this.forget(oldest, entry);
    }
    return value;
  }

  private place(db: string, store: string): { journal: IdbJournal; db: string; store: string } {
    const id = `${db}\0${store}`;
    let at = this.places.get(id);
    if (!at) this.places.set(id, (at = { journal: this, db, store }));
    return at;
  }

  private forget(id: string, entry = this.cache.get(id)): void {
    if (!entry) return;
    this.cache.delete(id);
    this.cacheBytes -= entry.bytes;
  }

  /**
   * After `ops` are in SQLite: the records they wrote keep only their keys (unless a later change replaced them in
   * memory meanwhile), and cached values they changed are forgotten.
   */
  private evict(ops: Op[]): void {
    for (const o of ops) {
      if (o.op === 'put') {
        this.forget(`${o.db}\0${o.store}\0${o.k}`);
        if (o.raw.records.get(o.rec.key) === o.rec) o.raw.records.put(new StoredRecord(o.rec.key, this.place(o.db, o.store)));
      } else if (o.op === 'del') this.forget(`${o.db}\0${o.store}\0${o.k}`);
      else if (o.op === 'clear' || o.op === 'snapshot') {
        this.cache.clear();
        this.cacheBytes = 0;
        if (o.op === 'snapshot') this.evictAll(o.raw);
      }
    }
  }

  /** Every record of the database keeps only its key: its stores' rows were all just written (snapshot, restore). */
  private evictAll(raw: RawDatabase): void {
    for (const store of raw.rawObjectStores.values()) {
      if (store.deleted) continue;
      const at = this.place(raw.name, store.name);
      for (const rec of [...store.records.values()]) store.records.put(new StoredRecord(rec.key, at));
    }
  }

  /**
   * Opens the journal `<dataDir>/<file>`, installs the IndexedDB globals and commit hooks (once per thread),
   * and rebuilds every journaled database whose name starts with `prefix` into this thread's IndexedDB.
   * `onFailure` is called if a later write to SQLite fails: the in-memory store is then ahead of the disk.
   */
  static async open(dataDir: string, file: string, prefix: string, onFailure: (err: HalcyonError) => void): Promise<IdbJournal> {
    await installHooks();
    const j = new IdbJournal(dataDir, file, prefix, onFailure);
    for (const other of journals) if (prefix.startsWith(other.prefix) || other.prefix.startsWith(prefix)) {
      j.sql.close();
      throw new HalcyonError('HALCYON_STORE', `the crypto store ${prefix} is already open in this thread`);
    }
    try {
      await j.restore();
    } catch (err) {
      j.sql.close();
      throw new HalcyonError('HALCYON_STORE', `cannot rebuild the crypto store from ${file}: ${(err as Error).message}`, { cause: err });
    }
    journals.add(j);
    return j;
  }

  /** The journal's SQLite database, for the owner's own tables (written inside groups). */
  get db(): Database {
    return this.sql;
  }

  /** Starts buffering IndexedDB commits; see the module comment. Groups do not nest. */
  beginGroup(): void {
    if (this.group) throw new HalcyonError('HALCYON_INTERNAL', 'journal group already open');
    this.group = [];
  }

  /** Writes the buffered commits and `extra` (the owner's rows) in one SQLite transaction. */
  commitGroup(extra?: (db: Database) => void): void {
    const ops = this.group ?? [];
    this.group = null;
    this.write(ops, extra);
  }

  /** Number of records journaled (for tests and metrics). */
  recordCount(): number {
    return (this.sql.prepare('SELECT count(*) AS n FROM idb_record').get() as { n: number }).n;
  }

  /**
   * Stops journaling and closes the SQLite file; the in-memory databases are deleted. Idempotent. Connections
   * still open on them are closed first: a store that failed to open (wrong passphrase) never closes its own,
   * and fake-indexeddb's delete would otherwise wait for them forever, re-polling on every turn of the loop.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    journals.delete(this);
    if (this.group && !this.failed) this.commitGroup();
    this.group = null;
    const names = (this.sql.prepare('SELECT name FROM idb_db').all() as { name: string }[]).map((r) => r.name);
    this.sql.close();
    for (const [name, conns] of connections) {
      if (!name.startsWith(this.prefix)) continue;
      for (const c of conns) c.close();
      connections.delete(name);
    }
    for (const name of names) await deleteDatabase(name);
  }

  /**
   * Called by the hook at commit time, before `complete` is dispatched. Returns false if the commit could not be
   * made durable (the journal failed; the owner was told through `onFailure`): `complete` is then withheld.
   */
  captured(tx: FakeTx): boolean {
    const dbName = tx.db.name;
    const ops: Op[] = [];
    if (tx.mode === 'versionchange') {
      ops.push({ op: 'snapshot', db: dbName, snapshot: snapshotOf(tx.db._rawDatabase), raw: tx.db._rawDatabase });
    } else {
      const dirty = dirtyByLog.get(tx._rollbackLog);
      if (!dirty) return true;
      for (const [store, d] of dirty.stores) {
        if (store.deleted) continue;
        if (d.cleared) ops.push({ op: 'clear', db: dbName, store: store.name });
        for (const [k, key] of d.keys) {
          const rec = store.records.get(key);
          ops.push(rec ? { op: 'put', db: dbName, store: store.name, k, v: serialize([rec.key, rec.value]), raw: store, rec } : { op: 'del', db: dbName, store: store.name, k });
        }
        if (store.keyGenerator) ops.push({ op: 'keygen', db: dbName, store: store.name, num: store.keyGenerator.num });
      }
    }
    // After a failure the store is ahead of the disk: nothing that writes is reported complete (reads still are).
    if (this.failed) return false;
    if (this.group) this.group.push(...ops);
    else {
      try {
        this.write(ops);
      } catch {
        return false; // reported through onFailure by write()
      }
    }
    return true;
  }

  private write(ops: Op[], extra?: (db: Database) => void): void {
    if (this.failed) throw this.failed;
    if (ops.length === 0 && !extra) return;
    const s = this.sql;
    try {
      s.exec('BEGIN IMMEDIATE');
      try {
        for (const o of ops) this.apply(o);
        extra?.(s);
        s.exec('COMMIT');
      } catch (err) {
        s.exec('ROLLBACK');
        throw err;
      }
    } catch (err) {
      this.failed = new HalcyonError('HALCYON_CRYPTO_STORE', `writing the crypto store journal failed: ${(err as Error).message}`, { cause: err });
      this.onFailure(this.failed);
      throw this.failed;
    }
    this.evict(ops);
  }

  private apply(o: Op): void {
    const s = this.sql;
    switch (o.op) {
      case 'put':
        s.prepare('INSERT INTO idb_record (db, store, k, v) VALUES (?, ?, ?, ?) ON CONFLICT DO UPDATE SET v = excluded.v').run(o.db, o.store, o.k, o.v);
        break;
      case 'del':
        s.prepare('DELETE FROM idb_record WHERE db = ? AND store = ? AND k = ?').run(o.db, o.store, o.k);
        break;
      case 'clear':
        s.prepare('DELETE FROM idb_record WHERE db = ? AND store = ?').run(o.db, o.store);
        break;
      case 'keygen':
        s.prepare('UPDATE idb_store SET key_gen = ? WHERE db = ? AND name = ?').run(o.num, o.db, o.store);
        break;
      case 'snapshot': {
        s.prepare('DELETE FROM idb_record WHERE db = ?').run(o.db);
        s.prepare('DELETE FROM idb_store WHERE db = ?').run(o.db);
        s.prepare('INSERT INTO idb_db (name, version) VALUES (?, ?) ON CONFLICT DO UPDATE SET version = excluded.version').run(o.db, o.snapshot.version);
        const insStore = s.prepare('INSERT INTO idb_store (db, name, key_path, auto_increment, key_gen, indexes) VALUES (?, ?, ?, ?, ?, ?)');
        const insRec = s.prepare('INSERT INTO idb_record (db, store, k, v) VALUES (?, ?, ?, ?)');
        for (const st of o.snapshot.stores) {
          insStore.run(o.db, st.name, JSON.stringify(st.keyPath), st.autoIncrement ? 1 : 0, st.keyGen, JSON.stringify(st.indexes));
          for (const [k, v] of st.records) insRec.run(o.db, st.name, k, v);
        }
        break;
      }
    }
  }

  /** Rebuilds each journaled database: schema and version in an upgrade transaction, then its records. */
  private async restore(): Promise<void> {
    const dbs = this.sql.prepare('SELECT name, version FROM idb_db').all() as { name: string; version: number }[];
    for (const { name, version } of dbs) {
      if (!name.startsWith(this.prefix)) continue;
      const stores = this.sql.prepare('SELECT name, key_path, auto_increment, key_gen, indexes FROM idb_store WHERE db = ?').all(name) as {
        name: string; key_path: string; auto_increment: number; key_gen: number; indexes: string;
      }[];
      restoring.add(name);
      try {
        await new Promise<void>((resolve, reject) => {
          const req = indexedDB.open(name, version);
          req.onerror = () => reject(req.error);
          req.onblocked = () => reject(new Error(`database ${name} is open elsewhere`));
          req.onupgradeneeded = () => {
            const db = req.result;
            const tx = req.transaction!;
            for (const st of stores) {
              const keyPath = JSON.parse(st.key_path) as string | string[] | null;
              const os = db.createObjectStore(st.name, { keyPath, autoIncrement: st.auto_increment === 1 });
              for (const ix of JSON.parse(st.indexes) as RawIndex[]) os.createIndex(ix.name, ix.keyPath, { unique: ix.unique, multiEntry: ix.multiEntry });
              const rows = this.sql.prepare('SELECT v FROM idb_record WHERE db = ? AND store = ?').iterate(name, st.name) as Iterable<{ v: Uint8Array }>;
              for (const row of rows) {
                const [key, value] = deserialize(row.v) as [Key, unknown];
                if (keyPath === null) os.put(value, key);
                else os.put(value);
              }
            }
            tx.oncomplete = () => {
              // Key generators continue where they were, not from the highest restored key.
              const raw = (db as unknown as { _rawDatabase: RawDatabase })._rawDatabase;
              for (const st of stores) {
                const rs = raw.rawObjectStores.get(st.name);
                if (rs?.keyGenerator) rs.keyGenerator.num = st.key_gen;
              }
            };
          };
          req.onsuccess = () => {
            // Rebuilt with every value in memory (the indexes are computed from them); from now on they are read back.
            this.evictAll((req.result as unknown as { _rawDatabase: RawDatabase })._rawDatabase);
            req.result.close();
            resolve();
          };
        });
      } finally {
        restoring.delete(name);
      }
    }
  }
}

// ---- thread-wide hooks ----

const journals = new Set<IdbJournal>();
/** Open IndexedDB connections by database name, so a journal can close what its store left open. */
const connections = new Map<string, Set<IDBDatabase>>();
const dirtyByLog = new WeakMap<unknown[], Dirty>();
/** Databases being rebuilt from the journal: their writes are the journal's own, not to be journaled again. */
const restoring = new Set<string>();
let installed: Promise<void> | null = null;

/** IndexedDB key → canonical text, so equal keys map to one SQLite row. */
export function canonicalKey(key: Key): string {
  return JSON.stringify(tagKey(key));
}

function tagKey(key: Key): unknown {
  // JSON has no Infinity: it would print both infinities as null.
  if (typeof key === 'number') return ['n', Number.isFinite(key) ? (Object.is(key, -0) ? 0 : key) : String(key)];
  if (typeof key === 'string') return ['s', key];
  if (key instanceof Date) return ['d', key.getTime()];
  if (Array.isArray(key)) return ['a', key.map(tagKey)];
  if (key instanceof ArrayBuffer) return ['b', Buffer.from(key).toString('base64')];
  const view = key as unknown;
  if (ArrayBuffer.isView(view)) return ['b', Buffer.from(view.buffer, view.byteOffset, view.byteLength).toString('base64')];
  throw new HalcyonError('HALCYON_INTERNAL', `not an IndexedDB key: ${typeof key}`);
}

function journalFor(dbName: string): IdbJournal | undefined {
  for (const j of journals) if (dbName.startsWith(j.prefix)) return j;
  return undefined;
}

function markDirty(store: RawStore, rollbackLog: unknown[] | undefined, key: Key | null): void {
  if (!rollbackLog || restoring.has(store.rawDatabase.name)) return; // no log: a rollback, or an index build; nothing to journal
  let d = dirtyByLog.get(rollbackLog);
  if (!d) dirtyByLog.set(rollbackLog, (d = { stores: new Map() }));
  let s = d.stores.get(store);
  if (!s) d.stores.set(store, (s = { cleared: false, keys: new Map() }));
  if (key === null) {
    s.cleared = true;
    s.keys.clear();
  } else s.keys.set(canonicalKey(key), key);
}

function snapshotOf(raw: RawDatabase): DbSnapshot {
  return {
    version: raw.version,
    stores: [...raw.rawObjectStores.values()].filter((s) => !s.deleted).map((s) => ({
      name: s.name,
      keyPath: s.keyPath,
      autoIncrement: s.autoIncrement,
      keyGen: s.keyGenerator?.num ?? 0,
      indexes: [...s.rawIndexes.values()].map((ix) => ({ name: ix.name, keyPath: ix.keyPath, unique: ix.unique, multiEntry: ix.multiEntry })),
      records: [...s.records.values()].map((r) => [canonicalKey(r.key), serialize([r.key, r.value])] as [string, Uint8Array]),
    })),
  };
}

/**
 * Installs fake-indexeddb as this thread's IndexedDB and hooks it, once. The hooks are on fake-indexeddb's
 * internal object-store class (reached through a probe database: the package does not export it) and on
 * IDBTransaction's event dispatch; a test pins the behaviour to the installed version.
 */
function installHooks(): Promise<void> {
  installed ??= (async () => {
    const { IDBCursor, IDBCursorWithValue, IDBDatabase, IDBFactory, IDBIndex, IDBKeyRange, IDBObjectStore, IDBOpenDBRequest, IDBRequest, IDBTransaction, IDBVersionChangeEvent } = fakeIndexedDb();
    Object.assign(globalThis, {
      indexedDB: new IDBFactory(),
      IDBCursor, IDBCursorWithValue, IDBDatabase, IDBFactory, IDBIndex, IDBKeyRange, IDBObjectStore, IDBOpenDBRequest, IDBRequest, IDBTransaction, IDBVersionChangeEvent,
    });
    const proto = await probeObjectStorePrototype();
    const { storeRecord, deleteRecord, clear } = proto;
    proto.storeRecord = function (this: RawStore, rec: RawRecord, noOverwrite: boolean, log?: unknown[]) {
      const key = storeRecord.call(this, rec, noOverwrite, log);
      markDirty(this, log, key);
      return key;
    };
    proto.deleteRecord = function (this: RawStore, keyOrRange: unknown, log?: unknown[]) {
      if (log && !restoring.has(this.rawDatabase.name)) {
        const range = keyOrRange instanceof IDBKeyRange ? keyOrRange : IDBKeyRange.only(keyOrRange);
        for (const r of [...this.records.values(range)]) markDirty(this, log, r.key);
      }
      deleteRecord.call(this, keyOrRange, log);
    };
    proto.clear = function (this: RawStore, log?: unknown[]) {
      markDirty(this, log, null);
      clear.call(this, log);
    };
    const factory = globalThis.indexedDB as IDBFactory;
    const open = factory.open.bind(factory);
    factory.open = (name: string, version?: number) => {
      const req = open(name, version);
      req.addEventListener('success', () => {
        const db = req.result;
        let set = connections.get(name);
        if (!set) connections.set(name, (set = new Set()));
        set.add(db);
        db.addEventListener('close', () => set.delete(db));
      });
      return req;
    };
    const closeConn = IDBDatabase.prototype.close;
    IDBDatabase.prototype.close = function (this: IDBDatabase) {
      connections.get(this.name)?.delete(this);
      return closeConn.call(this);
    };
    const dispatch = IDBTransaction.prototype.dispatchEvent;
    IDBTransaction.prototype.dispatchEvent = function (this: IDBTransaction, event: Event) {
      // Write-through: the commit reaches SQLite before any listener (the crypto store) sees `complete`.
      if (event.type === 'complete') {
        const tx = this as unknown as FakeTx;
        const j = restoring.has(tx.db.name) ? undefined : journalFor(tx.db.name);
        // A commit that did not reach the disk is not reported complete: the owner stops on onFailure.
        if (j && !j.captured(tx)) {
          // fake-indexeddb starts the next queued transaction from a complete listener: keep the queue moving.
          tx.db._rawDatabase.processTransactions();
          return false;
        }
      }
      return dispatch.call(this, event);
    };
  })();
  return installed;
}

async function probeObjectStorePrototype(): Promise<RawStore> {
  const name = `halcyon-probe-${process.pid}-${Math.random().toString(36).slice(2)}`;
  const db = await new Promise<IDBDatabase>((resolve, reject) => {
    const req = indexedDB.open(name, 1);
    req.onupgradeneeded = () => req.result.createObjectStore('s');
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
  const raw = (db as unknown as { _rawDatabase: RawDatabase })._rawDatabase.rawObjectStores.get('s');
  db.close();
  await deleteDatabase(name);
  const proto = raw && (Object.getPrototypeOf(raw) as RawStore);
  if (!proto || typeof proto.storeRecord !== 'function' || typeof proto.deleteRecord !== 'function' || typeof proto.clear !== 'function') {
    throw new HalcyonError('HALCYON_INTERNAL', 'this fake-indexeddb version is not the one the crypto store journal was written for');
  }
  return proto;
}

function deleteDatabase(name: string): Promise<void> {
  return new Promise((resolve) => {
    const req = indexedDB.deleteDatabase(name);
    req.onsuccess = req.onerror = req.onblocked = () => resolve();
  });
}
