/**
 * Login on an account whose cryptographic identity exists already, and secret storage interop with matrix-js-sdk
 * (the Rust crypto of Element Web), over a real Synapse: an identity set up by js-sdk is never reset unless asked
 * (a coded warning says the device is unsigned); js-sdk's recovery key unlocks its secret storage and key backup
 * for the bot; a wrong or malformed recovery key is refused; `resetCrossSigning` replaces the identity through
 * user-interactive auth; and secret storage written by Halcyon is read by js-sdk.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { ed25519PublicKey } from '../../src/crypto/identity.ts';
import { decodeRecoveryKey, encodeRecoveryKey, newSecretStorageKey } from '../../src/crypto/secret-storage.ts';
import { decodeToken, type HalcyonError, type Logger, loginWithDetails, type Message } from '../../src/index.ts';
import { type JsPeer, newJsPeer } from '../harness/js-peer.ts';
import { OlmPeer } from '../harness/olm-peer.ts';
import { testHomeserver, type Homeserver } from '../harness/synapse.ts';
import { defer, loggingProxy, newClient, tempDataDir, WAIT_MS, waitUntil } from './util.ts';

let hs: Homeserver;
before(async () => {
  hs = await testHomeserver();
});
after(async () => {
  await hs?.stop();
});

/** A client-server API request with the peer's access token; resolves with the JSON answer. */
async function asPeer(peer: JsPeer, method: string, path: string, body?: unknown): Promise<any> {
  const res = await fetch(`${hs.baseUrl}/_matrix/client/v3${path}`, {
    method,
    headers: { authorization: `Bearer ${peer.client.getAccessToken()}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  const json = (await res.json()) as unknown;
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${JSON.stringify(json)}`);
  return json;
}

/** The cross-signing public keys the server holds for the peer's user (asked with the peer's token). */
async function serverKeys(peer: JsPeer): Promise<{ master: string | null; selfSigning: string | null; userSigning: string | null }> {
  const res = (await asPeer(peer, 'POST', '/keys/query', { device_keys: { [peer.userId]: [] } })) as Record<string, Record<string, { keys: Record<string, string> }> | undefined>;
  const key = (field: string) => {
    const keys = res[field]?.[peer.userId]?.keys;
    return keys ? (Object.values(keys)[0] ?? null) : null;
  };
  return { master: key('master_keys'), selfSigning: key('self_signing_keys'), userSigning: key('user_signing_keys') };
}

/** The IDs of the devices of the peer's user. */
async function deviceIds(peer: JsPeer): Promise<string[]> {
  return ((await asPeer(peer, 'GET', '/devices')) as { devices: Array<{ device_id: string }> }).devices.map((d) => d.device_id).sort();
}

/** A logger keeping what is logged at warn and error. */
function capture(): Logger & { lines: unknown[] } {
  const lines: unknown[] = [];
  return { lines, debug() {}, info() {}, warn: (o) => void lines.push(o), error: (o) => void lines.push(o) };
}

test("an identity set up by js-sdk: a login without the recovery key leaves it alone and warns (HALCYON_CROSS_SIGNING_UNAVAILABLE); with js-sdk's recovery key the device is signed and js-sdk's key backup restored", async (t) => {
  const peer = await newJsPeer(t, hs); // the account's session in "Element"
  const { recoveryKey } = await peer.bootstrapIdentity();
  const before = await serverKeys(peer);
  assert.ok(before.master);
  // A message from someone else, received by the account's js-sdk session, whose room key js-sdk backs up (as it does
  // for keys it receives): only the backup will give it to the bot's device, which does not exist yet.
  const other = await OlmPeer.start(hs);
  defer(t, () => other.stop());
  const roomId = await other.createEncryptedRoom([peer.userId]);
  await peer.waitForMember(roomId, peer.userId, 'invite');
  await peer.joinRoom(roomId);
  const sentId = await other.sendText(roomId, 'written yesterday');
  await peer.waitForMessage(roomId, (m) => m.eventId === sentId && m.body === 'written yesterday');
  await waitUntil(async () => ((await asPeer(peer, 'GET', '/room_keys/version')) as { count: number }).count >= 1, 3 * WAIT_MS, 'js-sdk to back its room key up');

  const dataDir = tempDataDir(t);
  const logger = capture();
  const plain = await loginWithDetails({ homeserver: hs.baseUrl, user: peer.userId, password: peer.password, dataDir, logger });
  const device = decodeToken(plain.token).deviceId;
  assert.equal(plain.crossSigning, 'unsigned');
  assert.equal(plain.deviceSigned, false);
  assert.equal(plain.masterKey, before.master);
  assert.deepEqual(plain.warnings.map((w) => w.code), ['HALCYON_CROSS_SIGNING_UNAVAILABLE']);
  assert.match(plain.warnings[0]!.message, new RegExp(`${device}.*not cross-signed.*recovery key.*resetCrossSigning`, 's'), 'the warning says what to do');
  assert.deepEqual(logger.lines, plain.warnings, 'and it is logged');
  assert.deepEqual(await serverKeys(peer), before, 'the identity was not reset');
  assert.equal(plain.recoveryKey, null);
  assert.equal(existsSync(join(dataDir, 'recovery-key.txt')), false);

  // The same data dir (so the same device), now with the recovery key js-sdk made.
  const signed = await loginWithDetails({ homeserver: hs.baseUrl, user: peer.userId, password: peer.password, dataDir, recoveryKey });
  assert.equal(decodeToken(signed.token).deviceId, device, 'the device of the first login');
  assert.deepEqual(signed.warnings, []);
  assert.equal(signed.crossSigning, 'imported');
  assert.equal(signed.deviceSigned, true);
  assert.deepEqual(await serverKeys(peer), before, 'the same identity');
  assert.ok((signed.keyBackup?.importedKeys ?? 0) >= 1, `js-sdk's backup restored (${JSON.stringify(signed.keyBackup)})`);
  await waitUntil(() => peer.isSignedByOwner(peer.userId, device), WAIT_MS, "js-sdk to see the bot's device signed by the account");

  // The bot reads the message of before its device existed, with the key from js-sdk's backup.
  const bot = newClient(t, dataDir, { deliverInitialTimeline: true });
  const messages: Message[] = [];
  const errors: HalcyonError[] = [];
  bot.on('message', (m) => void messages.push(m));
  bot.on('error', (e) => void errors.push(e));
  await bot.run(signed.token);
  const m = await waitUntil(() => messages.find((x) => x.eventId === sentId), WAIT_MS, 'the message of before the device, decrypted');
  assert.equal(m.body, 'written yesterday');
  assert.equal(m.isEncrypted, true);
  assert.deepEqual(errors, []);
});

test("a recovery key that is not the account's is refused with HALCYON_RECOVERY_KEY_INVALID: a malformed one before logging in, a wrong one after; the identity is untouched", async (t) => {
  const peer = await newJsPeer(t, hs);
  await peer.bootstrapIdentity();
  const before = await serverKeys(peer);
  const devices = await deviceIds(peer);
  const dataDir = tempDataDir(t);
  const login = (recoveryKey: string) => loginWithDetails({ homeserver: hs.baseUrl, user: peer.userId, password: peer.password, dataDir, recoveryKey, logger: capture() });

  const typo = await login('EsTp RvZT njck 8Yrh RAtw XLS8 4Nr2 r9S9 LGAW DaEx VAPB vLRk').then(() => null, (e: HalcyonError) => e);
  assert.equal(typo?.code, 'HALCYON_RECOVERY_KEY_INVALID', String(typo));
  assert.match(typo.message, /parity/);
  assert.deepEqual(await deviceIds(peer), devices, 'a malformed key fails before the login: no device was made');

  const wrong = await login(encodeRecoveryKey(newSecretStorageKey())).then(() => null, (e: HalcyonError) => e);
  assert.equal(wrong?.code, 'HALCYON_RECOVERY_KEY_INVALID', String(wrong));
  assert.match(wrong.message, /not the key of .*secret storage/);
  assert.deepEqual(await serverKeys(peer), before, 'the identity is untouched');
});

test("resetCrossSigning replaces an existing identity: the upload answers the server's user-interactive auth with the password; new secret storage and key backup", async (t) => {
  const peer = await newJsPeer(t, hs);
  await peer.bootstrapIdentity();
  const before = await serverKeys(peer);
  const oldBackup = ((await asPeer(peer, 'GET', '/room_keys/version')) as { version: string }).version;
  const proxy = await loggingProxy(t, hs.baseUrl);
  const dataDir = tempDataDir(t);
  const d = await loginWithDetails({ homeserver: proxy.url, user: peer.userId, password: peer.password, dataDir, resetCrossSigning: true, logger: capture() });
  assert.deepEqual(d.warnings, []);
  assert.equal(d.crossSigning, 'reset');
  assert.equal(d.deviceSigned, true);
  assert.ok(d.masterKey && d.masterKey !== before.master, 'a new master key');
  assert.equal((await serverKeys(peer)).master, d.masterKey);
  const uploads = proxy.log.filter((l) => l.startsWith('POST /_matrix/client/v3/keys/device_signing/upload'));
  assert.equal(uploads.length, 2, `the first upload got the server's 401 (its UIA session), the second carried the password: ${proxy.log.join(', ')}`);
  assert.ok(d.recoveryKey && existsSync(join(dataDir, 'recovery-key.txt')), 'a new recovery key, written to its file');
  assert.ok(d.keyBackup && d.keyBackup.version !== oldBackup, 'a new key backup version');
});

test('secret storage written by Halcyon is read by matrix-js-sdk with the recovery key: the cross-signing keys (which js-sdk imports) and the backup key', async (t) => {
  const user = await hs.registerUser();
  const dataDir = tempDataDir(t);
  const d = await loginWithDetails({ homeserver: hs.baseUrl, user: user.localpart, password: user.password, dataDir });
  assert.equal(d.crossSigning, 'created');
  // Another session of the bot's account, in js-sdk, given the recovery key.
  const j = await newJsPeer(t, hs, { login: { user: user.userId, password: user.password }, crossSign: false });
  const key = decodeRecoveryKey(d.recoveryKey!);
  j.useSecretStorageKey(key);
  const [keyId, info] = (await j.call((c) => c.secretStorage.getKey()))!;
  assert.equal(await j.call((c) => c.secretStorage.checkKey(key as Uint8Array<ArrayBuffer>, info)), true, "js-sdk's key check accepts the recovery key");
  const server = await serverKeys(j);
  for (const [name, expected] of [['m.cross_signing.master', server.master], ['m.cross_signing.self_signing', server.selfSigning], ['m.cross_signing.user_signing', server.userSigning]] as const) {
    const secret = await j.call((c) => c.secretStorage.get(name));
    assert.ok(secret, `${name} decrypts in js-sdk`);
    assert.equal(ed25519PublicKey(secret), expected, `${name} is the private key of the account's public one`);
  }
  // Throws unless the backup key in secret storage is the key of the server's current backup version.
  await j.call((c) => c.getCrypto()!.loadSessionBackupPrivateKeyFromSecretStorage());
  const backup = await j.call((c) => c.getCrypto()!.checkKeyBackupAndEnable());
  assert.equal(backup?.backupInfo.version, d.keyBackup!.version);
  // js-sdk's own bootstrap takes the cross-signing keys from this secret storage (no new identity).
  await j.call((c) => c.getCrypto()!.bootstrapCrossSigning({}));
  const status = await j.call((c) => c.getCrypto()!.getCrossSigningStatus());
  assert.deepEqual(status.privateKeysCachedLocally, { masterKey: true, selfSigningKey: true, userSigningKey: true });
  assert.equal((await serverKeys(j)).master, d.masterKey, 'the identity is the one Halcyon made');
  assert.equal((await j.call((c) => c.getCrypto()!.getSecretStorageStatus())).ready, true, `js-sdk finds secret storage complete (default key ${keyId})`);
});
