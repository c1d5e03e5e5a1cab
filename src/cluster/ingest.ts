/**
 * The ingest's role: its client runs the usual sync, cache and crypto actors and intake, but each timeline event
 * (decrypted, in room order: the dispatcher's room lanes) becomes a publish task instead of a handler task. The
 * task settles — and the event is acknowledged to the sync actor's journal — only once the stream has stored the
 * event, so the journal's guarantee moves to the stream: an event is in the journal (and published again by the
 * next ingest run from the same data dir, where the stream drops it as a duplicate of its event ID) or in the
 * stream. It also answers the workers' requests: room state from the cache actor, encryption by the crypto actor
 * (the OlmMachine has one owner), presence, and the account's send budget (its outbox's pacer: one per account).
 * And it keeps the partitions' load in the lease bucket ({@link LoadReport}): what the workers share them by.
 * Losing its lease, it steps down and stands by in the same process until it holds the lease again (stepDown).
 */
import type { BatchReader } from '../events.ts';
import { HalcyonError } from '../errors.ts';
import { delay } from '../abort.ts';
import type { ClientCore } from '../client/core.ts';
import type { HandlerTask } from '../client/delivery.ts';
import { isRoomEncrypted } from '../client/messages.ts';
import type { SharedPaceOp } from '../outbox.ts';
import { OFF, type StateChanges, type SyncConfig } from '../protocol.ts';
import type { ClusterRole } from './index.ts';
import type { Logger } from '../log.ts';
import type { Lease } from './lease.ts';
import type { Broker, KeyStore } from './nats.ts';
import { LOAD_FLOOR, LOAD_KEY, PartitionLoad, parseLoad, roomPrior } from './ownership.ts';
import { type ClusterRpc, encodeEvent, partitionOf } from './wire.ts';

/** Summaries a worker gets per `summaries` request. */
const SUMMARY_PAGE = 500;
/** Wait between attempts of a publish that failed (NATS unreachable or restarting). */
const PUBLISH_RETRY_MS = 250;
/**
 * How often at most the partitions' load is written while events flow. A quarter second, not a second: a backlog
 * that two workers clear in a second or two (the benchmark's) must be shared out near its start to be shared at all.
 */
const LOAD_WRITE_MS = 250;

/** The ingest's part of a clustered client; see the module comment. */
export class IngestRole implements ClusterRole {
  readonly role = 'ingest';
  readonly strategy = null;
  private unserve: (() => void) | null = null;
  /** Publishes are failing (NATS unreachable): told once until one succeeds again. */
  private failing = false;
  private load: LoadReport;
  /** While this ingest stands by after losing its lease: its wait to hold it again (null while it leads). */
  private regain: Promise<void> | null = null;
  /** It stepped down since it last started serving: it says so when it leads again. */
  private steppedDown = false;
  private closed = false;

  constructor(
    private readonly core: ClientCore,
    private readonly broker: Broker,
    private readonly partitions: number,
    private readonly lease: Lease,
  ) {
    this.load = new LoadReport(broker, partitions, core.opts.logger);
    lease.onLost((why) => this.stepDown(why));
  }

  /**
   * The lease is lost (NATS away for most of its TTL, or another process wrote the key). At once this ingest stops
   * serving (the next leader's crypto actor must be the only one encrypting), publishing, and syncing: the
   * supervisor stops its actors (the next leader's sync actor must be the only one) and starts them again only
   * once {@link leading} resolves, when this process holds the lease again. They resume from the stored since token
   * and the journal; publishes that were waiting go on then. If another ingest took the lease meanwhile, this one
   * stays standby until that one goes. Only a client still starting (or with inline actors) stops instead.
   */
  private stepDown(why: string): void {
    const core = this.core;
    this.unserve?.();
    this.unserve = null;
    this.load.close();
    if (this.closed) return;
    this.load = new LoadReport(this.broker, this.partitions, core.opts.logger);
    const err = new HalcyonError('HALCYON_CLUSTER', `the ingest lost its lease (${why}); it stops so that another can take over`);
    if (core.state !== 'running') return core.fail(err);
    core.opts.logger.warn({ why }, 'cluster: the ingest lost its lease; it stops leading and stands by until it holds the lease again');
    this.steppedDown = true;
    const regain = this.lease.acquire(core.lifecycle.signal);
    this.regain = regain;
    regain.then(
      () => {
        if (this.regain === regain) this.regain = null;
      },
      () => {}, // the client stopped: whoever waits on it sees the rejection
    );
    core.supervisor.standBy(err);
  }

