/**
 * Messages against a real Synapse, checked from the other side (a plain-HTTP peer's /sync): notices, emotes,
 * sanitised HTML with a generated body, mentions, rich replies, threads, edits, reactions, redactions; read receipts
 * both ways; typing while work runs.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { Edit, HalcyonError, Message, Reaction, Receipt, Redaction } from '../../src/index.ts';
import type { Peer } from '../harness/peer.ts';
import { testHomeserver, type Homeserver } from '../harness/synapse.ts';
import { deferred, newBot, newPeer, roomWithBot, WAIT_MS, waitUntil } from './util.ts';

let hs: Homeserver;
before(async () => {
  hs = await testHomeserver();
});
after(async () => {
  await hs?.stop();
});

const enc = encodeURIComponent;

/** Waits (on the peer's own /sync) until every event in `ids` has arrived in `roomId`'s timeline; returns them by ID. */
async function peerSees(peer: Peer, roomId: string, ids: string[]): Promise<Map<string, any>> {
  const found = new Map<string, any>();
  await peer.waitFor((ev, rid, section) => {
    if (rid === roomId && section === 'timeline' && ids.includes(ev.event_id)) found.set(ev.event_id, ev);
    return found.size === ids.length;
  }, WAIT_MS);
  return found;
}

/** The one event `id` as the peer's sync delivers it. */
async function peerSeesOne(peer: Peer, roomId: string, id: string): Promise<any> {
  return (await peerSees(peer, roomId, [id])).get(id);
}

test('notice, emote, HTML (sanitised, generated body), mentions and room-handle shortcuts as the peer receives them', async (t) => {
  const bot = await newBot(t, hs);
  const peer = await newPeer(hs);
  await bot.client.run(bot.token);
  const roomId = await roomWithBot(peer, bot.user.userId);
  const room = bot.client.room(roomId);

  const notice = await bot.client.sendNotice(roomId, 'a notice');
  const emote = await bot.client.sendEmote(roomId, 'waves');
  const html = await bot.client.sendHtml(
    roomId,
    '<p>Hello <b>bold</b> &amp; <i>friends</i></p><script>alert("pwned")</script>' +
      '<a href="https://example.org/" onclick="steal()">safe</a> <a href="javascript:alert(1)">evil</a><ul><li>one</li><li>two</li></ul>',
  );
  const htmlOwnBody = await bot.client.sendHtml(roomId, '<b>shout</b>', 'SHOUT');
  const mentionUsers = await bot.client.sendMessage(roomId, 'hello you', { mentions: [peer.userId, peer.userId] });
  const mentionRoom = await bot.client.sendMessage(roomId, 'hello everyone', { mentions: { userIds: [peer.userId], room: true } });
  const noMentions = await bot.client.sendMessage(roomId, { msgtype: 'm.text', body: 'custom content', 'org.example.extra': 1 });
  const viaHandle = await room.send('via the handle');
  const noticeViaHandle = await room.sendNotice('notice via the handle');
  const htmlViaHandle = await room.sendHtml('<em>em</em>');

  const seen = await peerSees(peer, roomId, [notice, emote, html, htmlOwnBody, mentionUsers, mentionRoom, noMentions, viaHandle, noticeViaHandle, htmlViaHandle]);
  const content = (id: string) => seen.get(id).content;
  assert.deepEqual(content(notice), { msgtype: 'm.notice', body: 'a notice' });
  assert.deepEqual(content(emote), { msgtype: 'm.emote', body: 'waves' });

  const h = content(html);
  assert.equal(h.msgtype, 'm.text');
  assert.equal(h.format, 'org.matrix.custom.html');
  assert.ok(!/script|alert|pwned/i.test(h.formatted_body), `no script reaches the peer: ${h.formatted_body}`);
  assert.ok(!/onclick|steal|javascript:/i.test(h.formatted_body), `no handler or script URL reaches the peer: ${h.formatted_body}`);
  assert.match(h.formatted_body, /<b>bold<\/b>/);
  assert.match(h.formatted_body, /<a href="https:\/\/example.org\/">safe<\/a>/);
  assert.ok(!/[<>]/.test(h.body), `the generated body is plain text: ${JSON.stringify(h.body)}`);
  assert.ok(!/alert|pwned/.test(h.body), `the script's text is not in the body: ${JSON.stringify(h.body)}`);
  assert.match(h.body, /^Hello bold & friends/);
  assert.match(h.body, /- one\n- two/);
  assert.deepEqual(content(htmlOwnBody), { msgtype: 'm.text', body: 'SHOUT', format: 'org.matrix.custom.html', formatted_body: '<b>shout</b>' });

  assert.deepEqual(content(mentionUsers)['m.mentions'], { user_ids: [peer.userId] }, 'duplicates dropped');
  assert.deepEqual(content(mentionRoom)['m.mentions'], { user_ids: [peer.userId], room: true });
  assert.deepEqual(content(noMentions), { msgtype: 'm.text', body: 'custom content', 'org.example.extra': 1 });
  assert.deepEqual(content(viaHandle), { msgtype: 'm.text', body: 'via the handle' });
  assert.deepEqual(content(noticeViaHandle), { msgtype: 'm.notice', body: 'notice via the handle' });
  assert.equal(content(htmlViaHandle).formatted_body, '<em>em</em>');
  assert.equal(content(htmlViaHandle).body, 'em');
  for (const id of seen.keys()) assert.equal(seen.get(id).sender, bot.user.userId);
  assert.deepEqual(bot.errors, []);
});

