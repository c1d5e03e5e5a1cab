/**
 * Cluster mode, a NATS outage longer than the ingest's lease (real Synapse + real nats-server): the server is
 * stopped (SIGTERM) while an ingest (in this process) publishes a peer's messages to two worker processes, and
 * started again only once the ingest has lost its lease and stepped down. The ingest must stand by, take the lease
 * again and lead again in the same process (no restart), resuming from its since token and journal. Messages go to
 * three sets of rooms: one stream sent across the outage's start, one sent while the ingest stands by, one sent
 * after it leads again. Checked: every message handled by the workers, each room's messages first seen in timeline
 * order, a second handling only flagged `redelivered`, one reply per `ping`, no error from the ingest.
 * Knobs (env): HC_CLUSTER_MESSAGES (300: half of it goes out here).
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { type NatsServer, startNats } from '../harness/nats.ts';
import { testHomeserver, type Homeserver } from '../harness/synapse.ts';
import { partitionOf } from '../../src/cluster/wire.ts';
import { type BotLine, clusterLogger, describeCluster } from '../helpers/fault-stream.ts';
import { checkHandled, checkOneReplyEach, waitAllReplied, CLUSTER_MESSAGES, clusterName, type SentMessage, sendOverRooms, startClusterBot } from '../helpers/cluster.ts';
import { newBot, newPeer, tempDataDir, waitUntil } from './util.ts';

let hs: Homeserver;
let nats: NatsServer;
before(async () => {
  [hs, nats] = await Promise.all([testHomeserver(), startNats()]);
});
after(async () => {
  await Promise.all([hs?.stop(), nats?.stop()]);
});

const ROOMS_PER_SET = 4;
const PARTITIONS = 8;
/** Short, so that the outage outlasts it within a few seconds: the ingest steps down after 80 % of it unrenewed. */
const LEASE_TTL_MS = 3_000;
/** Messages per set of rooms (before, during, after the outage). */
const PER_SET = Math.round(CLUSTER_MESSAGES / 6);

test(`NATS down longer than the lease (${LEASE_TTL_MS} ms): the ingest stands by, leads again, nothing lost`, { timeout: 120_000 }, async (t) => {
  const t0 = Date.now();
  const name = clusterName();
  const lines: BotLine[] = [];
  const bot = await newBot(t, hs, { encryption: false, logger: clusterLogger('ingest', lines), cluster: { servers: nats.url, name, role: 'ingest', partitions: PARTITIONS, ackWaitMs: 2_000, leaseTtlMs: LEASE_TTL_MS } });
  await bot.client.run(bot.token);
  const workers = ['w0', 'w1'].map((run) => startClusterBot(t, run, { HC_TOKEN: bot.token, HC_DIR: tempDataDir(t), HC_NATS: nats.url, HC_NAME: name }, lines));
  await Promise.all(workers.map((w) => w.waitFor((l) => l.kind === 'ready', `worker ${w.run} ready`, 60_000)));

  const peer = await newPeer(hs);
  const roomSet = () => Promise.all(Array.from({ length: ROOMS_PER_SET }, () => peer.createRoom({ invite: [bot.user.userId] })));
  const [early, during, late] = await Promise.all([roomSet(), roomSet(), roomSet()]);
  await Promise.all([...early, ...during, ...late].map((r) => peer.waitForJoined(r, bot.user.userId, 30_000)));
  const ingestSaid = (prefix: string) => lines.find((l) => l.run === 'ingest' && typeof l.msg === 'string' && l.msg.startsWith(prefix));

  const sendingEarly = sendOverRooms(peer, early, PER_SET, 5);
  const handled = () => lines.filter((l) => l.kind === 'message').length;
  await waitUntil(() => handled() >= PER_SET / 3, 60_000, 'a third of the first set handled');
  const downAt = Date.now();
  let sentDuring: SentMessage[] = [];
  // Down until the ingest has stepped down (its own warning), and while the peer sends the second set.
  await nats.restart(async () => {
    await waitUntil(() => ingestSaid('cluster: the ingest lost its lease'), 30_000, "the ingest's step-down");
    sentDuring = await sendOverRooms(peer, during, PER_SET, 5);
  }, 'SIGTERM');
  const outageMs = Date.now() - downAt;
  await waitUntil(() => ingestSaid('cluster: the ingest leads again'), 60_000, 'the ingest leading again');
  const sentLate = await sendOverRooms(peer, late, PER_SET, 5);
  const sent = [...(await sendingEarly), ...sentDuring, ...sentLate];

  const seen = () => new Set(lines.filter((l) => l.kind === 'message' && workers.some((w) => w.run === l.run)).map((l) => l.eventId));
  await waitUntil(() => {
    const s = seen();
    return sent.every((m) => s.has(m.eventId));
  }, 60_000, 'every message handled').catch(async (err: Error) => {
    const s = seen();
    const missing = sent.filter((m) => !s.has(m.eventId)).map((m) => ({ body: m.body, partition: partitionOf(m.roomId, PARTITIONS) }));
    const health = await bot.client.health().catch((e: Error) => e.message);
    throw new Error(`${err.message}\n${describeCluster(lines, missing, { ingestHealth: health, ingestErrors: bot.errors.map((e) => `${e.code}: ${e.message}`) })}`);
  });
  await waitAllReplied(lines, sent, 30_000);
  assert.ok(outageMs > LEASE_TTL_MS, `the outage (${outageMs} ms) outlasted the lease`);
  assert.equal((await bot.client.health()).state, 'running', 'the same client leads again');
  const { twice } = checkHandled(lines, sent, new Set(['w0', 'w1']));
  assert.deepEqual(lines.filter((l) => l.kind === 'error' || l.kind === 'sendFailed'), []);
  await checkOneReplyEach(hs.baseUrl, peer.user.accessToken, bot.user.userId, sent);
  assert.deepEqual(bot.errors, []);
  t.diagnostic(`wall time ${Date.now() - t0} ms; NATS down ${outageMs} ms; ${sent.length} messages; ${twice.size} handled twice`);
});
