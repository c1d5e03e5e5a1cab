/**
 * Arguments are checked before any request (real Synapse): a mistyped room ID, user ID, event ID, alias or
 * message content fails at once with HALCYON_INVALID_ARGUMENT naming the argument, and nothing reaches the
 * server or the outbox.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { Client, encodeToken, type HalcyonError } from '../../src/index.ts';
import { testHomeserver, type Homeserver } from '../harness/synapse.ts';
import { newBot, newClient, newPeer, roomWithBot, tempDataDir } from './util.ts';

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
  assert.deepEqual([c.outboxStatus().pending, c.outboxStatus().dead], [0, 0], 'nothing reached the outbox');

  // Well-formed IDs the server does not know pass the checks and get the server's answer.
  await assert.rejects(c.joinRoom('#no-such-alias:localhost'), (e: HalcyonError) => e.code === 'HALCYON_MATRIX');
  // A room version 12 room ID has no server part.
  await assert.rejects(c.getStateEvent('!opaqueRoomIdWithoutServer', 'm.room.name'), (e: HalcyonError) => e.code === 'HALCYON_MATRIX');
});

test('homeserver as typed: a bare server name is discovered; plain http to another machine is refused unless allowed', async (t) => {
  const user = await hs.registerUser();
  // "127.0.0.1:<port>": no scheme; discovery finds no .well-known and checks the server itself.
  const token = await Client.login({ homeserver: `127.0.0.1:${hs.port}`, user: user.localpart, password: user.password });
  const client = newClient(t, tempDataDir(t), { encryption: false });
  await client.run(token);
  assert.equal(client.whoami().homeserver, hs.baseUrl);
  await client.stop();

  const insecure = (e: HalcyonError) => e.code === 'HALCYON_INSECURE_HOMESERVER';
  await assert.rejects(Client.login({ homeserver: 'http://matrix.example.org', user: 'bot', password: 'x' }), insecure);
  const remote = encodeToken({ homeserver: 'http://matrix.example.org', userId: '@bot:example.org', deviceId: 'D', accessToken: 'not-a-real-token' });
  await assert.rejects(newClient(t, tempDataDir(t)).run(remote), insecure);
  await assert.rejects(Client.login({ homeserver: 'ht!tp://x y', user: 'bot', password: 'x' }), (e: HalcyonError) => e.code === 'HALCYON_INVALID_ARGUMENT');
});

test('Client.importToken wraps an existing access token for its device; the client runs with it', async (t) => {
  const user = await hs.registerUser();
  const dataDir = tempDataDir(t);
  const token = await Client.importToken({ homeserver: hs.baseUrl, accessToken: user.accessToken, dataDir });
  const client = newClient(t, dataDir, { encryption: false });
  await client.run(token);
  assert.deepEqual([client.whoami().userId, client.whoami().deviceId], [user.userId, user.deviceId]);
  await assert.rejects(Client.importToken({ homeserver: hs.baseUrl, accessToken: '' }), invalid(/accessToken/));
  await assert.rejects(Client.importToken({ homeserver: hs.baseUrl, accessToken: 'syt_wrong' }), (e: HalcyonError) => e.code === 'HALCYON_UNKNOWN_TOKEN');
});
