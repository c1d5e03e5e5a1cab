/**
 * One partition a worker owns (ownership.ts decides which): it pulls the partition's events, up to
 * MAX_ACK_PENDING at a time, and hands them to the client's intake one room event at a time per room — a room's
 * next event goes out when the one before it is acknowledged (its handlers settled), so events of other rooms
 * run meanwhile and nothing of a room is ever queued where it could not be taken back. Each event is acked when
 * its handlers settle; the worker's heartbeat keeps everything it holds from expiring. A pull asks only for what
 * the server may send now (the free part of MAX_ACK_PENDING, once {@link MIN_PULL} of it is free), so that in a
 * backlog it is filled at once and ends by itself: a hand-over waits for the pull under way (see
 * {@link OwnedPartition.handOver}).
 *
 * When to pull matters for per-room order: the server gives redeliveries (naked events, and events whose ack
 * wait expired) before new ones, but a delivered event whose ack wait has not expired yet is neither — a pull
 * then gets newer events of its room first (seen on nats-server 2.15.3). So a partition starts being pulled
 * ({@link OwnedPartition.run}):
 * - at once when its previous owner handed it over cleanly (it acked or naked, in order, everything it held);
 * - at once when nothing of it is out (no event unacknowledged, no pull request waiting: never owned, or its
 *   dead owner held nothing);
 * - otherwise (a dead owner's key expired) once the dead owner's last pull has expired and, if it left events
 *   unacknowledged, their ack wait too: PULL_EXPIRES_MS + ack wait + a margin after the key was taken.
 * The same holds for the owner itself: a pull that ends in an error, or a gap in the delivery sequence, may have
 * lost deliveries on the wire; the partition then waits for their ack wait before pulling again, unless the server
 * shows nothing out beyond what the worker holds. And redeliveries come in the order their ack wait expired, not
 * always the stream's: after any of these waits, nothing is posted until everything that was out is held again
 * ({@link OwnedPartition.resume}).
 */
import { HalcyonError } from '../errors.ts';
import { delay } from '../abort.ts';
import type { Logger } from '../log.ts';
import type { Broker, Delivery } from './nats.ts';
import { MAX_ACK_PENDING, PULL_EXPIRES_MS } from './nats.ts';
import type { HandOver, Takeover } from './ownership.ts';

/** Slack on top of a wait for the server's clocks (its ack-wait timer, a pull's expiry). */
export const TAKEOVER_MARGIN_MS = 1_000;
/**
 * How long a rebalance's hand-over lets the pull under way end by itself (see {@link OwnedPartition.handOver}): to
 * its expiry, plus a margin. A pull stopped early may lose deliveries on the wire, and the unclean hand-over that
 * follows holds the partition for the key's TTL plus the ack wait (43 s by default: a three-worker bench round
 * stalled that long with a 250 ms wait here); a rebalance is never that urgent.
 */
const LAST_PULL_WAIT_MS = PULL_EXPIRES_MS + TAKEOVER_MARGIN_MS;
/**
 * Free slots (of MAX_ACK_PENDING) before a partition pulls again. A pull that asked for more than the server could
 * send filled only as events were acked, and in a backlog it ended only once the partition's backlog was all
 * delivered: a rebalance waited for it that long (a 60-event partition of the bench moved after ~930 ms, when half
 * of it was handled and the other worker had run dry). Half, not one: a pull per ack would double NATS's work, and
 * the 16 held meanwhile keep the partition's rooms fed.
 */
const MIN_PULL = MAX_ACK_PENDING / 2;
/** How often a rebalance asks the server whether the last pull has anything more coming (see `nothingMoreToPull`). */
const NOTHING_MORE_POLL_MS = 100;

/** An event as the worker's consumer turned it into the intake's terms; see {@link PartitionSink}. */
export interface Prepared {
  /** Its room (events of one room go out one at a time); '' for a message that is not a Halcyon event. */
  readonly roomId: string;
  /** Its event ID, for the debug log ('' if unknown). */
  readonly eventId: string;
}

