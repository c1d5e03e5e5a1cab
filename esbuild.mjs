// Builds the package: the library entry, one bundle per worker (they must sit in dist/workers/ beside it:
// src/actors.ts finds them relative to the library bundle), the CLI, and the public type declarations.
import { build } from 'esbuild';
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const pkg = JSON.parse(readFileSync(new URL('./package.json', import.meta.url), 'utf8'));
const common = {
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node22',
  sourcemap: true,
  // Runtime dependencies stay imports: npm installs them once for every bundle.
  external: Object.keys(pkg.dependencies ?? {}),
  logLevel: 'warning',
};

rmSync('dist', { recursive: true, force: true });
await Promise.all([
  build({ ...common, entryPoints: { index: 'src/index.ts' }, outdir: 'dist' }),
  build({ ...common, entryPoints: { sync: 'workers/sync.ts', crypto: 'workers/crypto.ts', media: 'workers/media.ts' }, outdir: 'dist/workers' }),
  build({ ...common, entryPoints: { cli: 'workers/cli.ts' }, outdir: 'dist', banner: { js: '#!/usr/bin/env node' } }),
]);
// require() of the package gets one clear line instead of a loader error: it is an ES module.
writeFileSync(
  'dist/require.cjs',
  `const e = new Error('halcyon-matrix is an ES module: load it with import (or await import() from CommonJS), not require()');\ne.code = 'HALCYON_UNSUPPORTED_RUNTIME';\ne.stack = 'Error [HALCYON_UNSUPPORTED_RUNTIME]: ' + e.message;\nthrow e;\n`,
);
execFileSync(process.execPath, ['node_modules/typescript/bin/tsc', '-p', 'tsconfig.build.json'], { stdio: 'inherit' });
// Sources import './x.ts' (run directly by tsx); published declarations must say './x.js'.
for (const f of readdirSync('dist/types', { recursive: true })) {
  if (!f.endsWith('.d.ts')) continue;
  const p = join('dist/types', f);
  writeFileSync(p, readFileSync(p, 'utf8').replace(/(from\s+'\.{1,2}\/[^']+)\.ts'/g, "$1.js'"));
}
console.log('built dist/');
