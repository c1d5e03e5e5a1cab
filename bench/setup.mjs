// Installs the benchmark-only peer libraries into bench/node_modules (once). matrix-bot-sdk's crypto dependency
// downloads a native binary in a postinstall script that cannot run here: bench/package.json overrides it with a
// stub (bench/stubs/matrix-sdk-crypto-nodejs, every export throws) and the install runs with --ignore-scripts; the
// benchmarks use matrix-bot-sdk's unencrypted paths only. matrix-js-sdk is a devDependency of the package (the
// tests' peer client).
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';

const dir = import.meta.dirname;
if (!existsSync(join(dir, 'node_modules', 'matrix-bot-sdk', 'package.json'))) {
  console.log('bench: installing the peer libraries into bench/node_modules (npm install --ignore-scripts)');
  const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';
  // With the committed lock file, the same versions every run.
  const verb = existsSync(join(dir, 'package-lock.json')) ? 'ci' : 'install';
  execFileSync(npm, [verb, '--ignore-scripts', '--no-audit', '--no-fund'], { cwd: dir, stdio: 'inherit' });
}
