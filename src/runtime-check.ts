/** Imported first by the package entry: refuses to load on a Node.js too old for Halcyon (see runtime.ts). */
import { checkNodeVersion } from './runtime.ts';

checkNodeVersion(process.version);
