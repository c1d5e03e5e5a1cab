/**
 * Acknowledgement bookkeeping of the main thread: which items of each batch (events, then invites, knocks,
 * account data, receipts) are running or done ({@link HeldBatch}), and the coalesced acknowledgements sent to the
 * sync actor's journal ({@link AckTracker}). Pure: no threads, no I/O beyond the send callback.
 */
import type { MainToSync } from '../protocol.ts';

/**
 * How long progress alone (events handled, no batch complete) may wait before it is sent. Async handlers settle
 * one a turn (an ingest's publishes, as their acks come back from NATS one socket read at a time), and a message
 * per turn cost main a postMessage and the sync actor a journal transaction per event: ~40 % of the ingest's
 * acknowledgement work in the cluster bench. A kill loses at most this much progress: those events are delivered
 * again (flagged `redelivered`), as any in flight are. A complete batch goes at the end of its turn, with what
 * waits: it frees the sync actor's room for the next batch at once.
 */
export const PROGRESS_ACK_MS = 20;

/**
 * Collects progress (batches with newly handled events) and complete batches, and sends them to the sync actor
 * in one message per turn of the event loop when a batch completed, else after {@link PROGRESS_ACK_MS}: a burst of
 * handlers costs one message, not one per event. The events handled since the last message are taken from each
 * batch's {@link HeldBatch} at send time (a batch that completed meanwhile is sent as complete, without indices:
 * the journal deletes it whole), so recording one costs a set insertion.
 */
export class AckTracker {
  private touched = new Set<number>();
  private complete: number[] = [];
  private scheduled = false;
  /** The timer of progress waiting ({@link PROGRESS_ACK_MS}), if set. */
  private progressTimer: NodeJS.Timeout | null = null;
  /** Acknowledgements waiting for sends to be queued (see {@link flush}), in order; null when none waits. */
  private waiting: Promise<void> | null = null;

  constructor(
    private readonly send: (msg: MainToSync) => void,
    /** The events of batch `seq` handled since the last call (null: the batch is no longer held). */
    private readonly doneEvents: (seq: number) => number[] | null,
    /** Settles once every send called so far is in the outbox (on disk); null when none is on its way there. */
    private readonly sendsQueued: () => Promise<unknown> | null = () => null,
  ) {}

  /** Batch `seq` has newly handled events. */
  done(seq: number): void {
    this.touched.add(seq);
    if (this.scheduled || this.progressTimer) return;
    this.progressTimer = setTimeout(() => this.flush(), PROGRESS_ACK_MS);
    this.progressTimer.unref();
  }

  /** Everything of batch `seq` is handled. */
  finish(seq: number): void {
    this.touched.delete(seq);
    this.complete.push(seq);
    this.schedule();
  }

  /**
   * Sends what is pending now, once the sends called so far are queued. A handler that does not await its send
   * returns before the send is in the outbox (its preparation first asks an actor whether the room is encrypted):
   * acknowledged then, a kill before the outbox's write lost it, its event done and the send nowhere. Later
   * acknowledgements wait behind a waiting one, so the journal gets them in order.
   */
  flush(): void {
    this.scheduled = false;
    if (this.progressTimer) clearTimeout(this.progressTimer);
    this.progressTimer = null;
    if (this.touched.size === 0 && this.complete.length === 0) return;
    const progress: Array<{ seq: number; indices: number[] }> = [];
    for (const seq of this.touched) {
      const indices = this.doneEvents(seq);
      if (indices && indices.length > 0) progress.push({ seq, indices });
    }
    const complete = this.complete;
    this.touched = new Set();
    this.complete = [];
    const msg: MainToSync = { kind: 'acks', progress, complete };
    const queueing = this.sendsQueued();
    if (!queueing && !this.waiting) return this.send(msg);
    const next: Promise<void> = Promise.all([this.waiting, queueing]).then(() => {
      if (this.waiting === next) this.waiting = null;
      this.send(msg);
    });
    this.waiting = next;
  }

  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => this.flush());
  }
}

/** An item a handler task has been started for. */
export const STARTED = 1;
/** An item whose handlers have settled. */
export const DONE = 2;

/** What this thread does of one batch: per item (events, then invites, account data, receipts) not started, running or done. */
export class HeldBatch {
  readonly state: Uint8Array;
  private readonly waiters = new Map<number, Array<() => void>>();
  /** Events (not other items) done since the last {@link takeDone}. */
  private fresh: number[] = [];
  constructor(
    private readonly events: number,
    others: number,
  ) {
    this.state = new Uint8Array(events + others);
  }
  /**
   * The events (not other items) done since the last call: each acknowledgement carries an event once. Read as all
   * done so far, a batch whose events settled one a turn (an ingest's publishes) sent ~n²/2 indices in all.
   */
  takeDone(): number[] {
    const out = this.fresh;
    this.fresh = [];
    return out;
  }
  start(i: number): void {
    this.state[i] = STARTED;
  }
  done(i: number): void {
    if (i < this.events && this.state[i] !== DONE) this.fresh.push(i);
    this.state[i] = DONE;
    const w = this.waiters.get(i);
    if (!w) return;
    this.waiters.delete(i);
    for (const f of w) f();
  }
  whenDone(i: number, f: () => void): void {
    let w = this.waiters.get(i);
    if (!w) this.waiters.set(i, (w = []));
    w.push(f);
  }
}