test('mentions on receive: message.mentions and message.mentionsRoom', async (t) => {
  const bot = await newBot(t, hs);
  const peer = await newPeer(hs);
  const messages: Message[] = [];
  bot.client.on('message', (m) => void messages.push(m));
  await bot.client.run(bot.token);
  const roomId = await roomWithBot(peer, bot.user.userId);

  const a = await peer.sendEvent(roomId, 'm.room.message', { msgtype: 'm.text', body: 'hi bot', 'm.mentions': { user_ids: [bot.user.userId] } });
  const b = await peer.sendEvent(roomId, 'm.room.message', { msgtype: 'm.text', body: 'hi all', 'm.mentions': { room: true } });
  const c = await peer.sendText(roomId, 'no mentions');
  const got = await waitUntil(() => (messages.length >= 3 ? messages : undefined), WAIT_MS, 'three messages');
  const by = (id: string) => got.find((m) => m.eventId === id)!;
  assert.deepEqual(by(a).mentions, [bot.user.userId]);
  assert.equal(by(a).mentionsRoom, false);
  assert.deepEqual(by(b).mentions, []);
  assert.equal(by(b).mentionsRoom, true);
  assert.deepEqual(by(c).mentions, []);
  assert.equal(by(c).mentionsRoom, false);
  assert.deepEqual(bot.errors, []);
});

