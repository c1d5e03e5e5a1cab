/**
 * A lease in the cluster's KV: the ingest's (one active ingest per bot device), and, by the same rules, a worker's
 * membership and its claim on each partition it owns (ownership.ts). One ingest per device because Matrix gives one
 * event stream per device — the server deletes to-device messages (room keys among them) once the next `since`
 * token is used — so two processes syncing one device would lose keys. The lease is a key in a JetStream KV bucket
 * whose entries expire `ttlMs` after their last write: the holder rewrites it (compare-and-set on its revision) every sixth of the TTL; a
 * standby tries to create it every {@link Lease.pollMs} (and at once when the connection to NATS is back) and gets
 * it once the holder released it or it expired.
 *
 * The holder steps down (the `lost` callback) when another process wrote the key, or when it could not renew
 * for 80% of the TTL counted from the *sending* of its last successful renewal: the key cannot have expired on
 * the server before then, so a standby cannot have taken over while the holder still believed it held the lease.
 * One that stepped down and tries again takes its key back at once if it still holds its value (NATS came back
 * before the TTL: nobody else held it meanwhile), by the key's revision, as a renewal would.
 *
 * A clean stop releases the key ({@link Lease.release}) so that a standby or the next owner takes it at once: it is
 * deleted by its revision, and, when a renewal of this holder's moved it past the revision known here (its answer
 * was lost in a NATS outage), by the key's current one while it still holds this holder's value (host, pid and a
 * random tag: unique to the process). A key another process wrote is never deleted. A lease that stepped down is
 * released the same way: when NATS came back before the TTL its key still holds this holder's value, and the next
 * owner would wait out the TTL for nothing (the caller must have stopped the work the lease guarded, as for any
 * release; a worker does not release a partition it lost, whose events may still be out: ownership.ts). A release
 * that cannot make sure the key is gone or someone else's rejects; the key then expires after the TTL, unless a
 * later release deletes it.
 */
import { delay, unlessAborted } from '../abort.ts';
import { HalcyonError } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { LeaseStore } from './nats.ts';

/** The ingest's key. */
const INGEST_KEY = 'ingest';
/** Renewals of one lease out at once (one a tick while answers do not come; each ends by nats.js's timeout). */
const MAX_RENEWALS = 3;
/** Tries to take a lease out at once ({@link Lease.acquire}), for the same reason. */
const MAX_TRIES = 3;
/**
 * Deletes a release tries: each by the revision the key holds (still this holder's value) when the last was
 * refused. Only a renewal of this holder's that lands late moves the key again once renewing stopped: one more
 * try is plenty; more would chase a key something keeps writing.
 */
const MAX_RELEASES = 3;

/** One process's claim on the ingest lease; see the module comment. */
export class Lease {
  /** How often a standby tries to take the lease. */
  readonly pollMs: number;
  /** How often the holder renews its lease. */
  private readonly tickMs: number;
  private rev = 0;
  /**
   * Whether the key may still hold this lease's value: from its taking until a release made sure it is gone or
   * another holder's, or it was abandoned. Stepping down does not clear it: NATS may be back before the TTL.
   */
  private mine = false;
  private timer: NodeJS.Timeout | null = null;
  /** Renewals sent and not yet answered. */
  private readonly renewals = new Set<Promise<void>>();
  /** When the last successful renewal (or the creation) was sent. */
  private lastOkSentAt = 0;
  private lostCb: ((why: string) => void) | null = null;

  constructor(
    private readonly store: LeaseStore,
    private readonly ttlMs: number,
    /** Who holds it (host, pid and a random tag): shown to standbys and in logs. */
    readonly holder: string,
    private readonly logger: Logger,
    /** The key in the bucket (default: the ingest's). */
    private readonly key = INGEST_KEY,
  ) {
    this.pollMs = Math.min(1_000, Math.round(ttlMs / 4));
    this.tickMs = Math.max(100, Math.round(ttlMs / 6));
  }

