/**
 * Prometheus metrics (the only module importing prom-client). Opt-in: with `metrics` in the client options the
 * client records into a registry, its own or the host application's, and optionally serves it over HTTP. Without
 * it, every recording call is a no-op on a null object, so the hot path pays nothing, and prom-client is never
 * loaded (src/lazy-require.ts).
 */
import type { Server } from 'node:http';
import type { Registry } from 'prom-client';
import { HalcyonError } from './errors.ts';
import { lazyModule } from './lazy-require.ts';
import type { MemoryReport } from './memory.ts';

/** prom-client, loaded when a client first records metrics. */
const prom = lazyModule<typeof import('prom-client')>('prom-client');

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
  const registry = opts.registry ?? new (prom().Registry)();
  const p = opts.prefix ?? 'halcyon_';
  /** Names of the metrics registered here: close() removes them and leaves a host's registry otherwise as it was. */
  const names: string[] = [];
  const on = { registry, p, names };
  registerSnapshotGauges(on, snapshot);
  if (memory) registerMemoryGauges(on, memory);
  const m = eventMetrics(on, opts.perRoom === true);
  const rooms = roomLabels(opts.maxRoomLabels ?? 1_000);
  let server: Server | null = null;
  try {
    if (opts.port !== undefined) server = await serve(registry, opts.port, opts.host ?? '127.0.0.1');
  } catch (err) {
    // Nothing of this recorder stays in a host's registry: a retry registers the same names again.
    for (const name of names) registry.removeSingleMetric(name);
    throw err;
  }
  return {
    registry,
    eventsReceived: (n) => m.received.inc(n),
    handled(kind, roomId, seconds, lagSeconds) {
      const labels = opts.perRoom === true ? { kind, room: rooms.of(roomId) } : { kind };
      m.handled.inc(labels);
      m.duration.observe(labels, seconds);
      if (lagSeconds >= 0) m.lag.observe(labels, lagSeconds);
    },
    forgetRoom(roomId) {
      if (!rooms.forget(roomId)) return;
      for (const kind of HANDLED_KINDS) for (const metric of [m.handled, m.duration, m.lag]) metric.remove({ kind, room: roomId });
    },
    handlerFailed: () => m.failures.inc(),
    syncError: (code) => m.syncErrors.inc({ code }),
    send: (result) => m.sends.inc({ result }),
    decryptFailure: (code) => m.decrypt.inc({ code }),
    async close() {
      if (server) await new Promise<void>((r) => server!.close(() => r()));
      // A registry the host owns keeps its other metrics; ours are removed so a new client can register again.
      for (const name of names) registry.removeSingleMetric(name);
    },
  };
}

/** Where the helpers below register: the registry, the name prefix, and the list of names registered so far. */
interface Registering {
  registry: Registry;
  p: string;
  names: string[];
}

/** The full name of a metric, recorded as registered by this recorder. */
function named(on: Registering, name: string): string {
  on.names.push(on.p + name);
  return on.p + name;
}

/** Per-room labels, at most `max` rooms with series of their own; the rest (and non-rooms) share `other`. */
function roomLabels(max: number): { of(roomId: string | null): string; forget(roomId: string): boolean } {
  const labelled = new Set<string>();
  return {
    of(roomId) {
      if (roomId === null) return 'other';
      if (labelled.has(roomId)) return roomId;
      if (labelled.size >= max) return 'other';
      labelled.add(roomId);
      return roomId;
    },
    forget: (roomId) => labelled.delete(roomId),
  };
}

