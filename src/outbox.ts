/**
 * The outbox: every room event the bot sends goes through a durable, per-room ordered queue in `outbox.sqlite`
 * (owned by main; one owner).
 *
 * - **Idempotent.** A send's transaction ID is written to disk before the request. A send made by a handler
 *   derives its ID from the triggering event and the send's position in that handler run, so a handler run again
 *   after a crash makes the very same requests: the server answers a repeated transaction ID with the event it
 *   already has, and a send the outbox knows went through is answered from disk without a request.
 * - **Durable.** A send not yet acknowledged by the server survives a restart and is sent by the next run.
 * - **Ordered.** The sends of one chain go out one at a time, in call order: a chain is one handler run's sends
 *   into the room of its event, a handler's sends into another room by the room of its event (so a bot relaying
 *   room A into room B keeps A's order), and every send made outside handlers. Chains of one room overlap, up to
 *   `window` sends in flight, started in call order: one slow round trip per reply would otherwise cap a busy
 *   room at one reply per round trip (with `window` 1 every room's sends are one chain).
 * - **Never dropped silently.** Transient failures (transport, timeouts, 5xx, 429) are retried with backoff;
 *   a send that fails permanently (or exhausts its attempts) is kept as a dead letter, its caller's promise
 *   rejects with `HALCYON_SEND_FAILED`, and the client emits `sendFailed`.
 * - **Paced.** By default at full speed until the server answers 429, then at its pace (src/pacing.ts); or by a
 *   fixed token bucket;
 *   429s that happen anyway are honoured (`retry_after_ms` / `Retry-After`).
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { createHash, randomBytes } from 'node:crypto';
import { HalcyonError, isTransient } from './errors.ts';
import { delay } from './abort.ts';
import { AdaptivePacer, FixedPacer, type LearnedPacing, type Pacer } from './pacing.ts';
import { type Database, kvGet, kvSet, openDatabase } from './store.ts';

/** What one outbox entry asks the server to do. */
export type OutboxOp = { kind: 'send'; type: string; content: Record<string, unknown> } | { kind: 'redact'; eventId: string; reason?: string };

/** Pacing of sends: a token bucket refilled at `perSecond`, holding at most `burst`. */
export interface RateLimit {
  perSecond: number;
  burst: number;
}

/** Synapse's default `rc_message`: 0.2 messages per second, bursts of 10. */
export const DEFAULT_RATE_LIMIT: RateLimit = { perSecond: 0.2, burst: 10 };

/** Why a send is waiting: the bucket's pacing, the server's 429, or a backoff after a failed attempt. */
export type WaitReason = 'pacing' | 'rate_limited' | 'retrying';

/** What the outbox's `status()` reports (see `Client.outboxStatus`). */
export interface OutboxStatus {
  /** Sends not yet acknowledged by the server (queued, waiting or in flight). */
  pending: number;
  /** Dead letters kept. */
  dead: number;
  /** Sends waiting now, by reason. */
  waiting: Record<WaitReason, number>;
  /** When the next waiting send is due (ms since the epoch), or null when none waits. */
  nextAttemptAt: number | null;
}

/** Details of a send that failed for good (the `sendFailed` event). */
export interface SendFailure {
  roomId: string;
  txnId: string;
  /** The event type (`m.room.redaction` for a redaction). */
  type: string;
  attempts: number;
}

/** What another process's send tells the account's pacer (see {@link Outbox.sharedPace}). */
export type SharedPaceOp = 'next' | 'sent' | 'rateLimited' | 'drained';

