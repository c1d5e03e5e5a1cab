/** Client end to end: password login, run, autojoin, receive and reply, typing and presence. */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { Client, decodeToken, type Invite, type Message } from '../../src/index.ts';
import { testHomeserver, withTimeout, type Homeserver } from '../harness/synapse.ts';
import { deferred, newClient, newPeer, roomWithBot, tempDataDir, WAIT_MS, waitUntil } from './util.ts';

let hs: Homeserver;
before(async () => {
  hs = await testHomeserver();
});
after(async () => {
  await hs?.stop();
});

for (const threads of ['worker', 'inline'] as const) {
  describe(`receive and reply (threads: ${threads})`, () => {
    test('login, run, autojoin an invite, receive "hello" and reply "goodbye"', async (t) => {
      const user = await hs.registerUser();
      const peer = await newPeer(hs);
      const dataDir = tempDataDir(t);

      const token = await Client.login({ homeserver: hs.baseUrl, user: user.localpart, password: user.password, dataDir });
      assert.equal(typeof token, 'string');
      assert.ok(token.startsWith('halcyon1.'), `token should start with "halcyon1.": ${token.slice(0, 12)}`);
      assert.ok(!token.includes(user.password), 'the token must not contain the password');
      const session = decodeToken(token);
      assert.ok(!JSON.stringify(session).includes(user.password), 'the decoded token must not contain the password');
      assert.equal(session.userId, user.userId);
      assert.equal(session.homeserver, hs.baseUrl);

      const client = newClient(t, dataDir, { threads });
      const order: string[] = [];
      const errors: unknown[] = [];
      client.on('error', (e) => void errors.push(e));
      client.on('ready', () => void order.push('ready'));
      const invited = deferred<Invite>();
      client.on('invite', (inv) => invited.resolve(inv));
      const got = deferred<{ message: Message; roomName: string | null; replyId: string }>();
      client.on('message', async (message) => {
        const roomName = message.room.name;
        await message.room.sendTyping();
        const replyId = await message.reply('goodbye');
        got.resolve({ message, roomName, replyId });
      });

      await client.run(token);
      order.push('run resolved');
      assert.deepEqual(order, ['ready', 'run resolved'], "'ready' must fire before run() resolves");

      const roomId = await peer.createRoom({ invite: [user.userId], name: 'Bakery' });
      const invite = await withTimeout(invited.promise, WAIT_MS, 'the invite event');
      assert.equal(invite.roomId, roomId);
      assert.equal(invite.inviter, peer.userId);
      assert.equal(invite.name, 'Bakery');
      await peer.waitForJoined(roomId, user.userId, WAIT_MS);

      const helloId = await peer.sendText(roomId, 'hello');
      const hello = await peer.request('GET', `/rooms/${encodeURIComponent(roomId)}/event/${encodeURIComponent(helloId)}`);
      const { message, roomName, replyId } = await withTimeout(got.promise, WAIT_MS, "the bot's 'message' handler to get hello");
      assert.equal(message.eventId, helloId);
      assert.equal(message.roomId, roomId);
      assert.equal(message.sender, peer.userId);
      assert.equal(message.type, 'm.room.message');
      assert.equal(message.content.body, 'hello');
      assert.equal(message.body, 'hello');
      assert.equal(message.msgtype, 'm.text');
      assert.equal(message.timestamp, hello.origin_server_ts);
      assert.equal(message.isEncrypted, false);
      assert.equal(roomName, 'Bakery');
      assert.equal(message.room.name, 'Bakery');

      const reply = await peer.waitFor(
        (ev, rid, section) => section === 'timeline' && rid === roomId && ev.event_id === replyId,
        WAIT_MS,
      );
      assert.equal(reply.sender, user.userId);
      assert.equal(reply.type, 'm.room.message');
      assert.equal(reply.content.body, 'goodbye');
      assert.equal(reply.content['m.relates_to']?.['m.in_reply_to']?.event_id, helloId);
      assert.deepEqual(errors, []);
    });
  });
}

test('typing is visible to the peer; presence and status set in the ready handler', async (t) => {
  const user = await hs.registerUser();
  const peer = await newPeer(hs);
  const dataDir = tempDataDir(t);
  const token = await Client.login({ homeserver: hs.baseUrl, user: user.localpart, password: user.password, dataDir });
  const client = newClient(t, dataDir);
  const errors: unknown[] = [];
  client.on('error', (e) => void errors.push(e));
  client.on('ready', async () => {
    await client.setPresence('online', 'Baking cookies');
  });
  const typed = deferred<string>();
  client.on('message', async (m) => {
    await m.room.sendTyping(20_000);
    typed.resolve(m.eventId);
  });
  await client.run(token);

  const roomId = await roomWithBot(peer, user.userId);
  await peer.sendText(roomId, 'are you typing?');
  await withTimeout(typed.promise, WAIT_MS, 'the bot to send typing');
  const typing = await peer.waitFor(
    (ev, rid, section) => section === 'ephemeral' && rid === roomId && ev.type === 'm.typing' && ev.content.user_ids?.includes(user.userId),
    WAIT_MS,
  );
  assert.ok(typing.content.user_ids.includes(user.userId));

  // The bot keeps polling (with set_presence) after setPresence: the status must survive its polls.
  const presence = await waitUntil(
    async () => {
      const p = await peer.getPresence(user.userId);
      return p.presence === 'online' && p.status_msg === 'Baking cookies' ? p : undefined;
    },
    WAIT_MS,
    "the bot's presence to read online / 'Baking cookies'",
  );
  assert.equal(presence.presence, 'online');
  assert.equal(presence.status_msg, 'Baking cookies');
  assert.deepEqual(errors, []);
});