  /** Whether this process holds the lease now (it is renewed until lost or released). */
  get held(): boolean {
    return this.timer !== null;
  }

  /**
   * Waits until this process holds the lease (at once when nobody does); rejects with `HALCYON_STOPPED` on abort,
   * at once even while tries are out (a lease one of them takes after all is given up again).
   *
   * A try is waited for {@link pollMs} at most, and only until NATS reconnects: one sent into a NATS outage is
   * answered only by nats.js's timeout (5 s), even when the server is back a moment later (its answer is lost with
   * the connection), and that wait was most of an ingest's time to lead again after an outage. The next try goes
   * then; the slow one still counts if it took the lease. Safety does not depend on it: every try is a create,
   * which the server refuses while any process's key (this one's too) is there, so a takeover still waits for the
   * holder's release or its TTL.
   */
  async acquire(signal: AbortSignal): Promise<void> {
    let told = false;
    let unreachable = false;
    const out = new Set<Promise<unknown>>();
    let wake = () => {};
    const off = this.store.onReconnect(() => wake());
    try {
      for (;;) {
        const reconnected = new Promise<undefined>((r) => (wake = () => r(undefined)));
        const attempt = this.tryAcquire().catch((err: unknown) => {
          // Once per outage: a standby tries every pollMs for as long as NATS is away.
          if (!unreachable) this.logger.warn({ err: (err as Error).message }, 'cluster: cannot reach the lease bucket; trying again');
          unreachable = true;
          return null;
        });
        const settled = attempt.then((took) => {
          out.delete(settled);
          // Taken after the wait was given up: given up again (a key left behind expires after the TTL).
          if (took && signal.aborted) void this.release().catch((err: unknown) => this.logger.warn({ key: this.key, err: (err as Error).message }, 'cluster: cannot delete a lease key taken after its wait was given up; it expires'));
        });
        out.add(settled);
        const got = await unlessAborted(this.answerOrPoll(attempt, out, reconnected), [signal]);
        if (this.held) {
          this.logger.info({ holder: this.holder }, 'cluster: this process holds the ingest lease');
          return;
        }
        if (got === undefined) continue; // no answer within pollMs: the next try goes at once
        if (got !== null) unreachable = false;
        if (got === false && !told) {
          const holder = await this.store.get(this.key).catch(() => null);
          // This process's own key: a slow try took it, and its answer is still on its way (or was lost).
          told = holder !== this.holder;
          if (told) this.logger.info({ holder }, 'cluster: another ingest holds the lease; standing by');
        }
        await delay(this.pollMs, signal);
      }
    } finally {
      off();
    }
  }

  /**
   * `attempt`'s answer, or undefined once {@link pollMs} passed without it, or at once when NATS `reconnected`.
   * With {@link MAX_TRIES} tries out (NATS away: each waits out nats.js's timeout), the poll waits for one of them
   * to end too, so tries do not pile up; a reconnect does not (those tries are lost with the old connection).
   */
  private async answerOrPoll(attempt: Promise<boolean | null>, out: Set<Promise<unknown>>, reconnected: Promise<undefined>): Promise<boolean | null | undefined> {
    let timer: NodeJS.Timeout | undefined;
    const poll = new Promise<void>((r) => (timer = setTimeout(r, this.pollMs).unref()));
    const capped = poll.then(() => (out.size >= MAX_TRIES ? Promise.race(out).then(() => undefined) : undefined));
    const got = await Promise.race([attempt, capped, reconnected]);
    clearTimeout(timer);
    return got;
  }