  /** A new bot's load starts from its rooms, each weighing alike (see {@link roomPrior}): the first sync is in. */
  ready(): void {
    const rooms = this.core.mirror.joinedRooms().map((s) => partitionOf(s.roomId, this.partitions));
    this.load.startFrom(roomPrior(rooms, this.partitions));
  }

  leading(): Promise<void> {
    return this.regain ?? Promise.resolve();
  }

  sharedPacer(): null {
    return null;
  }

  /** The task that publishes event `i` of `r` to its room's partition; it settles once the stream has it. */
  publishTask(r: BatchReader, i: number, roomId: string): HandlerTask {
    const p = partitionOf(roomId, this.partitions);
    this.load.takenIn(p);
    return (done) => {
      const eventId = r.str(i, OFF.eventId);
      if (eventId === null) return done(); // a timeline event without an ID is refused by the sync actor already
      const data = encodeEvent({ roomId, flags: r.batch.events.flags[i]!, summary: this.core.mirror.get(roomId) ?? null, redelivered: r.batch.redelivered }, r.rawText(i));
      // A stop abandons it: the journal keeps it.
      return this.publish(p, eventId, data).then(done, () => {});
    };
  }

  /** Publishes until the stream acknowledges; a NATS outage is waited out (the room's lane waits with it). */
  private async publish(p: number, msgId: string, data: Uint8Array): Promise<void> {
    const { lifecycle, opts } = this.core;
    for (;;) {
      // Not while standing by (another ingest may lead): the event waits, and goes once this one leads again.
      while (this.regain) await this.regain;
      try {
        await this.broker.publish(p, msgId, data);
        if (this.failing) opts.logger.info({}, 'cluster: publishing to the stream again');
        this.failing = false;
        return;
      } catch (err) {
        if (lifecycle.signal.aborted) throw err;
        // Said once per outage, not once per waiting room.
        if (!this.failing) opts.logger.warn({ err: (err as Error).message }, 'cluster: cannot publish to the stream; events wait in the journal, retrying');
        this.failing = true;
        await delay(PUBLISH_RETRY_MS, lifecycle.signal);
      }
    }
  }

  running(): void {
    if (this.steppedDown) this.core.opts.logger.info({}, 'cluster: the ingest leads again; it resumes from its since token and journal');
    this.steppedDown = false;
    this.unserve ??= this.broker.serve((method, body) => this.answer(method as keyof ClusterRpc, body));
    this.load.open(this.core.lifecycle.signal);
  }

  /** Answers one worker request (see `ClusterRpc` in protocol.ts). */
  private async answer(method: keyof ClusterRpc, body: unknown): Promise<unknown> {
    const core = this.core;
    const b = (body ?? {}) as Record<string, unknown>;
    const roomId = typeof b.roomId === 'string' ? b.roomId : '';
    switch (method) {
      case 'identity':
        return core.actors.identity;
      case 'getRoom':
        return (await core.needCache().getRoom(roomId)) ?? null;
      case 'summaries': {
        const all = await core.needCache().summaries();
        const from = Number(b.offset) || 0;
        return { summaries: all.slice(from, from + SUMMARY_PAGE), more: all.length > from + SUMMARY_PAGE };
      }
      case 'accountData':
        return (await core.needCache().accountData((b.roomId as string | null) ?? null, String(b.type))) ?? null;
      case 'apply':
        return core.needCache().apply(body as StateChanges);
      case 'isRoomEncrypted':
        return isRoomEncrypted(core, roomId);
      case 'encrypt': {
        if (!core.opts.encryption) return { encrypted: false };
        return (await core.openCrypto(core.lifecycle.signal)).encrypt(roomId, String(b.type), b.content as Record<string, unknown>);
      }
      case 'cryptoStatus':
        return (await core.actors.openCrypto?.status()) ?? null;
      case 'setPresence':
        await core.actors.set?.sync.api.setPresence(b.state as SyncConfig['setPresence']);
        return null;
      case 'pace': {
        // The account's one budget is this process's outbox's pacer (it exists once running() serves).
        const outbox = core.outbox;
        if (!outbox) throw new HalcyonError('HALCYON_CLUSTER', 'the ingest is not running yet');
        return outbox.sharedPace(String(b.op) as SharedPaceOp, Number(b.retryAfterMs) || 0);
      }
      default:
        throw new HalcyonError('HALCYON_INVALID_ARGUMENT', `unknown cluster request ${String(method)}`);
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    this.load.close();
    this.unserve?.();
    this.unserve = null;
    await this.lease.release().catch((err: unknown) => this.core.opts.logger.warn({ err: (err as Error).message }, 'cluster: cannot delete the ingest lease; a standby takes over once it expires'));
    await this.broker.close();
  }
}

/**
 * The partitions' load as the workers read it (ownership.ts): a decayed count of the events taken in to be
 * published to each ({@link PartitionLoad}), written to the lease bucket's {@link LOAD_KEY} at most every
 * {@link LOAD_WRITE_MS} and only when its figures changed, and again every third of the bucket's TTL so that it does
 * not expire while this ingest leads. It goes on from the figures it finds there (a restarted ingest, a standby
 * that took over); finding none (a new bot), it starts from the bot's rooms once the client is ready
 * ({@link roomPrior}). Nothing is written below {@link LOAD_FLOOR}: the workers would share by count anyway.
 *
 * Counted when taken in, not when published: a sync batch is taken in at once, so its figures are whole at once,
 * and the workers share the backlog out before its events reach them. Counted as published (the dispatcher
 * publishes the client's `concurrency` rooms at a time, 16), the bench's first figures lacked 4 of its 20 rooms;
 * made to wait until the batch was published (0.3–0.75 s for the bench's 400 events), they came once the workers
 * held its events, and the hand-over most room layouts still needed cost two workers ×1.58–1.70 of one, against
 * ×1.70–1.79 for the layouts that needed none.
 */
export class LoadReport {
  private readonly meter: PartitionLoad;
  private store: KeyStore | null = null;
  private written = '';
  private lastAt = Number.NEGATIVE_INFINITY;
  private timer: NodeJS.Timeout | null = null;
  private refresh: NodeJS.Timeout | null = null;
  private opened = false;
  private closed = false;
  /** Figures were in the bucket at open: this ingest goes on from them, not from a {@link roomPrior}. */
  private found = false;
  /** A {@link roomPrior} waiting for the bucket to be open. */
  private prior: number[] | null = null;

