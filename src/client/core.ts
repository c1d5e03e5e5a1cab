/**
 * The client's core: the one object its parts share — options, state, the session and its transport, the actors,
 * the event bus, the room mirror, the dispatcher, the intake, the outbox — and the lifecycle that starts and
 * stops them (`run`, `stop`, a fatal failure). The public `Client` is a facade over it; the API modules
 * (messages.ts, rooms-api.ts, users.ts) are functions of it. Parts hold the core, never each other.
 */
import { checkDataDir } from '../account.ts';
import { type ClusterRole, startCluster } from '../cluster/index.ts';
import { resolveHomeserver } from '../discovery.ts';
import type { MentionsContent } from '../edits.ts';
import { Dispatcher } from '../dispatcher.ts';
import { HalcyonError } from '../errors.ts';
import type { RoomActions } from '../events.ts';
import { unlessAborted } from '../abort.ts';
import { MatrixHttp } from '../http.ts';
import { Media } from '../media.ts';
import { gatherMemory, holdMainHeapTrim, type MemoryReport, type OldGeneration, type TrimInfo } from '../memory.ts';
import { traceStartup } from '../actors.ts';
import { createMetrics, type MetricsSnapshot, noMetrics, type Recorder } from '../metrics.ts';
import { laneScope, Outbox } from '../outbox.ts';
import type { CacheActorApi, CryptoActorApi } from '../protocol.ts';
import { decodeToken, type Session } from '../token.ts';
import { Actors, DEFAULT_TYPES, ENCRYPTED } from './actors.ts';
import { EventBus } from './bus.ts';
import { Intake } from './intake.ts';
import { attemptSend, isRoomEncrypted, sendEvent } from './messages.ts';
import { RoomMirror } from './mirror.ts';
import type { Health, ResolvedOptions, WhoAmI } from './options.ts';
import { Supervisor } from './supervisor.ts';

/**
 * Each client's core, for what must reach past the facade without being public API: the fault-injection hooks of
 * testing.ts.
 */
export const cores = new WeakMap<object, ClientCore>();

/** Where a client is in its life. */
export type ClientState = 'idle' | 'starting' | 'running' | 'stopping' | 'stopped';

/** The shared state and the lifecycle; see the module comment. */
export class ClientCore {
  state: ClientState = 'idle';
  session: Session | null = null;
  http: MatrixHttp | null = null;
  media: Media | null = null;
  outbox: Outbox | null = null;
  metrics: Recorder = noMetrics;
  /** This process's part of a cluster (see src/cluster/), or null. */
  cluster: ClusterRole | null = null;
  /** Aborted by stop(): ends waits (a restart's, a send's for the crypto actor). */
  lifecycle = new AbortController();
  readonly bus: EventBus;
  readonly mirror: RoomMirror;
  readonly actors: Actors;
  readonly supervisor: Supervisor;
  readonly dispatcher: Dispatcher;
  readonly intake: Intake;
  /** With encryption off: rooms the server said are not encrypted, while the cache had not seen them. */
  readonly plainRooms = new Set<string>();
  /** Mentions of the current version of messages the bot sent this run (see editMessage), most recent last. */
  readonly sentMentions = new BoundedMap<string, MentionsContent>(1_000);
  /** Per room, the last send not yet queued in the outbox: sends are queued in call order (see messages.ts). */
  readonly sendOrder = new Map<string, Promise<void>>();
  /** Tails of the operations that run one at a time per key (DM creation, `m.direct` writes). */
  readonly serial = new Map<string, Promise<unknown>>();
  /** Ends this client's hold on the main thread's heap trim (a no-op when it holds none). */
  private releaseMainTrim: () => void = () => {};
  /** The run() in progress (stop() during start-up waits for it), or null. */
  private starting: Promise<void> | null = null;
  private readyWaiter: { resolve: () => void; reject: (e: HalcyonError) => void } | null = null;
  /** A failure that came while run() was starting: its start-up stops at its next check (see {@link fail}). */
  private startFailure: HalcyonError | null = null;

