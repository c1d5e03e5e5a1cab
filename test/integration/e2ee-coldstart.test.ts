/**
 * Cold start with encryption on, against a real Synapse and an independent peer (matrix-js-sdk, Rust crypto): the
 * crypto store opens while the sync actor fetches and scans its first /sync (client/actors.ts), and the guarantees
 * hold whichever finishes first — the first batch's encrypted events reach handlers decrypted, exactly once, and a
 * run the crypto store refuses saves no sync token of the refused device.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { Client, type HalcyonError } from '../../src/index.ts';
import { newJsPeer } from '../harness/js-peer.ts';
import { testHomeserver, type Homeserver } from '../harness/synapse.ts';
import { loggingProxy, newBot, newClient, recordingClient, savedSince, tempDataDir, WAIT_MS, waitUntil } from './util.ts';

let hs: Homeserver;
before(async () => {
  hs = await testHomeserver();
});
after(async () => {
  await hs?.stop();
});

for (const threads of ['worker', 'inline'] as const) {
  test(`a run's first batch waits for the crypto store opening beside it (threads: ${threads}): the messages encrypted while stopped are delivered decrypted, once, in order`, async (t) => {
    // The crypto actor's requests while it opens are answered only once the sync actor has its first /sync body:
    // the batch is scanned and waits for the store, not the other way round.
    let second: ReturnType<typeof recordingClient> | null = null;
    const heldKeys: string[] = [];
    let armed = false;
    const synced = async () => ((await second?.client.health())?.sync?.polls ?? 0) >= 1;
    const proxy = await loggingProxy(t, hs.baseUrl, {
      hold: (_method, url) => {
        if (!armed || !url.startsWith('/_matrix/client/v3/keys/')) return null;
        heldKeys.push(url);
        return waitUntil(synced, WAIT_MS, 'the first /sync body').then(() => void (armed = false));
      },
      release: () => void (armed = false),
    });
    // The data dir is bound to the homeserver URL: the bot uses the proxy from its login on.
    const user = await hs.registerUser();
    const dataDir = tempDataDir(t);
    const token = await Client.login({ homeserver: proxy.url, user: user.localpart, password: user.password, dataDir, allowInsecureHttp: true });
    const first = newClient(t, dataDir, { threads, allowInsecureHttp: true });
    const peer = await newJsPeer(t, hs);
    await first.run(token);
    const roomId = await peer.createEncryptedRoom({ invite: [user.userId] });
    await peer.waitForMember(roomId, user.userId, 'join');
    await first.stop();
    const missed: string[] = [];
    for (let i = 1; i <= 3; i++) missed.push(await peer.sendText(roomId, `while stopped ${i}`));

    armed = true;
    second = recordingClient(t, dataDir, { threads, allowInsecureHttp: true });
    const syncErrors: string[] = [];
    second.client.on('syncError', (e) => void syncErrors.push(`${e.code}: ${e.message}`));
    await second.client.run(token);
    const afterId = await peer.sendText(roomId, 'after start');
    await waitUntil(() => second!.messages.some((m) => m.eventId === afterId), WAIT_MS, `the message after the start: ${second.dump()}`);
    assert.deepEqual(second.messages.map((m) => m.eventId), [...missed, afterId], second.dump());
    assert.ok(second.messages.every((m) => m.isEncrypted), 'all were encrypted');
    assert.deepEqual(second.decryptionErrors, []);
    assert.deepEqual(second.errors, []);
    assert.deepEqual(syncErrors, [], 'the first batch waited for the store instead of failing the poll');
    assert.ok(heldKeys.length > 0, 'the crypto store was still opening when the first /sync came');
    assert.ok(proxy.log.some((l) => l.includes('/sync')), 'the run synced through the proxy');
  });
}

test("another device's token on the data dir: the refused run saves no sync token of that device", async (t) => {
  const bot = await newBot(t, hs);
  await bot.client.run(bot.token);
  await bot.client.stop();
  const since = savedSince(bot.dataDir);
  assert.ok(since, 'the first run saved its token');

  const otherDeviceToken = await Client.login({ homeserver: hs.baseUrl, user: bot.user.localpart, password: bot.user.password });
  const c = recordingClient(t, bot.dataDir);
  const err = await c.client.run(otherDeviceToken).then(
    () => assert.fail('run() with another device token resolved'),
    (e: HalcyonError) => e,
  );
  assert.equal(err.code, 'HALCYON_STORE_MISMATCH', `got ${err.code}: ${err.message}`);
  assert.equal(savedSince(bot.dataDir), since, "the data dir still holds its own device's sync token");
});
