/**
 * Users and the account against a real Synapse: whoami, profiles (own and others'), presence, the user directory,
 * and account data (global and per room; set by the bot or by a second login of the same user; `accountData` events).
 */
import assert from 'node:assert/strict';
import { after, before, test, type TestContext } from 'node:test';
import { type AccountDataEvent, Client, decodeToken, type HalcyonError, type Message } from '../../src/index.ts';
import { Peer } from '../harness/peer.ts';
import { testHomeserver, type Homeserver } from '../harness/synapse.ts';
import { loggingProxy, newBot, newClient, newPeer, rand, roomWithBot, tempDataDir, WAIT_MS, waitUntil } from './util.ts';

let hs: Homeserver;
before(async () => {
  hs = await testHomeserver();
});
after(async () => {
  await hs?.stop();
});

const enc = encodeURIComponent;

test('whoami: user, device, homeserver; encryption true by default and false with encryption: false', async (t) => {
  const withE2ee = await newBot(t, hs);
  const without = await newBot(t, hs, { encryption: false });
  await withE2ee.client.run(withE2ee.token);
  await without.client.run(without.token);

  const a = withE2ee.client.whoami();
  assert.equal(a.userId, withE2ee.user.userId);
  assert.equal(a.deviceId, decodeToken(withE2ee.token).deviceId);
  assert.equal(a.homeserver, hs.baseUrl);
  assert.equal(a.encryption, true);
  assert.match(a.identityKeys?.ed25519 ?? '', /^[A-Za-z0-9+/]{43}$/);
  // The device ID is the one the server knows for this access token.
  const server = await new Peer(hs.baseUrl, { ...withE2ee.user, accessToken: decodeToken(withE2ee.token).accessToken }).request('GET', '/account/whoami');
  assert.equal(server.device_id, a.deviceId);
  assert.equal(server.user_id, a.userId);

  const b = without.client.whoami();
  assert.equal(b.userId, without.user.userId);
  assert.equal(b.deviceId, decodeToken(without.token).deviceId);
  assert.equal(b.homeserver, hs.baseUrl);
  assert.equal(b.encryption, false);
  assert.equal(b.identityKeys, undefined);
  assert.deepEqual([...withE2ee.errors, ...without.errors], []);
});

test("profiles: the bot sets its own display name and avatar; reads others' with getProfile and user(id)", async (t) => {
  const bot = await newBot(t, hs);
  const peer = await newPeer(hs);
  await bot.client.run(bot.token);
  const B = bot.user.userId;

  // Another user's profile: Synapse starts it at the localpart; the peer changes it.
  assert.deepEqual(await bot.client.getProfile(peer.userId), { displayName: peer.user.localpart, avatarUrl: null });
  await peer.request('PUT', `/profile/${enc(peer.userId)}/displayname`, { displayname: 'Pat the Peer' });
  await peer.request('PUT', `/profile/${enc(peer.userId)}/avatar_url`, { avatar_url: 'mxc://localhost/pat' });
  assert.deepEqual(await bot.client.getProfile(peer.userId), { displayName: 'Pat the Peer', avatarUrl: 'mxc://localhost/pat' });
  const user = bot.client.user(peer.userId);
  assert.equal(user.id, peer.userId);
  assert.deepEqual(await user.profile(), { displayName: 'Pat the Peer', avatarUrl: 'mxc://localhost/pat' });
  assert.equal(await user.displayName(), 'Pat the Peer');
  assert.equal(await user.avatarUrl(), 'mxc://localhost/pat');

  // The bot's own profile.
  await bot.client.setDisplayName('Halcyon Helper');
  await bot.client.setAvatarUrl('mxc://localhost/halcyon');
  const seenByPeer = await peer.request('GET', `/profile/${enc(B)}`);
  assert.equal(seenByPeer.displayname, 'Halcyon Helper');
  assert.equal(seenByPeer.avatar_url, 'mxc://localhost/halcyon');
  assert.deepEqual(await bot.client.user(B).profile(), { displayName: 'Halcyon Helper', avatarUrl: 'mxc://localhost/halcyon' });

  // In a shared room, the new name reaches the member list (Synapse updates the bot's member event).
  const roomId = await roomWithBot(peer, B);
  await bot.client.setDisplayName('Halcyon Renamed');
  await waitUntil(
    async () => (await bot.client.getRoom(roomId))?.member(B)?.displayName === 'Halcyon Renamed',
    WAIT_MS,
    "the bot's new display name in its member event",
  );

  // An unknown user: a coded 404 (Synapse 1.163 says M_UNKNOWN "No row found (profiles)"; the spec says M_NOT_FOUND).
  await assert.rejects(bot.client.getProfile(`@nobody-${rand()}:${hs.serverName}`), (e: HalcyonError) => e.code === 'HALCYON_MATRIX' && e.status === 404);
  assert.deepEqual(bot.errors, []);
});