/** What a partition needs of the worker's consumer (worker.ts). */
export interface PartitionSink {
  readonly logger: Logger;
  /** The consumers' ack wait. */
  readonly ackWaitMs: number;
  /** Reads a delivery (it is decoded once). */
  prepare(d: Delivery): Prepared;
  /** Hands an event to the intake; the sink calls `partition.acked(streamSeq)` once its handlers settled. */
  post(prepared: Prepared, redelivered: boolean, streamSeq: number, partition: OwnedPartition): void;
}

/** An event the partition holds: received, not yet acked or given back. */
interface Held {
  /** The newest delivery of it (acks and progress go by it). */
  d: Delivery;
  readonly seq: number;
  readonly prepared: Prepared;
  /** Whether the server had delivered it before it first reached this worker. */
  readonly redelivered: boolean;
  posted: boolean;
}

/** Where a partition is: waiting before its first pull, pulling, draining for a hand-over, or no longer owned. */
type State = 'waiting' | 'pulling' | 'draining' | 'gone';

/** One owned partition; see the module comment. */
export class OwnedPartition {
  private state: State = 'waiting';
  private readonly held = new Map<number, Held>();
  /**
   * Stream sequences this worker acked lately, oldest first: a delivery of one is the server's redelivery that
   * crossed the ack (its ack wait expired while the handler ran and the progress signal was late), not new work.
   */
  private readonly acks = new Set<number>();
  /** Each room's held events in stream order; the first is the one posted, if any. */
  private readonly rooms = new Map<string, Held[]>();
  private posted = 0;
  /** The delivery sequence the next message should have (0: not known yet). */
  private nextDseq = 0;
  /** Whether deliveries may be out that this worker does not hold (before its first pull, after a failed one). */
  private suspect = true;
  /** Events to hold before posting any (see {@link resume}); 0: post as they come. */
  private gather = 0;
  private abort = new AbortController();
  /** Ends the pull under way early (a hand-over). */
  private stopPull: (() => void) | null = null;
  private loop: Promise<void>;
  private idle: (() => void) | null = null;
  /** Wakes the pulling loop waiting for free slots (see {@link MIN_PULL}). */
  private freed: (() => void) | null = null;
  /** The pull under way (being made, or bringing deliveries), until it ends. */
  private pulling: Promise<number | null> | null = null;
  /** A rebalance's hand-over waits for the pull under way: no other is made. */
  private lastPull = false;
  /** Whether {@link pullWhileOwned} runs (a called-off hand-over starts it again if it ended on `lastPull`). */
  private looping = false;
  /** Events whose handlers outlived a hand-over's wait (the partition was kept): no hand-over is tried while one runs. */
  private readonly outlived = new Set<number>();

  constructor(
    readonly partition: number,
    private readonly broker: Broker,
    private readonly sink: PartitionSink,
    how: Takeover,
    takenAt: number,
  ) {
    this.loop = this.guard(this.run(how, takenAt));
  }

  /** The pulling loop `p`, its end logged unless a hand-over or a loss ended it. */
  private guard(p: Promise<void>): Promise<void> {
    return p.catch((err: unknown) => {
      if ((err as HalcyonError).code !== 'HALCYON_STOPPED') this.sink.logger.warn({ partition: this.partition, err: (err as Error).message }, 'cluster: a partition stopped pulling');
    });
  }

  /** Events held (received, not acked). */
  get size(): number {
    return this.held.size;
  }

