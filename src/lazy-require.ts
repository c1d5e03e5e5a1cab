/**
 * Dependencies a bot may never use, loaded on first use: prom-client (metrics), htmlparser2 (HTML bodies),
 * piscina (media work) and the NATS client (cluster mode). Loaded at import, they cost every bot ~110 ms and tens
 * of MB of start-up on main whether it uses them or not.
 *
 * With `require`, not `import()`: an `import(` in the bundle makes loaders such as tsx transform the whole bundle
 * and keep its source map, ~40 MB of a bot's start-up peak RSS. Node ≥22.13 (Halcyon's minimum) requires an ES
 * module too (htmlparser2 is one) when its graph has no top-level await.
 */
import { createRequire } from 'node:module';

const requireFromHere = createRequire(import.meta.url);

/** Loads `name` with `require` (resolved from Halcyon's own location); Node's module cache makes later calls cheap. */
export function requireLazily<T>(name: string): T {
  return requireFromHere(name) as T;
}