/** What the outbox needs from the client. */
export interface OutboxDeps {
  dataDir: string;
  /** Performs one attempt: encrypts if needed and PUTs with `txnId`; resolves with the event ID. `signal` ends it at close. */
  attempt(roomId: string, txnId: string, op: OutboxOp, allowPlaintext: boolean, signal: AbortSignal): Promise<string>;
  /** A send failed for good. */
  failed(err: HalcyonError, info: SendFailure): void;
  /** Each attempt's outcome (for metrics): sent, retried (a transient failure), rate_limited (a 429), dead. */
  outcome?(result: 'sent' | 'retried' | 'rate_limited' | 'dead'): void;
  /** Says, once per stretch of waiting, that sends wait and why (the client logs it at warn level). */
  notice?(info: { reason: WaitReason; waiting: number; waitMs: number }, msg: string): void;
  /** How sends are spaced: a fixed bucket, `'adaptive'` (learned from the server's 429s), or null (not at all). */
  rateLimit: RateLimit | 'adaptive' | null;
  /**
   * Wraps the pacer of `rateLimit` when the account's budget is shared with other processes (a cluster worker:
   * the ingest keeps it, the local pacer serves while the ingest does not answer). Not called without pacing.
   */
  sharedPacer?: (local: Pacer) => Pacer;
  /** Sends into one room in flight at once (of different chains; see the module comment); 1 is strict room order. */
  window: number;
  /** Attempts per send before it is a dead letter (transient failures only; permanent ones stop at once). */
  maxAttempts: number;
  /** First retry wait and ceiling, in ms. */
  retryMinMs: number;
  retryMaxMs: number;
}

/** A send's place in its handler run, claimed when the send is called (see {@link claimSendSlot}). */
export interface SendSlot {
  /** The triggering event (the handler run's key). */
  key: string;
  /** The triggering event's room, when known. */
  room: string | undefined;
  /** The send's position in the run. */
  n: number;
}

/**
 * Where a handler run's key comes from when the run sends: event `i` of a batch, its ID decoded only then (most
 * handler runs send nothing, and a decode per event is a fair part of the main thread's cost per event).
 */
export interface RunKeySource {
  /** The key of the run of event `i`. */
  runKey(i: number): string;
}

/** The handler run running now: its slot's fields, `n` counting the sends it made so far; `key` read from `source` at the first send. */
interface SendContext extends SendSlot {
  source: RunKeySource | null;
  index: number;
}

const context = new AsyncLocalStorage<SendContext>();

/**
 * Runs `fn` (one dispatcher lane's run) with a handler-run context of its own. A lane runs its handlers one after
 * another, each settling before the next starts, so one mutable context per lane run (set by
 * {@link beginHandlerRun}) identifies the handler run of every send made inside it, async continuations
 * included, at the cost of one context per lane run instead of one per event. Work a handler leaves running
 * after it settles is attributed to the next handler of the lane: unique transaction IDs still, not replayable.
 * The dispatcher uses lane scopes only once a handler has turned out to be async: synchronous handlers send
 * within their synchronous part, which a plain variable covers for free.
 */
export function laneScope<T>(fn: () => T): T {
  return context.run({ key: '', room: undefined, n: 0, source: null, index: 0 }, fn);
}

/** The handler run whose synchronous part is running now, outside any lane scope. */
let syncRun: SendContext | null = null;
/** What `syncRun` points to while set: one object for every run (a slot copies what it needs). */
const syncContext: SendContext = { key: '', room: undefined, n: 0, source: null, index: 0 };

/**
 * Marks the start of the handler run for `key` (the triggering event ID, or event `index` of `key` as a
 * {@link RunKeySource}) of an event in `room`: in the current lane's context, or, outside a lane scope, for the
 * synchronous part of the call only (until {@link endHandlerSyncPart}).
 */
export function beginHandlerRun(key: string | RunKeySource, room?: string, index = 0): void {
  const c = context.getStore() ?? (syncRun = syncContext);
  if (typeof key === 'string') {
    c.key = key;
    c.source = null;
  } else {
    c.key = '';
    c.source = key;
    c.index = index;
  }
  c.room = room;
  c.n = 0;
}

/**
 * Claims the next send position of the handler run running now, or null outside handlers. Called synchronously
 * where the send is called, before anything is awaited: what a send must ask first (is the room encrypted, a
 * thread's latest event) can take long enough that the lane has moved on to the next handler, whose run would
 * otherwise be credited with the send (a transaction ID a re-run would not repeat).
 */
export function claimSendSlot(): SendSlot | null {
  const c = context.getStore() ?? syncRun;
  if (!c) return null;
  if (c.source) {
    c.key = c.source.runKey(c.index);
    c.source = null;
  }
  if (c.key === '') return null;
  return { key: c.key, room: c.room, n: c.n++ };
}

