/** Bin entry of the `halcyon` command (bundled to dist/cli.js). */
import { cli } from '../src/cli.ts';

cli();
