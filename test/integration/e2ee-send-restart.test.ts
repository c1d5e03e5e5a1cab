/**
 * Sends into an encrypted room while an actor restarts (real Synapse behind the fault proxy, matrix-js-sdk peer):
 * the crypto actor is absent for a second or more during every restart, and the outbox keeps its lanes going.
 * No send may leave in the clear meanwhile, and none may become a dead letter: each waits for the crypto actor
 * and arrives encrypted, once.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { startJsPeer } from '../harness/js-peer.ts';
import { testHomeserver, type Homeserver } from '../harness/synapse.ts';
import { proxiedBot } from '../helpers/proxied-bot.ts';
import { defer, WAIT_MS } from './util.ts';
import { crashActorForTests } from '../../src/client/testing.ts';

let hs: Homeserver;
before(async () => {
  hs = await testHomeserver();
});
after(async () => {
  await hs?.stop();
});

for (const victim of ['sync', 'cache', 'crypto'] as const) {
  test(`the ${victim} worker crashes while sends to an encrypted room keep coming: none leaves in the clear, each arrives encrypted once`, async (t) => {
    const bot = await proxiedBot(t, hs, { client: { encryption: true }, reply: false });
    await bot.client.run(bot.token);
    const peer = await startJsPeer(hs);
    defer(t, () => peer.stop());
    const roomId = await peer.createEncryptedRoom({ invite: [bot.user.userId] });
    await peer.waitForMember(roomId, bot.user.userId, 'join');
    await bot.client.waitForRoom(roomId);
    const first = await bot.client.sendMessage(roomId, 'before the crash');
    await peer.waitForMessage(roomId, (m) => m.eventId === first);

    // Sends are fired every few milliseconds from the crash until the actors are back, and a few after: some
    // of them meet the window where the crypto actor is gone or still opening.
    const sends: Array<{ body: string; result: Promise<string> }> = [];
    const fire = () => {
      const body = `during ${sends.length}`;
      sends.push({ body, result: bot.client.sendMessage(roomId, body) });
    };
    await crashActorForTests(bot.client, victim);
    const restarted = () => bot.logs.some((l) => l.includes('actors restarted'));
    while (!restarted()) {
      fire();
      await new Promise((r) => setTimeout(r, 25));
    }
    for (let i = 0; i < 3; i++) fire();

    const settled = await Promise.allSettled(sends.map((s) => s.result));
    const failed = settled.flatMap((s, i) => (s.status === 'rejected' ? [`${sends[i]!.body}: ${(s.reason as Error).message}`] : []));
    assert.deepEqual(failed, [], 'no send failed (none became a dead letter)');
    assert.deepEqual(bot.sendFailed, []);
    const clear = bot.proxy.records.filter((r) => r.method === 'PUT' && r.path.includes(`/rooms/${encodeURIComponent(roomId)}/send/m.room.message/`));
    assert.deepEqual(clear.map((r) => r.path), [], 'no m.room.message was PUT in the clear into the encrypted room');

    const ids = settled.map((s) => (s as PromiseFulfilledResult<string>).value);
    for (const [i, id] of ids.entries()) {
      const seen = await peer.waitForMessage(roomId, (m) => m.eventId === id, WAIT_MS);
      assert.equal(seen.encrypted, true, `${sends[i]!.body} arrived encrypted`);
      assert.equal(seen.body, sends[i]!.body);
    }
    const bodies = peer.messages(roomId).filter((m) => m.sender === bot.user.userId).map((m) => m.body);
    for (const s of sends) assert.equal(bodies.filter((b) => b === s.body).length, 1, `${s.body} arrived once`);
  });
}
