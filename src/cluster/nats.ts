/**
 * The one door to NATS: the only module that imports `@nats-io/transport-node`, `@nats-io/jetstream` and
 * `@nats-io/kv` (a test checks it). It loads them on first use, so a bot that is not in a cluster never loads them
 * (start-up time; see src/lazy-require.ts). {@link Broker} is all the rest of the cluster code sees: the bot's stream and
 * its partition consumers, publish with de-duplication, request/reply, and the lease bucket.
 *
 * Names, all derived from the bot's cluster name so one NATS serves many bots: the stream `HALCYON_<name>`, its
 * subjects `halcyon.<name>.ev.<partition>`, durable consumers `p<partition>`, request subjects
 * `halcyon.<name>.rpc.<method>`, and the KV bucket `halcyon_<name>_lease`.
 */
import type { JetStreamClient, JetStreamManager, JsMsg } from '@nats-io/jetstream';
import type { KV } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import { lazyModule } from '../lazy-require.ts';
import { fromWireError, HalcyonError, toWireError } from '../errors.ts';
import { delay } from '../abort.ts';
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

/** How long one pull of a partition waits for messages (and so how long after a worker's last pull it can still get one). */
export const PULL_EXPIRES_MS = 2_000;

/**
 * How many events of one partition may be out (delivered, not acknowledged) at once: what its owner holds. 32
 * lets a few rooms of a partition each have their next events at hand while one runs (20 rooms over 16
 * partitions in the benchmark, 50 over 8 in the tests), so a handler that settles is followed at once by the next,
 * without a round trip to NATS; it is also what a dead worker leaves to be redelivered per partition, and how far
 * a busy room can keep the other rooms of its partition waiting (they queue behind its events in the server).
 */
export const MAX_ACK_PENDING = 32;

/** How long a publish waits for the stream's acknowledgement before it counts as failed (and is retried). */
const PUBLISH_TIMEOUT_MS = 10_000;

/** One message a worker consumes from a partition. */
export interface Delivery {
  readonly data: Uint8Array;
  /** Delivered before (to a worker that died or did not acknowledge it within the ack wait). */
  readonly redelivered: boolean;
  /** Its sequence in the stream (a room's events go out in this order). */
  readonly seq: number;
  /** Its delivery's sequence on the consumer: one more for each delivery, redeliveries too (a gap is a lost delivery). */
  readonly dseq: number;
  /** How many times the server has delivered it, this delivery included (diagnostics). */
  readonly deliveries: number;
  ack(): void;
  /**
   * Gives it back, confirmed: resolves once the server has queued it for redelivery (redeliveries go before new
   * events, in the order they were given back), so the next owner of its partition gets it first.
   */
  nak(): Promise<void>;
  /** Tells the server the handler is still running: the ack wait starts again. */
  working(): void;
}

/** A compare-and-set register with a time to live: the ingest's lease. */
export interface LeaseStore {
  /** Creates the key if it does not exist (or expired); resolves with its revision, or null if it exists. */
  create(key: string, value: string): Promise<number | null>;
  /**
   * Writes the key if its revision is still `rev`; resolves with the new revision, or null if another wrote it. A
   * key that moved on but holds `value` (a holder's value is unique to it) was moved by this holder's own other
   * update (one whose answer was lost with a NATS restart, or is still on its way): it resolves with that revision.
   */
  update(key: string, value: string, rev: number): Promise<number | null>;
  /**
   * Deletes the key if its revision is still `rev` (a clean hand-over). Resolves with null once the key is gone
   * (deleted now, or already deleted or expired), or, when the delete was refused because another write moved the
   * key on, with the value and revision it holds now (a holder's own renewal whose answer was lost, or another
   * holder's write: the caller tells them apart by the value). Rejects with `HALCYON_CLUSTER` when NATS did not
   * answer: the key may still be there, until its TTL.
   */
  release(key: string, rev: number): Promise<{ value: string; rev: number } | null>;
  /**
   * Writes the key again if it holds `value` (a holder's value is unique to it: a lease that stepped down and was
   * never released), by the revision it has now. Resolves with the new revision; null if the key holds another
   * value, is gone, or moved between the read and the write (the caller tries again later).
   */
  retake(key: string, value: string): Promise<number | null>;
  /** The key's value, or null. */
  get(key: string): Promise<string | null>;
  /**
   * Calls `cb` each time the connection to NATS is back after a loss (a request sent before it is answered only
   * by its timeout). Returns the function that stops it.
   */
  onReconnect(cb: () => void): () => void;
}

