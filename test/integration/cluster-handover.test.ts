/**
 * Cluster mode, partition ownership on a graceful change (real Synapse + real nats-server): each partition is
 * owned by one live worker, which hands it over when a worker joins (it gives up its surplus) or when it stops.
 * The ingest (in this process) sets an ack wait of 60 s, longer than the tests wait: an event the old owner did
 * not hand back cleanly would only come again after it, and the test would time out. Checked from the workers'
 * lines: every message handled exactly once, each room's messages in timeline order, the newcomer handling the
 * rooms of its share of the partitions (and the old owner none of them after the hand-over), the stopped worker's
 * partitions handled by the other. A stream made by an older version (consumers that let one event out at a
 * time) keeps working: the ingest updates its consumers. And a worker that loses its partition's lease (NATS gone)
 * hands nothing more of it out: what it held comes again from the stream, in order.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { AckPolicy, DeliverPolicy, jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { MAX_ACK_PENDING } from '../../src/cluster/nats.ts';
import { partitionOf } from '../../src/cluster/wire.ts';
import { type NatsServer, startNats } from '../harness/nats.ts';
import { testHomeserver, type Homeserver } from '../harness/synapse.ts';
import type { BotLine } from '../helpers/fault-stream.ts';
import { checkHandled, checkOneReplyEach, clusterName, type SentMessage, sendOverRooms, startClusterBot, waitAllReplied } from '../helpers/cluster.ts';
import { defer, deferred, newBot, newClient, newPeer, roomWithBot, tempDataDir, waitUntil } from './util.ts';

let hs: Homeserver;
let nats: NatsServer;
before(async () => {
  [hs, nats] = await Promise.all([testHomeserver(), startNats()]);
});
after(async () => {
  await Promise.all([hs?.stop(), nats?.stop()]);
});

const ROOMS = 12;
const MESSAGES = 144;
const PARTITIONS = 4;

/** An ingest in this process, its rooms with a peer, and the env of its worker processes. */
async function setUp(t: import('node:test').TestContext) {
  const name = clusterName();
  const bot = await newBot(t, hs, { encryption: false, cluster: { servers: nats.url, name, role: 'ingest', partitions: PARTITIONS, ackWaitMs: 60_000, leaseTtlMs: 3_000 } });
  await bot.client.run(bot.token);
  const peer = await newPeer(hs);
  const rooms = await Promise.all(Array.from({ length: ROOMS }, () => peer.createRoom({ invite: [bot.user.userId] })));
  await Promise.all(rooms.map((r) => peer.waitForJoined(r, bot.user.userId, 30_000)));
  const lines: BotLine[] = [];
  // Handlers take a moment, so a hand-over meets events in flight.
  const env = () => ({ HC_TOKEN: bot.token, HC_DIR: tempDataDir(t), HC_NATS: nats.url, HC_NAME: name, HC_HANDLER_MS: '20' });
  return { bot, peer, rooms, lines, env };
}

const handledBy = (lines: BotLine[], run: string) => lines.filter((l) => l.kind === 'message' && l.run === run);
const partitionsOf = (ls: BotLine[]) => new Set(ls.map((l) => partitionOf(l.roomId as string, PARTITIONS)));

/** Waits for every message and reply, then checks exactly once, in order per room, one reply per ping. */
async function checkAll(lines: BotLine[], sent: SentMessage[], runs: string[], peerToken: string, botUserId: string): Promise<void> {
  await waitUntil(() => {
    const seen = new Set(lines.filter((l) => l.kind === 'message').map((l) => l.eventId));
    return sent.every((s) => seen.has(s.eventId));
  }, 30_000, 'every message handled');
  await waitAllReplied(lines, sent, 30_000);
  const { twice } = checkHandled(lines, sent, new Set(runs));
  assert.equal(twice.size, 0, 'no message handled twice');
  assert.deepEqual(lines.filter((l) => l.kind === 'error' || l.kind === 'sendFailed' || l.kind === 'runFailed'), []);
  await checkOneReplyEach(hs.baseUrl, peerToken, botUserId, sent);
}

