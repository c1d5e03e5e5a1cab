/**
 * The sync actor: long-polls /sync, turns each body into a change batch (see process.ts), has the cache actor
 * apply its state, journals the batch, and posts it to main. It owns `sync.sqlite` (since token, event
 * journal).
 *
 * Delivery: each batch with something for handlers is appended to the journal (journal.ts) in the same SQLite
 * transaction that saves its `next_batch` as the since token, so the token advances at once and a crash loses
 * nothing. Batches are posted to main in journal order without waiting for main, so a busy main thread never
 * delays the next poll; main acknowledges events as their handlers settle, and the journal forgets a batch once
 * it is complete. At most `maxInFlightEvents` unhandled events are in main's memory: past that, batches wait on
 * disk (backpressure; the next to go, up to 16 MiB, stay in memory too) and are read back as main catches up;
 * polling stops only when `maxJournalEvents` are journaled and unhandled. A restart posts the journal's
 * remaining batches first, skipping events marked done.
 */
import { HalcyonError, toWireError, type WireError } from '../errors.ts';
import { delay } from '../abort.ts';
import { MatrixHttp, type RequestOptions } from '../http.ts';
import { collectGarbage, type Port, type Remote, traceStartup } from '../actors.ts';
import { threadMemory } from '../memory.ts';
import { wasmBytes } from './skipper.ts';
import type {
  ActorMemory,
  CacheActorApi,
  CryptoActorApi,
  EventColumns,
  MainToSync,
  RoomSummary,
  StateChanges,
  SyncActorApi,
  SyncConfig,
  SyncStartInfo,
  SyncStatus,
  SyncToMain,
  WireBatch,
} from '../protocol.ts';
import { type Database, kvGet, openDatabase } from '../store.ts';
import { EventJournal, type JournaledBatch } from './journal.ts';
import { processSync, type ProcessedSync } from './process.ts';
import { backfill, type Backfill } from './backfill.ts';
import { processStream } from './split.ts';
import { countsOnly, CRYPTO_STATE, cryptoChanges } from './crypto-changes.ts';

/** The sync actor's collaborators: the cache actor, the crypto actor (with encryption on) and the event port to main. */
export interface SyncDeps {
  cache: Remote<CacheActorApi>;
  crypto?: Remote<CryptoActorApi>;
  events: Port<MainToSync, SyncToMain>;
}

/** A batch waiting to be posted to main: in memory (this run's fresh batches), or to be read from the journal. */
interface Queued {
  seq: number;
  /** The batch, when it is still in memory (dropped when it has to wait: memory stays bounded). */
  batch: WireBatch | null;
  /** Unhandled events it brings (its event count, less those done before a restart). */
  count: number;
  journaled: boolean;
  /** Its journal row says "posted" already (it was appended so, to be posted at once): no second commit for it. */
  marked?: boolean;
}

function emptyColumns(): EventColumns {
  return { count: 0, room: new Int32Array(0), type: new Int32Array(0), relType: new Int32Array(0), strings: [], ts: new Float64Array(0), flags: new Uint8Array(0), offsets: new Int32Array(0) };
}

const SYNC_PATH = '/_matrix/client/v3/sync';
/** A streamed first sync's joined rooms go to the cache this many at a time (see streamFirst). */
const APPLY_ROOMS = 500;
/** A big account's initial sync runs to 100s of MB; the limit only stops a server that never ends its answer. */
const MAX_SYNC_BYTES = 512 * 1024 * 1024;

/** Batches waiting for room in main stay in memory, the next to go first, while their bodies add up to at most this. */
const KEEP_WAITING_BYTES = 16 * 1024 * 1024;

/** A /sync body this large (a big account's initial sync, a long catch-up) is followed by a full collection. */
const LARGE_BODY_BYTES = 32 * 1024 * 1024;
/** A poll not answered within this long is held by the server (nothing new): the worker is idle meanwhile. */
const HELD_POLL_MS = 100;

