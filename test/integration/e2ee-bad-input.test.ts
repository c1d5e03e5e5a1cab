/**
 * Bad encrypted input over a real Synapse: a plain-HTTP member of an encrypted room sends broken m.room.encrypted
 * events (malformed, unknown algorithm, garbage megolm ciphertext), and broken to-device events straight to the
 * bot's device. Each room event must be reported through `decryptionError` with a code and a consistent
 * `willRetry`; nothing may stop the bot: real encrypted messages from an independent peer (matrix-js-sdk, Rust
 * crypto), including ones needing a fresh Olm session, are still delivered.
 */
import assert from 'node:assert/strict';
import { after, before, test, type TestContext } from 'node:test';
import type { DecryptionErrorInfo, HalcyonError, Message } from '../../src/index.ts';
import { Peer } from '../harness/peer.ts';
import { newJsPeer } from '../harness/js-peer.ts';
import { testHomeserver, type Homeserver } from '../harness/synapse.ts';
import { newBot, newClient, newPeer, rand, WAIT_MS, waitUntil, type Bot } from './util.ts';

let hs: Homeserver;
before(async () => {
  hs = await testHomeserver();
});
after(async () => {
  await hs?.stop();
});

const MEGOLM = 'm.megolm.v1.aes-sha2';
const OLM = 'm.olm.v1.curve25519-aes-sha2';

type DecErr = { code: string; message: string } & DecryptionErrorInfo;

/** Everything a client reports. */
function record(client: Bot['client']) {
  const messages: Message[] = [];
  const decryptionErrors: DecErr[] = [];
  const errors: Array<{ code: string; message: string }> = [];
  const syncErrors: string[] = [];
  client.on('message', (m) => void messages.push(m));
  client.on('decryptionError', (e: HalcyonError, info) => void decryptionErrors.push({ code: e.code, message: e.message, ...info }));
  client.on('error', (e) => void errors.push({ code: e.code, message: e.message }));
  client.on('syncError', (e) => void syncErrors.push(`${e.code}: ${e.message}`));
  return { messages, decryptionErrors, errors, syncErrors };
}

/** An encrypted room created by a js-peer with the bot and a plain-HTTP member in it. */
async function setup(t: TestContext) {
  const bot = await newBot(t, hs);
  const rec = record(bot.client);
  await bot.client.run(bot.token);
  const a = await newJsPeer(t, hs);
  const raw: Peer = await newPeer(hs);
  const roomId = await a.createEncryptedRoom({ invite: [bot.user.userId, raw.userId] });
  await a.waitForMember(roomId, bot.user.userId, 'join');
  await raw.join(roomId);
  await a.waitForMember(roomId, raw.userId, 'join');
  return { bot, rec, a, raw, roomId };
}

