/** Proves the real-homeserver harness: Synapse answers, users register, two peers talk. Each test has its own users and room. */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { testHomeserver, type Homeserver } from './harness/synapse.ts';
import { Peer } from './harness/peer.ts';

let hs: Homeserver;

before(async () => {
  hs = await testHomeserver();
});

after(async () => {
  await hs?.stop();
});

/** Two fresh peers; with `room`, b has joined a room a created (presence and typing are shared through rooms). */
async function pair(room: boolean): Promise<{ a: Peer; b: Peer; roomId: string }> {
  const a = new Peer(hs.baseUrl, await hs.registerUser());
  const b = new Peer(hs.baseUrl, await hs.registerUser());
  if (!room) return { a, b, roomId: '' };
  const roomId = await a.createRoom({ name: 'harness', invite: [b.userId] });
  await b.join(roomId);
  await a.waitForJoined(roomId, b.userId);
  return { a, b, roomId };
}

test('health and registration', async () => {
  const { a, b } = await pair(false);
  assert.equal((await fetch(`${hs.baseUrl}/health`)).status, 200);
  assert.match(a.userId, /^@u[0-9a-f]+:localhost$/);
  assert.notEqual(a.userId, b.userId);
  assert.equal((await a.request('GET', '/account/whoami')).user_id, a.userId);
});

test('invite, join and message', async () => {
  const { a, b } = await pair(false);
  const roomId = await a.createRoom({ name: 'harness' });
  await a.invite(roomId, b.userId);
  await b.waitFor((ev, rid, section) => section === 'invite' && rid === roomId && ev.type === 'm.room.member' && ev.state_key === b.userId);
  assert.equal(await b.join(roomId), roomId);
  await a.waitForJoined(roomId, b.userId);
  const eventId = await a.sendText(roomId, 'hello B');
  const ev = await b.waitFor((e, rid, section) => section === 'timeline' && rid === roomId && e.event_id === eventId);
  assert.equal(ev.sender, a.userId);
  assert.equal(ev.content.body, 'hello B');
});

test('typing shows up as ephemeral m.typing', async () => {
  const { a, b, roomId } = await pair(true);
  await a.request('PUT', `/rooms/${encodeURIComponent(roomId)}/typing/${encodeURIComponent(a.userId)}`, { typing: true, timeout: 30_000 });
  const ev = await b.waitFor((e, rid, section) => section === 'ephemeral' && rid === roomId && e.type === 'm.typing' && e.content.user_ids.includes(a.userId));
  assert.deepEqual(ev.content.user_ids, [a.userId]);
});

test('presence set and get', async () => {
  const { a, b } = await pair(true);
  await a.setPresence('online', 'testing');
  const p = await b.getPresence(a.userId);
  assert.equal(p.presence, 'online');
  assert.equal(p.status_msg, 'testing');
  await b.waitFor((e, _rid, section) => section === 'presence' && e.sender === a.userId && e.content.status_msg === 'testing');
});
