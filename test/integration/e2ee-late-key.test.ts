/**
 * A room key that arrives after its message, over the real Synapse. The sender is an OlmPeer (a raw OlmMachine
 * talking HTTP itself), so the test decides the order: the encrypted room event goes out first, the to-device
 * messages carrying its key only once the bot has reported the event undecryptable. The bot must then deliver
 * the message to its usual handler, marked as decrypted late.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { DecryptionErrorInfo, HalcyonError, Message } from '../../src/index.ts';
import { OlmPeer } from '../harness/olm-peer.ts';
import { testHomeserver, withTimeout, type Homeserver } from '../harness/synapse.ts';
import { defer, deferred, newBot, newClient, WAIT_MS, waitUntil } from './util.ts';

let hs: Homeserver;
before(async () => {
  hs = await testHomeserver();
});
after(async () => {
  await hs?.stop();
});

for (const threads of ['worker', 'inline'] as const) {
  describe(`late room key (threads: ${threads})`, () => {
    test('an event sent before its room key: decryptionError (MISSING_KEY, willRetry), then the message handler gets it decrypted late', async (t) => {
      const bot = await newBot(t, hs, { threads });
      const peer = await OlmPeer.start(hs);
      defer(t, () => peer.stop());

      const decryptionErrors: Array<{ code: string; info: DecryptionErrorInfo }> = [];
      const undecryptable = deferred<{ code: string; info: DecryptionErrorInfo }>();
      bot.client.on('decryptionError', (e: HalcyonError, info) => {
        decryptionErrors.push({ code: e.code, info });
        undecryptable.resolve({ code: e.code, info });
      });
      const messages: Array<{ eventId: string; body: string; sender: string; isEncrypted: boolean; decryptedLate: boolean }> = [];
      const delivered = deferred<void>();
      bot.client.on('message', async (m: Message) => {
        messages.push({ eventId: m.eventId, body: m.body, sender: m.sender, isEncrypted: m.isEncrypted, decryptedLate: m.decryptedLate });
        delivered.resolve();
        if (m.decryptedLate) await m.reply(`late, but got "${m.body}"`);
      });
      await bot.client.run(bot.token);

      const roomId = await peer.createEncryptedRoom([bot.user.userId]);
      await peer.http.waitForJoined(roomId, bot.user.userId, WAIT_MS);

      // The key is made (one-time key claimed, to-device messages built) but held back; the event goes out first.
      const held = await peer.prepareRoomKey(roomId);
      assert.ok(held.requests.length > 0, 'there is a room key to hold back');
      const sent = await peer.sendEncrypted(roomId, 'm.room.message', { msgtype: 'm.text', body: 'the key comes later' });

      const dump = async () => JSON.stringify({ decryptionErrors, messages, errors: bot.errors.map((e) => `${e.code}: ${e.message}`), crypto: await bot.client.cryptoStatus() });
      const failure = await withTimeout(undecryptable.promise, WAIT_MS, 'the decryptionError of the event whose key is held back').catch(async (e) => {
        throw new Error(`${(e as Error).message}; ${await dump()}`);
      });
      assert.equal(failure.code, 'HALCYON_DECRYPT_MISSING_KEY');
      assert.deepEqual(failure.info, { roomId, eventId: sent.eventId, sender: peer.userId, sessionId: sent.content.session_id, willRetry: true, withheldCode: null });
      assert.deepEqual(messages, [], 'nothing was delivered before the key');
      assert.equal((await bot.client.cryptoStatus())?.pendingUndecryptable, 1);

      await peer.releaseKeys(held);
      await withTimeout(delivered.promise, WAIT_MS, 'the late message').catch(async (e) => {
        throw new Error(`${(e as Error).message}; ${await dump()}`);
      });
      assert.deepEqual(messages, [{ eventId: sent.eventId, body: 'the key comes later', sender: peer.userId, isEncrypted: true, decryptedLate: true }]);
      assert.equal(decryptionErrors.length, 1);
      assert.deepEqual(bot.errors, []);

      // The handler's reply to the late message goes out encrypted, and the peer decrypts it.
      const reply = await peer.waitForMessage(roomId, (r) => r.sender === bot.user.userId, WAIT_MS);
      assert.equal(reply.encrypted, true);
      assert.equal(reply.body, 'late, but got "the key comes later"');

      // A message in the same session after the key is an ordinary (not late) encrypted message.
      const onTime = deferred<void>();
      bot.client.on('message', (m: Message) => {
        if (m.body === 'on time') onTime.resolve();
      });
      await peer.releaseKeys(await peer.prepareRoomKey(roomId)); // nothing new to share: same session
      const second = await peer.sendEncrypted(roomId, 'm.room.message', { msgtype: 'm.text', body: 'on time' });
      assert.equal(second.content.session_id, sent.content.session_id);
      await withTimeout(onTime.promise, WAIT_MS, 'the second message');
      assert.deepEqual(messages[1], { eventId: second.eventId, body: 'on time', sender: peer.userId, isEncrypted: true, decryptedLate: false });
      assert.equal(decryptionErrors.length, 1);
      // Main acknowledged the late event, so the crypto actor forgot it.
      await waitUntil(async () => (await bot.client.cryptoStatus())?.pendingUndecryptable === 0, WAIT_MS, 'the handled late event to be forgotten');
    });

    test('the undecryptable event is kept across a restart: the key sent while the bot is stopped delivers it late after', async (t) => {
      const bot = await newBot(t, hs, { threads });
      const peer = await OlmPeer.start(hs);
      defer(t, () => peer.stop());
      const undecryptable = deferred<DecryptionErrorInfo>();
      bot.client.on('decryptionError', (_e, info) => undecryptable.resolve(info));
      const early: Message[] = [];
      bot.client.on('message', (m: Message) => void early.push(m));
      await bot.client.run(bot.token);
      const identity = bot.client.whoami().identityKeys;

      const roomId = await peer.createEncryptedRoom([bot.user.userId]);
      await peer.http.waitForJoined(roomId, bot.user.userId, WAIT_MS);
      const held = await peer.prepareRoomKey(roomId);
      const sent = await peer.sendEncrypted(roomId, 'm.room.message', { msgtype: 'm.text', body: 'kept across a restart' });
      const info = await withTimeout(undecryptable.promise, WAIT_MS, 'the decryptionError before the restart');
      assert.equal(info.eventId, sent.eventId);
      assert.equal(info.willRetry, true);
      await bot.client.stop();

      await peer.releaseKeys(held); // while no client runs: the to-device messages wait on the server

      const second = newClient(t, bot.dataDir, { threads });
      const errors: HalcyonError[] = [];
      second.on('error', (e) => void errors.push(e));
      const secondFailures: DecryptionErrorInfo[] = [];
      second.on('decryptionError', (_e, i) => void secondFailures.push(i));
      const got = deferred<{ eventId: string; body: string; isEncrypted: boolean; decryptedLate: boolean }>();
      second.on('message', (m: Message) => got.resolve({ eventId: m.eventId, body: m.body, isEncrypted: m.isEncrypted, decryptedLate: m.decryptedLate }));
      await second.run(bot.token);
      assert.deepEqual(second.whoami().identityKeys, identity, 'the same device identity after the restart');
      const m = await withTimeout(got.promise, WAIT_MS, 'the late message after the restart').catch(async (e) => {
        throw new Error(`${(e as Error).message}; ${JSON.stringify({ secondFailures, errors: errors.map((x) => `${x.code}: ${x.message}`), crypto: await second.cryptoStatus() })}`);
      });
      assert.deepEqual(m, { eventId: sent.eventId, body: 'kept across a restart', isEncrypted: true, decryptedLate: true });
      assert.deepEqual(early, [], 'the first client never delivered it');
      assert.deepEqual(secondFailures, [], 'the event is not reported undecryptable again');
      assert.deepEqual(errors, []);
      assert.deepEqual(bot.errors, []);
    });
  });
}
