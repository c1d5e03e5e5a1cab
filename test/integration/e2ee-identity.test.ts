/**
 * The bot's cryptographic identity over a real Synapse, with matrix-js-sdk peers: cross-signing set up by
 * `Client.login`, so that a peer excluding insecure devices (MSC4153) talks with the bot; recovery of the identity
 * and of the room keys (key backup) on a wiped data dir with the recovery key; and events kept for a late key
 * delivered when the key turns up in the backup.
 */
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test, type TestContext } from 'node:test';
import { EventShieldReason } from 'matrix-js-sdk/lib/crypto-api/index.js';
import { Client, decodeToken, type HalcyonError, loginWithDetails, type Message } from '../../src/index.ts';
import { newJsPeer } from '../harness/js-peer.ts';
import { OlmPeer } from '../harness/olm-peer.ts';
import { testHomeserver, type Homeserver, type TestUser } from '../harness/synapse.ts';
import { defer, newClient, recordingClient, tempDataDir, WAIT_MS, waitUntil } from './util.ts';

let hs: Homeserver;
before(async () => {
  hs = await testHomeserver();
});
after(async () => {
  await hs?.stop();
});

/** A bot client on `dataDir`, recording its messages, decryption errors and errors. */
function botOn(t: TestContext, dataDir: string, opts: Parameters<typeof newClient>[2] = {}) {
  return recordingClient(t, dataDir, opts);
}

/** Waits for the bot to have a message matching `pred`; shows what it has on timeout. */
async function botGot(bot: ReturnType<typeof botOn>, pred: (m: Message) => boolean, what: string): Promise<Message> {
  try {
    return await waitUntil(() => bot.messages.find(pred), WAIT_MS, what);
  } catch (e) {
    const seen = bot.messages.map((m) => m.body);
    console.error('DEBUG', what, { seen, decryptionErrors: bot.decryptionErrors, errors: bot.errors, status: await bot.client.cryptoStatus().catch((x) => String(x)) });
    throw e;
  }
}

/** The master cross-signing key the server holds for `user` (asked with its own token), or null. */
async function serverMasterKey(user: TestUser): Promise<string | null> {
  const res = await fetch(`${hs.baseUrl}/_matrix/client/v3/keys/query`, {
    method: 'POST',
    headers: { authorization: `Bearer ${user.accessToken}`, 'content-type': 'application/json' },
    body: JSON.stringify({ device_keys: { [user.userId]: [] } }),
  });
  const keys = ((await res.json()) as { master_keys?: Record<string, { keys: Record<string, string> }> }).master_keys?.[user.userId]?.keys;
  return keys ? (Object.values(keys)[0] ?? null) : null;
}

test('a js-sdk peer excluding insecure devices (MSC4153) talks with a bot set up by Client.login: both directions decrypt, and the bot\'s messages carry no "unsigned device" shield', async (t) => {
  const user = await hs.registerUser();
  const dataDir = tempDataDir(t);
  const token = await Client.login({ homeserver: hs.baseUrl, user: user.localpart, password: user.password, dataDir });
  const botDevice = decodeToken(token).deviceId;
  const bot = botOn(t, dataDir);
  bot.client.on('message', async (m) => {
    if (m.body === 'ping') await m.reply('pong');
  });
  await bot.client.run(token);

  // The peer is a strict client: cross-signed itself, and excluding devices their owner did not sign.
  const peer = await newJsPeer(t, hs);
  await peer.bootstrapIdentity();
  peer.excludeInsecureDevices();
  const roomId = await peer.createEncryptedRoom({ invite: [user.userId] });
  await peer.waitForMember(roomId, user.userId, 'join');
  // Now a member, the bot's user is one whose devices the peer tracks.
  await waitUntil(() => peer.isSignedByOwner(user.userId, botDevice), WAIT_MS, "the peer to see the bot's device as cross-signed by the bot's account");
  await peer.sendText(roomId, 'ping');
  const ping = await botGot(bot, (m) => m.body === 'ping', "the peer's ping, decrypted by the bot");
  assert.equal(ping.isEncrypted, true);

  const pong = await peer.waitForMessage(roomId, (m) => m.sender === user.userId);
  assert.equal(pong.encrypted, true);
  assert.equal(pong.decryptionFailure, undefined, `the peer could not decrypt the bot's reply: ${pong.decryptionFailure}`);
  assert.equal(pong.body, 'pong');
  const shield = await peer.shield(roomId, pong.eventId);
  assert.ok(shield, 'js-sdk has encryption info for the reply');
  assert.notEqual(shield.reason, EventShieldReason.UNSIGNED_DEVICE, 'no "unsigned device" shield');
  assert.notEqual(shield.reason, EventShieldReason.UNKNOWN_DEVICE, 'no "unknown device" shield');
  assert.deepEqual(bot.decryptionErrors, []);
  assert.deepEqual(bot.errors, []);
});

