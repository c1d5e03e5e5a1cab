/**
 * A worker's role: an actor set of its own behind the same handles and ports as the local ones, so the rest of
 * the client — intake, dispatcher, handlers, outbox, the API — runs unchanged:
 *
 * - in the sync actor's place, {@link PartitionConsumer}: it owns a share of the bot's partitions (ownership.ts),
 *   pulls several events of each at once and posts them as batches of one on the sync port, a room's next event
 *   once the one before it settled (partition.ts); the intake's acknowledgement of a batch (its handlers settled)
 *   acks the message. A worker that dies leaves its events unacknowledged; the worker that takes its partitions
 *   over gets them after the ack wait, `redelivered`, before anything newer of their rooms.
 * - in the cache actor's place, {@link RemoteCache}: the ingest's cache over request/reply.
 * - in the crypto actor's place, {@link RemoteCrypto}: the ingest's crypto actor over request/reply (the OlmMachine
 *   has one owner); the worker then sends the encrypted content itself, with its deterministic transaction ID.
 */
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { inThreadActor, localPortPair, type Port } from '../actors.ts';
import type { ActorSet, ActorStrategy } from '../client/actors.ts';
import type { ClientCore } from '../client/core.ts';
import { HalcyonError, toWireError } from '../errors.ts';
import type { Logger } from '../log.ts';
import { threadMemory } from '../memory.ts';
import {
  type ActorMemory,
  CACHE_DEADLINES,
  type CacheActorApi,
  CRYPTO_DEADLINES,
  type CryptoActorApi,
  type CryptoIdentity,
  type CryptoStatus,
  EVENT_FLAGS,
  type EncryptResult,
  type IdentitySetupResult,
  type MainToSync,
  type RoomInfo,
  type RoomSummary,
  type StateChanges,
  SYNC_DEADLINES,
  type SyncActorApi,
  type SyncConfig,
  type SyncStartInfo,
  type SyncStatus,
  type SyncToMain,
  type WireBatch,
} from '../protocol.ts';
import { timelineBatch } from '../sync/process.ts';
import type { Pacer } from '../pacing.ts';
import type { ClusterRole } from './index.ts';
import { SharedPacer } from './pacing.ts';
import type { Broker, Delivery, KeyStore } from './nats.ts';
import { type HandOver, Ownership, type PartitionOwner, type Takeover } from './ownership.ts';
import { OwnedPartition, type PartitionSink, type Prepared } from './partition.ts';
import { decodeEvent } from './wire.ts';

/** Bound of a worker's request to the ingest (room state, presence); encryption gets the crypto actor's own. */
const RPC_MS = 10_000;

/** The worker's part of a clustered client; see the module comment. */
export class WorkerRole implements ClusterRole {
  readonly role = 'worker';
  readonly strategy: ActorStrategy;
  private readonly logger: Logger;

  constructor(
    core: ClientCore,
    private readonly broker: Broker,
    store: KeyStore,
    partitions: number,
    ackWaitMs: number,
    identity: CryptoIdentity | null,
  ) {
    this.logger = core.opts.logger;
    this.strategy = {
      build: (encryption): ActorSet => {
        const [mainSide, consumerSide] = localPortPair<SyncToMain, MainToSync>();
        const consumer = new PartitionConsumer(broker, store, partitions, consumerSide, core.opts.logger, ackWaitMs);
        return {
          sync: inThreadActor<SyncActorApi>('sync', consumer, SYNC_DEADLINES),
          cache: inThreadActor<CacheActorApi>('cache', new RemoteCache(broker), CACHE_DEADLINES),
          crypto: encryption ? inThreadActor<CryptoActorApi>('crypto', new RemoteCrypto(broker, identity), CRYPTO_DEADLINES) : null,
          port: mainSide,
          cryptoPort: null,
        };
      },
    };
  }

  publishTask(): null {
    return null;
  }

  sharedPacer(local: Pacer): Pacer {
    return new SharedPacer(this.broker, local, this.logger);
  }

  running(): void {}

  ready(): void {}

  leading(): Promise<void> {
    return Promise.resolve();
  }

  async close(): Promise<void> {
    await this.broker.close();
  }
}

/** This worker's name in the lease bucket (a key: letters, digits, `_` and `-`): host, process and a random tag. */
function workerId(): string {
  return `${hostname().replace(/[^A-Za-z0-9_-]/g, '_').slice(0, 40)}-${process.pid}-${randomBytes(4).toString('hex')}`;
}

/** An empty batch: the first of a run (it fires `ready`), or one that only reports errors. */
function emptyBatch(seq: number, first: boolean, errors: WireBatch['errors'] = []): WireBatch {
  return { ...timelineBatch(new Map(), { wantedTypes: null }), seq, first, redelivered: false, done: null, errors };
}

/** A delivery read once: its room, and the batch it becomes (null: not a Halcyon event, reported instead). */
interface PreparedEvent extends Prepared {
  readonly make: ((seq: number, redelivered: boolean) => WireBatch) | null;
  readonly error: string;
}