test('rich replies and threads: reply, replyInThread, sendMessage with threadId, threadId on receive, a reply in a thread stays in it', async (t) => {
  const bot = await newBot(t, hs);
  const peer = await newPeer(hs);
  const messages: Message[] = [];
  bot.client.on('message', (m) => void messages.push(m));
  await bot.client.run(bot.token);
  const roomId = await roomWithBot(peer, bot.user.userId);
  const received = (id: string) => waitUntil(() => messages.find((m) => m.eventId === id), WAIT_MS, `the bot to receive ${id}`);

  const pingId = await peer.sendText(roomId, 'ping');
  const ping = await received(pingId);
  assert.equal(ping.threadId, null);
  assert.equal(ping.inReplyTo, null);

  // A rich reply: m.in_reply_to, no fallback quote, mentions the sender.
  const replyId = await ping.reply('pong');
  const reply = (await peerSeesOne(peer, roomId, replyId)).content;
  assert.deepEqual(reply, {
    msgtype: 'm.text',
    body: 'pong',
    'm.relates_to': { 'm.in_reply_to': { event_id: pingId } },
    'm.mentions': { user_ids: [peer.userId] },
  });
  assert.ok(!('formatted_body' in reply), 'no fallback formatted_body');

  // A reply with an explicit opts.mentions replaces the default.
  const quietReplyId = await ping.reply('quiet pong', { mentions: [] });
  assert.deepEqual((await peerSeesOne(peer, roomId, quietReplyId)).content['m.mentions'], { user_ids: [] });

  // replyInThread starts a thread at the message: a real reply to the root, not a fallback.
  const threadReplyId = await ping.replyInThread('in a thread');
  const threadReply = (await peerSeesOne(peer, roomId, threadReplyId)).content;
  assert.deepEqual(threadReply['m.relates_to'], { rel_type: 'm.thread', event_id: pingId, is_falling_back: false, 'm.in_reply_to': { event_id: pingId } });
  assert.equal(threadReply.body, 'in a thread');
  assert.deepEqual(threadReply['m.mentions'], { user_ids: [peer.userId] });

  // sendMessage with threadId: a thread message whose reply part is only a fallback.
  const inThreadId = await bot.client.sendMessage(roomId, 'thread message', { threadId: pingId });
  const inThread = (await peerSeesOne(peer, roomId, inThreadId)).content;
  assert.equal(inThread['m.relates_to'].rel_type, 'm.thread');
  assert.equal(inThread['m.relates_to'].event_id, pingId);
  assert.equal(inThread['m.relates_to'].is_falling_back, true);
  // Spec (Threading, fallback for unthreaded clients) and withRelations' own doc: the fallback points at the latest
  // event in the thread, here the bot's replyInThread message.
  assert.equal(inThread['m.relates_to']['m.in_reply_to']?.event_id, threadReplyId, "the fallback reply points at the thread's latest event");
  assert.equal(inThread['m.mentions'], undefined, 'no mentions unless asked');

  // The peer posts in the thread (as Element does): the bot sees threadId, and no reply (it is a fallback).
  const peerThreadId = await peer.sendEvent(roomId, 'm.room.message', {
    msgtype: 'm.text',
    body: 'peer in thread',
    'm.relates_to': { rel_type: 'm.thread', event_id: pingId, is_falling_back: true, 'm.in_reply_to': { event_id: inThreadId } },
  });
  const peerThread = await received(peerThreadId);
  assert.equal(peerThread.threadId, pingId);
  assert.equal(peerThread.inReplyTo, null, "a thread's fallback reply is not a reply");

  // A reply to a threaded message stays in the thread and replies to that message.
  const stayId = await peerThread.reply('still in the thread');
  const stay = (await peerSeesOne(peer, roomId, stayId)).content;
  assert.deepEqual(stay['m.relates_to'], { rel_type: 'm.thread', event_id: pingId, is_falling_back: false, 'm.in_reply_to': { event_id: peerThreadId } });

  // A real reply inside the thread, received: inReplyTo and threadId.
  const peerThreadReplyId = await peer.sendEvent(roomId, 'm.room.message', {
    msgtype: 'm.text',
    body: 'a real reply in the thread',
    'm.relates_to': { rel_type: 'm.thread', event_id: pingId, is_falling_back: false, 'm.in_reply_to': { event_id: stayId } },
  });
  const peerThreadReply = await received(peerThreadReplyId);
  assert.equal(peerThreadReply.threadId, pingId);
  assert.equal(peerThreadReply.inReplyTo, stayId);

  // A plain rich reply from the peer.
  const peerReplyId = await peer.sendEvent(roomId, 'm.room.message', { msgtype: 'm.text', body: 'answer', 'm.relates_to': { 'm.in_reply_to': { event_id: replyId } } });
  const peerReply = await received(peerReplyId);
  assert.equal(peerReply.inReplyTo, replyId);
  assert.equal(peerReply.threadId, null);

  // The server agrees on the thread: its root's thread summary counts the bot's and the peer's thread messages.
  const root = await peer.request('GET', `/rooms/${enc(roomId)}/event/${enc(pingId)}`);
  assert.equal(root.unsigned?.['m.relations']?.['m.thread']?.count, 5, 'five messages in the thread');
  assert.deepEqual(bot.errors, []);
});

