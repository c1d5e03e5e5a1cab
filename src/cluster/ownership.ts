/**
 * Which worker owns which partition. Each partition is owned by at most one live worker at a time: the owner holds
 * the key `p.<partition>` of the lease bucket (a {@link Lease}: renewed every sixth of the bucket's TTL, given up
 * on a clean hand-over, stepped down from when it cannot be renewed). Live workers announce themselves with a
 * lease of their own, `w.<worker>`. Every {@link Ownership.pollMs}, and whenever the ingest writes new figures of
 * the partitions' load (key {@link LOAD_KEY}: a decayed count of the events taken in to be published to each, the
 * same for every worker), each worker counts the live workers and the partitions taken, and {@link planOwnership}
 * says what to do: each aims at an equal share of the load, takes free partitions while below it and gives
 * partitions up (a graceful hand-over, see partition.ts) while clearly above it; without enough load to go by, each
 * targets ceil(P / live workers) partitions. A dead worker's keys expire after the TTL; the others then take its
 * partitions.
 *
 * How a partition is taken decides when its new owner may pull (see partition.ts): a key its holder deleted was
 * handed over cleanly (everything the old owner had was acknowledged or given back), one that is absent was
 * never held, or expired with its holder (a crash: its events may still be out).
 */
import type { Logger } from '../log.ts';
import { Lease } from './lease.ts';
import type { KeyStore } from './nats.ts';
import { partitionOf } from './wire.ts';

/** The lease bucket's key where the ingest keeps the partitions' load: a JSON array, one figure per partition. */
export const LOAD_KEY = 'load';
/**
 * Below this total load (events, decayed) the figures are too few to go by: partitions are shared by count. 100,
 * not fewer: the ingest publishes a backlog a room's event at a time, so after 32 events of 20 rooms some had 1 and
 * some 2, and the workers moved partitions one way, then back when the figures evened out.
 */
export const LOAD_FLOOR = 100;
/**
 * Hysteresis: a worker gives partitions up only when it is more than this part of a share above its share, so
 * figures that drift by less move nothing. 7.5 %: half a room's share with the benchmark's 20 equal rooms and two
 * workers (a room is 10 % of a share there), so an 11/9 split (exactly 10 % above) is evened out — at 10 % it
 * stayed, two workers at ×1.60–1.65 of one instead of ×1.7 — while a 10/10 split whose figures drift (or three
 * workers at 7/7/6 rooms, 5 % above) moves nothing. Any move that lowers the busier side's load also lowers the
 * sum of squared distances from the share (see {@link planByLoad}), so a lower margin adds moves, never flapping.
 */
export const REBALANCE_MARGIN = 0.075;
/**
 * A partition is worth a hand-over (round trips, its rooms held up meanwhile) only if moving it lowers the busier
 * side's load by more than this part of a share; lighter ones (idle partitions among them) are shared by count.
 * 2.5 %, well under {@link REBALANCE_MARGIN}: with two workers, one just over the margin gains at most about the
 * margin by a move (by the one that evens the split), so a minimum near it would leave such splits as they are;
 * the room that evens an 11/9 split of equal rooms gains 10 % of a share.
 */
export const MOVE_MIN_GAIN = 0.025;
/**
 * How long (in polls) a worker leaves a partition it handed over to the taker before it may take it back by load
 * (sooner once no other worker is below its share, see {@link planByLoad}): the taker's look comes at once (the
 * key's deletion is watched), so this only matters if nobody took it.
 */
const RETAKE_AFTER_POLLS = 2;
/** How many of the latest events the load remembers: each event weighs 1 − 1/this of the one after it. */
export const LOAD_WINDOW = 1_000;

/** What one worker should do about its partitions; see {@link planOwnership}. */
export interface OwnershipPlan {
  /** Partitions each worker should own by count: ceil(P / live workers) (by load, a cap on idle ones taken). */
  target: number;
  /** Free partitions to try to take (others may win them). */
  take: number[];
  /** Owned partitions to hand over. */
  give: number[];
}

