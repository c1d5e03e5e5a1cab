/**
 * Where the process's memory is, per thread. Each actor measures its own thread ({@link threadMemory}: a worker
 * is an isolate of its own, with a heap `process.memoryUsage()` on main does not count) and answers `memory()`;
 * {@link gatherMemory} asks every actor and adds main's numbers and the process's RSS.
 *
 * What RSS holds beyond the figures here: each thread's V8 code and metadata, Node's per-thread buffers, SQLite's
 * page caches (bounded: {@link ActorMemory.sqliteCacheLimit}) and what the C allocator keeps of memory freed by
 * native code.
 */
import { getHeapSpaceStatistics, getHeapStatistics } from 'node:v8';
import { collectGarbage, compactHeap, isWorkerThread } from './actors.ts';
import type { ActorMemory } from './protocol.ts';
import { sqliteCacheLimit } from './store.ts';

/** A process's memory by thread, in bytes. */
export interface MemoryReport {
  /** Resident set of the whole process (every thread, wasm, native allocations). */
  rss: number;
  /** The main thread (the user's handlers, the dispatcher, the outbox). */
  main: ActorMemory;
  /**
   * The sync worker's thread, which hosts the cache actor too (room state); null when the actor is not running or
   * did not answer in time (so for crypto).
   */
  sync: ActorMemory | null;
  /** The crypto actor's thread, crypto-wasm's linear memory included; null too with encryption off. */
  crypto: ActorMemory | null;
}

/** Anything that answers `memory()`: an actor's API (remote or in-thread). */
export interface MemorySource {
  memory(collect?: boolean): Promise<ActorMemory>;
}

/** V8's heap spaces that make up the young generation (the rest is the old generation). */
const YOUNG_SPACES: ReadonlySet<string> = new Set(['new_space', 'new_large_object_space']);

/**
 * This thread's memory. `wasmBytes` is the actor's wasm memory (only it knows its instance). With `collect`,
 * a worker runs a full garbage collection first, so `heapUsed` is what is live (main never collects here: that is
 * the application's call).
 */
export function threadMemory(opts: { wasmBytes?: number | null; collect?: boolean } = {}): ActorMemory {
  if (opts.collect) collectGarbage();
  const heap = getHeapStatistics();
  const usage = process.memoryUsage();
  let young = 0;
  for (const s of getHeapSpaceStatistics()) if (YOUNG_SPACES.has(s.space_name)) young += s.space_size;
  return {
    thread: isWorkerThread() ? 'worker' : 'main',
    heapUsed: heap.used_heap_size,
    heapTotal: heap.total_heap_size,
    heapLimit: heap.heap_size_limit,
    youngGeneration: young,
    external: usage.external,
    arrayBuffers: usage.arrayBuffers,
    wasmBytes: opts.wasmBytes ?? null,
    sqliteCacheLimit: sqliteCacheLimit(),
  };
}

/** How often a worker looks at its heap to see whether it holds much more than it keeps live. */
export const HEAP_TRIM_CHECK_MS = 60_000;
/** Slack above the old generation's live bytes that a worker's heap may keep before a trim: the larger of the two. */
const TRIM_SLACK = { bytes: 8 * 2 ** 20, fraction: 0.5 } as const;

/** A thread's old generation (every heap space but the young one): what it has committed and what it uses. */
export interface OldGeneration {
  committed: number;
  used: number;
}

/** This thread's old generation, from V8's per-space statistics. */
export function oldGeneration(): OldGeneration {
  let committed = 0;
  let used = 0;
  for (const s of getHeapSpaceStatistics()) {
    if (YOUNG_SPACES.has(s.space_name)) continue;
    committed += s.space_size;
    used += s.space_used_size;
  }
  return { committed, used };
}

/**
 * Whether a worker's heap should be trimmed: its old generation has committed more than the live bytes the last
 * trim left (`liveAfterTrim`) plus the slack ({@link TRIM_SLACK}). The young generation is left out: it is capped
 * by the worker's `resourceLimits` and refills within seconds.
 */
export function shouldTrimHeap(old: OldGeneration, liveAfterTrim: number): boolean {
  return old.committed > liveAfterTrim + Math.max(TRIM_SLACK.bytes, liveAfterTrim * TRIM_SLACK.fraction);
}

/** A trim's pause (ms) above which the next check waits twice as long (see {@link trimHeapPeriodically}). */
export const TRIM_PAUSE_BUDGET_MS = 50;
/** The longest wait between two checks once trims have been slow. */
const TRIM_CHECK_MAX_MS = 3_600_000;

/** What one trim did: how long it paused its thread and when the next check comes. */
export interface TrimInfo {
  pauseMs: number;
  nextCheckMs: number;
}

/** Options of {@link trimHeapPeriodically}. */
export interface HeapTrimOptions {
  /** Time between two checks, ms (default {@link HEAP_TRIM_CHECK_MS}). */
  everyMs?: number;
  /** A trim pausing the thread longer than this, ms, doubles the time to the next check (default {@link TRIM_PAUSE_BUDGET_MS}). */
  pauseBudgetMs?: number;
  /** The collection a trim runs (see {@link compactHeap}; default `last-resort`). */
  flavor?: 'compacting' | 'last-resort';
  /**
   * Live bytes to start from, as if a trim had left them (default 0: the first check trims unless the heap is tiny,
   * for a worker whose start-up left garbage behind).
   */
  initialLive?: number;
  /** Hears of each trim (tests, debug logs). */
  onTrim?: (before: OldGeneration, after: OldGeneration, info: TrimInfo) => void;
}