test('malformed, unknown-algorithm and garbage m.room.encrypted events: each reported with a code; real encrypted messages still arrive', async (t) => {
  const { bot, rec, a, raw, roomId } = await setup(t);
  const cases: Array<{ name: string; content: Record<string, unknown>; codes: string[] }> = [
    { name: 'empty content', content: {}, codes: ['HALCYON_DECRYPT_FAILED'] },
    { name: 'algorithm is a number', content: { algorithm: 5 }, codes: ['HALCYON_DECRYPT_FAILED'] },
    { name: 'unknown algorithm', content: { algorithm: 'm.olm.v9', ciphertext: 'AAAA' }, codes: ['HALCYON_DECRYPT_FAILED'] },
    {
      name: 'megolm, garbage ciphertext, unknown session',
      content: { algorithm: MEGOLM, ciphertext: 'AAAA', sender_key: 'x', device_id: 'y', session_id: 'z' },
      codes: ['HALCYON_DECRYPT_FAILED', 'HALCYON_DECRYPT_MISSING_KEY'],
    },
  ];
  const ids: string[] = [];
  for (const c of cases) ids.push(await raw.sendEvent(roomId, 'm.room.encrypted', c.content));

  const realId = await a.sendText(roomId, 'real after garbage');
  await waitUntil(() => rec.messages.find((m) => m.eventId === realId), WAIT_MS, 'the real encrypted message after the garbage').catch((e) => {
    console.error('DEBUG', rec);
    throw e;
  });
  await waitUntil(() => ids.every((id) => rec.decryptionErrors.some((d) => d.eventId === id)), WAIT_MS,
    `a decryptionError for each of the ${ids.length} bad events (got ${JSON.stringify(rec.decryptionErrors)})`);

  const seen: Record<string, { code: string; willRetry: boolean; sessionId: string | null }> = {};
  for (const [k, c] of cases.entries()) {
    const errs = rec.decryptionErrors.filter((d) => d.eventId === ids[k]);
    assert.equal(errs.length, 1, `${c.name}: exactly one decryptionError`);
    const d = errs[0]!;
    seen[c.name] = { code: d.code, willRetry: d.willRetry, sessionId: d.sessionId };
    assert.ok(c.codes.includes(d.code), `${c.name}: code ${d.code} (${d.message}) not in ${c.codes.join(', ')}`);
    assert.equal(d.roomId, roomId);
    assert.equal(d.sender, raw.userId);
    // Only a missing key is worth waiting for; malformed or corrupt events never decrypt.
    assert.equal(d.willRetry, d.code === 'HALCYON_DECRYPT_MISSING_KEY', `${c.name}: willRetry ${d.willRetry} with ${d.code}`);
    assert.ok(!rec.messages.some((m) => m.eventId === ids[k]), `${c.name}: not delivered as a message`);
  }
  t.diagnostic(`codes seen: ${JSON.stringify(seen)}`);
  const kept = Object.values(seen).filter((s) => s.willRetry).length;
  assert.equal((await bot.client.cryptoStatus())!.pendingUndecryptable, kept, 'events kept for a late key = those with willRetry');

  // Garbage ciphertext under the real session of the peer: the key is there, the ciphertext is corrupt.
  const wire = a.client.getRoom(roomId)?.findEventById(realId)?.getWireContent() as Record<string, unknown> | undefined;
  assert.ok(wire && typeof wire.session_id === 'string', 'the wire content of the real message');
  const corruptId = await raw.sendEvent(roomId, 'm.room.encrypted', { ...wire, ciphertext: 'AAAA' + String(wire.ciphertext).slice(4, 40) });
  const forgedId = await raw.sendEvent(roomId, 'm.room.encrypted', { ...wire }); // the peer's real ciphertext, re-sent by another user
  // A well-formed ciphertext under a session the bot has no key for: worth keeping for a late key.
  const unknownSession = 'Q'.repeat(43);
  const missingId = await raw.sendEvent(roomId, 'm.room.encrypted', { ...wire, session_id: unknownSession });
  const real2 = await a.sendText(roomId, 'real after corrupt');
  await waitUntil(() => rec.messages.find((m) => m.eventId === real2), WAIT_MS, 'the real message after the corrupt one');
  const corrupt = await waitUntil(() => rec.decryptionErrors.find((d) => d.eventId === corruptId), WAIT_MS, 'the decryptionError of the corrupt ciphertext');
  t.diagnostic(`corrupt ciphertext with a known session: ${corrupt.code} willRetry=${corrupt.willRetry} (${corrupt.message})`);
  assert.equal(corrupt.code, 'HALCYON_DECRYPT_FAILED', `corrupt ciphertext with a known session: ${corrupt.message}`);
  assert.equal(corrupt.willRetry, false);
  const forged = await waitUntil(() => rec.decryptionErrors.find((d) => d.eventId === forgedId) ?? rec.messages.find((m) => m.eventId === forgedId), WAIT_MS,
    'the outcome of the re-sent ciphertext');
  assert.ok(!('body' in forged), `a ciphertext of ${a.userId} re-sent by ${raw.userId} was delivered as a message from ${raw.userId}`);
  t.diagnostic(`another user's ciphertext re-sent: ${(forged as DecErr).code} (${(forged as DecErr).message})`);
  assert.equal((forged as DecErr).code, 'HALCYON_DECRYPT_FAILED');
  const missing = await waitUntil(() => rec.decryptionErrors.find((d) => d.eventId === missingId), WAIT_MS, 'the decryptionError of the unknown session');
  t.diagnostic(`valid ciphertext, unknown session: ${missing.code} willRetry=${missing.willRetry} (${missing.message})`);
  assert.equal(missing.code, 'HALCYON_DECRYPT_MISSING_KEY');
  assert.equal(missing.willRetry, true);
  assert.equal(missing.sessionId, unknownSession);
  assert.equal((await bot.client.cryptoStatus())!.pendingUndecryptable, kept + 1, 'the unknown-session event is kept for a late key');

  assert.deepEqual(rec.messages.filter((m) => m.sender !== a.userId).map((m) => m.eventId), [], 'only the real messages were delivered');
  assert.deepEqual(rec.messages.map((m) => m.body), ['real after garbage', 'real after corrupt']);
  assert.deepEqual(rec.errors, []);
  assert.deepEqual(rec.syncErrors, []);
  assert.deepEqual(bot.errors, []);
});

