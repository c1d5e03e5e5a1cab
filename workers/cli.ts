/** Bin entry of the `halcyon` command (bundled to dist/cli.js). */
import { cli } from '../src/cli.ts';
import { nodeVersionProblem } from '../src/runtime.ts';

const problem = nodeVersionProblem(process.version);
if (problem !== null) {
  process.stderr.write(`halcyon: HALCYON_UNSUPPORTED_RUNTIME: ${problem}\n`);
  process.exit(1);
}
cli();
