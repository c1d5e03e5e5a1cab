/**
 * The `trust` option over Synapse, with two matrix-js-sdk peers in one encrypted room: one whose device is
 * cross-signed by its owner (as spec v1.18 clients do) and one whose device is not. Under the default (`signed`),
 * the unsigned device's messages reach `decryptionError`, not handlers, and the bot's messages are not shared with
 * it; under `all`, both are read and both read the bot, as before the option; under `verified`, only a device the
 * bot verified counts.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { ClientOptions } from '../../src/index.ts';
import { decodeToken } from '../../src/token.ts';
import { crossSignBot } from '../helpers/cross-sign-bot.ts';
import { type JsPeer, newJsPeer } from '../harness/js-peer.ts';
import { testHomeserver, withTimeout, type Homeserver } from '../harness/synapse.ts';
import { defer, newBot, recordMessages, WAIT_MS, waitUntil } from './util.ts';

let hs: Homeserver;
before(async () => {
  hs = await testHomeserver();
});
after(async () => {
  await hs?.stop();
});

/**
 * A running bot (with `opts`; cross-signed first with `crossSigned`), a signed and an unsigned js-peer, all three
 * in an encrypted room the signed peer made; both peers know the bot's device.
 */
async function setup(t: Parameters<typeof defer>[0], opts: Partial<ClientOptions>, crossSigned: boolean) {
  const bot = await newBot(t, hs, opts);
  const rec = recordMessages(bot);
  if (crossSigned) await crossSignBot(hs, bot);
  await bot.client.run(bot.token);
  const botDevice = decodeToken(bot.token).deviceId;
  const signed = await newJsPeer(t, hs, { crossSign: true });
  const unsigned = await newJsPeer(t, hs, { crossSign: false });
  assert.equal(signed.crossSigned, true);
  assert.equal(unsigned.crossSigned, false);
  const roomId = await signed.createEncryptedRoom({ invite: [bot.user.userId, unsigned.userId] });
  await unsigned.joinRoom(roomId);
  await signed.waitForMember(roomId, bot.user.userId, 'join');
  for (const p of [signed, unsigned]) await p.waitForDevice(bot.user.userId, botDevice);
  const dump = () => JSON.stringify({ decryptionErrors: rec.decryptionErrors, messages: rec.messages.map((m) => [m.eventId, m.body, m.encryption]), errors: bot.errors.map((e) => `${e.code}: ${e.message}`) });
  /** The bot's message (by ID), once settled, as a peer sees it. */
  const seenBy = (p: JsPeer, eventId: string) => p.waitForMessage(roomId, (x) => x.eventId === eventId, WAIT_MS);
  return { bot, rec, botDevice, roomId, signed, unsigned, dump, seenBy };
}

test("trust 'signed' (the default): the unsigned device's message reaches decryptionError, not handlers, and the bot's message is not shared with it; the signed device's works both ways", async (t) => {
  const s = await setup(t, {}, true);
  const refused = await s.unsigned.sendText(s.roomId, 'from the unsigned device');
  const fromSigned = await s.signed.sendText(s.roomId, 'from the signed device');

  const m = await waitUntil(() => s.rec.messages.find((x) => x.eventId === fromSigned), WAIT_MS, "the signed device's message").catch((e) => {
    throw new Error(`${(e as Error).message}; ${s.dump()}`);
  });
  assert.equal(m.body, 'from the signed device');
  assert.deepEqual(m.encryption, { trust: 'signed', deviceId: s.signed.deviceId });
  const err = await waitUntil(() => s.rec.decryptionErrors.find((e) => e.eventId === refused), WAIT_MS, "the unsigned device's decryptionError");
  assert.equal(err.code, 'HALCYON_DECRYPT_UNTRUSTED', s.dump());
  assert.equal(err.willRetry, false);
  assert.equal(err.sender, s.unsigned.userId);
  assert.match(err.message, /not cross-signed/);
  assert.equal(s.rec.messages.some((x) => x.eventId === refused), false, 'no handler got the unsigned device\'s message');

  const sent = await s.bot.client.sendMessage(s.roomId, 'from the bot');
  const onSigned = await s.seenBy(s.signed, sent);
  assert.equal(onSigned.decryptionFailure, undefined, 'the signed peer decrypts the bot');
  assert.equal(onSigned.body, 'from the bot');
  const onUnsigned = await s.seenBy(s.unsigned, sent);
  assert.equal(onUnsigned.encrypted, true);
  assert.ok(onUnsigned.decryptionFailure, 'the unsigned peer cannot decrypt the bot');
  assert.equal(onUnsigned.decryptionFailure, 'MEGOLM_KEY_WITHHELD_FOR_UNVERIFIED_DEVICE', 'the bot withheld the key from it (m.unverified)');
  assert.deepEqual(s.rec.decryptionErrors.map((e) => e.eventId), [refused]);
  assert.deepEqual(s.bot.errors, []);
});

