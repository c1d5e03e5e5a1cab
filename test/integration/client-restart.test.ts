/** Client persistence: resuming after a stop delivers what was missed exactly once; logins reuse the stored device. */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { Client, decodeToken, type Message } from '../../src/index.ts';
import { testHomeserver, type Homeserver } from '../harness/synapse.ts';
import { loggingProxy, newBot, newClient, newPeer, roomWithBot, tempDataDir, WAIT_MS, waitUntil } from './util.ts';

let hs: Homeserver;
before(async () => {
  hs = await testHomeserver();
});
after(async () => {
  await hs?.stop();
});

test('after stop, a new client on the same data dir delivers exactly the messages sent while stopped, in order', async (t) => {
  const bot = await newBot(t, hs);
  const peer = await newPeer(hs);
  const first: Message[] = [];
  bot.client.on('message', (m) => void first.push(m));
  await bot.client.run(bot.token);
  const roomId = await roomWithBot(peer, bot.user.userId);
  const beforeId = await peer.sendText(roomId, 'before stop');
  await waitUntil(() => first.find((m) => m.eventId === beforeId), WAIT_MS, "the first client's 'before stop' message");
  await bot.client.stop();
  assert.deepEqual(first.map((m) => m.body), ['before stop']);

  const missedIds: string[] = [];
  for (let i = 1; i <= 5; i++) missedIds.push(await peer.sendText(roomId, `while stopped ${i}`));

  const second = newClient(t, bot.dataDir);
  const errors: unknown[] = [];
  second.on('error', (e) => void errors.push(e));
  const received: Array<{ eventId: string; body: string; roomId: string }> = [];
  second.on('message', (m) => void received.push({ eventId: m.eventId, body: m.body, roomId: m.roomId }));
  await second.run(bot.token);
  await waitUntil(() => received.length >= 5, WAIT_MS, `the 5 missed messages (got ${received.length})`);
  // A message after the resume marks the end: everything redelivered would arrive before it.
  const afterId = await peer.sendText(roomId, 'after resume');
  await waitUntil(() => received.some((m) => m.eventId === afterId), WAIT_MS, "the 'after resume' message");

  assert.deepEqual(
    received.map((m) => m.eventId),
    [...missedIds, afterId],
    'exactly the 5 missed messages, in order, then the new one (and not the one handled before the stop)',
  );
  assert.deepEqual(received.map((m) => m.body), ['while stopped 1', 'while stopped 2', 'while stopped 3', 'while stopped 4', 'while stopped 5', 'after resume']);
  assert.ok(received.every((m) => m.roomId === roomId));
  assert.deepEqual(errors, []);
  assert.deepEqual(bot.errors, []);
});

test('the room cache survives a restart: message.room.name is known before any new state arrives', async (t) => {
  const bot = await newBot(t, hs);
  const peer = await newPeer(hs);
  await bot.client.run(bot.token);
  const roomId = await roomWithBot(peer, bot.user.userId, { name: 'Persistent' });
  await waitUntil(async () => (await bot.client.getRoom(roomId))?.name === 'Persistent', WAIT_MS, 'the cache to know the room name');
  await bot.client.stop();

  const second = newClient(t, bot.dataDir);
  const names: Array<string | null> = [];
  second.on('message', (m) => void names.push(m.room.name));
  await second.run(bot.token);
  assert.ok((await second.listRooms()).some((r) => r.roomId === roomId && r.name === 'Persistent'), 'listRooms right after run');
  await peer.sendText(roomId, 'still there?');
  await waitUntil(() => names.length > 0, WAIT_MS, 'the message after the restart');
  assert.deepEqual(names, ['Persistent']);
});

