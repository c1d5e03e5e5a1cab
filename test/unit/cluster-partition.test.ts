/**
 * A worker's partitions (src/cluster/partition.ts, worker.ts) and slow handlers, on a real nats-server: the
 * consumer (PartitionConsumer) runs in this process with the test as its intake (each batch's handler settles when
 * the test says), and an ingest-side broker publishes. Checked: a handler that runs longer than the ack wait keeps
 * its event (no redelivery, handled once); a hand-over while such a handler runs does not give its event to the next
 * owner (handled once, the room's next event after it); a delivery of an event already acked (the server's
 * redelivery crossed the ack, after a late progress signal) is not handled again; a rebalance keeps a partition
 * that would go unclean (not pulling yet, or after a failed pull) until it may hand it over cleanly.
 */
import assert from 'node:assert/strict';
import { after, before, test, type TestContext } from 'node:test';
import { localPortPair } from '../../src/actors.ts';
import { Broker, type Delivery } from '../../src/cluster/nats.ts';
import { resolveCluster } from '../../src/cluster/options.ts';
import { OwnedPartition, type PartitionSink, type Prepared } from '../../src/cluster/partition.ts';
import { PartitionConsumer } from '../../src/cluster/worker.ts';
import { encodeEvent, partitionOf } from '../../src/cluster/wire.ts';
import type { Logger } from '../../src/log.ts';
import type { MainToSync, SyncConfig, SyncToMain } from '../../src/protocol.ts';
import { type NatsServer, startNats } from '../harness/nats.ts';
import { clusterName } from '../helpers/cluster.ts';
import { defer, waitUntil } from '../integration/util.ts';

let nats: NatsServer;
before(async () => {
  nats = await startNats();
});
after(async () => {
  await nats?.stop();
});

/** The cluster-workers test's: progress every 667 ms leaves a loaded machine 1.3 s of slack before a redelivery. */
const ACK_WAIT_MS = 2_000;
const LEASE_TTL_MS = 3_000;

/** A logger that keeps the cluster's lines (for waits and failure messages). */
function recorder(): Logger & { lines: string[] } {
  const lines: string[] = [];
  const rec = (level: string) => (obj: unknown, msg?: string) => void lines.push(`${level} ${msg ?? ''} ${JSON.stringify(obj)}`);
  return { lines, debug() {}, info: rec('info'), warn: rec('warn'), error: rec('error') };
}

/** A room of partition `p` (of `partitions`). */
function roomIn(p: number, partitions: number, tag: string): string {
  for (let i = 0; ; i++) {
    const roomId = `!${tag}${i}:test`;
    if (partitionOf(roomId, partitions) === p) return roomId;
  }
}

/** The bot's stream and consumers (as its ingest makes them), and a publisher of text messages. */
async function ingest(t: TestContext, partitions: number) {
  const cfg = resolveCluster({ servers: nats.url, name: clusterName(), role: 'ingest', partitions, ackWaitMs: ACK_WAIT_MS, leaseTtlMs: LEASE_TTL_MS });
  const broker = await Broker.connect(cfg, recorder(), 'ingest');
  defer(t, () => broker.close());
  await broker.ensureTopology();
  await broker.leaseStore(LEASE_TTL_MS);
  let n = 0;
  return {
    cfg,
    broker,
    /** Publishes a message in `roomId`; resolves with its event ID once the stream has it. */
    async send(roomId: string, body: string): Promise<string> {
      const eventId = `$e${++n}-${body}`;
      const event = { type: 'm.room.message', event_id: eventId, sender: '@peer:test', room_id: roomId, origin_server_ts: Date.now(), content: { msgtype: 'm.text', body } };
      await broker.publish(partitionOf(roomId, partitions), eventId, encodeEvent({ roomId, flags: 0, summary: null, redelivered: false }, JSON.stringify(event)));
      return eventId;
    },
  };
}

/** One handling of an event by a worker: when it started and ended. */
interface Handling {
  worker: string;
  eventId: string;
  redelivered: boolean;
  start: number;
  end?: number;
}