/** {@link LeaseStore} with what a worker's partition ownership also needs. */
export interface KeyStore extends LeaseStore {
  /** How long a key lives after its last write. */
  readonly ttlMs: number;
  /** `held` (a value), `released` (deleted by its holder: a clean hand-over) or `absent` (never written, or expired). */
  state(key: string): Promise<'held' | 'released' | 'absent'>;
  /** The keys that hold a value and match `filter` (`w.*`), each once; rejects (`HALCYON_CLUSTER`) within 5 s if NATS does not answer. */
  keys(filter: string): Promise<string[]>;
  /**
   * Calls `onChange` when a key appears or is deleted (not on renewals, nor on expiry, which has no event: a
   * poll finds those). Returns the function that stops watching.
   */
  watch(onChange: () => void): () => void;
  /** Writes the key whatever it holds (the ingest's figures of the partitions' load). */
  put(key: string, value: string): Promise<void>;
  /** Calls `onValue` with each new value of `key` (null: deleted), renewals too. Returns the function that stops watching. */
  watchKey(key: string, onValue: (value: string | null) => void): () => void;
}

/** The NATS packages, loaded on first use (see the module comment). */
const transportNode = lazyModule<typeof import('@nats-io/transport-node')>('@nats-io/transport-node');
const jetstreamModule = lazyModule<typeof import('@nats-io/jetstream')>('@nats-io/jetstream');
const kvModule = lazyModule<typeof import('@nats-io/kv')>('@nats-io/kv');