test('edits (editMessage, message.edit), reactions (send and receive) and redactions (send and receive)', async (t) => {
  // ignoreOwnEvents false: the bot receives its own messages, so message.edit/redact can be called on them.
  const bot = await newBot(t, hs, { ignoreOwnEvents: false });
  const peer = await newPeer(hs);
  const messages: Message[] = [];
  const edits: Edit[] = [];
  const reactions: Reaction[] = [];
  const redactions: Redaction[] = [];
  bot.client.on('message', (m) => void messages.push(m));
  bot.client.on('edit', (e) => void edits.push(e));
  bot.client.on('reaction', (r) => void reactions.push(r));
  bot.client.on('redaction', (r) => void redactions.push(r));
  await bot.client.run(bot.token);
  const roomId = await roomWithBot(peer, bot.user.userId);
  const received = (id: string) => waitUntil(() => messages.find((m) => m.eventId === id), WAIT_MS, `the bot to receive ${id}`);

  // editMessage with a string.
  const draftId = await bot.client.sendMessage(roomId, 'draft');
  const editId = await bot.client.editMessage(roomId, draftId, 'final');
  assert.deepEqual((await peerSeesOne(peer, roomId, editId)).content, {
    msgtype: 'm.text',
    body: '* final',
    'm.new_content': { msgtype: 'm.text', body: 'final' },
    'm.relates_to': { rel_type: 'm.replace', event_id: draftId },
    // Present and empty: the edit mentions nobody anew (without it, clients match names in "* final").
    'm.mentions': {},
  });
  // editMessage with HTML content.
  const htmlEditId = await bot.client.editMessage(roomId, draftId, { msgtype: 'm.text', body: 'bold', format: 'org.matrix.custom.html', formatted_body: '<b>bold</b>' });
  const htmlEdit = (await peerSeesOne(peer, roomId, htmlEditId)).content;
  assert.equal(htmlEdit.body, '* bold');
  assert.equal(htmlEdit.formatted_body, '* <b>bold</b>');
  assert.deepEqual(htmlEdit['m.new_content'], { msgtype: 'm.text', body: 'bold', format: 'org.matrix.custom.html', formatted_body: '<b>bold</b>' });
  // The server applies the latest edit.
  const original = await peer.request('GET', `/rooms/${enc(roomId)}/event/${enc(draftId)}`);
  assert.equal(original.unsigned?.['m.relations']?.['m.replace']?.event_id, htmlEditId);
  // The bot's own edit comes back as an 'edit' event (ignoreOwnEvents is off).
  const ownEdit = await waitUntil(() => edits.find((e) => e.eventId === htmlEditId), WAIT_MS, "the bot's own edit");
  assert.equal(ownEdit.replaces, draftId);
  assert.equal(ownEdit.newContent.body, 'bold');

  // message.edit on the bot's own received message.
  const secondId = await bot.client.sendMessage(roomId, 'second draft');
  const second = await received(secondId);
  const secondEditId = await second.edit('second, edited');
  const secondEdit = (await peerSeesOne(peer, roomId, secondEditId)).content;
  assert.deepEqual(secondEdit['m.relates_to'], { rel_type: 'm.replace', event_id: secondId });
  assert.equal(secondEdit['m.new_content'].body, 'second, edited');
  // Editing someone else's message: the server accepts the event, but clients ignore it (only the sender may edit).
  // Not tested further: that rule is applied by receiving clients, not by Synapse.

  // Reactions: to the peer's message, via message.react and client.react.
  const peerMsgId = await peer.sendText(roomId, 'react to me');
  const peerMsg = await received(peerMsgId);
  const thumbsId = await peerMsg.react('👍');
  const partyId = await bot.client.react(roomId, peerMsgId, '🎉');
  const rs = await peerSees(peer, roomId, [thumbsId, partyId]);
  assert.deepEqual(rs.get(thumbsId).content, { 'm.relates_to': { rel_type: 'm.annotation', event_id: peerMsgId, key: '👍' } });
  assert.equal(rs.get(thumbsId).type, 'm.reaction');
  assert.deepEqual(rs.get(partyId).content, { 'm.relates_to': { rel_type: 'm.annotation', event_id: peerMsgId, key: '🎉' } });
  // The peer reacts to the bot's message: a 'reaction' event.
  const peerReactionId = await peer.react(roomId, secondId, '🍞');
  const peerReaction = await waitUntil(() => reactions.find((r) => r.eventId === peerReactionId), WAIT_MS, "the peer's reaction");
  assert.equal(peerReaction.key, '🍞');
  assert.equal(peerReaction.targetEventId, secondId);
  assert.equal(peerReaction.sender, peer.userId);

  // Redactions: the bot's own message with a reason, and via message.redact().
  const doomedId = await bot.client.sendMessage(roomId, 'doomed');
  const redactionId = await bot.client.redactEvent(roomId, doomedId, 'typo');
  const redaction = await peerSeesOne(peer, roomId, redactionId);
  assert.equal(redaction.type, 'm.room.redaction');
  assert.equal(redaction.content.redacts ?? redaction.redacts, doomedId);
  assert.equal(redaction.content.reason, 'typo');
  const redacted = await peer.request('GET', `/rooms/${enc(roomId)}/event/${enc(doomedId)}`);
  assert.deepEqual(redacted.content, {}, 'the redacted message lost its content');
  const doomed2 = await received(await bot.client.sendMessage(roomId, 'doomed too'));
  const redaction2Id = await doomed2.redact();
  const redaction2 = await peerSeesOne(peer, roomId, redaction2Id);
  assert.equal(redaction2.content.redacts ?? redaction2.redacts, doomed2.eventId);
  assert.equal(redaction2.content.reason, undefined, 'no reason given, none sent');
  // The peer redacts its own message: a 'redaction' event.
  const peerRedactionId = await peer.redact(roomId, peerMsgId, 'changed my mind');
  const peerRedaction = await waitUntil(() => redactions.find((r) => r.eventId === peerRedactionId), WAIT_MS, "the peer's redaction");
  assert.equal(peerRedaction.redacts, peerMsgId);
  assert.equal(peerRedaction.reason, 'changed my mind');
  // Redacting the peer's message without the power to: refused for good (a dead letter), with the server's M_FORBIDDEN.
  const otherId = await peer.sendText(roomId, 'not yours to redact');
  await assert.rejects(bot.client.redactEvent(roomId, otherId), (e: HalcyonError) => e.code === 'HALCYON_SEND_FAILED' && e.errcode === 'M_FORBIDDEN' && e.status === 403);
  assert.deepEqual(bot.errors, []);
});