  /** Waits until pulling cannot reorder a room (see the module comment), then pulls while owned. */
  private async run(how: Takeover, takenAt: number): Promise<void> {
    const { ackWaitMs, logger } = this.sink;
    const first = await this.serverState();
    if (how === 'absent' && (first.ackPending > 0 || first.waiting > 0)) {
      logger.info({ partition: this.partition, ackPending: first.ackPending }, 'cluster: taking a partition over from a worker that is gone; waiting for its pulls to expire');
      await delay(Math.max(0, takenAt + PULL_EXPIRES_MS + TAKEOVER_MARGIN_MS - Date.now()), this.abort.signal);
      if ((await this.serverState()).ackPending > 0) {
        logger.info({ partition: this.partition }, 'cluster: its events are still out; waiting for their ack wait before pulling');
        await delay(Math.max(0, takenAt + PULL_EXPIRES_MS + ackWaitMs + TAKEOVER_MARGIN_MS - Date.now()), this.abort.signal);
      }
    }
    const out = await this.serverState();
    this.resume(out);
    if (this.state !== 'waiting') return;
    logger.info({ partition: this.partition, how, ...out, gather: this.gather }, 'cluster: a partition starts pulling');
    this.state = 'pulling';
    await this.pullWhileOwned();
  }

  /** Pulls until the partition is handed over or lost (or, for a rebalance, until the pull under way ends). */
  private async pullWhileOwned(): Promise<void> {
    this.looping = true;
    try {
      while (this.state === 'pulling' && !this.lastPull) {
        const free = MAX_ACK_PENDING - this.held.size;
        // While gathering, what is out comes back as redeliveries, which take no free slot: pulled at once.
        if (this.gather === 0 && free < MIN_PULL) {
          await this.slotsFree();
          continue;
        }
        this.pulling = this.pullOnce(this.gather > 0 ? MAX_ACK_PENDING : free);
        const lostAt = await this.pulling;
        this.pulling = null;
        if (this.gather > 0 && this.state === 'pulling') this.release(); // fewer came than were out (acked meanwhile)
        if (lostAt !== null) await this.settle(lostAt);
      }
    } finally {
      this.looping = false;
    }
  }

  /** Resolves once {@link MIN_PULL} slots are free, or the pulling is aborted (a hand-over, a loss). */
  private slotsFree(): Promise<void> {
    const signal = this.abort.signal;
    return new Promise<void>((resolve) => {
      const done = () => {
        this.freed = null;
        signal.removeEventListener('abort', done);
        resolve();
      };
      this.freed = done;
      if (signal.aborted) done();
      else signal.addEventListener('abort', done, { once: true });
    });
  }

  /**
   * Pulling starts (again) once what was out can only come back, first: the redeliveries. They come in the
   * order their ack wait expired, which is not always the stream's (a progress signal lost with the connection
   * keeps one out longer than the next), so nothing is posted until all `ackPending` are held, in stream order.
   */
  private resume(out: { ackPending: number; delivered: number }): void {
    this.nextDseq = out.delivered + 1;
    this.suspect = false;
    this.gather = out.ackPending > this.held.size ? out.ackPending : 0;
  }

  /** Everything that was out is held: each room's first event goes out. */
  private release(): void {
    this.gather = 0;
    for (const q of this.rooms.values()) if (!q[0]!.posted) this.post(q[0]!);
  }

  /** The consumer's state on the server, asked until NATS answers (or the partition is given up). */
  private async serverState(): Promise<{ ackPending: number; waiting: number; delivered: number }> {
    for (;;) {
      try {
        return await this.broker.pending(this.partition);
      } catch (err) {
        this.sink.logger.warn({ partition: this.partition, err: (err as Error).message }, 'cluster: cannot read a partition; trying again');
        await delay(500, this.abort.signal);
      }
    }
  }

  /** One pull, to its end; resolves with when deliveries may have been lost (an error, a gap), or null. */
  private async pullOnce(max: number): Promise<number | null> {
    try {
      const pull = await this.broker.pull(this.partition, max);
      this.stopPull = pull.stop;
      if (this.state !== 'pulling') pull.stop();
      for await (const d of pull.messages) {
        if (this.state === 'gone') continue; // stepped down: what still comes is left to expire
        if (this.nextDseq !== 0 && d.dseq !== this.nextDseq) {
          this.sink.logger.warn({ partition: this.partition, expected: this.nextDseq, got: d.dseq }, 'cluster: deliveries of a partition were lost; pulling again after their ack wait');
          this.suspect = true;
          return Date.now(); // this one and the rest of the pull are left to expire, after the lost ones
        }
        this.nextDseq = d.dseq + 1;
        this.take(d);
      }
      return null;
    } catch (err) {
      if (this.state !== 'pulling') return null;
      this.sink.logger.warn({ partition: this.partition, err: (err as Error).message }, 'cluster: pulling a partition failed');
      this.suspect = true;
      return Date.now();
    }
  }

