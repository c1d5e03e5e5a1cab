/**
 * Prometheus metrics (the only module importing prom-client). Opt-in: with `metrics` in the client options the
 * client records into a registry, its own or the host application's, and optionally serves it over HTTP. Without
 * it, every recording call is a no-op on a null object, so the hot path pays nothing.
 */
import { createServer, type Server } from 'node:http';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { HalcyonError } from './errors.ts';
import type { MemoryReport } from './memory.ts';

/** Metrics options of a client. */
export interface MetricsOptions {
  /** A prom-client `Registry` the host application owns (default: a new one, see `client.metricsRegistry`). */
  registry?: Registry;
  /** Serve the registry at `http://<host>:<port>/metrics` (default: no server). */
  port?: number;
  /** Address to listen on (default `127.0.0.1`). */
  host?: string;
  /** Label handler metrics by room (default false: one series for all rooms; per room can mean many series). */
  perRoom?: boolean;
  /**
   * With `perRoom`: rooms labelled at most (default 1,000). Events of further rooms count under `room="other"`,
   * and a room's series are removed when the bot leaves it, so joins, leaves and invite spam cannot grow the
   * registry without bound. Only joined rooms are labelled (invites count under `other`).
   */
  maxRoomLabels?: number;
  /** Prefix of every metric name (default `halcyon_`). */
  prefix?: string;
}

/** Values read when Prometheus scrapes: the sync loop's state, queues and backlogs. */
export interface MetricsSnapshot {
  secondsSinceLastSync: number | null;
  /** Successful polls since the sync actor started. */
  polls: number | null;
  queuedEvents: number;
  backlogEvents: number;
  outboxPending: number;
  outboxDead: number;
  pendingUndecryptable: number | null;
}

/** What the client records; {@link noMetrics} does nothing. */
export interface Recorder {
  eventsReceived(n: number): void;
  /** A handler settled; `roomId` is null for what is not a joined room's (invites: labelled `other`). */
  handled(kind: string, roomId: string | null, seconds: number, lagSeconds: number): void;
  /** The bot left a room: its per-room series go. */
  forgetRoom(roomId: string): void;
  handlerFailed(): void;
  syncError(code: string): void;
  send(result: 'sent' | 'retried' | 'rate_limited' | 'dead'): void;
  decryptFailure(code: string): void;
  close(): Promise<void>;
  readonly registry: Registry | null;
}

/** The recorder of a client without metrics. */
export const noMetrics: Recorder = {
  eventsReceived() {},
  handled() {},
  forgetRoom() {},
  handlerFailed() {},
  syncError() {},
  send() {},
  decryptFailure() {},
  async close() {},
  registry: null,
};

/** The `kind` label values of handler metrics. */
const HANDLED_KINDS = ['message', 'edit', 'reaction', 'member', 'redaction', 'other'] as const;

/** The `kind` label values of `thread_memory_bytes`, and the {@link ActorMemory} field each reads. */
const MEMORY_KINDS = {
  heap_used: 'heapUsed', heap_total: 'heapTotal', heap_limit: 'heapLimit', young_generation: 'youngGeneration', external: 'external', array_buffers: 'arrayBuffers', wasm: 'wasmBytes',
} as const;

/**
 * Builds the recorder: metrics registered in `opts.registry` (or a new one), served if `opts.port` is set.
 * `memory` (src/memory.ts `gatherMemory` over the client's actors) feeds the per-thread memory gauges; without it
 * they are not registered.
 */