/**
 * A {@link loggingProxy} in front of Synapse. The answer to a PUT of presence is held back until the client's next /sync request has arrived (a slow answer: the
 * server has already woken the client's long poll with the presence change); the next poll is at most a poll
 * timeout away.
 */
async function presenceProxy(t: TestContext, target: string): Promise<{ url: string; log: string[] }> {
  let nextSync: { promise: Promise<void>; resolve: () => void } | null = null;
  return loggingProxy(t, target, {
    hold: (method, url) => {
      if (method === 'PUT' && url.includes('/presence/')) {
        let resolve!: () => void;
        const promise = new Promise<void>((r) => (resolve = r));
        nextSync = { promise, resolve };
        return promise;
      }
      if (url.startsWith('/_matrix/client/v3/sync') && nextSync) {
        nextSync.resolve();
        nextSync = null;
      }
      return null;
    },
    release: () => nextSync?.resolve(),
  });
}

test("presence: getPresence of the peer; setPresence of the bot with a status message, which the bot's own polls keep", async (t) => {
  // Through a logging proxy: the set_presence of each of the bot's polls is checked.
  const proxy = await presenceProxy(t, hs.baseUrl);
  const user = await hs.registerUser();
  const dataDir = tempDataDir(t);
  const token = await Client.login({ homeserver: proxy.url, user: user.localpart, password: user.password, dataDir });
  const client = newClient(t, dataDir, { encryption: false });
  const messages: Message[] = [];
  client.on('message', (m) => void messages.push(m));
  const errors: unknown[] = [];
  client.on('error', (e) => void errors.push(e));
  const peer = await newPeer(hs);
  await client.run(token);
  const B = user.userId;
  const roomId = await roomWithBot(peer, B); // presence is visible to users sharing a room

  await peer.setPresence('online', 'kneading dough');
  const p = await client.getPresence(peer.userId);
  assert.equal(p.presence, 'online');
  assert.equal(p.statusMsg, 'kneading dough');
  assert.equal(typeof p.lastActiveAgo, 'number');
  assert.equal(typeof p.currentlyActive, 'boolean');
  assert.deepEqual({ ...(await client.user(peer.userId).presence()), lastActiveAgo: 0 }, { ...p, lastActiveAgo: 0 });

  await client.setPresence('unavailable', 'thinking hard');
  // Two messages the bot received prove two more polls after the set.
  for (const text of ['marker 1', 'marker 2']) {
    const id = await peer.sendText(roomId, text);
    await waitUntil(() => messages.some((m) => m.eventId === id), WAIT_MS, `the message '${text}'`);
  }
  // Synapse keeps presence per device and every poll's set_presence overwrites the device's: a poll started after
  // the PUT with another value (or none: online) undoes the set. Synapse wakes the bot's own long poll on the change.
  const put = proxy.log.findIndex((r) => r.startsWith('PUT ') && r.includes('/presence/'));
  assert.ok(put >= 0, 'the PUT went through the proxy');
  const pollsAfter = proxy.log.slice(put + 1).filter((r) => r.startsWith('GET /_matrix/client/v3/sync'));
  const presences = pollsAfter.map((r) => new URL(r.slice(4), 'http://x').searchParams.get('set_presence'));
  assert.ok(presences.length >= 2);
  assert.deepEqual(presences, presences.map(() => 'unavailable'), 'every poll that started after the PUT carries set_presence=unavailable');
  const seen = await peer.getPresence(B);
  assert.equal(seen.presence, 'unavailable');
  assert.equal(seen.status_msg, 'thinking hard');
  const own = await client.user(B).presence();
  assert.equal(own.presence, 'unavailable');
  assert.equal(own.statusMsg, 'thinking hard');

  await client.setPresence('online');
  await waitUntil(async () => (await peer.getPresence(B)).presence === 'online', WAIT_MS, 'the bot back online');
  assert.deepEqual(errors, []);
});

