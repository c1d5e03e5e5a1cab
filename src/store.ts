/**
 * The storage door: the only module that imports `node:sqlite`. Each actor opens its own database file in the
 * data directory (one owner per file); files are created 0600 and the directory 0700, because they hold
 * tokens and room state.
 */
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { chmodSync, closeSync, existsSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, statSync, writeSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { DatabaseSync as SqliteDatabase } from 'node:sqlite';
import { HalcyonError } from './errors.ts';

/** A SQLite database owned by one actor. */
export type Database = SqliteDatabase;

/**
 * `node:sqlite`, taken at run time rather than by a static import: Node resolves static imports before any code
 * runs, so an old Node would fail with ERR_UNKNOWN_BUILTIN_MODULE before src/runtime.ts could say which version
 * is needed.
 */
const sqlite = process.getBuiltinModule?.('node:sqlite') as typeof import('node:sqlite') | undefined;

/**
 * Creates the data directory (0700) if needed, and makes an existing one 0700: it holds the token's device, room
 * state and the crypto store's passphrase, so nobody else may list or read it (a directory made by hand or by a
 * deploy tool is often 0755).
 */
export function ensureDataDir(dataDir: string): void {
  try {
    mkdirSync(dataDir, { recursive: true, mode: 0o700 });
    if ((statSync(dataDir).mode & 0o077) !== 0) chmodSync(dataDir, 0o700);
  } catch (err) {
    throw new HalcyonError('HALCYON_STORE', `cannot create the data directory ${dataDir} or make it private (0700): ${(err as Error).message}`, { cause: err });
  }
}

/**
 * Opens (creating if needed) `<dataDir>/<name>` in WAL mode with mode 0600 on the file and its WAL/SHM files.
 * WAL with synchronous=NORMAL survives a process crash (kill -9); a power cut may lose the last commits.
 */
export function openDatabase(dataDir: string, name: string): Database {
  ensureDataDir(dataDir);
  const path = join(dataDir, name);
  try {
    // Create the file ourselves so it is never world-readable, not even for an instant.
    if (!existsSync(path)) closeSync(openSync(path, 'a', 0o600));
    if (!sqlite) throw new HalcyonError('HALCYON_UNSUPPORTED_RUNTIME', `node:sqlite is not available: halcyon-matrix needs Node.js >= 22.13 (this is ${process.version})`);
    const db = new sqlite.DatabaseSync(path);
    db.exec('PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000;');
    for (const d of opened) if (!d.isOpen) opened.delete(d);
    opened.add(db);
    db.exec('CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v TEXT NOT NULL)');
    for (const suffix of ['', '-wal', '-shm']) if (existsSync(path + suffix)) chmodSync(path + suffix, 0o600);
    return db;
  } catch (err) {
    throw new HalcyonError('HALCYON_STORE', `cannot open ${path}: ${(err as Error).message}`, { cause: err });
  }
}

/** This thread's databases (closed ones are dropped as they are met), for {@link sqliteCacheLimit}. */
const opened = new Set<Database>();

/**
 * The most this thread's open SQLite connections may hold in their page caches, in bytes (`cache_size` pages
 * times the page size, per connection), or null when none is open.
 */
export function sqliteCacheLimit(): number | null {
  let total: number | null = null;
  for (const db of opened) {
    if (!db.isOpen) {
      opened.delete(db);
      continue;
    }
    const pages = (db.prepare('PRAGMA cache_size').get() as { cache_size: number }).cache_size;
    const pageSize = (db.prepare('PRAGMA page_size').get() as { page_size: number }).page_size;
    // A negative cache_size is a limit in KiB rather than in pages.
    total = (total ?? 0) + (pages < 0 ? -pages * 1024 : pages * pageSize);
  }
  return total;
}

/** Reads a value from the `kv` table. */
export function kvGet(db: Database, key: string): string | undefined {
  const row = db.prepare('SELECT v FROM kv WHERE k = ?').get(key) as { v: string } | undefined;
  return row?.v;
}

const KV_SET = 'INSERT INTO kv (k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v';

/** Writes a value to the `kv` table. */
export function kvSet(db: Database, key: string, value: string): void {
  db.prepare(KV_SET).run(key, value);
}

/**
 * Writes values to the `kv` table in one transaction: all or none. One commit each cost a first sync of 1,000 rooms
 * 100–200 ms of the crypto actor's time (each room's history visibility), on the path `run()` waits for. Not for
 * inside a transaction: this module's callers never hold one across calls (their transactions are synchronous).
 */
export function kvSetMany(db: Database, entries: Iterable<readonly [string, string]>): void {
  const set = db.prepare(KV_SET);
  db.exec('BEGIN');
  try {
    for (const [key, value] of entries) set.run(key, value);
    db.exec('COMMIT');
  } catch (err) {
    db.exec('ROLLBACK');
    throw err;
  }
}

/** Writes a secret file with mode 0600, atomically (temp file + rename), even over an existing file. */
export function writeSecretFile(path: string, text: string): void {
  const tmp = join(dirname(path), `.halcyon-secret-${process.pid}-${Date.now()}`);
  const fd = openSync(tmp, 'wx', 0o600);
  try {
    writeSync(fd, text);
  } finally {
    closeSync(fd);
  }
  try {
    renameSync(tmp, path);
  } catch (err) {
    rmSync(tmp, { force: true });
    throw err;
  }
}

/**
 * The crypto store passphrase kept in `<dataDir>/crypto.key` (0600), created with 256 random bits on first use.
 * It keeps the store encrypted at rest against anyone who gets the store file alone; a passphrase given in
 * the client options (from a secret manager) also protects against whoever can read the whole data dir.
 */
export function storePassphrase(dataDir: string): string {
  ensureDataDir(dataDir);
  const path = join(dataDir, 'crypto.key');
  if (!existsSync(path)) writeSecretFile(path, randomBytes(32).toString('base64url') + '\n');
  chmodSync(path, 0o600);
  const key = readFileSync(path, 'utf8').trim();
  if (key.length < 16) throw new HalcyonError('HALCYON_CRYPTO_STORE', `${path} does not hold a passphrase`);
  return key;
}

/**
 * Whether `passphrase` is the data dir's generated `crypto.key` (see {@link storePassphrase}): 256 random bits, which
 * need no stretching into a key (src/crypto/store-key.ts). Compared in constant time; false if there is no such file.
 */
export function isGeneratedPassphrase(dataDir: string, passphrase: string): boolean {
  let stored: Buffer;
  try {
    stored = Buffer.from(readFileSync(join(dataDir, 'crypto.key'), 'utf8').trim());
  } catch {
    return false;
  }
  const given = Buffer.from(passphrase);
  return stored.length === given.length && timingSafeEqual(stored, given);
}
