/**
 * Cluster mode, send pacing (real Synapse that rate-limits messages, rc_message 2/s in bursts of 3, + real
 * nats-server): the account has one budget, however many workers send. Two workers fire their sends at once
 * into one room; every send arrives once, and the 429s stay at what one process draws (the first burst, one per
 * worker racing into it), where two pacers each learning the limit for themselves would each send at the
 * server's whole rate and be refused about every other send. 429s are counted from a proxy's records; no
 * wall-clock timing is asserted.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { Client } from '../../src/index.ts';
import { type NatsServer, startNats } from '../harness/nats.ts';
import { startSynapse, type Homeserver } from '../harness/synapse.ts';
import { Peer } from '../harness/peer.ts';
import { clusterName } from '../helpers/cluster.ts';
import { loggingProxy, newClient, roomWithBot, tempDataDir } from './util.ts';

let limited: Homeserver;
let nats: NatsServer;
before(async () => {
  [limited, nats] = await Promise.all([startSynapse({ config: { rc_message: { per_second: 2, burst_count: 3 } } }), startNats()]);
});
after(async () => {
  await Promise.all([limited?.stop(), nats?.stop()]);
});

const PER_WORKER = 12;

test(`two workers sending ${PER_WORKER} messages each at once share the account's pace: each arrives once, with the 429s of one burst`, { timeout: 120_000 }, async (t) => {
  const proxy = await loggingProxy(t, limited.baseUrl);
  const user = await limited.registerUser();
  const token = await Client.login({ homeserver: proxy.url, user: user.localpart, password: user.password, dataDir: tempDataDir(t) });
  const name = clusterName();
  const ingest = newClient(t, tempDataDir(t), { encryption: false, rateLimit: undefined, cluster: { servers: nats.url, name, role: 'ingest', partitions: 2 } });
  await ingest.run(token);
  const workers = [0, 1].map(() => newClient(t, tempDataDir(t), { encryption: false, rateLimit: undefined, cluster: { servers: nats.url, name } }));
  await Promise.all(workers.map((w) => w.run(token)));
  const failed: string[] = [];
  for (const c of [ingest, ...workers]) c.on('sendFailed', (e) => void failed.push(e.message));

  const peer = new Peer(limited.baseUrl, await limited.registerUser());
  const roomId = await roomWithBot(peer, user.userId);
  const before = proxy.log.length;
  const bodies = workers.map((_, w) => Array.from({ length: PER_WORKER }, (_, i) => `worker ${w} #${i}`));
  await Promise.all(workers.map((w, i) => Promise.all(bodies[i]!.map((b) => w.sendMessage(roomId, b)))));

  const { chunk } = await peer.request('GET', `/rooms/${encodeURIComponent(roomId)}/messages`, undefined, { dir: 'b', limit: '100' });
  const seen = (chunk as Array<{ type: string; sender: string; content: { body?: string } }>).filter((e) => e.type === 'm.room.message' && e.sender === user.userId).map((e) => e.content.body!).reverse();
  assert.deepEqual([...seen].sort(), bodies.flat().sort(), 'each once');
  for (const mine of bodies) assert.deepEqual(seen.filter((b) => mine.includes(b)), mine, "each worker's in its order");
  const sends = proxy.log.slice(before).filter((l) => l.startsWith('PUT') && l.includes('/send/m.room.message/'));
  const refused = sends.length - 2 * PER_WORKER; // every PUT beyond one per message was a retry after a 429
  assert.ok(refused <= 4, `${refused} 429s for ${2 * PER_WORKER} sends from two workers`);
  assert.deepEqual(failed, [], 'no dead letters');
  t.diagnostic(`${refused} 429s for ${2 * PER_WORKER} sends`);
});