test('searchUsers finds users by display name and user ID (the server searches all users)', async (t) => {
  const bot = await newBot(t, hs);
  const stranger = await newPeer(hs); // shares no room with the bot
  await bot.client.run(bot.token);
  const tag = `Zephyrine${rand()}`;
  await stranger.request('PUT', `/profile/${enc(stranger.userId)}/displayname`, { displayname: `${tag} Baker` });
  await stranger.request('PUT', `/profile/${enc(stranger.userId)}/avatar_url`, { avatar_url: 'mxc://localhost/zephyrine' });

  const byName = await waitUntil(
    async () => {
      const r = await bot.client.searchUsers(tag);
      return r.results.length > 0 ? r : undefined;
    },
    WAIT_MS,
    `the user directory to find ${tag}`,
  );
  assert.deepEqual(byName.results, [{ userId: stranger.userId, displayName: `${tag} Baker`, avatarUrl: 'mxc://localhost/zephyrine' }]);
  assert.equal(byName.limited, false);

  const byId = await bot.client.searchUsers(stranger.user.localpart);
  assert.ok(byId.results.some((u) => u.userId === stranger.userId), 'found by localpart');

  // The limit is passed on.
  const others = await Promise.all([newPeer(hs), newPeer(hs), newPeer(hs)]);
  const group = `Quokka${rand()}`;
  for (const [i, o] of others.entries()) await o.request('PUT', `/profile/${enc(o.userId)}/displayname`, { displayname: `${group} ${i}` });
  const limited = await waitUntil(
    async () => {
      const r = await bot.client.searchUsers(group, 2);
      return r.limited ? r : undefined;
    },
    WAIT_MS,
    'a limited search',
  );
  assert.equal(limited.results.length, 2);
  assert.deepEqual((await bot.client.searchUsers(`nomatch${rand()}`)).results, []);
  assert.deepEqual(bot.errors, []);
});

