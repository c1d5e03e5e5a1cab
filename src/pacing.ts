/**
 * How the outbox spaces its sends. Two pacers behind one interface:
 *
 * - {@link AdaptivePacer} (the default): full speed until the server answers 429, then a token bucket shaped by
 *   what the server said — its retry time gives the rate, the sends it took before refusing give the burst —
 *   and, after enough sends without a refusal, a little faster again (a probe, which costs at most one 429).
 *   What it learned is kept per account (in outbox.sqlite), so a restart does not learn it again. A server
 *   without limits is never waited on; Synapse's default `rc_message` draws one 429 per stretch, not one per send.
 * - {@link FixedPacer}: a token bucket of a configured rate and burst (e.g. Synapse's defaults), for accounts
 *   whose limits are known.
 */
import type { RateLimit } from './outbox.ts';

/** The bucket refills at this fraction of its rate: the server's limiter starts its clock a little after ours. */
const REFILL_MARGIN = 0.95;
/** Sends without a refusal after which the adaptive pacer tries a faster rate. */
const PROBE_AFTER = 20;
/** How much faster a probe goes. */
const PROBE_FACTOR = 1.25;
/** Past this rate (sends/s) the adaptive pacer stops pacing altogether. */
const UNPACED_RATE = 50;
/** What the adaptive pacer learned is forgotten after this long (limits change; a stale rate would only slow us). */
const FORGET_AFTER_MS = 7 * 24 * 3600_000;

/** What an adaptive pacer learned, as kept on disk. */
export interface LearnedPacing {
  /** Sends per second the server allowed. */
  rate: number;
  /** Sends it took at once before refusing. */
  burst: number;
  /** When it was learned (ms since the epoch). */
  at: number;
}

/** Spaces sends; see the module comment. */
export interface Pacer {
  /**
   * Ms to wait before the next send may go; 0 means it may go now, and it is counted (a token taken). A promise
   * when the budget is kept elsewhere (a cluster worker asks the ingest, which keeps the account's).
   */
  next(now: number): number | Promise<number>;
  /** A send went through. */
  sent(): void;
  /** The server refused a send (429) and said to come back after `retryAfterMs`. */
  rateLimited(retryAfterMs: number, now: number): void;
  /** A retry the server timed just went: its limiter will want the next send later (the bucket is empty). */
  drained(now: number): void;
  /** What it paces to, for the log line that explains a wait. */
  describe(): string;
}

/** A token bucket with a rate and a burst; the shared mechanics of both pacers. */
class Bucket {
  private tokens: number;
  private last: number;
  constructor(
    public rate: number,
    public burst: number,
    now: number,
    full = true,
  ) {
    this.tokens = full ? burst : 0;
    this.last = now;
  }
  /** Ms until a token (taking it when there is one now). */
  take(now: number): number {
    const rate = this.rate * REFILL_MARGIN;
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.last) / 1000) * rate);
    this.last = now;
    if (this.tokens >= 1) {
      this.tokens -= 1;
      return 0;
    }
    return Math.ceil(((1 - this.tokens) / rate) * 1000);
  }
  empty(now: number): void {
    this.tokens = 0;
    this.last = now;
  }
}

/** A fixed token bucket (`rateLimit: { perSecond, burst }`). */
export class FixedPacer implements Pacer {
  private readonly bucket: Bucket;
  constructor(private readonly limit: RateLimit, now = Date.now()) {
    this.bucket = new Bucket(limit.perSecond, limit.burst, now);
  }
  next(now: number): number {
    return this.bucket.take(now);
  }
  sent(): void {}
  rateLimited(): void {}
  drained(now: number): void {
    this.bucket.empty(now);
  }
  describe(): string {
    return `rateLimit ${this.limit.perSecond}/s, bursts of ${this.limit.burst}. Pass rateLimit: 'adaptive' (the default) to pace only once the server asks, or rateLimit: false if the bot's account is exempt`;
  }
}

/** Full speed until the server says otherwise, then its pace; see the module comment. */
export class AdaptivePacer implements Pacer {
  /** Null while unpaced. */
  private bucket: Bucket | null = null;
  /** Sends since the last refusal (or since pacing stopped): the burst the server took. */
  private streak = 0;
  /** When the first send of {@link streak} went (null before it). */
  private streakStart: number | null = null;
  /** The last rate that went {@link PROBE_AFTER} sends without a refusal (a refused probe returns to it). */
  private safe: number | null = null;

  constructor(
    learned: LearnedPacing | null,
    /** Keeps what was learned (the outbox writes it to its database). */
    private readonly keep: (learned: LearnedPacing | null) => void,
    now = Date.now(),
  ) {
    if (learned && now - learned.at < FORGET_AFTER_MS) {
      this.bucket = new Bucket(learned.rate, learned.burst, now);
    }
  }

  next(now: number): number {
    const wait = this.bucket ? this.bucket.take(now) : 0;
    if (wait === 0 && this.streakStart === null) this.streakStart = now;
    return wait;
  }

  sent(): void {
    this.streak++;
    const b = this.bucket;
    if (!b || this.streak % PROBE_AFTER !== 0) return;
    // Long enough without a refusal: try a little faster (a refusal sets it back).
    this.safe = b.rate;
    b.rate *= PROBE_FACTOR;
    if (b.rate > UNPACED_RATE) {
      this.bucket = null;
      this.keep(null);
    }
  }

  rateLimited(retryAfterMs: number, now: number): void {
    // Unpaced, a refusal comes when the burst is spent and the server's bucket empty: what it took before refusing
    // is its burst, and its retry time one refill less what refilled while the burst went (a real Synapse took 11
    // sends in 1.2 s: taking 3.8 s for its 5 s made the paced sends draw a second 429). A burst longer than the retry
    // time says nothing of that kind (the bucket refilled by whole sends): the retry time alone. Paced, the bucket was
    // not empty (the retry time is only what was left of a refill): back to the last rate without refusals, or a
    // step slower.
    const span = this.streakStart === null ? 0 : Math.max(0, now - this.streakStart);
    const told = 1000 / Math.max(retryAfterMs + (span < retryAfterMs ? span : 0), 1);
    const b = this.bucket;
    const rate = b ? Math.min(told, this.safe ?? b.rate / PROBE_FACTOR) : told;
    const burst = b ? b.burst : Math.max(1, this.streak);
    this.bucket = new Bucket(rate, burst, now, false);
    this.streak = 0;
    this.streakStart = null;
    this.keep({ rate, burst, at: now });
  }

  drained(now: number): void {
    this.bucket?.empty(now);
  }

  describe(): string {
    const b = this.bucket;
    return b
      ? `the homeserver's limit as learned from its 429s: ${b.rate.toFixed(2)}/s, bursts of ${b.burst}. Pass rateLimit: false if the bot's account is exempt`
      : 'not paced';
  }
}
