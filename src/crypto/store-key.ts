/**
 * The crypto store's key. crypto-wasm encrypts every value of its IndexedDB store with a key of its own, kept in the
 * store wrapped by the key it is opened with. Opened with a passphrase, crypto-wasm stretches it first with PBKDF2
 * (200,000 rounds of SHA-256, in wasm) on every open: a large share of a cold start with encryption on. Opened with
 * a raw 32-byte key (`StoreHandle.openWithKey`), it does no stretching, so new stores are keyed raw and the
 * stretching, where one is needed, is done here natively:
 *
 * - the data dir's generated `crypto.key` already holds 256 random bits: stretching it buys nothing, so its key is
 *   HKDF-SHA256 of it (microseconds);
 * - a passphrase the bot gives may be weak: its key is scrypt (N=2^15, r=8, p=1: 32 MiB and ~0.1 s per guess, on
 *   libuv's thread pool, not the actor's thread) with a random salt. Being memory-hard, it costs an attacker with
 *   GPUs far more per guess than crypto-wasm's PBKDF2 did, in less time for us than the wasm took.
 *
 * How a store's key is made is recorded in crypto.sqlite's kv `storeKey` before the store is created, so every open
 * takes the same path (a crash between the two leaves a record the next open follows). A store made by earlier
 * versions has no record and keeps opening with the passphrase: crypto-wasm has no call to re-wrap its key (and
 * there is no export of the account and Olm sessions to move them to a new store), so those keep the old cost.
 * No key, passphrase or secret is kept or shown here; the salt is not secret.
 */
import { hkdfSync, randomBytes, scrypt } from 'node:crypto';
import { HalcyonError } from '../errors.ts';
import { type Database, isGeneratedPassphrase, kvGet, kvSet } from '../store.ts';

/** A raw-keyed store's record (crypto.sqlite kv `storeKey`): how its 32-byte key is made from the passphrase. */
export type StoreKeyRecord =
  | { format: 'raw-v1'; kdf: 'hkdf-sha256' }
  | { format: 'raw-v1'; kdf: 'scrypt'; salt: string; N: number; r: number; p: number };

/** The kv key of the record. */
const RECORD_KEY = 'storeKey';
/** Binds the HKDF output to this use, so the same file could key something else independently. */
const HKDF_INFO = 'halcyon-matrix crypto store key v1';
/** scrypt's cost for new stores (recorded with each store, so it can be raised later without breaking old ones). */
const SCRYPT_COST = { N: 2 ** 15, r: 8, p: 1 } as const;
/** The most memory a recorded scrypt cost may ask for (a damaged record must not make us allocate gigabytes). */
const SCRYPT_MAX_MEM = 256 * 1024 * 1024;

/**
 * How the store whose journal database is `db` is keyed: its record; for a store that does not exist yet (`exists`:
 * whether its IndexedDB databases are there), a new record, written here (HKDF for the data dir's generated key,
 * scrypt with a new salt for any other passphrase); null for a store made before raw keys (it opens with the
 * passphrase, in crypto-wasm).
 */
export function storeKeyRecord(db: Database, dataDir: string, passphrase: string, exists: boolean): StoreKeyRecord | null {
  const stored = kvGet(db, RECORD_KEY);
  if (stored !== undefined) return parseRecord(stored, dataDir);
  if (exists) return null;
  const record: StoreKeyRecord = isGeneratedPassphrase(dataDir, passphrase)
    ? { format: 'raw-v1', kdf: 'hkdf-sha256' }
    : { format: 'raw-v1', kdf: 'scrypt', salt: randomBytes(16).toString('base64url'), ...SCRYPT_COST };
  kvSet(db, RECORD_KEY, JSON.stringify(record));
  return record;
}

/** The store's 32-byte key from the passphrase, as its record says; the caller wipes it once crypto-wasm has it. */
export async function deriveStoreKey(record: StoreKeyRecord, passphrase: string): Promise<Uint8Array> {
  if (record.kdf === 'hkdf-sha256') return new Uint8Array(hkdfSync('sha256', passphrase, new Uint8Array(0), HKDF_INFO, 32));
  const { N, r, p } = record;
  return new Promise((resolve, reject) => {
    scrypt(passphrase, Buffer.from(record.salt, 'base64url'), 32, { N, r, p, maxmem: SCRYPT_MAX_MEM }, (err, key) => {
      if (err) reject(err);
      else resolve(new Uint8Array(key.buffer, key.byteOffset, key.length));
    });
  });
}

/** A record as written by {@link storeKeyRecord}; anything else (a newer version's, a damaged one) is refused. */
function parseRecord(text: string, dataDir: string): StoreKeyRecord {
  let r: Record<string, unknown> | null = null;
  try {
    r = JSON.parse(text) as Record<string, unknown>;
  } catch {
    // refused below
  }
  const known =
    r?.format === 'raw-v1' &&
    (r.kdf === 'hkdf-sha256' ||
      (r.kdf === 'scrypt' && typeof r.salt === 'string' && [r.N, r.r, r.p].every((n) => Number.isSafeInteger(n) && (n as number) > 0) &&
        128 * (r.N as number) * (r.r as number) * (r.p as number) < SCRYPT_MAX_MEM));
  if (!known) {
    throw new HalcyonError(
      'HALCYON_CRYPTO_STORE',
      `cannot open the crypto store in ${dataDir}: its key record (crypto.sqlite kv ${RECORD_KEY}) is not one this version knows (${text.slice(0, 200)}); was it made by a newer halcyon-matrix?`,
    );
  }
  return r as StoreKeyRecord;
}