/**
 * The ownership arithmetic, without NATS: `live` workers (this one among them), `partitions` in all, `mine` owned
 * by this worker, `taken` owned by anyone (mine included), `weights` each partition's load (null: not known).
 * With load enough to go by ({@link LOAD_FLOOR}), see {@link planByLoad}. Otherwise by count: a worker below its
 * target takes free partitions, starting at an offset of its own (`start`) so that workers starting together do
 * not all race for the same ones; one above it gives up its highest-numbered ones (a worker just at or below its
 * target keeps what it has, so partitions move only when the membership changes).
 */
export function planOwnership(
  partitions: number,
  live: number,
  mine: readonly number[],
  taken: ReadonlySet<number>,
  start = 0,
  weights: readonly number[] | null = null,
  /** Partitions this worker handed over lately: not taken back by load while another worker may take them (see {@link planByLoad}). */
  gaveUp: ReadonlySet<number> = new Set(),
): OwnershipPlan {
  const target = Math.ceil(partitions / Math.max(1, live));
  const total = weights?.length === partitions ? weights.reduce((s, w) => s + w, 0) : 0;
  if (weights && total >= LOAD_FLOOR) return { target, ...planByLoad(partitions, live, mine, taken, start, weights, total, target, gaveUp) };
  const owned = [...mine].sort((a, b) => a - b);
  if (owned.length > target) return { target, take: [], give: owned.slice(target).reverse() };
  return { target, take: freeFrom(partitions, taken, start).slice(0, target - owned.length), give: [] };
}

/** The free partitions, from `start` on, wrapping around. */
function freeFrom(partitions: number, taken: ReadonlySet<number>, start: number): number[] {
  const free: number[] = [];
  for (let i = 0; i < partitions; i++) if (!taken.has((start + i) % partitions)) free.push((start + i) % partitions);
  return free;
}

/**
 * By load: each worker aims at an equal share of the total. More than {@link REBALANCE_MARGIN} of a share above
 * it, it gives up the partition that lowers the busier side's load the most — its own load, or the taker's with
 * the partition — if that gain is over {@link MOVE_MIN_GAIN} of a share. A taker is below its share and holds at
 * most what is not this worker's (exactly that with two workers), so each move lowers the sum of squared distances
 * from the share: under steady weights the moves end, and a partition never moves back. One partition a look: the
 * bound on the taker holds for one (it might take several given up at once), and a hand-over's end (its key
 * deleted) brings the next look at once. Below its share, a worker takes free partitions, heaviest first, until it
 * reaches it. Free partitions lighter than a move is worth (idle ones) are taken by count, as without load, so
 * every partition is owned: while one is free, some worker owns fewer than the target (or, for a heavier one, has
 * less than its share). A worker that handed a partition over may be left below its share (with two workers, a
 * move may overshoot the share as long as the split gets better): it does not take that partition back while
 * `gaveUp` names it, or it would race the taker for it, and win as often as not — but only while some other worker
 * is below its share (the others' load, all that is taken and not this worker's, is under their shares). The
 * figures move while a backlog is published: a taker that looks with later ones may find itself at its share and
 * leave the partition free, and then nobody took it until the giver stopped avoiding it, two polls later (a bench
 * round's stall: 17 events of one room waited 2.1 s, two workers at ×0.85 of one).
 */
