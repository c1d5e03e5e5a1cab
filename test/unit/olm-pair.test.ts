import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  DecryptionErrorCode,
  DecryptionSettings,
  EncryptionSettings,
  MegolmDecryptionError,
  RoomId,
  ShieldColor,
  ShieldStateCode,
  TrustRequirement,
} from '@matrix-org/matrix-sdk-crypto-wasm';
import { makeOlmPair, untrusted, type OlmPair } from '../helpers/olm-pair.ts';

type Json = Record<string, any>;

async function decrypt(p: OlmPair, ev: object, settings = untrusted()) {
  return p.bob.decryptRoomEvent(JSON.stringify(ev), new RoomId(p.roomId), settings);
}

/** Runs `fn` and returns what it threw (fails if it did not throw). */
async function thrown(fn: () => Promise<unknown>): Promise<any> {
  try {
    await fn();
  } catch (e) {
    return e;
  }
  assert.fail('expected a rejection');
}

function close(p: OlmPair) {
  p.alice.close();
  p.bob.close();
}

test('shareKey returns olm-encrypted to-device events for bob, once per session', async () => {
  const p = await makeOlmPair();
  try {
    const events = (await p.shareKey()) as Json[];
    assert.equal(events.length, 1);
    const [ev] = events;
    assert.equal(ev!.type, 'm.room.encrypted');
    assert.equal(ev!.sender, p.alice.userId.toString());
    assert.equal(ev!.content.algorithm, 'm.olm.v1.curve25519-aes-sha2');
    assert.equal(ev!.content.sender_key, p.alice.identityKeys.curve25519.toBase64());
    assert.deepEqual(Object.keys(ev!.content.ciphertext), [p.bob.identityKeys.curve25519.toBase64()]);
    assert.deepEqual(await p.shareKey(), [], 'the session was already shared');
    await p.alice.invalidateGroupSession(new RoomId(p.roomId));
    assert.equal((await p.shareKey()).length, 1, 'a new session is shared again');
  } finally {
    close(p);
  }
});

