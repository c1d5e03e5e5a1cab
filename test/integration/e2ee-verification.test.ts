/**
 * Interactive verification (SAS) between the bot and a matrix-js-sdk peer over Synapse: either side starts it (the
 * peer to-device or in a room), both end up trusting each other's device (the peer's device status, the bot's
 * `message.encryption.trust`), and a request from a user `verification.from` does not allow is cancelled (m.user)
 * and reported.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { VerificationPhase } from 'matrix-js-sdk/lib/crypto-api/index.js';
import type { ClientOptions, HalcyonError, Message, Verification } from '../../src/index.ts';
import { decodeToken } from '../../src/token.ts';
import { crossSignBot } from '../helpers/cross-sign-bot.ts';
import { type JsPeer, newJsPeer } from '../harness/js-peer.ts';
import { testHomeserver, withTimeout, type Homeserver } from '../harness/synapse.ts';
import { defer, deferred, newBot, WAIT_MS, waitUntil, type Bot } from './util.ts';

let hs: Homeserver;
before(async () => {
  hs = await testHomeserver();
});
after(async () => {
  await hs?.stop();
});

/** The bot's messages from the peer, and its decryption errors. */
function record(bot: Bot): { messages: Message[]; decryptionErrors: HalcyonError[] } {
  const rec = { messages: [] as Message[], decryptionErrors: [] as HalcyonError[] };
  bot.client.on('message', (m) => void rec.messages.push(m));
  bot.client.on('decryptionError', (e) => void rec.decryptionErrors.push(e));
  return rec;
}

/** A running bot (with `opts`; cross-signed first with `crossSigned`) and the peer in an encrypted room; the peer knows the bot's device. */
async function setup(t: Parameters<typeof defer>[0], peer: JsPeer, opts: Partial<ClientOptions>, before?: (bot: Bot) => void, crossSigned = false) {
  const bot = await newBot(t, hs, opts);
  const rec = record(bot);
  before?.(bot);
  if (crossSigned) await crossSignBot(hs, bot);
  await bot.client.run(bot.token);
  const botDevice = decodeToken(bot.token).deviceId;
  const roomId = await peer.createEncryptedRoom({ invite: [bot.user.userId] });
  await peer.waitForMember(roomId, bot.user.userId, 'join');
  await peer.waitForDevice(bot.user.userId, botDevice);
  return { bot, rec, botDevice, roomId };
}

/** After a verification: the peer's next message reaches the bot as `verified`, and the peer trusts the bot's device. */
async function assertMutualTrust(s: Awaited<ReturnType<typeof setup>>, peer: JsPeer): Promise<void> {
  const { bot, rec, botDevice, roomId } = s;
  assert.equal(await peer.deviceVerified(bot.user.userId, botDevice), true, "the peer's crypto counts the bot's device as verified");
  const id = await peer.sendText(roomId, 'after verification');
  const m = await waitUntil(() => rec.messages.find((x) => x.eventId === id), WAIT_MS, 'the message sent after the verification').catch((e) => {
    console.error('DEBUG', rec.decryptionErrors, bot.errors);
    throw e;
  });
  assert.deepEqual(m.encryption, { trust: 'verified', deviceId: peer.deviceId });
}

test('the peer starts: the bot accepts (verification.from), shows the SAS, and both sides end up trusting each other', async (t) => {
  const peer = await newJsPeer(t, hs);
  const shown = deferred<Verification>();
  const s = await setup(t, peer, { verification: { from: [peer.userId] } }, (bot) =>
    bot.client.on('verificationRequest', async (v) => {
      shown.resolve(v);
      await v.confirm();
    }),
  );
  // Before: the peer's device is cross-signed by its owner, whom the bot has not verified.
  const first = await peer.sendText(s.roomId, 'before verification');
  const m0 = await waitUntil(() => s.rec.messages.find((x) => x.eventId === first), WAIT_MS, 'the message sent before the verification').catch((e) => {
    console.error('DEBUG', s.rec.decryptionErrors, s.bot.errors);
    throw e;
  });
  assert.deepEqual(m0.encryption, { trust: 'signed', deviceId: peer.deviceId });

  const request = await peer.requestVerification(s.bot.user.userId, s.botDevice);
  const peerSide = peer.runSas(request, { start: true });
  const v = await withTimeout(shown.promise, WAIT_MS * 2, "the bot's verificationRequest event");
  const { emoji } = await peerSide;
  assert.equal(v.userId, peer.userId);
  assert.equal(v.deviceId, peer.deviceId);
  assert.equal(v.weStarted, false);
  assert.equal(v.emoji.length, 7);
  assert.deepEqual(v.emoji.map((e) => e.description), emoji, 'both sides show the same SAS');
  assert.equal(v.decimals.length, 3);
  await assertMutualTrust(s, peer);
  assert.deepEqual(s.bot.errors, []);
});

