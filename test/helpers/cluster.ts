/**
 * Helpers of the cluster tests (test/integration/cluster-*.test.ts): the processes of a clustered bot
 * (test/fixtures/cluster-bot.ts, through the fault-bot spawner), a peer's messages over many rooms, and the checks
 * every cluster test makes of what the workers handled: each message handled at least once, a room's messages
 * first seen in timeline order, duplicates only as redeliveries, one reply per `ping`.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { after, before, type TestContext } from 'node:test';
import { partitionOf } from '../../src/cluster/wire.ts';
import { type NatsServer, startNats } from '../harness/nats.ts';
import type { Peer } from '../harness/peer.ts';
import { type Homeserver, testHomeserver } from '../harness/synapse.ts';
import { type Bot, defer, newBot, tempDataDir, waitUntil } from '../integration/util.ts';
import { type BotLine, type BotProcess, clusterLogger, describeCluster, repliesInRoom, startFaultBot } from './fault-stream.ts';

const SCRIPT = join(import.meta.dirname, '..', 'fixtures', 'cluster-bot.ts');

/** Messages per cluster test (small for the suite's time; raise it with HC_CLUSTER_MESSAGES). */
export const CLUSTER_MESSAGES = Number(process.env.HC_CLUSTER_MESSAGES ?? 300);

/** A fresh cluster name (streams, subjects and keys are namespaced by it: tests share one NATS). */
export function clusterName(): string {
  return `t${randomBytes(4).toString('hex')}`;
}

/** Starts one process of the bot (killed at the end of the test if still running); its lines go to `sink`. */
export function startClusterBot(t: TestContext, run: string, env: Record<string, string>, sink: BotLine[]): BotProcess {
  const b = startFaultBot(run, env, sink, SCRIPT);
  defer(t, () => b.kill9());
  return b;
}

/** A Synapse and a nats-server for a test file: started before its tests, stopped after them (read inside a test). */
export function clusterServers(): { hs: Homeserver; nats: NatsServer } {
  const servers = {} as { hs: Homeserver; nats: NatsServer };
  before(async () => {
    [servers.hs, servers.nats] = await Promise.all([testHomeserver(), startNats()]);
  });
  after(async () => {
    await Promise.all([servers.hs?.stop(), servers.nats?.stop()]);
  });
  return servers;
}

/**
 * A bot without encryption on a fresh account, on a fresh cluster: its ingest running in this process, and two
 * worker processes (runs w0, w1) ready. `lines` gets the workers' lines and the ingest's `cluster:` log lines (run
 * `ingest`).
 */
export async function ingestWithWorkers(
  t: TestContext,
  { hs, nats }: { hs: Homeserver; nats: NatsServer },
  cluster: { partitions: number; leaseTtlMs: number },
): Promise<{ bot: Bot; workers: BotProcess[]; lines: BotLine[] }> {
  const lines: BotLine[] = [];
  const name = clusterName();
  const bot = await newBot(t, hs, { encryption: false, logger: clusterLogger('ingest', lines), cluster: { servers: nats.url, name, role: 'ingest', ackWaitMs: 2_000, ...cluster } });
  await bot.client.run(bot.token);
  const workers = ['w0', 'w1'].map((run) => startClusterBot(t, run, { HC_TOKEN: bot.token, HC_DIR: tempDataDir(t), HC_NATS: nats.url, HC_NAME: name }, lines));
  await Promise.all(workers.map((w) => w.waitFor((l) => l.kind === 'ready', `worker ${w.run} ready`, 60_000)));
  return { bot, workers, lines };
}

/** A message the peer sent: its room, its place in the room, its body and event ID. */
export interface SentMessage {
  roomId: string;
  index: number;
  body: string;
  eventId: string;
}

/**
 * Sends `total` messages spread round-robin over `rooms`: one room's messages one after the other (their timeline
 * order is their index), the rooms side by side. Every `pingEvery`-th message of a room is a `ping` the workers
 * answer. `onSent` is called after each.
 */
export async function sendOverRooms(peer: Peer, rooms: string[], total: number, pingEvery: number, onSent?: (n: number) => void): Promise<SentMessage[]> {
  const sent: SentMessage[] = [];
  await Promise.all(
    rooms.map(async (roomId, r) => {
      for (let index = 0; r + index * rooms.length < total; index++) {
        const body = `${index % pingEvery === pingEvery - 1 ? 'ping' : 'msg'} r${r} #${index}`;
        sent.push({ roomId, index, body, eventId: await peer.sendText(roomId, body) });
        onSent?.(sent.length);
      }
    }),
  );
  return sent;
}

/**
 * The checks of a run: every sent message handled by one of the `survivors` (the processes not killed), each
 * room's messages first seen in timeline order across all workers, a second sighting of a message only flagged
 * `redelivered`. Returns the messages seen twice, and those flagged `redelivered` at their first handling.
 */
