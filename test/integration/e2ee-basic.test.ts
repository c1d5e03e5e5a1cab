/** E2EE end to end with a real, independent peer (matrix-js-sdk 43 with its Rust crypto) over Synapse. */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { HalcyonError, Message } from '../../src/index.ts';
import { startJsPeer } from '../harness/js-peer.ts';
import { testHomeserver, withTimeout, type Homeserver } from '../harness/synapse.ts';
import { defer, deferred, newBot, WAIT_MS } from './util.ts';

let hs: Homeserver;
before(async () => {
  hs = await testHomeserver();
});
after(async () => {
  await hs?.stop();
});

for (const threads of ['worker', 'inline'] as const) {
  describe(`encrypted room (threads: ${threads})`, () => {
    test('the peer\'s encrypted hello reaches the handler decrypted; the encrypted reply decrypts at the peer', async (t) => {
      const bot = await newBot(t, hs, { threads });
      const peer = await startJsPeer(hs);
      defer(t, () => peer.stop());
      const got = deferred<{ body: string; encrypted: boolean; roomEncrypted: boolean }>();
      const decryptionErrors: HalcyonError[] = [];
      bot.client.on('decryptionError', (e) => void decryptionErrors.push(e));
      bot.client.on('message', async (m: Message) => {
        await m.reply(`you said ${m.body}`);
        got.resolve({ body: m.body, encrypted: m.isEncrypted, roomEncrypted: m.room.encrypted });
      });
      await bot.client.run(bot.token);
      const keys = bot.client.whoami().identityKeys;
      assert.ok(keys && keys.curve25519.length > 40 && keys.ed25519.length > 40, 'identity keys are exposed');

      const roomId = await peer.createEncryptedRoom({ invite: [bot.user.userId] });
      await peer.waitForMember(roomId, bot.user.userId, 'join');
      await peer.sendText(roomId, 'hello');
      const m = await withTimeout(got.promise, WAIT_MS, 'the decrypted hello').catch(async (e) => {
        console.error('DEBUG', decryptionErrors, bot.errors, await bot.client.cryptoStatus(), peer.messages(roomId));
        throw e;
      });
      assert.deepEqual(m, { body: 'hello', encrypted: true, roomEncrypted: true });
      const reply = await peer.waitForMessage(roomId, (x) => x.sender === bot.user.userId);
      assert.equal(reply.encrypted, true, 'the reply went out encrypted');
      assert.equal(reply.body, 'you said hello');
      assert.deepEqual(decryptionErrors, []);
      assert.deepEqual(bot.errors, []);
    });
  });
}