/** Waits on the peer's sync for an m.receipt in `roomId` where `userId` read `eventId`; returns that user's receipt. */
async function peerSeesReceipt(peer: Peer, roomId: string, eventId: string, userId: string, seen: any[] = []): Promise<any> {
  let found: any;
  await peer.waitFor((ev, rid, section) => {
    if (section !== 'ephemeral' || rid !== roomId || ev.type !== 'm.receipt') return false;
    seen.push(ev);
    found = ev.content?.[eventId]?.['m.read']?.[userId];
    return found !== undefined;
  }, WAIT_MS);
  return found;
}

test('read receipts: sendReadReceipt and message.markRead reach the peer (threaded too, private ones do not); the bot receives the peer’s receipts', async (t) => {
  const bot = await newBot(t, hs);
  const peer = await newPeer(hs);
  const messages: Message[] = [];
  const receipts: Receipt[] = [];
  bot.client.on('message', (m) => void messages.push(m));
  bot.client.on('receipt', (r) => void receipts.push(r));
  await bot.client.run(bot.token);
  const B = bot.user.userId;
  const roomId = await roomWithBot(peer, B);
  const received = (id: string) => waitUntil(() => messages.find((m) => m.eventId === id), WAIT_MS, `the bot to receive ${id}`);

  // message.markRead on a main-timeline message: an unthreaded m.read.
  const m1 = await received(await peer.sendText(roomId, 'read me'));
  await m1.markRead();
  const r1 = await peerSeesReceipt(peer, roomId, m1.eventId, B);
  assert.equal(typeof r1.ts, 'number');
  assert.equal(r1.thread_id, undefined, 'an unthreaded receipt');

  // A private receipt, then a public one: the peer sees only the public one.
  const privateId = await peer.sendText(roomId, 'read privately');
  const publicId = await peer.sendText(roomId, 'read publicly');
  await received(publicId);
  await bot.client.sendReadReceipt(roomId, privateId, { private: true });
  await bot.client.sendReadReceipt(roomId, publicId);
  const seen: any[] = [];
  await peerSeesReceipt(peer, roomId, publicId, B, seen);
  assert.ok(!seen.some((ev) => ev.content?.[privateId]), "the bot's private receipt never reached the peer");

  // markRead on a message in a thread: a threaded receipt.
  const rootId = await peer.sendText(roomId, 'thread root');
  const inThreadId = await peer.sendEvent(roomId, 'm.room.message', {
    msgtype: 'm.text',
    body: 'in the thread',
    'm.relates_to': { rel_type: 'm.thread', event_id: rootId, is_falling_back: true, 'm.in_reply_to': { event_id: rootId } },
  });
  const inThread = await received(inThreadId);
  await inThread.markRead();
  const r3 = await peerSeesReceipt(peer, roomId, inThreadId, B);
  assert.equal(r3.thread_id, rootId, 'the receipt is for the thread');
  await bot.client.sendReadReceipt(roomId, rootId, { threadId: 'main' });
  const r4 = await peerSeesReceipt(peer, roomId, rootId, B);
  assert.equal(r4.thread_id, 'main');

  // The peer's receipts reach the bot's 'receipt' handler.
  const botMsg = await bot.client.sendMessage(roomId, 'did you read this?');
  await peer.request('POST', `/rooms/${enc(roomId)}/receipt/m.read/${enc(botMsg)}`, {});
  const got = await waitUntil(() => receipts.find((r) => r.eventId === botMsg), WAIT_MS, "the peer's receipt for the bot's message");
  assert.equal(got.roomId, roomId);
  assert.equal(got.userId, peer.userId);
  assert.equal(got.receiptType, 'm.read');
  assert.equal(got.threadId, null);
  assert.equal(typeof got.ts, 'number');
  assert.equal(got.room.id, roomId);

  const botThreadMsg = await bot.client.sendMessage(roomId, 'in the thread too', { threadId: rootId });
  await peer.request('POST', `/rooms/${enc(roomId)}/receipt/m.read/${enc(botThreadMsg)}`, { thread_id: rootId });
  const threaded = await waitUntil(() => receipts.find((r) => r.eventId === botThreadMsg), WAIT_MS, "the peer's threaded receipt");
  assert.equal(threaded.threadId, rootId);
  assert.equal(threaded.userId, peer.userId);
  const botMainMsg = await bot.client.sendMessage(roomId, 'main timeline');
  await peer.request('POST', `/rooms/${enc(roomId)}/receipt/m.read/${enc(botMainMsg)}`, { thread_id: 'main' });
  const main = await waitUntil(() => receipts.find((r) => r.eventId === botMainMsg), WAIT_MS, "the peer's 'main' receipt");
  assert.equal(main.threadId, 'main');

  assert.ok(receipts.every((r) => r.userId !== B), "the bot's own receipts are not delivered (ignoreOwnEvents)");
  assert.deepEqual(bot.errors, []);
});

