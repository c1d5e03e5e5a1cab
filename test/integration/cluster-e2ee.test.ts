/**
 * Cluster mode, encrypted rooms (real Synapse + real nats-server + a matrix-js-sdk peer): the ingest (in this
 * process) decrypts and publishes; two worker processes handle the messages and reply. The replies are encrypted
 * by the ingest's crypto actor (the OlmMachine's one owner) over request/reply and sent by the workers. Checked:
 * workers see the plaintext (`isEncrypted: true`), each message handled once, and the peer decrypts exactly one
 * reply per message.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { startJsPeer } from '../harness/js-peer.ts';
import { type NatsServer, startNats } from '../harness/nats.ts';
import { testHomeserver, type Homeserver } from '../harness/synapse.ts';
import type { BotLine } from '../helpers/fault-stream.ts';
import { clusterName, startClusterBot } from '../helpers/cluster.ts';
import { defer, newBot, tempDataDir, waitUntil } from './util.ts';

let hs: Homeserver;
let nats: NatsServer;
before(async () => {
  [hs, nats] = await Promise.all([testHomeserver(), startNats()]);
});
after(async () => {
  await Promise.all([hs?.stop(), nats?.stop()]);
});

const MESSAGES = 12;

test('an encrypted room through two workers: decrypted on the ingest, replies encrypted by its crypto actor, one each', { timeout: 180_000 }, async (t) => {
  const t0 = Date.now();
  const name = clusterName();
  const bot = await newBot(t, hs, { encryption: {}, cluster: { servers: nats.url, name, role: 'ingest', partitions: 4 } });
  await bot.client.run(bot.token);
  const lines: BotLine[] = [];
  const workers = ['w0', 'w1'].map((run) => startClusterBot(t, run, { HC_TOKEN: bot.token, HC_DIR: tempDataDir(t), HC_NATS: nats.url, HC_NAME: name, HC_ENCRYPTION: '1' }, lines));
  await Promise.all(workers.map((w) => w.waitFor((l) => l.kind === 'ready', `worker ${w.run} ready`, 60_000)));

  const peer = await startJsPeer(hs);
  defer(t, () => peer.stop());
  const roomId = await peer.createEncryptedRoom({ invite: [bot.user.userId] });
  await peer.waitForMember(roomId, bot.user.userId, 'join', 30_000);
  const sent: string[] = [];
  for (let i = 0; i < MESSAGES; i++) sent.push(await peer.sendText(roomId, `ping e2ee #${i}`));

  for (let i = 0; i < MESSAGES; i++) {
    const reply = await peer.waitForMessage(roomId, (m) => m.sender === bot.user.userId && m.body === `re: ping e2ee #${i}`, 60_000);
    assert.equal(reply.encrypted, true, `reply ${i} encrypted`);
  }
  await waitUntil(() => lines.filter((l) => l.kind === 'replied').length >= MESSAGES, 30_000, 'every reply acknowledged');
  const handled = lines.filter((l) => l.kind === 'message');
  assert.deepEqual(handled.map((l) => l.eventId).sort(), [...sent].sort(), 'each message handled once');
  assert.ok(handled.every((l) => l.isEncrypted === true), 'workers see the messages as decrypted');
  const replies = peer.messages(roomId).filter((m) => m.sender === bot.user.userId);
  assert.equal(replies.length, MESSAGES, 'one reply per message');
  assert.ok(replies.every((m) => m.encrypted && m.decryptionFailure === undefined), 'every reply encrypted and decryptable');
  assert.deepEqual(lines.filter((l) => l.kind === 'error' || l.kind === 'sendFailed'), []);
  assert.deepEqual(bot.errors, []);
  t.diagnostic(`wall time ${Date.now() - t0} ms`);
});
