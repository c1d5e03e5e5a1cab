/**
 * The sync actor: long-polls /sync, turns each body into a change batch (see process.ts), has the cache actor
 * apply its state, and posts the batch to main. It owns `sync.sqlite` (since token, filter ID).
 *
 * Flow control: batches are posted without waiting for main, so a busy main thread never delays the next poll;
 * main acknowledges each batch once all its handlers have settled. The since token saved on disk is the
 * `next_batch` of the newest batch whose handlers, and all earlier ones', have settled: after a crash, the
 * next run resumes from there and redelivers what was not handled. The actor stops polling only when
 * `maxInFlightEvents` events are unhandled (the dispatcher's bound).
 */
import { HalcyonError, toWireError } from '../errors.ts';
import { delay, MatrixHttp, seg } from '../http.ts';
import type { Port, Remote } from '../actors.ts';
import type {
  CacheActorApi,
  CryptoActorApi,
  CryptoSyncChanges,
  EventColumns,
  MainToSync,
  SyncActorApi,
  SyncConfig,
  SyncStartInfo,
  SyncStatus,
  SyncToMain,
  WireBatch,
} from '../protocol.ts';
import { type Database, kvGet, kvSet, openDatabase } from '../store.ts';
import { processSync, type ProcessedSync } from './process.ts';

/** The sync actor's collaborators: the cache actor, the crypto actor (with encryption on) and the event port to main. */
export interface SyncDeps {
  cache: Remote<CacheActorApi>;
  crypto?: Remote<CryptoActorApi>;
  events: Port<MainToSync, SyncToMain>;
}

interface InFlight {
  seq: number;
  nextBatch: string;
  count: number;
  done: boolean;
}

function emptyColumns(): EventColumns {
  return { count: 0, room: new Int32Array(0), type: new Int32Array(0), relType: new Int32Array(0), strings: [], ts: new Float64Array(0), flags: new Uint8Array(0), offsets: new Int32Array(0) };
}

const FILTER = {
  room: {
    state: { lazy_load_members: true },
    // 50 rather than the server's default 10: a busy room between two polls should rarely come back gappy.
    timeline: { lazy_load_members: true, limit: 50 },
  },
};

/** Long-polls /sync on its own thread; see the module comment. */
export class SyncActor implements SyncActorApi {
  private config!: SyncConfig;
  private http!: MatrixHttp;
  private db!: Database;
  private since: string | null = null;
  private savedSince: string | null = null;
  private wanted: Set<string> | null = null;
  private seq = 0;
  private polls = 0;
  private consecutiveErrors = 0;
  private lastError: SyncStatus['lastError'];
  private readonly inFlight: InFlight[] = [];
  private inFlightEvents = 0;
  private creditWaiter: (() => void) | null = null;
  private abort = new AbortController();
  private loop: Promise<void> | null = null;
  private running = false;
  private drained: (() => void) | null = null;
  /** The key counts last given to the crypto actor: unchanged counts alone are not worth a call. */
  private lastKeyCounts = '';

  constructor(private readonly deps: SyncDeps) {}

  async start(config: SyncConfig): Promise<SyncStartInfo> {
    if (this.running) throw new HalcyonError('HALCYON_ALREADY_RUNNING', 'the sync actor is already running');
    this.config = config;
    this.wanted = config.wantedTypes ? new Set(config.wantedTypes) : null;
    this.db = openDatabase(config.dataDir, 'sync.sqlite');
    this.since = kvGet(this.db, 'since') ?? null;
    this.savedSince = this.since;
    this.http = new MatrixHttp(config.homeserver, config.accessToken);
    this.deps.events.onMessage((msg) => {
      if (msg.kind === 'handled') this.handled(msg.seq);
    });
    this.abort = new AbortController();
    this.running = true;
    const resumed = this.since !== null;
    this.loop = this.run(resumed);
    return { resumed };
  }

  async setWantedTypes(types: string[] | null): Promise<void> {
    this.wanted = types ? new Set(types) : null;
  }

  async setPresence(state: SyncConfig['setPresence']): Promise<void> {
    this.config.setPresence = state;
  }

  /**
   * Stops polling, then waits (up to `drainMs`) for main to acknowledge the batches it holds, so their token is
   * saved; unacknowledged batches are redelivered by the next run.
   */
  async stop(drainMs = 20_000): Promise<void> {
    if (!this.loop) return;
    this.running = false;
    this.abort.abort();
    this.creditWaiter?.();
    await this.loop;
    this.loop = null;
    if (this.inFlight.length > 0) {
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, drainMs);
        this.drained = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
    this.drained = null;
    await this.http.close();
    this.db.close();
  }

  async status(): Promise<SyncStatus> {
    const s: SyncStatus = {
      running: this.running,
      since: this.savedSince,
      polls: this.polls,
      consecutiveErrors: this.consecutiveErrors,
      inFlightEvents: this.inFlightEvents,
    };
    if (this.lastError) s.lastError = this.lastError;
    return s;
  }

