/**
 * The main dispatcher: runs tasks in order within a key (a room), concurrently across keys, with at most
 * `concurrency` keys running at once. A task that throws is reported and the next one runs: one bad handler
 * never stops a room, let alone the bot.
 */
// The module's binding, not the global: `globalThis.performance` is a getter Node runs at every use, and the drain
// loop reads the clock once per task (in-process, bench/breakdown.ts `deliver`: ~0.02 µs per event less on main).
import { performance } from 'node:perf_hooks';

/**
 * Longest stretch (ms) of one room's synchronous handler work before its lane yields to the event loop. A room
 * whose handlers burn CPU then holds other rooms up by about one handler call, not by its whole backlog: batches
 * that arrived meanwhile are taken in and their rooms start (and the embedding service's timers and I/O run)
 * between two of its tasks. Fast handlers rarely reach it: a yield costs one macrotask hop per 10 ms of work.
 */
const SLICE_MS = 10;

/** A macrotask hop: lets queued port messages, I/O and timers run before the caller continues. */
const nextTurn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/** A unit of work: a handler call for one event. May return a promise. */
export type Task = () => unknown;

interface Lane {
  key: string;
  tasks: Task[];
  head: number;
}

/** Per-key ordered, cross-key concurrent task runner; see the module comment. */
export class Dispatcher {
  private readonly lanes = new Map<string, Lane>();
  /** Lanes waiting for a turn, from `waitHead` on (an index, not `shift()`: a batch of 10,000 rooms queues as many). */
  private waiting: Lane[] = [];
  private waitHead = 0;
  private running = 0;
  private queued = 0;
  private holding = false;
  private pumping = false;
  /** Set once a task returned a promise: from then on lanes run inside `laneScope` (it costs a context each). */
  private scoped = false;
  private idleWaiters: Array<() => void> = [];

  constructor(
    private readonly concurrency: number,
    private readonly onError: (err: unknown, key: string) => void,
    /** Wraps each lane's run (the client gives each lane its own handler-run context for idempotent sends). */
    private readonly laneScope: (run: () => Promise<void>) => Promise<void> = (run) => run(),
  ) {}

  /** Runs every lane from now on inside `laneScope` (the client calls this when an `async` handler is added). */
  useLaneScopes(): void {
    this.scoped = true;
  }

  /** Tasks queued or running. */
  get size(): number {
    return this.queued;
  }

  /** Queues `task` behind every earlier task of `key`. */
  push(key: string, task: Task): void {
    this.queued++;
    let lane = this.lanes.get(key);
    if (lane) {
      lane.tasks.push(task);
      return;
    }
    lane = { key, tasks: [task], head: 0 };
    this.lanes.set(key, lane);
    if (this.running < this.concurrency && !this.holding) this.start(lane);
    else this.waiting.push(lane);
  }

  /**
   * Pushes a batch of tasks: `fn` pushes them, lanes start after it returns. Without this, a synchronous task
   * runs (and its lane ends) inside its own push, so every event would start a lane of its own.
   */
  pushAll(fn: () => void): void {
    if (this.holding) return fn();
    this.holding = true;
    try {
      fn();
    } finally {
      this.holding = false;
      this.startWaiting();
    }
  }

  /**
   * Like {@link pushAll}, but the lanes start at the end of this event-loop turn (a check-phase callback), so
   * every batch that arrived in the same turn (the port messages queued while a handler burned CPU) is taken
   * in first: a room with work in a later batch then waits for at most the handler call running now, not for
   * an earlier batch's slow handlers in another room.
   */
  pushBatch(fn: () => void): void {
    if (this.holding) return fn();
    this.holding = true;
    try {
      fn();
    } finally {
      setImmediate(this.release);
    }
  }

  private readonly release = (): void => {
    this.holding = false;
    this.startWaiting();
  };

  /**
   * Starts waiting lanes while there is room. A loop, not recursion: a lane of synchronous tasks ends inside
   * its own start, and thousands of one-event lanes would otherwise nest that deep.
   */
  private startWaiting(): void {
    if (this.pumping || this.holding) return;
    this.pumping = true;
    try {
      while (this.running < this.concurrency && this.waitHead < this.waiting.length) {
        const lane = this.waiting[this.waitHead]!;
        this.waiting[this.waitHead++] = undefined as unknown as Lane;
        this.start(lane);
      }
      if (this.waitHead === this.waiting.length) {
        this.waiting.length = 0;
        this.waitHead = 0;
      } else if (this.waitHead > 1024 && this.waitHead * 2 > this.waiting.length) {
        this.waiting = this.waiting.slice(this.waitHead);
        this.waitHead = 0;
      }
    } finally {
      this.pumping = false;
    }
  }

  /** Resolves once nothing is queued or running. */
  idle(): Promise<void> {
    if (this.queued === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private start(lane: Lane): void {
    this.running++;
    void (this.scoped ? this.laneScope(() => this.drain(lane)) : this.drain(lane));
  }

  private async drain(lane: Lane): Promise<void> {
    // Runs the lane's tasks one after another; awaits only tasks that return a promise, so synchronous
    // handlers cost no microtask hop.
    // When this lane's current stretch of synchronous work began (it is reset by every await). The clock is read
    // after a task only when another one follows: a lane of one event (a quiet room's) reads it once.
    let stretch = performance.now();
    while (lane.head < lane.tasks.length) {
      const task = lane.tasks[lane.head]!;
      lane.tasks[lane.head++] = undefined as unknown as Task;
      try {
        const r = task() as { then?: unknown } | undefined;
        if (r && typeof r.then === 'function') {
          this.scoped = true;
          await r;
          stretch = performance.now();
        }
      } catch (err) {
        this.onError(err, lane.key);
      }
      this.queued--;
      if (lane.head > 1024 && lane.head * 2 > lane.tasks.length) {
        lane.tasks = lane.tasks.slice(lane.head);
        lane.head = 0;
      }
      if (lane.head < lane.tasks.length && performance.now() - stretch > SLICE_MS) {
        await nextTurn();
        // Batches taken in meanwhile start their lanes in this same check phase, after this callback: let them
        // go first, or a room they carry would wait for this lane's next slow task too.
        while (this.holding) await nextTurn();
        stretch = performance.now();
      }
    }
    // No await since the loop test (the yield above is followed by it): nothing can have been pushed in between.
    this.lanes.delete(lane.key);
    this.running--;
    this.startWaiting();
    if (this.queued === 0 && this.idleWaiters.length > 0) {
      const waiters = this.idleWaiters;
      this.idleWaiters = [];
      for (const w of waiters) w();
    }
  }
}