/**
 * The sync actor's stand-in on a worker: the partitions this worker owns (ownership.ts, partition.ts), their
 * events as batches of one on the sync port; the intake's acknowledgement of a batch acks its event.
 */
export class PartitionConsumer implements SyncActorApi, PartitionSink, PartitionOwner {
  private seq = 0;
  private userId = '';
  /** Batches posted and not yet acknowledged by the intake: their partition and stream sequence. */
  private readonly inFlight = new Map<number, { part: OwnedPartition; seq: number }>();
  private readonly owned = new Map<number, OwnedPartition>();
  private ownership: Ownership | null = null;
  private running = false;
  private delivered = 0;
  /** How long a hand-over waits for running handlers: the ack wait while running, the stop's drain when stopping. */
  private drainMs: number;
  private heartbeat: NodeJS.Timeout | null = null;

  constructor(
    private readonly broker: Broker,
    private readonly store: KeyStore,
    private readonly partitions: number,
    private readonly port: Port<MainToSync, SyncToMain>,
    readonly logger: Logger,
    readonly ackWaitMs: number,
  ) {
    this.drainMs = ackWaitMs;
  }

  async start(config: SyncConfig): Promise<SyncStartInfo> {
    this.seq = config.seqFloor;
    this.userId = config.userId;
    this.running = true;
    this.port.onMessage((msg) => this.acked(msg));
    this.port.post({ kind: 'batch', batch: emptyBatch(++this.seq, true) });
    this.ownership = new Ownership(this.store, this.partitions, workerId(), this, this.logger);
    this.ownership.start();
    // A handler that runs longer than the ack wait must not have its event given to another worker meanwhile.
    const every = Math.max(500, Math.round(this.ackWaitMs / 3));
    let last = Date.now();
    this.heartbeat = setInterval(() => {
      const now = Date.now();
      // Two missed beats leave the server a third of the ack wait: a stalled event loop risks redeliveries.
      if (now - last > 2 * every) this.logger.warn({ gapMs: now - last, ackWaitMs: this.ackWaitMs }, 'cluster: the progress signal of running handlers was late');
      last = now;
      for (const part of this.owned.values()) part.working();
    }, every);
    this.heartbeat.unref();
    return { resumed: true };
  }

  acquired(p: number, how: Takeover, at: number): void {
    this.owned.set(p, new OwnedPartition(p, this.broker, this, how, at));
  }

  async handOver(p: number, wanted: () => boolean): Promise<HandOver> {
    const part = this.owned.get(p);
    if (!part) return 'unclean';
    // While running (a rebalance) a handler that outlives the wait keeps its partition here; a stop gives it back.
    const how = await part.handOver(this.drainMs, this.running, wanted);
    if (how !== 'kept' && this.owned.get(p) === part) this.owned.delete(p);
    return how;
  }

  lost(p: number, why: string): void {
    this.logger.warn({ partition: p, why }, 'cluster: this worker lost a partition; it stops handling its events');
    this.owned.get(p)?.lose();
    this.owned.delete(p);
  }

  prepare(d: Delivery): PreparedEvent {
    try {
      const { head, event } = decodeEvent(d.data);
      const b = timelineBatch(new Map([[head.roomId, [event]]]), { wantedTypes: null, ownUserId: this.userId });
      // Own, notice and escape bits are recomputed from the event; what only the ingest knew comes from the head.
      const carried = head.flags & (EVENT_FLAGS.encrypted | EVENT_FLAGS.late);
      for (let i = 0; i < b.events.count; i++) b.events.flags[i] = b.events.flags[i]! | carried;
      const make = (seq: number, redelivered: boolean): WireBatch => ({ ...b, seq, redelivered: redelivered || head.redelivered, done: null, summaries: head.summary ? [head.summary] : [] });
      return { roomId: head.roomId, eventId: typeof event.event_id === 'string' ? event.event_id : '', make, error: '' };
    } catch (err) {
      return { roomId: '', eventId: '', make: null, error: (err as Error).message };
    }
  }

  post(prepared: Prepared, redelivered: boolean, streamSeq: number, part: OwnedPartition): void {
    const { make, error } = prepared as PreparedEvent;
    const seq = ++this.seq;
    let batch: WireBatch;
    if (make) batch = make(seq, redelivered);
    else {
      const e = new HalcyonError('HALCYON_CLUSTER', `a message on the bot's stream is not a Halcyon event; dropped: ${error}`);
      batch = emptyBatch(seq, false, [toWireError(e, 'HALCYON_CLUSTER')]);
    }
    this.inFlight.set(seq, { part, seq: streamSeq });
    this.delivered++;
    this.port.post({ kind: 'batch', batch });
  }

  /** The intake acknowledged batches: their events are acked (a batch holds one event, so it completes whole). */
  private acked(msg: MainToSync): void {
    for (const seq of msg.complete) {
      const f = this.inFlight.get(seq);
      if (!f) continue;
      this.inFlight.delete(seq);
      f.part.acked(f.seq);
    }
  }