  /** After a pull that may have lost deliveries: pulls again once nothing can be out beyond what this worker holds. */
  private async settle(lostAt: number): Promise<void> {
    for (let i = 0; i < 5; i++) {
      // The worker's acks may still be on their way: asked a few times before counting a delivery as lost.
      const out = await this.serverState();
      if (out.ackPending <= this.held.size) return this.resume(out);
      await delay(200, this.abort.signal);
    }
    await delay(Math.max(0, lostAt + this.sink.ackWaitMs + TAKEOVER_MARGIN_MS - Date.now()), this.abort.signal);
    this.resume(await this.serverState());
  }

  /** A delivery: held, and posted at once if its room has nothing out. */
  private take(d: Delivery): void {
    if (this.acks.has(d.seq)) {
      // Handled and acked here already: acked again (the server dropped it with the first ack, or takes this one).
      this.sink.logger.debug({ partition: this.partition, seq: d.seq, dseq: d.dseq, deliveries: d.deliveries }, 'cluster: an event acked here was delivered again; acked again');
      d.ack();
      return;
    }
    const known = this.held.get(d.seq);
    if (known) {
      // Its ack wait expired (NATS was unreachable, or the progress signal was late): acks now go by the new delivery.
      this.sink.logger.debug({ partition: this.partition, seq: d.seq, dseq: d.dseq, deliveries: d.deliveries, eventId: known.prepared.eventId }, 'cluster: an event held here was delivered again');
      known.d = d;
      return;
    }
    const h: Held = { d, seq: d.seq, prepared: this.sink.prepare(d), redelivered: d.redelivered, posted: false };
    this.held.set(d.seq, h);
    const q = this.rooms.get(h.prepared.roomId);
    if (!q) {
      this.rooms.set(h.prepared.roomId, [h]);
      if (this.state === 'pulling' && this.gather === 0) this.post(h);
    } else {
      // In stream order (a redelivery can come after a newer event of its room), never ahead of the posted one.
      let i = q.length;
      while (i > 0 && q[i - 1]!.seq > h.seq && !q[i - 1]!.posted) i--;
      q.splice(i, 0, h);
    }
    if (this.gather > 0 && this.held.size >= this.gather && this.state === 'pulling') this.release();
  }

  private post(h: Held): void {
    h.posted = true;
    this.posted++;
    const { d } = h;
    this.sink.logger.debug({ partition: this.partition, seq: h.seq, dseq: d.dseq, deliveries: d.deliveries, redelivered: h.redelivered, eventId: h.prepared.eventId }, 'cluster: an event goes to the handlers');
    this.sink.post(h.prepared, h.redelivered, h.seq, this);
  }

  /** The handlers of event `seq` settled: it is acked, and its room's next event goes out. */
  acked(seq: number): void {
    const h = this.held.get(seq);
    if (!h) {
      // Given back already (a hand-over that timed out, a lost key): the next owner handles it again.
      this.sink.logger.debug({ partition: this.partition, seq }, 'cluster: handlers settled on an event given back');
      return;
    }
    this.sink.logger.debug({ partition: this.partition, seq, eventId: h.prepared.eventId }, 'cluster: an event is acked');
    this.held.delete(seq);
    this.posted--;
    h.d.ack();
    if (MAX_ACK_PENDING - this.held.size >= MIN_PULL) this.freed?.();
    this.acks.add(seq);
    // A redelivery that crossed an ack arrives before anything the server sent after it: fewer than MAX_ACK_PENDING
    // acks come between them, so 4× that many is plenty.
    if (this.acks.size > 4 * MAX_ACK_PENDING) this.acks.delete(this.acks.values().next().value!);
    const q = this.rooms.get(h.prepared.roomId);
    if (q) {
      q.splice(q.indexOf(h), 1);
      if (q.length === 0) this.rooms.delete(h.prepared.roomId);
      else if (this.state === 'pulling' && this.gather === 0) this.post(q[0]!);
    }
    if (this.posted === 0) this.idle?.();
  }