export async function createMetrics(opts: MetricsOptions, snapshot: () => Promise<MetricsSnapshot>, memory?: () => Promise<MemoryReport>): Promise<Recorder> {
  const registry = opts.registry ?? new Registry();
  const p = opts.prefix ?? 'halcyon_';
  const roomLabel = opts.perRoom === true;
  const maxRooms = opts.maxRoomLabels ?? 1_000;
  /** Rooms with series of their own; the rest share `other`. */
  const labelled = new Set<string>();
  const roomOf = (roomId: string | null): string => {
    if (roomId === null) return 'other';
    if (labelled.has(roomId)) return roomId;
    if (labelled.size >= maxRooms) return 'other';
    labelled.add(roomId);
    return roomId;
  };
  let last: MetricsSnapshot | null = null;
  // One snapshot per scrape, shared by the gauges below.
  const read = async () => (last = await snapshot());
  const gauge = (name: string, help: string, pick: (s: MetricsSnapshot) => number | null, first = false) =>
    new Gauge({
      name: p + name,
      help,
      registers: [registry],
      async collect() {
        const s = first ? await read() : (last ?? (await read()));
        const v = pick(s);
        if (v !== null) this.set(v);
      },
    });
  // The first gauge collected refreshes the snapshot (prom-client collects in registration order).
  gauge('sync_seconds_since_success', 'Seconds since the last successful /sync (sync lag).', (s) => s.secondsSinceLastSync, true);
  gauge('sync_polls', 'Successful /sync polls since the sync actor started.', (s) => s.polls);
  gauge('queued_events', 'Events waiting for or running in handlers on the main thread.', (s) => s.queuedEvents);
  gauge('journal_backlog_events', 'Events journaled and not yet handled.', (s) => s.backlogEvents);
  gauge('outbox_pending', 'Sends not yet acknowledged by the server.', (s) => s.outboxPending);
  gauge('outbox_dead_letters', 'Sends that failed for good, kept as dead letters.', (s) => s.outboxDead);
  gauge('pending_undecryptable_events', 'Encrypted events kept until their room key arrives.', (s) => s.pendingUndecryptable);
  if (memory) registerMemoryGauges(registry, p, memory);
  const received = new Counter({ name: `${p}events_received_total`, help: 'Timeline events handed to the main thread.', registers: [registry] });
  const handled = new Counter({ name: `${p}events_handled_total`, help: 'Events whose handlers settled.', labelNames: roomLabel ? ['kind', 'room'] : ['kind'], registers: [registry] });
  const failures = new Counter({ name: `${p}handler_failures_total`, help: 'Handlers that threw or rejected.', registers: [registry] });
  const duration = new Histogram({
    name: `${p}handler_duration_seconds`,
    help: 'How long handlers took per event.',
    labelNames: roomLabel ? ['kind', 'room'] : ['kind'],
    buckets: [0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30],
    registers: [registry],
  });
  const lag = new Histogram({
    name: `${p}handler_lag_seconds`,
    help: "From the event's origin_server_ts to its handler starting.",
    labelNames: roomLabel ? ['kind', 'room'] : ['kind'],
    buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15, 60, 300],
    registers: [registry],
  });
  const syncErrors = new Counter({ name: `${p}sync_errors_total`, help: 'Failed /sync polls, by error code.', labelNames: ['code'], registers: [registry] });
  const sends = new Counter({ name: `${p}sends_total`, help: 'Send attempts by outcome (sent, retried, rate_limited: a 429, dead).', labelNames: ['result'], registers: [registry] });
  const decrypt = new Counter({ name: `${p}decrypt_failures_total`, help: 'Encrypted events that could not be decrypted, by code.', labelNames: ['code'], registers: [registry] });

  let server: Server | null = null;
  if (opts.port !== undefined) {
    server = createServer((req, res) => {
      if (req.url !== '/metrics') {
        res.writeHead(404).end();
        return;
      }
      registry.metrics().then(
        (text) => res.writeHead(200, { 'content-type': registry.contentType }).end(text),
        (err: Error) => res.writeHead(500).end(err.message),
      );
    });
    const srv = server;
    await new Promise<void>((resolve, reject) => {
      srv.once('error', (err) => reject(new HalcyonError('HALCYON_INVALID_ARGUMENT', `metrics: cannot listen on ${opts.host ?? '127.0.0.1'}:${opts.port}: ${err.message}`, { cause: err })));
      srv.listen(opts.port, opts.host ?? '127.0.0.1', () => resolve());
    });
  }
  return {
    registry,
    eventsReceived: (n) => received.inc(n),
    handled(kind, roomId, seconds, lagSeconds) {
      const labels = roomLabel ? { kind, room: roomOf(roomId) } : { kind };
      handled.inc(labels);
      duration.observe(labels, seconds);
      if (lagSeconds >= 0) lag.observe(labels, lagSeconds);
    },
    forgetRoom(roomId) {
      if (!labelled.delete(roomId)) return;
      for (const kind of HANDLED_KINDS) for (const m of [handled, duration, lag]) m.remove({ kind, room: roomId });
    },
    handlerFailed: () => failures.inc(),
    syncError: (code) => syncErrors.inc({ code }),
    send: (result) => sends.inc({ result }),
    decryptFailure: (code) => decrypt.inc({ code }),
    async close() {
      if (server) await new Promise<void>((r) => server!.close(() => r()));
      // A registry the host owns keeps its other metrics; ours are removed so a new client can register again.
      for (const name of ['sync_seconds_since_success', 'sync_polls', 'handler_failures_total', 'queued_events', 'journal_backlog_events', 'outbox_pending', 'outbox_dead_letters', 'pending_undecryptable_events', 'events_received_total', 'events_handled_total', 'handler_duration_seconds', 'handler_lag_seconds', 'sync_errors_total', 'sends_total', 'decrypt_failures_total', ...(memory ? ['thread_memory_bytes', 'rss_bytes'] : [])]) {
        registry.removeSingleMetric(p + name);
      }
    },
  };
}

/**
 * `thread_memory_bytes{thread, kind}` (each worker's own heap, external memory and, for crypto, wasm memory; an
 * actor running inline is main's thread and is not repeated) and `rss_bytes`, from one `memory()` round per scrape.
 */
function registerMemoryGauges(registry: Registry, p: string, memory: () => Promise<MemoryReport>): void {
  let last: MemoryReport | null = null;
  new Gauge({
    name: `${p}thread_memory_bytes`,
    help: 'Memory of each thread as it measures itself: V8 heap used/committed/limit, external and array buffers, and wasm (crypto).',
    labelNames: ['thread', 'kind'],
    registers: [registry],
    async collect() {
      const r = (last = await memory());
      this.reset();
      for (const thread of ['main', 'sync', 'cache', 'crypto'] as const) {
        const m = r[thread];
        if (!m || (thread !== 'main' && m.thread === 'main')) continue;
        for (const [kind, field] of Object.entries(MEMORY_KINDS)) {
          const v = m[field];
          if (v !== null) this.set({ thread, kind }, v);
        }
      }
    },
  });
  new Gauge({
    name: `${p}rss_bytes`,
    help: 'Resident set size of the whole process (every thread, wasm, native allocations).',
    registers: [registry],
    async collect() {
      this.set((last ?? (last = await memory())).rss);
    },
  });
}
