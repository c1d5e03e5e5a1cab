/**
 * The crypto store's key against a real Synapse and an independent peer (matrix-js-sdk, Rust crypto): a store the
 * login creates is keyed with a raw key (recorded in crypto.sqlite's kv `storeKey`), one made by earlier versions
 * (crypto-wasm's passphrase KDF, no record) keeps opening as before; on both, the Olm/Megolm state survives a
 * restart (a message the peer encrypted while the bot was stopped decrypts) and a wrong passphrase is refused with
 * HALCYON_CRYPTO_STORE. Each with the crypto actor on its worker and in-thread.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { after, before, test, type TestContext } from 'node:test';
import * as W from '@matrix-org/matrix-sdk-crypto-wasm';
import { Client, decodeToken, type ClientOptions, type HalcyonError } from '../../src/index.ts';
import { IdbJournal } from '../../src/crypto/idb-journal.ts';
import { kvSet, storePassphrase } from '../../src/store.ts';
import { newJsPeer } from '../harness/js-peer.ts';
import { testHomeserver, type Homeserver } from '../harness/synapse.ts';
import { newBot, newClient, recordingClient, tempDataDir, WAIT_MS, waitUntil } from './util.ts';

let hs: Homeserver;
before(async () => {
  hs = await testHomeserver();
});
after(async () => {
  await hs?.stop();
});

/** The data dir's crypto store record `storeKey` (how its key is made), or null for none. */
function storeKeyRecord(dataDir: string): Record<string, unknown> | null {
  const db = new DatabaseSync(join(dataDir, 'crypto.sqlite'), { readOnly: true });
  try {
    const v = (db.prepare("SELECT v FROM kv WHERE k = 'storeKey'").get() as { v: string } | undefined)?.v;
    return v === undefined ? null : (JSON.parse(v) as Record<string, unknown>);
  } finally {
    db.close();
  }
}

/**
 * A bot's run, a stop, a restart on the same data dir: the peer's encrypted message before the stop, and the one it
 * sent while the bot was stopped (with the room session the bot's store must have kept), both reach handlers
 * decrypted, with the same identity keys.
 */
async function restartDecrypts(t: TestContext, dataDir: string, token: string, opts: Partial<ClientOptions>): Promise<void> {
  const userId = decodeToken(token).userId;
  const first = recordingClient(t, dataDir, opts);
  await first.client.run(token);
  const peer = await newJsPeer(t, hs);
  const roomId = await peer.createEncryptedRoom({ invite: [userId] });
  await peer.waitForMember(roomId, userId, 'join');
  const beforeId = await peer.sendText(roomId, 'before the restart');
  await waitUntil(() => first.messages.some((m) => m.eventId === beforeId), WAIT_MS, `the message before the restart: ${first.dump()}`);
  const keys = first.client.whoami().identityKeys;
  await first.client.stop();

  const whileId = await peer.sendText(roomId, 'while stopped');
  const second = recordingClient(t, dataDir, opts);
  await second.client.run(token);
  assert.deepEqual(second.client.whoami().identityKeys, keys, 'the same identity after the restart');
  await waitUntil(() => second.messages.some((m) => m.eventId === whileId), WAIT_MS, `the message sent while stopped: ${second.dump()}`);
  const msg = second.messages.find((m) => m.eventId === whileId)!;
  assert.equal(msg.isEncrypted, true);
  assert.equal(msg.body, 'while stopped');
  assert.deepEqual(second.decryptionErrors, [], second.dump());
  assert.deepEqual([...first.errors, ...second.errors], []);
  await second.client.stop();
}

/** run() on `dataDir` with `passphrase`: refused with HALCYON_CRYPTO_STORE, the passphrase not echoed. */
async function refusedWith(t: TestContext, dataDir: string, token: string, opts: Partial<ClientOptions>, passphrase: string): Promise<void> {
  const c = newClient(t, dataDir, { ...opts, encryption: { passphrase } });
  const err = (await c.run(token).then(() => null, (e: unknown) => e)) as HalcyonError | null;
  assert.equal(err?.code, 'HALCYON_CRYPTO_STORE', `run() with a wrong passphrase: ${err?.code} ${err?.message}`);
  assert.match(err.message, /wrong passphrase/);
  assert.ok(!err.message.includes(passphrase), 'the passphrase is not echoed');
}

for (const threads of ['worker', 'inline'] as const) {
  test(`a new data dir with default options (threads: ${threads}): the login's store is keyed raw (HKDF of crypto.key, raw-v1) and keeps its Olm/Megolm state across a restart; a wrong passphrase is refused`, async (t) => {
    const bot = await newBot(t, hs, { threads });
    assert.deepEqual(storeKeyRecord(bot.dataDir), { format: 'raw-v1', kdf: 'hkdf-sha256' }, 'the login recorded a raw-key store');
    await restartDecrypts(t, bot.dataDir, bot.token, { threads });
    await refusedWith(t, bot.dataDir, bot.token, { threads }, 'not the data dir key');
    assert.deepEqual(storeKeyRecord(bot.dataDir), { format: 'raw-v1', kdf: 'hkdf-sha256' });
  });

  test(`a store made by earlier versions (crypto-wasm's passphrase KDF, no record; threads: ${threads}) still opens, keeps its state across a restart, stays in its format; a wrong passphrase is refused`, async (t) => {
    const user = await hs.registerUser();
    const dataDir = tempDataDir(t);
    // A login without the data dir creates no store: the old code's store is made here, as the old crypto actor did.
    const token = await Client.login({ homeserver: hs.baseUrl, user: user.localpart, password: user.password });
    const { userId, deviceId } = decodeToken(token);
    // The store name the crypto actor gives the data dir (src/crypto/actor.ts).
    const storeName = `halcyon-${createHash('sha256').update(dataDir).digest('hex').slice(0, 16)}`;
    const journal = await IdbJournal.open(dataDir, 'crypto.sqlite', `${storeName}::`, () => {});
    const machine = await W.OlmMachine.initialize(new W.UserId(userId), new W.DeviceId(deviceId), storeName, storePassphrase(dataDir));
    kvSet(journal.db, 'owner', JSON.stringify({ userId, deviceId }));
    const oldKeys = machine.identityKeys.ed25519.toBase64();
    machine.close();
    await journal.close();

    const probe = newClient(t, dataDir, { threads });
    await probe.run(token);
    assert.equal(probe.whoami().identityKeys?.ed25519, oldKeys, 'the old store opened: the same identity');
    await probe.stop();
    await restartDecrypts(t, dataDir, token, { threads });
    assert.equal(storeKeyRecord(dataDir), null, 'still a passphrase store (no record)');
    await refusedWith(t, dataDir, token, { threads }, 'the wrong passphrase');
  });
}

test('a passphrase the bot gives: the store is keyed raw by scrypt with its salt recorded, keeps its state across a restart; a wrong passphrase is refused', async (t) => {
  const encryption = { passphrase: 'the bot passphrase' };
  const bot = await newBot(t, hs, { encryption });
  const rec = storeKeyRecord(bot.dataDir);
  assert.equal(rec?.format, 'raw-v1');
  assert.equal(rec?.kdf, 'scrypt');
  assert.equal(typeof rec?.salt, 'string');
  await restartDecrypts(t, bot.dataDir, bot.token, { encryption });
  await refusedWith(t, bot.dataDir, bot.token, {}, 'the bot passphrasE');
  assert.deepEqual(storeKeyRecord(bot.dataDir), rec, 'the record is unchanged');
});
