/**
 * Adaptive pacing (the default) against real Synapses: one that rate-limits messages (rc_message 1/s, bursts of
 * 3) and the shared one, which does not. Every send arrives once, in order; 429s are counted from a proxy's
 * records; no wall-clock timing is asserted.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { Client } from '../../src/index.ts';
import { startSynapse, testHomeserver, type Homeserver } from '../harness/synapse.ts';
import { Peer } from '../harness/peer.ts';
import { loggingProxy, newBot, newClient, newPeer, roomWithBot, tempDataDir } from './util.ts';

let shared: Homeserver;
let limited: Homeserver;
before(async () => {
  shared = await testHomeserver();
  limited = await startSynapse({ config: { rc_message: { per_second: 1, burst_count: 3 } } });
});
after(async () => {
  await limited?.stop();
  await shared?.stop();
});

test('a homeserver that rate-limits: 12 sends at once arrive once, in order, with one 429 for the burst (and at most one per probe)', async (t) => {
  const statuses: number[] = [];
  const proxy = await loggingProxy(t, limited.baseUrl);
  const user = await limited.registerUser();
  const dataDir = tempDataDir(t);
  const token = await Client.login({ homeserver: proxy.url, user: user.localpart, password: user.password, dataDir });
  const warnings: string[] = [];
  const client = newClient(t, dataDir, { encryption: false, rateLimit: undefined, logger: { debug() {}, info() {}, warn: (_o, m) => void warnings.push(m ?? ''), error() {} } });
  client.on('sendFailed', (e) => void statuses.push(e.status ?? 0));
  await client.run(token);
  const peer = new Peer(limited.baseUrl, await limited.registerUser());
  const roomId = await roomWithBot(peer, user.userId);
  const bodies = Array.from({ length: 12 }, (_, i) => `paced ${i}`);
  const ids = await Promise.all(bodies.map((b) => client.sendMessage(roomId, b)));
  assert.equal(new Set(ids).size, 12);
  const { chunk } = await peer.request('GET', `/rooms/${encodeURIComponent(roomId)}/messages`, undefined, { dir: 'b', limit: '50' });
  const seen = (chunk as Array<{ type: string; sender: string; content: { body?: string } }>).filter((e) => e.type === 'm.room.message' && e.sender === user.userId).map((e) => e.content.body).reverse();
  assert.deepEqual(seen, bodies, 'each once, in order');
  const sends = proxy.log.filter((l) => l.startsWith('PUT') && l.includes('/send/m.room.message/'));
  const refused = sends.length - 12; // every PUT beyond one per message was a retry after a 429
  assert.ok(refused >= 1 && refused <= 2, `${refused} 429s for 12 sends`);
  assert.deepEqual(statuses, [], 'no dead letters');
  assert.ok(warnings.some((w) => w.startsWith('sends are paced') && w.includes('learned from its 429s')), warnings.join(' | '));
});

test('a homeserver without limits: sends are never paced', async (t) => {
  const warnings: string[] = [];
  const bot = await newBot(t, shared, { encryption: false, rateLimit: undefined, logger: { debug() {}, info() {}, warn: (_o, m) => void warnings.push(m ?? ''), error() {} } });
  await bot.client.run(bot.token);
  const peer = await newPeer(shared);
  const roomId = await roomWithBot(peer, bot.user.userId);
  let pacedSeen = 0;
  const sends = Array.from({ length: 40 }, (_, i) => bot.client.sendMessage(roomId, `fast ${i}`));
  const watch = setInterval(() => void (pacedSeen += bot.client.outboxStatus().waiting.pacing), 5);
  await Promise.all(sends);
  clearInterval(watch);
  assert.equal(pacedSeen, 0, 'no send ever waited on pacing');
  assert.deepEqual(warnings.filter((w) => w.startsWith('sends are paced')), []);
});
