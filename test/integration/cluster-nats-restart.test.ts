/**
 * Cluster mode, a NATS outage (real Synapse + real nats-server): the server is stopped (SIGTERM) and started again
 * on the same store while an ingest (in this process) publishes the events of 20 rooms to two worker processes. Publishes
 * wait the outage out (the journal keeps the events meanwhile), consumers and the lease resume. Checked: every
 * message handled, each room's messages first seen in timeline order, a second handling only flagged
 * `redelivered` (an ack or a delivery lost with the server), one reply per `ping`.
 * Knobs (env): HC_CLUSTER_MESSAGES (300).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { checkHandled, checkOneReplyEach, waitAllHandled, waitAllReplied, CLUSTER_MESSAGES, clusterServers, ingestWithWorkers, sendOverRooms } from '../helpers/cluster.ts';
import { newPeer, waitUntil } from './util.ts';

const servers = clusterServers();

const ROOMS = 20;
const PARTITIONS = 8;
/**
 * Every lease (the ingest's, the workers' keys) waits out a NATS outage shorter than a third of its TTL (README,
 * "One ingest per device"): this test keeps every lease through the outage. A longer one makes the ingest step
 * down and lead again (cluster-nats-outage.test.ts). NATS is down 1-2 s here on a loaded machine (stopped, then
 * started once the ingest holds events): 15 s leaves it 5 s.
 */
const LEASE_TTL_MS = 15_000;

test(`NATS restarted mid-stream (${CLUSTER_MESSAGES} messages, ${ROOMS} rooms): the bot resumes, nothing lost`, { timeout: 180_000 }, async (t) => {
  const t0 = Date.now();
  const { hs, nats } = servers;
  const { bot, lines } = await ingestWithWorkers(t, servers, { partitions: PARTITIONS, leaseTtlMs: LEASE_TTL_MS });

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

  await waitAllHandled(lines, sent, ['w0', 'w1'], PARTITIONS, bot, 90_000);
  await waitAllReplied(lines, sent, 30_000);
  assert.ok(handled() > before, 'handling went on after the restart');
  // A message the server had handed out when it stopped counts as delivered: it comes again flagged, to any worker.
  const { twice } = checkHandled(lines, sent, new Set(['w0', 'w1']));
  assert.deepEqual(lines.filter((l) => l.kind === 'error' || l.kind === 'sendFailed'), []);
  await checkOneReplyEach(hs.baseUrl, peer.user.accessToken, bot.user.userId, sent);
  assert.deepEqual(bot.errors, []);
  t.diagnostic(`wall time ${Date.now() - t0} ms; NATS down ${outageMs} ms; ${twice.size} handled twice (redelivered after the restart)`);
});