/** Ends the synchronous part of a handler run begun outside a lane scope. */
export function endHandlerSyncPart(): void {
  syncRun = null;
  syncContext.source = null; // its batch's body must not outlive the batch for this
}

interface Entry {
  id: number;
  roomId: string;
  txnId: string;
  op: OutboxOp;
  allowPlaintext: boolean;
  attempts: number;
  /** Failed attempts that count against `maxAttempts`, and 429s with a retry time (which do not). */
  failures: number;
  pacedRetries: number;
  /** The chain it belongs to: its sends go one at a time, in order (see the module comment). */
  chain: string;
  started: boolean;
  waiters: Array<{ resolve: (eventId: string) => void; reject: (e: HalcyonError) => void }>;
}

/** 429s with a retry time a send waits out before it is a dead letter (a server that never lets it through). */
const MAX_PACED_RETRIES = 50;

/** One room's sends: queued and in flight, in call order, and the chains with a send in flight (one each: its size is the sends in flight). */
interface Lane {
  queue: Entry[];
  busy: Set<string>;
}

/** The chain of sends made outside handlers, and of sends an earlier run left (their handler runs are not kept). */
const OUTSIDE = '';

/** Keeps a sent transaction's event ID this long, to answer a re-run handler without a request. */
const KEEP_SENT_MS = 24 * 3600_000;

/** The outbox of one data directory; see the module comment. */
export class Outbox {
  private readonly db: Database;
  private readonly stmt;
  private readonly lanes = new Map<string, Lane>();
  private readonly running = new Set<Promise<void>>();
  private readonly pacer: Pacer | null;
  /** Sends waiting now: why and until when. */
  private readonly waits = new Map<Entry, { reason: WaitReason; until: number }>();
  /** Wait reasons announced in the current stretch (cleared when every queue is empty). */
  private readonly announced = new Set<WaitReason>();
  private readonly abort = new AbortController();
  private closed = false;

  constructor(private readonly deps: OutboxDeps) {
    this.db = openDatabase(deps.dataDir, 'outbox.sqlite');
    this.db.exec(`CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, room_id TEXT NOT NULL, txn_id TEXT NOT NULL UNIQUE,
      op TEXT NOT NULL, plaintext INTEGER NOT NULL, state TEXT NOT NULL, event_id TEXT, attempts INTEGER NOT NULL DEFAULT 0, error TEXT,
      updated_at INTEGER NOT NULL)`);
    this.stmt = {
      byTxn: this.db.prepare('SELECT id, state, event_id, attempts FROM outbox WHERE txn_id = ?'),
      insert: this.db.prepare("INSERT INTO outbox (room_id, txn_id, op, plaintext, state, updated_at) VALUES (?, ?, ?, ?, 'pending', ?)"),
      retry: this.db.prepare("UPDATE outbox SET state = 'pending', error = NULL, updated_at = ? WHERE id = ?"),
      sent: this.db.prepare("UPDATE outbox SET state = 'sent', event_id = ?, attempts = ?, op = '{}', updated_at = ? WHERE id = ?"),
      attempts: this.db.prepare('UPDATE outbox SET attempts = ?, updated_at = ? WHERE id = ?'),
      dead: this.db.prepare("UPDATE outbox SET state = 'dead', attempts = ?, error = ?, updated_at = ? WHERE id = ?"),
      pending: this.db.prepare("SELECT id, room_id, txn_id, op, plaintext, attempts FROM outbox WHERE state = 'pending' ORDER BY id"),
      prune: this.db.prepare("DELETE FROM outbox WHERE state = 'sent' AND updated_at < ?"),
      dead_: this.db.prepare("SELECT room_id, txn_id, op, attempts, error FROM outbox WHERE state = 'dead' ORDER BY id"),
      counts: this.db.prepare('SELECT state, count(*) AS n FROM outbox GROUP BY state'),
    };
    const local = this.newPacer(deps.rateLimit);
    this.pacer = local && deps.sharedPacer ? deps.sharedPacer(local) : local;
    this.stmt.prune.run(Date.now() - KEEP_SENT_MS);
  }

