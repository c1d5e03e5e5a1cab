/**
 * The one door to NATS: the only module that imports `@nats-io/transport-node`, `@nats-io/jetstream` and
 * `@nats-io/kv` (a test checks it). It loads them on first use, so a bot that is not in a cluster never loads them
 * (start-up time), and with `require` (they are CommonJS), not `import()`: an `import(` in the bundle makes
 * loaders such as tsx transform the whole bundle and keep its source map, ~40 MB of a bot's start-up peak RSS. {@link Broker} is all the rest of the cluster code sees: the bot's stream and
 * its partition consumers, publish with de-duplication, request/reply, and the lease bucket.
 *
 * Names, all derived from the bot's cluster name so one NATS serves many bots: the stream `HALCYON_<name>`, its
 * subjects `halcyon.<name>.ev.<partition>`, durable consumers `p<partition>`, request subjects
 * `halcyon.<name>.rpc.<method>`, and the KV bucket `halcyon_<name>_lease`.
 */
import { createRequire } from 'node:module';
import type { JetStreamClient, JetStreamManager, JsMsg } from '@nats-io/jetstream';
import type { KV } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import { fromWireError, HalcyonError, toWireError } from '../errors.ts';
import { delay } from '../http.ts';
import type { Logger } from '../log.ts';
import type { ClusterRpc, ClusterRpcAnswer } from './wire.ts';
import type { ResolvedCluster } from './options.ts';

/**
 * The stream's de-duplication window: an event published again within it (by an ingest that restarted or took
 * over before its journal recorded the first publish) is dropped by its event ID.
 */
const DUPLICATE_WINDOW_MS = 10 * 60_000;
/** How long the stream keeps events, handled or not (more than the window: see ensureTopology). */
const STREAM_MAX_AGE_MS = 60 * 60_000;

/** Pause before a partition's consumption that ended is started again. */
const CONSUME_RETRY_MS = 500;

/** How long a publish waits for the stream's acknowledgement before it counts as failed (and is retried). */
const PUBLISH_TIMEOUT_MS = 10_000;

/** One message a worker consumes from a partition. */
export interface Delivery {
  readonly data: Uint8Array;
  /** Delivered before (to a worker that died or did not acknowledge it within the ack wait). */
  readonly redelivered: boolean;
  ack(): void;
  /** Gives it back: the server delivers it again at once (to any worker). */
  nak(): void;
  /** Tells the server the handler is still running: the ack wait starts again. */
  working(): void;
}

/** A compare-and-set register with a time to live: the ingest's lease. */
export interface LeaseStore {
  /** Creates the key if it does not exist (or expired); resolves with its revision, or null if it exists. */
  create(key: string, value: string): Promise<number | null>;
  /** Writes the key if its revision is still `rev`; resolves with the new revision, or null if another wrote it. */
  update(key: string, value: string, rev: number): Promise<number | null>;
  /** Deletes the key if its revision is still `rev` (a clean hand-over). */
  release(key: string, rev: number): Promise<void>;
  /** The key's value, or null. */
  get(key: string): Promise<string | null>;
}

const enc = new TextEncoder();
const dec = new TextDecoder();

/** Loads a `@nats-io` package on first use (see the module comment for why `require`). */
const requireCjs = createRequire(import.meta.url);
function load<T>(name: string): T {
  return requireCjs(name) as T;
}

/** The bot's view of NATS: one connection, its stream, its consumers, requests and the lease. */
export class Broker {
  readonly stream: string;
  private closing = false;

  private constructor(
    private readonly nc: NatsConnection,
    private readonly js: JetStreamClient,
    private readonly jsm: JetStreamManager,
    private readonly cfg: ResolvedCluster,
    private readonly logger: Logger,
  ) {
    this.stream = `HALCYON_${cfg.name}`;
  }

  /**
   * Connects (reconnecting for ever after a loss: a NATS restart is waited out, never fatal) and reports
   * disconnects and reconnects to the log. Fails with `HALCYON_CLUSTER` if no server answers at first.
   */
  static async connect(cfg: ResolvedCluster, logger: Logger, role: string): Promise<Broker> {
    const [{ connect }, { jetstream, jetstreamManager }] = [load<typeof import('@nats-io/transport-node')>('@nats-io/transport-node'), load<typeof import('@nats-io/jetstream')>('@nats-io/jetstream')];
    let nc: NatsConnection;
    try {
      nc = await connect({
        servers: cfg.servers,
        name: `halcyon-${cfg.name}-${role}`,
        maxReconnectAttempts: -1,
        reconnectTimeWait: 250,
        ...(cfg.auth ?? {}),
      });
    } catch (err) {
      throw new HalcyonError('HALCYON_CLUSTER', `cannot connect to NATS at ${cfg.servers.join(', ')}: ${(err as Error).message}`, { cause: err });
    }
    void (async () => {
      for await (const s of nc.status()) {
        if (s.type === 'disconnect') logger.warn({ server: s.server }, 'cluster: lost the connection to NATS; reconnecting');
        else if (s.type === 'reconnect') logger.warn({ server: s.server }, 'cluster: reconnected to NATS');
      }
    })().catch(() => {});
    const broker = new Broker(nc, jetstream(nc), await jetstreamManager(nc, { timeout: 10_000 }), cfg, logger);
    return broker;
  }

