/**
 * E2EE interop with independent peers (matrix-js-sdk 43, Rust crypto) over a real Synapse: several devices of
 * one user, devices and users that appear after the bot's outbound session exists, bot-initiated sends, and a
 * bot with encryption turned off.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { HalcyonError, Message } from '../../src/index.ts';
import { type JsPeer, newJsPeer } from '../harness/js-peer.ts';
import { testHomeserver, withTimeout, type Homeserver } from '../harness/synapse.ts';
import { deferred, newBot, newPeer, roomWithBot, WAIT_MS, waitUntil, type Bot, recordMessages } from './util.ts';

let hs: Homeserver;
before(async () => {
  hs = await testHomeserver();
});
after(async () => {
  await hs?.stop();
});

/** Waits for the bot to have a message with `body`; dumps what it knows on timeout. */
async function botGot(bot: Bot, rec: ReturnType<typeof recordMessages>, pred: (m: Message) => boolean, what: string): Promise<Message> {
  try {
    return await waitUntil(() => rec.messages.find(pred), WAIT_MS, what);
  } catch (e) {
    console.error('DEBUG', what, { decryptionErrors: rec.decryptionErrors, errors: bot.errors, status: await bot.client.cryptoStatus().catch((x) => String(x)) });
    throw e;
  }
}

for (const threads of ['worker', 'inline'] as const) {
  describe(`two devices of one peer user (threads: ${threads})`, () => {
    test('A1 sends, the bot decrypts; the bot\'s encrypted reply decrypts on both A1 and A2', async (t) => {
      const bot = await newBot(t, hs, { threads });
      const rec = recordMessages(bot);
      bot.client.on('message', async (m) => {
        if (m.body === 'hello from A1') await m.reply('reply to both devices');
      });
      await bot.client.run(bot.token);

      const a1 = await newJsPeer(t, hs);
      const a2 = await newJsPeer(t, hs, { login: { user: a1.userId, password: a1.password } });
      assert.equal(a2.userId, a1.userId);
      assert.notEqual(a2.deviceId, a1.deviceId);

      const roomId = await a1.createEncryptedRoom({ invite: [bot.user.userId] });
      await a1.waitForMember(roomId, bot.user.userId, 'join');
      await a2.waitForMember(roomId, a1.userId, 'join');
      await a1.sendText(roomId, 'hello from A1');

      const m = await botGot(bot, rec, (x) => x.body === 'hello from A1', 'the decrypted hello from A1');
      assert.equal(m.isEncrypted, true);
      assert.equal(m.sender, a1.userId);

      const fromBot = (x: { sender: string }) => x.sender === bot.user.userId;
      const [r1, r2] = await Promise.all([a1.waitForMessage(roomId, fromBot), a2.waitForMessage(roomId, fromBot)]);
      for (const [name, r] of [['A1', r1], ['A2', r2]] as const) {
        assert.equal(r.encrypted, true, `${name}: the reply went out encrypted`);
        assert.equal(r.decryptionFailure, undefined, `${name} could not decrypt the reply: ${r.decryptionFailure}`);
        assert.equal(r.body, 'reply to both devices', `${name} decrypted the reply`);
      }
      assert.deepEqual(rec.decryptionErrors, []);
      assert.deepEqual(bot.errors, []);
    });
  });
}

