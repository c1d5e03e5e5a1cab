/**
 * Cluster mode, workers (real Synapse + real nats-server): an ingest (in this process) publishes 2,000 messages
 * over 50 rooms (the issue's figures) to three worker processes; one worker, whose handlers hang, is killed with SIGKILL mid-stream. Checked:
 * every message handled by a surviving worker, each room's messages first seen in timeline order across workers,
 * the killed worker's unacknowledged events redelivered to the others (`redelivered: true`) and nothing else
 * handled twice, and exactly one reply per `ping` (sends from workers are idempotent). Then a worker in this process
 * reads room state from the ingest's cache (`getRoom`, its latency reported).
 * Knobs (env): HC_CLUSTER_WORKERS_MESSAGES (2000), HC_CLUSTER_ROOMS (50).
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { MAX_ACK_PENDING } from '../../src/cluster/nats.ts';
import { type NatsServer, startNats } from '../harness/nats.ts';
import { testHomeserver, type Homeserver } from '../harness/synapse.ts';
import { type BotLine, clusterLogger, countBy } from '../helpers/fault-stream.ts';
import { checkHandled, checkOneReplyEach, explainTwice, waitAllHandled, waitAllReplied, clusterName, sendOverRooms, startClusterBot } from '../helpers/cluster.ts';
import { newBot, newClient, newPeer, tempDataDir } from './util.ts';

let hs: Homeserver;
let nats: NatsServer;
before(async () => {
  [hs, nats] = await Promise.all([testHomeserver(), startNats()]);
});
after(async () => {
  await Promise.all([hs?.stop(), nats?.stop()]);
});

const MESSAGES = Number(process.env.HC_CLUSTER_WORKERS_MESSAGES ?? 2000);
const ROOMS = Number(process.env.HC_CLUSTER_ROOMS ?? 50);
const PARTITIONS = 8;

test(`${MESSAGES} messages over ${ROOMS} rooms to three workers, one killed with SIGKILL mid-stream: each handled, in order per room, its events redelivered, one reply per ping`, { timeout: 300_000 }, async (t) => {
  const t0 = Date.now();
  const name = clusterName();
  const cluster = { servers: nats.url, name, role: 'ingest' as const, partitions: PARTITIONS, ackWaitMs: 2_000 };
  // The workers' lines and the ingest's `cluster:` log lines: the story a timeout prints (waitAllHandled).
  const lines: BotLine[] = [];
  const bot = await newBot(t, hs, { encryption: false, logger: clusterLogger('ingest', lines), cluster });
  await bot.client.run(bot.token);
  const peer = await newPeer(hs);
  const rooms = await Promise.all(Array.from({ length: ROOMS }, () => peer.createRoom({ invite: [bot.user.userId] })));
  await Promise.all(rooms.map((r) => peer.waitForJoined(r, bot.user.userId, 30_000)));

  const env = (dir: string, extra: Record<string, string> = {}) => ({ HC_TOKEN: bot.token, HC_DIR: dir, HC_NATS: nats.url, HC_NAME: name, ...extra });
  const victim = startClusterBot(t, 'w0', env(tempDataDir(t), { HC_HANDLER_MS: '600000' }), lines);
  const workers = [victim, startClusterBot(t, 'w1', env(tempDataDir(t)), lines), startClusterBot(t, 'w2', env(tempDataDir(t)), lines)];
  await Promise.all(workers.map((w) => w.waitFor((l) => l.kind === 'ready', `worker ${w.run} ready`, 60_000)));

  const sending = sendOverRooms(peer, rooms, MESSAGES, 5);
  // The victim holds what it pulled (its handlers hang): killed once it holds two events, while the peer sends.
  await victim.waitFor((l) => l.kind === 'message' && lines.filter((m) => m.run === 'w0' && m.kind === 'message').length >= 2, 'the victim to hold two events', 60_000);
  await victim.kill9();
  lines.push({ kind: 'cluster', run: 'test', msg: 'w0 killed', t: Date.now() });
  const held = new Set(lines.filter((l) => l.run === 'w0' && l.kind === 'message').map((l) => l.eventId as string));
  const sent = await sending;

  const survivors = new Set(['w1', 'w2']);
  await waitAllHandled(lines, sent, [...survivors], PARTITIONS, bot, 90_000);
  await waitAllReplied(lines, sent, 30_000);

  const { twice, firstRedelivered } = checkHandled(lines, sent, survivors);
  const extra = [...twice].filter((id) => !held.has(id));
  if (extra.length > 0) t.diagnostic(`handled twice though the killed worker never held them:\n${explainTwice(lines, sent, extra, PARTITIONS)}`);
  assert.deepEqual([...twice].sort(), [...held].filter((id) => sent.some((s) => s.eventId === id)).sort(), 'handled twice: exactly the events the killed worker held');
  // Beside those, only events the victim had pulled and not yet started (its handlers hang): at most what a
  // partition lets out at once, per partition.
  assert.ok(held.size + firstRedelivered.size <= PARTITIONS * MAX_ACK_PENDING, `${held.size} held + ${firstRedelivered.size} flagged at first handling > ${PARTITIONS} × ${MAX_ACK_PENDING}`);
  for (const id of held) assert.ok(lines.some((l) => l.kind === 'message' && l.eventId === id && survivors.has(l.run) && l.redelivered === true), `${id} redelivered to a survivor`);
  assert.deepEqual(lines.filter((l) => l.kind === 'error' || l.kind === 'sendFailed'), []);
  await checkOneReplyEach(hs.baseUrl, peer.user.accessToken, bot.user.userId, sent);
  assert.deepEqual(bot.errors, []);

  // Room state on a worker comes from the ingest's cache over request/reply: it answers, and how fast.
  const worker = newClient(t, tempDataDir(t), { encryption: false, cluster: { servers: nats.url, name } });
  await worker.run(bot.token);
  const ms: number[] = [];
  for (let i = 0; i < 100; i++) {
    const t1 = performance.now();
    const room = await worker.getRoom(rooms[i % rooms.length]!);
    ms.push(performance.now() - t1);
    assert.equal(room?.membership, 'join');
  }
  ms.sort((a, b) => a - b);
  t.diagnostic(`worker getRoom over NATS: p50 ${ms[50]!.toFixed(2)} ms, p99 ${ms[99]!.toFixed(2)} ms`);
  t.diagnostic(`wall time ${Date.now() - t0} ms; ${sent.length} messages, ${held.size} handled twice, ${firstRedelivered.size} more redelivered`);
  // What the workers' cluster code said, by message (partitions taken and handed over, waits, late progress
  // signals, events delivered again to the worker holding them): what came near a duplicate.
  const said = countBy(lines.filter((l) => l.kind === 'cluster' || l.kind === 'clusterDebug'), (l) => `${l.msg}`.replace(/^cluster: /, ''));
  t.diagnostic(`cluster lines: ${[...said].map(([m, n]) => `${n}× ${m}`).join('; ')}`);
});