let txn = 0;
/** Sends one to-device event of `type` with `content` from `from` to the bot's device. */
async function toDevice(from: Peer, type: string, userId: string, deviceId: string, content: unknown): Promise<void> {
  await from.request('PUT', `/sendToDevice/${encodeURIComponent(type)}/bad${Date.now()}.${++txn}.${rand()}`, { messages: { [userId]: { [deviceId]: content } } });
}

/** The 'error' event of a to-device event the bot skipped. */
const skipped = (sender: string) => ({ code: 'HALCYON_DECRYPT_FAILED', message: `a to-device event from ${sender} could not be decrypted or was invalid; skipped` });

/** Garbage to-device events for the bot's device: broken Olm envelopes and plaintext room keys with junk fields. */
async function sendGarbageToDevice(raw: Peer, roomId: string, to: { userId: string; deviceId: string; curve25519: string }): Promise<number> {
  const { userId, deviceId, curve25519 } = to;
  const events: Array<[string, unknown]> = [
    ['m.room.encrypted', {}],
    ['m.room.encrypted', { algorithm: OLM, sender_key: 5, ciphertext: 'not an object' }],
    ['m.room.encrypted', { algorithm: OLM, sender_key: 'AAAA', ciphertext: { [curve25519]: { type: 0, body: 'garbage' } } }],
    ['m.room.encrypted', { algorithm: OLM, sender_key: 'x'.repeat(43), ciphertext: { [curve25519]: { type: 1, body: 'AAAA' } } }],
    ['m.room.encrypted', { algorithm: 'm.olm.v9', ciphertext: {} }],
    ['m.room_key', { algorithm: MEGOLM, room_id: 5, session_id: null, session_key: 'junk' }],
    ['m.room_key', { algorithm: MEGOLM, room_id: roomId, session_id: 'fake', session_key: 'AAAA' }],
    ['m.forwarded_room_key', { algorithm: MEGOLM, room_id: roomId, session_id: 'fake', session_key: 'AAAA', sender_key: 'x', sender_claimed_ed25519_key: 'y' }],
  ];
  for (const [type, content] of events) await toDevice(raw, type, userId, deviceId, content);
  return events.length;
}

test('garbage to-device events to the bot\'s device: the bot keeps running; encrypted messages (one needing a new Olm session) still arrive', async (t) => {
  const { bot, rec, a, raw, roomId } = await setup(t);
  const who = bot.client.whoami();
  const n = await sendGarbageToDevice(raw, roomId, { userId: who.userId, deviceId: who.deviceId, curve25519: who.identityKeys!.curve25519 });

  // A user the bot has no Olm session with: its room key comes in a new Olm pre-key message.
  const c = await newJsPeer(t, hs);
  await a.client.invite(roomId, c.userId);
  await c.waitForMember(roomId, c.userId, 'invite');
  await c.joinRoom(roomId);
  const cId = await c.sendText(roomId, 'from C after garbage');
  const aId = await a.sendText(roomId, 'from A after garbage');
  await waitUntil(() => [cId, aId].every((id) => rec.messages.some((m) => m.eventId === id)), WAIT_MS,
    'the real messages after the garbage to-device events').catch((e) => {
    console.error('DEBUG', rec);
    throw e;
  });
  t.diagnostic(`${n} garbage to-device events; 'error' events: ${JSON.stringify(rec.errors)}`);
  await waitUntil(() => rec.errors.length >= n, WAIT_MS, `an error event for each of the ${n} garbage to-device events (got ${rec.errors.length})`);
  assert.deepEqual(rec.errors, Array.from({ length: n }, () => skipped(raw.userId)), 'each garbage to-device event reported once, naming its sender');
  assert.deepEqual(rec.decryptionErrors, []);
  assert.deepEqual(rec.syncErrors, []);
  // Still fully alive: it sends encrypted too.
  const sent = await bot.client.sendMessage(roomId, 'still here');
  const got = await c.waitForMessage(roomId, (m) => m.eventId === sent);
  assert.equal(got.body, 'still here');
});