test('recovery: a wiped data dir logs in again with the recovery key: same identity, the new device signed, and the messages from before the wipe decrypted from the key backup', async (t) => {
  const user = await hs.registerUser();
  const dataDir = tempDataDir(t);
  const first = await loginWithDetails({ homeserver: hs.baseUrl, user: user.localpart, password: user.password, dataDir });
  assert.equal(first.crossSigning, 'created');
  assert.equal(first.deviceSigned, true);
  assert.ok(first.recoveryKey && first.masterKey && first.keyBackup);
  const file = join(dataDir, 'recovery-key.txt');
  assert.equal(first.recoveryKeyFile, file);
  assert.equal(readFileSync(file, 'utf8'), `${first.recoveryKey}\n`, 'the recovery key is in its file');
  assert.equal(statSync(file).mode & 0o777, 0o600, 'the file is 0600');
  assert.equal(await serverMasterKey(user), first.masterKey);

  const a = botOn(t, dataDir);
  await a.client.run(first.token);
  const peer = await newJsPeer(t, hs);
  await peer.bootstrapIdentity(); // a client excluding insecure devices must be cross-signed itself to send
  peer.excludeInsecureDevices();
  const roomId = await peer.createEncryptedRoom({ invite: [user.userId] });
  await peer.waitForMember(roomId, user.userId, 'join');
  await peer.sendText(roomId, 'before the wipe, one');
  await peer.sendText(roomId, 'before the wipe, two');
  await botGot(a, (m) => m.body === 'before the wipe, two', 'the second message, on the first device');
  // The room keys reach the backup as they arrive: wait until every key the store holds is backed up.
  await waitUntil(async () => {
    const b = (await a.client.cryptoStatus())?.keyBackup;
    return b && b.version === first.keyBackup!.version && b.totalKeys > 0 && b.backedUpKeys === b.totalKeys;
  }, WAIT_MS, 'the room keys to be backed up');
  await a.client.stop();

  // The disk is lost: a new data dir (same path, empty) logs in with the recovery key, read back from the file.
  const recoveryKey = readFileSync(file, 'utf8').trim();
  rmSync(dataDir, { recursive: true, force: true });
  mkdirSync(dataDir, { mode: 0o700 });
  const again = await loginWithDetails({ homeserver: hs.baseUrl, user: user.localpart, password: user.password, dataDir, recoveryKey });
  const newDevice = decodeToken(again.token).deviceId;
  assert.notEqual(newDevice, decodeToken(first.token).deviceId, 'a new device');
  assert.deepEqual(again.warnings, []);
  assert.equal(again.crossSigning, 'imported');
  assert.equal(again.masterKey, first.masterKey, 'the same cross-signing identity');
  assert.equal(await serverMasterKey(user), first.masterKey, 'the identity on the server is unchanged');
  assert.equal(again.deviceSigned, true);
  assert.equal(again.recoveryKey, null, 'no new recovery key');
  assert.equal(again.keyBackup?.version, first.keyBackup!.version);
  assert.ok(again.keyBackup!.importedKeys >= 1, `room keys restored from the backup (${again.keyBackup!.importedKeys})`);

  // The restored bot reads the history of before the wipe (its first sync's timeline) with the restored keys.
  const b = botOn(t, dataDir, { deliverInitialTimeline: true });
  b.client.on('message', async (m) => {
    if (m.body === 'after the wipe') await m.reply('still here');
  });
  await b.client.run(again.token);
  for (const body of ['before the wipe, one', 'before the wipe, two']) {
    const m = await botGot(b, (x) => x.body === body, `"${body}" decrypted on the new device`);
    assert.equal(m.isEncrypted, true);
  }
  await waitUntil(() => peer.isSignedByOwner(user.userId, newDevice), WAIT_MS, "the peer to see the bot's new device as signed");
  await peer.waitForDevice(user.userId, newDevice);
  await peer.sendText(roomId, 'after the wipe');
  await botGot(b, (m) => m.body === 'after the wipe', 'a new message on the new device');
  const reply = await peer.waitForMessage(roomId, (m) => m.sender === user.userId && m.body === 'still here');
  assert.equal(reply.decryptionFailure, undefined);
  assert.deepEqual(b.decryptionErrors, []);
  assert.deepEqual(b.errors, []);
});