  constructor(
    readonly opts: ResolvedOptions,
    /** The public client, which event objects and room handles call back into. */
    readonly client: RoomActions,
  ) {
    this.bus = new EventBus(opts.logger, () => this.metrics.handlerFailed());
    this.mirror = new RoomMirror(client, (roomId) => this.metrics.forgetRoom(roomId));
    this.dispatcher = new Dispatcher(opts.concurrency, (err, roomId) => this.bus.handlerFailed(err, 'handler', roomId), laneScope);
    this.intake = new Intake(this);
    this.actors = new Actors(opts, {
      onSyncMessage: (msg) => this.intake.receive(msg),
      onCryptoMessage: (msg) => this.intake.receiveCrypto(msg),
      onDeath: (err) => this.supervisor.restart(err),
      onSummary: (s) => this.mirror.set(s),
      wantedTypes: () => this.wantedTypes(),
      seqFloor: () => this.intake.maxSeqSeen,
      strategy: () => this.cluster?.strategy ?? null,
    });
    this.supervisor = new Supervisor({
      opts,
      actors: this.actors,
      running: () => this.state === 'running',
      lifecycle: () => this.lifecycle.signal,
      // A cluster ingest that stepped down starts its actors, and serves its workers, only once it leads again.
      leading: () => this.cluster?.leading() ?? Promise.resolve(),
      start: (leads) => this.actors.start(this.session!, leads),
      started: () => this.cluster?.running(),
      report: (err) => this.bus.emitError(err),
      fail: (err) => this.fail(err),
      warn: (obj, msg) => opts.logger.warn(obj, msg),
    });
  }

  /** Types the sync actor posts: encrypted events always come (to be decrypted, or reported if encryption is off). */
  wantedTypes(): string[] | null {
    // A cluster's ingest publishes every type: its workers' `event` handlers are not known here.
    return this.bus.has('event') || this.opts.cluster?.role === 'ingest' ? null : [...DEFAULT_TYPES, ENCRYPTED];
  }

  /** Starts the client with a token; resolves once `ready` has fired and its handlers settled. */
  async run(token: string): Promise<void> {
    if (this.state !== 'idle') throw new HalcyonError('HALCYON_ALREADY_RUNNING', `run() called on a client that is ${this.state}`);
    this.state = 'starting';
    this.startFailure = null;
    const attempt = this.startUp(token).catch(async (err: unknown) => {
      await this.shutdown();
      throw err;
    });
    // stop() during start-up waits for this, so the half-started actors are always ended by one party.
    this.starting = attempt.then(
      () => {},
      () => {},
    );
    try {
      await attempt;
    } catch (err) {
      if (this.state === 'starting') this.state = 'idle';
      throw err;
    } finally {
      this.starting = null;
    }
  }

