/**
 * Where the worker entries are: `workers/<name>.ts` when running from source under tsx, `dist/workers/<name>.js`
 * beside the built bundle. One resolver for the actors' workers (actors.ts) and the task pool's (pool.ts).
 */

/** The URL of worker entry `name` (a URL is taken as it is: tests start their own entries). */
export function workerUrl(name: string | URL): URL {
  if (name instanceof URL) return name;
  return import.meta.url.endsWith('.ts') ? new URL(`../workers/${name}.ts`, import.meta.url) : new URL(`./workers/${name}.js`, import.meta.url);
}