  private async run(resumed: boolean): Promise<void> {
    let first = true;
    const deliverTimeline = resumed || this.config.deliverInitialTimeline;
    while (this.running) {
      await this.waitForCredit();
      if (!this.running) break;
      try {
        const filter = await this.filterId();
        const initial = this.since === null;
        const body = await this.http.bytes('GET', '/_matrix/client/v3/sync', {
          query: {
            since: this.since ?? undefined,
            timeout: initial ? 0 : this.config.pollTimeoutMs,
            filter,
            set_presence: this.config.setPresence,
          },
          // Client-side deadline: a silently dead connection must not stall the loop forever.
          timeoutMs: (initial ? Math.max(this.config.pollTimeoutMs, 120_000) : this.config.pollTimeoutMs) + this.config.deadlineMarginMs,
          signal: this.abort.signal,
          maxRateLimitRetries: 0,
        });
        this.polls++;
        const processed = processSync(body, { wantedTypes: this.wanted, ownUserId: this.config.userId });
        if (this.consecutiveErrors > 0) {
          this.deps.events.post({ kind: 'syncRecovered', afterAttempts: this.consecutiveErrors });
          this.consecutiveErrors = 0;
        }
        // A repeated next_batch means nothing new: polling again with the same token is all there is to do.
        if (processed.nextBatch === this.since && !first) continue;
        await this.handOff(processed, body, first, first ? deliverTimeline : true);
        first = false;
      } catch (err) {
        if (!this.running) break;
        const e = toWireError(err, 'HALCYON_INTERNAL');
        this.lastError = e;
        if (e.code === 'HALCYON_UNKNOWN_TOKEN') {
          // Retrying a dead token only hammers the server: stop and tell main.
          this.running = false;
          this.deps.events.post({ kind: 'fatal', error: e });
          break;
        }
        this.consecutiveErrors++;
        const retryInMs = this.backoff(e.retryAfterMs);
        this.deps.events.post({ kind: 'syncError', error: e, attempt: this.consecutiveErrors, retryInMs });
        try {
          await delay(retryInMs, this.abort.signal);
        } catch {
          break;
        }
      }
    }
  }

  /**
   * Has the crypto actor apply the batch's to-device events and key changes (before the next poll, whose since
   * token lets the server delete them) and the cache apply its state, then posts the batch to main. The since
   * token advances in memory.
   */
  private async handOff(p: ProcessedSync, body: Uint8Array, first: boolean, deliver: boolean): Promise<void> {
    const changes = this.deps.crypto && this.config.encryption ? this.cryptoChanges(p) : null;
    const applying = changes
      ? this.deps.crypto!.receiveSyncChanges(changes).catch((err: unknown) => {
          this.lastKeyCounts = ''; // the retry of this batch (or the next batch) must carry its key counts again
          throw err;
        })
      : undefined;
    // Only what the next poll deletes (to-device events) or what this batch's handlers may send with (device
    // lists, room encryption, members) is waited for. Key counts alone are not: the server repeats them in every
    // sync, and the crypto actor applies calls in the order they were made, so a later batch still comes after.
    const mustWait = changes !== null && !countsOnly(changes);
    // Not awaited: the crypto actor reports its own failures to main (error/fatal on its port, or its death).
    if (applying && !mustWait) applying.catch(() => {});
    const stateChanged = p.state.rooms.length > 0 || p.accountData.length > 0;
    const [summaries] = await Promise.all([stateChanged ? this.deps.cache.apply(p.state) : [], mustWait ? applying : undefined]);
    const seq = ++this.seq;
    const count = deliver ? p.events.count : 0;
    const trivial =
      count === 0 && summaries.length === 0 && p.invites.length === 0 && p.left.length === 0 && p.errors.length === 0 && p.accountData.length === 0 && p.receipts.length === 0;
    this.since = p.nextBatch;
    if (trivial && !first) {
      // Nothing for main: the token is done as soon as every earlier batch is.
      this.inFlight.push({ seq, nextBatch: p.nextBatch, count: 0, done: true });
      this.advance();
      return;
    }
    const batch: WireBatch = {
      seq,
      nextBatch: p.nextBatch,
      first,
      deliver,
      rooms: deliver ? p.rooms : [],
      // Transfer needs a view that owns its whole buffer (undici's arrayBuffer() gives one; copy otherwise).
      body: !deliver ? new Uint8Array(0) : body.byteOffset === 0 && body.byteLength === body.buffer.byteLength ? body : body.slice(),
      events: deliver ? p.events : emptyColumns(),
      invites: p.invites,
      left: p.left,
      summaries,
      errors: p.errors,
      // Account data reaches handlers only with a delivered timeline (the cache stores it either way).
      accountData: deliver ? p.accountData : [],
      receipts: deliver ? p.receipts : [],
    };
    this.inFlight.push({ seq, nextBatch: p.nextBatch, count, done: false });
    this.inFlightEvents += count;
    const e = batch.events;
    // Moved, not copied: the body and the offset table change owner; this actor is done with them.
    this.deps.events.post({ kind: 'batch', batch }, [batch.body.buffer, e.room.buffer, e.type.buffer, e.relType.buffer, e.ts.buffer, e.flags.buffer, e.offsets.buffer] as ArrayBuffer[]);
  }

