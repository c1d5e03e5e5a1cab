/**
 * The benchmark run (`npm run bench`): Halcyon side by side with matrix-bot-sdk, matrix-js-sdk and a raw floor,
 * workload by workload (bench/workloads/*.ts), each measurement repeated with the contenders alternating.
 *
 *  1. throughput  — replayed /sync bodies (1, 100, 10,000 rooms): events/s, main-thread and all-threads CPU per event
 *  2. isolation   — a handler burning 500 ms CPU per event: /sync cadence and other rooms' latency
 *  3. latency     — a peer sends at a fixed rate on a real Synapse: send → handler
 *  4. coldstart   — login → ready with 1,000 joined rooms: time and peak RSS
 *  5. memory      — RSS with 10,000 rooms, bytes per room
 *  6. sends       — messages/s to Synapse with limits off; 429s and lost sends under the default rc_message
 *  7. e2ee        — decrypted events/s against matrix-js-sdk and a raw OlmMachine loop (alone, in its own process)
 *  8. soak        — a reply bot at 20 msg/s on Synapse for 10 minutes: RSS over time against matrix-bot-sdk
 *  9. cluster     — workers sharing one bot's rooms on Synapse: events/s of one, two and three workers
 *
 * The default run is the seven short workloads (~15 min on an idle 2-core machine); soak and cluster take
 * 20 minutes and more, so they run only when asked: `--only soak,cluster`, or `--all` for all nine. Contenders
 * no goal is decided against run fewer rounds (`--side-rounds`, BenchContext.sideRounds).
 *
 * Writes bench/results/latest.json (everything, samples included), latest.md (tables) and latest.svg (ratios), and
 * the same three files under bench/results/runs/<date>-<commit>/ (results.json, results.md, ratios.svg), so every
 * run's figures stay on record. A run is "published" only when it ran at least the seven short workloads, with the
 * default settings, on a clean commit; the report says why not otherwise, and which workloads it left out and how
 * to run them. One workload failing is reported in its section; the others still run.
 *
 * Usage: node --import tsx bench/run.ts [--quick] [--rounds N] [--side-rounds N] [--only LIST | --all] [--out DIR] [--soak SECONDS]
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
import { DEFAULT_SIDE_ROUNDS, GOAL_RULE, verdictOf, type BenchContext, type Contender, type GoalEntry, type RatioEntry, type Verdict, type Workload, type WorkloadReport } from './report.ts';
import { fmt, machineAndOwnCpuMs } from './stats.ts';

const WORKLOADS = ['throughput', 'isolation', 'latency', 'coldstart', 'memory', 'sends', 'e2ee', 'soak', 'cluster'] as const;
/** The long workloads (soak: 2 × 10 min; cluster: several minutes on Synapses of its own): only with `--only` or `--all`. */
const LONG: ReadonlyArray<(typeof WORKLOADS)[number]> = ['soak', 'cluster'];
/** What a default run runs. */
const SHORT = WORKLOADS.filter((w) => !LONG.includes(w));

const USAGE = `usage: node --import tsx bench/run.ts [options]   (npm run bench -- [options])
  --quick        a few minutes: fewer rounds and smaller inputs
  --rounds N     rounds per measurement (default: 5, or each workload's own; 2 with --quick)
  --side-rounds N  rounds of the contenders no goal is decided against (default ${DEFAULT_SIDE_ROUNDS}, at most --rounds)
  --only LIST    comma-separated subset of ${WORKLOADS.join(',')}
                 (default: the short ones, ${SHORT.join(', ')}, ~15 min)
  --all          all of them, ${LONG.join(' and ')} too (~20 min and more on top)
  --out DIR      where latest.json / latest.md / latest.svg and runs/<date>-<commit>/ go (default bench/results)
  --soak SECONDS how long the soak workload runs (default 600, 120 with --quick; e.g. 3600 for an hour)
  --soak-only C  the soak workload runs one contender alone: halcyon or matrix-bot-sdk (half the time, no ratio)`;