test(`a worker joining mid-stream takes its share of ${PARTITIONS} partitions: each of ${MESSAGES} messages once, in order per room`, { timeout: 120_000 }, async (t) => {
  const { bot, peer, rooms, lines, env } = await setUp(t);
  const w0 = startClusterBot(t, 'w0', env(), lines);
  await w0.waitFor((l) => l.kind === 'ready', 'w0 ready', 60_000);
  const sending = sendOverRooms(peer, rooms, MESSAGES, 4);
  await waitUntil(() => handledBy(lines, 'w0').length >= MESSAGES / 4, 60_000, 'a quarter handled by w0 alone');
  const w1 = startClusterBot(t, 'w1', env(), lines);
  await w1.waitFor((l) => l.kind === 'message', 'w1 to handle its first event', 60_000);
  const joinedAt = lines.find((l) => l.run === 'w1' && l.kind === 'message')!.t;
  const sent = await sending;
  await checkAll(lines, sent, ['w0', 'w1'], peer.user.accessToken, bot.user.userId);

  // Its share of the load (ownership.ts): some of the partitions, not all.
  const mine = partitionsOf(handledBy(lines, 'w1'));
  assert.ok(mine.size >= 1 && mine.size < PARTITIONS, `w1 handled the rooms of ${mine.size} partitions (${[...mine]})`);
  const w0After = handledBy(lines, 'w0').filter((l) => l.t > joinedAt && mine.has(partitionOf(l.roomId, PARTITIONS)));
  // w0 may finish what it held of a partition while w1 waits for it; nothing of w1's partitions after w1 began one.
  for (const p of mine) {
    const w1First = Math.min(...handledBy(lines, 'w1').filter((l) => partitionOf(l.roomId, PARTITIONS) === p).map((l) => l.t));
    assert.ok(w0After.every((l) => partitionOf(l.roomId, PARTITIONS) !== p || l.t <= w1First), `partition ${p} handled by w0 after w1 began it`);
  }
  t.diagnostic(`w0 ${handledBy(lines, 'w0').length}, w1 ${handledBy(lines, 'w1').length} messages; w1's partitions ${[...mine]}`);
});

test('a worker joining takes a share of the load, not of the partition count: the busy partitions are split, the idle ones do not count', { timeout: 120_000 }, async (t) => {
  const name = clusterName();
  const bot = await newBot(t, hs, { encryption: false, cluster: { servers: nats.url, name, role: 'ingest', partitions: PARTITIONS, ackWaitMs: 60_000, leaseTtlMs: 3_000 } });
  await bot.client.run(bot.token);
  const peer = await newPeer(hs);
  // Rooms of partitions 0 and 1 only (the bot is invited to no other). By count, a newcomer gets the first
  // worker's highest-numbered two partitions: idle ones.
  const busy: string[] = [];
  for (const p of [0, 0, 0, 1, 1, 1]) {
    let roomId: string;
    do roomId = await peer.createRoom();
    while (partitionOf(roomId, PARTITIONS) !== p);
    await peer.invite(roomId, bot.user.userId);
    await peer.waitForJoined(roomId, bot.user.userId, 30_000);
    busy.push(roomId);
  }
  const lines: BotLine[] = [];
  const env = () => ({ HC_TOKEN: bot.token, HC_DIR: tempDataDir(t), HC_NATS: nats.url, HC_NAME: name, HC_HANDLER_MS: '20' });
  const w0 = startClusterBot(t, 'w0', env(), lines);
  await w0.waitFor((l) => l.kind === 'ready', 'w0 ready', 60_000);
  // Enough events for the ingest's figures of the load to be gone by (LOAD_FLOOR), all handled by w0 alone.
  const first = await sendOverRooms(peer, busy, 120, 1_000);
  await waitUntil(() => handledBy(lines, 'w0').length >= first.length, 60_000, 'the first batch handled by w0');
  const w1 = startClusterBot(t, 'w1', env(), lines);
  await w1.waitFor((l) => l.kind === 'cluster' && l.msg === 'cluster: a partition starts pulling' && (l.partition === 0 || l.partition === 1), 'w1 to take a busy partition', 30_000);
  const joinedAt = Date.now();
  // Each room's second 8 after its first 20, in the order checked.
  const second = (await sendOverRooms(peer, busy, 48, 1_000)).map((m) => ({ ...m, index: m.index + 20 }));
  await checkAll(lines, [...first, ...second], ['w0', 'w1'], peer.user.accessToken, bot.user.userId);
  const after = (run: string) => partitionsOf(handledBy(lines, run).filter((l) => l.t > joinedAt));
  assert.equal(after('w1').size, 1, `w1 handles one busy partition (${[...after('w1')]})`);
  assert.deepEqual([...after('w0')].filter((p) => after('w1').has(p)), [], 'w0 none of it after the hand-over');
  assert.equal(after('w0').size, 1, `w0 keeps the other (${[...after('w0')]})`);
});

