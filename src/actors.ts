/**
 * The thread door: the only module that imports `node:worker_threads` and comlink.
 *
 * An actor is an object with async methods. It runs either on its own worker thread (comlink RPC over the
 * worker's port) or in-thread (direct calls), behind the same {@link ActorHandle} interface. Wrapping fixes two
 * comlink gaps: errors keep their `code` across threads, and every call settles, by its deadline or with
 * `HALCYON_ACTOR_DIED` as soon as the worker exits.
 */
import { getHeapStatistics, setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { isMainThread, MessageChannel, type MessagePort, parentPort, threadId, Worker, workerData } from 'node:worker_threads';
import * as Comlink from 'comlink';
import { fromWireError, HalcyonError, toWireError, type WireError } from './errors.ts';
import { workerUrl } from './entries.ts';

// Comlink's own throw handler keeps only name/message/stack; ours carries the whole coded error. It must be
// registered in every thread that uses comlink, which importing this module does.
Comlink.transferHandlers.set('throw', {
  canHandle: (v: unknown): v is { value: unknown } =>
    typeof v === 'object' && v !== null && Object.getOwnPropertySymbols(v).some((s) => s.description === 'Comlink.thrown'),
  serialize: (v: { value: unknown }) => [toWireError(v.value, 'HALCYON_INTERNAL'), []],
  deserialize: (w: WireError) => {
    throw fromWireError(w);
  },
});

/** The async face of an actor: each method of `T` returning a promise. */
export type Remote<T> = {
  [K in keyof T]: T[K] extends (...args: infer A) => infer R ? (...args: A) => Promise<Awaited<R>> : never;
};

/** A running actor: its API and how to end it. */
export interface ActorHandle<T> {
  readonly api: Remote<T>;
  /** Ends the actor (terminates its worker); pending calls reject. */
  terminate(): Promise<void>;
  /** Called once if the actor dies on its own (a worker crash); not called after {@link terminate}. */
  onDeath(cb: (err: HalcyonError) => void): void;
  /** Ends the worker as a crash would (death callbacks run); for fault-injection tests. @internal */
  crash(): Promise<void>;
  /** Makes the worker stop answering while it stays alive, as a stuck actor would; for watchdog tests. @internal */
  stall(): Promise<void>;
}

/** The message that blocks a worker's thread until it is terminated (see {@link ActorHandle.stall}). */
const STALL = 'halcyonStallForTests';

/** A typed one-way message port: receives `In`, sends `Out`. */
export interface Port<In, Out> {
  post(msg: Out, transfer?: ArrayBuffer[]): void;
  onMessage(cb: (msg: In) => void): void;
  close(): void;
}

/** Per-method deadlines in ms; methods not listed use `default`. */
export type Deadlines = { default: number } & Record<string, number>;

type Pending = { reject: (e: HalcyonError) => void };

/** Wraps a call function with deadlines and death tracking. */
class Settler {
  private readonly pending = new Set<Pending>();
  private dead: HalcyonError | null = null;
  constructor(
    private readonly name: string,
    private readonly deadlines: Deadlines,
  ) {}

  call<R>(method: string, run: () => Promise<R>): Promise<R> {
    if (this.dead) return Promise.reject(this.dead);
    const ms = this.deadlines[method] ?? this.deadlines.default;
    return new Promise<R>((resolve, reject) => {
      const entry: Pending = { reject };
      const timer = setTimeout(() => {
        this.pending.delete(entry);
        reject(new HalcyonError('HALCYON_ACTOR_TIMEOUT', `${this.name}.${method} did not settle within ${ms} ms`));
      }, ms);
      timer.unref();
      this.pending.add(entry);
      run().then(
        (v) => {
          clearTimeout(timer);
          this.pending.delete(entry);
          resolve(v);
        },
        (e) => {
          clearTimeout(timer);
          this.pending.delete(entry);
          reject(e);
        },
      );
    });
  }

  kill(err: HalcyonError): void {
    this.dead ??= err;
    for (const p of this.pending) p.reject(err);
    this.pending.clear();
  }

  wrap<T>(target: (method: string, args: unknown[]) => Promise<unknown>): Remote<T> {
    return new Proxy({} as Remote<T>, {
      get: (_t, prop) => {
        if (typeof prop !== 'string' || prop === 'then') return undefined;
        return (...args: unknown[]) => this.call(prop, () => target(prop, args));
      },
    });
  }
}

let exposedGc: ((opts?: object) => void) | null = null;

/**
 * A full, memory-reducing garbage collection of this worker's isolate, for an actor that has just handled an
 * exceptionally large batch (a big account's initial sync). An idle worker's V8 does not collect by itself: the
 * garbage of a 100 MB initial sync stayed committed, 400 MB of RSS, for as long as the bot ran. A no-op on the main
 * thread (actors running inline), whose collections are the application's (its heap trim is an option of its own,
 * see src/memory.ts).
 */
export function collectGarbage(): void {
  if (isMainThread) return;
  compactHeap();
}

/**
 * A collection of this worker's young generation (a scavenge: a fraction of a millisecond when little in it is
 * alive), for an actor that makes garbage V8 would not collect soon by itself: the sync actor while it reads an
 * initial sync whole (src/sync/split.ts). A no-op on the main thread, as {@link collectGarbage}.
 */
export function collectYoungGeneration(): void {
  if (isMainThread) return;
  exposedGc ??= exposeGc();
  exposedGc({ type: 'minor', execution: 'sync' });
}

/**
 * A full garbage collection of this thread's isolate that gives emptied pages back, on any thread
 * ({@link collectGarbage}, and the periodic heap trim in src/memory.ts). Two flavours:
 * - `last-resort` (the default): V8's memory-reducing collection (ignored by older V8s, which then run a plain full
 *   one); it repeats mark-compacts until nothing more is freed. A plain `gc()` left a worker's heap at 17.8 MiB
 *   committed for 6.2 live, this one at 7.3.
 * - `compacting`: one full collection with compaction forced (V8's `--compact-on-every-full-gc`, set for this one
 *   collection only). On a fragmented 66 MiB heap it gave back as much as `last-resort` (68 → 14 MiB committed) in
 *   about half the pause (58–63 against 110–115 ms), where a plain full collection kept 58 MiB committed: the main
 *   thread uses it, its pause being what handlers wait for. V8 flags are per process: another isolate's full
 *   collection in that window compacts too, which costs it some time and nothing else.
 */
export function compactHeap(flavor: 'compacting' | 'last-resort' = 'last-resort'): void {
  exposedGc ??= exposeGc();
  if (flavor === 'last-resort') {
    exposedGc({ type: 'major', execution: 'sync', flavor });
    return;
  }
  setFlagsFromString('--compact-on-every-full-gc');
  try {
    exposedGc({ type: 'major', execution: 'sync' });
  } finally {
    setFlagsFromString('--no-compact-on-every-full-gc');
  }
}

/**
 * `gc`, exposed only to a context of our own, with the flag restored at once: user code never sees it. V8 flags are
 * per process, not per isolate: another worker can turn the flag back off between our setting it and our context
 * being made (seen when every actor collects at once), so a context made without `gc` is simply made again.
 */
function exposeGc(): (opts?: object) => void {
  for (let attempt = 1; ; attempt++) {
    setFlagsFromString('--expose-gc');
    try {
      const found = runInNewContext('typeof gc === "function" ? gc : null') as ((opts?: object) => void) | null;
      if (found) return found;
    } finally {
      setFlagsFromString('--no-expose-gc');
    }
    // Three actors can race at most a few times; a flag that never takes is a bug worth hearing about.
    if (attempt === 100) throw new HalcyonError('HALCYON_INTERNAL', 'could not expose gc to a worker context');
  }
}

/** Whether start-up steps are traced (see {@link traceStartup}); read once, each thread reads the same environment. */
const TRACE_STARTUP = process.env.HALCYON_TRACE_STARTUP === '1';

/**
 * With `HALCYON_TRACE_STARTUP=1` in the environment: one line on stderr per start-up step (`halcyon-startup
 * <thread> <step> rss=<process MB> heap=<thread's used/total MB> <epoch ms>`), absolute times so steps of different
 * threads line up. For finding where `run()`'s time and memory go (bench/workloads/coldstart.ts); nothing is written
 * otherwise, and no secret is in a step.
 */
export function traceStartup(step: string): void {
  if (!TRACE_STARTUP) return;
  const h = getHeapStatistics();
  const mb = (n: number) => (n / 1e6).toFixed(0);
  const at = (performance.timeOrigin + performance.now()).toFixed(1);
  process.stderr.write(`halcyon-startup ${threadId} ${step} rss=${mb(process.memoryUsage.rss())} heap=${mb(h.used_heap_size)}/${mb(h.total_heap_size)} ${at}\n`);
}

/** Whether this code runs on a worker thread (an actor's own), not on the main thread. */
export function isWorkerThread(): boolean {
  return !isMainThread;
}

/**
 * Node options for a worker that runs a built bundle: the parent's, minus TypeScript loader hooks (tsx) that a
 * plain-JS bundle does not need. A worker inherits them by default and then spends a few hundred ms of start-up
 * CPU loading the loader. Undefined (inherit as is) when there is nothing to drop or the entry is TypeScript.
 */
export function bundleExecArgv(url: URL, argv: readonly string[] = process.execArgv): string[] | undefined {
  if (!url.pathname.endsWith('.js')) return undefined;
  const out: string[] = [];
  const isTsx = (spec: string | undefined): boolean => spec !== undefined && /(^|[\\/@])tsx([\\/]|$)/.test(spec);
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (['--import', '--require', '-r', '--loader', '--experimental-loader'].includes(a) && isTsx(argv[i + 1])) i++;
    else if (!/^--(import|require|loader|experimental-loader)=/.test(a) || !isTsx(a.slice(a.indexOf('=') + 1))) out.push(a);
  }
  return out.length === argv.length ? undefined : out;
}