test('account data: global and per room, set by the bot or by another login of the same user, with accountData events', async (t) => {
  const bot = await newBot(t, hs);
  const peer = await newPeer(hs);
  const events: AccountDataEvent[] = [];
  bot.client.on('accountData', (e) => void events.push(e));
  await bot.client.run(bot.token);
  const B = bot.user.userId;
  const roomId = await roomWithBot(peer, B);
  // The user's registration login: another device of the bot's own user, talking plain HTTP.
  const other = new Peer(hs.baseUrl, bot.user);
  assert.equal(other.userId, B);
  const eventOf = (roomId: string | null, type: string, pred: (c: Record<string, unknown>) => boolean = () => true) =>
    waitUntil(() => events.find((e) => e.roomId === roomId && e.type === type && pred(e.content)), WAIT_MS, `an accountData event for ${type} in ${roomId ?? 'global'}`);

  // Unknown types are null.
  assert.equal(await bot.client.getAccountData('org.example.none'), null);
  assert.equal(await bot.client.getRoomAccountData(roomId, 'org.example.none'), null);

  // Set by the bot: readable at once, on the server, and an event follows by sync.
  await bot.client.setAccountData('org.example.settings', { theme: 'dark', n: 1 });
  assert.deepEqual(await bot.client.getAccountData('org.example.settings'), { theme: 'dark', n: 1 });
  assert.deepEqual(await other.request('GET', `/user/${enc(B)}/account_data/org.example.settings`), { theme: 'dark', n: 1 });
  const ownGlobal = await eventOf(null, 'org.example.settings');
  assert.deepEqual(ownGlobal.content, { theme: 'dark', n: 1 });

  await bot.client.setRoomAccountData(roomId, 'org.example.room', { muted: true });
  assert.deepEqual(await bot.client.getRoomAccountData(roomId, 'org.example.room'), { muted: true });
  assert.deepEqual(await other.request('GET', `/user/${enc(B)}/rooms/${enc(roomId)}/account_data/org.example.room`), { muted: true });
  const ownRoom = await eventOf(roomId, 'org.example.room');
  assert.deepEqual(ownRoom.content, { muted: true });
  assert.equal(await bot.client.getAccountData('org.example.room'), null, 'room account data is not global');

  // Set by the other login: an event, then the cached value follows.
  await other.request('PUT', `/user/${enc(B)}/account_data/org.example.settings`, { theme: 'light', n: 2 });
  const remoteGlobal = await eventOf(null, 'org.example.settings', (c) => c.n === 2);
  assert.deepEqual(remoteGlobal.content, { theme: 'light', n: 2 });
  assert.deepEqual(await bot.client.getAccountData('org.example.settings'), { theme: 'light', n: 2 }, 'the cache follows the sync');

  await other.request('PUT', `/user/${enc(B)}/rooms/${enc(roomId)}/account_data/org.example.room`, { muted: false });
  const remoteRoom = await eventOf(roomId, 'org.example.room', (c) => c.muted === false);
  assert.equal(remoteRoom.roomId, roomId);
  assert.deepEqual(await bot.client.getRoomAccountData(roomId, 'org.example.room'), { muted: false });

  // A type the bot never read, set elsewhere: the cache has it from the sync.
  await other.request('PUT', `/user/${enc(B)}/account_data/org.example.fresh`, { v: 'x' });
  await eventOf(null, 'org.example.fresh');
  assert.deepEqual(await bot.client.getAccountData('org.example.fresh'), { v: 'x' });
  // fresh: true asks the server.
  assert.deepEqual(await bot.client.getAccountData('org.example.settings', { fresh: true }), { theme: 'light', n: 2 });
  assert.deepEqual(await bot.client.getRoomAccountData(roomId, 'org.example.room', { fresh: true }), { muted: false });
  assert.deepEqual(bot.errors, []);
});

test('account data changed while the bot was stopped arrives as accountData events after the restart', async (t) => {
  const bot = await newBot(t, hs, { encryption: false });
  const peer = await newPeer(hs);
  await bot.client.run(bot.token);
  const B = bot.user.userId;
  const roomId = await roomWithBot(peer, B);
  await bot.client.setAccountData('org.example.counter', { n: 1 });
  await bot.client.setRoomAccountData(roomId, 'org.example.room', { n: 1 });
  await bot.client.stop();

  const other = new Peer(hs.baseUrl, bot.user);
  await other.request('PUT', `/user/${enc(B)}/account_data/org.example.counter`, { n: 2 });
  await other.request('PUT', `/user/${enc(B)}/rooms/${enc(roomId)}/account_data/org.example.room`, { n: 2 });

  const second = newClient(t, bot.dataDir, { encryption: false });
  const events: AccountDataEvent[] = [];
  second.on('accountData', (e) => void events.push(e));
  const errors: unknown[] = [];
  second.on('error', (e) => void errors.push(e));
  await second.run(bot.token);
  await waitUntil(
    () => events.some((e) => e.roomId === null && e.type === 'org.example.counter' && e.content.n === 2) && events.some((e) => e.roomId === roomId && e.content.n === 2),
    WAIT_MS,
    'both changes as accountData events',
  );
  assert.deepEqual(await second.getAccountData('org.example.counter'), { n: 2 });
  assert.deepEqual(await second.getRoomAccountData(roomId, 'org.example.room'), { n: 2 });
  assert.deepEqual(errors, []);
});
