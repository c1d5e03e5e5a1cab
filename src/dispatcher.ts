/**
 * The main dispatcher: runs tasks in order within a key (a room), concurrently across keys, with at most
 * `concurrency` keys running at once. A task that throws is reported and the next one runs: one bad handler
 * never stops a room, let alone the bot.
 */

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
  private readonly waiting: Lane[] = [];
  private running = 0;
  private queued = 0;
  private idleWaiters: Array<() => void> = [];

  constructor(
    private readonly concurrency: number,
    private readonly onError: (err: unknown, key: string) => void,
  ) {}

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
    if (this.running < this.concurrency) this.start(lane);
    else this.waiting.push(lane);
  }

  /** Resolves once nothing is queued or running. */
  idle(): Promise<void> {
    if (this.queued === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private start(lane: Lane): void {
    this.running++;
    void this.drain(lane);
  }

  private async drain(lane: Lane): Promise<void> {
    // Runs the lane's tasks one after another; awaits only tasks that return a promise, so synchronous
    // handlers cost no microtask hop.
    while (lane.head < lane.tasks.length) {
      const task = lane.tasks[lane.head]!;
      lane.tasks[lane.head++] = undefined as unknown as Task;
      try {
        const r = task() as { then?: unknown } | undefined;
        if (r && typeof r.then === 'function') await r;
      } catch (err) {
        this.onError(err, lane.key);
      }
      this.queued--;
      if (lane.head > 1024 && lane.head * 2 > lane.tasks.length) {
        lane.tasks = lane.tasks.slice(lane.head);
        lane.head = 0;
      }
    }
    // No await since the loop test: nothing can have been pushed to this lane in between.
    this.lanes.delete(lane.key);
    this.running--;
    const next = this.waiting.shift();
    if (next) this.start(next);
    if (this.queued === 0 && this.idleWaiters.length > 0) {
      const waiters = this.idleWaiters;
      this.idleWaiters = [];
      for (const w of waiters) w();
    }
  }
}