  /** The subject of partition `p`. */
  subject(p: number): string {
    return `halcyon.${this.cfg.name}.ev.${p}`;
  }

  /**
   * Creates the bot's stream and one durable consumer per partition, or checks the existing ones. The stream
   * keeps events for an hour (handled or not) with de-duplication by message ID; each durable consumer remembers
   * which events of its partition were acknowledged and delivers one event at a time (`max_ack_pending: 1`), which keeps every room of the partition in
   * order whichever worker pulls it. Resolves with the stream's partition count (fixed at creation).
   */
  async ensureTopology(): Promise<number> {
    const { AckPolicy, DeliverPolicy, RetentionPolicy, StorageType } = load<typeof import('@nats-io/jetstream')>('@nats-io/jetstream');
    const c = this.cfg;
    let partitions = c.partitions;
    try {
      const info = await this.jsm.streams.info(this.stream);
      partitions = Number(info.config.metadata?.partitions ?? NaN);
      if (!Number.isInteger(partitions) || partitions < 1) throw new HalcyonError('HALCYON_CLUSTER', `stream ${this.stream} exists but was not made by Halcyon (no partition count)`);
    } catch (err) {
      if (err instanceof HalcyonError) throw err;
      if (!isNotFound(err)) throw clusterError(`cannot read stream ${this.stream}`, err);
      await this.jsm.streams
        .add({
          name: this.stream,
          subjects: [`halcyon.${c.name}.ev.*`],
          // Limits, not a work queue: the server rebuilds its de-duplication memory from the messages it still has
          // after a restart, so acknowledged events must stay for longer than the window.
          retention: RetentionPolicy.Limits,
          max_age: STREAM_MAX_AGE_MS * 1_000_000,
          storage: StorageType.File,
          num_replicas: c.replicas,
          // A restarted ingest publishes its journal's unfinished events again: within this window they are dropped.
          duplicate_window: DUPLICATE_WINDOW_MS * 1_000_000,
          metadata: { partitions: String(partitions) },
        })
        .catch((e: unknown) => {
          throw clusterError(`cannot create stream ${this.stream}`, e);
        });
    }
    for (let p = 0; p < partitions; p++) {
      const config = {
        durable_name: `p${p}`,
        filter_subject: this.subject(p),
        ack_policy: AckPolicy.Explicit,
        deliver_policy: DeliverPolicy.All,
        max_ack_pending: 1,
        ack_wait: c.ackWaitMs * 1_000_000,
      };
      await this.jsm.consumers.add(this.stream, config).catch((e: unknown) => {
        throw clusterError(`cannot create consumer p${p} of ${this.stream}`, e);
      });
    }
    return partitions;
  }

  /** The stream's partition count once the ingest has created it (waits for it, checking every second). */
  async partitions(signal: AbortSignal): Promise<number> {
    for (;;) {
      try {
        const info = await this.jsm.streams.info(this.stream);
        const n = Number(info.config.metadata?.partitions ?? NaN);
        if (Number.isInteger(n) && n >= 1) return n;
      } catch (err) {
        if (!isNotFound(err)) throw clusterError(`cannot read stream ${this.stream}`, err);
      }
      await delay(1_000, signal);
    }
  }

  /**
   * The ack wait of the partitions' consumers, as the ingest that created them set it (a worker's handlers must
   * signal progress within it, whatever the worker's own options say).
   */
  async ackWaitMs(): Promise<number> {
    try {
      const info = await this.jsm.consumers.info(this.stream, 'p0');
      return Math.round((info.config.ack_wait ?? 30_000_000_000) / 1_000_000); // the server's default: 30 s
    } catch (err) {
      throw clusterError(`cannot read consumer p0 of ${this.stream}`, err);
    }
  }

  /** Publishes `data` to partition `p` with de-duplication by `msgId`; resolves when the stream has it (duplicates too). */
  async publish(p: number, msgId: string, data: Uint8Array): Promise<void> {
    await this.js.publish(this.subject(p), data, { msgID: msgId, timeout: PUBLISH_TIMEOUT_MS });
  }

