/**
 * How the crypto store is keyed (src/crypto/store-key.ts, used by src/crypto/open.ts), in this thread, no server:
 * a new store opens with a raw 32-byte key (HKDF of the data dir's generated `crypto.key`, or scrypt with a salt
 * kept in crypto.sqlite for a passphrase the bot gives) and records the format in kv `storeKey`; a store made by
 * earlier versions (crypto-wasm's passphrase, no record) opens exactly as before; a wrong passphrase is
 * `HALCYON_CRYPTO_STORE` on every format, and no secret reaches the error.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { inspect } from 'node:util';
import * as W from '@matrix-org/matrix-sdk-crypto-wasm';
import type { HalcyonError } from '../../src/errors.ts';
import { IdbJournal } from '../../src/crypto/idb-journal.ts';
import { openCryptoStore, type OpenedStore } from '../../src/crypto/open.ts';
import type { CryptoConfig } from '../../src/protocol.ts';
import { kvGet, kvSet, storePassphrase } from '../../src/store.ts';

const USER = '@keyed:example.org';
const DEVICE = 'KEYEDDEVICE';
const STORE = 'halcyon-storekeytest';
/** What open.ts says of a store it cannot open with the passphrase given (the same on every format). */
const WRONG_PASSPHRASE = /cannot open the crypto store in .* \(wrong passphrase: the login that created it must be given the client's encryption options; or another account's store\?\)/;

function tempDir(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'halcyon-storekey-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function config(dataDir: string, passphrase: string, who: { userId?: string; deviceId?: string } = {}): CryptoConfig {
  return {
    homeserver: 'http://127.0.0.1:1', userId: who.userId ?? USER, deviceId: who.deviceId ?? DEVICE, accessToken: 'unused', dataDir, passphrase,
    wantedTypes: null, maxPendingUndecryptable: 10, pendingUndecryptableMaxAgeMs: 60_000,
  };
}

/** Opens the store the way the crypto actor does, records the owner as the actor does, returns its identity keys; closes it. */
async function openAndClose(dataDir: string, passphrase: string): Promise<{ keys: string; storeKey: string | undefined; fresh: boolean }> {
  const s = await openCryptoStore(W, config(dataDir, passphrase), STORE, (e) => assert.fail(`journal failure: ${e.message}`));
  try {
    kvSet(s.journal.db, 'owner', JSON.stringify({ userId: USER, deviceId: DEVICE }));
    return { keys: keysOf(s), storeKey: kvGet(s.journal.db, 'storeKey'), fresh: s.freshStore };
  } finally {
    await closeStore(s);
  }
}

function keysOf(s: Pick<OpenedStore, 'machine'>): string {
  const k = s.machine.identityKeys;
  return `${k.curve25519.toBase64()} ${k.ed25519.toBase64()}`;
}

async function closeStore(s: OpenedStore): Promise<void> {
  s.machine.close();
  await s.journal.close();
}

/** The open's refusal, checked to be the wrong-passphrase one with none of `secrets` in it (message, cause, inspect). */
async function refusal(dataDir: string, passphrase: string, secrets: string[]): Promise<HalcyonError> {
  const err = (await openCryptoStore(W, config(dataDir, passphrase), STORE, () => {}).then(
    async (s) => {
      await closeStore(s);
      return assert.fail('the store opened with a wrong passphrase');
    },
    (e: unknown) => e,
  )) as HalcyonError;
  assert.equal(err.code, 'HALCYON_CRYPTO_STORE', `got ${err.code}: ${err.message}`);
  assert.match(err.message, WRONG_PASSPHRASE);
  const shown = `${err.message} ${inspect(err, { depth: 10 })} ${JSON.stringify(err)}`;
  for (const s of secrets) assert.ok(!shown.includes(s), 'no secret in the error');
  return err;
}

/** Makes a store the way versions before raw keys did: crypto-wasm's `initialize` with the passphrase, no `storeKey` record. */
async function legacyStore(dataDir: string, passphrase: string): Promise<string> {
  const journal = await IdbJournal.open(dataDir, 'crypto.sqlite', `${STORE}::`, () => {});
  try {
    const m = await W.OlmMachine.initialize(new W.UserId(USER), new W.DeviceId(DEVICE), STORE, passphrase);
    kvSet(journal.db, 'owner', JSON.stringify({ userId: USER, deviceId: DEVICE }));
    const keys = keysOf({ machine: m });
    m.close();
    return keys;
  } finally {
    await journal.close();
  }
}

/** Whether crypto-wasm's passphrase path (the old one) opens the store: it must not, for a store keyed raw. */
async function opensWithPassphrase(dataDir: string, passphrase: string): Promise<boolean> {
  const journal = await IdbJournal.open(dataDir, 'crypto.sqlite', `${STORE}::`, () => {});
  try {
    const m = await W.OlmMachine.initialize(new W.UserId(USER), new W.DeviceId(DEVICE), STORE, passphrase);
    m.close();
    return true;
  } catch {
    return false;
  } finally {
    await journal.close();
  }
}

test("a new store with the data dir's generated crypto.key: a raw key by HKDF (recorded raw-v1), same identity on reopen, the old passphrase path does not open it", async (t) => {
  const dir = tempDir(t);
  const secret = storePassphrase(dir);
  const first = await openAndClose(dir, secret);
  assert.equal(first.fresh, true);
  assert.deepEqual(JSON.parse(first.storeKey ?? 'null'), { format: 'raw-v1', kdf: 'hkdf-sha256' });
  const again = await openAndClose(dir, secret);
  assert.equal(again.fresh, false);
  assert.equal(again.keys, first.keys, 'same identity keys after reopening');
  assert.equal(again.storeKey, first.storeKey);
  assert.equal(await opensWithPassphrase(dir, secret), false, "the store is not keyed by crypto-wasm's passphrase KDF");
  // A wrong secret is refused, and the store still opens with the right one afterwards.
  await refusal(dir, 'not-the-data-dirs-crypto-key-but-as-long-as-it', [secret]);
  assert.equal((await openAndClose(dir, secret)).keys, first.keys);
});