test('garbage to-device events in the same sync batch as a real room key (sent while the bot was stopped): the real key still works', async (t) => {
  const { bot, rec, a, raw, roomId } = await setup(t);
  const who = bot.client.whoami();
  const to = { userId: who.userId, deviceId: who.deviceId, curve25519: who.identityKeys!.curve25519 };
  const botId = bot.user.userId;
  await bot.client.stop();

  // While the bot is stopped: garbage first, then a new user's first message (its room key in a new Olm
  // session), then more garbage. The restarted bot gets all of these to-device events in one sync.
  const n1 = await sendGarbageToDevice(raw, roomId, to);
  const c = await newJsPeer(t, hs);
  await a.client.invite(roomId, c.userId);
  await c.waitForMember(roomId, c.userId, 'invite');
  await c.joinRoom(roomId);
  await c.waitForMember(roomId, botId, 'join');
  const cId = await c.sendText(roomId, 'from C while the bot was stopped');
  const n2 = await sendGarbageToDevice(raw, roomId, to);

  const second = newClient(t, bot.dataDir);
  const rec2 = record(second);
  await second.run(bot.token);
  await waitUntil(() => rec2.messages.some((m) => m.eventId === cId), WAIT_MS, "C's message, whose key came with the garbage").catch((e) => {
    console.error('DEBUG', rec2);
    throw e;
  });
  t.diagnostic(`garbage sent: ${n1} before, ${n2} after the real key; 'error' events: ${JSON.stringify(rec2.errors)}`);
  await waitUntil(() => rec2.errors.length >= n1 + n2, WAIT_MS, `an error event for each of the ${n1 + n2} garbage to-device events (got ${rec2.errors.length})`);
  assert.deepEqual(rec2.errors, Array.from({ length: n1 + n2 }, () => skipped(raw.userId)), 'each garbage to-device event reported once, naming its sender');
  assert.deepEqual(rec2.decryptionErrors, []);
  assert.deepEqual(rec2.syncErrors, []);
  assert.deepEqual(rec.decryptionErrors, []);
});

test('a room whose m.room.encryption names an algorithm Halcyon cannot send with: the send fails for good (HALCYON_SEND_FAILED caused by HALCYON_ENCRYPT_FAILED), nothing reaches the room, in the clear or otherwise', async (t) => {
  const bot = await newBot(t, hs);
  const failed: Array<{ code: string; cause: string | undefined }> = [];
  bot.client.on('sendFailed', (e) => void failed.push({ code: e.code, cause: (e.cause as HalcyonError | undefined)?.code }));
  await bot.client.run(bot.token);
  const peer = await newPeer(hs);
  const algorithm = 'com.example.unknown.v1';
  const { room_id: roomId } = await peer.request('POST', '/createRoom', {
    preset: 'private_chat',
    invite: [bot.user.userId],
    initial_state: [{ type: 'm.room.encryption', state_key: '', content: { algorithm } }],
  });
  await peer.waitForJoined(roomId, bot.user.userId, WAIT_MS);
  await bot.client.waitForRoom(roomId);
  assert.equal(await bot.client.isRoomEncrypted(roomId), true);

  const err = await bot.client.sendMessage(roomId, 'not in the clear').then(
    () => assert.fail('the send resolved'),
    (e: HalcyonError) => e,
  );
  assert.equal(err.code, 'HALCYON_SEND_FAILED');
  const cause = err.cause as HalcyonError;
  assert.equal(cause.code, 'HALCYON_ENCRYPT_FAILED');
  assert.equal(cause.message, `room ${roomId} uses the encryption algorithm ${algorithm}, which Halcyon cannot send with`);
  assert.deepEqual(failed, [{ code: 'HALCYON_SEND_FAILED', cause: 'HALCYON_ENCRYPT_FAILED' }]);
  assert.equal(bot.client.deadLetters().length, 1);
  const { chunk } = await peer.request('GET', `/rooms/${encodeURIComponent(roomId)}/messages`, undefined, { dir: 'b', limit: '50' });
  assert.deepEqual((chunk as Array<{ sender: string; type: string }>).filter((e) => e.sender === bot.user.userId && !e.type.startsWith('m.room.member')), [], 'no event of the bot in the room');
  assert.deepEqual(bot.errors, []);
});