  /**
   * Consumes partition `p`: `onMessage` gets each delivery (one at a time per partition, by the consumer's
   * settings). Resolves with a stop function once the consumer is found. A consumption that ends on its own (the
   * server restarted, the consumer was not found for a moment) is started again, so a worker never stops pulling
   * a partition while it runs.
   */
  async consume(p: number, onMessage: (d: Delivery) => void): Promise<() => Promise<void>> {
    const consumer = await this.js.consumers.get(this.stream, `p${p}`);
    let current = await consumer.consume({ max_messages: 4, expires: 10_000 });
    let stopped = false;
    const stop = new AbortController();
    const done = (async () => {
      for (;;) {
        try {
          for await (const m of current) onMessage(wrap(m));
        } catch (err) {
          if (!stopped) this.logger.warn({ partition: p, err: (err as Error).message }, 'cluster: consuming a partition failed; starting again');
        }
        if (stopped) return;
        await delay(CONSUME_RETRY_MS, stop.signal);
        try {
          current = await (await this.js.consumers.get(this.stream, `p${p}`)).consume({ max_messages: 4, expires: 10_000 });
        } catch {
          // tried again after the next pause: the iterator below is the finished one, which ends at once
        }
      }
    })().catch(() => {}); // HALCYON_STOPPED from the pause
    return async () => {
      stopped = true;
      stop.abort();
      await current.close().catch(() => {});
      await done;
    };
  }

  /**
   * Sends a request to the ingest and resolves with its result; rejects with the ingest's error, or with
   * `HALCYON_CLUSTER` when nobody answers (no ingest is leading) or not within `timeoutMs`.
   */
  async request<M extends keyof ClusterRpc>(method: M, body: ClusterRpc[M]['req'], timeoutMs: number): Promise<ClusterRpc[M]['res']> {
    let answer: ClusterRpcAnswer<ClusterRpc[M]['res']>;
    try {
      const m = await this.nc.request(`halcyon.${this.cfg.name}.rpc.${method}`, enc.encode(JSON.stringify(body)), { timeout: timeoutMs });
      answer = JSON.parse(dec.decode(m.data)) as ClusterRpcAnswer<ClusterRpc[M]['res']>;
    } catch (err) {
      throw clusterError(`no answer from the ingest to ${method}`, err);
    }
    if ('error' in answer) throw fromWireError(answer.error);
    return answer.ok;
  }

  /** Answers requests for `halcyon.<name>.rpc.*`: `handle` gets the method and body; its result or error is the answer. */
  serve(handle: (method: string, body: unknown) => Promise<unknown>): () => void {
    const prefix = `halcyon.${this.cfg.name}.rpc.`;
    const sub = this.nc.subscribe(`${prefix}*`, {
      callback: (err, m) => {
        if (err) return;
        void (async () => {
          let out: ClusterRpcAnswer<unknown>;
          try {
            out = { ok: (await handle(m.subject.slice(prefix.length), JSON.parse(dec.decode(m.data)))) ?? null };
          } catch (e) {
            const w = toWireError(e, 'HALCYON_INTERNAL');
            delete w.stack;
            out = { error: w };
          }
          if (!this.closing) m.respond(enc.encode(JSON.stringify(out)));
        })();
      },
    });
    return () => sub.unsubscribe();
  }

  /** The lease bucket: entries expire `ttlMs` after their last write. */
  async leaseStore(ttlMs: number): Promise<LeaseStore> {
    const { Kvm } = load<typeof import('@nats-io/kv')>('@nats-io/kv');
    let kv: KV;
    try {
      kv = await new Kvm(this.nc).create(`halcyon_${this.cfg.name}_lease`, { ttl: ttlMs, history: 1, replicas: this.cfg.replicas });
    } catch (err) {
      throw clusterError('cannot open the lease bucket', err);
    }
    const wrongRevision = (e: unknown) => /wrong last sequence|key exists/i.test((e as Error).message ?? '');
    return {
      create: (key, value) => kv.create(key, value).catch((e: unknown) => (wrongRevision(e) ? null : Promise.reject(e))),
      update: (key, value, rev) => kv.update(key, value, rev).catch((e: unknown) => (wrongRevision(e) ? null : Promise.reject(e))),
      release: async (key, rev) => {
        await kv.delete(key, { previousSeq: rev }).catch(() => {});
      },
      get: async (key) => {
        const e = await kv.get(key);
        return e && e.operation === 'PUT' ? e.string() : null;
      },
    };
  }

  /** Ends the connection (pending publishes and requests settle first, for a moment). */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    await this.nc.drain().catch(() => this.nc.close());
  }
}

/** Whether a JetStream error says the stream or consumer does not exist. */
function isNotFound(err: unknown): boolean {
  const e = err as { code?: unknown; message?: unknown; api_error?: { err_code?: number } };
  return e.api_error?.err_code === 10059 || e.api_error?.err_code === 10014 || /not found/i.test(String(e.message));
}

/** A coded error for a NATS failure. */
export function clusterError(what: string, err: unknown): HalcyonError {
  return new HalcyonError('HALCYON_CLUSTER', `${what}: ${(err as Error).message ?? String(err)}`, { cause: err });
}

function wrap(m: JsMsg): Delivery {
  return {
    data: m.data,
    redelivered: m.redelivered,
    ack: () => m.ack(),
    nak: () => m.nak(),
    working: () => m.working(),
  };
}