const FILTER = JSON.stringify({
  room: {
    state: { lazy_load_members: true },
    // 50 rather than the server's default 10: a busy room between two polls should rarely come back gappy.
    timeline: { lazy_load_members: true, limit: 50 },
  },
});

/** Long-polls /sync on its own thread; see the module comment. */
export class SyncActor implements SyncActorApi {
  private config!: SyncConfig;
  private http!: MatrixHttp;
  private db!: Database;
  private since: string | null = null;
  private savedSince: string | null = null;
  /** Garbage of the run's first sync waits to be collected while the server holds a poll (see run). */
  private collectWhenHeld = false;
  private wanted: Set<string> | null = null;
  private journal!: EventJournal;
  private seq = 0;
  private polls = 0;
  private consecutiveErrors = 0;
  private lastError: SyncStatus['lastError'];
  private lastPollStartAt: number | null = null;
  /** Aborts the poll waiting for its answer (null when none is), and the `set_presence` that poll carries. */
  private pollAbort: AbortController | null = null;
  private pollPresence: SyncConfig['setPresence'];
  private lastSuccessAt: number | null = null;
  /** When the poll after a failure is due (null when none is waiting). */
  private nextPollAt: number | null = null;
  /** Batches to post, in order. */
  private readonly queue: Queued[] = [];
  /** Unhandled events by posted batch. */
  private readonly inFlight = new Map<number, number>();
  private inFlightEvents = 0;
  /** Journaled events not yet handled (in flight included). */
  private backlog = 0;
  private backpressure = false;
  private creditWaiter: (() => void) | null = null;
  private abort = new AbortController();
  private loop: Promise<void> | null = null;
  private running = false;
  private drained: (() => void) | null = null;
  /** The key counts last given to the crypto actor: unchanged counts alone are not worth a call. */
  private readonly keyCounts = { last: '' };
  /** Summaries of the rooms a streamed first sync changed, until a first batch takes them to main (see streamFirst). */
  private readonly firstSummaries = new Map<string, RoomSummary>();

  constructor(private readonly deps: SyncDeps) {}

  async start(config: SyncConfig): Promise<SyncStartInfo> {
    if (this.running) throw new HalcyonError('HALCYON_ALREADY_RUNNING', 'the sync actor is already running');
    this.config = config;
    this.wanted = config.wantedTypes ? new Set(config.wantedTypes) : null;
    this.db = openDatabase(config.dataDir, 'sync.sqlite');
    traceStartup('sync.sqlite open');
    this.since = kvGet(this.db, 'since') ?? null;
    this.savedSince = this.since;
    this.journal = new EventJournal(this.db, config.dataDir);
    this.seq = Math.max(this.journal.maxSeq(), config.seqFloor);
    // What an earlier run journaled and main did not finish goes first, in order.
    for (const row of this.journal.pending()) {
      this.queue.push({ seq: row.seq, batch: null, count: row.events - row.doneEvents, journaled: true });
      this.backlog += row.events - row.doneEvents;
    }
    this.http = new MatrixHttp(config.homeserver, config.accessToken, { timeoutMs: config.requestTimeoutMs });
    this.deps.events.onMessage((msg) => {
      if (msg.kind === 'acks') this.acked(msg.progress, msg.complete);
    });
    this.abort = new AbortController();
    this.running = true;
    const resumed = this.since !== null;
    this.loop = this.run(resumed);
    return { resumed };
  }

