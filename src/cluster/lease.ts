/**
 * A lease in the cluster's KV: the ingest's (one active ingest per bot device), and, by the same rules, a worker's
 * membership and its claim on each partition it owns (ownership.ts). The ingest's: one active ingest per bot device. Matrix gives one event stream per device — the server
 * deletes to-device messages (room keys among them) once the next `since` token is used — so two processes
 * syncing one device would lose keys. The lease is a key in a JetStream KV bucket whose entries expire `ttlMs`
 * after their last write: the holder rewrites it (compare-and-set on its revision) every sixth of the TTL; a
 * standby tries to create it every {@link Lease.pollMs} and gets it once the holder released it or it expired.
 *
 * The holder steps down (the `lost` callback) when another process wrote the key, or when it could not renew
 * for 80% of the TTL counted from the *sending* of its last successful renewal: the key cannot have expired on
 * the server before then, so a standby cannot have taken over while the holder still believed it held the lease.
 */
import { delay, unlessAborted } from '../abort.ts';
import type { Logger } from '../log.ts';
import type { LeaseStore } from './nats.ts';

/** The ingest's key. */
const INGEST_KEY = 'ingest';
/** Renewals of one lease out at once (one a tick while answers do not come; each ends by nats.js's timeout). */
const MAX_RENEWALS = 3;

/** One process's claim on the ingest lease; see the module comment. */
export class Lease {
  /** How often a standby tries to take the lease. */
  readonly pollMs: number;
  /** How often the holder renews its lease. */
  private readonly tickMs: number;
  private rev = 0;
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
   * at once even while an attempt is out (a lease that attempt takes after all is given up again).
   */
  async acquire(signal: AbortSignal): Promise<void> {
    let told = false;
    let unreachable = false;
    for (;;) {
      const attempt = this.tryAcquire().catch((err: unknown) => {
        // Once per outage: a standby tries every pollMs for as long as NATS is away.
        if (!unreachable) this.logger.warn({ err: (err as Error).message }, 'cluster: cannot reach the lease bucket; trying again');
        unreachable = true;
        return null;
      });
      const got = await unlessAborted(attempt, [signal]).catch((err: unknown) => {
        void attempt.then((took) => {
          if (took) void this.release().catch(() => {});
        });
        throw err;
      });
      if (got !== null) unreachable = false;
      if (got) {
        this.logger.info({ holder: this.holder }, 'cluster: this process holds the ingest lease');
        return;
      }
      if (got === false && !told) {
        told = true;
        const holder = await this.store.get(this.key).catch(() => null);
        this.logger.info({ holder }, 'cluster: another ingest holds the lease; standing by');
      }
      await delay(this.pollMs, signal);
    }
  }

  /** One attempt: takes the lease if nobody holds it (resolves true) and renews it from then on; rejects if NATS fails. */
  async tryAcquire(): Promise<boolean> {
    if (this.timer) return true;
    const sentAt = Date.now();
    const rev = await this.store.create(this.key, this.holder);
    if (rev === null) return false;
    this.rev = rev;
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
        if (!this.timer) return;
        if (rev === null) return this.lose('another process wrote it');
        this.rev = Math.max(this.rev, rev);
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
  }

  /** Gives the lease up (a clean stop): a standby takes over at its next try instead of after the TTL. */
  async release(): Promise<void> {
    if (!this.timer) return;
    this.stopRenewing();
    await Promise.all(this.renewals); // the delete goes by the newest revision
    await this.store.release(this.key, this.rev);
  }
}