  /** Tells the server the worker still has its events (their ack wait starts again); not once no longer owned. */
  working(): void {
    if (this.state === 'gone') return;
    for (const h of this.held.values()) h.d.working();
  }

  /**
   * Hands the partition over: stops pulling, waits up to `drainMs` for the handlers running on its events, then
   * gives back what is left, in stream order (the server delivers naked events first, in that order). Resolves
   * `clean` if the next owner may pull at once; `unclean` if deliveries may be out that this worker never saw (it
   * had not started pulling, a pull failed, or the stopped pull had a delivery on the wire: the consumer's delivery
   * sequence is past the last one seen here): its key is then left to expire, and the next owner waits as after a
   * crash. With `keep` (a rebalance, not a stop), a partition that is not pulling yet, or waits out a failed pull,
   * is kept (`kept`) rather than handed over unclean; an event whose handler still runs is never given back — the
   * next owner would run it again, beside this one: the partition is kept, pulling again, and no hand-over is
   * tried until those handlers settle; and the pull under way gets a moment to end by itself first (one stopped as
   * it is made loses the deliveries the server answered it with), its events handled meanwhile. That wait lasts
   * as long as the pull brings events (half a second in a backlog), and the partitions' load may have moved
   * meanwhile: a hand-over that `wanted` (asked then) no longer calls for is called off (`kept`, pulling on),
   * before anything was stopped or given back.
   */
  async handOver(drainMs: number, keep: boolean, wanted: () => boolean = () => true): Promise<HandOver> {
    if (this.state === 'gone') return 'unclean';
    // Waiting before it pulls (a dead owner's pulls or events may still be out), or after a pull that failed (what
    // it had on the wire may be lost): given up now it would be unclean, the key left to expire and the next owner
    // waiting out its TTL and the ack wait. A rebalance waits instead for pulling to start (again), at most the
    // pull's expiry and the ack wait, handling meanwhile what it holds. Seen after a NATS restart: a partition whose
    // pull had failed was given up that way, then taken back and given up a second later, over and over (its
    // events waited 16 s a round, for good when the other worker's looks were stuck).
    if (keep && (this.state === 'waiting' || (this.state === 'pulling' && this.suspect && !this.pulling))) return 'kept';
    // A handler that outlived the last try still runs: trying again would only hold the partition's other rooms up.
    if (keep && [...this.outlived].some((seq) => this.held.has(seq))) return 'kept';
    this.outlived.clear();
    if (keep && this.state === 'pulling' && this.pulling) {
      // A rebalance gives the pull under way a moment to end by itself, its events handled meanwhile. Stopped just
      // as it is made — when the server answers it at once with a backlog's events — its deliveries on the wire
      // would be lost: an unclean hand-over, after which the next owner waits out the key's TTL and the ack wait.
      // So it waits up to the pull's expiry: no new pull is made meanwhile (`lastPull`), and this worker goes on
      // handling what the pull brings.
      this.lastPull = true;
      let timer: NodeJS.Timeout | undefined;
      const spent = new Promise<void>((r) => (timer = setTimeout(r, LAST_PULL_WAIT_MS)));
      await Promise.race([this.pulling, spent, this.nothingMoreToPull(spent)]);
      clearTimeout(timer);
      if (this.state !== 'pulling') return 'unclean'; // lost meanwhile
      if (!wanted()) {
        this.sink.logger.info({ partition: this.partition }, "cluster: a hand-over is called off: the partitions' load moved while its last pull ran");
        this.lastPull = false;
        if (!this.looping) this.loop = this.guard(this.pullWhileOwned());
        return 'kept';
      }
    }
    const wasPulling = this.state === 'pulling';
    this.state = 'draining';
    this.abort.abort();
    this.stopPull?.();
    await this.loop;
    // Everything the server delivered reached this worker if its last delivery is the last one seen here.
    if (!this.suspect) await this.broker.pending(this.partition).then((out) => (this.suspect = out.delivered !== this.nextDseq - 1), () => (this.suspect = true));
    if (this.posted > 0 && drainMs > 0) await this.drain(drainMs);
    const rest = [...this.held.values()].sort((a, b) => a.seq - b.seq);
    const running = rest.filter((h) => h.posted).map((h) => h.seq);
    if (running.length > 0 && keep && wasPulling && this.state === 'draining') {
      this.sink.logger.warn({ partition: this.partition, seqs: running, waitedMs: drainMs }, 'cluster: handlers still running at a hand-over; the partition stays with this worker until they settle');
      for (const seq of running) this.outlived.add(seq);
      this.pullAgain();
      return 'kept';
    }
    if (running.length > 0) this.sink.logger.warn({ partition: this.partition, seqs: running }, 'cluster: handlers still running at a hand-over; their events go to the next owner');
    if (rest.length > 0) this.sink.logger.debug({ partition: this.partition, seqs: rest.map((h) => h.seq) }, 'cluster: events given back at a hand-over');
    this.held.clear();
    this.rooms.clear();
    this.posted = 0;
    this.state = 'gone';
    // Sent in order on one connection, processed in that order by the server; each confirmed.
    const naked = await Promise.all(rest.map((h) => h.d.nak().then(() => true, () => false)));
    return !this.suspect && naked.every(Boolean) ? 'clean' : 'unclean';
  }