  /** Posts queued batches while main has room for their events (a batch without events always goes). */
  private pump(): void {
    while (this.queue.length > 0 && this.db.isOpen) {
      const q = this.queue[0]!;
      if (!this.hasRoom(q.count)) break;
      let batch = q.batch;
      if (!batch) {
        const row = this.journal.load(q.seq);
        if (!row) {
          this.queue.shift(); // completed meanwhile
          continue;
        }
        batch = { ...row.batch, seq: q.seq, redelivered: row.posted, done: row.done };
      }
      this.queue.shift();
      if (q.journaled && !q.marked) this.journal.markPosted(q.seq);
      if (q.count > 0 || q.journaled) {
        this.inFlight.set(q.seq, q.count);
        this.inFlightEvents += q.count;
      }
      const e = batch.events;
      // Moved, not copied: the body and the offset table change owner; this actor is done with them.
      const moved = [batch.body.buffer, e.room.buffer, e.type.buffer, e.relType.buffer, e.ts.buffer, e.flags.buffer, e.offsets.buffer] as ArrayBuffer[];
      if (e.ids && e.idAt) moved.push(e.ids.buffer as ArrayBuffer, e.idAt.buffer as ArrayBuffer);
      this.deps.events.post({ kind: 'batch', batch }, moved);
    }
    // Batches kept back wait on disk, not in memory, but for the next ones to go up to KEEP_WAITING_BYTES: they
    // mostly wait only for main's acknowledgement already queued behind this turn, and reading one back (a file
    // read and a deserialisation, 1–4 ms for 3 MB) would delay it for nothing.
    let kept = 0;
    for (const q of this.queue) {
      if (!q.journaled || !q.batch) continue;
      kept += q.batch.body.byteLength;
      if (kept > KEEP_WAITING_BYTES) q.batch = null;
    }
    const behind = this.queue.length > 0;
    if (behind !== this.backpressure) {
      this.backpressure = behind;
      this.deps.events.post({ kind: 'backpressure', active: behind, backlogEvents: this.backlog, inFlightEvents: this.inFlightEvents });
    }
  }

  /** Whether main has room for a batch of `count` events now (one without events, or into an empty main, always goes). */
  private hasRoom(count: number): boolean {
    return count === 0 || this.inFlightEvents === 0 || this.inFlightEvents + count <= this.config.maxInFlightEvents;
  }

  async setWantedTypes(types: string[] | null): Promise<void> {
    this.wanted = types ? new Set(types) : null;
  }