function planByLoad(partitions: number, live: number, mine: readonly number[], taken: ReadonlySet<number>, start: number, w: readonly number[], total: number, target: number, gaveUp: ReadonlySet<number>): Omit<OwnershipPlan, 'target'> {
  const share = total / Math.max(1, live);
  const worth = MOVE_MIN_GAIN * share;
  let load = mine.reduce((s, p) => s + w[p]!, 0);
  if (load - share > REBALANCE_MARGIN * share) {
    const taker = Math.min(share, total - load);
    let best = -1;
    let gain = worth;
    for (const p of mine) {
      const g = load - Math.max(load - w[p]!, taker + w[p]!);
      if (g > gain) [best, gain] = [p, g];
    }
    if (best >= 0) return { take: [], give: [best] };
  }
  let others = 0;
  for (const p of taken) if (!mine.includes(p)) others += w[p]!;
  const avoid = others < (live - 1) * share ? gaveUp : new Set<number>();
  const free = freeFrom(partitions, taken, start);
  const take: number[] = [];
  // A stable sort: among equal weights, the offset's order (workers starting together race less).
  for (const p of free.filter((q) => w[q]! >= worth && !avoid.has(q)).sort((a, b) => w[b]! - w[a]!)) {
    if (load >= share) break;
    take.push(p);
    load += w[p]!;
  }
  let count = mine.length + take.length;
  for (const p of free) if (w[p]! < worth && count < target) take.push(p), count++;
  return { take, give: [] };
}

/** Reads the ingest's figures of the partitions' load ({@link LOAD_KEY}); null if absent or not `partitions` of them. */
export function parseLoad(text: string | null, partitions: number): number[] | null {
  if (text === null) return null;
  try {
    const w = JSON.parse(text) as unknown;
    return Array.isArray(w) && w.length === partitions && w.every((x) => typeof x === 'number' && Number.isFinite(x) && x >= 0) ? (w as number[]) : null;
  } catch {
    return null;
  }
}

/**
 * The figures a bucket starts with when it has none: the rooms the bot is joined to, each weighing alike,
 * `partitionOfRooms[i]` being the partition of room i, scaled to just over {@link LOAD_FLOOR} in all (so that the
 * workers go by them, a room's weight rounded up to a tenth) — or null without rooms. Before any event is counted the
 * workers know nothing better than "every room alike"; sharing by partition count instead split the benchmark's
 * 20 rooms 12/8 and the like (16 partitions, from 0 to 3 rooms each), and the first backlog's figures then moved
 * a partition while its events were being handled. Real traffic soon outweighs this: it decays like any figure.
 */
export function roomPrior(partitionOfRooms: readonly number[], partitions: number): number[] | null {
  if (partitionOfRooms.length === 0) return null;
  // LOAD_FLOOR + 1: a sum of figures rounded to tenths must not come out just under the floor.
  const weight = Math.ceil(((LOAD_FLOOR + 1) / partitionOfRooms.length) * 10) / 10;
  const w = new Array<number>(partitions).fill(0);
  for (const p of partitionOfRooms) w[p]! += weight;
  return w;
}

/**
 * A decayed count of the events taken in to be published to each partition (the ingest keeps it, see
 * {@link LOAD_KEY}), decayed per write of the figures ({@link figures}): at each, every figure loses
 * 1/{@link LOAD_WINDOW} of itself per event since the one before, and those events then add one each to their
 * partitions. So the figures are the split of the latest ~{@link LOAD_WINDOW} events (or of the last write's, if
 * more: a write comes every quarter second or so while events flow), over seconds when the bot is busy and hours
 * when it is quiet. Decayed by events, not time: an idle bot's figures stay as they were, so nothing moves while
 * nothing happens. Per write, not per event: the events of one write weigh alike, whatever order they were
 * published in. Decayed per event, a backlog published in one go (the bench's: 400 events, 20 rooms of 20) had its
 * rooms weigh 15.7 to 19.2 (the last published the most; one published a room after another would have weighed its
 * first ~0.67 of its last), and an 11/9 split of the rooms read as +5.5 to +9.6 % of a share, under the 10 %
 * {@link REBALANCE_MARGIN} of then.
 */
export class PartitionLoad {
  /** The figures as last written (or seeded). */
  private readonly weights: Float64Array;
  /** Events taken in for each partition since then. */
  private readonly pending: Float64Array;
  private pendingTotal = 0;

  constructor(partitions: number) {
    this.weights = new Float64Array(partitions);
    this.pending = new Float64Array(partitions);
  }

  /** One more event taken in for partition `p`: it counts from the next {@link figures} on. */
  add(p: number): void {
    this.pending[p]! += 1;
    this.pendingTotal++;
  }