const enc = new TextEncoder();
const dec = new TextDecoder();


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
    /** Called at each reconnect (see {@link LeaseStore.onReconnect}). */
    private readonly reconnected: Set<() => void>,
  ) {
    this.stream = `HALCYON_${cfg.name}`;
  }

  /**
   * Connects (reconnecting for ever after a loss: a NATS restart is waited out, never fatal) and reports
   * disconnects and reconnects to the log. Fails with `HALCYON_CLUSTER` if no server answers at first.
   */
  static async connect(cfg: ResolvedCluster, logger: Logger, role: string): Promise<Broker> {
    const [{ connect }, { jetstream, jetstreamManager }] = [transportNode(), jetstreamModule()];
    let nc: NatsConnection;
    try {
      nc = await connect({
        servers: cfg.servers,
        name: `halcyon-${cfg.name}-${role}`,
        maxReconnectAttempts: -1,
        reconnectTimeWait: 250,
        // Otherwise every request (each publish waits for its ack by one) builds two Errors with stack traces up
        // front, in case it times out: ~8 % of the ingest's main-thread time while it publishes a backlog. Our
        // errors say which operation failed (clusterError), so the trace adds nothing.
        noAsyncTraces: true,
        ...(cfg.auth ?? {}),
      });
    } catch (err) {
      throw new HalcyonError('HALCYON_CLUSTER', `cannot connect to NATS at ${cfg.servers.join(', ')}: ${(err as Error).message}`, { cause: err });
    }
    const reconnected = new Set<() => void>();
    void (async () => {
      for await (const s of nc.status()) {
        if (s.type === 'disconnect') logger.warn({ server: s.server }, 'cluster: lost the connection to NATS; reconnecting');
        else if (s.type === 'reconnect') {
          logger.warn({ server: s.server }, 'cluster: reconnected to NATS');
          for (const cb of reconnected) cb();
        }
      }
    })().catch(() => {});
    const broker = new Broker(nc, jetstream(nc), await jetstreamManager(nc, { timeout: 10_000 }), cfg, logger, reconnected);
    return broker;
  }

  /** The subject of partition `p`. */
  subject(p: number): string {
    return `halcyon.${this.cfg.name}.ev.${p}`;
  }

  /**
   * Creates the bot's stream and one durable consumer per partition, or checks the existing ones. The stream
   * keeps events for an hour (handled or not) with de-duplication by message ID; each durable consumer remembers
   * which events of its partition were acknowledged and lets {@link MAX_ACK_PENDING} of them be out at once, to the
   * one worker that owns the partition (ownership.ts), which runs each room's in order. A consumer made by an older
   * version (one event at a time) is updated to that. Resolves with the stream's partition count (fixed at creation).
   */
  async ensureTopology(): Promise<number> {
    const { AckPolicy, DeliverPolicy, RetentionPolicy, StorageType } = jetstreamModule();
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
      const info = await this.jsm.consumers.info(this.stream, `p${p}`).catch((e: unknown) => (isNotFound(e) ? null : Promise.reject(clusterError(`cannot read consumer p${p} of ${this.stream}`, e))));
      const made = info
        ? info.config.max_ack_pending === MAX_ACK_PENDING
          ? null
          : this.jsm.consumers.update(this.stream, `p${p}`, { max_ack_pending: MAX_ACK_PENDING })
        : this.jsm.consumers.add(this.stream, {
            durable_name: `p${p}`,
            filter_subject: this.subject(p),
            ack_policy: AckPolicy.Explicit,
            deliver_policy: DeliverPolicy.All,
            max_ack_pending: MAX_ACK_PENDING,
            ack_wait: c.ackWaitMs * 1_000_000,
          });
      await made?.catch((e: unknown) => {
        throw clusterError(`cannot ${info ? 'update' : 'create'} consumer p${p} of ${this.stream}`, e);
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
   * One pull of partition `p` (a fetch): up to `max` deliveries as the server hands them out, ending when it has
   * sent them, after {@link PULL_EXPIRES_MS}, or when `stop` is called. A worker pulls only partitions it owns, one
   * pull at a time. A pull stopped early may have had deliveries on the wire, which the server counts as delivered
   * and the worker never sees: a hand-over compares the consumer's delivery sequence with the last one it saw
   * (partition.ts). The iteration throws when NATS fails.
   */
  async pull(p: number, max: number): Promise<{ messages: AsyncIterable<Delivery>; stop(): void }> {
    const consumer = await this.js.consumers.get(this.stream, `p${p}`);
    const msgs = await consumer.fetch({ max_messages: max, expires: PULL_EXPIRES_MS });
    const nc = this.nc;
    return {
      messages: (async function* () {
        for await (const m of msgs) yield wrap(m, nc);
      })(),
      stop: () => msgs.stop(),
    };
  }

  /**
   * What the server holds for partition `p`'s consumer: messages delivered and not acknowledged (naked ones
   * included, until they go out again), pull requests waiting (a dead worker's, until it expires), and the
   * sequence of the last delivery.
   */
  async pending(p: number): Promise<{ ackPending: number; waiting: number; delivered: number; undelivered?: number }> {
    try {
      const info = await this.jsm.consumers.info(this.stream, `p${p}`);
      return { ackPending: info.num_ack_pending, waiting: info.num_waiting, delivered: info.delivered.consumer_seq, undelivered: info.num_pending };
    } catch (err) {
      throw clusterError(`cannot read consumer p${p} of ${this.stream}`, err);
    }
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

  /**
   * The lease bucket: entries expire its TTL after their last write. The ingest (`ttlMs` given) creates it with its
   * `leaseTtlMs`; a worker (`ttlMs` null) opens the ingest's, waiting for it, and goes by its TTL, so every process
   * of a bot agrees on how long a silent holder keeps a key. It holds the ingest's lease, the workers' membership
   * (`w.<worker>`) and their partitions (`p.<partition>`).
   */
  async leaseStore(ttlMs: number | null, signal?: AbortSignal): Promise<KeyStore> {
    const { Kvm } = kvModule();
    const bucket = `halcyon_${this.cfg.name}_lease`;
    let kv: KV;
    for (let told = false; ; told = true) {
      try {
        kv = ttlMs === null ? await new Kvm(this.nc).open(bucket) : await new Kvm(this.nc).create(bucket, { ttl: ttlMs, history: 1, replicas: this.cfg.replicas });
        break;
      } catch (err) {
        if (ttlMs !== null || !isNotFound(err)) throw clusterError('cannot open the lease bucket', err);
        if (!told) this.logger.info({ bucket }, 'cluster: waiting for the ingest to create the lease bucket');
        await delay(1_000, signal);
      }
    }
    return keyStore(kv, ttlMs ?? (await kv.status()).ttl, this.reconnected, (filter) => listKeys(this.jsm, bucket, filter));
  }

  /** Ends the connection (pending publishes and requests settle first, for a moment). */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    await this.nc.drain().catch(() => this.nc.close());
  }
}

/** The {@link KeyStore} over an opened lease bucket `kv` whose entries live `ttl` ms; see {@link Broker.leaseStore}. */
function keyStore(kv: KV, ttl: number, reconnected: Set<() => void>, keys: (filter: string) => Promise<string[]>): KeyStore {
  const wrongRevision = (e: unknown) => /wrong last sequence|key exists/i.test((e as Error).message ?? '');
  /** The key's entry while it holds a value (not deleted, not expired), else null. */
  const held = async (key: string) => {
    const e = await kv.get(key);
    return e?.operation === 'PUT' ? e : null;
  };
  return {
    ttlMs: ttl,
    create: (key, value) => kv.create(key, value).catch((e: unknown) => (wrongRevision(e) ? null : Promise.reject(e))),
    update: (key, value, rev) =>
      kv.update(key, value, rev).catch(async (e: unknown) => {
        if (!wrongRevision(e)) throw e;
        // Still this holder's value (unique to it): its own other renewal moved it.
        const now = await held(key);
        return now?.string() === value ? now.revision : null;
      }),
    retake: async (key, value) => {
      const now = await held(key);
      if (now?.string() !== value) return null;
      return kv.update(key, value, now.revision).catch((e: unknown) => (wrongRevision(e) ? null : Promise.reject(e)));
    },
    release: async (key, rev) => {
      try {
        await kv.delete(key, { previousSeq: rev });
        return null;
      } catch (err) {
        if (!wrongRevision(err)) throw clusterError(`cannot release lease key ${key}`, err);
      }
      const now = await held(key).catch((err: unknown) => Promise.reject(clusterError(`cannot read lease key ${key}`, err)));
      return now ? { value: now.string(), rev: now.revision } : null;
    },
    get: async (key) => (await held(key))?.string() ?? null,
    onReconnect: (cb) => {
      reconnected.add(cb);
      return () => void reconnected.delete(cb);
    },
    state: async (key) => {
      const e = await kv.get(key);
      return e === null ? 'absent' : e.operation === 'PUT' ? 'held' : 'released';
    },
    keys,
    watch: (onChange) => {
      const seen = new Set<string>();
      const watching = kv.watch({ key: '>', include: 'updates' });
      void (async () => {
        for await (const e of await watching) {
          if (e.operation === 'PUT' && seen.has(e.key)) continue; // a renewal
          if (e.operation === 'PUT') seen.add(e.key);
          else seen.delete(e.key);
          onChange();
        }
      })().catch(() => {}); // watching is a shortcut: the poll still finds every change
      return () => void watching.then((w) => w.stop(), () => {});
    },
    put: async (key, value) => {
      await kv.put(key, value);
    },
    watchKey: (key, onValue) => {
      const watching = kv.watch({ key, include: 'updates' });
      void (async () => {
        for await (const e of await watching) onValue(e.operation === 'PUT' ? e.string() : null);
      })().catch(() => {}); // a shortcut too: the poll reads the key
      return () => void watching.then((w) => w.stop(), () => {});
    },
  };
}

/** How long a listing of the lease bucket's keys ({@link listKeys}) may take before it is given up. */
export const LIST_KEYS_MS = 5_000;

/**
 * The keys of lease bucket `bucket` that hold a value and match `filter` (`w.*`), each once: one batch direct get
 * of the last message of each matching subject (nats-server 2.11 and later, as the README asks), deleted keys left
 * out. Not `kv.keys()`: that makes an ordered consumer per listing, which the server keeps for 5 minutes (nats.js
 * sets that inactive threshold), and the server refuses a stream's 1,001st consumer: two workers, a look a second
 * each with two listings, reach that in about 4 minutes. And a listing in flight when NATS restarted did not end
 * (100 s and more, in a test), the worker's ownership stuck behind it. This one is a request: it ends by the
 * server's end-of-batch, or rejects with `HALCYON_CLUSTER` after {@link LIST_KEYS_MS}. Up to 1,024 keys match (the
 * server's bound on one answer; partitions are at most 1,024, and a worker's key lasts the TTL after it stops).
 */
async function listKeys(jsm: JetStreamManager, bucket: string, filter: string): Promise<string[]> {
  const prefix = `$KV.${bucket}.`;
  let timer: NodeJS.Timeout | undefined;
  try {
    const answers = await jsm.direct.getLastMessagesFor(`KV_${bucket}`, { multi_last: [prefix + filter] });
    timer = setTimeout(() => answers.stop(new Error(`no answer within ${LIST_KEYS_MS} ms`)), LIST_KEYS_MS);
    // One answer per subject (its last message): no key comes twice, renewed while listed or not.
    const out: string[] = [];
    for await (const m of answers) {
      const op = m.header.get('KV-Operation');
      if (op !== 'DEL' && op !== 'PURGE') out.push(m.subject.slice(prefix.length));
    }
    return out;
  } catch (err) {
    throw clusterError(`cannot list the keys ${filter} of the lease bucket`, err);
  } finally {
    clearTimeout(timer);
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

/** How long a confirmed nak may take. */
const NAK_TIMEOUT_MS = 5_000;

function wrap(m: JsMsg, nc: NatsConnection): Delivery {
  // The server answers an ack-subject message sent as a request once it has processed it.
  const reply = (m as unknown as { reply: string }).reply;
  return {
    data: m.data,
    redelivered: m.redelivered,
    seq: m.seq,
    dseq: m.info.deliverySequence,
    deliveries: m.info.deliveryCount,
    ack: () => m.ack(),
    nak: async () => {
      await nc.request(reply, enc.encode('-NAK'), { timeout: NAK_TIMEOUT_MS });
    },
    working: () => m.working(),
  };
}
