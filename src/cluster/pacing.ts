/**
 * One send budget per account across a cluster: a worker's outbox paces through {@link SharedPacer}, which asks
 * the ingest's outbox (the `pace` request) for each token and tells it what each send met (sent, 429, a timed
 * retry), so N workers together send at the rate one process would — not N times the server's limit, drawing a
 * 429 for every other send. While no ingest answers (a takeover, NATS restarting), the worker's own pacer serves,
 * learning from its own 429s as a single process does; it is kept told of every send, so it is warm if needed.
 */
import type { Logger } from '../log.ts';
import type { Pacer } from '../pacing.ts';
import type { SharedPaceOp } from '../outbox.ts';
import type { Broker } from './nats.ts';

/** Bound of a pacing request: past it the send goes by the local pacer (the ingest is taking over or gone). */
const PACE_MS = 2_000;

/** A worker's pacer: the ingest's budget, the local one as a fallback; see the module comment. */
export class SharedPacer implements Pacer {
  /** The ingest's last description of its pacing (for the outbox's log line explaining a wait). */
  private told = 'not paced';
  /** The ingest did not answer: said once, until it answers again. */
  private alone = false;

  constructor(
    private readonly broker: Broker,
    private readonly local: Pacer,
    private readonly logger: Logger,
  ) {}

  async next(now: number): Promise<number> {
    try {
      const r = await this.broker.request('pace', { op: 'next' }, PACE_MS);
      this.told = r.describe;
      if (this.alone) this.logger.info({}, "cluster: sends paced by the account's shared budget again");
      this.alone = false;
      return r.waitMs;
    } catch (err) {
      if (!this.alone) this.logger.warn({ err: (err as Error).message }, "cluster: the ingest does not answer; sends are paced by this worker alone until it does");
      this.alone = true;
      return this.local.next(now);
    }
  }

  sent(): void {
    this.local.sent();
    this.tell('sent');
  }

  rateLimited(retryAfterMs: number, now: number): void {
    this.local.rateLimited(retryAfterMs, now);
    this.tell('rateLimited', retryAfterMs);
  }

  drained(now: number): void {
    this.local.drained(now);
    this.tell('drained');
  }

  describe(): string {
    return this.alone ? `this worker alone (the ingest does not answer): ${this.local.describe()}` : `the account's budget, shared by the cluster: ${this.told}`;
  }

  /** Reports a send's outcome to the ingest; not awaited (a lost report costs at most one 429 later). */
  private tell(op: SharedPaceOp, retryAfterMs?: number): void {
    this.broker.request('pace', retryAfterMs === undefined ? { op } : { op, retryAfterMs }, PACE_MS).catch(() => {});
  }
}