  constructor(
    private readonly broker: Broker,
    private readonly partitions: number,
    private readonly logger: Logger,
  ) {
    this.meter = new PartitionLoad(partitions);
  }

  /** Opens the lease bucket and reads the figures there; writing starts then (a failure leaves the workers sharing by count). */
  open(signal: AbortSignal): void {
    if (this.opened || this.closed) return;
    this.opened = true;
    void (async () => {
      const store = await this.broker.leaseStore(null, signal);
      const before = parseLoad(await store.get(LOAD_KEY), this.partitions);
      if (this.closed) return;
      if (before) this.meter.seed(before);
      this.found = before !== null;
      this.store = store;
      this.refresh = setInterval(() => void this.write(true), Math.max(100, Math.round(store.ttlMs / 3)));
      this.refresh.unref();
      this.usePrior();
      this.schedule();
    })().catch((err: unknown) => this.logger.warn({ err: (err as Error).message }, "cluster: cannot keep the partitions' load; workers share them by count"));
  }

  /** Figures to start from if the bucket has none (see {@link roomPrior}): written at once, or once it is open. */
  startFrom(prior: number[] | null): void {
    this.prior = prior;
    this.usePrior();
  }

  private usePrior(): void {
    if (!this.store || this.closed || !this.prior) return;
    const prior = this.prior;
    this.prior = null;
    if (this.found || this.meter.total >= LOAD_FLOOR) return;
    this.meter.seed(prior);
    void this.write(false);
  }

  /** An event was taken in to be published to partition `p` (its publish task made). */
  takenIn(p: number): void {
    this.meter.add(p);
    this.schedule();
  }

  /** Sets the write timer for the next write allowed, unless it is set. */
  private schedule(): void {
    if (this.timer || !this.store || this.closed) return;
    this.timer = setTimeout(
      () => {
        this.timer = null;
        void this.write(false);
      },
      Math.max(0, this.lastAt + LOAD_WRITE_MS - Date.now()),
    );
    this.timer.unref();
  }

  /** Writes the figures if they changed (or, with `again`, to keep the key alive). */
  private async write(again: boolean): Promise<void> {
    const store = this.store;
    if (!store || this.closed || this.meter.total < LOAD_FLOOR) return;
    const text = JSON.stringify(this.meter.figures());
    if (text === this.written && !again) return;
    this.written = text;
    this.lastAt = Date.now();
    await store.put(LOAD_KEY, text).catch((err: unknown) => {
      this.written = ''; // written again at the next event or refresh
      this.logger.debug({ err: (err as Error).message }, "cluster: cannot write the partitions' load");
    });
  }

  close(): void {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    if (this.refresh) clearInterval(this.refresh);
    this.timer = this.refresh = null;
  }
}