  /** Goes on from earlier figures (a previous ingest's), if there are as many. */
  seed(weights: readonly number[]): void {
    if (weights.length === this.weights.length) this.weights.set(weights);
  }

  /** What the figures' sum will be at the next {@link figures} (the events since the last one counted in). */
  get total(): number {
    let t = 0;
    for (const x of this.weights) t += x;
    return t * this.decay() + this.pendingTotal;
  }

  /** The figures to write, to a tenth of an event: the events since the last call are counted in, as one write. */
  figures(): number[] {
    const keep = this.decay();
    for (let i = 0; i < this.weights.length; i++) this.weights[i] = this.weights[i]! * keep + this.pending[i]!;
    this.pending.fill(0);
    this.pendingTotal = 0;
    return [...this.weights].map((x) => Math.round(x * 10) / 10);
  }

  /** What is left of each figure after the events since the last write (0 after very many). */
  private decay(): number {
    return (1 - 1 / LOAD_WINDOW) ** this.pendingTotal;
  }
}

/** How a partition was taken: from nobody, from a holder that gave it up cleanly, or from one whose key expired. */
export type Takeover = 'released' | 'absent';

/**
 * How a hand-over ended: `clean` (everything given back or acked: the key is deleted, the next owner pulls at once),
 * `unclean` (deliveries may be out that the worker never saw: the key is left to expire) or `kept` (a handler on one
 * of its events still runs: the worker keeps the partition, and the key, until it settles; or it is not pulling
 * yet, or waits out a failed pull, and would be handed over unclean; or the hand-over was called off, no longer
 * wanted by the time its last pull was over).
 */
export type HandOver = 'clean' | 'unclean' | 'kept';

/** What the worker does when it gains or loses a partition (partition.ts). */
export interface PartitionOwner {
  /** This worker now owns `p`. */
  acquired(p: number, how: Takeover, at: number): void;
  /**
   * Hand `p` over: stop pulling it, settle or give back its events (or keep it, see {@link HandOver}). `wanted`
   * says whether the hand-over is still called for, asked once its last pull is over (see partition.ts).
   */
  handOver(p: number, wanted: () => boolean): Promise<HandOver>;
  /** `p`'s key was lost (another wrote it, or it could not be renewed): stop handling its events at once. */
  lost(p: number, why: string): void;
}

