/**
 * What handlers read of messages a peer sends over a real Synapse, where the spec asks clients to interpret
 * content: reply fallbacks stripped (rich replies, changed in v1.13), mentions from HTML pills.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { Message } from '../../src/index.ts';
import { testHomeserver, type Homeserver } from '../harness/synapse.ts';
import { newBot, newPeer, roomWithBot, WAIT_MS, waitUntil } from './util.ts';

let hs: Homeserver;
before(async () => {
  hs = await testHomeserver();
});
after(async () => {
  await hs?.stop();
});

test('a reply with an old-style fallback: body and formattedBody without it, content as sent', async (t) => {
  const bot = await newBot(t, hs);
  const peer = await newPeer(hs);
  const messages: Message[] = [];
  bot.client.on('message', (m) => void messages.push(m));
  await bot.client.run(bot.token);
  const roomId = await roomWithBot(peer, bot.user.userId);

  const original = await bot.client.sendMessage(roomId, 'what is 6 times 7?');
  const B = bot.user.userId;
  const content = {
    msgtype: 'm.text',
    body: `> <${B}> what is 6 times 7?\n\n42, **obviously**`,
    format: 'org.matrix.custom.html',
    formatted_body:
      `<mx-reply><blockquote><a href="https://matrix.to/#/${roomId}/${original}">In reply to</a> ` +
      `<a href="https://matrix.to/#/${B}">${B}</a><br>what is 6 times 7?</blockquote></mx-reply>42, <strong>obviously</strong>`,
    'm.relates_to': { 'm.in_reply_to': { event_id: original } },
  };
  const replyId = await peer.sendEvent(roomId, 'm.room.message', content);
  const reply = await waitUntil(() => messages.find((m) => m.eventId === replyId), WAIT_MS, 'the bot to receive the reply');
  assert.equal(reply.inReplyTo, original);
  assert.equal(reply.body, '42, **obviously**');
  assert.equal(reply.formattedBody, '42, <strong>obviously</strong>');
  assert.deepEqual(reply.content, content, 'content is what the peer sent, fallback and all');
  assert.deepEqual(reply.raw.content, content);
});

test("an HTML pill (Element's mention: display name in body, user ID only in the link) reaches mentionedUserIds", async (t) => {
  const bot = await newBot(t, hs);
  const peer = await newPeer(hs);
  const other = await newPeer(hs);
  const messages: Message[] = [];
  bot.client.on('message', (m) => void messages.push(m));
  await bot.client.run(bot.token);
  const roomId = await roomWithBot(peer, bot.user.userId);
  const B = bot.user.userId;

  const id = await peer.sendEvent(roomId, 'm.room.message', {
    msgtype: 'm.text',
    body: 'Cookie Bot: !kick Someone Else',
    format: 'org.matrix.custom.html',
    formatted_body: `<a href="https://matrix.to/#/${encodeURIComponent(B)}">Cookie Bot</a>: !kick <a href="https://matrix.to/#/${other.userId}">Someone Else</a>`,
    'm.mentions': { user_ids: [B] },
  });
  const m = await waitUntil(() => messages.find((x) => x.eventId === id), WAIT_MS, 'the bot to receive the pill');
  assert.deepEqual(m.mentions, [B]);
  assert.deepEqual(m.mentionedUserIds, [B, other.userId]);
  assert.equal(m.body, 'Cookie Bot: !kick Someone Else');
});