/** The gauges read from one {@link MetricsSnapshot} per scrape. */
function registerSnapshotGauges(on: Registering, snapshot: () => Promise<MetricsSnapshot>): void {
  const { Gauge } = prom();
  let last: MetricsSnapshot | null = null;
  const read = async () => (last = await snapshot());
  const gauge = (name: string, help: string, pick: (s: MetricsSnapshot) => number | null, first = false) =>
    new Gauge({
      name: named(on, name),
      help,
      registers: [on.registry],
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
}

/** The counters and histograms the client records into as events, handlers and sends happen. */
function eventMetrics(on: Registering, roomLabel: boolean) {
  const { Counter, Histogram } = prom();
  const registers = [on.registry];
  const handlerLabels = roomLabel ? ['kind', 'room'] : ['kind'];
  return {
    received: new Counter({ name: named(on, 'events_received_total'), help: 'Timeline events handed to the main thread.', registers }),
    handled: new Counter({ name: named(on, 'events_handled_total'), help: 'Events whose handlers settled.', labelNames: handlerLabels, registers }),
    failures: new Counter({ name: named(on, 'handler_failures_total'), help: 'Handlers that threw or rejected.', registers }),
    duration: new Histogram({
      name: named(on, 'handler_duration_seconds'),
      help: 'How long handlers took per event.',
      labelNames: handlerLabels,
      buckets: [0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30],
      registers,
    }),
    lag: new Histogram({
      name: named(on, 'handler_lag_seconds'),
      help: "From the event's origin_server_ts to its handler starting.",
      labelNames: handlerLabels,
      buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15, 60, 300],
      registers,
    }),
    syncErrors: new Counter({ name: named(on, 'sync_errors_total'), help: 'Failed /sync polls, by error code.', labelNames: ['code'], registers }),
    sends: new Counter({ name: named(on, 'sends_total'), help: 'Send attempts by outcome (sent, retried, rate_limited: a 429, dead).', labelNames: ['result'], registers }),
    decrypt: new Counter({ name: named(on, 'decrypt_failures_total'), help: 'Encrypted events that could not be decrypted, by code.', labelNames: ['code'], registers }),
  };
}

/** Serves the registry at `http://<host>:<port>/metrics`; a port that cannot be listened on is a coded error. */
async function serve(registry: Registry, port: number, host: string): Promise<Server> {
  // Taken when a server is asked for, not imported: an ES import of node:http builds its namespace from every
  // export, so Node's lazy getters (WebSocket, EventSource: its own copy of undici, with tls and http2) ran at every
  // bot's import. In a bare process that import cost 13.5 MB of RSS more than getBuiltinModule's.
  const { createServer } = process.getBuiltinModule('node:http');
  const server = createServer((req, res) => {
    if (req.url !== '/metrics') {
      res.writeHead(404).end();
      return;
    }
    registry.metrics().then(
      (text) => res.writeHead(200, { 'content-type': registry.contentType }).end(text),
      (err: Error) => res.writeHead(500).end(err.message),
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err) => reject(new HalcyonError('HALCYON_INVALID_ARGUMENT', `metrics: cannot listen on ${host}:${port}: ${err.message}`, { cause: err })));
    server.listen(port, host, () => resolve());
  });
  return server;
}

/**
 * `thread_memory_bytes{thread, kind}` (each worker's own heap, external memory and, for crypto, wasm memory; an
 * actor running inline is main's thread and is not repeated) and `rss_bytes`, from one `memory()` round per scrape.
 */
function registerMemoryGauges(on: Registering, memory: () => Promise<MemoryReport>): void {
  const { Gauge } = prom();
  let last: MemoryReport | null = null;
  new Gauge({
    name: named(on, 'thread_memory_bytes'),
    help: 'Memory of each thread as it measures itself: V8 heap used/committed/limit, external and array buffers, and wasm (crypto).',
    labelNames: ['thread', 'kind'],
    registers: [on.registry],
    async collect() {
      const r = (last = await memory());
      this.reset();
      for (const thread of ['main', 'sync', 'crypto'] as const) {
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
    name: named(on, 'rss_bytes'),
    help: 'Resident set size of the whole process (every thread, wasm, native allocations).',
    registers: [on.registry],
    async collect() {
      this.set((last ?? (last = await memory())).rss);
    },
  });
}