/**
 * The main thread's trim: one `compacting` full collection (its pause is what handlers wait for: a `last-resort`
 * one took ~300 ms on a busy machine, twice a compacting one; a plain full collection gave nothing back), counted
 * from the old generation in use when the client starts (its start-up was just collected by V8; a first trim then
 * freed 1 MiB).
 */
export const MAIN_TRIM: Readonly<Pick<HeapTrimOptions, 'flavor'>> = { flavor: 'compacting' };

/**
 * Every `everyMs`, a full collection ({@link compactHeap}, memory-reducing by default) of this thread's heap when
 * {@link shouldTrimHeap} says so. Why: under steady traffic V8 lets an old generation grow to a limit of up to
 * several times its live data before collecting it, and gives the pages back only when allocation nearly stops,
 * which a bot under traffic never does. The sync and crypto workers' committed heaps crept that way for most of an
 * hour (sync 17 → 25 MiB, crypto 23 → 40 over the soak) while their live data stayed flat, and so did main's
 * (31 → 50 MiB in 25 minutes) once the workers were trimmed. Each actor's worker runs it; the main thread runs it
 * while a Client runs with `trimMainHeap` (the default), with {@link MAIN_TRIM}. A trim is one pause of 30–300 ms
 * on a 20–50 MiB heap (compacting to last-resort, idle to busy machine), at most once per check; one that pauses
 * longer than `pauseBudgetMs` (an application with a big heap of its own on main) doubles the time to the next
 * check, up to an hour. The timer does not keep the thread alive. Returns a function
 * that stops it.
 */
export function trimHeapPeriodically(opts: HeapTrimOptions = {}): () => void {
  let everyMs = opts.everyMs ?? HEAP_TRIM_CHECK_MS;
  const budget = opts.pauseBudgetMs ?? TRIM_PAUSE_BUDGET_MS;
  let liveAfterTrim = opts.initialLive ?? 0;
  let stopped = false;
  let timer: NodeJS.Timeout;
  const arm = () => {
    timer = setTimeout(check, everyMs);
    timer.unref();
  };
  const check = () => {
    const old = oldGeneration();
    if (shouldTrimHeap(old, liveAfterTrim)) {
      const t0 = performance.now();
      compactHeap(opts.flavor);
      const pauseMs = performance.now() - t0;
      const after = oldGeneration();
      liveAfterTrim = after.used;
      if (pauseMs > budget) everyMs = Math.min(everyMs * 2, TRIM_CHECK_MAX_MS);
      opts.onTrim?.(old, after, { pauseMs, nextCheckMs: everyMs });
    }
    if (!stopped) arm();
  };
  arm();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

let mainTrimHolders = 0;
let stopMainTrim: (() => void) | null = null;

/**
 * Keeps the main thread's heap trim ({@link trimHeapPeriodically}) running while at least one holder holds it: each
 * running Client with `trimMainHeap` holds it once (several clients in one process share one main heap, so one
 * trim). Returns the release.
 */
export function holdMainHeapTrim(onTrim?: HeapTrimOptions['onTrim']): () => void {
  if (mainTrimHolders++ === 0) stopMainTrim = trimHeapPeriodically({ ...MAIN_TRIM, initialLive: oldGeneration().used, onTrim });
  let released = false;
  return () => {
    if (released) return;
    released = true;
    if (--mainTrimHolders === 0) {
      stopMainTrim?.();
      stopMainTrim = null;
    }
  };
}

/**
 * The memory of main and of every actor given (null or undefined when not running): what a client reports from
 * `health()` and its metrics. Never throws: an actor that fails or takes longer than `timeoutMs` (default 5 s) is
 * reported as null. `collect` has every worker collect its garbage first (tests; a pause on each worker).
 */
export async function gatherMemory(
  actors: { sync?: MemorySource | null; crypto?: MemorySource | null },
  opts: { collect?: boolean; timeoutMs?: number } = {},
): Promise<MemoryReport> {
  const collect = opts.collect === true;
  const ask = async (a: MemorySource | null | undefined): Promise<ActorMemory | null> => {
    if (!a) return null;
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<null>((resolve) => (timer = setTimeout(() => resolve(null), opts.timeoutMs ?? 5_000).unref()));
    try {
      return await Promise.race([a.memory(collect).catch(() => null), late]);
    } finally {
      clearTimeout(timer);
    }
  };
  const [sync, crypto] = await Promise.all([ask(actors.sync), ask(actors.crypto)]);
  return { rss: process.memoryUsage.rss(), main: threadMemory(), sync, crypto };
}

/**
 * The linear memory of the wasm instance `firstUse` creates (synchronously), or null if it creates none: a binding
 * that does not export its instance (crypto-wasm) is watched through `WebAssembly.Instance` while it instantiates.
 * If this thread had used the binding already (an inline actor beside other crypto code), nothing is created and
 * the size stays unknown.
 */
export function watchWasmMemory(firstUse: () => void): WebAssembly.Memory | null {
  let found: WebAssembly.Memory | null = null;
  const Original = WebAssembly.Instance;
  WebAssembly.Instance = new Proxy(Original, {
    construct(target, args: ConstructorParameters<typeof WebAssembly.Instance>) {
      const instance = new target(...args);
      const memory = instance.exports.memory;
      if (memory instanceof WebAssembly.Memory) found = memory;
      return instance;
    },
  });
  try {
    firstUse();
  } finally {
    WebAssembly.Instance = Original;
  }
  return found;
}

/**
 * Frees wasm-bindgen objects their user made or was handed and is done with. The garbage collector would free them
 * too, but only when it runs, and meanwhile their allocations keep a wasm linear memory (which never shrinks) larger
 * than it needs to be. Never call it on an object a wasm call took by value (already freed).
 */
export function free(...objects: Array<{ free(): void } | null | undefined>): void {
  for (const o of objects) o?.free();
}
