/**
 * The library's source stays readable in one sitting: no file in src/ or workers/ over 600 lines, no function
 * over 80 (the developer guide's limits). A file or function that outgrows them is split by job, not exempted.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { test } from 'node:test';
import ts from 'typescript';

const root = join(import.meta.dirname, '..', '..');
const MAX_FILE_LINES = 600;
const MAX_FUNCTION_LINES = 80;

function sources(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) return sources(path);
    return path.endsWith('.ts') ? [path] : [];
  });
}

/** Every function-like node with a body longer than the limit, as "file:line name (N lines)". */
function longFunctions(path: string, text: string): string[] {
  const file = ts.createSourceFile(path, text, ts.ScriptTarget.Latest, true);
  const found: string[] = [];
  const visit = (node: ts.Node): void => {
    if (ts.isFunctionLike(node) && 'body' in node && node.body) {
      const start = file.getLineAndCharacterOfPosition(node.getStart()).line;
      const lines = file.getLineAndCharacterOfPosition(node.end).line - start + 1;
      const name = 'name' in node && node.name ? (node.name as ts.Node).getText(file) : '(anonymous)';
      if (lines > MAX_FUNCTION_LINES) found.push(`${relative(root, path)}:${start + 1} ${name} (${lines} lines)`);
    }
    ts.forEachChild(node, visit);
  };
  visit(file);
  return found;
}

test(`files in src/ and workers/ are at most ${MAX_FILE_LINES} lines, functions at most ${MAX_FUNCTION_LINES}`, () => {
  const files = [...sources(join(root, 'src')), ...sources(join(root, 'workers'))];
  assert.ok(files.length > 20, 'the walk found the sources');
  const long: string[] = [];
  const fns: string[] = [];
  for (const path of files) {
    const text = readFileSync(path, 'utf8');
    const lines = text.split('\n').length;
    if (lines > MAX_FILE_LINES) long.push(`${relative(root, path)} (${lines} lines)`);
    fns.push(...longFunctions(path, text));
  }
  assert.deepEqual(long, [], 'files over the limit');
  assert.deepEqual(fns, [], 'functions over the limit');
});
