/**
 * Cluster mode, a NATS outage (real Synapse + real nats-server): the server is stopped (SIGTERM) and started again
 * on the same store while an ingest (in this process) publishes the events of 20 rooms to two worker processes. Publishes
 * wait the outage out (the journal keeps the events meanwhile), consumers and the lease resume. Checked: every
 * message handled, each room's messages first seen in timeline order, a second handling only flagged
 * `redelivered` (an ack or a delivery lost with the server), one reply per `ping`.
 * Knobs (env): HC_CLUSTER_MESSAGES (300).
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { type NatsServer, startNats } from '../harness/nats.ts';
import { testHomeserver, type Homeserver } from '../harness/synapse.ts';
import { partitionOf } from '../../src/cluster/wire.ts';
import { type BotLine, clusterLogger, describeCluster } from '../helpers/fault-stream.ts';
import { checkHandled, checkOneReplyEach, waitAllReplied, CLUSTER_MESSAGES, clusterName, sendOverRooms, startClusterBot } from '../helpers/cluster.ts';
import { newBot, newPeer, tempDataDir, waitUntil } from './util.ts';

let hs: Homeserver;
let nats: NatsServer;
before(async () => {
  [hs, nats] = await Promise.all([testHomeserver(), startNats()]);
});
after(async () => {
  await Promise.all([hs?.stop(), nats?.stop()]);
});

const ROOMS = 20;
const PARTITIONS = 8;
/**
 * Every lease (the ingest's, the workers' keys) waits out a NATS outage shorter than a third of its TTL (README,
 * "One ingest per device"); a longer one may stop the ingest, which this test has no standby for. NATS is down
 * 1-2 s here on a loaded machine (stopped, then started once the ingest holds events): 15 s leaves it 5 s.
 */
const LEASE_TTL_MS = 15_000;

test(`NATS restarted mid-stream (${CLUSTER_MESSAGES} messages, ${ROOMS} rooms): the bot resumes, nothing lost`, { timeout: 180_000 }, async (t) => {
  const t0 = Date.now();
  const name = clusterName();
  const lines: BotLine[] = [];
  const bot = await newBot(t, hs, { encryption: false, logger: clusterLogger('ingest', lines), cluster: { servers: nats.url, name, role: 'ingest', partitions: PARTITIONS, ackWaitMs: 2_000, leaseTtlMs: LEASE_TTL_MS } });
  await bot.client.run(bot.token);
  const workers = ['w0', 'w1'].map((run) => startClusterBot(t, run, { HC_TOKEN: bot.token, HC_DIR: tempDataDir(t), HC_NATS: nats.url, HC_NAME: name }, lines));
  await Promise.all(workers.map((w) => w.waitFor((l) => l.kind === 'ready', `worker ${w.run} ready`, 60_000)));

  const peer = await newPeer(hs);
  const rooms = await Promise.all(Array.from({ length: ROOMS }, () => peer.createRoom({ invite: [bot.user.userId] })));
  await Promise.all(rooms.map((r) => peer.waitForJoined(r, bot.user.userId, 30_000)));
  const sending = sendOverRooms(peer, rooms, CLUSTER_MESSAGES, 5);
  const handled = () => lines.filter((l) => l.kind === 'message').length;
  await waitUntil(() => handled() >= CLUSTER_MESSAGES / 3, 60_000, 'a third of the messages handled');
  const before = handled();
  // Down while the peer goes on sending: the ingest's publishes fail and wait, its journal holds the events.
  const downAt = Date.now();
  lines.push({ kind: 'cluster', run: 'test', msg: 'NATS stopping', t: downAt });
  await nats.restart(() => waitUntil(() => bot.client.health().then((h) => h.backlogEvents > 0), 30_000, 'events held by the ingest while NATS is down'), 'SIGTERM');
  const outageMs = Date.now() - downAt;
  lines.push({ kind: 'cluster', run: 'test', msg: 'NATS serving again', t: Date.now(), outageMs });
  const sent = await sending;

  const seen = () => new Set(lines.filter((l) => l.kind === 'message' && workers.some((w) => w.run === l.run)).map((l) => l.eventId));
  await waitUntil(() => {
    const s = seen();
    return sent.every((m) => s.has(m.eventId));
  }, 90_000, 'every message handled').catch(async (err: Error) => {
    const s = seen();
    const missing = sent.filter((m) => !s.has(m.eventId)).map((m) => ({ body: m.body, partition: partitionOf(m.roomId, PARTITIONS) }));
    const health = await bot.client.health().catch((e: Error) => e.message);
    throw new Error(`${err.message}\n${describeCluster(lines, missing, { ingestHealth: health, ingestErrors: bot.errors.map((e) => `${e.code}: ${e.message}`) })}`);
  });
  await waitAllReplied(lines, sent, 30_000);
  assert.ok(handled() > before, 'handling went on after the restart');
  // A message the server had handed out when it stopped counts as delivered: it comes again flagged, to any worker.
  const { twice } = checkHandled(lines, sent, new Set(['w0', 'w1']));
  assert.deepEqual(lines.filter((l) => l.kind === 'error' || l.kind === 'sendFailed'), []);
  await checkOneReplyEach(hs.baseUrl, peer.user.accessToken, bot.user.userId, sent);
  assert.deepEqual(bot.errors, []);
  t.diagnostic(`wall time ${Date.now() - t0} ms; NATS down ${outageMs} ms; ${twice.size} handled twice (redelivered after the restart)`);
});
