/**
 * Arguments are checked before any request (real Synapse): a mistyped room ID, user ID, event ID, alias or
 * message content fails at once with HALCYON_INVALID_ARGUMENT naming the argument, and nothing reaches the
 * server or the outbox.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { Client, type HalcyonError } from '../../src/index.ts';
import { testHomeserver, type Homeserver } from '../harness/synapse.ts';
import { newBot, newPeer, roomWithBot } from './util.ts';

let hs: Homeserver;
before(async () => {
  hs = await testHomeserver();
});
after(async () => {
  await hs?.stop();
});

const invalid = (what: RegExp) => (e: HalcyonError) => {
  assert.equal(e.code, 'HALCYON_INVALID_ARGUMENT', e.message);
  assert.match(e.message, what);
  return true;
};

test('Client.login without a user or a password fails before any request', async () => {
  // Port 1 refuses connections: a request would fail with HALCYON_HTTP, not with the argument's code.
  await assert.rejects(Client.login({ homeserver: 'http://127.0.0.1:1', user: 'bot', password: undefined as never }), invalid(/password/));
  await assert.rejects(Client.login({ homeserver: 'http://127.0.0.1:1', user: '', password: 'x' }), invalid(/user/));
  await assert.rejects(Client.login(undefined as never), invalid(/options/));
});

test('room, user and event IDs, aliases and message content are checked before anything is sent', async (t) => {
  const bot = await newBot(t, hs, { encryption: false });
  await bot.client.run(bot.token);
  const peer = await newPeer(hs);
  const roomId = await roomWithBot(peer, bot.user.userId);
  const c = bot.client;
  await assert.rejects(c.sendMessage('not-a-room', 'hi'), invalid(/sendMessage: "not-a-room" is not a room ID/));
  await assert.rejects(c.sendEvent('#alias:localhost', 'm.room.message', { msgtype: 'm.text', body: 'x' }), invalid(/not a room ID/));
  await assert.rejects(c.sendMessage(roomId, { body: 'no msgtype' }), invalid(/msgtype/));
  await assert.rejects(c.sendEvent(roomId, 'm.room.message', { msgtype: 'm.text' }), invalid(/body/));
  await assert.rejects(c.sendEvent(roomId, '', {}), invalid(/event type/));
  await assert.rejects(c.inviteUser(roomId, 'bob'), invalid(/"bob" is not a user ID/));
  await assert.rejects(c.kickUser('room', peer.userId), invalid(/kickUser/));
  await assert.rejects(c.redactEvent(roomId, 'event'), invalid(/not an event ID/));
  await assert.rejects(c.joinRoom('garbage'), invalid(/joinRoom/));
  await assert.rejects(c.resolveAlias('!room:localhost'), invalid(/not a room alias/));
  await assert.rejects(c.getProfile('alice'), invalid(/getProfile/));
  await assert.rejects(c.sendImage('nowhere', './no-such-file.png'), invalid(/sendImage/));
  assert.throws(() => c.user('bob'), invalid(/user/));
  assert.deepEqual(c.outboxStatus(), { pending: 0, dead: 0 }, 'nothing reached the outbox');

  // Well-formed IDs the server does not know pass the checks and get the server's answer.
  await assert.rejects(c.joinRoom('#no-such-alias:localhost'), (e: HalcyonError) => e.code === 'HALCYON_MATRIX');
  // A room version 12 room ID has no server part.
  await assert.rejects(c.getStateEvent('!opaqueRoomIdWithoutServer', 'm.room.name'), (e: HalcyonError) => e.code === 'HALCYON_MATRIX');
});