/**
 * A worker's consumer in this process, the test as its intake: each event's handler is `handle(eventId)`; the
 * batch is acknowledged when it settles. Every handling goes to `log`.
 */
async function startWorker(t: TestContext, name: string, cfg: ReturnType<typeof resolveCluster>, log: Handling[], handle: (eventId: string) => Promise<void>) {
  const logger = recorder();
  const broker = await Broker.connect({ ...cfg, role: 'worker' }, logger, 'worker');
  const store = await broker.leaseStore(null);
  const [main, side] = localPortPair<SyncToMain, MainToSync>();
  const consumer = new PartitionConsumer(broker, store, cfg.partitions, side, logger, await broker.ackWaitMs());
  main.onMessage((msg) => {
    if (msg.kind !== 'batch') return;
    const { batch } = msg;
    const join = (JSON.parse(Buffer.from(batch.body).toString('utf8')) as { rooms?: { join?: Record<string, { timeline: { events: Array<{ event_id: string }> } }> } }).rooms?.join ?? {};
    const ids = Object.values(join).flatMap((r) => r.timeline.events.map((e) => e.event_id));
    void (async () => {
      for (const eventId of ids) {
        const h: Handling = { worker: name, eventId, redelivered: batch.redelivered, start: Date.now() };
        log.push(h);
        await handle(eventId);
        h.end = Date.now();
      }
      main.post({ kind: 'acks', progress: [], complete: [batch.seq] });
    })();
  });
  await consumer.start({ seqFloor: 0, userId: '@bot:test' } as SyncConfig);
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    await consumer.stop(0);
    await broker.close();
  };
  defer(t, stop);
  /** Whether this worker pulls partition `p` (it owns it and has started). */
  const pulling = (p: number) => logger.lines.some((l) => l.includes('a partition starts pulling') && l.includes(`"partition":${p},`));
  return { logger, broker, consumer, pulling, stop };
}

/** A sink whose handlers record each event's stream sequence in `handled` and settle by `settle` (at once by default). */
function handlingSink(handled: number[], logger: Logger, settle: (ack: () => void) => void = (ack) => void setImmediate(ack)): PartitionSink {
  return {
    logger,
    ackWaitMs: 30_000,
    prepare: (d): Prepared => ({ roomId: '!r:test', eventId: `$${d.seq}` }),
    post: (_p, _r, seq, part) => {
      handled.push(seq);
      settle(() => part.acked(seq));
    },
  };
}

const slow = () => new Promise<void>((r) => setTimeout(r, 3 * ACK_WAIT_MS));
const handledOf = (log: Handling[], id: string) => log.filter((h) => h.eventId === id);

test('a handler that runs three times the ack wait keeps its event: handled once, never delivered again', { timeout: 60_000 }, async (t) => {
  const { cfg, broker, send } = await ingest(t, 1);
  const log: Handling[] = [];
  const room = roomIn(0, 1, 'a');
  const w = await startWorker(t, 'w1', cfg, log, (id) => (id.endsWith('-slow') ? slow() : Promise.resolve()));
  await waitUntil(() => w.pulling(0), 10_000, 'the worker to pull partition 0');
  const first = await send(room, 'slow');
  const second = await send(room, 'next');
  await waitUntil(() => handledOf(log, second).length > 0, 20_000, 'the next event handled');
  await waitUntil(async () => (await broker.pending(0)).ackPending === 0, 10_000, 'both acked');
  assert.deepEqual(handledOf(log, first).map((h) => h.redelivered), [false], 'the slow event handled once');
  assert.deepEqual(handledOf(log, second).map((h) => h.redelivered), [false]);
  assert.ok(handledOf(log, second)[0]!.start >= handledOf(log, first)[0]!.end!, 'the room in order');
  assert.equal((await broker.pending(0)).delivered, 2, 'two deliveries: none of them again');
});

