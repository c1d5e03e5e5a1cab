/**
 * A fresh run's initial sync is processed as a stream (src/sync/split.ts), its joined rooms' state applied slice
 * by slice, with encryption on too. A new device of a bot already in an encrypted room (a fresh data dir) knows
 * the room as encrypted from that sync and sends there at once; the peer must decrypt it. (The same send also
 * works when the crypto actor is not told the slices' rooms with the batch: the send path asks for members itself.)
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { Client } from '../../src/index.ts';
import { startJsPeer } from '../harness/js-peer.ts';
import { testHomeserver, type Homeserver } from '../harness/synapse.ts';
import { defer, newBot, newClient, tempDataDir } from './util.ts';

let hs: Homeserver;
before(async () => {
  hs = await testHomeserver();
});
after(async () => {
  await hs?.stop();
});

test("a new device's first sync, streamed with encryption on: the room is known encrypted and what it sends at once decrypts at the peer", async (t) => {
  const bot = await newBot(t, hs);
  const peer = await startJsPeer(hs);
  defer(t, () => peer.stop());
  await bot.client.run(bot.token);
  const roomId = await peer.createEncryptedRoom({ invite: [bot.user.userId] });
  await peer.waitForMember(roomId, bot.user.userId, 'join');
  await bot.client.stop();

  const dataDir = tempDataDir(t);
  const token = await Client.login({ homeserver: hs.baseUrl, user: bot.user.localpart, password: bot.user.password, dataDir });
  const fresh = newClient(t, dataDir);
  await fresh.run(token);
  assert.equal((await fresh.getRoom(roomId))?.encrypted, true);
  await fresh.sendMessage(roomId, 'from the new device');
  const got = await peer.waitForMessage(roomId, (m) => m.sender === bot.user.userId && m.body === 'from the new device');
  assert.equal(got.encrypted, true);
});
