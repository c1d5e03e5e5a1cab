/**
 * The main thread's end of the sync pipeline. One batch goes through these stages, in this order:
 *
 * 1. {@link Intake.receive}: a message on the sync port. Batches wait, in order, until `ready` has settled.
 * 2. {@link Intake.decryptInOrder}: a batch with encrypted events is decrypted by the crypto actor; later batches
 *    wait behind it, so a room's events reach handlers in timeline order (the next batch's decryption starts at
 *    once: the crypto actor queues it).
 * 3. {@link Intake.schedule}: the batch's tasks go to the dispatcher (rooms' lanes), each event acknowledged to
 *    the sync actor's journal when its handlers settle (see acks.ts). A batch posted again by a restarted sync
 *    actor is merged with what runs already ({@link BatchRun}): nothing runs twice, and events whose decryption
 *    a dead crypto actor left undone run now.
 *
 * Late decryptions (a room key that came after its events) arrive on the crypto port and go straight to step 3.
 */
import { performance } from 'node:perf_hooks'; // the binding: the global is a getter, and this clock is read per event
import { fromWireError, HalcyonError } from '../errors.ts';
import { BatchReader } from '../events.ts';
import { noMetrics } from '../metrics.ts';
import type { CryptoToMain, DecryptRequest, DecryptResult, SyncToMain, WireBatch } from '../protocol.ts';
import { isDone } from '../sync/journal.ts';
import { AckTracker, DONE, HeldBatch, STARTED } from './acks.ts';
import { ENCRYPTED } from './actors.ts';
import { settle } from './bus.ts';
import type { ClientCore } from './core.ts';
import { classify, Delivery, type EventKind, type HandlerTask } from './delivery.ts';
import { sendsQueued } from './messages.ts';

/** Decryption of one batch: the result, or why there is none. */
type Decryption = { result: DecryptResult; reader: BatchReader | null } | { error: HalcyonError };

/** Batches remembered as complete (a restarted sync actor may post them again: acknowledged, not rerun). */
const MAX_COMPLETED = 10_000;

/** The main thread's intake of batches; see the module comment. */
export class Intake {
  /** The highest batch number seen: a restarted sync actor numbers its batches above it. */
  maxSeqSeen = 0;
  /** Whether handlers fell behind and batches wait in the journal. */
  backpressure = false;
  readonly delivery: Delivery;
  /** Batches that wait for `ready` (null once it has settled). */
  private pending: WireBatch[] | null = [];
  /** Batches wait here, in order, while an earlier one is being decrypted (null when none is). */
  private chain: Promise<void> | null = null;
  /** Batches being handled, by seq: what of them runs or is done. */
  private readonly held = new Map<number, HeldBatch>();
  private readonly completed = new Set<number>();
  /** Handled events and batches, sent to the sync actor's journal once per turn of the loop. */
  readonly acks: AckTracker;
  /** Settles when `ready` has fired and its handlers settled. */
  private onReady: (() => void) | null = null;

  constructor(private readonly core: ClientCore) {
    this.delivery = new Delivery(core);
    this.acks = new AckTracker(
      (msg) => core.actors.set?.port.post(msg),
      (seq) => this.held.get(seq)?.takeDone() ?? null,
      () => sendsQueued(core),
    );
  }

  /** Batches wait for `ready` again (a new run); `fired` is called once it has fired and its handlers settled. */
  reset(fired: () => void): void {
    this.pending = [];
    this.onReady = fired;
  }

  /** Stage 1: a message from the sync actor. */
  receive(msg: SyncToMain): void {
    const { bus, metrics, opts } = this.core;
    switch (msg.kind) {
      case 'batch':
        if (msg.batch.seq > this.maxSeqSeen) this.maxSeqSeen = msg.batch.seq;
        if (this.pending) {
          // Until `ready` has settled, batches wait, in order, so handlers see ready first.
          this.pending.push(msg.batch);
          if (msg.batch.first) void this.fireReady();
        } else this.decryptInOrder(msg.batch);
        break;
      case 'syncError': {
        metrics.syncError(msg.error.code);
        const e = fromWireError(msg.error);
        if (!bus.has('syncError')) opts.logger.warn(e, `sync failed (attempt ${msg.attempt}); retrying in ${msg.retryInMs} ms`);
        else bus.emit('syncError', e, { attempt: msg.attempt, retryInMs: msg.retryInMs });
        break;
      }
      case 'syncRecovered':
        bus.emit('syncRecovered', { afterAttempts: msg.afterAttempts });
        break;
      case 'backpressure':
        this.backpressure = msg.active;
        bus.emit('backpressure', { active: msg.active, backlogEvents: msg.backlogEvents, queuedEvents: msg.inFlightEvents });
        break;
      case 'fatal':
        this.core.fail(fromWireError(msg.error));
        break;
    }
  }