test('a hand-over while a handler runs longer than the ack wait: its event stays with the worker running it, the room goes on in order at the next owner', { timeout: 90_000 }, async (t) => {
  const { cfg, send } = await ingest(t, 2);
  const log: Handling[] = [];
  const room = roomIn(1, 2, 'b');
  const handle = (id: string) => (id.endsWith('-slow') ? slow() : Promise.resolve());
  const a = await startWorker(t, 'a', cfg, log, handle);
  await waitUntil(() => a.pulling(0) && a.pulling(1), 10_000, 'worker a to pull both partitions');
  const first = await send(room, 'slow');
  await waitUntil(() => handledOf(log, first).length > 0, 10_000, 'the slow event started on a');
  const second = await send(room, 'next');
  // b joins: a keeps partition 0 and hands partition 1 (the slow event's) over.
  const b = await startWorker(t, 'b', cfg, log, handle);
  await waitUntil(() => b.pulling(1), 30_000, 'worker b to pull partition 1');
  const third = await send(room, 'after');
  await waitUntil(() => [second, third].every((id) => log.some((h) => h.eventId === id && h.end !== undefined)), 30_000, 'the room\'s next events handled');
  const msg = `handlings: ${JSON.stringify(log)}\na: ${a.logger.lines.join('\n')}\nb: ${b.logger.lines.join('\n')}`;
  assert.deepEqual(handledOf(log, first).map((h) => h.worker), ['a'], `the slow event handled once, by a\n${msg}`);
  assert.equal(handledOf(log, second).length, 1, msg);
  assert.equal(handledOf(log, third).length, 1, msg);
  assert.ok(handledOf(log, second)[0]!.start >= handledOf(log, first)[0]!.end!, `the room in order\n${msg}`);
  assert.ok(handledOf(log, third)[0]!.start >= handledOf(log, second)[0]!.end!, `the room in order\n${msg}`);
});

/** A delivery made by hand (the fake broker's), with what the partition did to it. */
function delivery(seq: number, dseq: number, deliveries: number, done: string[]): Delivery {
  return {
    data: new Uint8Array(),
    redelivered: deliveries > 1,
    seq,
    dseq,
    deliveries,
    ack: () => void done.push(`ack ${seq}/${dseq}`),
    nak: async () => void done.push(`nak ${seq}/${dseq}`),
    working: () => {},
  };
}

/**
 * A partition's consumer as the server keeps it, for {@link OwnedPartition} without NATS: `total` events of one
 * room; each pull, once `gate` lets its creation answer, has its deliveries sent (counted as delivered) whether or
 * not the worker then reads them — as a real pull stopped right after it was made.
 */
function fakeConsumer(total: number) {
  let delivered = 0;
  let next = 1;
  const pending = new Set<number>();
  const gates: Array<() => void> = [];
  const broker = {
    async pending() {
      return { ackPending: pending.size, waiting: 0, delivered };
    },
    async pull(_p: number, max: number) {
      await new Promise<void>((open) => gates.push(open));
      const batch: Delivery[] = [];
      const room = max - pending.size;
      while (batch.length < room && next <= total) {
        const seq = next++;
        pending.add(seq);
        batch.push({ data: new Uint8Array(), redelivered: false, seq, dseq: ++delivered, deliveries: 1, ack: () => void pending.delete(seq), nak: async () => void pending.delete(seq), working() {} });
      }
      let stopped = false;
      return {
        messages: (async function* () {
          for (const d of batch) if (!stopped) yield d;
        })(),
        stop: () => void (stopped = true),
      };
    },
  };
  /** Lets the pull being made answer; resolves once one is being made. */
  const open = async () => {
    await waitUntil(() => gates.length > 0, 5_000, 'a pull being made');
    gates.shift()!();
  };
  return { broker: broker as unknown as Broker, open, pulls: () => gates.length, pending: () => pending.size };
}

test('a hand-over for a rebalance while a pull is being made is clean: the pull runs to its end first (stopped at once, its deliveries were lost on the wire and the next owner waited out the key and the ack wait)', async () => {
  const consumer = fakeConsumer(100);
  const handled: number[] = [];
  const logger = recorder();
  const sink = handlingSink(handled, logger);
  const part = new OwnedPartition(0, consumer.broker, sink, 'released', Date.now());
  await consumer.open(); // the first pull: 32 events, handled one after the other
  await waitUntil(() => handled.length === 32 && consumer.pending() === 0 && consumer.pulls() === 1, 5_000, 'the first pull handled and the next being made');
  const how = part.handOver(1_000, true);
  await consumer.open(); // the server answers the pull being made: 32 more sent
  assert.equal(await how, 'clean', logger.lines.join('; '));
  assert.deepEqual(handled, Array.from({ length: handled.length }, (_, i) => i + 1), 'in order');
  assert.equal(consumer.pending(), 0, 'what the last pull brought was handled or given back');
});

