/**
 * Opening the crypto actor's store (the start of `CryptoActor.open`): the journal that backs crypto-wasm's
 * IndexedDB (idb-journal.ts), the check that the store belongs to the token's user and device, and the
 * `OlmMachine` on it, keyed as store-key.ts says. crypto-wasm comes in as `W` (src/crypto/actor.ts is the only
 * module that imports it).
 */
import { HalcyonError } from '../errors.ts';
import { traceStartup } from '../actors.ts';
import type { CryptoConfig } from '../protocol.ts';
import { kvGet } from '../store.ts';
import type { Machine, Wasm } from './backup.ts';
import { IdbJournal } from './idb-journal.ts';
import { deriveStoreKey, storeKeyRecord } from './store-key.ts';

type StoreHandle = import('@matrix-org/matrix-sdk-crypto-wasm').StoreHandle;

/** An opened store: its journal, the machine on it, and whether it was new (no owner recorded yet). */
export interface OpenedStore {
  journal: IdbJournal;
  machine: Machine;
  freshStore: boolean;
}

/**
 * Opens the journal and the machine on it; refuses a store of another user or device (`HALCYON_STORE_MISMATCH`)
 * and a wrong passphrase (`HALCYON_CRYPTO_STORE`), closing the journal first. `fatal` reports a journal failure
 * after the open. The owner is recorded by the caller once it has the machine.
 */
export async function openCryptoStore(W: Wasm, config: CryptoConfig, storeName: string, fatal: (err: HalcyonError) => void): Promise<OpenedStore> {
  const journal = await IdbJournal.open(config.dataDir, 'crypto.sqlite', `${storeName}::`, fatal);
  traceStartup('crypto.sqlite open');
  const owner = kvGet(journal.db, 'owner');
  if (owner) {
    const o = JSON.parse(owner) as { userId: string; deviceId: string };
    if (o.userId !== config.userId || o.deviceId !== config.deviceId) {
      await journal.close();
      throw new HalcyonError(
        'HALCYON_STORE_MISMATCH',
        `the crypto store in ${config.dataDir} belongs to ${o.userId} device ${o.deviceId}, not ${config.userId} device ${config.deviceId}; ` +
          'refusing to start rather than create a new identity (use the data dir of this device, or log in again with a fresh data dir)',
      );
    }
  }
  let machine: Machine;
  try {
    machine = await openMachine(W, config, storeName, journal);
  } catch (err) {
    await journal.close();
    if (err instanceof HalcyonError) throw err;
    const msg = String((err as Error)?.message ?? err);
    throw new HalcyonError(
      /match/i.test(msg) ? 'HALCYON_STORE_MISMATCH' : 'HALCYON_CRYPTO_STORE',
      // Since a login with encryption on creates the store, a bot with its own passphrase that did not give it
      // to the login (or `halcyon login --store-passphrase-file`) meets this on its first run.
      `cannot open the crypto store in ${config.dataDir} (wrong passphrase: the login that created it must be given the client's encryption options; or another account's store?): ${msg}`,
      { cause: err },
    );
  }
  traceStartup('olm machine open');
  return { journal, machine, freshStore: owner === undefined };
}

/**
 * The machine on the store: with a raw key for a store recorded as raw-keyed or a new one (store-key.ts), with the
 * passphrase (crypto-wasm's own slow KDF) for a store made before raw keys.
 */
async function openMachine(W: Wasm, config: CryptoConfig, storeName: string, journal: IdbJournal): Promise<Machine> {
  const [user, device] = [new W.UserId(config.userId), new W.DeviceId(config.deviceId)];
  const exists = (await indexedDB.databases()).some((d) => d.name?.startsWith(journal.prefix));
  const record = storeKeyRecord(journal.db, config.dataDir, config.passphrase, exists);
  if (!record) return W.OlmMachine.initialize(user, device, storeName, config.passphrase);
  const key = await deriveStoreKey(record, config.passphrase);
  let handle: StoreHandle;
  try {
    handle = await W.StoreHandle.openWithKey(storeName, key);
  } finally {
    key.fill(0); // crypto-wasm holds its own copy; ours goes at once
  }
  try {
    return await W.OlmMachine.initFromStore(user, device, handle);
  } finally {
    handle.free(); // the machine keeps the store itself, not this handle
  }
}
