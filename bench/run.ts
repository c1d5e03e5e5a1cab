/**
 * The benchmark run (`npm run bench`): Halcyon side by side with matrix-bot-sdk, matrix-js-sdk and a raw floor,
 * workload by workload (bench/workloads/*.ts), each measurement repeated with the contenders alternating.
 *
 *  1. throughput  — replayed /sync bodies (1, 100, 10,000 rooms): events/s and main-thread CPU per event
 *  2. isolation   — a handler burning 500 ms CPU per event: /sync cadence and other rooms' latency
 *  3. latency     — a peer sends at a fixed rate on a real Synapse: send → handler
 *  4. coldstart   — login → ready with 1,000 joined rooms: time and peak RSS
 *  5. memory      — RSS with 10,000 rooms, bytes per room
 *  6. sends       — messages/s to Synapse with limits off; 429s and lost sends under the default rc_message
 *  7. e2ee        — decrypted events/s against matrix-js-sdk and a raw OlmMachine loop
 *  8. soak        — a reply bot at 20 msg/s on Synapse for 10 minutes: RSS over time against matrix-bot-sdk
 *
 * Writes bench/results/latest.json (everything, samples included), latest.md (tables) and latest.svg (ratios).
 * One workload failing is reported in its section; the others still run.
 *
 * Usage: node --import tsx bench/run.ts [--quick] [--rounds N] [--only LIST] [--out DIR] [--soak SECONDS]
 * One workload alone, printed: node --import tsx bench/workload.ts NAME [--quick].
 * @module
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { advantage, ratioChart } from './chart.ts';
import type { BenchContext, Contender, GoalEntry, RatioEntry, Workload, WorkloadReport } from './report.ts';
import { fmt } from './stats.ts';

const WORKLOADS = ['throughput', 'isolation', 'latency', 'coldstart', 'memory', 'sends', 'e2ee', 'soak'] as const;

const USAGE = `usage: node --import tsx bench/run.ts [options]   (npm run bench -- [options])
  --quick        a few minutes: fewer rounds and smaller inputs
  --rounds N     rounds per measurement (default: 5, or each workload's own; 2 with --quick)
  --only LIST    comma-separated subset of ${WORKLOADS.join(',')}
  --out DIR      where latest.json / latest.md / latest.svg go (default bench/results)
  --soak SECONDS how long the soak workload runs (default 600, 120 with --quick; e.g. 3600 for an hour)`;

const { values: args } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    rounds: { type: 'string' },
    only: { type: 'string' },
    out: { type: 'string' },
    soak: { type: 'string' },
    help: { type: 'boolean', default: false },
  },
});
if (args.help) {
  console.log(USAGE);
  process.exit(0);
}
const QUICK = args.quick;
const ROUNDS = args.rounds !== undefined ? Number(args.rounds) : QUICK ? 2 : 5;
if (!Number.isInteger(ROUNDS) || ROUNDS < 1) throw new Error(`--rounds must be a positive integer, not ${args.rounds}`);
const ONLY = args.only?.split(',').map((s) => s.trim());
for (const w of ONLY ?? []) if (!(WORKLOADS as readonly string[]).includes(w)) throw new Error(`unknown workload ${w} in --only; choose from ${WORKLOADS.join(', ')}`);
const SELECTED = WORKLOADS.filter((w) => !ONLY || ONLY.includes(w));
const OUT_DIR = args.out ?? join(import.meta.dirname, 'results');
const SOAK = args.soak !== undefined ? Number(args.soak) : undefined;
if (SOAK !== undefined && !(SOAK > 0)) throw new Error(`--soak must be a number of seconds, not ${args.soak}`);

// A full GC between measurements, so one contender's garbage is not collected on another's time.
setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

function gitDescribe(): string {
  try {
    const head = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: import.meta.dirname, encoding: 'utf8' }).trim();
    const dirty = execFileSync('git', ['status', '--porcelain', '--untracked-files=no'], { cwd: import.meta.dirname, encoding: 'utf8' }).trim();
    return dirty ? `${head} (+ uncommitted changes)` : head;
  } catch {
    return 'unknown';
  }
}

const cpus = os.cpus();
const meta = {
  date: new Date().toISOString(),
  cpuModel: cpus[0]?.model ?? 'unknown',
  cores: cpus.length,
  node: process.version,
  os: `${os.type()} ${os.release()} ${os.arch()}`,
  totalMemGB: os.totalmem() / 2 ** 30,
  /** 1/5/15-minute load averages when the run started (others' processes on a shared machine show up here). */
  loadavgStart: os.loadavg(),
  git: gitDescribe(),
  mode: QUICK ? 'quick' : 'default',
  rounds: ROUNDS,
  workloads: SELECTED,
};

