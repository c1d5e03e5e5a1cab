/**
 * Cluster mode (`new Client({ cluster })`): one bot across processes and machines on NATS JetStream. A client in
 * cluster mode plays one of two roles, each a part of the client like the others (core.ts holds it):
 *
 * - {@link IngestRole} (ingest.ts): the usual sync, cache and crypto actors, but the intake's tasks publish each
 *   decrypted event to the bot's stream instead of running handlers; it holds the lease, serves the workers'
 *   requests (room state, encryption, sends with one pacing budget).
 * - {@link WorkerRole} (worker.ts): an actor set built by a strategy of its own — the partitions' consumer in the
 *   sync actor's place, the ingest's cache and crypto over request/reply — behind which the rest of the client
 *   (intake, dispatcher, handlers, outbox) runs unchanged.
 */
import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import type { BatchReader } from '../events.ts';
import type { OutboxOp } from '../outbox.ts';
import type { ActorStrategy } from '../client/actors.ts';
import type { ClientCore } from '../client/core.ts';
import type { HandlerTask } from '../client/delivery.ts';
import { IngestRole } from './ingest.ts';
import { Lease } from './lease.ts';
import { Broker } from './nats.ts';
import type { ResolvedCluster } from './options.ts';
import { WorkerRole } from './worker.ts';

/** What the client's core sees of its cluster role. */
export interface ClusterRole {
  readonly role: 'ingest' | 'worker';
  /** A worker's actor set (the partitions' consumer, the ingest's cache and crypto); null on the ingest. */
  readonly strategy: ActorStrategy | null;
  /** On the ingest: the task that publishes event `i` of a batch instead of running handlers on it. */
  publishTask(r: BatchReader, i: number, roomId: string): HandlerTask | null;
  /**
   * One attempt of an outbox entry, paced by the one budget of the account (the ingest's): on the ingest it waits
   * for the pacer, then encrypts and sends; a worker asks the ingest to.
   */
  attempt(roomId: string, txnId: string, op: OutboxOp, allowPlaintext: boolean, signal: AbortSignal): Promise<string>;
  /** The client is running: the ingest starts answering the workers' requests. */
  running(): void;
  /** Ends the role: stops consuming or serving, gives the lease up, closes the connection. */
  close(): Promise<void>;
}

/**
 * Connects to NATS and starts the role of `cfg`. An ingest creates the stream if needed and waits for the lease
 * (a standby waits here until the leader is gone; `core.lifecycle` aborts the wait); a worker waits for the stream.
 */
export async function startCluster(core: ClientCore, cfg: ResolvedCluster): Promise<ClusterRole> {
  const broker = await Broker.connect(cfg, core.opts.logger, cfg.role);
  try {
    if (cfg.role === 'worker') return new WorkerRole(core, broker, await broker.partitions(core.lifecycle.signal));
    const partitions = await broker.ensureTopology();
    const lease = new Lease(await broker.leaseStore(cfg.leaseTtlMs), cfg.leaseTtlMs, `${hostname()}:${process.pid}:${randomBytes(4).toString('hex')}`, core.opts.logger);
    await lease.acquire(core.lifecycle.signal);
    return new IngestRole(core, broker, partitions, lease);
  } catch (err) {
    await broker.close();
    throw err;
  }
}