  private async startUp(token: string): Promise<void> {
    traceStartup('run');
    const session = decodeToken(token);
    // The workers start (isolates, module loading: a few hundred ms) while the HTTP start-up below runs.
    this.actors.prepare();
    await resolveHomeserver(session.homeserver, { allowInsecureHttp: this.opts.allowInsecureHttp });
    this.session = session;
    const http = (this.http = new MatrixHttp(session.homeserver, session.accessToken, { timeoutMs: this.opts.requestTimeoutMs }));
    this.media = this.newMedia(http);
    checkDataDir(this.opts.dataDir, session.homeserver, session.userId);
    const who = await http.json<{ user_id?: unknown }>('GET', '/_matrix/client/v3/account/whoami');
    traceStartup('whoami answered');
    this.checkStarting();
    if (who.user_id !== session.userId) {
      throw new HalcyonError('HALCYON_INVALID_TOKEN', `the token's access token belongs to ${String(who.user_id)}, not ${session.userId}`);
    }
    const ready = new Promise<void>((resolve, reject) => (this.readyWaiter = { resolve, reject }));
    ready.catch(() => {}); // observed below, or superseded by an earlier failure
    this.intake.reset(() => {
      const waiter = this.readyWaiter;
      this.readyWaiter = null;
      waiter?.resolve();
    });
    this.lifecycle = new AbortController();
    // An ingest standby waits here for the lease; a worker, for its ingest.
    if (this.opts.cluster) this.cluster = await startCluster(this, this.opts.cluster);
    this.checkStarting();
    if (this.opts.metrics) this.metrics = await createMetrics(this.opts.metrics, () => this.metricsSnapshot(), () => this.memory());
    await this.actors.start(session, () => this.startFailure === null);
    // A cluster ingest that lost its lease meanwhile failed: it must not serve its workers, nor go on starting.
    this.checkStarting();
    this.supervisor.watch();
    this.outbox = this.newOutbox();
    // Sends an earlier run left unacknowledged go out first (same transaction IDs: no duplicates).
    this.outbox.resume();
    this.cluster?.running();
    this.checkStarting();
    if (this.opts.trimMainHeap) this.releaseMainTrim = holdMainHeapTrim((before, after, info) => this.traceTrim(before, after, info));
    this.state = 'running';
    await ready;
    this.cluster?.ready();
    traceStartup('ready');
  }

  private newMedia(http: MatrixHttp): Media {
    return new Media({
      http,
      sendEvent: (roomId, type, content, opts) => sendEvent(this, roomId, type, content, opts),
      encryptAttachments: async (roomId, allowPlaintext) => {
        if (allowPlaintext || this.opts.encryption?.allowPlaintext === true || !(await isRoomEncrypted(this, roomId))) return false;
        if (!this.opts.encryption) throw new HalcyonError('HALCYON_ROOM_ENCRYPTED', `room ${roomId} is encrypted and encryption is off; pass { allowPlaintext: true } to send in the clear`, { roomId });
        return true;
      },
      dataDir: this.opts.dataDir,
      logger: this.opts.logger,
    });
  }

  private newOutbox(): Outbox {
    return new Outbox({
      dataDir: this.opts.dataDir,
      attempt: (roomId, txnId, op, allowPlaintext, signal) => attemptSend(this, roomId, txnId, op, allowPlaintext, signal),
      failed: (err, info) => void this.bus.emit('sendFailed', err, info)?.catch(() => {}),
      outcome: (r) => this.metrics.send(r),
      notice: (info, msg) => this.opts.logger.warn(info, msg),
      rateLimit: this.opts.rateLimit,
      sharedPacer: this.cluster ? (local) => this.cluster?.sharedPacer(local) ?? local : undefined,
      window: this.opts.sendWindow,
      maxAttempts: this.opts.maxSendAttempts,
      retryMinMs: 1_000,
      retryMaxMs: 60_000,
    });
  }

  /** Throws `HALCYON_STOPPED` if stop() was called while run() was starting, or the failure that came meanwhile. */
  private checkStarting(): void {
    if (this.startFailure) throw this.startFailure;
    if (this.state !== 'starting') throw new HalcyonError('HALCYON_STOPPED', 'the client was stopped while starting');
  }

  /** Stops polling, lets running handlers finish (up to `stopTimeoutMs`), saves state and ends the workers. */
  async stop(): Promise<void> {
    if (this.state === 'starting' || (this.state === 'running' && this.starting)) {
      // run() has not resolved yet: make it fail with HALCYON_STOPPED; its own clean-up ends what it started.
      this.state = 'stopping';
      this.lifecycle.abort(); // ends waits of the start-up (a standby's for the lease)
      const waiter = this.readyWaiter;
      this.readyWaiter = null;
      waiter?.reject(new HalcyonError('HALCYON_STOPPED', 'the client was stopped while starting'));
      await this.starting;
      this.state = 'stopped';
      return;
    }
    if (this.state !== 'running') return;
    this.state = 'stopping';
    await this.shutdown();
    this.state = 'stopped';
  }