  /** The pacer of `limit`; an adaptive one starts from what an earlier run learned of this account's server. */
  private newPacer(limit: RateLimit | 'adaptive' | null): Pacer | null {
    if (limit === null) return null;
    if (limit !== 'adaptive') return new FixedPacer(limit);
    const known = kvGet(this.db, 'pacing');
    return new AdaptivePacer(known ? (JSON.parse(known) as LearnedPacing) : null, (learned) => {
      if (this.db.isOpen) kvSet(this.db, 'pacing', JSON.stringify(learned));
    });
  }

  /** Sends left unfinished by an earlier run go out first, in their original order. */
  resume(): void {
    for (const r of this.stmt.pending.all() as Array<{ id: number; room_id: string; txn_id: string; op: string; plaintext: number; attempts: number }>) {
      const op = JSON.parse(r.op) as OutboxOp;
      this.enqueue({ id: r.id, roomId: r.room_id, txnId: r.txn_id, op, allowPlaintext: r.plaintext === 1, attempts: r.attempts, failures: 0, pacedRetries: 0, chain: OUTSIDE, started: false, waiters: [] });
    }
  }

  /**
   * Queues a send and resolves with its event ID once the server has it. The transaction ID is derived from the
   * handler run's `slot` (claimed where the send was called) when there is one, else random; it is on disk
   * before any request.
   */
  send(roomId: string, op: OutboxOp, allowPlaintext: boolean, slot: SendSlot | null = claimSendSlot()): Promise<string> {
    if (this.closed) return Promise.reject(new HalcyonError('HALCYON_STOPPED', 'the client was stopped', { roomId }));
    const txnId = txnFor(roomId, op, slot);
    // A handler's sends into its own event's room are a chain of that run; into another room, of the event's room.
    const chain = slot === null ? OUTSIDE : slot.room === undefined || slot.room === roomId ? `e:${slot.key}` : `r:${slot.room}`;
    const known = this.stmt.byTxn.get(txnId) as { id: number; state: string; event_id: string | null; attempts: number } | undefined;
    if (known?.state === 'sent' && known.event_id) return Promise.resolve(known.event_id);
    // Joining an entry already queued (a re-run handler whose earlier send is still pending): wait for it.
    const queued = known ? this.lanes.get(roomId)?.queue.find((e) => e.id === known.id) : undefined;
    return new Promise<string>((resolve, reject) => {
      if (queued) {
        queued.waiters.push({ resolve, reject });
        return;
      }
      let id: number;
      if (known) {
        // A dead letter sent again (by a re-run handler): one more chance.
        this.stmt.retry.run(Date.now(), known.id);
        id = known.id;
      } else {
        id = Number(this.stmt.insert.run(roomId, txnId, JSON.stringify(op), allowPlaintext ? 1 : 0, Date.now()).lastInsertRowid);
      }
      this.enqueue({ id, roomId, txnId, op, allowPlaintext, attempts: known?.attempts ?? 0, failures: 0, pacedRetries: 0, chain, started: false, waiters: [{ resolve, reject }] });
    });
  }

  /** Sends not yet done (`pending`) and dead letters kept (`dead`). */
  counts(): { pending: number; dead: number } {
    const out = { pending: 0, dead: 0 };
    for (const r of this.stmt.counts.all() as Array<{ state: string; n: number }>) if (r.state === 'pending' || r.state === 'dead') out[r.state] = r.n;
    return out;
  }

  /** {@link counts}, plus the sends waiting now and why, and when the next one is due. */
  status(): OutboxStatus {
    const waiting: Record<WaitReason, number> = { pacing: 0, rate_limited: 0, retrying: 0 };
    let next: number | null = null;
    for (const w of this.waits.values()) {
      waiting[w.reason]++;
      if (next === null || w.until < next) next = w.until;
    }
    return { ...this.counts(), waiting, nextAttemptAt: next };
  }

  /** The dead letters kept in the outbox (sends that failed for good), oldest first. */
  deadLetters(): Array<{ roomId: string; txnId: string; op: OutboxOp; attempts: number; error: string | null }> {
    return (this.stmt.dead_.all() as Array<{ room_id: string; txn_id: string; op: string; attempts: number; error: string | null }>).map((r) => ({
      roomId: r.room_id,
      txnId: r.txn_id,
      op: JSON.parse(r.op) as OutboxOp,
      attempts: r.attempts,
      error: r.error,
    }));
  }

