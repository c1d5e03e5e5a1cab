/** Client event kinds from a real homeserver (reaction, member, redaction, edit) and the bot's own send helpers. */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { Edit, MemberEvent, Message, Reaction, Redaction } from '../../src/index.ts';
import { testHomeserver, type Homeserver } from '../harness/synapse.ts';
import { newBot, newPeer, roomWithBot, WAIT_MS, waitUntil } from './util.ts';

let hs: Homeserver;
before(async () => {
  hs = await testHomeserver();
});
after(async () => {
  await hs?.stop();
});

const enc = encodeURIComponent;

test("the peer's reaction, display-name change, third user joining, redaction and edit reach their handlers", async (t) => {
  const bot = await newBot(t, hs);
  const peer = await newPeer(hs);
  const third = await newPeer(hs);
  const messages: Message[] = [];
  const reactions: Reaction[] = [];
  const members: MemberEvent[] = [];
  const redactions: Redaction[] = [];
  const edits: Edit[] = [];
  bot.client.on('message', (m) => void messages.push(m));
  bot.client.on('reaction', (r) => void reactions.push(r));
  bot.client.on('member', (m) => void members.push(m));
  bot.client.on('redaction', (r) => void redactions.push(r));
  bot.client.on('edit', (e) => void edits.push(e));
  await bot.client.run(bot.token);

  const roomId = await roomWithBot(peer, bot.user.userId, { name: 'Events' });
  const originalId = await peer.sendText(roomId, 'original');
  await waitUntil(() => messages.find((m) => m.eventId === originalId), WAIT_MS, "the bot's 'message' for 'original'");

  // Reaction.
  const reactionId = await peer.react(roomId, originalId, '🍪');
  const reaction = await waitUntil(() => reactions.find((r) => r.eventId === reactionId), WAIT_MS, "a 'reaction' event");
  assert.equal(reaction.key, '🍪');
  assert.equal(reaction.targetEventId, originalId);
  assert.equal(reaction.sender, peer.userId);
  assert.equal(reaction.roomId, roomId);

  // Member: the peer changes its display name in the room.
  const renameId = await peer.sendState(roomId, 'm.room.member', peer.userId, { membership: 'join', displayname: 'Baker Alice' });
  const rename = await waitUntil(() => members.find((m) => m.eventId === renameId), WAIT_MS, "a 'member' event for the rename");
  assert.equal(rename.userId, peer.userId);
  assert.equal(rename.membership, 'join');
  assert.equal(rename.displayName, 'Baker Alice');
  assert.equal(rename.previousMembership, 'join');

  // Member: a third user is invited and joins.
  await peer.invite(roomId, third.userId);
  await third.join(roomId);
  const joined = await waitUntil(
    () => members.find((m) => m.userId === third.userId && m.membership === 'join'),
    WAIT_MS,
    "a 'member' join event of the third user",
  );
  assert.equal(joined.sender, third.userId);
  assert.equal(joined.roomId, roomId);
  const invitedIdx = members.findIndex((m) => m.userId === third.userId && m.membership === 'invite');
  assert.ok(invitedIdx >= 0 && invitedIdx < members.indexOf(joined), "the third user's invite arrives before their join");

  // Redaction.
  const doomedId = await peer.sendText(roomId, 'doomed');
  const redactionId = await peer.redact(roomId, doomedId, 'too spicy');
  const redaction = await waitUntil(() => redactions.find((r) => r.eventId === redactionId), WAIT_MS, "a 'redaction' event");
  assert.equal(redaction.redacts, doomedId);
  assert.equal(redaction.reason, 'too spicy');
  assert.equal(redaction.sender, peer.userId);

  // Edit: an 'edit' event, and no 'message' event for it.
  const editId = await peer.edit(roomId, originalId, 'original, but better');
  const edit = await waitUntil(() => edits.find((e) => e.eventId === editId), WAIT_MS, "an 'edit' event");
  assert.equal(edit.replaces, originalId);
  assert.equal(edit.newContent.body, 'original, but better');
  assert.equal(edit.sender, peer.userId);
  // Per-room order: once a later message is handled, the edit can no longer show up as a message.
  const sentinelId = await peer.sendText(roomId, 'sentinel');
  await waitUntil(() => messages.find((m) => m.eventId === sentinelId), WAIT_MS, 'the sentinel message');
  assert.deepEqual(
    messages.map((m) => m.body),
    ['original', 'doomed', 'sentinel'],
    "only plain messages reach 'message' (the edit does not)",
  );
  assert.ok(!messages.some((m) => m.eventId === editId), "the edit must not be delivered as a 'message'");
  assert.ok(!reactions.some((r) => r.eventId === editId) && edits.length === 1);
  assert.deepEqual(bot.errors, []);
});