/** Creates the Worker; V8 and per-process flags among `execArgv` (refused by workers, and process-wide anyway) are dropped. */
function newWorker(url: URL, options: ConstructorParameters<typeof Worker>[1] & object): Worker {
  let execArgv = bundleExecArgv(url);
  for (;;) {
    try {
      return new Worker(url, execArgv ? { ...options, execArgv } : options);
    } catch (err) {
      const invalid = (err as { code?: string }).code === 'ERR_WORKER_INVALID_EXEC_ARGV' ? /flags: (.*)$/.exec((err as Error).message)?.[1]?.split(/,\s*/) : undefined;
      if (!execArgv || !invalid?.length) throw err;
      const before = execArgv.length;
      execArgv = execArgv.filter((a) => !invalid.includes(a));
      if (execArgv.length === before) throw err;
    }
  }
}

/**
 * V8 limits of every actor's worker. The young generation (new space) is where each poll's, batch's and call's
 * short-lived objects are allocated; V8 doubles it whenever enough objects survive a scavenge and shrinks it only
 * when allocation nearly stops, so under steady traffic it grew to 32–128 MiB per worker and stayed there (a reply
 * bot at 20 messages/s went from 200 to 390 MiB RSS in six minutes, the sync worker's new space alone 128 MiB). 12 MiB
 * caps the new space at 8 MiB; the CPU cost was below the noise of the measurement (200,000 events through the
 * sync worker). The old generation is left unbounded: a big account's initial sync legitimately needs hundreds of
 * MB for a moment, and a worker killed at a limit would lose more than it saves.
 */
