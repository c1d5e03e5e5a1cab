/**
 * Every export is documented: TypeDoc (the generator of `npm run docs`) validates the TSDoc of the package's
 * public API, and any undocumented export, member or call signature, or broken link, fails it.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { test } from 'node:test';

const root = join(import.meta.dirname, '..', '..');

test('npm run docs would succeed: no undocumented export and no broken link in the API reference', () => {
  const r = spawnSync(process.execPath, [join(root, 'node_modules', 'typedoc', 'bin', 'typedoc'), '--emit', 'none'], { cwd: root, encoding: 'utf8', env: { ...process.env, NO_COLOR: '1' } });
  assert.equal(r.status, 0, `typedoc found problems:\n${r.stdout}${r.stderr}`);
});