/** Waits on the peer's sync for an m.typing in `roomId` whose user_ids satisfy `pred`. */
function peerSeesTyping(peer: Peer, roomId: string, pred: (userIds: string[]) => boolean): Promise<any> {
  return peer.waitFor((ev, rid, section) => section === 'ephemeral' && rid === roomId && ev.type === 'm.typing' && pred(ev.content?.user_ids ?? []), WAIT_MS);
}

test('typing: room.typingWhile shows the bot typing while the work runs and stops after; a rejected work still stops and rejects the caller', async (t) => {
  const bot = await newBot(t, hs);
  const peer = await newPeer(hs);
  await bot.client.run(bot.token);
  const B = bot.user.userId;
  const roomId = await roomWithBot(peer, B);
  const room = bot.client.room(roomId);

  // Work as a promise: typing while it is pending, stopped once it resolves; the result is passed through.
  const work = deferred<string>();
  const typing = room.typingWhile(work.promise);
  await peerSeesTyping(peer, roomId, (ids) => ids.includes(B));
  work.resolve('baked');
  assert.equal(await typing, 'baked');
  await peerSeesTyping(peer, roomId, (ids) => !ids.includes(B));

  // Work as a function that rejects: typing stops, the caller gets the rejection.
  const gate = deferred();
  const failing = room.typingWhile(async () => {
    await gate.promise;
    throw new Error('oven on fire');
  });
  const caught = failing.catch((e: Error) => e);
  await peerSeesTyping(peer, roomId, (ids) => ids.includes(B));
  gate.resolve();
  const err = await caught;
  assert.ok(err instanceof Error && err.message === 'oven on fire', 'typingWhile rejects with the work’s error');
  await peerSeesTyping(peer, roomId, (ids) => !ids.includes(B));

  // The client-level call inside a message handler: the handler's work keeps the bot typing.
  const handled = deferred<string>();
  const release = deferred();
  bot.client.on('message', (m) => bot.client.typingWhile(m.roomId, release.promise.then(() => m.body)).then((b) => handled.resolve(b)));
  await peer.sendText(roomId, 'take your time');
  await peerSeesTyping(peer, roomId, (ids) => ids.includes(B));
  release.resolve();
  assert.equal(await handled.promise, 'take your time');
  await peerSeesTyping(peer, roomId, (ids) => !ids.includes(B));

  // Plain sendTyping on and off.
  await room.sendTyping(10_000);
  await peerSeesTyping(peer, roomId, (ids) => ids.includes(B));
  await room.sendTyping(false);
  await peerSeesTyping(peer, roomId, (ids) => !ids.includes(B));
  assert.deepEqual(bot.errors, []);
});