  /** A fatal problem (dead token, dead worker): report it, fail `run` if it is still waiting, and shut down. */
  fail(err: HalcyonError): void {
    if (this.state === 'stopping' || this.state === 'stopped' || this.state === 'idle') return;
    this.bus.emitError(err);
    const waiter = this.readyWaiter;
    this.readyWaiter = null;
    if (waiter) {
      if (this.state === 'starting') this.startFailure = err;
      waiter.reject(err);
      return; // run() shuts down itself
    }
    this.state = 'stopping';
    void this.shutdown().then(() => (this.state = 'stopped'));
  }

  /** A main-heap trim, at debug level. */
  private traceTrim(before: OldGeneration, after: OldGeneration, info: TrimInfo): void {
    const mib = (n: number) => Math.round((n / 2 ** 20) * 10) / 10;
    this.opts.logger.debug({ committedMiB: [mib(before.committed), mib(after.committed)], liveMiB: mib(after.used), ...info }, 'main heap trimmed');
  }

  private async shutdown(): Promise<void> {
    const warn = (e: unknown, what: string) => this.opts.logger.warn(e, what);
    this.lifecycle.abort();
    this.releaseMainTrim();
    this.releaseMainTrim = () => {};
    // A restart in progress ends first (its wait is aborted), so there is one set of actors to stop.
    await this.supervisor.stop();
    const sync = this.actors.set?.sync;
    if (sync) {
      // Handlers must finish (and acknowledge) while the sync actor drains, so both run together; a handler
      // that never settles is abandoned after stopTimeoutMs (its batch is redelivered by the next run).
      let timer: NodeJS.Timeout | undefined;
      const patience = new Promise<void>((resolve) => (timer = setTimeout(resolve, this.opts.stopTimeoutMs)));
      await Promise.all([
        sync.api.stop(this.opts.stopTimeoutMs).catch((e) => warn(e, 'sync actor stop')),
        Promise.race([this.dispatcher.idle(), patience]).then(() => {
          if (this.dispatcher.size > 0) warn({ pending: this.dispatcher.size }, `stop: handlers still running after ${this.opts.stopTimeoutMs} ms were abandoned`);
        }),
      ]);
      clearTimeout(timer);
    }
    const outbox = this.outbox;
    if (outbox) {
      // Sends made by the handlers that just finished get the rest of the stop budget; what is left stays in
      // outbox.sqlite and goes out with the next run.
      await outbox.drain(this.opts.stopTimeoutMs);
      outbox.close();
      if (this.outbox === outbox) this.outbox = null;
    }
    await this.actors.stop(true, warn);
    const cluster = this.cluster;
    this.cluster = null;
    await cluster?.close().catch((e) => warn(e, 'cluster close'));
    const media = this.media;
    this.media = null;
    await media?.close().catch((e) => warn(e, 'media pool close'));
    const metrics = this.metrics;
    this.metrics = noMetrics;
    await metrics.close().catch((e) => warn(e, 'metrics close'));
    const http = this.http;
    await http?.close();
    if (this.http === http) this.http = null;
  }

  /** How the client is doing; never throws. `starting` until run() resolves. */
  async health(): Promise<Health> {
    const [st, memory] = await Promise.all([this.actors.set?.sync.api.status().catch(() => null), this.memory()]);
    const sync = st
      ? {
          polls: st.polls,
          consecutiveErrors: st.consecutiveErrors,
          lastPollStartAt: st.lastPollStartAt,
          lastSuccessAt: st.lastSuccessAt,
          lastError: st.lastError ? { code: st.lastError.code, message: st.lastError.message } : null,
        }
      : null;
    const state = this.state === 'running' && this.starting ? 'starting' : this.state;
    return {
      state,
      ok: state === 'running' && sync !== null && sync.consecutiveErrors === 0,
      sync,
      queuedEvents: this.dispatcher.size,
      backlogEvents: st?.backlogEvents ?? 0,
      backpressure: this.intake.backpressure,
      outbox: this.outbox?.status() ?? null,
      memory,
    };
  }

