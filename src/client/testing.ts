/**
 * Fault-injection hooks for tests, kept off the public `Client` (not exported from the package entry): tests
 * import them from this module.
 */
import { HalcyonError } from '../errors.ts';
import type { MemoryReport } from '../memory.ts';
import { cores } from './core.ts';

/** Crashes one of a running client's actor workers as a fault would (its supervisor restarts the set). */
export async function crashActorForTests(client: object, name: 'sync' | 'cache' | 'crypto'): Promise<void> {
  const core = cores.get(client);
  if (!core) throw new HalcyonError('HALCYON_INVALID_ARGUMENT', 'crashActorForTests: not a Client');
  await core.actors.crash(name);
}

/** Makes one actor stop answering while its worker stays alive, as a stuck actor would (watchdog tests). */
export async function stallActorForTests(client: object, name: 'sync' | 'cache' | 'crypto'): Promise<void> {
  const core = cores.get(client);
  if (!core) throw new HalcyonError('HALCYON_INVALID_ARGUMENT', 'stallActorForTests: not a Client');
  await core.actors.stall(name);
}

/**
 * Memory by thread, as `health()` reports it but with a generous deadline, by default after every worker collected
 * its garbage: what is live, not what waits for a collection (tests of retention; a pause on each worker).
 */
export async function memoryForTests(client: object, opts: { collect?: boolean; timeoutMs?: number } = {}): Promise<MemoryReport> {
  const core = cores.get(client);
  if (!core) throw new HalcyonError('HALCYON_INVALID_ARGUMENT', 'memoryForTests: not a Client');
  return core.memory({ collect: opts.collect ?? true, timeoutMs: opts.timeoutMs ?? 30_000 });
}
