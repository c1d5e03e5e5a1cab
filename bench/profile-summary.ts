/**
 * Summarises the `.cpuprofile` files of one `node --cpu-prof --cpu-prof-dir=DIR` run, grouped by thread role:
 * main, Halcyon sync actor workers, Halcyon cache actor workers (recognised by the functions they ran). Prints
 * self time by function and by file, summed over every profile of a role, skipping idle time.
 *
 *   node --cpu-prof --cpu-prof-dir=/tmp/prof --import tsx bench/run.ts --quick --only throughput
 *   node --import tsx bench/profile-summary.ts /tmp/prof [topN]
 *
 * Under tsx every module is one line, so functions are named, not located by line.
 * @module
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

interface CallFrame {
  functionName: string;
  url: string;
}
interface ProfileNode {
  id: number;
  callFrame: CallFrame;
}
interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

const dir = process.argv[2];
const top = Number(process.argv[3] ?? 25);
if (!dir) {
  console.error('usage: node --import tsx bench/profile-summary.ts <cpu-prof-dir> [topN]');
  process.exit(2);
}

const groups = new Map<string, { files: number; fn: Map<string, number>; file: Map<string, number>; busyUs: number }>();
for (const name of readdirSync(dir).filter((f) => f.endsWith('.cpuprofile')).sort()) {
  const p = JSON.parse(readFileSync(join(dir, name), 'utf8')) as Profile;
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const selfUs = new Map<number, number>();
  p.samples.forEach((id, i) => selfUs.set(id, (selfUs.get(id) ?? 0) + (p.timeDeltas[i] ?? 0)));
  const names = new Set(p.nodes.map((n) => n.callFrame.functionName));
  const urls = p.nodes.map((n) => n.callFrame.url);
  const role = names.has('processSync') || names.has('readTimelineEvent') ? 'sync actor workers'
    : urls.some((u) => u.includes('/src/cache/')) && !urls.some((u) => u.includes('/bench/run.ts')) ? 'cache actor workers'
    : urls.some((u) => u.includes('/bench/')) ? 'main thread'
    : 'other threads';
  let g = groups.get(role);
  if (!g) groups.set(role, (g = { files: 0, fn: new Map(), file: new Map(), busyUs: 0 }));
  g.files++;
  for (const [id, us] of selfUs) {
    const cf = byId.get(id)!.callFrame;
    if (cf.functionName === '(idle)') continue;
    const file = (cf.url || '(native)').replace(/^file:\/\/.*?\/(src|bench|workers|node_modules)\//, '$1/');
    const key = `${cf.functionName || '(anonymous)'}  ${file}`;
    g.fn.set(key, (g.fn.get(key) ?? 0) + us);
    g.file.set(file, (g.file.get(file) ?? 0) + us);
    g.busyUs += us;
  }
}

const table = (m: Map<string, number>, busy: number) =>
  [...m]
    .sort((a, b) => b[1] - a[1])
    .slice(0, top)
    .map(([k, us]) => `${(us / 1000).toFixed(1).padStart(9)} ms ${((100 * us) / busy).toFixed(1).padStart(5)}%  ${k}`)
    .join('\n');
for (const [role, g] of [...groups].sort()) {
  console.log(`\n=== ${role}: ${g.files} profile(s), ${(g.busyUs / 1000).toFixed(0)} ms sampled busy (idle excluded)`);
  console.log('-- self time by function');
  console.log(table(g.fn, g.busyUs));
  console.log('-- self time by file');
  console.log(table(g.file, g.busyUs));
}