test('a new store with a passphrase the bot gives: a raw key by scrypt with a random salt kept in crypto.sqlite; same identity on reopen; a wrong one refused', async (t) => {
  const [dir, other] = [tempDir(t), tempDir(t)];
  const pass = 'a weak bot passphrase';
  const first = await openAndClose(dir, pass);
  const rec = JSON.parse(first.storeKey ?? 'null') as { format: string; kdf: string; salt: string; N: number; r: number; p: number };
  assert.deepEqual({ ...rec, salt: typeof rec.salt }, { format: 'raw-v1', kdf: 'scrypt', N: 2 ** 15, r: 8, p: 1, salt: 'string' });
  assert.equal(Buffer.from(rec.salt, 'base64url').length, 16, '128 bits of salt');
  const otherRec = JSON.parse((await openAndClose(other, pass)).storeKey ?? 'null') as { salt: string };
  assert.notEqual(otherRec.salt, rec.salt, 'each store has its own salt');
  assert.equal((await openAndClose(dir, pass)).keys, first.keys, 'same identity keys after reopening');
  assert.equal(await opensWithPassphrase(dir, pass), false, "the store is not keyed by crypto-wasm's passphrase KDF");
  await refusal(dir, 'a weak bot passphrasE', [pass, 'a weak bot passphrasE']);
  // The data dir's crypto.key is not this store's secret either.
  await refusal(dir, storePassphrase(dir), [pass]);
  assert.equal((await openAndClose(dir, pass)).keys, first.keys, 'the refusals left the store intact');
});

for (const kind of ['crypto.key', 'a given passphrase'] as const) {
  test(`a store made by earlier versions (passphrase KDF, no record; ${kind}) opens as before, stays in its format, and a wrong passphrase is refused`, async (t) => {
    const dir = tempDir(t);
    const pass = kind === 'crypto.key' ? storePassphrase(dir) : 'the old passphrase';
    const keys = await legacyStore(dir, pass);
    const opened = await openAndClose(dir, pass);
    assert.equal(opened.keys, keys, 'the same identity: the old store, not a new one');
    assert.equal(opened.fresh, false);
    assert.equal(opened.storeKey, undefined, 'no raw-key record on a passphrase store');
    await refusal(dir, 'the wrong passphrase', [pass]);
    assert.equal(await opensWithPassphrase(dir, pass), true, 'still a passphrase store');
    assert.equal((await openAndClose(dir, pass)).keys, keys);
  });
}

test('a raw-key record written but the store never created (a crash between the two): the next open creates it with the recorded key', async (t) => {
  const dir = tempDir(t);
  const pass = 'crash between record and store';
  const first = await openAndClose(dir, pass);
  assert.match(first.storeKey ?? '', /"kdf":"scrypt"/);
  // Remove the store's IndexedDB rows, keep the kv record: what a crash right after recording it leaves.
  const { DatabaseSync } = await import('node:sqlite');
  const db = new DatabaseSync(join(dir, 'crypto.sqlite'));
  db.exec("DELETE FROM idb_record; DELETE FROM idb_store; DELETE FROM idb_db; DELETE FROM kv WHERE k = 'owner'");
  db.close();
  const again = await openAndClose(dir, pass);
  assert.equal(again.storeKey, first.storeKey, 'the recorded salt is kept');
  assert.equal(again.fresh, true);
  assert.equal((await openAndClose(dir, pass)).keys, again.keys);
});

test('a key record this version does not know (a newer version\'s): refused with HALCYON_CRYPTO_STORE saying so; the store is left as it was', async (t) => {
  const dir = tempDir(t);
  const secret = storePassphrase(dir);
  const first = await openAndClose(dir, secret);
  const { DatabaseSync } = await import('node:sqlite');
  const db = new DatabaseSync(join(dir, 'crypto.sqlite'));
  const newer = JSON.stringify({ format: 'raw-v2', kdf: 'something-new' });
  db.prepare("UPDATE kv SET v = ? WHERE k = 'storeKey'").run(newer);
  db.close();
  const err = (await openCryptoStore(W, config(dir, secret), STORE, () => {}).then(
    () => assert.fail('opened'),
    (e: unknown) => e,
  )) as HalcyonError;
  assert.equal(err.code, 'HALCYON_CRYPTO_STORE', err.message);
  assert.match(err.message, /key record .* is not one this version knows .*newer halcyon-matrix/);
  assert.ok(!err.message.includes(secret));
  const db2 = new DatabaseSync(join(dir, 'crypto.sqlite'));
  db2.prepare("UPDATE kv SET v = ? WHERE k = 'storeKey'").run(first.storeKey!);
  db2.close();
  assert.equal((await openAndClose(dir, secret)).keys, first.keys, 'nothing was lost');
});

test("another user's store is refused with HALCYON_STORE_MISMATCH before any key is derived, on the raw-key format", async (t) => {
  const dir = tempDir(t);
  const secret = storePassphrase(dir);
  await openAndClose(dir, secret);
  const err = (await openCryptoStore(W, config(dir, secret, { userId: '@someone-else:example.org' }), STORE, () => {}).then(
    () => assert.fail('opened'),
    (e: unknown) => e,
  )) as HalcyonError;
  assert.equal(err.code, 'HALCYON_STORE_MISMATCH', err.message);
  assert.ok(!inspect(err, { depth: 10 }).includes(readFileSync(join(dir, 'crypto.key'), 'utf8').trim()));
});
