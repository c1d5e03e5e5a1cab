/**
 * What reaches which handler (real Synapse, matrix-js-sdk peer): other senders' notices stay away from `message`
 * handlers by default (the spec: never answer a notice automatically); a withheld room key is reported with its
 * code, and logged when nobody listens for decryption errors.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { DecryptionErrorInfo, Message, RoomEvent } from '../../src/index.ts';
import { startJsPeer } from '../harness/js-peer.ts';
import { testHomeserver, type Homeserver } from '../harness/synapse.ts';
import { defer, newBot, newPeer, roomWithBot, WAIT_MS, waitUntil } from './util.ts';

let hs: Homeserver;
before(async () => {
  hs = await testHomeserver();
});
after(async () => {
  await hs?.stop();
});

test("other senders' notices reach event handlers but not message handlers, unless deliverNotices", async (t) => {
  for (const deliverNotices of [false, true]) {
    const bot = await newBot(t, hs, { encryption: false, deliverNotices });
    const messages: Message[] = [];
    const events: RoomEvent[] = [];
    bot.client.on('message', (m) => void messages.push(m));
    bot.client.on('event', (e) => void events.push(e));
    await bot.client.run(bot.token);
    const peer = await newPeer(hs);
    const roomId = await roomWithBot(peer, bot.user.userId);
    const notice = await peer.sendEvent(roomId, 'm.room.message', { msgtype: 'm.notice', body: 'I am a bot' });
    const text = await peer.sendText(roomId, 'I am a person');
    await waitUntil(() => messages.some((m) => m.eventId === text), WAIT_MS, 'the text message');
    assert.ok(events.some((e) => e.eventId === notice), 'the notice reached event handlers');
    assert.deepEqual(messages.map((m) => m.eventId), deliverNotices ? [notice, text] : [text]);
    if (deliverNotices) assert.equal(messages[0]!.isNotice, true);
    await bot.client.stop();
  }
});

test('a withheld room key: decryptionError carries withheldCode; with no listener, a warning says what it means', async (t) => {
  const warnings: Array<{ obj: unknown; msg: string }> = [];
  const logger = { debug() {}, info() {}, warn: (obj: unknown, msg?: string) => void warnings.push({ obj, msg: msg ?? '' }), error() {} };
  const quiet = await newBot(t, hs, { logger });
  const listening = await newBot(t, hs);
  const infos: DecryptionErrorInfo[] = [];
  listening.client.on('decryptionError', (_e, info) => void infos.push(info));
  await quiet.client.run(quiet.token);
  await listening.client.run(listening.token);
  const peer = await startJsPeer(hs);
  defer(t, () => peer.stop());
  // Keys for verified devices only: matrix-js-sdk withholds them from the bots' unverified devices (m.unverified).
  peer.client.getCrypto()!.globalBlacklistUnverifiedDevices = true;
  const roomId = await peer.createEncryptedRoom({ invite: [quiet.user.userId, listening.user.userId] });
  await peer.waitForMember(roomId, quiet.user.userId, 'join');
  await peer.waitForMember(roomId, listening.user.userId, 'join');
  const id = await peer.sendText(roomId, 'not for unverified devices');
  const info = await waitUntil(() => infos.find((i) => i.eventId === id), WAIT_MS, 'the decryptionError');
  assert.equal(info.withheldCode, 'm.unverified');
  assert.equal(info.willRetry, false);
  const line = await waitUntil(() => warnings.find((w) => w.msg.startsWith(`cannot decrypt ${id}`)), WAIT_MS, 'the warning');
  assert.match(line.msg, /m\.unverified/);
  assert.match(line.msg, /not cross-signed or verified/);
  assert.equal((line.obj as DecryptionErrorInfo).withheldCode, 'm.unverified');
});