  /** A message from the crypto actor: late decryptions, problems. */
  receiveCrypto(msg: CryptoToMain): void {
    switch (msg.kind) {
      case 'late':
        this.scheduleLate(msg.batch, msg.ids);
        break;
      case 'error':
        this.core.bus.emitError(fromWireError(msg.error));
        break;
      case 'fatal':
        this.core.fail(fromWireError(msg.error));
        break;
      default:
        this.delivery.cryptoNews(msg); // verification, warnings
    }
  }

  private async fireReady(): Promise<void> {
    // The first batch carries the room summaries; apply them before ready handlers look at rooms.
    for (const b of this.pending ?? []) for (const s of b.summaries) this.core.mirror.set(s);
    const r = this.core.bus.emit('ready');
    if (r) await r;
    const batches = this.pending ?? [];
    this.pending = null;
    for (const b of batches) this.decryptInOrder(b);
    const fired = this.onReady;
    this.onReady = null;
    fired?.();
  }

  /** Stage 2: decrypts a batch's encrypted events, keeping batches in order behind one being decrypted. */
  private decryptInOrder(b: WireBatch): void {
    const encrypted = encryptedEvents(b);
    if (encrypted === null && !this.chain) return this.schedule(b, null);
    const decrypting: Promise<Decryption | null> = encrypted === null ? Promise.resolve(null) : this.decrypt(encrypted, b.redelivered);
    const next = (this.chain ?? Promise.resolve()).then(() => decrypting).then((d) => this.schedule(b, d));
    this.chain = next;
    void next.finally(() => {
      if (this.chain === next) this.chain = null;
    });
  }

  private async decrypt(req: DecryptRequest, redelivered: boolean): Promise<Decryption> {
    if (!this.core.opts.encryption) return { error: new HalcyonError('HALCYON_DECRYPT_FAILED', 'encryption is off (the client was created with encryption: false)') };
    const crypto = this.core.actors.openCrypto;
    // Lost with a restarting actor: the batch's repost after the restart decrypts it (see isActorLoss).
    if (!crypto) return { error: new HalcyonError('HALCYON_RESTARTING', 'the crypto actor is restarting') };
    try {
      const result = await crypto.decrypt(req);
      if (result.batch) result.batch.redelivered = redelivered;
      return { result, reader: result.batch ? new BatchReader(result.batch) : null };
    } catch (err) {
      return { error: new HalcyonError('HALCYON_DECRYPT_FAILED', `decryption failed: ${(err as Error).message}`, { cause: err }) };
    }
  }

  /** Stage 3: the batch's tasks go to the dispatcher, after the batches that arrived in the same turn. */
  private schedule(b: WireBatch, dec: Decryption | null): void {
    this.core.dispatcher.pushBatch(() => this.queue(b, dec));
  }

  private queue(b: WireBatch, dec: Decryption | null): void {
    const { bus, mirror } = this.core;
    for (const s of b.summaries) mirror.set(s);
    for (const e of b.errors) bus.emitError(fromWireError(e));
    if (dec && 'result' in dec) for (const e of dec.result.batch?.errors ?? []) bus.emitError(fromWireError(e));
    if (this.completed.has(b.seq)) {
      this.acks.finish(b.seq); // done here already; its acknowledgement died with the old sync actor
      return;
    }
    this.core.metrics.eventsReceived(b.events.count);
    const run = new BatchRun(this, this.core, b);
    this.queueEvents(run, b, dec);
    this.queueOthers(run, b);
    // Never released: a batch with lost decryptions is completed by its repost, not by this acceptance.
    if (dec !== null && 'error' in dec && isActorLoss(dec.error)) run.keep();
    run.release();
  }