const { values: args } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    rounds: { type: 'string' },
    only: { type: 'string' },
    all: { type: 'boolean', default: false },
    'side-rounds': { type: 'string' },
    out: { type: 'string' },
    soak: { type: 'string' },
    'soak-only': { type: 'string' },
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
const SIDE_ROUNDS = Math.min(ROUNDS, args['side-rounds'] !== undefined ? Number(args['side-rounds']) : DEFAULT_SIDE_ROUNDS);
if (!Number.isInteger(SIDE_ROUNDS) || SIDE_ROUNDS < 1) throw new Error(`--side-rounds must be a positive integer, not ${args['side-rounds']}`);
const ONLY = args.only?.split(',').map((s) => s.trim());
if (ONLY && args.all) throw new Error('--only and --all do not go together');
for (const w of ONLY ?? []) if (!(WORKLOADS as readonly string[]).includes(w)) throw new Error(`unknown workload ${w} in --only; choose from ${WORKLOADS.join(', ')}`);
const SELECTED = WORKLOADS.filter((w) => (ONLY ? ONLY.includes(w) : args.all || SHORT.includes(w)));
/** The workloads this run left out, for the report's header. */
const LEFT_OUT = WORKLOADS.filter((w) => !SELECTED.includes(w));
const OUT_DIR = args.out ?? join(import.meta.dirname, 'results');
const SOAK = args.soak !== undefined ? Number(args.soak) : undefined;
if (SOAK !== undefined && !(SOAK > 0)) throw new Error(`--soak must be a number of seconds, not ${args.soak}`);

// A full GC between measurements, so one contender's garbage is not collected on another's time.
setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

/**
 * The commit the run measures and the files that differ from it (untracked ones included: a new source file is
 * built too). The bench's own outputs (bench/results/) do not count: they are what a run writes.
 */
function gitState(): { commit: string; dirty: string[] } {
  try {
    const git = (...a: string[]): string => execFileSync('git', a, { cwd: import.meta.dirname, encoding: 'utf8' });
    const commit = git('rev-parse', '--short', 'HEAD').trim();
    const top = git('rev-parse', '--show-toplevel').trim();
    const dirty = execFileSync('git', ['status', '--porcelain'], { cwd: top, encoding: 'utf8' })
      .split('\n')
      .filter((l) => l.length > 3)
      .map((l) => l.slice(3))
      .filter((path) => !path.startsWith('bench/results/'));
    return { commit, dirty };
  } catch {
    return { commit: 'unknown', dirty: ['(not a git checkout: the commit is unknown)'] };
  }
}
const git = gitState();
const cpuAtStart = machineAndOwnCpuMs();

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
  /** The commit, marked when the tree differs from it. */
  git: git.dirty.length ? `${git.commit} + uncommitted changes` : git.commit,
  commit: git.commit,
  /** Files that differ from the commit (bench/results/ excluded). */
  dirtyFiles: git.dirty,
  mode: QUICK ? 'quick' : 'default',
  rounds: ROUNDS,
  sideRounds: SIDE_ROUNDS,
  workloads: SELECTED,
  leftOut: LEFT_OUT,
};

const progress = (line: string): void => void process.stdout.write(line + '\n');
const SOAK_ONLY = args['soak-only'];
const ctx: BenchContext = { quick: QUICK, rounds: ROUNDS, sideRounds: SIDE_ROUNDS, gc, progress, ...(SOAK !== undefined ? { soakSeconds: SOAK } : {}), ...(SOAK_ONLY ? { soakOnly: SOAK_ONLY } : {}) };