describe('devices that appear after the bot shared its room key (threads: worker)', () => {
  test('a new user joining after the bot sent: the bot\'s next (single) message decrypts for them', async (t) => {
    const bot = await newBot(t, hs);
    const rec = recordMessages(bot);
    await bot.client.run(bot.token);
    const a = await newJsPeer(t, hs);
    const roomId = await a.createEncryptedRoom({ invite: [bot.user.userId] });
    await a.waitForMember(roomId, bot.user.userId, 'join');

    // The bot's outbound session exists and is shared with A only.
    await bot.client.sendMessage(roomId, 'before B');
    const early = await a.waitForMessage(roomId, (x) => x.sender === bot.user.userId && x.body === 'before B');
    assert.equal(early.encrypted, true);

    const b = await newJsPeer(t, hs);
    const botSawJoin = deferred();
    bot.client.on('member', (mem) => {
      if (mem.roomId === roomId && mem.userId === b.userId && mem.membership === 'join') botSawJoin.resolve();
    });
    assert.equal(await bot.client.isRoomEncrypted(roomId), true);
    await a.client.invite(roomId, b.userId);
    await b.waitForMember(roomId, b.userId, 'invite');
    await b.joinRoom(roomId);
    // The bot's sync has B's join (its crypto applied the batch's member and device-list changes before handlers ran).
    await withTimeout(botSawJoin.promise, WAIT_MS, "the bot's member event for B's join");

    const sentId = await bot.client.sendMessage(roomId, 'after B joined');
    const got = await b.waitForMessage(roomId, (x) => x.eventId === sentId, WAIT_MS).catch((e) => {
      console.error('DEBUG B view', b.messages(roomId));
      throw e;
    });
    assert.equal(got.encrypted, true);
    assert.equal(got.decryptionFailure, undefined, `B could not decrypt the bot's message: ${got.decryptionFailure}`);
    assert.equal(got.body, 'after B joined');
    const aGot = await a.waitForMessage(roomId, (x) => x.eventId === sentId);
    assert.equal(aGot.body, 'after B joined', 'A still decrypts too');
    assert.deepEqual(rec.decryptionErrors, []);
    assert.deepEqual(bot.errors, []);
  });

  test('a new device of a member started after the bot sent: the bot\'s next (single) message decrypts on it', async (t) => {
    const bot = await newBot(t, hs);
    const rec = recordMessages(bot);
    await bot.client.run(bot.token);
    const a1 = await newJsPeer(t, hs);
    const roomId = await a1.createEncryptedRoom({ invite: [bot.user.userId] });
    await a1.waitForMember(roomId, bot.user.userId, 'join');
    await bot.client.sendMessage(roomId, 'before A3');
    await a1.waitForMessage(roomId, (x) => x.sender === bot.user.userId && x.body === 'before A3');

    const a3 = await newJsPeer(t, hs, { login: { user: a1.userId, password: a1.password } });
    // A marker sent after A3's keys were uploaded: the bot's sync that carries it carries the device-list change
    // of A too (or an earlier one did), and the crypto actor applies it before the marker reaches the handler.
    await a1.waitForDevice(a1.userId, a3.deviceId);
    const markerId = await a1.sendText(roomId, 'marker after A3');
    await botGot(bot, rec, (m) => m.eventId === markerId, 'the marker sent after A3 started');

    const sentId = await bot.client.sendMessage(roomId, 'after A3 started');
    const got = await a3.waitForMessage(roomId, (x) => x.eventId === sentId, WAIT_MS).catch((e) => {
      console.error('DEBUG A3 view', a3.messages(roomId));
      throw e;
    });
    assert.equal(got.encrypted, true);
    assert.equal(got.decryptionFailure, undefined, `A3 could not decrypt the bot's message: ${got.decryptionFailure}`);
    assert.equal(got.body, 'after A3 started');
    assert.deepEqual(rec.decryptionErrors, []);
    assert.deepEqual(bot.errors, []);
  });
});