  /**
   * One attempt: takes the lease if nobody holds it (resolves true) and renews it from then on; rejects if NATS
   * fails. A lease that stepped down takes its key back at once while the key still holds this holder's value
   * (NATS came back before the TTL): nobody else can have held it since, and waiting for it to expire kept an
   * ingest from leading again for up to a fifth of the TTL.
   */
  async tryAcquire(): Promise<boolean> {
    if (this.timer) return true;
    const sentAt = Date.now();
    let rev = await this.store.create(this.key, this.holder);
    // Written after sentAt either way: the key cannot expire before sentAt + TTL (see tick).
    if (rev === null && this.mine) rev = await this.store.retake(this.key, this.holder);
    if (rev === null) return false;
    this.rev = rev;
    this.mine = true;
    this.lastOkSentAt = sentAt;
    this.timer = setInterval(() => this.tick(), this.tickMs);
    return true;
  }

  /** Called each time the lease is lost (see the module comment); {@link acquire} may take it again. */
  onLost(cb: (why: string) => void): void {
    this.lostCb = cb;
  }

  private tick(): void {
    const since = Date.now() - this.lastOkSentAt;
    if (since > this.ttlMs * 0.8) return this.lose(`could not renew it for ${since} ms (NATS unreachable); it may have expired`);
    // Renewed at every tick (a sixth of the TTL): the last renewal is then at most a tick old when NATS goes away,
    // which leaves an outage most of the 80 % (renewing every third left it as little as 13 %). A renewal still
    // unanswered does not hold the next one back: its answer may have been lost with the connection (a NATS
    // restart), and nats.js waits 5 s for it, past the step-down; a slow answer still counts when it comes. Of two
    // renewals from one revision the second finds the key moved by the first, and the store says so (nats.ts).
    if (this.renewals.size >= MAX_RENEWALS) return;
    const sentAt = Date.now();
    const renewal = this.store
      .update(this.key, this.holder, this.rev)
      .then((rev) => {
        // Kept even once renewing stopped: a release waits for this renewal and deletes by the newest revision (by
        // the one before, the store refused the delete and the key stayed until its TTL).
        if (rev !== null) this.rev = Math.max(this.rev, rev);
        if (!this.timer) return;
        if (rev === null) return this.lose('another process wrote it');
        this.lastOkSentAt = Math.max(this.lastOkSentAt, sentAt);
      })
      .catch(() => {}) // unreachable now: tried again on the next tick, until the deadline above
      .finally(() => this.renewals.delete(renewal));
    this.renewals.add(renewal);
  }

  private lose(why: string): void {
    this.stopRenewing();
    this.lostCb?.(why);
  }

  private stopRenewing(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  /** Stops renewing without giving the key up: it expires after the TTL (a release that is not clean). */
  abandon(): void {
    this.stopRenewing();
    this.mine = false;
  }

  /**
   * Gives the lease up (a clean stop): a standby takes over at its next try instead of after the TTL. Stops
   * renewing, waits for the renewals out, and deletes the key by its revision — a lease that stepped down too, as
   * long as its key still holds this holder's value (see the module comment). Resolves once the key is gone, or is
   * another holder's (that key is never deleted), and at once if this lease never took the key, released it
   * already, or abandoned it. Rejects with `HALCYON_CLUSTER` when the key may still be this holder's (NATS did not
   * answer: each request ends by nats.js's timeout, 5 s, so within about 10 s with the renewals out; or the key kept
   * moving under {@link MAX_RELEASES} deletes): it then expires after the TTL, as after {@link abandon}, unless
   * release is called again once NATS answers.
   */
  async release(): Promise<void> {
    this.stopRenewing();
    if (!this.mine) return;
    await Promise.all(this.renewals); // the delete goes by the newest revision known
    let rev = this.rev;
    for (let i = 0; i < MAX_RELEASES; i++) {
      const now = await this.store.release(this.key, rev);
      if (now === null || now.value !== this.holder) {
        this.mine = false;
        return;
      }
      // Still this holder's value (unique to it): a renewal whose answer was lost moved the key past the revision
      // known here. Deleted by the key's own revision, as long as the value is still this holder's.
      rev = now.rev;
    }
    throw new HalcyonError('HALCYON_CLUSTER', `cannot release lease key ${this.key}: it kept moving under ${MAX_RELEASES} deletes; it expires after its TTL`);
  }
}
