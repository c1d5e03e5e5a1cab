/**
 * Cluster mode, a NATS outage longer than the ingest's lease (real Synapse + real nats-server): the server is
 * stopped (SIGTERM) while an ingest (in this process) publishes a peer's messages to two worker processes, and
 * started again only once the ingest has lost its lease, stepped down, and failed a first try to take it again. The ingest must stand by, take the lease
 * again and lead again in the same process (no restart), resuming from its since token and journal. Messages go to
 * three sets of rooms: one stream sent across the outage's start, one sent while the ingest stands by, one sent
 * after it leads again. Checked: every message handled by the workers, each room's messages first seen in timeline
 * order, a second handling only flagged `redelivered`, one reply per `ping`, no error from the ingest, and the
 * lease taken again within 2.5 s of the reconnect (tries sent into the outage are not waited for).
 * Knobs (env): HC_CLUSTER_MESSAGES (300: half of it goes out here).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { checkHandled, checkOneReplyEach, waitAllHandled, waitAllReplied, CLUSTER_MESSAGES, clusterServers, ingestWithWorkers, type SentMessage, sendOverRooms } from '../helpers/cluster.ts';
import { newPeer, waitUntil } from './util.ts';

const servers = clusterServers();

const ROOMS_PER_SET = 4;
const PARTITIONS = 8;
/** Short, so that the outage outlasts it within a few seconds: the ingest steps down after 80 % of it unrenewed. */
const LEASE_TTL_MS = 3_000;
/** Messages per set of rooms (before, during, after the outage). */
const PER_SET = Math.round(CLUSTER_MESSAGES / 6);

test(`NATS down longer than the lease (${LEASE_TTL_MS} ms): the ingest stands by, leads again, nothing lost`, { timeout: 120_000 }, async (t) => {
  const t0 = Date.now();
  const { hs, nats } = servers;
  const { bot, lines } = await ingestWithWorkers(t, servers, { partitions: PARTITIONS, leaseTtlMs: LEASE_TTL_MS });

  const peer = await newPeer(hs);
  const roomSet = () => Promise.all(Array.from({ length: ROOMS_PER_SET }, () => peer.createRoom({ invite: [bot.user.userId] })));
  const [early, during, late] = await Promise.all([roomSet(), roomSet(), roomSet()]);
  await Promise.all([...early, ...during, ...late].map((r) => peer.waitForJoined(r, bot.user.userId, 30_000)));
  const ingestSaid = (prefix: string, since = 0) => lines.find((l) => l.run === 'ingest' && typeof l.msg === 'string' && l.msg.startsWith(prefix) && l.t >= since);

  const sendingEarly = sendOverRooms(peer, early, PER_SET, 5);
  const handled = () => lines.filter((l) => l.kind === 'message').length;
  await waitUntil(() => handled() >= PER_SET / 3, 60_000, 'a third of the first set handled');
  const downAt = Date.now();
  let sentDuring: SentMessage[] = [];
  // Down until the ingest has stepped down and its first try to take the lease again failed (its own warnings:
  // the try waits out nats.js's request timeout, so NATS stays down well past the TTL), and while the peer sends
  // the second set.
  await nats.restart(async () => {
    await waitUntil(() => ingestSaid('cluster: the ingest lost its lease'), 30_000, "the ingest's step-down");
    await waitUntil(() => ingestSaid('cluster: cannot reach the lease bucket'), 30_000, "the standby's first try failing");
    sentDuring = await sendOverRooms(peer, during, PER_SET, 5);
  }, 'SIGTERM');
  const upAt = Date.now();
  const outageMs = upAt - downAt;
  const ledAgain = await waitUntil(() => ingestSaid('cluster: the ingest leads again'), 60_000, 'the ingest leading again');
  const sentLate = await sendOverRooms(peer, late, PER_SET, 5);
  const sent = [...(await sendingEarly), ...sentDuring, ...sentLate];

  await waitAllHandled(lines, sent, ['w0', 'w1'], PARTITIONS, bot, 60_000);
  await waitAllReplied(lines, sent, 30_000);
  assert.ok(outageMs > LEASE_TTL_MS, `the outage (${outageMs} ms) outlasted the lease`);
  assert.equal((await bot.client.health()).state, 'running', 'the same client leads again');
  const { twice } = checkHandled(lines, sent, new Set(['w0', 'w1']));
  assert.deepEqual(lines.filter((l) => l.kind === 'error' || l.kind === 'sendFailed'), []);
  await checkOneReplyEach(hs.baseUrl, peer.user.accessToken, bot.user.userId, sent);
  assert.deepEqual(bot.errors, []);
  const steppedDownAt = ingestSaid('cluster: the ingest lost its lease')!.t;
  // The lease is tried again as soon as the connection is back, not after a try sent into the outage times out (5 s).
  const reconnectedAt = ingestSaid('cluster: reconnected to NATS', steppedDownAt)!.t;
  const heldAt = ingestSaid('cluster: this process holds the ingest lease', steppedDownAt)!.t;
  assert.ok(heldAt - reconnectedAt < 2_500, `the lease taken again ${heldAt - reconnectedAt} ms after NATS reconnected`);
  t.diagnostic(`wall time ${Date.now() - t0} ms; NATS down ${outageMs} ms; stepped down ${steppedDownAt - downAt} ms after NATS stopped; reconnected ${reconnectedAt - upAt} ms, held the lease ${heldAt - upAt} ms, led again ${ledAgain.t - upAt} ms after it was back; ${sent.length} messages; ${twice.size} handled twice`);
});
