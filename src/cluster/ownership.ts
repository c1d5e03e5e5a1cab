/**
 * Which worker owns which partition. Each partition is owned by at most one live worker at a time: the owner holds
 * the key `p.<partition>` of the lease bucket (a {@link Lease}: renewed every sixth of the bucket's TTL, given up
 * on a clean hand-over, stepped down from when it cannot be renewed). Live workers announce themselves with a
 * lease of their own, `w.<worker>`. Every {@link Ownership.pollMs} each worker counts the live workers and the
 * partitions taken, and {@link planOwnership} says what to do: each targets ceil(P / live workers) partitions,
 * takes free ones while it has fewer, and gives its surplus up (a graceful hand-over, see partition.ts) when a
 * worker joins. A dead worker's keys expire after the TTL; the others then take its partitions.
 *
 * How a partition is taken decides when its new owner may pull (see partition.ts): a key its holder deleted was
 * handed over cleanly (everything the old owner had was acknowledged or given back), one that is absent was
 * never held, or expired with its holder (a crash: its events may still be out).
 */
import type { Logger } from '../log.ts';
import { Lease } from './lease.ts';
import type { KeyStore } from './nats.ts';
import { partitionOf } from './wire.ts';

/** What one worker should do about its partitions; see {@link planOwnership}. */
export interface OwnershipPlan {
  /** Partitions each worker should own: ceil(P / live workers). */
  target: number;
  /** Free partitions to try to take (others may win them). */
  take: number[];
  /** Owned partitions to hand over. */
  give: number[];
}

/**
 * The ownership arithmetic, without NATS: `live` workers (this one among them), `partitions` in all, `mine` owned
 * by this worker, `taken` owned by anyone (mine included). A worker below its target takes free partitions,
 * starting at an offset of its own (`start`) so that workers starting together do not all race for the same ones;
 * one above it gives up its highest-numbered ones (a worker just at or below its target keeps what it has, so
 * partitions move only when the membership changes).
 */
export function planOwnership(partitions: number, live: number, mine: readonly number[], taken: ReadonlySet<number>, start = 0): OwnershipPlan {
  const target = Math.ceil(partitions / Math.max(1, live));
  const owned = [...mine].sort((a, b) => a - b);
  if (owned.length > target) return { target, take: [], give: owned.slice(target).reverse() };
  const take: number[] = [];
  for (let i = 0; i < partitions && owned.length + take.length < target; i++) {
    const p = (start + i) % partitions;
    if (!taken.has(p)) take.push(p);
  }
  return { target, take, give: [] };
}

/** How a partition was taken: from nobody, from a holder that gave it up cleanly, or from one whose key expired. */
export type Takeover = 'released' | 'absent';

/**
 * How a hand-over ended: `clean` (everything given back or acked: the key is deleted, the next owner pulls at once),
 * `unclean` (deliveries may be out that the worker never saw: the key is left to expire) or `kept` (a handler on one
 * of its events still runs: the worker keeps the partition, and the key, until it settles).
 */
export type HandOver = 'clean' | 'unclean' | 'kept';

/** What the worker does when it gains or loses a partition (partition.ts). */
export interface PartitionOwner {
  /** This worker now owns `p`. */
  acquired(p: number, how: Takeover, at: number): void;
  /** Hand `p` over: stop pulling it, settle or give back its events (or keep it, see {@link HandOver}). */
  handOver(p: number): Promise<HandOver>;
  /** `p`'s key was lost (another wrote it, or it could not be renewed): stop handling its events at once. */
  lost(p: number, why: string): void;
}

/** A worker's side of the ownership; see the module comment. */
export class Ownership {
  /** How often the membership and the partitions are looked at. */
  readonly pollMs: number;
  private readonly member: Lease;
  private readonly leases = new Map<number, Lease>();
  /** Partitions being handed over: still counted as this worker's until their key is deleted. */
  private readonly leaving = new Map<number, Promise<void>>();
  private timer: NodeJS.Timeout | null = null;
  /** The look under way, if any (one at a time). */
  private ticking: Promise<void> | null = null;
  /** A change was seen during the look under way: look again after it. */
  private again = false;
  private unwatch: (() => void) | null = null;
  private stopping = false;