test('an event kept for a late key is delivered when its key turns up in the key backup (backed up by another device of the bot)', async (t) => {
  const user = await hs.registerUser();
  const dirA = tempDataDir(t);
  const dirB = tempDataDir(t);
  const a = await loginWithDetails({ homeserver: hs.baseUrl, user: user.localpart, password: user.password, dataDir: dirA });
  const b = await loginWithDetails({ homeserver: hs.baseUrl, user: user.localpart, password: user.password, dataDir: dirB, recoveryKey: a.recoveryKey! });
  assert.equal(b.crossSigning, 'imported');
  const deviceA = decodeToken(a.token).deviceId;
  const botA = botOn(t, dirA);
  const botB = botOn(t, dirB);
  await botA.client.run(a.token);
  await botB.client.run(b.token);

  const peer = await OlmPeer.start(hs);
  defer(t, () => peer.stop());
  const roomId = await peer.createEncryptedRoom([user.userId]);
  await waitUntil(async () => (await peer.joinedMembers(roomId)).includes(user.userId), WAIT_MS, 'the bot to join');
  // The room key is made for both devices of the bot and held back; the event is sent without it.
  const held = await peer.prepareRoomKey(roomId);
  const { eventId } = await peer.sendEncrypted(roomId, 'm.room.message', { msgtype: 'm.text', body: 'key from the backup' });
  await waitUntil(() => botA.decryptionErrors.find((d) => d.eventId === eventId), WAIT_MS, 'device A to keep the event for a late key');
  await waitUntil(() => botB.decryptionErrors.find((d) => d.eventId === eventId), WAIT_MS, 'device B to keep the event for a late key');
  assert.equal(botA.decryptionErrors[0]!.willRetry, true);
  // A stops with the event kept; B alone gets the key, decrypts the event and backs the key up.
  await botA.client.stop();
  for (const req of held.requests) {
    const body = JSON.parse(req.body) as { messages: Record<string, Record<string, unknown>> };
    const mine = body.messages[user.userId] ?? {};
    const forB = Object.fromEntries(Object.entries(mine).filter(([device]) => device !== deviceA));
    if (Object.keys(forB).length === 0) continue;
    await peer.http.request('PUT', `/sendToDevice/${encodeURIComponent(req.event_type)}/${encodeURIComponent(`${req.txn_id}-b`)}`, { messages: { [user.userId]: forB } });
  }
  await botGot(botB, (m) => m.body === 'key from the backup', 'device B to decrypt the event with the late key');
  await waitUntil(async () => {
    const kb = (await botB.client.cryptoStatus())?.keyBackup;
    return kb && kb.totalKeys > 0 && kb.backedUpKeys === kb.totalKeys;
  }, WAIT_MS, "device B to back the key up");

  // A starts again: its kept event's session is found in the backup, and the event is delivered, late.
  const again = botOn(t, dirA);
  await again.client.run(a.token);
  const late = await botGot(again, (m) => m.body === 'key from the backup', 'device A to deliver the kept event with the key from the backup');
  assert.equal(late.eventId, eventId);
  assert.equal(late.decryptedLate, true);
  assert.deepEqual(again.errors, []);
});

test('a client whose store passphrase differs from the one its login was given: run() rejects with HALCYON_CRYPTO_STORE saying to give login the same encryption options', async (t) => {
  const user = await hs.registerUser();
  const dataDir = tempDataDir(t);
  // The login creates the crypto store, with the data dir's generated passphrase (it was given no other).
  const token = await Client.login({ homeserver: hs.baseUrl, user: user.localpart, password: user.password, dataDir });
  const bot = botOn(t, dataDir, { encryption: { passphrase: 'the bot gives its store its own passphrase' } });
  const err = (await bot.client.run(token).then(() => null, (e: unknown) => e)) as HalcyonError | null;
  assert.equal(err?.code, 'HALCYON_CRYPTO_STORE', `run() rejects: ${err?.message}`);
  assert.match(err.message, /login/, 'the message says the login must be given the same encryption options');
  assert.ok(!err.message.includes('the bot gives its store'), 'the passphrase is not echoed');
});