export function checkHandled(lines: BotLine[], sent: SentMessage[], survivors: Set<string>): { twice: Set<string>; firstRedelivered: Set<string> } {
  const msgs = lines.filter((l) => l.kind === 'message');
  const byId = new Map(sent.map((s) => [s.eventId, s]));
  const handledBySurvivor = new Set(msgs.filter((l) => survivors.has(l.run)).map((l) => l.eventId as string));
  const missing = sent.filter((s) => !handledBySurvivor.has(s.eventId));
  assert.equal(missing.length, 0, `messages never handled: ${missing.slice(0, 10).map((s) => s.body).join(', ')}`);
  // Lines in the order they happened (processes on one machine share the clock; the index breaks a tie of one ms).
  const ordered = [...msgs].sort((a, b) => a.t - b.t || (byId.get(a.eventId)?.index ?? 0) - (byId.get(b.eventId)?.index ?? 0));
  const seen = new Set<string>();
  const twice = new Set<string>();
  const firstRedelivered = new Set<string>();
  const nextIndex = new Map<string, number>();
  for (const l of ordered) {
    const s = byId.get(l.eventId);
    if (!s) continue; // not one of the peer's numbered messages
    if (seen.has(l.eventId)) {
      assert.equal(l.redelivered, true, `${s.body} handled again by ${l.run} without redelivered: true`);
      twice.add(l.eventId);
      continue;
    }
    seen.add(l.eventId);
    // Flagged at its first handling: handed to a worker that died before its handler started, or put in the
    // stream again by an ingest restart; the caller bounds how many.
    if (l.redelivered) firstRedelivered.add(l.eventId);
    const expected = nextIndex.get(s.roomId) ?? 0;
    assert.equal(s.index, expected, `room r${s.body.split(' ')[1]}: ${s.body} seen before message #${expected} (per-room order broken)`);
    nextIndex.set(s.roomId, expected + 1);
  }
  return { twice, firstRedelivered };
}

/** What {@link waitAllHandled} says of the ingest (in the test's process) when it times out. */
interface IngestBot {
  client: { health(): Promise<unknown> };
  errors: { code: string; message: string }[];
}

/**
 * Resolves once every message of `sent` was handled by one of the `workers` (runs); on a timeout, rejects with the
 * cluster's story (describeCluster): the messages missing by partition, the ingest's health and errors.
 */
export async function waitAllHandled(lines: BotLine[], sent: SentMessage[], workers: string[], partitions: number, ingest: IngestBot, timeoutMs: number): Promise<void> {
  const seen = () => new Set(lines.filter((l) => l.kind === 'message' && workers.includes(l.run)).map((l) => l.eventId));
  await waitUntil(() => {
    const s = seen();
    return sent.every((m) => s.has(m.eventId));
  }, timeoutMs, 'every message handled').catch(async (err: Error) => {
    const s = seen();
    const missing = sent.filter((m) => !s.has(m.eventId)).map((m) => ({ body: m.body, partition: partitionOf(m.roomId, partitions) }));
    const health = await ingest.client.health().catch((e: Error) => e.message);
    throw new Error(`${err.message}\n${describeCluster(lines, missing, { ingestHealth: health, ingestErrors: ingest.errors.map((e) => `${e.code}: ${e.message}`) })}`);
  });
}

/** Resolves once every `ping` of `sent` has a `replied` line (a redelivered ping's second reply line does not count twice). */
export async function waitAllReplied(lines: BotLine[], sent: SentMessage[], timeoutMs: number): Promise<void> {
  const pings = sent.filter((s) => s.body.startsWith('ping'));
  await waitUntil(() => {
    const replied = new Set(lines.filter((l) => l.kind === 'replied').map((l) => l.eventId as string));
    return pings.every((p) => replied.has(p.eventId));
  }, timeoutMs, 'every ping answered');
}

/** Checks that every `ping` has exactly one reply of the bot in its room (idempotent sends). */
export async function checkOneReplyEach(baseUrl: string, accessToken: string, botUserId: string, sent: SentMessage[]): Promise<void> {
  const rooms = [...new Set(sent.map((s) => s.roomId))];
  const replies = (await Promise.all(rooms.map((r) => repliesInRoom(baseUrl, accessToken, r, botUserId)))).flat();
  for (const s of sent.filter((m) => m.body.startsWith('ping'))) {
    const mine = replies.filter((r) => r.inReplyTo === s.eventId);
    assert.equal(mine.length, 1, `${s.body}: ${mine.length} replies (want exactly one)`);
    assert.equal(mine[0]!.body, `re: ${s.body}`);
  }
}

/**
 * What a test prints about events handled twice (`ids`): for each, every handling (which process, when, flagged
 * `redelivered` or not), its deliveries as the workers' debug lines tell them (stream and delivery sequence,
 * delivery count, acked, given back, delivered again), and what happened to its partition meanwhile (owners taken,
 * handed over, lost; waits; late progress signals; NATS lost), 30 s either side. Times are ms from the first line.
 */
export function explainTwice(lines: BotLine[], sent: SentMessage[], ids: Iterable<string>, partitions: number): string {
  const t0 = lines[0]?.t ?? 0;
  const show = ({ kind, t, run, ...rest }: BotLine) => `    +${t - t0} ms ${run} ${kind} ${JSON.stringify(rest)}`;
  const out: string[] = [];
  for (const id of ids) {
    const s = sent.find((m) => m.eventId === id);
    const p = s ? partitionOf(s.roomId, partitions) : -1;
    const seqs = new Set(lines.filter((l) => l.kind === 'clusterDebug' && l.eventId === id).map((l) => l.seq as number));
    const own = lines.filter((l) => l.eventId === id || (l.kind === 'clusterDebug' && l.partition === p && (seqs.has(l.seq) || (l.seqs as number[] | undefined)?.some((q) => seqs.has(q)))));
    const from = Math.min(...own.map((l) => l.t)) - 30_000;
    const to = Math.max(...own.map((l) => l.t)) + 30_000;
    const around = lines.filter((l) => l.kind === 'cluster' && l.t >= from && l.t <= to && (l.partition === undefined || l.partition === p));
    out.push(`  ${s?.body ?? id} (${id}), partition ${p}, stream seq ${[...seqs].join(', ')}:`);
    out.push(...[...new Set([...own, ...around])].sort((a, b) => a.t - b.t).map(show));
  }
  return out.join('\n');
}