describe('bot-initiated sends (threads: worker)', () => {
  test('the bot sends first into an encrypted room the peer created; isRoomEncrypted is true there and false in a plain room', async (t) => {
    const bot = await newBot(t, hs);
    const rec = recordMessages(bot);
    await bot.client.run(bot.token);
    const peer = await newJsPeer(t, hs);
    const roomId = await peer.createEncryptedRoom({ invite: [bot.user.userId] });
    await peer.waitForMember(roomId, bot.user.userId, 'join');

    assert.equal(await bot.client.isRoomEncrypted(roomId), true, 'isRoomEncrypted of the encrypted room');
    const sentId = await bot.client.sendMessage(roomId, 'the bot speaks first');
    const got = await peer.waitForMessage(roomId, (x) => x.eventId === sentId);
    assert.equal(got.encrypted, true);
    assert.equal(got.decryptionFailure, undefined, `the peer could not decrypt: ${got.decryptionFailure}`);
    assert.equal(got.body, 'the bot speaks first');

    const plainPeer = await newPeer(hs);
    const plainRoom = await roomWithBot(plainPeer, bot.user.userId);
    assert.equal(await bot.client.isRoomEncrypted(plainRoom), false, 'isRoomEncrypted of a plain room');
    // And a send there goes out in the clear.
    const plainId = await bot.client.sendMessage(plainRoom, 'plain text');
    const ev = await plainPeer.waitFor((e, r, section) => section === 'timeline' && r === plainRoom && e.event_id === plainId, WAIT_MS);
    assert.equal(ev.type, 'm.room.message');
    assert.equal(ev.content.body, 'plain text');
    assert.deepEqual(rec.decryptionErrors, []);
    assert.deepEqual(bot.errors, []);
  });
});

describe('encryption: false (threads: worker)', () => {
  test('refuses plaintext into an encrypted room unless allowPlaintext; encrypted events are reported; the bot keeps answering elsewhere', async (t) => {
    const bot = await newBot(t, hs, { encryption: false });
    const rec = recordMessages(bot);
    bot.client.on('message', async (m) => {
      if (m.body === 'ping') await m.reply('pong');
    });
    await bot.client.run(bot.token);
    assert.equal(bot.client.whoami().identityKeys, undefined, 'no identity keys with encryption off');
    assert.equal(await bot.client.cryptoStatus(), null, 'cryptoStatus is null with encryption off');

    const peer: JsPeer = await newJsPeer(t, hs);
    const roomId = await peer.createEncryptedRoom({ invite: [bot.user.userId] });
    await peer.waitForMember(roomId, bot.user.userId, 'join');
    // The room cache decides with encryption off: wait for it to have seen the room's state.
    await waitUntil(() => bot.client.isRoomEncrypted(roomId), WAIT_MS, 'the bot (encryption off) to know the room is encrypted');

    const refused = await bot.client.sendMessage(roomId, 'must not go out').then(
      () => null,
      (e: HalcyonError) => e,
    );
    assert.ok(refused, 'sendMessage into an encrypted room resolved with encryption off');
    assert.equal(refused.code, 'HALCYON_ROOM_ENCRYPTED');

    const plainId = await bot.client.sendMessage(roomId, 'in the clear, on purpose', { allowPlaintext: true });
    const seen = await peer.waitForMessage(roomId, (x) => x.eventId === plainId);
    assert.equal(seen.encrypted, false);
    assert.equal(seen.body, 'in the clear, on purpose');
    assert.ok(!peer.messages(roomId).some((x) => x.body === 'must not go out'), 'the refused message is not in the room');

    const encId = await peer.sendText(roomId, 'secret for a bot that cannot read');
    const de = await waitUntil(() => rec.decryptionErrors.find((x) => x.eventId === encId), WAIT_MS, 'the decryptionError of the encrypted event');
    assert.equal(de.code, 'HALCYON_DECRYPT_FAILED');
    assert.equal(de.roomId, roomId);
    assert.equal(de.sender, peer.userId);
    assert.equal(de.willRetry, false);
    assert.ok(!rec.messages.some((m) => m.eventId === encId), 'the undecryptable event was not delivered as a message');

    // Still alive: answers in a plain room.
    const plainPeer = await newPeer(hs);
    const plainRoom = await roomWithBot(plainPeer, bot.user.userId);
    await plainPeer.sendText(plainRoom, 'ping');
    const pong = await plainPeer.waitFor((e, r, s) => s === 'timeline' && r === plainRoom && e.sender === bot.user.userId && e.type === 'm.room.message', WAIT_MS);
    assert.equal(pong.content.body, 'pong');
    assert.deepEqual(bot.errors, []);
  });
});