  constructor(
    private readonly store: KeyStore,
    private readonly partitions: number,
    /** This worker's ID (letters, digits, `_` and `-`: it names a key). */
    readonly id: string,
    private readonly owner: PartitionOwner,
    private readonly logger: Logger,
  ) {
    this.member = new Lease(store, store.ttlMs, id, logger, `w.${id}`);
    this.pollMs = this.member.pollMs;
  }

  /** Partitions this worker owns now. */
  get owned(): number[] {
    return [...this.leases.keys()].sort((a, b) => a - b);
  }

  /**
   * Starts looking: the first look at once, then every {@link pollMs}, and at once when a worker or partition key
   * appears or is deleted (a worker joins, a partition is given up), so a hand-over takes round trips, not polls.
   */
  start(): void {
    this.timer = setInterval(() => this.tick(), this.pollMs);
    this.unwatch = this.store.watch(() => this.tick());
    this.tick();
  }

  private tick(): void {
    if (this.stopping) return;
    if (this.ticking) {
      this.again = true;
      return;
    }
    this.again = false;
    this.ticking = this.look().finally(() => {
      this.ticking = null;
      if (this.again) this.tick();
    });
  }

  /** One look: renews nothing (the leases do), takes and gives partitions by {@link planOwnership}. */
  private async look(): Promise<void> {
    try {
      if (!this.member.held && !(await this.member.tryAcquire())) return; // our own key still there from before: it expires
      const [workers, keys] = await Promise.all([this.store.keys('w.*'), this.store.keys('p.*')]);
      const taken = new Set(keys.map((k) => Number(k.slice(2))));
      const mine = [...this.leases.keys()];
      const plan = planOwnership(this.partitions, Math.max(1, workers.length), mine, taken, partitionOf(this.id, this.partitions));
      for (const p of plan.give) this.giveUp(p);
      for (const p of plan.take) if (!this.stopping) await this.take(p);
    } catch (err) {
      this.logger.warn({ err: (err as Error).message }, "cluster: cannot read the partitions' owners; trying again");
    }
  }

  /** Tries to take free partition `p`; tells the worker how it was taken. */
  private async take(p: number): Promise<void> {
    const key = `p.${p}`;
    const before = await this.store.state(key);
    if (before === 'held') return;
    const lease = new Lease(this.store, this.store.ttlMs, this.id, this.logger, key);
    const at = Date.now();
    if (!(await lease.tryAcquire())) return; // another worker was faster
    this.leases.set(p, lease);
    lease.onLost((why) => {
      if (this.leases.get(p) !== lease) return;
      this.leases.delete(p);
      this.owner.lost(p, why);
    });
    this.logger.info({ partition: p, how: before }, 'cluster: this worker owns a partition');
    this.owner.acquired(p, before, at);
  }

  /**
   * Starts handing `p` over (once at a time): the worker settles its events, then the key is deleted (or left to
   * expire if that failed); a partition the worker kept (a handler on it still runs) stays, with its key.
   */
  private giveUp(p: number): Promise<void> {
    const lease = this.leases.get(p);
    const already = this.leaving.get(p);
    if (already || !lease) return already ?? Promise.resolve();
    const leaving = (async () => {
      const how = await this.owner.handOver(p);
      if (this.leases.get(p) !== lease || how === 'kept') return; // lost meanwhile, or kept
      this.leases.delete(p);
      if (how === 'clean') await lease.release().catch(() => lease.abandon());
      else lease.abandon();
      this.logger.info({ partition: p, clean: how === 'clean' }, 'cluster: this worker handed a partition over');
    })().finally(() => this.leaving.delete(p));
    this.leaving.set(p, leaving);
    return leaving;
  }

  /** Hands every partition over and leaves the membership (a clean stop). */
  async stop(): Promise<void> {
    this.stopping = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.unwatch?.();
    await this.ticking;
    // A hand-over begun before the stop may have kept its partition (a handler ran on): given up again, for good.
    while (this.leases.size > 0) await Promise.all(this.owned.map((p) => this.giveUp(p)));
    await this.member.release().catch(() => {});
  }
}
