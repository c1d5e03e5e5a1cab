/**
 * Room keys forwarded between the bot's own devices (`m.room_key_request` / `m.forwarded_room_key`) over a real
 * Synapse, with a matrix-js-sdk session of the bot's own account cross-signed by the bot's identity (read from the
 * secret storage Halcyon's login made, with its recovery key). A device of the bot that missed a room key asks its
 * other devices for it and delivers the kept event once the key is forwarded; and the bot forwards a key it holds
 * to its own other verified device that asks.
 */
import assert from 'node:assert/strict';
import { after, before, test, type TestContext } from 'node:test';
import { decodeRecoveryKey } from '../../src/crypto/secret-storage.ts';
import { decodeToken, loginWithDetails } from '../../src/index.ts';
import { newJsPeer } from '../harness/js-peer.ts';
import { OlmPeer } from '../harness/olm-peer.ts';
import { testHomeserver, type Homeserver } from '../harness/synapse.ts';
import { defer, newClient, recordingClient, tempDataDir, WAIT_MS, waitUntil } from './util.ts';

let hs: Homeserver;
before(async () => {
  hs = await testHomeserver();
});
after(async () => {
  await hs?.stop();
});

/** A bot client on `dataDir` (its first sync's timeline delivered), recording messages, decryption errors and errors. */
function botOn(t: TestContext, dataDir: string, opts: Parameters<typeof newClient>[2] = {}) {
  return recordingClient(t, dataDir, { deliverInitialTimeline: true, ...opts });
}

/**
 * The bot's account with an identity made by Halcyon's login (device `first`, never run) and no key backup, and a
 * js-sdk session of that account cross-signed from the identity's secret storage (with the recovery key).
 */
async function setup(t: TestContext) {
  const user = await hs.registerUser();
  const first = await loginWithDetails({ homeserver: hs.baseUrl, user: user.localpart, password: user.password, dataDir: tempDataDir(t) });
  assert.equal(first.crossSigning, 'created');
  // No key backup, so that a key can come only by forwarding (the js-sdk session would back keys up, as Element does).
  const del = await fetch(`${hs.baseUrl}/_matrix/client/v3/room_keys/version/${encodeURIComponent(first.keyBackup!.version)}`, {
    method: 'DELETE',
    headers: { authorization: `Bearer ${user.accessToken}` },
  });
  assert.equal(del.status, 200, 'the key backup is deleted');
  const own = await newJsPeer(t, hs, { login: { user: user.userId, password: user.password }, crossSign: false });
  await own.crossSignFromSecretStorage(decodeRecoveryKey(first.recoveryKey!));
  return { user, recoveryKey: first.recoveryKey!, own };
}

test("a running device of the bot that misses a room key asks the bot's other (cross-signed) device for it, and its handler gets the message, once, when the key is forwarded", async (t) => {
  const s = await setup(t);
  const dataDir = tempDataDir(t);
  const d = await loginWithDetails({ homeserver: hs.baseUrl, user: s.user.localpart, password: s.user.password, dataDir, recoveryKey: s.recoveryKey });
  assert.equal(d.deviceSigned, true);
  assert.equal(d.keyBackup, null, 'no key backup');
  const device = decodeToken(d.token).deviceId;
  // The other device forwards keys only to a device it knows as cross-signed by their identity.
  await waitUntil(() => s.own.deviceVerified(s.user.userId, device), WAIT_MS, "the js-sdk session to see the bot's new device as verified");
  // A long poll: the key request must not wait for a poll to time out.
  const bot = botOn(t, dataDir, { pollTimeoutMs: 120_000 });
  await bot.client.run(d.token);

  const peer = await OlmPeer.start(hs);
  defer(t, () => peer.stop());
  const roomId = await peer.createEncryptedRoom([s.user.userId]);
  await waitUntil(async () => (await peer.joinedMembers(roomId)).includes(s.user.userId), WAIT_MS, 'the bot to join');
  await s.own.joinRoom(roomId);
  // The room key goes to the js-sdk session only (it arrives there before the event, so before any request).
  const held = await peer.prepareRoomKey(roomId);
  for (const req of held.requests) {
    const body = JSON.parse(req.body) as { messages: Record<string, Record<string, unknown>> };
    const toOwn = (body.messages[s.user.userId] ?? {})[s.own.deviceId];
    if (toOwn === undefined) continue;
    await peer.http.request('PUT', `/sendToDevice/${encodeURIComponent(req.event_type)}/${encodeURIComponent(`${req.txn_id}-own`)}`, { messages: { [s.user.userId]: { [s.own.deviceId]: toOwn } } });
  }
  const { eventId } = await peer.sendEncrypted(roomId, 'm.room.message', { msgtype: 'm.text', body: 'a key only the other device has' });
  const onOwn = await s.own.waitForMessage(roomId, (m) => m.eventId === eventId);
  assert.equal(onOwn.body, 'a key only the other device has', "the bot's other device has the key");

  const m = await waitUntil(() => bot.messages.find((x) => x.eventId === eventId), WAIT_MS, 'the message, decrypted with the forwarded key').catch((e) => {
    throw new Error(`${(e as Error).message}; ${bot.dump()}`);
  });
  assert.equal(m.body, 'a key only the other device has');
  assert.equal(m.decryptedLate, true, 'kept for the late key, then delivered');
  assert.deepEqual(bot.decryptionErrors.map(({ code, eventId, willRetry }) => ({ code, eventId, willRetry })), [{ code: 'HALCYON_DECRYPT_MISSING_KEY', eventId, willRetry: true }]);
  assert.equal(bot.messages.filter((x) => x.eventId === eventId).length, 1, 'delivered once');
  assert.deepEqual(bot.errors, [], bot.dump());
});

