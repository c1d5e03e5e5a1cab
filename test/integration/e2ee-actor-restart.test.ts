/**
 * The crypto actor's worker crashes while encrypted messages flow (real Synapse, matrix-js-sdk peer): the actors
 * restart on the same store, and every message is delivered decrypted, once, in order.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { HalcyonError, Message } from '../../src/index.ts';
import { startJsPeer } from '../harness/js-peer.ts';
import { testHomeserver, type Homeserver } from '../harness/synapse.ts';
import { defer, newBot, WAIT_MS, waitUntil } from './util.ts';
import { crashActorForTests } from '../../src/client/testing.ts';

let hs: Homeserver;
before(async () => {
  hs = await testHomeserver();
});
after(async () => {
  await hs?.stop();
});

test('the crypto worker crashes mid-stream: the actors restart on the same store; all encrypted messages arrive decrypted, once, in order', async (t) => {
  const bot = await newBot(t, hs);
  const got: Message[] = [];
  const errors: HalcyonError[] = [];
  bot.client.on('message', (m) => void got.push(m));
  bot.client.on('error', (e) => void errors.push(e));
  await bot.client.run(bot.token);
  const keys = bot.client.whoami().identityKeys;
  const peer = await startJsPeer(hs);
  defer(t, () => peer.stop());
  const roomId = await peer.createEncryptedRoom({ invite: [bot.user.userId] });
  await peer.waitForMember(roomId, bot.user.userId, 'join');

  const ids: string[] = [];
  for (let i = 0; i < 10; i++) ids.push(await peer.sendText(roomId, `before ${i}`));
  await waitUntil(() => got.length >= 3, WAIT_MS, 'the first messages');
  await crashActorForTests(bot.client, 'crypto');
  for (let i = 0; i < 10; i++) ids.push(await peer.sendText(roomId, `after ${i}`));
  await waitUntil(() => ids.every((id) => got.some((m) => m.eventId === id)), 60_000, `all 20 messages (got ${got.length}; errors ${errors.map((e) => e.code).join(', ')})`);

  assert.deepEqual(got.map((m) => m.eventId), ids, 'each once, in order');
  assert.ok(got.every((m) => m.isEncrypted), 'all decrypted');
  assert.deepEqual(got.map((m) => m.body), [...Array.from({ length: 10 }, (_, i) => `before ${i}`), ...Array.from({ length: 10 }, (_, i) => `after ${i}`)]);
  assert.deepEqual(errors.map((e) => e.code), ['HALCYON_ACTOR_DIED']);
  assert.deepEqual(bot.client.whoami().identityKeys, keys, 'same identity after the restart');
  // And the bot can still send encrypted.
  const sent = await bot.client.sendMessage(roomId, 'still here');
  const seen = await peer.waitForMessage(roomId, (m) => m.eventId === sent);
  assert.equal(seen.body, 'still here');
  assert.equal(seen.encrypted, true);
});