export const WORKER_RESOURCE_LIMITS = { maxYoungGenerationSizeMb: 12 } as const;

/**
 * Starts `workers/<name>` (or the entry at a URL, for tests) on a worker thread. `ports` are handed to the worker (see {@link workerPorts}) so
 * actors can talk to each other and to main without a hop through this thread.
 */
export function spawnWorkerActor<T>(entry: string | URL, deadlines: Deadlines, ports: Record<string, MessagePort> = {}): ActorHandle<T> {
  const name = entry instanceof URL ? entry.pathname.replace(/^.*\//, '') : entry;
  traceStartup(`${name} worker spawning`);
  const worker = newWorker(workerUrl(entry), {
    workerData: { ports },
    transferList: Object.values(ports),
    name: `halcyon-${name}`,
    resourceLimits: { ...WORKER_RESOURCE_LIMITS },
  });
  const settler = new Settler(name, deadlines);
  const remote = Comlink.wrap<Record<string, (...a: unknown[]) => Promise<unknown>>>(nodeEndpoint(worker));
  let terminating = false;
  let deathCb: ((e: HalcyonError) => void) | null = null;
  let lastError: unknown;
  worker.once('online', () => traceStartup(`${name} worker online`));
  worker.on('error', (err) => {
    lastError = err;
  });
  worker.on('exit', (code) => {
    const err = new HalcyonError(
      'HALCYON_ACTOR_DIED',
      `the ${name} actor's worker exited (code ${code})${lastError ? `: ${(lastError as Error).message}` : ''}`,
      lastError === undefined ? {} : { cause: lastError },
    );
    settler.kill(err);
    if (!terminating) deathCb?.(err);
  });
  return {
    api: settler.wrap<T>((method, args) => remote[method]!(...args)),
    async terminate() {
      terminating = true;
      settler.kill(new HalcyonError('HALCYON_STOPPED', `the ${name} actor was stopped`));
      await worker.terminate();
    },
    onDeath(cb) {
      deathCb = cb;
    },
    async crash() {
      lastError = new Error('crashed on purpose (fault injection)');
      await worker.terminate();
    },
    async stall() {
      worker.postMessage({ [STALL]: new SharedArrayBuffer(4) });
    },
  };
}

/** Runs an actor object in this thread behind the same interface as a worker actor. */
export function inThreadActor<T extends object>(name: string, impl: T, deadlines: Deadlines): ActorHandle<T> {
  const settler = new Settler(name, deadlines);
  return {
    api: settler.wrap<T>(async (method, args) => (impl as Record<string, (...a: unknown[]) => unknown>)[method]!(...args)),
    async terminate() {
      settler.kill(new HalcyonError('HALCYON_STOPPED', `the ${name} actor was stopped`));
    },
    onDeath() {},
    async crash() {
      throw new HalcyonError('HALCYON_INVALID_ARGUMENT', `the ${name} actor runs in-thread: it cannot crash alone`);
    },
    async stall() {
      throw new HalcyonError('HALCYON_INVALID_ARGUMENT', `the ${name} actor runs in-thread: it cannot stall alone`);
    },
  };
}

/** In a worker entry: serves `impl` to the thread that spawned it. */
export function serveActor(impl: object): void {
  if (!parentPort) throw new HalcyonError('HALCYON_INTERNAL', 'serveActor called outside a worker thread');
  Comlink.expose(impl, nodeEndpoint(parentPort));
  // A stall (tests only): the thread waits on a lock nobody releases; it answers nothing, and terminate() still ends it.
  parentPort.on('message', (m: unknown) => {
    const lock = (m as Record<string, unknown> | null)?.[STALL];
    if (lock instanceof SharedArrayBuffer) Atomics.wait(new Int32Array(lock), 0, 0);
  });
}

/** In a worker entry: the ports main handed over at spawn. */
export function workerPorts(): Record<string, MessagePort> {
  return (workerData as { ports: Record<string, MessagePort> }).ports;
}

/** Serves `impl` as an actor on an extra port (so another actor can call it directly). */
export function serveOnPort(impl: object, port: MessagePort): void {
  Comlink.expose(impl, nodeEndpoint(port));
}

/** Calls an actor served on an extra port, with deadlines. */
export function remoteOnPort<T>(name: string, port: MessagePort, deadlines: Deadlines): Remote<T> {
  const settler = new Settler(name, deadlines);
  const remote = Comlink.wrap<Record<string, (...a: unknown[]) => Promise<unknown>>>(nodeEndpoint(port));
  port.on('close', () => settler.kill(new HalcyonError('HALCYON_ACTOR_DIED', `the ${name} actor's port closed`)));
  return settler.wrap<T>((method, args) => remote[method]!(...args));
}

/**
 * An actor hosted on another actor's worker thread, served to main on `port`: its calls have deadlines of their own
 * and reject when the port closes (the host's worker ended). It lives and dies with the host: crashing or stalling
 * it crashes or stalls the host's thread, and its death is the host's (reported once, by the host's handle).
 */
export function guestActor<T>(name: string, host: ActorHandle<unknown>, port: MessagePort, deadlines: Deadlines): ActorHandle<T> {
  const api = remoteOnPort<T>(name, port, deadlines);
  return {
    api,
    async terminate() {
      port.close();
    },
    onDeath() {},
    crash: () => host.crash(),
    stall: () => host.stall(),
  };
}

/** Calls an in-thread actor object with the same deadlines as a remote one. */
export function localRemote<T extends object>(name: string, impl: T, deadlines: Deadlines): Remote<T> {
  return inThreadActor(name, impl, deadlines).api;
}

/** A pair of linked message ports between two threads. */
export function portPair(): [MessagePort, MessagePort] {
  const { port1, port2 } = new MessageChannel();
  return [port1, port2];
}

/** Gives a raw message port a typed face. Messages are structured-cloned; pass `transfer` to move buffers. */
export function typedPort<In, Out>(port: MessagePort): Port<In, Out> {
  return {
    post: (msg, transfer) => port.postMessage(msg, transfer),
    onMessage: (cb) => port.on('message', cb as (m: unknown) => void),
    close: () => port.close(),
  };
}

/** Two linked in-thread ports (for in-thread actors): messages are delivered asynchronously, by reference. */
export function localPortPair<A, B>(): [Port<A, B>, Port<B, A>] {
  let cbA: ((m: A) => void) | null = null;
  let cbB: ((m: B) => void) | null = null;
  let open = true;
  const a: Port<A, B> = {
    post: (m) => {
      if (open) setImmediate(() => cbB?.(m));
    },
    onMessage: (cb) => {
      cbA = cb;
    },
    close: () => {
      open = false;
    },
  };
  const b: Port<B, A> = {
    post: (m) => {
      if (open) setImmediate(() => cbA?.(m));
    },
    onMessage: (cb) => {
      cbB = cb;
    },
    close: () => {
      open = false;
    },
  };
  return [a, b];
}

/** Adapts a Node message port to comlink's endpoint shape. */
function nodeEndpoint(port: MessagePort | Worker): Comlink.Endpoint {
  const listeners = new WeakMap<object, (data: unknown) => void>();
  const p = port as MessagePort;
  return {
    postMessage: (msg: unknown, transfer?: Transferable[]) => p.postMessage(msg, transfer as ArrayBuffer[]),
    addEventListener: (_type: string, handler: EventListenerOrEventListenerObject) => {
      const l = (data: unknown) => {
        const ev = { data } as MessageEvent;
        if ('handleEvent' in handler) handler.handleEvent(ev);
        else handler(ev);
      };
      p.on('message', l);
      listeners.set(handler, l);
    },
    removeEventListener: (_type: string, handler: EventListenerOrEventListenerObject) => {
      const l = listeners.get(handler);
      if (l) p.off('message', l);
      listeners.delete(handler);
    },
    start: p.start?.bind(p),
  } as Comlink.Endpoint;
}

export type { MessagePort };