test('Client.login with the same data dir reuses the device; without a data dir it creates a new one', async (t) => {
  const user = await hs.registerUser();
  const dataDir = tempDataDir(t);
  const login = (dir?: string) =>
    Client.login({ homeserver: hs.baseUrl, user: user.localpart, password: user.password, ...(dir ? { dataDir: dir } : {}) });

  const a = decodeToken(await login(dataDir));
  const b = decodeToken(await login(dataDir));
  assert.equal(a.userId, user.userId);
  assert.equal(b.userId, user.userId);
  assert.equal(b.deviceId, a.deviceId, 'a second login with the same data dir reuses the device ID');
  assert.notEqual(b.accessToken, a.accessToken, 'each login gets its own access token');

  const c = decodeToken(await login());
  assert.notEqual(c.deviceId, a.deviceId, 'a login without a data dir creates a new device');
  assert.notEqual(c.deviceId, user.deviceId);

  const other = decodeToken(await login(tempDataDir(t)));
  assert.notEqual(other.deviceId, a.deviceId, 'a login with a fresh data dir creates a new device');

  // A full user ID finds the same stored device as the localpart did.
  const d = decodeToken(await Client.login({ homeserver: hs.baseUrl, user: user.userId, password: user.password, dataDir }));
  assert.equal(d.deviceId, a.deviceId, 'logging in with the full user ID reuses the device stored for the localpart');

  // The server agrees: the devices exist, and the reused one is a single device.
  const devices = await fetch(`${hs.baseUrl}/_matrix/client/v3/devices`, { headers: { authorization: `Bearer ${d.accessToken}` } }).then(
    (r) => r.json() as Promise<{ devices: Array<{ device_id: string }> }>,
  );
  const ids = devices.devices.map((x) => x.device_id);
  assert.equal(ids.filter((id) => id === a.deviceId).length, 1);
  assert.ok(ids.includes(c.deviceId) && ids.includes(other.deviceId));
});

for (const deliverInitialTimeline of [false, true]) {
  test(`the first run of a new data dir ${deliverInitialTimeline ? 'delivers' : 'does not deliver'} old messages (deliverInitialTimeline: ${deliverInitialTimeline})`, async (t) => {
    const bot = await newBot(t, hs, { deliverInitialTimeline });
    const peer = await newPeer(hs);
    // The bot joins (with its own access token) and the peer talks before the client ever runs.
    const roomId = await peer.createRoom({ invite: [bot.user.userId] });
    const res = await fetch(`${hs.baseUrl}/_matrix/client/v3/join/${encodeURIComponent(roomId)}`, {
      method: 'POST',
      headers: { authorization: `Bearer ${bot.user.accessToken}`, 'content-type': 'application/json' },
      body: '{}',
    });
    assert.equal(res.status, 200);
    const oldId = await peer.sendText(roomId, 'old');
    const seen: string[] = [];
    bot.client.on('message', (m) => void seen.push(m.eventId));
    await bot.client.run(bot.token);
    const newId = await peer.sendText(roomId, 'new');
    await waitUntil(() => seen.includes(newId), WAIT_MS, "the 'new' message");
    assert.deepEqual(seen, deliverInitialTimeline ? [oldId, newId] : [newId]);
  });
}

test('a restart on a quiet account: the first poll asks for timeout=0 (ready does not wait out a long-poll); health says starting until run() resolves', async (t) => {
  const proxy = await loggingProxy(t, hs.baseUrl);
  const user = await hs.registerUser();
  const dataDir = tempDataDir(t);
  const token = await Client.login({ homeserver: proxy.url, user: user.localpart, password: user.password, dataDir });
  // A long poll timeout, as in production: waiting it out would show.
  const first = newClient(t, dataDir, { encryption: false, pollTimeoutMs: 30_000 });
  await first.run(token);
  await first.stop();

  const second = newClient(t, dataDir, { encryption: false, pollTimeoutMs: 30_000 });
  const states: string[] = [];
  second.on('ready', async () => void states.push((await second.health()).state));
  const mark = proxy.log.length;
  await second.run(token);
  states.push((await second.health()).state);
  const polls = proxy.log.slice(mark).filter((l) => l.startsWith('GET /_matrix/client/v3/sync'));
  assert.match(polls[0]!, /[?&]since=/, 'it resumed from the saved position');
  assert.match(polls[0]!, /[?&]timeout=0(&|$)/, `the first poll of the run: ${polls[0]}`);
  assert.deepEqual(states, ['starting', 'running']);
  await waitUntil(() => proxy.log.slice(mark).some((l) => /sync\?.*timeout=30000/.test(l)), WAIT_MS, 'the long-polls after it');
});