  /** Resolves when every queued send has settled, or after `ms`. */
  async drain(ms: number): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<void>((r) => (timer = setTimeout(r, ms)));
    const all = async () => {
      while (this.running.size > 0) await Promise.all([...this.running]);
    };
    await Promise.race([all(), deadline]);
    clearTimeout(timer);
  }

  /** Stops sending: waiting sends stay on disk for the next run; their callers get `HALCYON_STOPPED`. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.abort.abort();
    const stopped = new HalcyonError('HALCYON_STOPPED', 'the client was stopped before the send went out (it is kept and sent by the next run)');
    for (const lane of this.lanes.values()) for (const e of lane.queue) for (const w of e.waiters.splice(0)) w.reject(stopped);
    this.lanes.clear();
    // In-flight attempts finish or fail on their own; their results still reach the database if it is open.
    void Promise.allSettled([...this.running]).then(() => this.db.close());
  }

  private enqueue(e: Entry): void {
    let lane = this.lanes.get(e.roomId);
    if (!lane) {
      lane = { queue: [], busy: new Set() };
      this.lanes.set(e.roomId, lane);
    }
    lane.queue.push(e);
    this.pump(e.roomId, lane);
  }

  /**
   * Starts what may start in `lane`, in call order: a send whose chain has none in flight, while fewer than
   * `window` are. A send whose chain is busy is passed over (and so is the rest of its chain) so that other
   * chains are not held behind it.
   */
  private pump(roomId: string, lane: Lane): void {
    for (const e of lane.queue) {
      if (lane.busy.size >= this.deps.window || this.closed) return;
      if (e.started || lane.busy.has(e.chain)) continue;
      e.started = true;
      lane.busy.add(e.chain);
      const run = this.deliver(e).finally(() => {
        this.running.delete(run);
        lane.busy.delete(e.chain);
        lane.queue.splice(lane.queue.indexOf(e), 1);
        if (lane.queue.length > 0) return this.pump(roomId, lane);
        if (this.lanes.get(roomId) === lane) this.lanes.delete(roomId);
        // Every queue is empty: the stretch of waiting (if any) is over; the next wait is announced again.
        if (this.lanes.size === 0) this.announced.clear();
      });
      this.running.add(run);
    }
  }

  /** Attempts one entry until it is sent, dead, or the outbox closes. */
  private async deliver(e: Entry): Promise<void> {
    // After a 429 with retry_after_ms the server has said when it takes the next send: that retry needs no token.
    let cleared = false;
    for (;;) {
      if (this.closed) return;
      try {
        if (cleared) this.pacer?.drained(Date.now());
        else await this.pace(e);
        cleared = false;
        e.attempts++;
        const eventId = await this.deps.attempt(e.roomId, e.txnId, e.op, e.allowPlaintext, this.abort.signal);
        this.pacer?.sent();
        if (this.db.isOpen) this.stmt.sent.run(eventId, e.attempts, Date.now(), e.id);
        this.deps.outcome?.('sent');
        for (const w of e.waiters.splice(0)) w.resolve(eventId);
        return;
      } catch (err) {
        if (this.closed) return;
        const h = err as HalcyonError;
        const permanent = !isTransient(h);
        // A 429 that says when to come back is pacing, not failure: it does not use up attempts (within reason).
        const paced = h.code === 'HALCYON_RATE_LIMITED' && h.retryAfterMs !== undefined;
        if (paced) this.pacer?.rateLimited(h.retryAfterMs!, Date.now());
        if (paced) e.pacedRetries++;
        else e.failures++;
        if (permanent || e.failures >= this.deps.maxAttempts || e.pacedRetries >= MAX_PACED_RETRIES) {
          const why = !permanent ? `it still failed after ${e.attempts} attempts` : h.status !== undefined ? 'the server refused it' : 'it cannot be sent';
          const failure = new HalcyonError('HALCYON_SEND_FAILED', `send into ${e.roomId} failed for good (${why}): ${h.message ?? String(err)}`, { roomId: e.roomId, cause: err });
          if (h.status !== undefined) failure.status = h.status;
          if (h.errcode !== undefined) failure.errcode = h.errcode;
          if (this.db.isOpen) this.stmt.dead.run(e.attempts, `${h.code ?? 'ERROR'}: ${h.message ?? String(err)}`, Date.now(), e.id);
          for (const w of e.waiters.splice(0)) w.reject(failure);
          this.deps.outcome?.('dead');
          this.deps.failed(failure, { roomId: e.roomId, txnId: e.txnId, type: e.op.kind === 'send' ? e.op.type : 'm.room.redaction', attempts: e.attempts });
          return;
        }
        if (this.db.isOpen) this.stmt.attempts.run(e.attempts, Date.now(), e.id);
        this.deps.outcome?.(h.code === 'HALCYON_RATE_LIMITED' ? 'rate_limited' : 'retried');
        const base = Math.min(this.deps.retryMaxMs, this.deps.retryMinMs * 2 ** Math.max(0, e.failures - 1));
        // The server's retry_after_ms is the wait when it gives one; otherwise back off, with jitter.
        const wait = paced ? h.retryAfterMs! * (1 + Math.random() * 0.1) : base * (0.8 + Math.random() * 0.4);
        try {
          await this.wait(e, paced ? 'rate_limited' : 'retrying', wait);
        } catch {
          return;
        }
        cleared = paced;
      }
    }
  }

  /**
   * Waits `ms` for `e` (rejecting with `HALCYON_STOPPED` at close), recorded for {@link status}; the first wait
   * of each reason in a stretch (until every queue is empty) is announced, so a bot's silence is explained.
   */
  private async wait(e: Entry, reason: WaitReason, ms: number): Promise<void> {
    this.waits.set(e, { reason, until: Date.now() + ms });
    if (!this.announced.has(reason)) {
      this.announced.add(reason);
      this.deps.notice?.({ reason, waiting: this.waits.size, waitMs: ms }, WHY[reason](this.pacer, ms));
    }
    try {
      await delay(ms, this.abort.signal);
    } finally {
      this.waits.delete(e);
    }
  }

  /** Waits until the pacer lets the next send go (at once without pacing). */
  private async pace(e: Entry): Promise<void> {
    if (!this.pacer) return;
    for (let ms = await this.pacer.next(Date.now()); ms > 0; ms = await this.pacer.next(Date.now())) await this.wait(e, 'pacing', ms);
  }

  /**
   * The account's pacing on behalf of another process (a cluster's ingest answering its workers): `next` takes a
   * token and says how long to wait for one; the others report what a send met. Unpaced (rateLimit: false): 0.
   */
  sharedPace(op: SharedPaceOp, retryAfterMs: number): { waitMs: number; describe: string } {
    const p = this.pacer;
    if (!p) return { waitMs: 0, describe: 'not paced' };
    const now = Date.now();
    let waitMs = 0;
    if (op === 'next') waitMs = p.next(now) as number; // this process's own pacer is local: never a promise
    else if (op === 'sent') p.sent();
    else if (op === 'rateLimited') p.rateLimited(retryAfterMs, now);
    else p.drained(now);
    return { waitMs, describe: p.describe() };
  }
}

/** A send's transaction ID: derived from its handler run's slot (a re-run repeats it), else random. */
function txnFor(roomId: string, op: OutboxOp, slot: SendSlot | null): string {
  if (slot === null) return `hc${Date.now().toString(36)}.${randomBytes(6).toString('base64url')}`;
  const what = op.kind === 'send' ? op.type : `redact:${op.eventId}`;
  return `hcr.${createHash('sha256').update(`${slot.key}\n${slot.n}\n${roomId}\n${what}`).digest('base64url').slice(0, 27)}`;
}

/** The notice of each wait reason (see Outbox.wait). */
const WHY: Record<WaitReason, (pacer: Pacer | null, ms: number) => string> = {
  pacing: (pacer, ms) => `sends are paced: the next goes out in ${(ms / 1000).toFixed(1)} s (${pacer?.describe() ?? 'not paced'})`,
  rate_limited: (_p, ms) => `the homeserver rate-limited a send (429): sends wait ${(ms / 1000).toFixed(1)} s as it asked`,
  retrying: (_p, ms) => `a send failed and is retried in ${(ms / 1000).toFixed(1)} s`,
};
