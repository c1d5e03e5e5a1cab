/**
 * The client's actors: a set of sync, cache and (with encryption) crypto actors with the ports between them and
 * main, built by one of two strategies behind one interface — {@link inlineStrategy} runs them on the main thread
 * (tests, debugging), {@link workerStrategy} on worker threads — then opened and started in the order the
 * protocol needs, and stopped. It also keeps the crypto gate: sends wait on it while no open crypto actor exists.
 */
import { type ActorHandle, guestActor, traceStartup, inThreadActor, localPortPair, localRemote, type MessagePort, type Port, portPair, spawnWorkerActor, typedPort } from '../actors.ts';
import { claimDataDir } from '../account.ts';
import { CacheActor } from '../cache/actor.ts';
import { CryptoActor } from '../crypto/actor.ts';
import { HalcyonError } from '../errors.ts';
import {
  CACHE_DEADLINES,
  type CacheActorApi,
  CRYPTO_DEADLINES,
  type CryptoActorApi,
  type CryptoIdentity,
  type CryptoToMain,
  type MainToCrypto,
  type MainToSync,
  type RoomSummary,
  SYNC_DEADLINES,
  type SyncActorApi,
  type SyncConfig,
  type SyncToMain,
} from '../protocol.ts';
import { storePassphrase } from '../store.ts';
import { SyncActor, type SyncDeps } from '../sync/actor.ts';
import type { Session } from '../token.ts';
import type { ResolvedOptions } from './options.ts';
import { PlainRoomMemo } from './plain-rooms.ts';

/** Bound of each call to the actors while restarting them (one of them is dead or stuck). */
const RESTART_CALL_MS = 5_000;

/** One set of actors and the ports main holds to them. */
export interface ActorSet {
  sync: ActorHandle<SyncActorApi>;
  cache: ActorHandle<CacheActorApi>;
  crypto: ActorHandle<CryptoActorApi> | null;
  /** Batches and sync news from the sync actor; acknowledgements to it. */
  port: Port<SyncToMain, MainToSync>;
  /** Late decryptions and crypto problems from the crypto actor; their acknowledgements to it. */
  cryptoPort: Port<CryptoToMain, MainToCrypto> | null;
  /** The cache's "not encrypted" answers to sends with encryption off, valid for this set's cache (made by start()). */
  plainJoined?: PlainRoomMemo;
}

/** How an actor set is built: where its actors run. */
export interface ActorStrategy {
  build(encryption: boolean): ActorSet;
}

/** Actors on the main thread, behind the same handles and ports as workers (tests, debugging). */
export const inlineStrategy: ActorStrategy = {
  build(encryption) {
    const cacheImpl = new CacheActor();
    const [mainSide, syncSide] = localPortPair<SyncToMain, MainToSync>();
    let crypto: ActorHandle<CryptoActorApi> | null = null;
    let cryptoPort: Port<CryptoToMain, MainToCrypto> | null = null;
    let cryptoRemote: SyncDeps['crypto'];
    if (encryption) {
      const [mainCrypto, cryptoSide] = localPortPair<CryptoToMain, MainToCrypto>();
      const cryptoImpl = new CryptoActor(cryptoSide);
      crypto = inThreadActor<CryptoActorApi>('crypto', cryptoImpl, CRYPTO_DEADLINES);
      cryptoPort = mainCrypto;
      cryptoRemote = localRemote<CryptoActorApi>('crypto', cryptoImpl, CRYPTO_DEADLINES);
    }
    const syncImpl = new SyncActor({ cache: localRemote<CacheActorApi>('cache', cacheImpl, CACHE_DEADLINES), events: syncSide, crypto: cryptoRemote });
    return {
      sync: inThreadActor<SyncActorApi>('sync', syncImpl, SYNC_DEADLINES),
      cache: inThreadActor<CacheActorApi>('cache', cacheImpl, CACHE_DEADLINES),
      crypto,
      port: mainSide,
      cryptoPort,
    };
  },
};