const t0 = performance.now();
progress(
  `Halcyon bench (${meta.mode}): ${meta.cpuModel}, ${meta.cores} cores, Node ${meta.node}; load average ${meta.loadavgStart.map((x) => fmt(x, 2)).join(' / ')}; ` +
    `${ROUNDS} rounds (${SIDE_ROUNDS} for contenders no goal is decided against); workloads: ${SELECTED.join(', ')}` +
    (LEFT_OUT.length ? `; left out: ${LEFT_OUT.join(', ')}` : ''),
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
    const count = (v: Verdict): number => r.goals.filter((g) => verdictOf(g) === v).length;
    progress(`[${i + 1}/${SELECTED.length}] ${id} done in ${fmt(seconds)} s; goals of ${r.goals.length}: met ${count('met')}, missed ${count('missed')}, inconclusive ${count('inconclusive')}`);
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
const VERDICT_LABEL: Record<Verdict, string> = { met: '✅ met', missed: '❌ missed', inconclusive: '❔ inconclusive', 'not measured': '– not measured' };

const cpuAtEnd = machineAndOwnCpuMs();
/** Share of the machine's cores other processes kept busy during the run (Linux), 0–1; NaN where unknown. */
const othersShare =
  cpuAtStart && cpuAtEnd
    ? Math.max(0, cpuAtEnd.machineBusyMs - cpuAtStart.machineBusyMs - (cpuAtEnd.ownTreeMs - cpuAtStart.ownTreeMs)) / (wallS * 1000 * meta.cores)
    : NaN;

/** Why this run cannot stand as the published one (empty: it can). */
const notPublished: string[] = [
  ...(git.dirty.length ? [`the tree differs from commit ${git.commit} (${git.dirty.slice(0, 8).join(', ')}${git.dirty.length > 8 ? `, … ${git.dirty.length} files` : ''})`] : []),
  ...(QUICK ? ['a --quick run'] : []),
  ...(args.rounds !== undefined ? [`--rounds ${ROUNDS}`] : []),
  ...(args['side-rounds'] !== undefined ? [`--side-rounds ${SIDE_ROUNDS}`] : []),
  ...(SOAK !== undefined && SELECTED.includes('soak') ? [`--soak ${SOAK}`] : []),
  ...(SOAK_ONLY && SELECTED.includes('soak') ? [`--soak-only ${SOAK_ONLY}`] : []),
  // The seven short workloads stand on their own; the long ones add to them, never replace them.
  ...(SHORT.some((w) => !SELECTED.includes(w)) ? [`only ${SELECTED.join(', ')}`] : []),
  ...reports.filter((r) => r.error).map((r) => `${r.id} failed`),
];
const published = notPublished.length === 0;

const ratioCell = (r: RatioEntry | undefined): string => {
  if (!r || !Number.isFinite(r.ofMedians)) return '–';
  const good = advantage(r) >= 1;
  const range = r.perRound.n > 1 ? ` (${fmt(r.perRound.min, 2)}–${fmt(r.perRound.max, 2)})` : '';
  return `${good ? '' : '⚠ '}**×${fmt(r.ofMedians, r.ofMedians >= 10 ? 1 : 2)}**${range}`;
};

/** The summary of ratios: Halcyon's own figure, Halcyon ÷ each contender, and what differs between them. */
function summaryTable(): string[] {
  const cols = VERSUS.filter((v) => reports.some((r) => r.ratios.some((x) => x.versus === v)));
  const L = [
    `| workload | metric | Halcyon | ${cols.map((v) => `÷ ${VERSUS_LABEL[v]}`).join(' | ')} | what differs |`,
    `| --- | --- | ---: | ${cols.map(() => '---:').join(' | ')} | --- |`,
  ];
  for (const r of reports) {
    let previous = '';
    for (const m of [...new Set(r.ratios.map((x) => x.metric))]) {
      const of = r.ratios.filter((x) => x.metric === m);
      const notes = [...new Set(of.map((x) => x.note).filter((n): n is string => !!n))].join(' ');
      // A note repeated on the next row of the same workload is said once.
      const shown = notes && notes === previous ? '(as above)' : notes;
      previous = notes;
      L.push(`| ${r.id} | ${m} (${of[0]!.better} is better) | ${of.find((x) => x.value)?.value ?? ''} | ${cols.map((v) => ratioCell(of.find((x) => x.versus === v))).join(' | ')} | ${shown} |`);
    }
  }
  return L;
}

function markdown(svgName: string): string {
  const L: string[] = [];
  L.push(`# Halcyon benchmark (${meta.mode} run${published ? ', published' : ', not for publishing'})`, '');
  L.push('| | |', '| --- | --- |');
  L.push(`| date | ${meta.date} |`);
  L.push(`| machine | ${meta.cpuModel}, ${meta.cores} cores, ${fmt(meta.totalMemGB, 1)} GiB RAM, ${meta.os} |`);
  L.push(`| Node | ${meta.node} |`);
  L.push(`| commit | ${git.commit}${git.dirty.length ? ` **+ uncommitted changes** in ${git.dirty.length} file${git.dirty.length === 1 ? '' : 's'}` : ' (clean tree)'} |`);
  const longRan = SELECTED.filter((w) => LONG.includes(w));
  const ranWhat = LEFT_OUT.length === 0 ? `all ${WORKLOADS.length} workloads` : `the ${SHORT.length} short workloads${longRan.length ? ` and ${longRan.join(', ')}` : ''}`;
  L.push(`| published | ${published ? `yes: ${ranWhat} with the default settings on a clean commit` : `**no**: ${notPublished.join('; ')}`} |`);
  L.push(`| workloads | ran ${SELECTED.join(', ')}${LEFT_OUT.length ? `; **left out** ${LEFT_OUT.join(', ')} (run ${LEFT_OUT.length === 1 ? 'it' : 'them'} with \`npm run bench -- --only ${LEFT_OUT.join(',')}\`, or \`--all\` for every workload)` : ''} |`);
  L.push(
    `| rounds | ${ROUNDS} per measurement unless a section says otherwise (${SIDE_ROUNDS} for a contender no goal is decided against; each section says which); contenders alternate which goes first |`,
  );
  L.push(`| wall time | ${fmt(wallS)} s (${reports.map((r) => `${r.id} ${fmt(r.seconds)} s`).join(', ')}) |`);
  L.push(
    `| load average (1/5/15 min) | at start ${meta.loadavgStart.map((x) => fmt(x, 2)).join(' / ')}; at end ${os.loadavg().map((x) => fmt(x, 2)).join(' / ')} ` +
      `(the bench's own processes count too) |`,
  );
  L.push(
    `| other processes | ${Number.isFinite(othersShare) ? `kept ${fmt(othersShare * 100)}% of the ${meta.cores} cores busy on average during the run (machine CPU time minus the bench's and its children's, /proc)${othersShare > 0.15 ? ': **a busy machine**, figures are noisier and slower than on an idle one' : ''}` : 'unknown (no /proc)'} |`,
    '',
  );
  L.push('## Summary: Halcyon ÷ each contender', '');
  L.push(
    '"Halcyon" is Halcyon\'s median over the rounds; each ratio is Halcyon\'s median ÷ the contender\'s (over the rounds both ran), with the range of the per-round ratios. ' +
      'For rates (events/s, messages/s) higher is better for Halcyon; for times, CPU and memory lower is better; ⚠ marks a ratio where Halcyon is behind. ' +
      '"What differs" is what the two sides did not do alike; a ratio is only printed where they handled the same events. ' +
      'The floor / raw loop is the least work any client must do (one thread, no state); matrix-bot-sdk 0.8 and ' +
      'matrix-js-sdk 43 are what a bot author would pick instead.',
    '',
  );
  L.push(...summaryTable());
  L.push('', `![ratios](${svgName})`, '');
  const goals: Array<GoalEntry & { workload: string }> = reports.flatMap((r) => r.goals.map((g) => ({ ...g, workload: r.id })));
  if (goals.length) {
    L.push('## Goals', '', GOAL_RULE, '', '| workload | goal | measured | |', '| --- | --- | --- | --- |');
    for (const g of goals) L.push(`| ${g.workload} | ${g.goal} | ${g.actual} | ${VERDICT_LABEL[verdictOf(g)]} |`);
    L.push('');
  }
  for (const r of reports) {
    L.push(`## ${r.title}`, '');
    if (r.error) L.push('**This workload failed:**', '');
    L.push(...r.markdown, '');
  }
  return L.join('\n');
}

// The run's own directory: <date>-<commit>, marked when the tree was dirty or the run quick.
const runDir = join(OUT_DIR, 'runs', `${meta.date.slice(0, 19).replace(/:/g, '')}Z-${git.commit}${git.dirty.length ? '-dirty' : ''}${QUICK ? '-quick' : ''}`);
mkdirSync(runDir, { recursive: true });
const allRatios = reports.flatMap((r) => r.ratios);
const json = JSON.stringify({ meta: { ...meta, wallSeconds: wallS, loadavgEnd: os.loadavg(), otherProcessesShare: othersShare, published, notPublished }, workloads: reports }, null, 2) + '\n';
const svg = ratioChart(allRatios, `${meta.mode} run, ${meta.date.slice(0, 10)}, ${meta.cpuModel} × ${meta.cores} cores, Node ${meta.node}, commit ${meta.git}${published ? '' : ' (not published)'}`);
for (const [dir, names] of [
  [OUT_DIR, ['latest.json', 'latest.md', 'latest.svg']],
  [runDir, ['results.json', 'results.md', 'ratios.svg']],
] as const) {
  writeFileSync(join(dir, names[0]), json);
  writeFileSync(join(dir, names[1]), markdown(names[2]) + '\n');
  writeFileSync(join(dir, names[2]), svg);
}
progress(`\n${markdown('latest.svg')}\nwritten: ${join(OUT_DIR, 'latest.json')}, latest.md, latest.svg and ${runDir}/ (${fmt(wallS)} s)${published ? '' : `; not for publishing: ${notPublished.join('; ')}`}`);
process.exit(reports.some((r) => r.error) ? 1 : 0);