const progress = (line: string): void => void process.stdout.write(line + '\n');
const ctx: BenchContext = { quick: QUICK, rounds: ROUNDS, gc, progress, ...(SOAK !== undefined ? { soakSeconds: SOAK } : {}) };

const t0 = performance.now();
progress(
  `Halcyon bench (${meta.mode}): ${meta.cpuModel}, ${meta.cores} cores, Node ${meta.node}; load average ${meta.loadavgStart.map((x) => fmt(x, 2)).join(' / ')}; ` +
    `${ROUNDS} rounds; workloads: ${SELECTED.join(', ')}`,
);
const reports: Array<WorkloadReport & { seconds: number; error?: string }> = [];
for (const [i, id] of SELECTED.entries()) {
  const w0 = performance.now();
  progress(`\n[${i + 1}/${SELECTED.length}] ${id}`);
  try {
    const { run } = (await import(`./workloads/${id}.ts`)) as { run: Workload };
    const r = await run(ctx);
    const seconds = (performance.now() - w0) / 1000;
    reports.push({ ...r, seconds });
    const worst = r.goals.filter((g) => g.met === false).length;
    progress(`[${i + 1}/${SELECTED.length}] ${id} done in ${fmt(seconds)} s; goals met ${r.goals.filter((g) => g.met).length}/${r.goals.length}${worst ? `, missed ${worst}` : ''}`);
  } catch (err) {
    const seconds = (performance.now() - w0) / 1000;
    const message = (err as Error).stack ?? String(err);
    progress(`[${i + 1}/${SELECTED.length}] ${id} FAILED after ${fmt(seconds)} s: ${message}`);
    reports.push({ id, title: id, ratios: [], goals: [], markdown: ['```', message, '```'], data: null, seconds, error: message });
  }
  gc();
}
const wallS = (performance.now() - t0) / 1000;

// ---------------------------------------------------------------- report

const VERSUS: Contender[] = ['floor', 'raw', 'matrix-bot-sdk', 'matrix-js-sdk'];
const VERSUS_LABEL: Record<Contender, string> = { floor: 'floor', raw: 'raw loop', 'matrix-bot-sdk': 'matrix-bot-sdk', 'matrix-js-sdk': 'matrix-js-sdk', halcyon: 'Halcyon' };

const ratioCell = (r: RatioEntry | undefined): string => {
  if (!r || !Number.isFinite(r.ofMedians)) return '–';
  const good = advantage(r) >= 1;
  const range = r.perRound.n > 1 ? ` (${fmt(r.perRound.min, 2)}–${fmt(r.perRound.max, 2)})` : '';
  return `${good ? '' : '⚠ '}**×${fmt(r.ofMedians, r.ofMedians >= 10 ? 1 : 2)}**${range}`;
};