  /** The timeline events of a batch: clear ones as they are, encrypted ones from their decryption. */
  private queueEvents(run: BatchRun, b: WireBatch, dec: Decryption | null): void {
    const ev = b.events;
    const reader = run.reader;
    const anyEvent = this.core.bus.has('event');
    const delivery = this.delivery;
    const failures = dec && 'result' in dec ? new Map(dec.result.failures.map((f) => [f.index, f])) : null;
    const lost = dec !== null && 'error' in dec && isActorLoss(dec.error);
    // The common case (no cluster ingest, no metrics) takes one closure per event, not three (see BatchRun.runEvent).
    const plain = this.core.cluster?.role !== 'ingest' && this.core.metrics === noMetrics;
    let k = 0; // ordinal among the batch's encrypted events still to handle (the decrypt request's index)
    for (let i = 0; i < ev.count; i++) {
      if (isDone(b.done, i)) continue; // handled by an earlier run
      const roomId = b.rooms[ev.room[i]!]!;
      const encrypted = dec !== null && reader!.type(i) === ENCRYPTED;
      const index = encrypted ? k++ : -1;
      if (run.already(i)) continue;
      if (!encrypted) {
        if (plain) {
          const kind = delivery.wanted(reader!, i, anyEvent);
          if (kind !== undefined) run.runEvent(i, roomId, kind, anyEvent);
          continue;
        }
        const task = delivery.eventTask(reader!, i, roomId, anyEvent);
        if (task) run.run(i, roomId, task);
        continue;
      }
      if ('error' in dec) {
        // Lost with a dead crypto actor: left for the batch's repost after the restart.
        if (!lost) run.run(i, roomId, delivery.decryptionErrorTask(dec.error, reader!, i, roomId, { sessionId: null, willRetry: false, withheldCode: null }));
        continue;
      }
      const slot = dec.result.slot[index]!;
      if (slot >= 0 && dec.reader) {
        const task = delivery.eventTask(dec.reader, slot, roomId, anyEvent);
        if (task) run.run(i, roomId, task);
        continue;
      }
      const f = failures!.get(index);
      if (!f) continue;
      this.core.metrics.decryptFailure(f.code);
      const err = new HalcyonError(f.code, f.message, { roomId });
      run.run(i, roomId, delivery.decryptionErrorTask(err, reader!, i, roomId, { sessionId: f.sessionId, willRetry: f.pending, withheldCode: f.withheldCode ?? null }));
    }
  }

  /** The batch's other items, numbered after its events: invites, knocks, account data, receipts. */
  private queueOthers(run: BatchRun, b: WireBatch): void {
    const { bus, opts, session, mirror } = this.core;
    let item = b.events.count;
    for (const inv of b.invites) {
      const i = item++;
      if (!run.already(i)) run.run(i, inv.roomId, this.delivery.inviteTask(inv, b.nextBatch));
    }
    for (const k of b.knocks ?? []) {
      const i = item++;
      if (bus.has('knock') && !run.already(i)) run.run(i, k.roomId, (done) => settle(bus.emit('knock', { roomId: k.roomId, state: k.state }), done));
    }
    for (const a of b.accountData) {
      const i = item++;
      // Global account data runs in a lane of its own ('' is no room ID).
      if (bus.has('accountData') && !run.already(i)) {
        run.run(i, a.roomId ?? '', (done) => settle(bus.emit('accountData', { roomId: a.roomId, type: a.type, content: a.content }), done));
      }
    }
    const own = session?.userId;
    for (const r of b.receipts) {
      const i = item++;
      if (!bus.has('receipt') || (opts.ignoreOwnEvents && r.userId === own) || run.already(i)) continue;
      run.run(i, r.roomId, (done) => settle(bus.emit('receipt', { ...r, room: mirror.room(r.roomId) }), done));
    }
  }

  /** Delivers events decrypted after their key arrived late; the crypto actor forgets them once handled. */
  private scheduleLate(b: WireBatch, ids: string[]): void {
    let left = 1;
    const done = () => {
      if (--left === 0) this.core.actors.set?.cryptoPort?.post({ kind: 'lateHandled', ids });
    };
    const reader = new BatchReader(b);
    const anyEvent = this.core.bus.has('event');
    for (let i = 0; i < b.events.count; i++) {
      const roomId = b.rooms[b.events.room[i]!]!;
      const task = this.delivery.eventTask(reader, i, roomId, anyEvent);
      if (task) {
        left++;
        this.core.dispatcher.push(roomId, () => task(done));
      }
    }
    done();
  }

  /** @internal The held state of batch `seq`, made on first use (a repost finds the first acceptance's). */
  holdFor(seq: number, items: number, events: number): { held: HeldBatch; repost: boolean } {
    const known = this.held.get(seq);
    if (known) return { held: known, repost: true };
    const held = new HeldBatch(events, items - events);
    this.held.set(seq, held);
    return { held, repost: false };
  }

  /** @internal Every item of batch `seq` is handled: it is acknowledged whole and remembered as complete. */
  complete(seq: number, held: HeldBatch): void {
    if (this.held.get(seq) === held) this.held.delete(seq);
    this.completed.add(seq);
    if (this.completed.size > MAX_COMPLETED) this.completed.delete(this.completed.values().next().value!);
    this.acks.finish(seq);
  }
}

