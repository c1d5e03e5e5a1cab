/** The matrix-js-sdk peer harness: two js-sdk (rust crypto) peers exchange encrypted messages through Synapse. */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { startJsPeer, type JsPeer } from '../harness/js-peer.ts';
import { testHomeserver, type Homeserver } from '../harness/synapse.ts';

let hs: Homeserver;
before(async () => {
  hs = await testHomeserver();
});
after(async () => {
  await hs?.stop();
});

test('two js-sdk peers exchange megolm-encrypted messages; a later second device decrypts new messages', async (t) => {
  const peers: JsPeer[] = [];
  t.after(async () => {
    for (const p of peers.reverse()) await p.stop();
  });
  const a = await startJsPeer(hs);
  peers.push(a);
  const b = await startJsPeer(hs);
  peers.push(b);
  assert.match(a.userId, /^@.+:localhost$/);
  assert.ok(a.deviceId && b.deviceId);
  assert.equal(typeof b.password, 'string');

  const roomId = await a.createEncryptedRoom({ invite: [b.userId], name: 'Secret bakery' });
  assert.match(roomId, /^!/);
  assert.equal(await a.client.getCrypto()!.isEncryptionEnabledInRoom(roomId), true);
  await b.waitForMember(roomId, b.userId, 'invite');
  await b.joinRoom(roomId);
  await a.waitForMember(roomId, b.userId);

  const helloId = await a.sendText(roomId, 'hello');
  const hello = await b.waitForMessage(roomId, (m) => m.eventId === helloId && m.body !== '');
  assert.equal(hello.body, 'hello');
  assert.equal(hello.encrypted, true);
  assert.equal(hello.sender, a.userId);
  assert.equal(hello.roomId, roomId);
  assert.equal(hello.content.msgtype, 'm.text');
  // On the wire it really is ciphertext.
  const wire = await b.client.fetchRoomEvent(roomId, helloId);
  assert.equal(wire.type, 'm.room.encrypted');
  assert.equal(wire.content?.algorithm, 'm.megolm.v1.aes-sha2');

  const replyId = await b.sendText(roomId, 'hello yourself');
  const reply = await a.waitForMessage(roomId, (m) => m.eventId === replyId && m.body !== '');
  assert.equal(reply.body, 'hello yourself');
  assert.equal(reply.encrypted, true);
  assert.equal(reply.sender, b.userId);

  // A second device of B: A must learn about it before encrypting to it.
  const b2 = await startJsPeer(hs, { login: { user: b.userId, password: b.password } });
  peers.push(b2);
  assert.equal(b2.userId, b.userId);
  assert.notEqual(b2.deviceId, b.deviceId);
  assert.equal(b2.password, b.password);
  await b2.waitForMember(roomId, b.userId);
  await a.waitForDevice(b.userId, b2.deviceId);

  const laterId = await a.sendText(roomId, 'for both of your devices');
  const later2 = await b2.waitForMessage(roomId, (m) => m.eventId === laterId && m.body !== '');
  assert.equal(later2.body, 'for both of your devices');
  assert.equal(later2.encrypted, true);
  const later1 = await b.waitForMessage(roomId, (m) => m.eventId === laterId && m.body !== '');
  assert.equal(later1.body, 'for both of your devices');

  // B2 saw the earlier messages (initial sync) but has no keys for them: they show up undecrypted.
  const oldHello = await b2.waitForMessage(roomId, (m) => m.eventId === helloId);
  assert.equal(oldHello.encrypted, true);
  assert.equal(oldHello.body, '');
  assert.ok(oldHello.decryptionFailure, 'an undecryptable message carries its decryptionFailure code');
  assert.deepEqual(b2.messages(roomId).map((m) => [m.eventId, m.body]), [[helloId, ''], [replyId, ''], [laterId, 'for both of your devices']]);

  // Timeline order and decryption as each peer saw it.
  assert.deepEqual(b.messages(roomId).map((m) => [m.body, m.encrypted]),
    [['hello', true], ['hello yourself', true], ['for both of your devices', true]]);
  assert.deepEqual(a.messages(roomId).map((m) => m.eventId), [helloId, replyId, laterId]);
});