  /** Hands every partition over (waiting up to `drainMs` for running handlers) and leaves the membership. */
  async stop(drainMs = 0): Promise<void> {
    this.running = false;
    this.drainMs = drainMs;
    await this.ownership?.stop();
    this.ownership = null;
    if (this.heartbeat) clearInterval(this.heartbeat);
    this.heartbeat = null;
    this.inFlight.clear();
  }

  async status(): Promise<SyncStatus> {
    const now = Date.now();
    let n = 0;
    for (const part of this.owned.values()) n += part.size;
    return { running: this.running, since: null, polls: this.delivered, consecutiveErrors: 0, inFlightEvents: n, backlogEvents: n, waitingForCredit: false, nextPollAt: null, lastPollStartAt: now, lastSuccessAt: now };
  }

  async setWantedTypes(): Promise<void> {}

  /** The consumer runs on main's thread: main's memory (the report's `thread: 'main'`). */
  async memory(collect?: boolean): Promise<ActorMemory> {
    return threadMemory({ collect: collect === true });
  }

  async setPresence(state: SyncConfig['setPresence']): Promise<void> {
    await this.broker.request('setPresence', { state }, RPC_MS);
  }
}

/** The ingest's cache, over request/reply. */
export class RemoteCache implements CacheActorApi {
  constructor(private readonly broker: Broker) {}
  async open(): Promise<void> {}
  apply(changes: StateChanges): Promise<RoomSummary[]> {
    return this.broker.request('apply', changes, RPC_MS);
  }
  /** Nothing is held here: the ingest's cache writes what it applies at once. */
  async commit(): Promise<void> {}
  async getRoom(roomId: string): Promise<RoomInfo | undefined> {
    return (await this.broker.request('getRoom', { roomId }, RPC_MS)) ?? undefined;
  }
  async summaries(): Promise<RoomSummary[]> {
    const out: RoomSummary[] = [];
    for (;;) {
      const page = await this.broker.request('summaries', { offset: out.length }, RPC_MS);
      out.push(...page.summaries);
      if (!page.more || page.summaries.length === 0) return out;
    }
  }
  async accountData(roomId: string | null, type: string): Promise<Record<string, unknown> | undefined> {
    return (await this.broker.request('accountData', { roomId, type }, RPC_MS)) ?? undefined;
  }
  async close(): Promise<void> {}
}

/** The ingest's crypto actor, over request/reply: encryption and room settings; events arrive decrypted. */
export class RemoteCrypto implements CryptoActorApi {
  constructor(
    private readonly broker: Broker,
    private readonly identity: CryptoIdentity | null,
  ) {}
  async open(): Promise<CryptoIdentity> {
    if (!this.identity) throw new HalcyonError('HALCYON_INVALID_ARGUMENT', 'the ingest runs without encryption: create its workers with encryption: false');
    return this.identity;
  }
  /** The ingest's actor sends the requests: nothing is held here. */
  async release(): Promise<void> {}
  async receiveSyncChanges(): Promise<void> {}
  async decrypt(): Promise<never> {
    throw new HalcyonError('HALCYON_INTERNAL', 'a cluster worker receives its events decrypted');
  }
  encrypt(roomId: string, type: string, content: Record<string, unknown>): Promise<EncryptResult> {
    return this.broker.request('encrypt', { roomId, type, content }, CRYPTO_DEADLINES.encrypt - 5_000);
  }
  isRoomEncrypted(roomId: string): Promise<boolean> {
    return this.broker.request('isRoomEncrypted', { roomId }, RPC_MS);
  }
  async setWantedTypes(): Promise<void> {}
  async status(): Promise<CryptoStatus> {
    const s = await this.broker.request('cryptoStatus', null, RPC_MS);
    if (!s) throw new HalcyonError('HALCYON_CLUSTER', 'the ingest runs without encryption');
    return s;
  }
  /** Nothing of the crypto engine runs here: main's memory. */
  async memory(collect?: boolean): Promise<ActorMemory> {
    return threadMemory({ collect: collect === true });
  }
  async setupIdentity(): Promise<IdentitySetupResult> {
    throw onIngest('the device identity is set up by logging in');
  }
  async answerVerification(): Promise<void> {
    throw onIngest('verification');
  }
  async confirmVerification(): Promise<void> {
    throw onIngest('verification');
  }
  async cancelVerification(): Promise<void> {
    throw onIngest('verification');
  }
  async requestVerification(): Promise<string[]> {
    throw onIngest('verification');
  }
  async close(): Promise<void> {}
}

/** What a worker refuses: the device's crypto engine is the ingest's (its identity, its verifications). */
function onIngest(what: string): HalcyonError {
  return new HalcyonError('HALCYON_INVALID_ARGUMENT', `cluster: ${what} runs on the ingest (the owner of the device's crypto store), not on a worker`);
}