test("the bot's helpers: react, redact, notice, emote and HTML reach the peer; own events are not delivered back", async (t) => {
  const bot = await newBot(t, hs);
  const peer = await newPeer(hs);
  const messages: Message[] = [];
  const reactions: Reaction[] = [];
  const redactions: Redaction[] = [];
  const edits: Edit[] = [];
  let sent: { reactionId: string; redactionId: string; noticeId: string; emoteId: string; htmlId: string; roomSendId: string } | undefined;
  bot.client.on('reaction', (r) => void reactions.push(r));
  bot.client.on('redaction', (r) => void redactions.push(r));
  bot.client.on('edit', (e) => void edits.push(e));
  bot.client.on('message', async (m) => {
    messages.push(m);
    if (m.body !== 'please react and redact') return;
    const reactionId = await m.react('👍');
    const noticeId = await bot.client.sendNotice(m.roomId, 'a notice');
    const emoteId = await bot.client.sendEmote(m.roomId, 'bakes');
    const htmlId = await bot.client.sendHtml(m.roomId, '<b>hi</b> &amp; bye');
    const roomSendId = await m.room.send('via room');
    const redactionId = await m.redact('cleanup');
    sent = { reactionId, redactionId, noticeId, emoteId, htmlId, roomSendId };
  });
  await bot.client.run(bot.token);

  // trusted_private_chat gives the invited bot power level 100, so it may redact the peer's message.
  const roomId = await roomWithBot(peer, bot.user.userId, { preset: 'trusted_private_chat' });
  const targetId = await peer.sendText(roomId, 'please react and redact');
  const ids = await waitUntil(() => sent, WAIT_MS, 'the bot to react, send and redact');

  const seen = new Map<string, any>();
  const wanted = Object.values(ids);
  await peer.waitFor((ev, rid, section) => {
    if (section === 'timeline' && rid === roomId && wanted.includes(ev.event_id)) seen.set(ev.event_id, ev);
    return seen.size === wanted.length;
  }, WAIT_MS);
  const get = (id: string) => seen.get(id);
  for (const id of wanted) assert.equal(get(id).sender, bot.user.userId);

  const reaction = get(ids.reactionId);
  assert.equal(reaction.type, 'm.reaction');
  assert.deepEqual(reaction.content['m.relates_to'], { rel_type: 'm.annotation', event_id: targetId, key: '👍' });

  const notice = get(ids.noticeId);
  assert.equal(notice.content.msgtype, 'm.notice');
  assert.equal(notice.content.body, 'a notice');

  const emote = get(ids.emoteId);
  assert.equal(emote.content.msgtype, 'm.emote');
  assert.equal(emote.content.body, 'bakes');

  const html = get(ids.htmlId);
  assert.equal(html.content.msgtype, 'm.text');
  assert.equal(html.content.body, 'hi & bye');
  assert.equal(html.content.format, 'org.matrix.custom.html');
  assert.equal(html.content.formatted_body, '<b>hi</b> &amp; bye');

  assert.equal(get(ids.roomSendId).content.body, 'via room');

  const redaction = get(ids.redactionId);
  assert.equal(redaction.type, 'm.room.redaction');
  assert.equal(redaction.redacts ?? redaction.content.redacts, targetId);
  assert.equal(redaction.content.reason, 'cleanup');
  const redacted = await peer.request('GET', `/rooms/${enc(roomId)}/event/${enc(targetId)}`);
  assert.deepEqual(redacted.content, {}, 'the redacted message has no content left');

  // Per-room order: once the peer's sentinel is handled, any own event would have been handled too.
  const sentinelId = await peer.sendText(roomId, 'sentinel');
  await waitUntil(() => messages.find((m) => m.eventId === sentinelId), WAIT_MS, 'the sentinel message');
  assert.deepEqual(
    messages.map((m) => [m.sender, m.body]),
    [
      [peer.userId, 'please react and redact'],
      [peer.userId, 'sentinel'],
    ],
    "the bot's own messages are not delivered to its 'message' handler",
  );
  assert.deepEqual(reactions, [], "the bot's own reaction is not delivered");
  assert.deepEqual(redactions, [], "the bot's own redaction is not delivered");
  assert.deepEqual(edits, []);
  assert.deepEqual(bot.errors, []);
});