/**
 * Actors on worker threads: the crypto actor on one, the sync and cache actors on another (the cache actor is the
 * sync actor's guest: main reaches it over a port of its own, the sync actor calls it in-thread). The sync actor
 * talks to the crypto actor over a port of its own, never through main.
 *
 * Why the cache shares the sync actor's thread: a worker is a V8 isolate with its own code, heap and allocator
 * arena, ~25 MiB of RSS before it holds anything, and the sync actor awaited every state change the cache applied
 * anyway, so its own thread bought no parallelism, only a structured clone of each batch's state.
 */
export const workerStrategy: ActorStrategy = {
  build(encryption) {
    const [mainToCache, cacheForMain] = portPair();
    const [mainEvents, syncEvents] = portPair();
    const syncPorts: Record<string, MessagePort> = { cache: cacheForMain, events: syncEvents };
    let crypto: ActorHandle<CryptoActorApi> | null = null;
    let cryptoPort: Port<CryptoToMain, MainToCrypto> | null = null;
    if (encryption) {
      const [syncToCrypto, cryptoFromSync] = portPair();
      const [mainCrypto, cryptoEvents] = portPair();
      crypto = spawnWorkerActor<CryptoActorApi>('crypto', CRYPTO_DEADLINES, { sync: cryptoFromSync, events: cryptoEvents });
      cryptoPort = typedPort<CryptoToMain, MainToCrypto>(mainCrypto);
      syncPorts.crypto = syncToCrypto;
    }
    const sync = spawnWorkerActor<SyncActorApi>('sync', SYNC_DEADLINES, syncPorts);
    return {
      sync,
      cache: guestActor<CacheActorApi>('cache', sync, mainToCache, CACHE_DEADLINES),
      crypto,
      port: typedPort<SyncToMain, MainToSync>(mainEvents),
      cryptoPort,
    };
  },
};

/** What starting a set of actors needs from the rest of the client. */
export interface ActorHooks {
  onSyncMessage(msg: SyncToMain): void;
  onCryptoMessage(msg: CryptoToMain): void;
  /** An actor's worker died (workers only): the supervisor restarts the set. */
  onDeath(err: HalcyonError): void;
  /** A room summary the cache holds at start (main's mirror takes them all before the first batch). */
  onSummary(s: RoomSummary): void;
  /** Timeline types main wants: null for all (an `event` listener exists). */
  wantedTypes(): string[] | null;
  /** Batch numbers of the new sync actor start above this (main has seen them). */
  seqFloor(): number;
  /** A strategy that replaces the local actors (a cluster worker's), or null. */
  strategy?(): ActorStrategy | null;
}

/** Event types the actors post by default; an `event` listener asks for all. */
export const DEFAULT_TYPES = ['m.room.message', 'm.reaction', 'm.room.member', 'm.room.redaction', 'm.sticker'];
/** The type of encrypted events: always posted (to be decrypted, or reported if encryption is off). */
export const ENCRYPTED = 'm.room.encrypted';

/** The client's live actor set (at most one), the crypto gate, and the device's identity; see the module comment. */
export class Actors {
  /** The live set, or null while stopped or between a restart's stop and start. */
  set: ActorSet | null = null;
  /** The device's identity keys (kept across restarts: the store is the same). */
  identity: CryptoIdentity | null = null;
  /**
   * The crypto actor once its store is open. Null while encryption is off, and for the whole of a restart (≥1 s:
   * the old actor is gone, the new one is starting or opening): sends wait on {@link gate} instead of going out
   * unencrypted or reaching an actor that cannot answer yet.
   */
  private cryptoOpen: ActorHandle<CryptoActorApi> | null = null;
  private readonly gate = new Gate();

  constructor(
    private readonly opts: ResolvedOptions,
    private readonly hooks: ActorHooks,
  ) {}

  /** The open crypto actor's API, or null (encryption off, or a restart in progress). */
  get openCrypto(): CryptoActorApi | null {
    return this.cryptoOpen?.api ?? null;
  }

  /** Resolves when a crypto actor is open (or the gate is opened again after a stop). */
  whenCryptoOpen(): Promise<void> {
    return this.gate.wait();
  }

  /**
   * Spawns the workers of a set ahead of {@link start} (their module loading and isolates' start-up, a few hundred
   * ms, then overlap run()'s HTTP start-up). Not for a cluster: its strategy is known only once the cluster part has
   * started. A set spawned here and never started is ended by {@link stop}.
   */
  prepare(): void {
    if (this.set || this.opts.cluster) return;
    this.set = this.build();
  }