  /**
   * Resolves once the server has nothing more for the pull under way: no event of the partition left undelivered,
   * and every delivery seen here. Asked at once, then every {@link NOTHING_MORE_POLL_MS} until `spent`. A last pull
   * otherwise waits out its expiry for events that are not coming (a backlog worked off), which held a rebalance
   * back until the backlog was over. An event published just after the answer is caught as before: the check
   * after the pull is stopped finds a delivery not seen here, and the hand-over is unclean.
   */
  private async nothingMoreToPull(spent: Promise<void>): Promise<void> {
    let over = false;
    void spent.then(() => (over = true));
    while (!over && this.pulling) {
      const out = await this.broker.pending(this.partition).catch(() => null);
      if (out?.undelivered === 0 && out.delivered === this.nextDseq - 1) return;
      await Promise.race([spent, new Promise<void>((r) => setTimeout(r, NOTHING_MORE_POLL_MS))]);
    }
    await new Promise<void>(() => {}); // the other racers settle the hand-over's wait
  }

  /** Waits up to `ms` for the running handlers to settle. */
  private async drain(ms: number): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    await new Promise<void>((resolve) => {
      this.idle = resolve;
      timer = setTimeout(resolve, ms);
    });
    clearTimeout(timer);
    this.idle = null;
  }

  /**
   * A hand-over kept the partition: its rooms' next events go out again and pulling resumes — after waiting out
   * what the stopped pull may have had on the wire, as after a failed pull.
   */
  private pullAgain(): void {
    this.state = 'pulling';
    this.lastPull = false;
    this.abort = new AbortController();
    this.stopPull = null;
    const stoppedAt = Date.now();
    this.loop = this.guard(
      (async () => {
        if (this.suspect) await this.settle(stoppedAt);
        if (this.gather === 0 && this.state === 'pulling') this.release();
        await this.pullWhileOwned();
      })(),
    );
  }

  /**
   * The partition's key is lost: nothing more of it is handed out. Events not yet posted are dropped (their ack
   * wait gives them to the next owner); those whose handlers run are still acked when they settle.
   */
  lose(): void {
    this.state = 'gone';
    this.abort.abort();
    for (const [seq, h] of this.held) if (!h.posted) this.held.delete(seq);
    for (const [room, q] of this.rooms) {
      const posted = q.filter((h) => h.posted);
      if (posted.length === 0) this.rooms.delete(room);
      else this.rooms.set(room, posted);
    }
  }
}