function markdown(): string {
  const L: string[] = [];
  L.push(`# Halcyon benchmark (${meta.mode} run)`, '');
  L.push('| | |', '| --- | --- |');
  L.push(`| date | ${meta.date} |`);
  L.push(`| machine | ${meta.cpuModel}, ${meta.cores} cores, ${fmt(meta.totalMemGB, 1)} GiB RAM, ${meta.os} |`);
  L.push(`| Node | ${meta.node} |`);
  L.push(`| commit | ${meta.git} |`);
  L.push(`| rounds | ${ROUNDS} per measurement unless a section says otherwise; contenders alternate which goes first |`);
  L.push(`| wall time | ${fmt(wallS)} s (${reports.map((r) => `${r.id} ${fmt(r.seconds)} s`).join(', ')}) |`);
  L.push(
    `| load average (1/5/15 min) | at start ${meta.loadavgStart.map((x) => fmt(x, 2)).join(' / ')}; at end ${os.loadavg().map((x) => fmt(x, 2)).join(' / ')} ` +
      `(above ~1 before the run means other processes competed for the ${meta.cores} cores) |`,
    '',
  );
  L.push('## Summary: Halcyon ÷ each contender', '');
  L.push(
    'Ratio of medians over the rounds, with the range of the per-round ratios. For rates (events/s, messages/s) higher is ' +
      'better for Halcyon; for times, CPU and memory lower is better; ⚠ marks a ratio where Halcyon is behind. ' +
      'The floor / raw loop is the least work any client must do (one thread, no state); matrix-bot-sdk 0.8 and ' +
      'matrix-js-sdk 43 are what a bot author would pick instead.',
    '',
  );
  L.push(`| workload | metric | ${VERSUS.filter((v) => reports.some((r) => r.ratios.some((x) => x.versus === v))).map((v) => `÷ ${VERSUS_LABEL[v]}`).join(' | ')} |`);
  const cols = VERSUS.filter((v) => reports.some((r) => r.ratios.some((x) => x.versus === v)));
  L.push(`| --- | --- | ${cols.map(() => '---:').join(' | ')} |`);
  for (const r of reports) {
    const metrics = [...new Set(r.ratios.map((x) => x.metric))];
    for (const m of metrics) {
      const better = r.ratios.find((x) => x.metric === m)!.better;
      L.push(`| ${r.id} | ${m} (${better} is better) | ${cols.map((v) => ratioCell(r.ratios.find((x) => x.metric === m && x.versus === v))).join(' | ')} |`);
    }
  }
  L.push('', '![ratios](latest.svg)', '');
  const goals: Array<GoalEntry & { workload: string }> = reports.flatMap((r) => r.goals.map((g) => ({ ...g, workload: r.id })));
  if (goals.length) {
    L.push('## Goals', '', '| workload | goal | measured | |', '| --- | --- | --- | --- |');
    for (const g of goals) L.push(`| ${g.workload} | ${g.goal} | ${g.actual} | ${g.met === true ? '✅ met' : g.met === false ? '❌ missed' : '– not measured'} |`);
    L.push('');
  }
  for (const r of reports) {
    L.push(`## ${r.title}`, '');
    if (r.error) L.push('**This workload failed:**', '');
    L.push(...r.markdown, '');
  }
  return L.join('\n');
}

mkdirSync(OUT_DIR, { recursive: true });
const md = markdown();
const allRatios = reports.flatMap((r) => r.ratios);
writeFileSync(join(OUT_DIR, 'latest.json'), JSON.stringify({ meta: { ...meta, wallSeconds: wallS, loadavgEnd: os.loadavg() }, workloads: reports }, null, 2) + '\n');
writeFileSync(join(OUT_DIR, 'latest.md'), md + '\n');
writeFileSync(join(OUT_DIR, 'latest.svg'), ratioChart(allRatios, `${meta.mode} run, ${meta.date.slice(0, 10)}, ${meta.cpuModel} × ${meta.cores} cores, Node ${meta.node}, commit ${meta.git}`));
progress(`\n${md}\nwritten: ${join(OUT_DIR, 'latest.json')}, latest.md, latest.svg (${fmt(wallS)} s)`);
process.exit(reports.some((r) => r.error) ? 1 : 0);
