/**
 * The two trust levels of `message.encryption.trust` that need a sender to change under the bot, over Synapse with
 * matrix-js-sdk peers: `identity-changed` (a peer the bot verified resets its cross-signing identity) and
 * `unknown-device` (the sender device is deleted after sending, before the bot reads the message), each under
 * `trust: 'all'` (delivered, labelled) and the default `'signed'` (refused, as the Rust SDK's cross-signed rule does).
 */
import assert from 'node:assert/strict';
import { after, before, test, type TestContext } from 'node:test';
import type { ClientOptions } from '../../src/index.ts';
import { newJsPeer } from '../harness/js-peer.ts';
import { testHomeserver, withTimeout, type Homeserver } from '../harness/synapse.ts';
import { type Bot, newBot, newClient, recordMessages, WAIT_MS, waitUntil } from './util.ts';

let hs: Homeserver;
before(async () => {
  hs = await testHomeserver();
});
after(async () => {
  await hs?.stop();
});

/** A bot with `opts`, recording what it gets, and a dump of it for failed waits. */
async function botWith(t: TestContext, opts: Partial<ClientOptions>): Promise<Recorded> {
  return recorder(await newBot(t, hs, opts));
}

/** Records what `bot` gets, with a dump of it for failed waits. */
function recorder(bot: Bot) {
  const rec = recordMessages(bot);
  const dump = () => JSON.stringify({ messages: rec.messages.map((m) => [m.eventId, m.body, m.encryption]), decryptionErrors: rec.decryptionErrors, errors: bot.errors.map((e) => `${e.code}: ${e.message}`) });
  return { bot, rec, dump };
}

type Recorded = ReturnType<typeof recorder>;

/** What `b` made of event `eventId`: the message or the decryption error, once it has one of them. */
function outcome(b: Recorded, eventId: string) {
  return waitUntil(() => {
    const message = b.rec.messages.find((m) => m.eventId === eventId);
    const error = b.rec.decryptionErrors.find((e) => e.eventId === eventId);
    return (message || error) && { message, error };
  }, WAIT_MS, `the bot to handle ${eventId}`).catch((e) => {
    throw new Error(`${(e as Error).message}; ${b.dump()}`);
  });
}

/** The bot verifies the peer's device by SAS (the bot starts it, both confirm). */
async function verify(bot: Bot, peer: Awaited<ReturnType<typeof newJsPeer>>): Promise<void> {
  const done = bot.client.requestVerification(peer.userId, peer.deviceId);
  done.catch(() => {}); // awaited below
  await peer.runSas(await peer.nextVerificationRequest(bot.user.userId, WAIT_MS), { start: false });
  await withTimeout(done, WAIT_MS, 'requestVerification');
}

test("identity-changed: a peer the bot verified resets its cross-signing identity; its next message is labelled 'identity-changed' under trust 'all' and refused under 'signed'", async (t) => {
  const auto: Partial<ClientOptions> = { verification: { from: [], autoConfirm: true } };
  const all = await botWith(t, { trust: 'all', ...auto });
  const signed = await botWith(t, { ...auto });
  for (const b of [all, signed]) await b.bot.client.run(b.bot.token);
  const peer = await newJsPeer(t, hs);
  const roomId = await peer.createEncryptedRoom({ invite: [all.bot.user.userId, signed.bot.user.userId] });
  for (const b of [all, signed]) await peer.waitForMember(roomId, b.bot.user.userId, 'join');
  for (const b of [all, signed]) await verify(b.bot, peer);
  const first = await peer.sendText(roomId, 'before the reset');
  for (const b of [all, signed]) assert.equal((await outcome(b, first)).message?.encryption?.trust, 'verified', b.dump());

  await peer.resetIdentity();
  // Until a bot has fetched the new identity, a new message still reads as verified: send (each with a new room key,
  // whose sender is judged when it arrives) until both bots have judged one after the change.
  let last: { all: Awaited<ReturnType<typeof outcome>>; signed: Awaited<ReturnType<typeof outcome>> } | undefined;
  for (let i = 0; i < 10; i++) {
    await peer.discardRoomKey(roomId);
    const id = await peer.sendText(roomId, `after the reset ${i}`);
    last = { all: await outcome(all, id), signed: await outcome(signed, id) };
    if (last.all.message?.encryption?.trust !== 'verified' && last.signed.message?.encryption?.trust !== 'verified') break;
  }
  assert.ok(last);
  assert.equal(last.all.message?.encryption?.trust, 'identity-changed', all.dump());
  assert.equal(last.all.message?.encryption?.deviceId, peer.deviceId);
  assert.equal(last.signed.message, undefined, `refused under 'signed': ${signed.dump()}`);
  assert.equal(last.signed.error?.code, 'HALCYON_DECRYPT_UNTRUSTED');
  assert.match(last.signed.error.message, /verified before and has a new identity/);
  assert.equal(last.signed.error.willRetry, false);
  for (const b of [all, signed]) assert.deepEqual(b.bot.errors, [], b.dump());
});

test("unknown-device: a message whose sender device was deleted before the bot read it is labelled 'unknown-device' under trust 'all' and refused under 'signed'", async (t) => {
  const all = await botWith(t, { trust: 'all' });
  const signed = await botWith(t, {});
  for (const b of [all, signed]) await b.bot.client.run(b.bot.token);
  const peer = await newJsPeer(t, hs);
  const roomId = await peer.createEncryptedRoom({ invite: [all.bot.user.userId, signed.bot.user.userId] });
  for (const b of [all, signed]) await peer.waitForMember(roomId, b.bot.user.userId, 'join');
  // The bots stop, so that they never see the second device of the peer while it exists.
  for (const b of [all, signed]) await b.bot.client.stop();

  const second = await newJsPeer(t, hs, { login: { user: peer.userId, password: peer.password } });
  const eventId = await second.sendText(roomId, 'from a device that is gone');
  await second.stop();
  const token = (await peer.call((c) => c.getAccessToken()))!;
  const del = (auth?: unknown) => fetch(`${hs.baseUrl}/_matrix/client/v3/devices/${encodeURIComponent(second.deviceId)}`, {
    method: 'DELETE',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify(auth ? { auth } : {}),
  });
  const uia = (await (await del()).json()) as { session: string };
  const res = await del({ type: 'm.login.password', identifier: { type: 'm.id.user', user: peer.userId }, password: peer.password, session: uia.session });
  assert.equal(res.status, 200, 'the device is deleted');

  // The same bots again (same data dirs and devices).
  const again = [all, signed].map((b) => {
    const client = newClient(t, b.bot.dataDir, b === all ? { trust: 'all' } : {});
    const bot: Bot = { ...b.bot, client, errors: [] };
    client.on('error', (e) => void bot.errors.push(e));
    return recorder(bot);
  });
  for (const b of again) await b.bot.client.run(b.bot.token);
  const [onAll, onSigned] = [await outcome(again[0]!, eventId), await outcome(again[1]!, eventId)];
  assert.equal(onAll.message?.body, 'from a device that is gone', again[0]!.dump());
  assert.equal(onAll.message.encryption?.trust, 'unknown-device');
  assert.equal(onSigned.message, undefined, `refused under 'signed': ${again[1]!.dump()}`);
  assert.equal(onSigned.error?.code, 'HALCYON_DECRYPT_UNTRUSTED');
  assert.equal(onSigned.error.willRetry, false);
  for (const b of again) assert.deepEqual(b.bot.errors, [], b.dump());
});
