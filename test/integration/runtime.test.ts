/**
 * What a user on the wrong runtime sees, from the built package: on a Node.js older than 22.13 (the machine's own
 * Node, outside node_modules) importing it and running the CLI fail with one coded line naming the version
 * needed; require() of it says it is an ES module.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { test } from 'node:test';
import { nodeVersionProblem } from '../../src/runtime.ts';

const root = join(import.meta.dirname, '..', '..');

/** The first `node` on PATH that is not the npm-installed one (the system's). */
function systemNode(): string | null {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (dir.includes('node_modules')) continue;
    const p = join(dir, 'node');
    if (existsSync(p)) return p;
  }
  for (const p of ['/usr/bin/node', '/usr/local/bin/node']) if (existsSync(p)) return p;
  return null;
}

test('nodeVersionProblem: 22.13 and later run; anything older is named with the version needed', () => {
  for (const ok of ['v22.13.0', 'v22.20.1', 'v23.0.0', 'v24.21.0', 'v30.1.2']) assert.equal(nodeVersionProblem(ok), null, ok);
  for (const old of ['v20.20.2', 'v22.12.9', 'v18.0.0']) assert.match(nodeVersionProblem(old)!, new RegExp(`needs Node.js >= 22.13 .*this is Node.js ${old.replace(/\./g, '\\.')}`));
});

test("the machine's own Node: importing the package and running the CLI fail with one coded line, or work on a recent enough Node", () => {
  const node = systemNode();
  assert.ok(node, 'a node binary outside node_modules (the system Node)');
  const version = execFileSync(node, ['--version'], { encoding: 'utf8' }).trim();
  const imported = spawnSync(node, ['--input-type=module', '-e', `import(${JSON.stringify(join(root, 'dist', 'index.js'))}).then(() => console.log('loaded'), (e) => console.log(e.code + ': ' + e.message))`], { encoding: 'utf8' });
  const cli = spawnSync(node, [join(root, 'dist', 'cli.js'), '--help'], { encoding: 'utf8' });
  if (nodeVersionProblem(version) === null) {
    assert.equal(imported.stdout.trim(), 'loaded');
    assert.equal(cli.status, 0);
    return;
  }
  assert.equal(imported.stdout.trim(), `HALCYON_UNSUPPORTED_RUNTIME: halcyon-matrix needs Node.js >= 22.13 (for its built-in node:sqlite); this is Node.js ${version}`);
  assert.equal(cli.status, 1);
  assert.equal(cli.stderr, `halcyon: HALCYON_UNSUPPORTED_RUNTIME: halcyon-matrix needs Node.js >= 22.13 (for its built-in node:sqlite); this is Node.js ${version}\n`);
});

test('require() of the package says it is an ES module, with the code', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'halcyon-require-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  mkdirSync(join(dir, 'node_modules'));
  symlinkSync(root, join(dir, 'node_modules', 'halcyon-matrix'));
  const r = spawnSync(process.execPath, ['-e', "try { require('halcyon-matrix') } catch (e) { console.log(e.code + ': ' + e.message) }"], { cwd: dir, encoding: 'utf8' });
  assert.equal(r.stdout.trim(), 'HALCYON_UNSUPPORTED_RUNTIME: halcyon-matrix is an ES module: load it with import (or await import() from CommonJS), not require()');
});
