/**
 * The runtime check, imported first by the package entry: on a Node.js older than Halcyon needs, importing the
 * package fails with one coded line naming the version needed, instead of `ERR_UNKNOWN_BUILTIN_MODULE:
 * node:sqlite` from deep inside (npm only warns about `engines`). Nothing else may load `node:sqlite` before this
 * runs: src/store.ts takes it with `process.getBuiltinModule`, not a static import, which Node would resolve
 * before any code of the package runs.
 */
import { HalcyonError } from './errors.ts';

/** The oldest Node.js Halcyon runs on (`node:sqlite` without a flag). */
export const MIN_NODE = [22, 13] as const;

/** Why Halcyon cannot run on Node.js `version` (e.g. `v20.20.2`), or null when it can. */
export function nodeVersionProblem(version: string): string | null {
  const [major = 0, minor = 0] = version.replace(/^v/, '').split('.').map(Number);
  if (major > MIN_NODE[0] || (major === MIN_NODE[0] && minor >= MIN_NODE[1])) return null;
  return `halcyon-matrix needs Node.js >= ${MIN_NODE.join('.')} (for its built-in node:sqlite); this is Node.js ${version}`;
}

/** Throws `HALCYON_UNSUPPORTED_RUNTIME` if `version` is older than {@link MIN_NODE}. */
export function checkNodeVersion(version: string): void {
  const problem = nodeVersionProblem(version);
  if (problem === null) return;
  const err = new HalcyonError('HALCYON_UNSUPPORTED_RUNTIME', problem);
  // One line wherever it is printed: where it was thrown says nothing more.
  err.stack = `${err.name} [${err.code}]: ${err.message}`;
  throw err;
}