test('in a room: the peer sends the request as a message in the room they share (matrix-js-sdk sends it in the clear); the bot accepts and both sides end up trusting each other', async (t) => {
  const peer = await newJsPeer(t, hs);
  const shown = deferred<Verification>();
  const s = await setup(t, peer, { verification: { from: [peer.userId], autoConfirm: true } }, (bot) => bot.client.on('verificationRequest', (v) => shown.resolve(v)), true);
  const request = await peer.requestVerificationInRoom(s.bot.user.userId, s.roomId);
  const { emoji } = await peer.runSas(request, { start: true }).catch((e) => {
    console.error('DEBUG', s.rec.decryptionErrors, s.bot.errors);
    throw e;
  });
  const v = await withTimeout(shown.promise, WAIT_MS, "the bot's verificationRequest event");
  assert.equal(v.roomId, s.roomId);
  assert.equal(v.flowId, request.transactionId, 'the flow is the request event');
  assert.equal(v.deviceId, peer.deviceId);
  assert.deepEqual(v.emoji.map((e) => e.description), emoji, 'both sides show the same SAS');
  await assertMutualTrust(s, peer);
  assert.deepEqual(s.bot.errors, []);
});

test('the bot starts (requestVerification, autoConfirm): the peer confirms, and both sides end up trusting each other', async (t) => {
  const peer = await newJsPeer(t, hs);
  const s = await setup(t, peer, { verification: { from: [], autoConfirm: true } });
  const result = s.bot.client.requestVerification(peer.userId, peer.deviceId);
  result.catch(() => {}); // awaited below
  // If the peer's side fails, the bot's side is printed too: its errors and where its own request stands.
  const withBotState = async (e: unknown): Promise<never> => {
    console.error('DEBUG', s.bot.errors, await Promise.race([result.catch((x: unknown) => x), Promise.resolve('pending')]));
    throw e;
  };
  const request = await peer.nextVerificationRequest(s.bot.user.userId, WAIT_MS).catch(withBotState);
  await peer.runSas(request, { start: false }).catch(withBotState);
  assert.deepEqual(await withTimeout(result, WAIT_MS, 'requestVerification'), { userId: peer.userId, deviceId: peer.deviceId });
  await assertMutualTrust(s, peer);
  assert.deepEqual(s.bot.errors, []);
});

test('a SAS the peer says does not match: confirm() rejects with HALCYON_VERIFICATION_CANCELLED and nothing is trusted', async (t) => {
  const peer = await newJsPeer(t, hs);
  const outcome = deferred<unknown>();
  const s = await setup(t, peer, { verification: { from: [peer.userId] } }, (bot) =>
    bot.client.on('verificationRequest', (v) => void v.confirm().then(() => outcome.resolve('confirmed'), (e: unknown) => outcome.resolve(e))),
  );
  const request = await peer.requestVerification(s.bot.user.userId, s.botDevice);
  await peer.runSas(request, { start: true, match: false }).catch(() => {}); // the peer cancels (m.mismatched_sas)
  const err = (await withTimeout(outcome.promise, WAIT_MS * 2, 'the outcome of confirm()')) as HalcyonError;
  assert.equal(err.code, 'HALCYON_VERIFICATION_CANCELLED', String(err));
  assert.match(err.message, /m\.mismatched_sas/);
  assert.equal(await peer.deviceVerified(s.bot.user.userId, s.botDevice), false);
});

test('a request from a user verification.from does not allow is cancelled (m.user) and reported as HALCYON_VERIFICATION_REFUSED', async (t) => {
  const peer = await newJsPeer(t, hs);
  let shown = 0;
  const s = await setup(t, peer, { verification: { from: (userId) => userId === '@someone-else:localhost' } }, (bot) =>
    bot.client.on('verificationRequest', () => void shown++),
  );
  const request = await peer.requestVerification(s.bot.user.userId, s.botDevice);
  await peer.waitForPhase(request, VerificationPhase.Cancelled, WAIT_MS);
  assert.equal(request.cancellationCode, 'm.user');
  const refused = await waitUntil(() => s.bot.errors.find((e) => e.code === 'HALCYON_VERIFICATION_REFUSED'), WAIT_MS, 'the refusal report');
  assert.ok(refused.message.includes(peer.userId), refused.message);
  assert.equal(shown, 0, 'no SAS was shown');
  assert.equal(await peer.deviceVerified(s.bot.user.userId, s.botDevice), false);
});

test('an allowed request with no verificationRequest handler and no autoConfirm is cancelled (nobody could compare the SAS)', async (t) => {
  const peer = await newJsPeer(t, hs);
  const s = await setup(t, peer, { verification: { from: [peer.userId] } });
  const request = await peer.requestVerification(s.bot.user.userId, s.botDevice);
  await peer.runSas(request, { start: true }).then(
    () => assert.fail('the verification went through'),
    () => {}, // cancelled by the bot
  );
  await peer.waitForPhase(request, VerificationPhase.Cancelled, WAIT_MS);
  assert.equal(await peer.deviceVerified(s.bot.user.userId, s.botDevice), false);
});
