/**
 * The `cluster` option of a client (scale-out on NATS JetStream): its public type, its defaults, and the one check
 * that runs in `new Client()` (bad values fail there, not on the first event).
 */
import { HalcyonError } from '../errors.ts';

/** Scale-out: one bot across processes and machines, over NATS JetStream; see the README's "Scale-out" section. */
export interface ClusterOptions {
  /** NATS server URLs (`nats://host:4222`), one or several of the same cluster. */
  servers: string | string[];
  /**
   * The bot's name in the cluster: its stream, subjects and keys are namespaced by it, so one NATS serves many
   * bots. Letters, digits, `_` and `-`, at most 64. Every process of one bot uses the same name.
   */
  name: string;
  /**
   * `worker` (default): runs the handlers for the events of the partitions it is given. `ingest`: syncs,
   * decrypts and publishes (one is active per bot; others stand by and take over when its lease expires).
   */
  role?: 'worker' | 'ingest';
  /** Partitions of the event stream (rooms are spread by a hash of their ID); fixed when the stream is created. Default 16. */
  partitions?: number;
  /**
   * How long the ingest's lease lives without renewal: a standby takes over this long after the leader died. The
   * ingest's value also bounds the workers' keys (their membership, the partitions each owns): a dead worker's
   * partitions move this long after it died (a worker's own value is not used). Default 10,000 ms.
   */
  leaseTtlMs?: number;
  /**
   * How long a dead worker's event waits before it goes to another worker: the ack wait of the partitions'
   * consumers, set by the ingest that creates them (a worker's own value is not used). A live worker's running
   * handlers keep their events by telling the server every third of it. Default 30,000 ms.
   */
  ackWaitMs?: number;
  /** Replicas of the stream and buckets in a NATS cluster (1, or 3 for a 3-node production cluster). Default 1. */
  replicas?: number;
  /** Credentials for NATS, when the server asks for them: a token, or a user and password. */
  auth?: { token: string } | { user: string; pass: string };
}

/** {@link ClusterOptions} with every default filled in. */
export type ResolvedCluster = Required<Omit<ClusterOptions, 'servers' | 'auth'>> & { servers: string[]; auth: ClusterOptions['auth'] | null };

/** The defaults of {@link ClusterOptions}. */
export const CLUSTER_DEFAULTS = { role: 'worker', partitions: 16, leaseTtlMs: 10_000, ackWaitMs: 30_000, replicas: 1 } as const;

/** Fills in the defaults of a `cluster` option and checks it; throws `HALCYON_INVALID_ARGUMENT` naming what is wrong. */
export function resolveCluster(c: ClusterOptions): ResolvedCluster {
  const bad = (what: string) => new HalcyonError('HALCYON_INVALID_ARGUMENT', `cluster: ${what}`);
  if (typeof c !== 'object' || c === null) throw bad('must be an object { servers, name, role? }');
  const servers = typeof c.servers === 'string' ? [c.servers] : c.servers;
  if (!Array.isArray(servers) || servers.length === 0 || !servers.every((s) => typeof s === 'string' && s !== '')) throw bad('servers must be a NATS URL or a non-empty list of them');
  if (typeof c.name !== 'string' || !/^[A-Za-z0-9_-]{1,64}$/.test(c.name)) throw bad('name must be 1-64 letters, digits, _ or - (it names NATS subjects and streams)');
  const d = CLUSTER_DEFAULTS;
  // `undefined` means the default (a spread would let it override one).
  const r: ResolvedCluster = {
    servers,
    name: c.name,
    role: c.role ?? d.role,
    partitions: c.partitions ?? d.partitions,
    leaseTtlMs: c.leaseTtlMs ?? d.leaseTtlMs,
    ackWaitMs: c.ackWaitMs ?? d.ackWaitMs,
    replicas: c.replicas ?? d.replicas,
    auth: c.auth ?? null,
  };
  if (r.role !== 'worker' && r.role !== 'ingest') throw bad(`role must be 'worker' or 'ingest', not ${JSON.stringify(r.role)}`);
  const int = (v: unknown, min: number, max: number) => Number.isInteger(v) && (v as number) >= min && (v as number) <= max;
  if (!int(r.partitions, 1, 1024)) throw bad('partitions must be an integer from 1 to 1024');
  if (!int(r.leaseTtlMs, 1_000, 600_000)) throw bad('leaseTtlMs must be an integer from 1,000 to 600,000');
  if (!int(r.ackWaitMs, 1_000, 3_600_000)) throw bad('ackWaitMs must be an integer from 1,000 to 3,600,000');
  if (!int(r.replicas, 1, 5)) throw bad('replicas must be an integer from 1 to 5');
  const a = r.auth as Record<string, unknown> | null;
  if (a !== null && !(typeof a.token === 'string' || (typeof a.user === 'string' && typeof a.pass === 'string'))) throw bad('auth must be { token } or { user, pass }');
  return r;
}