/**
 * One acceptance of a batch: starts the tasks of its items not done or running already, and completes the batch
 * once every item it started or waits for is done (`left` counts them, plus one held by the caller until every
 * item is queued).
 */
class BatchRun {
  /** The batch's events, or null when it has none. */
  readonly reader: BatchReader | null;
  private readonly held: HeldBatch;
  private readonly repost: boolean;
  private left = 1;
  private readonly seq: number;
  private readonly events: number;

  constructor(
    private readonly intake: Intake,
    private readonly core: ClientCore,
    b: WireBatch,
  ) {
    this.seq = b.seq;
    this.events = b.events.count;
    this.reader = this.events > 0 ? new BatchReader(b) : null;
    const items = this.events + b.invites.length + (b.knocks ?? []).length + b.accountData.length + b.receipts.length;
    ({ held: this.held, repost: this.repost } = intake.holdFor(this.seq, items, this.events));
  }

  /** Whether item `i` is done or running already (an earlier acceptance of this batch): then it waits for it. */
  already(i: number): boolean {
    const st = this.held.state[i]!;
    if (st === DONE) {
      if (this.repost && i < this.events) this.intake.acks.done(this.seq);
      return true;
    }
    if (st === STARTED) {
      this.left++;
      this.held.whenDone(i, () => this.release());
      return true;
    }
    return false;
  }

  /**
   * Queues clear event `i` for its handlers as `kind` (Delivery.wanted): {@link run}'s work in one closure, its
   * batch told through {@link eventDone}. A closure and its context are ~100 bytes that main's GC (and V8's helper
   * threads) collect later: three of them per event were most of what main allocated.
   */
  runEvent(i: number, roomId: string, kind: EventKind | null, anyEvent: boolean): void {
    this.held.start(i);
    this.left++;
    const reader = this.reader!;
    const delivery = this.intake.delivery;
    this.core.dispatcher.push(roomId, () => delivery.run(reader, i, roomId, kind, anyEvent, this));
  }

  /** Event `i`'s handlers settled. */
  eventDone(i: number): void {
    this.held.done(i);
    this.intake.acks.done(this.seq);
    this.release();
  }

  /** Queues `task` for item `i` in `roomId`'s lane; its end marks the item done and acknowledges it. */
  run(i: number, roomId: string, task: HandlerTask): void {
    const core = this.core;
    const metrics = core.metrics !== noMetrics ? core.metrics : null;
    const event = i < this.events;
    this.held.start(i);
    this.left++;
    core.dispatcher.push(roomId, () => {
      const t0 = metrics ? performance.now() : 0;
      return task(() => {
        if (metrics) {
          const r = this.reader;
          const kind = event ? (classify(r!.type(i), r!.relType(i)) ?? 'other') : 'other';
          metrics.handled(kind, core.mirror.joined(roomId) ? roomId : null, (performance.now() - t0) / 1000, event ? (Date.now() - r!.timestamp(i)) / 1000 : -1);
        }
        this.held.done(i);
        if (event) this.intake.acks.done(this.seq);
        this.release();
      });
    });
  }

  /** Keeps the batch from completing with this acceptance (its repost completes it). */
  keep(): void {
    this.left++;
  }

  /** Releases one hold; the last completes the batch. */
  release(): void {
    if (--this.left > 0) return;
    this.intake.complete(this.seq, this.held);
  }
}

/** The batch's encrypted events as a decrypt request, or null if it has none. */
function encryptedEvents(b: WireBatch): DecryptRequest | null {
  const ev = b.events;
  const typeIndex = ev.strings.indexOf(ENCRYPTED);
  if (typeIndex < 0) return null;
  const reader = new BatchReader(b);
  const req: DecryptRequest = { rooms: b.rooms, room: [], raw: [] };
  for (let i = 0; i < ev.count; i++) {
    if (ev.type[i] !== typeIndex || isDone(b.done, i)) continue;
    req.room.push(ev.room[i]!);
    req.raw.push(reader.rawText(i));
  }
  return req;
}

/** Errors that mean an actor went away (its work is redone after a restart), not that the input was bad. */
function isActorLoss(e: HalcyonError): boolean {
  const c = (e.cause as HalcyonError | undefined)?.code ?? e.code;
  return c === 'HALCYON_ACTOR_DIED' || c === 'HALCYON_ACTOR_TIMEOUT' || c === 'HALCYON_STOPPED' || c === 'HALCYON_RESTARTING' || c === 'HALCYON_NOT_RUNNING';
}