test("an event kept while the bot had no other verified device is asked for once one is: the bot's own device list changed, and the key comes forwarded", async (t) => {
  const user = await hs.registerUser();
  const dataDir = tempDataDir(t);
  const d = await loginWithDetails({ homeserver: hs.baseUrl, user: user.localpart, password: user.password, dataDir });
  // The bot looks a kept event's session up in the key backup once, when it keeps it (before the other session
  // could back the key up): the key can come only by forwarding.
  const bot = botOn(t, dataDir);
  await bot.client.run(d.token);
  // Another session of the bot's account, not cross-signed yet: the bot does not trust it, so does not ask it.
  const own = await newJsPeer(t, hs, { login: { user: user.userId, password: user.password }, crossSign: false });
  const peer = await OlmPeer.start(hs);
  defer(t, () => peer.stop());
  const roomId = await peer.createEncryptedRoom([user.userId]);
  await waitUntil(async () => (await peer.joinedMembers(roomId)).includes(user.userId), WAIT_MS, 'the bot to join');
  await own.joinRoom(roomId);
  const held = await peer.prepareRoomKey(roomId);
  for (const req of held.requests) {
    const body = JSON.parse(req.body) as { messages: Record<string, Record<string, unknown>> };
    const toOwn = (body.messages[user.userId] ?? {})[own.deviceId];
    if (toOwn === undefined) continue;
    await peer.http.request('PUT', `/sendToDevice/${encodeURIComponent(req.event_type)}/${encodeURIComponent(`${req.txn_id}-own`)}`, { messages: { [user.userId]: { [own.deviceId]: toOwn } } });
  }
  const { eventId } = await peer.sendEncrypted(roomId, 'm.room.message', { msgtype: 'm.text', body: 'asked for later' });
  await own.waitForMessage(roomId, (m) => m.eventId === eventId && !m.decryptionFailure);
  await waitUntil(() => bot.decryptionErrors.find((e) => e.eventId === eventId), WAIT_MS, 'the bot to keep the event for a late key');

  // The session is cross-signed by the bot's identity: the bot's own device list changes, and it now trusts it.
  await own.crossSignFromSecretStorage(decodeRecoveryKey(d.recoveryKey!));
  const m = await waitUntil(() => bot.messages.find((x) => x.eventId === eventId), WAIT_MS, 'the kept event, decrypted with the forwarded key').catch((e) => {
    throw new Error(`${(e as Error).message}; ${bot.dump()}`);
  });
  assert.equal(m.body, 'asked for later');
  assert.equal(m.decryptedLate, true);
  assert.equal(bot.messages.filter((x) => x.eventId === eventId).length, 1, 'delivered once');
  assert.deepEqual(bot.errors, [], bot.dump());
});

test("the bot forwards a room key it holds to its own other device (cross-signed by the bot's identity) that asks for it", async (t) => {
  const user = await hs.registerUser();
  const dataDir = tempDataDir(t);
  const first = await loginWithDetails({ homeserver: hs.baseUrl, user: user.localpart, password: user.password, dataDir });
  const bot = botOn(t, dataDir);
  await bot.client.run(first.token);
  const peer = await newJsPeer(t, hs);
  const roomId = await peer.createEncryptedRoom({ invite: [user.userId] });
  await peer.waitForMember(roomId, user.userId, 'join');
  const eventId = await peer.sendText(roomId, 'only the bot has this key');
  await waitUntil(() => bot.messages.find((x) => x.eventId === eventId), WAIT_MS, 'the bot to decrypt the message');

  // A new js-sdk session of the bot's account: the message is in its history, without its key.
  const own = await newJsPeer(t, hs, { login: { user: user.userId, password: user.password }, crossSign: false });
  const before = await own.waitForMessage(roomId, (m) => m.eventId === eventId);
  assert.ok(before.decryptionFailure, 'the new session cannot decrypt the message yet');
  await own.crossSignFromSecretStorage(decodeRecoveryKey(first.recoveryKey!));
  // The bot shares keys (trust 'signed') only with devices it knows as cross-signed, and forwards only to devices it
  // knows as verified: once the session decrypts a new message of the bot, the bot knows it as such. Until the bot
  // has fetched the session's signature, its messages are withheld from it: send until one is not.
  let known = false;
  for (let i = 0; i < 10 && !known; i++) {
    const sent = await bot.client.sendMessage(roomId, `does the bot know the new session? ${i}`);
    known = !(await own.waitForMessage(roomId, (m) => m.eventId === sent)).decryptionFailure;
  }
  assert.ok(known, "the bot knows the session as cross-signed");

  await own.requestMissingRoomKeys(roomId);
  const after = await own.waitForMessage(roomId, (m) => m.eventId === eventId && !m.decryptionFailure);
  assert.equal(after.body, 'only the bot has this key');
  assert.deepEqual(bot.errors, [], bot.dump());
});