test('before the key arrives decryption fails with MissingRoomKey; after it, bob decrypts every message', async () => {
  const p = await makeOlmPair();
  try {
    const keyEvents = await p.shareKey();
    const messages = (await p.encryptMessages(150, (i) => `hello ${i}`)) as Json[];
    assert.equal(messages.length, 150);
    const m0 = messages[0]!;
    assert.equal(m0.type, 'm.room.encrypted');
    assert.equal(m0.room_id, p.roomId);
    assert.equal(m0.sender, p.alice.userId.toString());
    assert.equal(m0.content.algorithm, 'm.megolm.v1.aes-sha2');
    assert.equal(new Set(messages.map((m) => m.event_id)).size, 150);

    // How a missing key surfaces: a wasm-bindgen MegolmDecryptionError object, NOT an Error (no message/stack).
    const e = await thrown(() => decrypt(p, m0));
    assert.ok(e instanceof MegolmDecryptionError);
    assert.ok(!(e instanceof Error));
    assert.equal(e.code, DecryptionErrorCode.MissingRoomKey);
    assert.equal(e.code, 0);
    assert.match(e.description, /Can't find the room key/);
    assert.equal((e as { message?: unknown }).message, undefined);
    assert.equal(e.withheldCode, undefined);
    assert.equal(e.maybe_withheld, undefined);

    await p.deliverToBob(keyEvents);
    // 150 messages: more than the default rotation period (100), so this also checks the pair disables rotation.
    for (const [i, m] of messages.entries()) {
      const d = await decrypt(p, m);
      const clear = JSON.parse(d.event) as Json;
      assert.equal(clear.type, 'm.room.message');
      assert.equal(clear.event_id, m.event_id);
      assert.equal(clear.room_id, p.roomId);
      assert.deepEqual(clear.content, { msgtype: 'm.text', body: `hello ${i}` });
      assert.equal(d.sender.toString(), p.alice.userId.toString());
      assert.equal(d.senderDevice?.toString(), p.alice.deviceId.toString());
      assert.equal(d.senderCurve25519Key, p.alice.identityKeys.curve25519.toBase64());
      d.free();
    }
    // decrypting the same event again works (replay detection is the caller's job)
    assert.equal(JSON.parse((await decrypt(p, m0)).event).content.body, 'hello 0');
  } finally {
    close(p);
  }
});

test('a key received mid-session gives UnknownMessageIndex for earlier messages', async () => {
  const p = await makeOlmPair();
  try {
    // Create alice's outbound session without sharing it with bob, use it twice, then share it (at index 2).
    // (encryptMessages would share it with bob first, so the early events are built by hand.)
    const room = new RoomId(p.roomId);
    assert.deepEqual(await p.alice.shareRoomKey(room, [], new EncryptionSettings()), []);
    const early: Json[] = [];
    for (const i of [0, 1]) {
      const content = JSON.parse(await p.alice.encryptRoomEvent(room, 'm.room.message', JSON.stringify({ msgtype: 'm.text', body: `early ${i}` })));
      early.push({ event_id: `$early${i}`, sender: p.alice.userId.toString(), origin_server_ts: Date.now(), room_id: p.roomId, type: 'm.room.encrypted', content });
    }
    await p.deliverToBob(await p.shareKey());
    const [late] = await p.encryptMessages(1);
    const e = await thrown(() => decrypt(p, early[0]!));
    assert.ok(e instanceof MegolmDecryptionError);
    assert.equal(e.code, DecryptionErrorCode.UnknownMessageIndex);
    assert.match(e.description, /unknown message index, first known index 2, index of the message 0/);
    assert.equal(JSON.parse((await decrypt(p, late!)).event).content.body, 'message 0');
  } finally {
    close(p);
  }
});

test('malformed events: bad JSON is a plain Error, bad shapes and tampering are UnableToDecrypt', async () => {
  const p = await makeOlmPair();
  try {
    await p.deliverToBob(await p.shareKey());
    const [m] = (await p.encryptMessages(1)) as Json[];
    const room = new RoomId(p.roomId);

    const notJson = await thrown(() => p.bob.decryptRoomEvent('{', room, untrusted()));
    assert.ok(notJson instanceof Error, 'unparseable JSON rejects with a real Error');
    assert.ok(!(notJson instanceof MegolmDecryptionError));
    assert.equal((notJson as { code?: unknown }).code, undefined);
    assert.match(notJson.message, /EOF while parsing/);

    const ct = m!.content.ciphertext as string;
    const mid = ct.length >> 1;
    const tampered = `${ct.slice(0, mid)}${ct[mid] === 'A' ? 'B' : 'A'}${ct.slice(mid + 1)}`;
    const cases: [string, Json][] = [
      ['plaintext event', { ...m, type: 'm.room.message', content: { msgtype: 'm.text', body: 'x' } }],
      ['unknown algorithm', { ...m, content: { ...m!.content, algorithm: 'm.bogus' } }],
      ['garbage ciphertext', { ...m, content: { ...m!.content, ciphertext: 'AAAA' } }],
      ['tampered ciphertext', { ...m, content: { ...m!.content, ciphertext: tampered } }],
      ['missing event_id', { ...m, event_id: undefined }],
    ];
    for (const [name, ev] of cases) {
      const e = await thrown(() => decrypt(p, ev));
      assert.ok(e instanceof MegolmDecryptionError, name);
      assert.equal(e.code, DecryptionErrorCode.UnableToDecrypt, name);
      assert.equal(typeof e.description, 'string', name);
    }
    const unknownSession = await thrown(() => decrypt(p, { ...m, content: { ...m!.content, session_id: 'AAAA' } }));
    assert.equal(unknownSession.code, DecryptionErrorCode.MissingRoomKey);
    const wrongRoom = await thrown(() => p.bob.decryptRoomEvent(JSON.stringify(m), new RoomId('!elsewhere:example.org'), untrusted()));
    assert.equal(wrongRoom.code, DecryptionErrorCode.MissingRoomKey);
  } finally {
    close(p);
  }
});

test('a spoofed sender decrypts under Untrusted with a red MismatchedSender shield, and fails under stricter trust', async () => {
  const p = await makeOlmPair();
  try {
    await p.deliverToBob(await p.shareKey());
    const [m] = (await p.encryptMessages(1)) as Json[];
    const spoofed = { ...m, sender: '@mallory:example.org' };

    const d = await decrypt(p, spoofed);
    assert.equal(d.sender.toString(), '@mallory:example.org');
    assert.equal(d.senderDevice, undefined);
    const shield = d.shieldState(false);
    assert.equal(shield.color, ShieldColor.Red);
    assert.equal(shield.code, ShieldStateCode.MismatchedSender);

    const genuine = await decrypt(p, m!);
    assert.equal(genuine.shieldState(false).code, ShieldStateCode.UnsignedDevice, 'alice has no cross-signing');

    const strict = new DecryptionSettings(TrustRequirement.CrossSignedOrLegacy);
    assert.equal((await thrown(() => decrypt(p, spoofed, strict))).code, DecryptionErrorCode.MismatchedSender);
    assert.equal((await thrown(() => decrypt(p, m!, strict))).code, DecryptionErrorCode.UnsignedSenderDevice);
  } finally {
    close(p);
  }
});

test('makeOlmPair reuses a bob whose keys were already published elsewhere', async () => {
  const first = await makeOlmPair();
  await first.deliverToBob(await first.shareKey());
  const firstAliceDevice = first.alice.deviceId.toString();
  first.alice.close(); // close() also frees the wasm object: no property access afterwards
  const p = await makeOlmPair({ bob: first.bob, roomId: '!second:example.org' });
  try {
    assert.equal(p.bob, first.bob);
    assert.notEqual(p.alice.deviceId.toString(), firstAliceDevice);
    await p.deliverToBob(await p.shareKey());
    const [m] = await p.encryptMessages(1, () => 'again');
    const d = await decrypt(p, m!);
    assert.equal(JSON.parse(d.event).content.body, 'again');
    assert.equal(d.senderDevice?.toString(), p.alice.deviceId.toString());
  } finally {
    close(p);
  }
});