test('an event delivered again after its handlers settled and it was acked (the redelivery crossed the ack) is acked again, not handled again', async () => {
  // A fake broker: one pull whose deliveries the test pushes (the race cannot be timed on a real server).
  const queue: Delivery[] = [];
  let wake: (() => void) | null = null;
  let stopped = false;
  const push = (d: Delivery) => {
    queue.push(d);
    wake?.();
  };
  const broker = {
    pending: async () => ({ ackPending: 0, waiting: 0, delivered: 0 }),
    pull: async () => ({
      messages: (async function* () {
        while (!stopped) {
          const d = queue.shift();
          if (d) yield d;
          else await new Promise<void>((r) => (wake = r));
        }
      })(),
      stop: () => {
        stopped = true;
        wake?.();
      },
    }),
  };
  const posted: number[] = [];
  const sink: PartitionSink = {
    logger: recorder(),
    ackWaitMs: ACK_WAIT_MS,
    prepare: (): Prepared => ({ roomId: '!r:test', eventId: '' }),
    post: (_p, _r, seq) => void posted.push(seq),
  };
  const done: string[] = [];
  const part = new OwnedPartition(0, broker as unknown as Broker, sink, 'released', Date.now());
  push(delivery(7, 1, 1, done));
  await waitUntil(() => posted.length === 1, 5_000, 'the event posted');
  part.acked(7);
  push(delivery(7, 2, 2, done)); // the server's redelivery, sent before it had the ack
  push(delivery(8, 3, 1, done));
  await waitUntil(() => posted.length >= 2, 5_000, 'the next event posted');
  assert.deepEqual(posted, [7, 8], 'the redelivered event is not handled again');
  assert.deepEqual(done, ['ack 7/1', 'ack 7/2']);
  await part.handOver(0, false);
});

test("a rebalance's hand-over ends as soon as the server has nothing more for the last pull, not at the pull's expiry", { timeout: 10_000 }, async (t) => {
  // A pull that, like a real one, brings what the partition has (three events) and then waits for more until its
  // expiry; here until it is stopped. The server says nothing is left to deliver and everything was delivered.
  let delivered = 0;
  let stopped = false;
  let wake: (() => void) | null = null;
  const broker = {
    pending: async () => ({ ackPending: 0, waiting: 1, delivered, undelivered: 0 }),
    pull: async () => {
      const batch: Delivery[] = [1, 2, 3].map((seq) => ({ data: new Uint8Array(), redelivered: false, seq, dseq: ++delivered, deliveries: 1, ack() {}, nak: async () => {}, working() {} }));
      return {
        messages: (async function* () {
          for (const d of batch) yield d;
          while (!stopped) await new Promise<void>((r) => (wake = r));
        })(),
        stop: () => {
          stopped = true;
          wake?.();
        },
      };
    },
  };
  const handled: number[] = [];
  const sink = handlingSink(handled, recorder());
  const part = new OwnedPartition(0, broker as unknown as Broker, sink, 'released', Date.now());
  await waitUntil(() => handled.length === 3, 5_000, 'the three events handled');
  // The pull's expiry never comes (timers are frozen from here): the hand-over must not wait for it.
  t.mock.timers.enable({ apis: ['setTimeout'] });
  assert.equal(await part.handOver(1_000, true), 'clean');
  assert.ok(stopped, 'the last pull was stopped, not left to expire');
});