  /**
   * Memory by thread (src/memory.ts): main's and each running actor's. `collect` has each worker collect its
   * garbage first (tests: it pauses every worker).
   */
  memory(opts: { collect?: boolean; timeoutMs?: number } = {}): Promise<MemoryReport> {
    const set = this.actors.set;
    return gatherMemory({ sync: set?.sync.api, crypto: set?.crypto?.api }, opts);
  }

  private async metricsSnapshot(): Promise<MetricsSnapshot> {
    const set = this.actors.set;
    const [st, crypto] = await Promise.all([set?.sync.api.status().catch(() => null), this.actors.openCrypto?.status().catch(() => null)]);
    const out = this.outbox?.counts() ?? { pending: 0, dead: 0 };
    return {
      secondsSinceLastSync: st?.lastSuccessAt ? (Date.now() - st.lastSuccessAt) / 1000 : null,
      polls: st?.polls ?? null,
      queuedEvents: this.dispatcher.size,
      backlogEvents: st?.backlogEvents ?? 0,
      outboxPending: out.pending,
      outboxDead: out.dead,
      pendingUndecryptable: crypto?.pendingUndecryptable ?? null,
    };
  }

  /** Who the bot is (with its device's identity keys when encryption is on). */
  whoami(): WhoAmI {
    const s = this.need();
    const id = this.actors.identity;
    const who: WhoAmI = { userId: s.userId, deviceId: s.deviceId, homeserver: s.homeserver, encryption: id !== null };
    if (id) who.identityKeys = { curve25519: id.curve25519, ed25519: id.ed25519 };
    return who;
  }

  /**
   * The open crypto actor; while it restarts, waits for the new one (sends must not go out in the clear for want
   * of it). Rejects with `HALCYON_STOPPED` when `signal` aborts or the client stops.
   */
  async openCrypto(signal?: AbortSignal): Promise<CryptoActorApi> {
    for (;;) {
      const open = this.actors.openCrypto;
      if (open) return open;
      if (this.state !== 'running' && this.state !== 'starting') throw new HalcyonError('HALCYON_STOPPED', 'the client stopped while waiting for the crypto actor');
      await unlessAborted(this.actors.whenCryptoOpen(), [signal, this.lifecycle.signal]);
    }
  }

  /** The session; throws `HALCYON_NOT_RUNNING` unless the client is starting, running or stopping. */
  need(): Session {
    if (!this.session || (this.state !== 'running' && this.state !== 'starting' && this.state !== 'stopping')) {
      throw new HalcyonError('HALCYON_NOT_RUNNING', 'the client is not running (call run(token) first)');
    }
    return this.session;
  }

  /** The HTTP transport of a running client. */
  needHttp(): MatrixHttp {
    this.need();
    return this.http!;
  }

  /** The cache actor of a running client. */
  needCache(): CacheActorApi {
    this.need();
    const cache = this.actors.set?.cache;
    if (!cache) throw new HalcyonError('HALCYON_NOT_RUNNING', 'the client is not running (call run(token) first)');
    return cache.api;
  }

  /** The outbox of a running client. */
  needOutbox(): Outbox {
    this.need();
    if (!this.outbox) throw new HalcyonError('HALCYON_NOT_RUNNING', 'the client is not running (call run(token) first)');
    return this.outbox;
  }

  /** The media module of a running client. */
  needMedia(): Media {
    this.need();
    return this.media!;
  }
}

/** A map that forgets its oldest entries past `max` (insertion order). */
export class BoundedMap<K, V> extends Map<K, V> {
  constructor(private readonly max: number) {
    super();
  }
  override set(k: K, v: V): this {
    this.delete(k);
    super.set(k, v);
    if (this.size > this.max) this.delete(this.keys().next().value!);
    return this;
  }
}