test("trust 'all': both devices' messages reach handlers (their trust says which is signed), and both read the bot", async (t) => {
  const s = await setup(t, { trust: 'all' }, false);
  const fromUnsigned = await s.unsigned.sendText(s.roomId, 'from the unsigned device');
  const fromSigned = await s.signed.sendText(s.roomId, 'from the signed device');
  const got = await waitUntil(() => {
    const a = s.rec.messages.find((x) => x.eventId === fromUnsigned);
    const b = s.rec.messages.find((x) => x.eventId === fromSigned);
    return a && b && [a, b];
  }, WAIT_MS, 'both messages').catch((e) => {
    throw new Error(`${(e as Error).message}; ${s.dump()}`);
  });
  assert.deepEqual(got[0]!.encryption, { trust: 'unsigned', deviceId: s.unsigned.deviceId });
  assert.deepEqual(got[1]!.encryption, { trust: 'signed', deviceId: s.signed.deviceId });

  const sent = await s.bot.client.sendMessage(s.roomId, 'from the bot');
  for (const p of [s.signed, s.unsigned]) {
    const seen = await s.seenBy(p, sent);
    assert.equal(seen.decryptionFailure, undefined, `${p.userId} decrypts the bot`);
    assert.equal(seen.body, 'from the bot');
  }
  assert.deepEqual(s.rec.decryptionErrors, []);
  assert.deepEqual(s.bot.errors, []);
});

test("trust 'verified': a signed device is refused until the bot verified it (SAS), then read as verified, and reads the bot", async (t) => {
  const s = await setup(t, { trust: 'verified', verification: { from: [], autoConfirm: true } }, false);
  const before = await s.signed.sendText(s.roomId, 'before verification');
  const err = await waitUntil(() => s.rec.decryptionErrors.find((e) => e.eventId === before), WAIT_MS, 'the decryptionError of the unverified device').catch((e) => {
    throw new Error(`${(e as Error).message}; ${s.dump()}`);
  });
  assert.equal(err.code, 'HALCYON_DECRYPT_UNTRUSTED');
  assert.match(err.message, /not verified by the bot/);
  const notYet = await s.bot.client.sendMessage(s.roomId, 'before verification, from the bot');
  assert.ok((await s.seenBy(s.signed, notYet)).decryptionFailure, 'the bot does not share its key with an unverified device');

  const done = s.bot.client.requestVerification(s.signed.userId, s.signed.deviceId);
  done.catch(() => {}); // awaited below
  await s.signed.runSas(await s.signed.nextVerificationRequest(s.bot.user.userId, WAIT_MS), { start: false });
  await withTimeout(done, WAIT_MS, 'requestVerification');

  const after = await s.signed.sendText(s.roomId, 'after verification');
  const m = await waitUntil(() => s.rec.messages.find((x) => x.eventId === after), WAIT_MS, 'the message after the verification').catch((e) => {
    throw new Error(`${(e as Error).message}; ${s.dump()}`);
  });
  assert.deepEqual(m.encryption, { trust: 'verified', deviceId: s.signed.deviceId });
  const sent = await s.bot.client.sendMessage(s.roomId, 'after verification, from the bot');
  const seen = await s.seenBy(s.signed, sent);
  assert.equal(seen.decryptionFailure, undefined, 'the verified device reads the bot');
  assert.equal(seen.body, 'after verification, from the bot');
  assert.equal(s.rec.messages.some((x) => x.eventId === before), false, 'the refused message never reached a handler');
  assert.deepEqual(s.bot.errors, []);
});