  private build(): ActorSet {
    const o = this.opts;
    const set = (this.hooks.strategy?.() ?? (o.threads === 'inline' ? inlineStrategy : workerStrategy)).build(o.encryption !== null);
    traceStartup('actors built');
    for (const actor of [set.cache, set.sync, set.crypto]) actor?.onDeath((err) => this.hooks.onDeath(err));
    set.cryptoPort?.onMessage((msg) => this.hooks.onCryptoMessage(msg));
    return set;
  }

  /**
   * Starts a set (the one {@link prepare} spawned, or a new one). The crypto store opens while the cache opens and
   * the sync actor fetches and scans its first /sync: the sync actor hands a batch to the crypto actor before its
   * state is applied or its token saved, and the crypto actor takes it only once open (the device's keys are on the
   * server by then, and a store of another device has refused the run first). Main takes the sync actor's messages
   * only once the crypto actor is open here too (they wait in the port), so no batch reaches decryption before the
   * open crypto actor is published; the cache's summaries go to main's mirror before the first batch as well.
   * The sync actor starts only if `leads()` still says so then: a cluster ingest that lost its lease while the
   * others opened must not poll /sync (the next leader may already); the set is stopped after this returns. Its
   * crypto actor, likewise, sends no request (key uploads) unless `leads()` still says so once its store is open.
   */
  async start(session: Session, leads: () => boolean = () => true): Promise<void> {
    const o = this.opts;
    const e2ee = o.encryption;
    const set = this.set ?? (this.set = this.build());
    const held: SyncToMain[] = [];
    let holding = true;
    set.port.onMessage((msg) => (holding ? held.push(msg) : this.hooks.onSyncMessage(msg)));
    const opening = (set.crypto && e2ee ? this.openCryptoStore(set, session, e2ee, leads) : Promise.resolve()).then(() => {
      // Only now is the token's device known to fit the crypto store: a refused run must not re-point the data dir.
      claimDataDir(o.dataDir, session.homeserver, session.userId, session.deviceId);
    });
    const starting = (async () => {
      const memo = (set.plainJoined = new PlainRoomMemo());
      await set.cache.api.open({ dataDir: o.dataDir, maxRoomsInMemory: o.maxRoomsInMemory, encryptedRooms: memo.counter });
      traceStartup('cache open');
      for (const s of await set.cache.api.summaries()) this.hooks.onSummary(s);
      if (!leads()) return;
      await set.sync.api.start(this.syncConfig(session, set.crypto !== null));
      traceStartup('sync started');
    })();
    // Both settle before either's failure is thrown: the caller's clean-up must find no call in flight.
    const [opened, started] = await Promise.allSettled([opening, starting]);
    if (opened.status === 'rejected') throw opened.reason;
    if (started.status === 'rejected') throw started.reason;
    holding = false;
    for (const msg of held.splice(0)) this.hooks.onSyncMessage(msg);
  }

  /**
   * Opens the set's crypto store and, if the set is still the live one, publishes it (waiting sends go). In a
   * cluster its requests are held until then, and let go only if `leads()` still holds (see {@link start}).
   */
  private async openCryptoStore(set: ActorSet, session: Session, e2ee: NonNullable<ResolvedOptions['encryption']>, leads: () => boolean): Promise<void> {
    const o = this.opts;
    const hold = o.cluster !== null;
    const wanted = this.hooks.wantedTypes();
    this.identity = await set.crypto!.api.open({
      homeserver: session.homeserver,
      userId: session.userId,
      deviceId: session.deviceId,
      accessToken: session.accessToken,
      dataDir: o.dataDir,
      passphrase: e2ee.passphrase ?? storePassphrase(o.dataDir),
      wantedTypes: wanted === null ? null : DEFAULT_TYPES,
      maxPendingUndecryptable: e2ee.maxPendingUndecryptable ?? 1_000,
      pendingUndecryptableMaxAgeMs: e2ee.pendingUndecryptableMaxAgeMs ?? 24 * 3600_000,
      trust: o.trust,
      requestTimeoutMs: o.requestTimeoutMs,
      ...(hold ? { holdRequests: true } : {}),
    });
    traceStartup('crypto open');
    if (hold) {
      if (!leads()) return; // stepped down meanwhile: nothing went, and the set is stopped next
      await set.crypto!.api.release();
    }
    // Published only now, and only if no stop or restart replaced the set meanwhile: waiting sends go.
    if (this.set === set) {
      this.cryptoOpen = set.crypto;
      this.gate.open();
    }
  }