test(`a worker stopping mid-stream hands its partitions over: each of ${MESSAGES} messages once, in order per room`, { timeout: 120_000 }, async (t) => {
  const { bot, peer, rooms, lines, env } = await setUp(t);
  const workers = ['w0', 'w1'].map((run) => startClusterBot(t, run, env(), lines));
  await Promise.all(workers.map((w) => w.waitFor((l) => l.kind === 'ready', `${w.run} ready`, 60_000)));
  // Both own their share before the stream starts (each handles a room of its own).
  await waitUntil(async () => {
    await peer.sendText(rooms[lines.length % ROOMS]!, 'warm-up');
    return workers.every((w) => handledBy(lines, w.run).length > 0);
  }, 30_000, 'both workers handling');
  const sending = sendOverRooms(peer, rooms, MESSAGES, 4);
  const streamOf = (run: string) => handledBy(lines, run).filter((l) => /^(msg|ping) /.test(String(l.body)));
  await waitUntil(() => streamOf('w1').length >= 10, 60_000, 'w1 busy');
  // What w1 owns as it stops: the partitions of the stream's messages it handled.
  const w1Partitions = partitionsOf(streamOf('w1'));
  await workers[1]!.stop();
  const sent = await sending;
  await checkAll(lines, sent, ['w0', 'w1'], peer.user.accessToken, bot.user.userId);
  const stoppedAt = lines.find((l) => l.run === 'w1' && l.kind === 'stopped')!.t;
  const w0Took = partitionsOf(streamOf('w0').filter((l) => l.t > stoppedAt));
  assert.ok([...w1Partitions].some((p) => w0Took.has(p)), `w0 handled none of w1's partitions (${[...w1Partitions]}) after the stop`);
  t.diagnostic(`w0 ${handledBy(lines, 'w0').length}, w1 ${handledBy(lines, 'w1').length} messages; w1's partitions ${[...w1Partitions]}`);
});

