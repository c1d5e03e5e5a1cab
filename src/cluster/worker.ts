/**
 * A worker's role: an actor set of its own behind the same handles and ports as the local ones, so the rest of
 * the client — intake, dispatcher, handlers, outbox, the API — runs unchanged:
 *
 * - in the sync actor's place, {@link PartitionConsumer}: it pulls the bot's partitions and posts each event as a
 *   batch of one on the sync port; the intake's acknowledgement of the batch (its handlers settled) acks the
 *   message. Each partition's consumer lets one message be unacknowledged at a time, so a room's events reach
 *   handlers in order whichever worker pulls them; a worker that dies leaves its message unacknowledged, and the
 *   server gives it to another worker after the ack wait, `redelivered`.
 * - in the cache actor's place, {@link RemoteCache}: the ingest's cache over request/reply.
 * - in the crypto actor's place, {@link RemoteCrypto}: the ingest's crypto actor over request/reply (the OlmMachine
 *   has one owner); the worker then sends the encrypted content itself, with its deterministic transaction ID.
 */
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
import type { Broker, Delivery } from './nats.ts';
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
    partitions: number,
    ackWaitMs: number,
    identity: CryptoIdentity | null,
  ) {
    this.logger = core.opts.logger;
    this.strategy = {
      build: (encryption): ActorSet => {
        const [mainSide, consumerSide] = localPortPair<SyncToMain, MainToSync>();
        const consumer = new PartitionConsumer(broker, partitions, consumerSide, core.opts.logger, ackWaitMs);
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

  async close(): Promise<void> {
    await this.broker.close();
  }
}

/** An empty batch: the first of a run (it fires `ready`), or one that only reports errors. */
function emptyBatch(seq: number, first: boolean, errors: WireBatch['errors'] = []): WireBatch {
  return { ...timelineBatch(new Map(), { wantedTypes: null }), seq, first, redelivered: false, done: null, errors };
}

/** The sync actor's stand-in on a worker: the bot's partitions as batches of one event; see the module comment. */
export class PartitionConsumer implements SyncActorApi {
  private seq = 0;
  private userId = '';
  private readonly inFlight = new Map<number, Delivery>();
  private stops: Array<() => Promise<void>> = [];
  private running = false;
  private delivered = 0;
  private idle: (() => void) | null = null;
  private heartbeat: NodeJS.Timeout | null = null;

  constructor(
    private readonly broker: Broker,
    private readonly partitions: number,
    private readonly port: Port<MainToSync, SyncToMain>,
    private readonly logger: Logger,
    private readonly ackWaitMs: number,
  ) {}

  async start(config: SyncConfig): Promise<SyncStartInfo> {
    this.seq = config.seqFloor;
    this.userId = config.userId;
    this.running = true;
    this.port.onMessage((msg) => this.acked(msg));
    this.port.post({ kind: 'batch', batch: emptyBatch(++this.seq, true) });
    for (let p = 0; p < this.partitions; p++) this.stops.push(await this.broker.consume(p, (d) => this.receive(d)));
    // A handler that runs longer than the ack wait must not have its event given to another worker meanwhile.
    this.heartbeat = setInterval(() => {
      for (const d of this.inFlight.values()) d.working();
    }, Math.max(500, Math.round(this.ackWaitMs / 3)));
    this.heartbeat.unref();
    return { resumed: true };
  }

  private receive(d: Delivery): void {
    if (!this.running) return; // not acknowledged: the server gives it to another worker
    const seq = ++this.seq;
    let batch: WireBatch;
    try {
      const { head, event } = decodeEvent(d.data);
      const b = timelineBatch(new Map([[head.roomId, [event]]]), { wantedTypes: null, ownUserId: this.userId });
      // Own, notice and escape bits are recomputed from the event; what only the ingest knew comes from the head.
      const carried = head.flags & (EVENT_FLAGS.encrypted | EVENT_FLAGS.late);
      for (let i = 0; i < b.events.count; i++) b.events.flags[i] = b.events.flags[i]! | carried;
      batch = { ...b, seq, redelivered: d.redelivered || head.redelivered, done: null, summaries: head.summary ? [head.summary] : [] };
    } catch (err) {
      const e = new HalcyonError('HALCYON_CLUSTER', `a message on the bot's stream is not a Halcyon event; dropped: ${(err as Error).message}`);
      batch = emptyBatch(seq, false, [toWireError(e, 'HALCYON_CLUSTER')]);
    }
    this.inFlight.set(seq, d);
    this.delivered++;
    this.port.post({ kind: 'batch', batch });
  }

  /** The intake acknowledged batches: their messages are acked (a batch holds one event, so it completes whole). */
  private acked(msg: MainToSync): void {
    for (const seq of msg.complete) {
      const d = this.inFlight.get(seq);
      if (!d) continue;
      this.inFlight.delete(seq);
      d.ack();
    }
    if (this.inFlight.size === 0) this.idle?.();
  }

  /** Stops pulling; waits up to `drainMs` for handlers to finish; what is still running goes back to the stream now. */
  async stop(drainMs = 0): Promise<void> {
    this.running = false;
    const stops = this.stops;
    this.stops = [];
    await Promise.all(stops.map((s) => s()));
    if (this.inFlight.size > 0 && drainMs > 0) {
      let timer: NodeJS.Timeout | undefined;
      await new Promise<void>((resolve) => {
        this.idle = resolve;
        timer = setTimeout(resolve, drainMs);
      });
      clearTimeout(timer);
      this.idle = null;
    }
    if (this.heartbeat) clearInterval(this.heartbeat);
    this.heartbeat = null;
    if (this.inFlight.size > 0) this.logger.warn({ events: this.inFlight.size }, 'cluster: handlers still running at stop; their events go to another worker');
    for (const d of this.inFlight.values()) d.nak();
    this.inFlight.clear();
  }

  async status(): Promise<SyncStatus> {
    const now = Date.now();
    const n = this.inFlight.size;
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