/** A worker's side of the ownership; see the module comment. */
export class Ownership {
  /** How often the membership and the partitions are looked at. */
  readonly pollMs: number;
  private readonly member: Lease;
  private readonly leases = new Map<number, Lease>();
  /** Partitions being handed over: their keys are still held, but they no longer count in this worker's load. */
  private readonly leaving = new Map<number, Promise<void>>();
  /** When this worker last handed each partition over (not taken back by load for {@link RETAKE_AFTER_POLLS} polls). */
  private readonly gaveAt = new Map<number, number>();
  private timer: NodeJS.Timeout | null = null;
  /** The look under way, if any (one at a time). */
  private ticking: Promise<void> | null = null;
  /** A change was seen during the look under way: look again after it. */
  private again = false;
  private unwatch: (() => void) | null = null;
  private unwatchLoad: (() => void) | null = null;
  /** What the last look saw: live workers and partitions taken (a change of the load is checked against it). */
  private seen: { live: number; taken: ReadonlySet<number> } | null = null;
  /** The latest figures of the load: read by each look, and each new one the ingest writes. */
  private load: string | null = null;
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
    this.unwatchLoad = this.store.watchKey(LOAD_KEY, (v) => this.loadChanged(v));
    this.tick();
  }

  /** Partitions this worker handed over in the last {@link RETAKE_AFTER_POLLS} polls: left to their taker. */
  private gaveUpLately(): Set<number> {
    const since = Date.now() - RETAKE_AFTER_POLLS * this.pollMs;
    for (const [p, at] of this.gaveAt) if (at < since) this.gaveAt.delete(p);
    return new Set(this.gaveAt.keys());
  }

  /** Owned partitions not being handed over: the load this worker will carry. */
  private keeping(): number[] {
    return [...this.leases.keys()].filter((p) => !this.leaving.has(p));
  }

  /**
   * The ingest wrote new figures of the load (several times a second while events flow): a look at once if they
   * change what this worker should do, judged by what the last look saw (the look reads everything again).
   */
  private loadChanged(text: string | null): void {
    this.load = text;
    const seen = this.seen;
    const plan = seen && planOwnership(this.partitions, seen.live, this.keeping(), seen.taken, 0, parseLoad(text, this.partitions), this.gaveUpLately());
    if (!plan || plan.give.length + plan.take.length > 0) this.tick();
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

  /** One look: renews nothing (the leases do), takes and gives partitions by {@link planOwnership} and the load. */
  private async look(): Promise<void> {
    try {
      if (!this.member.held && !(await this.member.tryAcquire())) return; // not ours (or NATS away): the next look tries again
      const [workers, keys, load] = await Promise.all([this.store.keys('w.*'), this.store.keys('p.*'), this.store.get(LOAD_KEY)]);
      this.load = load;
      const taken = new Set(keys.map((k) => Number(k.slice(2))));
      const live = Math.max(1, workers.length);
      this.seen = { live, taken };
      // Partitions being handed over are not counted as this worker's: they are on their way to another.
      const plan = planOwnership(this.partitions, live, this.keeping(), taken, partitionOf(this.id, this.partitions), parseLoad(load, this.partitions), this.gaveUpLately());
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
      // Left to expire, never released: events the worker held may still be out, and a deleted key tells the next
      // owner to pull at once instead of waiting for them (partition.ts).
      lease.abandon();
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
      const how = await this.owner.handOver(p, () => this.stillGiving(p));
      if (this.leases.get(p) !== lease || how === 'kept') return; // lost meanwhile, or kept
      this.leases.delete(p);
      this.gaveAt.set(p, Date.now());
      let clean = how === 'clean';
      if (clean) {
        // A key left behind costs the next owner its TTL and then the ack wait (it was taken from an expired key).
        clean = await lease.release().then(
          () => true,
          (err: unknown) => {
            this.logger.warn({ partition: p, err: (err as Error).message }, "cluster: cannot delete a partition's key; its next owner takes it once it expires");
            return false;
          },
        );
      } else lease.abandon();
      this.logger.info({ partition: p, clean }, 'cluster: this worker handed a partition over');
    })().finally(() => this.leaving.delete(p));
    this.leaving.set(p, leaving);
    return leaving;
  }

  /**
   * Whether handing `p` over is still what the plan says, by the latest figures of the load. A hand-over's last
   * pull runs as long as it brings events, and while a backlog is published the figures then move a lot (in the
   * bench, the first ones lacked a fifth of the rooms): most moves decided on the first figures were undone by
   * the next, with a room held up each time. `p` counts among the partitions kept, in their order (ties between
   * partitions go as they went when `p` was chosen).
   */
  private stillGiving(p: number): boolean {
    const seen = this.seen;
    if (!seen || this.stopping) return true;
    const mine = [...this.leases.keys()].filter((q) => q === p || !this.leaving.has(q));
    return planOwnership(this.partitions, seen.live, mine, seen.taken, 0, parseLoad(this.load, this.partitions), this.gaveUpLately()).give.includes(p);
  }

  /** Hands every partition over and leaves the membership (a clean stop). */
  async stop(): Promise<void> {
    this.stopping = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.unwatch?.();
    this.unwatchLoad?.();
    await this.ticking;
    // A hand-over begun before the stop may have kept its partition (a handler ran on): given up again, for good.
    while (this.leases.size > 0) await Promise.all(this.owned.map((p) => this.giveUp(p)));
    await this.member.release().catch((err: unknown) => this.logger.warn({ err: (err as Error).message }, "cluster: cannot delete this worker's membership key; the others count it until it expires"));
  }
}