test("a rebalance's hand-over that is no longer wanted once the last pull is over (the load moved meanwhile) is called off: the partition is kept and pulled on", { timeout: 10_000 }, async () => {
  // Each pull brings three new events, then waits for more until it ends (its expiry, here `expire`).
  let delivered = 0;
  let pulls = 0;
  let expire = () => {};
  const naked: number[] = [];
  const broker = {
    pending: async () => ({ ackPending: 0, waiting: 1, delivered, undelivered: 0 }),
    pull: async () => {
      const first = 3 * pulls++ + 1;
      const batch: Delivery[] = [first, first + 1, first + 2].map((seq) => ({ data: new Uint8Array(), redelivered: false, seq, dseq: ++delivered, deliveries: 1, ack() {}, nak: async () => void naked.push(seq), working() {} }));
      let ended = false;
      let wake = () => {};
      const end = () => {
        ended = true;
        wake();
      };
      expire = end;
      return {
        messages: (async function* () {
          for (const d of batch) yield d;
          while (!ended) await new Promise<void>((r) => (wake = r));
        })(),
        stop: end,
      };
    },
  };
  const handled: number[] = [];
  const logger = recorder();
  const sink = handlingSink(handled, logger);
  const part = new OwnedPartition(0, broker as unknown as Broker, sink, 'released', Date.now());
  await waitUntil(() => handled.length === 3, 5_000, 'the first pull handled');
  let asked = 0;
  assert.equal(await part.handOver(1_000, true, () => (asked++, false)), 'kept', logger.lines.join('; '));
  assert.equal(asked, 1, 'asked once the last pull was over');
  expire(); // the pull under way ends by itself: the next is made, as if no hand-over had begun
  await waitUntil(() => handled.length === 6, 5_000, "the next pull's events handled");
  assert.deepEqual(handled, [1, 2, 3, 4, 5, 6]);
  assert.deepEqual(naked, [], 'nothing given back');
  assert.equal(await part.handOver(1_000, true, () => true), 'clean', 'a later hand-over still wanted goes ahead');
});

test("a rebalance's hand-over of a partition with a backlog ends at once: a pull asks only for what the server can send now, so it ends by itself", { timeout: 15_000 }, async () => {
  // A server with a backlog of 64 events of one room, at most MAX_ACK_PENDING (32) out at a time, as nats-server:
  // a pull gets what it asked for as slots free up, until it is stopped (its expiry does not come in this test).
  // (A partition of the bench: 60 events of three rooms.)
  const total = 64;
  let next = 1;
  let dseq = 0;
  const out = new Set<number>();
  const naked: number[] = [];
  let wake = () => {};
  const broker = {
    pending: async () => ({ ackPending: out.size, waiting: 0, delivered: dseq, undelivered: total - next + 1 }),
    pull: async (_p: number, max: number) => {
      let stopped = false;
      return {
        messages: (async function* () {
          for (let got = 0; got < max && !stopped; ) {
            if (out.size >= 32 || next > total) {
              await new Promise<void>((r) => (wake = r));
              continue;
            }
            const seq = next++;
            out.add(seq);
            got++;
            yield { data: new Uint8Array(), redelivered: false, seq, dseq: ++dseq, deliveries: 1, ack: () => void (out.delete(seq), wake()), nak: async () => void naked.push(seq), working() {} } satisfies Delivery;
          }
        })(),
        stop: () => {
          stopped = true;
          wake();
        },
      };
    },
  };
  const handled: number[] = [];
  const logger = recorder();
  const sink = handlingSink(handled, logger, (ack) => void setTimeout(ack, 5)); // handlers of 5 ms, as the bench's
  const part = new OwnedPartition(0, broker as unknown as Broker, sink, 'released', Date.now());
  await waitUntil(() => handled.length >= 8, 5_000, 'the backlog being handled, the second pull under way');
  const before = handled.length;
  assert.equal(await part.handOver(1_000, true), 'clean', logger.lines.join('; '));
  // Before, the second pull (32 asked, 32 slots taken) filled as events were acked: the hand-over waited for the
  // backlog to be delivered, 24 more events handled here, a room held up while the next owner idled.
  assert.ok(handled.length - before <= 2, `${handled.length - before} events handled during the hand-over`);
  assert.deepEqual(handled, Array.from({ length: handled.length }, (_, i) => i + 1), 'in order, once each');
  assert.deepEqual(naked, Array.from({ length: naked.length }, (_, i) => handled.length + 1 + i), 'the rest given back, in order');
  assert.equal(handled.length + naked.length, dseq, 'every delivery handled or given back');
});