  private syncConfig(session: Session, encryption: boolean): SyncConfig {
    const o = this.opts;
    return {
      homeserver: session.homeserver,
      userId: session.userId,
      deviceId: session.deviceId,
      accessToken: session.accessToken,
      dataDir: o.dataDir,
      pollTimeoutMs: o.pollTimeoutMs,
      deadlineMarginMs: 15_000,
      requestTimeoutMs: o.requestTimeoutMs,
      maxInFlightEvents: o.maxQueuedEvents,
      maxJournalEvents: o.maxJournalEvents,
      maxGapEvents: o.maxGapEvents,
      seqFloor: this.hooks.seqFloor(),
      deliverInitialTimeline: o.deliverInitialTimeline,
      backoffMinMs: o.backoffMinMs,
      backoffMaxMs: o.backoffMaxMs,
      wantedTypes: this.hooks.wantedTypes(),
      encryption,
    };
  }

  /**
   * Ends the set and its ports. `graceful`: the sync actor was stopped already, the stores close normally. For a
   * restart: the sync actor gets a short stop (no drain) and every call is bounded, since one of the actors is
   * dead or stuck. `warn` reports calls that failed or ran out of time.
   */
  async stop(graceful: boolean, warn: (err: unknown, what: string) => void): Promise<void> {
    const set = this.set;
    // From here until a new crypto actor has opened its store, sends wait.
    this.cryptoOpen = null;
    this.gate.close();
    if (!set) return;
    const bounded = <T>(p: Promise<T> | undefined, what: string) =>
      p && Promise.race([p, new Promise<void>((r) => setTimeout(r, graceful ? CRYPTO_DEADLINES.close : RESTART_CALL_MS).unref())]).catch((e) => warn(e, what));
    if (!graceful) await bounded(set.sync.api.stop(0), 'sync actor stop');
    // After the sync actor: it may be handing the crypto actor a batch until it has stopped.
    await Promise.all([bounded(set.cache.api.close(), 'cache actor close'), bounded(set.crypto?.api.close(), 'crypto actor close')]);
    await set.sync.terminate();
    await set.cache.terminate();
    await set.crypto?.terminate();
    set.cryptoPort?.close();
    // Cleared only now: handlers finishing during a graceful drain still acknowledge over the port.
    if (this.set === set) this.set = null;
    set.port.close();
  }

  /** Tells the actors to post every timeline type (an `event` listener was added while running). */
  wantAllTypes(): void {
    void this.set?.sync.api.setWantedTypes(null).catch(() => {});
    void this.set?.crypto?.api.setWantedTypes(null).catch(() => {});
  }

  /** Crashes one actor's worker as a fault would (fault-injection tests). */
  async crash(name: 'sync' | 'cache' | 'crypto'): Promise<void> {
    const set = this.set;
    await (name === 'sync' ? set?.sync : name === 'cache' ? set?.cache : set?.crypto)?.crash();
  }

  /** Makes one actor's worker stop answering while it stays alive (watchdog tests). */
  async stall(name: 'sync' | 'cache' | 'crypto'): Promise<void> {
    const set = this.set;
    await (name === 'sync' ? set?.sync : name === 'cache' ? set?.cache : set?.crypto)?.stall();
  }
}

/**
 * A gate that is open or closed; {@link wait} resolves once it is open. Closing it again gives later waiters a new
 * promise; those waiting already are released by the next {@link open}.
 */
class Gate {
  private promise: Promise<void>;
  private release: (() => void) | null = null;
  constructor() {
    this.promise = new Promise((r) => (this.release = r));
  }
  open(): void {
    this.release?.();
    this.release = null;
  }
  close(): void {
    if (this.release) return;
    this.promise = new Promise((r) => (this.release = r));
  }
  wait(): Promise<void> {
    return this.promise;
  }
}