test('a stream made by an older version (one event at a time per consumer) keeps working: the ingest updates its consumers', { timeout: 120_000 }, async (t) => {
  const name = clusterName();
  // What an older ingest made: the same stream, consumers that let one event out at a time.
  const nc = await connect({ servers: nats.url });
  defer(t, () => nc.close());
  const jsm = await jetstreamManager(nc);
  await jsm.streams.add({ name: `HALCYON_${name}`, subjects: [`halcyon.${name}.ev.*`], metadata: { partitions: String(PARTITIONS) } });
  for (let p = 0; p < PARTITIONS; p++) {
    await jsm.consumers.add(`HALCYON_${name}`, { durable_name: `p${p}`, filter_subject: `halcyon.${name}.ev.${p}`, ack_policy: AckPolicy.Explicit, deliver_policy: DeliverPolicy.All, max_ack_pending: 1, ack_wait: 30_000_000_000 });
  }
  const bot = await newBot(t, hs, { encryption: false, cluster: { servers: nats.url, name, role: 'ingest', partitions: 16 } });
  await bot.client.run(bot.token);
  for (let p = 0; p < PARTITIONS; p++) {
    const info = await jsm.consumers.info(`HALCYON_${name}`, `p${p}`);
    assert.equal(info.config.max_ack_pending, MAX_ACK_PENDING, `p${p} updated`);
    assert.equal(info.config.ack_wait, 30_000_000_000, `p${p} keeps its ack wait`);
  }
  const worker = newClient(t, tempDataDir(t), { encryption: false, cluster: { servers: nats.url, name } });
  const seen: string[] = [];
  worker.on('message', (m) => void seen.push(m.body));
  await worker.run(bot.token);
  const peer = await newPeer(hs);
  const roomId = await roomWithBot(peer, bot.user.userId);
  const bodies = Array.from({ length: 6 }, (_, i) => `old-stream #${i}`);
  for (const b of bodies) await peer.sendText(roomId, b);
  await waitUntil(() => seen.length >= bodies.length, 30_000, 'the messages handled by the worker');
  assert.deepEqual(seen, bodies, 'each once, in order (the stream keeps its 4 partitions)');
});

test('a worker that loses its partition (NATS gone past its lease) hands out nothing more of it: the rest comes again, redelivered, in order', { timeout: 120_000 }, async (t) => {
  const name = clusterName();
  const bot = await newBot(t, hs, { encryption: false, cluster: { servers: nats.url, name, role: 'ingest', partitions: 1, ackWaitMs: 5_000, leaseTtlMs: 2_000 } });
  await bot.client.run(bot.token);
  const warnings: string[] = [];
  const logger = { debug() {}, info() {}, error() {}, warn: (_o: unknown, msg?: string) => void warnings.push(msg ?? '') };
  const worker = newClient(t, tempDataDir(t), { encryption: false, logger, cluster: { servers: nats.url, name } });
  const seen: Array<{ body: string; redelivered: boolean }> = [];
  const first = deferred();
  worker.on('message', async (m) => {
    seen.push({ body: m.body, redelivered: m.redelivered });
    if (m.body === 'lost #0') await first.promise; // holds the room while NATS goes away
  });
  await worker.run(bot.token);
  const peer = await newPeer(hs);
  const roomId = await roomWithBot(peer, bot.user.userId);
  const bodies = Array.from({ length: 5 }, (_, i) => `lost #${i}`);
  for (const b of bodies) await peer.sendText(roomId, b);
  await waitUntil(() => seen.length === 1 && worker.health().then((h) => h.backlogEvents === bodies.length), 30_000, 'the worker holding all five, the first running');
  // Down (a clean shutdown: a crash may also lose the server's last consumer state) until the worker has stepped
  // down from the partition (its lease could not be renewed).
  await nats.restart(() => waitUntil(() => warnings.some((w) => /lost a partition/.test(w)), 30_000, 'the worker to lose its partition'), 'SIGTERM');
  first.resolve();
  await waitUntil(() => new Set(seen.map((s) => s.body)).size === bodies.length, 60_000, 'the rest handled');
  // The first event's handler ran through the loss: its ack can be lost with the connection, so it may come
  // again (flagged), as an event in flight at a crash does. The held ones were never started.
  const again = seen.filter((s, i) => seen.findIndex((x) => x.body === s.body) !== i);
  assert.ok(again.every((s) => s.body === 'lost #0' && s.redelivered), `handled twice: ${JSON.stringify(again)}`);
  const once = seen.filter((s, i) => seen.findIndex((x) => x.body === s.body) === i);
  assert.deepEqual(once.map((s) => s.body), bodies, 'in order');
  assert.ok(once.slice(1).every((s) => s.redelivered), 'the held events were dropped at the loss and came again from the stream');
});