/**
 * A partition's consumer with `lost` events out that no live worker holds: a dead owner's, or, with `failFirst`,
 * those the server sent to this worker's first pull, which then failed (NATS went away). The next pull brings them
 * again (their ack wait expired); later ones have nothing to bring and wait, as a real pull does, until stopped.
 */
function lostEventsBroker(lost: number, failFirst: boolean) {
  let out = failFirst ? 0 : lost;
  let delivered = out;
  let pulls = 0;
  const broker = {
    pending: async () => ({ ackPending: out, waiting: 0, delivered, undelivered: 0 }),
    pull: async () => {
      pulls++;
      if (failFirst && pulls === 1) {
        out = delivered = lost;
        return { messages: (async function* () { throw new Error('server shutdown'); })(), stop() {} };
      }
      const again = pulls === (failFirst ? 2 : 1);
      const batch: Delivery[] = Array.from({ length: again ? lost : 0 }, (_, i) => ({ data: new Uint8Array(), redelivered: true, seq: i + 1, dseq: lost + i + 1, deliveries: 2, ack: () => void out--, nak: async () => {}, working() {} }));
      delivered += batch.length;
      let stop = () => {};
      const stopped = new Promise<void>((r) => (stop = r));
      return {
        messages: (async function* () {
          yield* batch;
          if (batch.length === 0) await stopped;
        })(),
        stop: () => stop(),
      };
    },
  };
  return { broker: broker as unknown as Broker, pulls: () => pulls };
}

test("a rebalance keeps a partition still waiting out a dead owner's pulls (given up then, it went unclean: the key was left to expire and the next owner waited again, over and over); a stop gives it up", { timeout: 15_000 }, async () => {
  const consumer = lostEventsBroker(6, false);
  const handled: number[] = [];
  const logger = recorder();
  const sink = { ...handlingSink(handled, logger), ackWaitMs: 1_000 };
  const part = new OwnedPartition(0, consumer.broker, sink, 'absent', Date.now());
  await waitUntil(() => logger.lines.some((l) => l.includes('from a worker that is gone')), 5_000, 'waiting out the dead owner');
  assert.equal(await part.handOver(1_000, true), 'kept', 'a rebalance waits for a clean hand-over');
  assert.equal(consumer.pulls(), 0, 'still waiting');
  await waitUntil(() => handled.length === 6, 10_000, "the dead owner's events handled once its pulls expired");
  assert.deepEqual(handled, [1, 2, 3, 4, 5, 6]);
  assert.equal(await part.handOver(1_000, true), 'clean', 'now pulling: a clean hand-over');

  const stopped = new OwnedPartition(1, lostEventsBroker(6, false).broker, sink, 'absent', Date.now());
  await waitUntil(() => logger.lines.filter((l) => l.includes('from a worker that is gone')).length === 2, 5_000, 'the second waiting');
  assert.equal(await stopped.handOver(0, false), 'unclean', 'a stop gives it up; its key is left to expire');
});

test('a rebalance keeps a partition whose last pull failed until it has waited out what may have been lost (given up then, it went unclean: seen after a NATS restart, its events then waited for the key to expire)', { timeout: 15_000 }, async () => {
  const consumer = lostEventsBroker(2, true);
  const handled: number[] = [];
  const logger = recorder();
  const sink = { ...handlingSink(handled, logger), ackWaitMs: 1_000 };
  const part = new OwnedPartition(0, consumer.broker, sink, 'released', Date.now());
  await waitUntil(() => logger.lines.some((l) => l.includes('pulling a partition failed')), 5_000, 'the failed pull');
  assert.equal(await part.handOver(1_000, true), 'kept', 'a rebalance waits for a clean hand-over');
  await waitUntil(() => handled.length === 2, 10_000, 'the lost deliveries handled once their ack wait expired');
  assert.deepEqual(handled, [1, 2]);
  assert.equal(await part.handOver(1_000, true), 'clean', 'pulling again: a clean hand-over');
});