test('Message.edit from the bot reaches the peer as an m.replace', async (t) => {
  const bot = await newBot(t, hs, { ignoreOwnEvents: false });
  const peer = await newPeer(hs);
  let editId: string | undefined;
  let originalId: string | undefined;
  bot.client.on('message', async (m) => {
    if (m.sender === bot.user.userId && m.body === 'typo') {
      originalId = m.eventId;
      editId = await m.edit('fixed');
    } else if (m.sender === peer.userId) {
      await m.room.send('typo');
    }
  });
  await bot.client.run(bot.token);
  const roomId = await roomWithBot(peer, bot.user.userId);
  await peer.sendText(roomId, 'go');
  const id = await waitUntil(() => editId, WAIT_MS, 'the bot to edit its own message');
  const edit = await peer.waitFor((ev, rid, section) => section === 'timeline' && rid === roomId && ev.event_id === id, WAIT_MS);
  assert.equal(edit.content['m.relates_to'].rel_type, 'm.replace');
  assert.equal(edit.content['m.relates_to'].event_id, originalId);
  assert.equal(edit.content['m.new_content'].body, 'fixed');
  assert.deepEqual(bot.errors, []);
});

test("an 'event' listener receives every timeline event type, custom and state ones included, after the specific handler", async (t) => {
  const bot = await newBot(t, hs);
  const peer = await newPeer(hs);
  const calls: string[] = [];
  bot.client.on('event', (e) => void calls.push(`event:${e.type}:${e.eventId}`));
  bot.client.on('message', (m) => void calls.push(`message:${m.type}:${m.eventId}`));
  await bot.client.run(bot.token);
  const roomId = await roomWithBot(peer, bot.user.userId);
  const customId = await peer.sendEvent(roomId, 'com.example.cookie', { flavour: 'chocolate' });
  const topicId = await peer.sendState(roomId, 'm.room.topic', '', { topic: 'Cookies' });
  const textId = await peer.sendText(roomId, 'last');
  await waitUntil(() => calls.includes(`event:m.room.message:${textId}`), WAIT_MS, "the generic 'event' for the last message");
  const ours = calls.filter((c) => [customId, topicId, textId].some((id) => c.endsWith(id)));
  assert.deepEqual(ours, [
    `event:com.example.cookie:${customId}`,
    `event:m.room.topic:${topicId}`,
    `message:m.room.message:${textId}`,
    `event:m.room.message:${textId}`,
  ]);
  assert.ok(calls.some((c) => c.startsWith('event:m.room.create:')), "the room's creation reaches 'event' too");
  assert.deepEqual(bot.errors, []);
});