  /** The batch's crypto-relevant parts, or null when there are none worth a call. */
  private cryptoChanges(p: ProcessedSync): CryptoSyncChanges | null {
    const c = p.crypto;
    const encryption: CryptoSyncChanges['encryption'] = [];
    const members: CryptoSyncChanges['members'] = [];
    for (const r of p.state.rooms) {
      if (r.membership !== 'join') continue; // invite state is stripped and unauthenticated
      for (const ev of r.state) {
        if (ev.type === 'm.room.encryption' && ev.state_key === '') encryption.push({ roomId: r.roomId, content: ev.content });
        else if (ev.type === 'm.room.member' && typeof ev.state_key === 'string' && typeof ev.content.membership === 'string') {
          members.push({ roomId: r.roomId, userId: ev.state_key, membership: ev.content.membership });
        }
      }
    }
    const keyCounts = JSON.stringify([c.otkCounts, c.fallbackKeyTypes]);
    const countsChanged = (c.otkCounts !== null || c.fallbackKeyTypes !== null) && keyCounts !== this.lastKeyCounts;
    if (c.toDevice.length === 0 && c.deviceListsChanged.length === 0 && c.deviceListsLeft.length === 0 && !countsChanged && encryption.length === 0 && members.length === 0 && p.left.length === 0) {
      return null;
    }
    if (countsChanged) this.lastKeyCounts = keyCounts;
    return {
      batchToken: p.nextBatch,
      toDevice: JSON.stringify(c.toDevice),
      toDeviceCount: c.toDevice.length,
      deviceListsChanged: c.deviceListsChanged,
      deviceListsLeft: c.deviceListsLeft,
      otkCounts: c.otkCounts,
      fallbackKeyTypes: c.fallbackKeyTypes,
      encryption,
      members,
      left: p.left,
    };
  }

  private handled(seq: number): void {
    const entry = this.inFlight.find((e) => e.seq === seq);
    if (!entry || entry.done) return;
    entry.done = true;
    this.inFlightEvents -= entry.count;
    this.advance();
    if (this.inFlight.length === 0) this.drained?.();
    if (this.creditWaiter && this.inFlightEvents < this.config.maxInFlightEvents) this.creditWaiter();
  }

  /** Saves the token of the newest batch that, with every batch before it, is fully handled. */
  private advance(): void {
    let token: string | null = null;
    while (this.inFlight.length > 0 && this.inFlight[0]!.done) token = this.inFlight.shift()!.nextBatch;
    if (token !== null && token !== this.savedSince && this.db.isOpen) {
      kvSet(this.db, 'since', token);
      this.savedSince = token;
    }
  }

  private waitForCredit(): Promise<void> {
    if (this.inFlightEvents < this.config.maxInFlightEvents) return Promise.resolve();
    return new Promise((resolve) => {
      this.creditWaiter = () => {
        this.creditWaiter = null;
        resolve();
      };
    });
  }

  private backoff(retryAfterMs?: number): number {
    const { backoffMinMs: min, backoffMaxMs: max } = this.config;
    const base = Math.min(max, min * 2 ** Math.min(this.consecutiveErrors - 1, 30));
    // Jitter spreads reconnects of many bots after a homeserver restart.
    const jittered = base * (0.8 + Math.random() * 0.4);
    return Math.round(Math.max(jittered, retryAfterMs ?? 0));
  }

  /** The stored filter ID for our filter, uploading the filter on first use. */
  private async filterId(): Promise<string> {
    // Keyed by user too: a filter ID is only valid for the user who uploaded it.
    const key = `filter:${this.config.userId}:${JSON.stringify(FILTER)}`;
    const known = kvGet(this.db, key);
    if (known) return known;
    const res = await this.http.json<{ filter_id?: unknown }>('POST', `/_matrix/client/v3/user/${seg(this.config.userId)}/filter`, {
      body: FILTER,
      signal: this.abort.signal,
    });
    if (typeof res.filter_id !== 'string') throw new HalcyonError('HALCYON_BAD_RESPONSE', 'filter upload: no filter_id in the answer');
    kvSet(this.db, key, res.filter_id);
    return res.filter_id;
  }
}

/** Whether crypto changes carry nothing but one-time-key counts and fallback key types. */
function countsOnly(c: CryptoSyncChanges): boolean {
  return c.toDeviceCount === 0 && c.deviceListsChanged.length === 0 && c.deviceListsLeft.length === 0 && c.encryption.length === 0 && c.members.length === 0 && c.left.length === 0;
}