  async setPresence(state: SyncConfig['setPresence']): Promise<void> {
    this.config.setPresence = state;
    // A poll already out carries the old value, and the server applies it when the poll reaches it: after the
    // caller's presence PUT, if its connection was still being made. It goes again at once with the new value.
    if (this.pollAbort && this.pollPresence !== state) this.pollAbort.abort();
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
    if (this.inFlight.size > 0) {
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
    this.journal.close();
    this.db.close();
  }

  async status(): Promise<SyncStatus> {
    const s: SyncStatus = {
      running: this.running,
      since: this.savedSince,
      polls: this.polls,
      consecutiveErrors: this.consecutiveErrors,
      inFlightEvents: this.inFlightEvents,
      backlogEvents: this.backlog,
      waitingForCredit: this.creditWaiter !== null,
      nextPollAt: this.nextPollAt,
      lastPollStartAt: this.lastPollStartAt,
      lastSuccessAt: this.lastSuccessAt,
    };
    if (this.lastError) s.lastError = this.lastError;
    return s;
  }

  async memory(collect = false): Promise<ActorMemory> {
    return threadMemory({ collect, wasmBytes: wasmBytes() });
  }

  private async run(resumed: boolean): Promise<void> {
    let first = true;
    const deliverTimeline = resumed || this.config.deliverInitialTimeline;
    while (this.running) {
      await this.waitForCredit();
      if (!this.running) break;
      try {
        const bytes = await this.pollOnce(first, deliverTimeline);
        // The body and what processing it made are garbage now: a very large one's is collected at once; a run's
        // first (an idle worker's V8 kept a 10 MB initial sync's chunks and heap, ~40 MB) once the server holds a
        // long-poll (pollOnce): not while events stream in, where collecting the whole heap (~50 ms) held the next
        // poll up and took CPU the stream needed.
        if (bytes >= LARGE_BODY_BYTES) collectGarbage();
        else if (first && bytes >= 0) this.collectWhenHeld = true;
        if (bytes >= 0) first = false;
      } catch (err) {
        if (!this.running) break;
        const e = toWireError(err, 'HALCYON_INTERNAL');
        this.lastError = e;
        if (e.code === 'HALCYON_UNKNOWN_TOKEN' || e.code === 'HALCYON_SOFT_LOGOUT') {
          // Retrying a dead token only hammers the server (a soft-logged-out one too, until a new login): stop and tell main.
          this.running = false;
          this.deps.events.post({ kind: 'fatal', error: e });
          break;
        }
        this.consecutiveErrors++;
        const retryInMs = this.backoff(e.retryAfterMs);
        this.deps.events.post({ kind: 'syncError', error: e, attempt: this.consecutiveErrors, retryInMs });
        this.nextPollAt = Date.now() + retryInMs;
        try {
          await delay(retryInMs, this.abort.signal);
        } catch {
          break;
        } finally {
          this.nextPollAt = null;
        }
      }
    }
  }

  /**
   * One poll: fetches, processes and hands over a /sync response; resolves with the body's size, or −1 when it
   * brought nothing new. A method
   * of its own so the body and its processed batch die with its frame: kept in the loop's async frame, they
   * stayed reachable through the next long-poll (the whole initial sync, 100 MB with 10,000 rooms).
   */
  private async pollOnce(first: boolean, deliverTimeline: boolean): Promise<number> {
    if (first) traceStartup('first /sync sent');
    this.lastPollStartAt = Date.now();
    const request = {
      query: {
        since: this.since ?? undefined,
        // The first poll of a run answers at once, whatever it brings: `ready` must not wait out a long-poll on
        // a quiet account (a restart took 30 s to become ready).
        timeout: first ? 0 : this.config.pollTimeoutMs,
        // Inline (the spec allows a filter's JSON in place of its ID): no upload, so a fresh start's first poll
        // goes out a round trip sooner.
        filter: FILTER,
        set_presence: this.config.setPresence,
      },
      // Client-side deadline: a silently dead connection must not stall the loop forever.
      // An initial sync or a catch-up after downtime can take the server a while to assemble.
      timeoutMs: (first ? Math.max(this.config.pollTimeoutMs, 120_000) : this.config.pollTimeoutMs) + this.config.deadlineMarginMs,
      signal: this.abort.signal,
      maxRateLimitRetries: 0,
    };
    // A run's first sync whose timelines are not delivered (a fresh start's: as big as the account) is processed
    // as it arrives, its joined rooms' state applied slice by slice: never the whole body in memory.
    if (first && !deliverTimeline) return this.streamFirst(request);
    const pollAbort = new AbortController();
    this.pollAbort = pollAbort;
    this.pollPresence = request.query.set_presence;
    const fetching = this.http.bytes('GET', SYNC_PATH, { ...request, signal: AbortSignal.any([this.abort.signal, pollAbort.signal]), maxBytes: MAX_SYNC_BYTES });
    let body: Uint8Array;
    try {
      body = this.collectWhenHeld ? await this.collectingWhileHeld(fetching) : await fetching;
    } catch (err) {
      // Aborted for a presence change (setPresence): nothing was received, so nothing moves; poll again at once.
      if (pollAbort.signal.aborted && this.running) return -1;
      throw err;
    } finally {
      this.pollAbort = null;
    }
    if (first) traceStartup('first /sync received');
    this.polls++;
    this.lastSuccessAt = Date.now();
    const processed = processSync(body, { wantedTypes: this.wanted, ownUserId: this.config.userId });
    if (first) traceStartup('first /sync scanned');
    if (this.consecutiveErrors > 0) {
      this.deps.events.post({ kind: 'syncRecovered', afterAttempts: this.consecutiveErrors });
      this.consecutiveErrors = 0;
    }
    // A repeated next_batch means nothing new: polling again with the same token is all there is to do.
    if (processed.nextBatch === this.since && !first) return -1;
    const deliver = first ? deliverTimeline : true;
    // Events a gappy (limited) timeline left out, fetched before the batch is handed over.
    const gaps = this.since === null ? [] : processed.gaps.filter((g) => g.prevBatch !== this.since);
    const gap = deliver && gaps.length > 0 && this.config.maxGapEvents > 0 ? await backfill(this.http, gaps, this.since!, { maxGapEvents: this.config.maxGapEvents, userId: this.config.userId, wanted: this.wanted, signal: this.abort.signal, running: () => this.running }) : null;
    const size = body.byteLength; // before the hand-off, which may transfer the buffer away
    await this.handOff(processed, body, first, deliver, gap);
    return size;
  }

  /** Awaits a poll's answer, collecting garbage if the server holds the poll past {@link HELD_POLL_MS} (idle). */
  private async collectingWhileHeld<T>(answer: Promise<T>): Promise<T> {
    const timer = setTimeout(() => {
      this.collectWhenHeld = false;
      collectGarbage();
    }, HELD_POLL_MS);
    try {
      return await answer;
    } finally {
      clearTimeout(timer);
    }
  }

  /** A first batch's summaries: those of a streamed first sync's slices (see streamFirst), then `applied`. */
  private withFirstSummaries(applied: RoomSummary[]): RoomSummary[] {
    if (this.firstSummaries.size === 0) return applied;
    for (const s of applied) this.firstSummaries.set(s.roomId, s);
    const all = [...this.firstSummaries.values()];
    this.firstSummaries.clear();
    return all;
  }

  /**
   * The first poll of a fresh run, its timelines not delivered: the body is read as a stream (processStream) and
   * each slice of joined rooms goes to the cache before more is read; the rest (the other rooms, to-device events,
   * the token) is handed off as a whole body's would be. The slices' summaries are kept until a first batch takes
   * them: a failed attempt's are not lost to its retry, which finds those rooms unchanged.
   */
  private async streamFirst(request: RequestOptions): Promise<number> {
    const res = await this.http.stream('GET', SYNC_PATH, request);
    const errors: WireError[] = [];
    const cryptoRooms: StateChanges['rooms'] = [];
    const verification: ProcessedSync['crypto']['verification'] = [];
    const encryption = this.deps.crypto !== undefined && this.config.encryption;
    // Slices' state goes to the cache a few hundred rooms at a time: a transaction per small slice cost twice the
    // cache's time (a commit rewrites the same pages), while small slices free the body's chunks sooner.
    let pending: Required<StateChanges> = { rooms: [], accountData: [] };
    const apply = async (): Promise<void> => {
      const state = pending;
      pending = { rooms: [], accountData: [] };
      if (state.rooms.length > 0 || state.accountData.length > 0) for (const s of await this.deps.cache.apply(state)) this.firstSummaries.set(s.roomId, s);
    };
    let out: Awaited<ReturnType<typeof processStream>>;
    try {
      out = await processStream(res.body, {
        wantedTypes: this.wanted,
        ownUserId: this.config.userId,
        ids: false, // its timelines go to no handler
        maxBytes: MAX_SYNC_BYTES,
        contentLength: Number(res.headers['content-length']), // NaN without one: streamed
        onSlice: async (slice) => {
          pending.rooms.push(...slice.state.rooms);
          pending.accountData.push(...(slice.state.accountData ?? []));
          if (pending.rooms.length >= APPLY_ROOMS) await apply();
          errors.push(...slice.errors);
          verification.push(...slice.crypto.verification);
          // The crypto actor hears of joined rooms' members and settings with the batch, as from a whole body.
          if (encryption) for (const r of slice.state.rooms) cryptoRooms.push({ ...r, state: r.state.filter((ev) => CRYPTO_STATE.has(ev.type)) });
        },
      });
      await apply();
    } finally {
      res.body.on('error', () => {}).destroy();
    }
    traceStartup('first /sync received');
    this.polls++;
    this.lastSuccessAt = Date.now();
    const p = out.rest;
    p.errors.unshift(...errors);
    p.crypto.verification.unshift(...verification);
    await this.handOff(p, new Uint8Array(0), true, false, null, cryptoRooms);
    return out.bytes;
  }

  /**
   * The batch's crypto changes to the crypto actor and its state to the cache; resolves with the cache's room
   * summaries once what must be waited for is applied.
   */
  private async applyChanges(p: ProcessedSync, first: boolean, cryptoRooms: StateChanges['rooms']): Promise<RoomSummary[]> {
    const changes = this.deps.crypto && this.config.encryption ? cryptoChanges(p, cryptoRooms, this.keyCounts) : null;
    const applying = changes
      ? this.deps.crypto!.receiveSyncChanges(changes).catch((err: unknown) => {
          this.keyCounts.last = ''; // the retry of this batch (or the next batch) must carry its key counts again
          throw err;
        })
      : undefined;
    // Only what the next poll deletes (to-device events) or what this batch's handlers may send with (device
    // lists, room encryption, members) is waited for. Key counts alone are not: the server repeats them in every
    // sync, and the crypto actor applies calls in the order they were made, so a later batch still comes after.
    // A run's first batch always waits: the crypto actor may still be opening its store, and a store that refuses
    // this device fails the run, which must then have saved no token of this device in the data dir.
    const mustWait = changes !== null && (first || !countsOnly(changes));
    // Not awaited: the crypto actor reports its own failures to main (error/fatal on its port, or its death).
    if (applying && !mustWait) applying.catch(() => {});
    const stateChanged = p.state.rooms.length > 0 || p.accountData.length > 0;
    // A run's first batch is held in the cache's memory, written once `ready` is on its way (see postFirst).
    const [applied] = await Promise.all([stateChanged ? this.deps.cache.apply(p.state, first) : [], mustWait ? applying : undefined]);
    return applied;
  }

  /**
   * Has the crypto actor apply the batch's to-device events and key changes (before the next poll, whose since
   * token lets the server delete them) and the cache apply its state, then posts the batch to main. The since
   * token advances in memory.
   */
  private async handOff(p: ProcessedSync, body: Uint8Array, first: boolean, deliver: boolean, gap: Backfill | null, cryptoRooms: StateChanges['rooms'] = []): Promise<void> {
    const applied = await this.applyChanges(p, first, cryptoRooms);
    if (first) traceStartup('first /sync state applied');
    const summaries = first ? this.withFirstSummaries(applied) : applied;
    const count = deliver ? p.events.count : 0;
    const accountData = deliver ? p.accountData : [];
    const receipts = deliver ? p.receipts : [];
    // Worth journaling: anything a handler will see (events, invites, knocks, account data, receipts).
    const forHandlers = count > 0 || p.invites.length > 0 || p.knocks.length > 0 || accountData.length > 0 || receipts.length > 0;
    const errors = gap && !gap.batch ? [...p.errors, ...gap.errors] : p.errors;
    const forMain = forHandlers || first || summaries.length > 0 || p.left.length > 0 || errors.length > 0 || gap?.batch != null;
    if (first) await this.postFirst(p.nextBatch, deliver, summaries);
    this.since = p.nextBatch;
    if (!forMain) {
      this.saveSince(p.nextBatch);
      return;
    }
    // The gap's events go first, journaled in the same transaction as the batch (a crash cannot split them).
    const gapSeq = gap?.batch ? ++this.seq : 0;
    const seq = ++this.seq;
    const journaled: JournaledBatch = {
      nextBatch: p.nextBatch,
      first: false,
      deliver,
      rooms: deliver ? p.rooms : [],
      // Transfer needs a view that owns its whole buffer (undici's arrayBuffer() gives one; copy otherwise).
      body: !deliver ? new Uint8Array(0) : body.byteOffset === 0 && body.byteLength === body.buffer.byteLength ? body : body.slice(),
      events: deliver ? p.events : emptyColumns(),
      invites: p.invites,
      knocks: p.knocks,
      left: p.left,
      summaries,
      errors,
      accountData,
      receipts,
    };
    // A lone batch that pump() posts at once (nothing queued before it, room in main) is journaled as posted:
    // one SQLite commit per batch on the way to main instead of two.
    const direct = !gap?.batch && this.queue.length === 0 && this.hasRoom(count);
    const rows: Array<{ seq: number; batch: JournaledBatch; posted?: boolean }> = [];
    if (gap?.batch) rows.push({ seq: gapSeq, batch: gap.batch });
    if (forHandlers) rows.push({ seq, batch: journaled, posted: direct });
    if (rows.length > 0) {
      this.journal.append(rows, p.nextBatch);
      this.savedSince = p.nextBatch;
      for (const r of rows) this.backlog += r.batch.events.count;
    } else this.saveSince(p.nextBatch);
    if (gap?.batch) this.queue.push({ seq: gapSeq, batch: { ...gap.batch, seq: gapSeq, redelivered: false, done: null }, count: gap.batch.events.count, journaled: true });
    this.queue.push({ seq, batch: { ...journaled, seq, redelivered: false, done: null }, count, journaled: forHandlers, marked: direct });
    this.pump();
  }

  /**
   * Main fires `ready` on the run's first batch and holds every batch until then. The batches an earlier run left
   * in the journal go out first and may fill main's room: the first batch must not wait behind them, so a marker
   * (summaries, no events) says "first" at once and the batch itself follows in order.
   *
   * The marker goes out before the cache writes the batch's state to SQLite (it is applied in the cache's memory,
   * held: `apply(…, true)`), and the write follows at once, on this thread: what main asks the cache meanwhile is
   * answered from that memory, or after the write (a read of SQLite writes what is held first). Nothing of the
   * batch goes to handlers and its since token is not saved before the write: a crash in between leaves the token
   * where it was, and the next run fetches the batch again. A failed write fails this poll before the token
   * advances; its retry posts a marker again. (Writing first cost `ready` ~25 ms with 1,000 rooms.)
   */
  private async postFirst(nextBatch: string, deliver: boolean, summaries: RoomSummary[]): Promise<void> {
    const marker: WireBatch = {
      seq: ++this.seq, nextBatch, first: true, deliver, rooms: [], body: new Uint8Array(0), events: emptyColumns(),
      invites: [], knocks: [], left: [], summaries, errors: [], accountData: [], receipts: [], redelivered: false, done: null,
    };
    this.deps.events.post({ kind: 'batch', batch: marker });
    await this.deps.cache.commit();
    traceStartup('first /sync state written');
  }

  private saveSince(token: string): void {
    if (token === this.savedSince || !this.db.isOpen) return;
    this.journal.saveSince(token);
    this.savedSince = token;
  }

  /** Main's acknowledgements: the journal marks the events done, and room frees up for queued batches. */
  private acked(progress: Array<{ seq: number; indices: number[] }>, complete: number[]): void {
    if (!this.db.isOpen) return;
    const freed = this.journal.ack(progress, complete);
    for (const n of freed.values()) this.backlog -= n;
    for (const { seq } of progress) {
      const left = this.inFlight.get(seq);
      const n = Math.min(left ?? 0, freed.get(seq) ?? 0);
      if (left === undefined || complete.includes(seq)) continue; // a complete batch leaves in-flight whole, below
      this.inFlight.set(seq, left - n);
      this.inFlightEvents -= n;
    }
    for (const seq of complete) {
      // Batches not journaled (nothing for handlers) complete here too.
      const left = this.inFlight.get(seq);
      if (left === undefined) continue;
      this.inFlightEvents -= left;
      this.inFlight.delete(seq);
    }
    if (this.inFlight.size === 0) this.drained?.();
    this.pump();
    if (this.creditWaiter && this.hasCredit()) this.creditWaiter();
  }

  /** Whether another poll may go out: the journal's unhandled events are under `maxJournalEvents`. */
  private hasCredit(): boolean {
    return this.backlog < this.config.maxJournalEvents;
  }

  private waitForCredit(): Promise<void> {
    if (this.hasCredit()) return Promise.resolve();
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
    // Jitter spreads reconnects of many bots after a homeserver restart; the ceiling holds after it.
    const jittered = Math.min(max, base * (0.8 + Math.random() * 0.4));
    return Math.round(Math.max(jittered, retryAfterMs ?? 0));
  }
}
