/**
 * Cluster mode (`new Client({ cluster })`): one bot across processes and machines on NATS JetStream. A client in
 * cluster mode plays one of two roles, each a part of the client like the others (core.ts holds it):
 *
 * - {@link IngestRole} (ingest.ts): the usual sync, cache and crypto actors, but the intake's tasks publish each
 *   decrypted event to the bot's stream instead of running handlers; it holds the lease and answers the workers'
 *   requests (room state, encryption).
 * - {@link WorkerRole} (worker.ts): an actor set built by a strategy of its own — the partitions' consumer in the
 *   sync actor's place, the ingest's cache and crypto over request/reply — behind which the rest of the client
 *   (intake, dispatcher, handlers, outbox) runs unchanged.
 */
import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import { HalcyonError } from '../errors.ts';
import { delay } from '../abort.ts';
import type { BatchReader } from '../events.ts';
import type { Logger } from '../log.ts';
import type { ActorStrategy } from '../client/actors.ts';
import type { ClientCore } from '../client/core.ts';
import type { HandlerTask } from '../client/delivery.ts';
import type { Pacer } from '../pacing.ts';
import type { CryptoIdentity } from '../protocol.ts';
import { IngestRole } from './ingest.ts';
import { Lease } from './lease.ts';
import { Broker } from './nats.ts';
import type { ResolvedCluster } from './options.ts';
import { WorkerRole } from './worker.ts';

export type { ClusterOptions, ResolvedCluster } from './options.ts';
export { resolveCluster } from './options.ts';

/** What the client's core sees of its cluster role. */
export interface ClusterRole {
  readonly role: 'ingest' | 'worker';
  /** A worker's actor set (the partitions' consumer, the ingest's cache and crypto); null on the ingest. */
  readonly strategy: ActorStrategy | null;
  /** On the ingest: the task that publishes event `i` of a batch instead of running handlers on it; null on a worker. */
  publishTask(r: BatchReader, i: number, roomId: string): HandlerTask | null;
  /** On a worker: the outbox's pacer, `local` wrapped to pace by the account's budget on the ingest; null on the ingest. */
  sharedPacer(local: Pacer): Pacer | null;
  /** The client's actors run (again, after a restart): the ingest starts answering the workers' requests. */
  running(): void;
  /** The client is ready: its first batch is in, so main knows the rooms the bot is joined to. */
  ready(): void;
  /**
   * Resolves once this process may run its actors: at once, except on an ingest that lost its lease, where it
   * waits until it holds the lease again (rejects with `HALCYON_STOPPED` when the client stops first).
   */
  leading(): Promise<void>;
  /** Ends the role: stops serving, gives the lease up, closes the connection. */
  close(): Promise<void>;
}

/**
 * Connects to NATS and starts the role of `cfg`. An ingest creates the stream if needed and waits for the lease
 * (a standby waits here until the leader is gone; `core.lifecycle` aborts the wait). A worker waits for the
 * stream and for a leading ingest to answer, and checks that both agree on encryption.
 */
export async function startCluster(core: ClientCore, cfg: ResolvedCluster): Promise<ClusterRole> {
  const broker = await Broker.connect(cfg, core.opts.logger, cfg.role);
  try {
    const signal = core.lifecycle.signal;
    if (cfg.role === 'worker') {
      const partitions = await broker.partitions(signal);
      const identity = await ingestIdentity(broker, signal, core.opts.logger);
      if (identity === null && core.opts.encryption) {
        throw new HalcyonError('HALCYON_INVALID_ARGUMENT', 'cluster: the ingest runs without encryption, so its workers must too (encryption: false)');
      }
      const store = await broker.leaseStore(null, signal);
      return new WorkerRole(core, broker, store, partitions, await broker.ackWaitMs(), identity);
    }
    const partitions = await broker.ensureTopology();
    const lease = new Lease(await broker.leaseStore(cfg.leaseTtlMs), cfg.leaseTtlMs, `${hostname()}:${process.pid}:${randomBytes(4).toString('hex')}`, core.opts.logger);
    await lease.acquire(signal);
    return new IngestRole(core, broker, partitions, lease);
  } catch (err) {
    await broker.close();
    throw err;
  }
}

/** The ingest's identity keys (null: it runs without encryption), asked until a leading ingest answers. */
async function ingestIdentity(broker: Broker, signal: AbortSignal, logger: Logger): Promise<CryptoIdentity | null> {
  for (let told = false; ; told = true) {
    try {
      return await broker.request('identity', null, 5_000);
    } catch (err) {
      if ((err as HalcyonError).code !== 'HALCYON_CLUSTER') throw err;
      if (!told) logger.info({ err: (err as Error).message }, 'cluster: waiting for a leading ingest to answer');
    }
    await delay(500, signal);
  }
}
