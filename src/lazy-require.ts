/**
 * Dependencies a bot may never use, loaded on first use: prom-client (metrics), htmlparser2 (HTML bodies),
 * piscina (media work), the NATS client (cluster mode), crypto-wasm and fake-indexeddb (on the main thread, which
 * runs no crypto actor by default) and undici's index when its parts cannot be loaded alone (src/undici.ts). Loaded
 * at import, they cost every bot ~110 ms and tens of MB of start-up on main whether it uses them or not.
 *
 * With `require`, not `import()`: an `import(` in the bundle makes loaders such as tsx transform the whole bundle
 * and keep its source map, ~40 MB of a bot's start-up peak RSS. Node ≥22.13 (Halcyon's minimum) requires an ES
 * module too (htmlparser2 is one) when its graph has no top-level await.
 */
import { createRequire } from 'node:module';

const requireFromHere = createRequire(import.meta.url);

/**
 * A getter of module `name`, loaded with `require` (resolved from Halcyon's own location) at the first call and
 * kept: later calls (per HTML body, per task) cost a field read, not a module-cache lookup.
 */
export function lazyModule<T>(name: string): () => T {
  let loaded: T | undefined;
  return () => (loaded ??= requireFromHere(name) as T);
}

/** Where `require(name)` would load module `name` from (its entry file's path). */
export function resolveModule(name: string): string {
  return requireFromHere.resolve(name);
}
