/**
 * The throughput workload's CPU by thread (issue 14, goal 2): the table of Halcyon's (trivial handler) CPU per event
 * by thread beside the floor's, the goal "busiest thread ≤0.6× the floor's total", the projection it gives, and a
 * `taskset` check of that projection.
 *
 * The check: Halcyon (trivial handler) and the single-thread floor each run in a child process started under
 * `taskset -c A` (one core) and `taskset -c A,B` (two), against one replay server (100 rooms × 100 events per body),
 * and the events/s of two cores ÷ one core is reported per round. A client whose work is spread over threads gains
 * from the second core; the floor (one thread, plus V8's helpers) barely does.
 *
 * Where the replay server runs: with a third allowed CPU it is pinned there in both runs (it never shares a core
 * with the client); on two CPUs it is pinned to the other core B in the one-core run and shares A and B with the
 * client in the two-core run. Its CPU per event is reported beside the figures, so how much it can take is seen.
 *
 * The parent side is {@link tasksetComparison}; as a child (`node --import tsx bench/workloads/throughput-child.ts
 * '<ChildArgs as JSON>'`) it runs one contender and prints one JSON line ({@link ChildResult}).
 * @module
 */
import { spawn, spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { type BenchContext, combineVerdicts, type GoalEntry, goalEntry, ratioOf, ratioVerdict } from '../report.ts';
import { clockOffset, fmt, machineAndOwnCpuMs, now, processCpuMs, type Summary, summarize, threadsCpuMs } from '../stats.ts';
import type { ShapeResult, TpContender, TpSample } from './throughput.ts';

/** What the parent passes to a child (argv[2], JSON). */
interface ChildArgs {
  contender: TasksetContender;
  /** Replay server base URL. */
  url: string;
  /** Timeline events in all the bodies (the run ends at the last). */
  total: number;
}

/** The one JSON line a child prints. */
interface ChildResult {
  ok: boolean;
  error?: string;
  /** When the last handler call came, epoch ms (`performance.timeOrigin + performance.now()`, as the parent's clock). */
  lastHandlerAt?: number;
  /** The child's whole life (start-up and stop included): CPU of all its threads and wall time, ms. */
  cpuMs?: number;
  wallMs?: number;
}

/** The contenders the check runs. */
type TasksetContender = 'halcyon' | 'floor';
const CONTENDERS: TasksetContender[] = ['halcyon', 'floor'];
const LABELS: Record<TasksetContender, string> = { halcyon: 'Halcyon, handler reads sender + eventId', floor: 'floor (undici + JSON.parse, 1 thread)' };
/** A child that has not printed its result by then is killed and counted as failed. */
const CHILD_TIMEOUT_MS = 120_000;

/** Runs one contender to the last event and measures it (the child's side). */
async function runOne(args: ChildArgs): Promise<ChildResult> {
  if (args.contender === 'halcyon') {
    const { runHalcyon } = await import('../halcyon.ts');
    const h = await runHalcyon({ url: args.url, expectedEvents: args.total, mode: 'trivial', timeoutMs: CHILD_TIMEOUT_MS });
    if (h.problems.length) throw new Error(`Halcyon reported: ${h.problems.join(' | ')}`);
    return { ok: true, lastHandlerAt: h.lastHandlerAt };
  }
  const { runFloor } = await import('../floor.ts');
  let n = 0;
  let sink = 0;
  let last = NaN;
  await runFloor(args.url, args.total, (ev: { sender: string; event_id: string }) => {
    sink += ev.sender.length + ev.event_id.length;
    if (++n === args.total) last = now();
  });
  if (sink === 0) throw new Error('unreachable');
  return { ok: true, lastHandlerAt: last };
}

const CHILD = fileURLToPath(import.meta.url);
if (process.argv[1] === CHILD) {
  let result: ChildResult;
  try {
    result = await runOne(JSON.parse(process.argv[2] ?? '{}') as ChildArgs);
    result.cpuMs = processCpuMs();
    result.wallMs = performance.now();
  } catch (err) {
    result = { ok: false, error: (err as Error).message };
  }
  process.stdout.write(`${JSON.stringify({ tasksetChild: result })}\n`);
  process.exit(0);
}

/** Runs one child under `taskset -c cpus`; a failure (or a child killed at the timeout) is a result with `ok: false`. */
async function runChild(cpus: string, args: ChildArgs): Promise<ChildResult> {
  const child = spawn('taskset', ['-c', cpus, process.execPath, '--no-deprecation', '--import', 'tsx', CHILD, JSON.stringify(args)], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (err = (err + d).slice(-1000)));
  const timer = setTimeout(() => child.kill('SIGKILL'), CHILD_TIMEOUT_MS + 30_000);
  const code = await new Promise<number | null>((resolve) => child.once('close', resolve));
  clearTimeout(timer);
  const line = out.split('\n').find((l) => l.startsWith('{"tasksetChild"'));
  if (!line) return { ok: false, error: `exited (code ${code}) without a result; stderr: ${err.trim().slice(-300)}` };
  return (JSON.parse(line) as { tasksetChild: ChildResult }).tasksetChild;
}

/** The CPUs this process may run on (`Cpus_allowed_list`), e.g. `0-1,4` → [0, 1, 4]; empty off Linux. */
function allowedCpus(): number[] {
  try {
    const list = /^Cpus_allowed_list:\s*(\S+)$/m.exec(readFileSync('/proc/self/status', 'utf8'))?.[1] ?? '';
    return list.split(',').flatMap((part) => {
      const [a, b] = part.split('-').map(Number);
      return b === undefined ? [a!] : Array.from({ length: b - a! + 1 }, (_, i) => a! + i);
    });
  } catch {
    return [];
  }
}

/** This process's children (Linux /proc: every thread's `children` list). */
function childPids(): Set<number> {
  const out = new Set<number>();
  try {
    for (const tid of readdirSync('/proc/self/task')) {
      for (const pid of readFileSync(`/proc/self/task/${tid}/children`, 'utf8').trim().split(/\s+/)) if (pid) out.add(Number(pid));
    }
  } catch {
    // no /proc children lists: the server is found by nothing and left unpinned (the note says so)
  }
  return out;
}

/** CPU time (ms) of process `pid`, all its threads (NaN if unreadable). */
function pidCpuMs(pid: number | undefined): number {
  const threads = pid === undefined ? null : threadsCpuMs(pid);
  return threads ? [...threads.values()].reduce((sum, t) => sum + t.ms, 0) : NaN;
}

/** Pins every thread of `pid` to `cpus` (`taskset -a -p -c`); false if that failed. */
const pin = (pid: number, cpus: string): boolean => spawnSync('taskset', ['-a', '-p', '-c', cpus, String(pid)], { stdio: 'ignore' }).status === 0;

/** One child run's figures. */
interface TasksetSample {
  round: number;
  contender: TasksetContender;
  cores: 1 | 2;
  eventsPerSec: number;
  /** The replay server's CPU over the child's whole run (start-up included), per event, µs. */
  serverCpuUsPerEvent: number;
  /** The child's CPU ÷ its wall time, over its whole life: how many cores it got. */
  childCores?: number;
  /** Every other process's CPU (machine busy − child − server) ÷ wall time over the child's life: the load it ran beside, in cores. */
  otherCores?: number;
  error?: string;
}

/** What {@link tasksetComparison} returns: the section's Markdown lines and everything measured. */
export interface TasksetReport {
  markdown: string[];
  data: { skipped?: string; cpus?: { one: string; two: string; server: string | null }; bodies?: number; samples?: TasksetSample[] };
}

/**
 * Runs the check: `bodies` bodies of 100 rooms × 100 events, each contender under one core and two, `rounds`
 * rounds (the order rotating). Never throws: without `taskset` or two allowed CPUs it returns a note saying so.
 */
export async function tasksetComparison(ctx: BenchContext, bodies: number, rounds: number): Promise<TasksetReport> {
  const title = '**`taskset`: one core against two** (100 rooms × 100 events per body)';
  const skip = (why: string): TasksetReport => ({ markdown: [title, '', `Skipped: ${why}.`, ''], data: { skipped: why } });
  if (spawnSync('taskset', ['--version'], { stdio: 'ignore' }).status !== 0) return skip('`taskset` (util-linux) is not installed');
  const cpus = allowedCpus();
  if (cpus.length < 2) return skip(`this process may run on ${cpus.length || 'an unknown number of'} CPU(s), two are needed`);
  const one = String(cpus[0]);
  const two = `${cpus[0]},${cpus[1]}`;
  const third = cpus[2] !== undefined ? String(cpus[2]) : null;

  // Imported here: a child process loads this module too, and needs neither.
  const [{ makeSyncBody }, { startReplayServer }] = await Promise.all([import('../fixtures.ts'), import('../replay-server.ts')]);
  const total = 100 * 100 * bodies;
  const children = childPids();
  const server = await startReplayServer({ bodies: Array.from({ length: bodies }, (_, batch) => makeSyncBody({ rooms: 100, eventsPerRoom: 100, batch, seed: 42 })), longPollMs: 1000 });
  const pid = [...childPids()].find((p) => !children.has(p));
  const samples: TasksetSample[] = [];
  try {
    const { offsetMs } = await clockOffset(server);
    const runs = CONTENDERS.flatMap((contender) => ([1, 2] as const).map((cores) => ({ contender, cores })));
    for (let round = 1; round <= rounds; round++) {
      for (let i = 0; i < runs.length; i++) {
        const { contender, cores } = runs[(i + round - 1) % runs.length]!;
        // The server off the client's core in the one-core run; on two CPUs it shares both in the two-core run.
        const serverCpus = third ?? (cores === 1 ? String(cpus[1]) : two);
        const pinned = pid !== undefined && pin(pid, serverCpus);
        const s0 = pidCpuMs(pid);
        const m0 = machineAndOwnCpuMs();
        const t0 = performance.now();
        const before = (await server.stats()).syncRequests;
        const r = await runChild(cores === 1 ? one : two, { contender, url: server.url, total });
        const wallMs = performance.now() - t0;
        const serverMs = pidCpuMs(pid) - s0;
        const m1 = machineAndOwnCpuMs();
        const firstResponse = (await server.stats()).responseTimes[before]! - offsetMs;
        const eventsPerSec = total / ((r.lastHandlerAt! - firstResponse) / 1000);
        const sample: TasksetSample = { round, contender, cores, eventsPerSec: r.ok ? eventsPerSec : NaN, serverCpuUsPerEvent: (serverMs * 1000) / total };
        if (r.cpuMs !== undefined && r.wallMs) sample.childCores = r.cpuMs / r.wallMs;
        if (m0 && m1 && r.cpuMs !== undefined) sample.otherCores = (m1.machineBusyMs - m0.machineBusyMs - r.cpuMs - serverMs) / wallMs;
        if (!r.ok) sample.error = r.error ?? 'failed';
        else if (!pinned) sample.error = 'the replay server could not be pinned';
        samples.push(sample);
        ctx.progress(
          `[throughput taskset r${round}/${rounds}] ${contender.padEnd(7)} ${cores} core${cores === 1 ? ' ' : 's'} ` +
            (sample.error
              ? `FAILED: ${sample.error}`
              : `${fmt(sample.eventsPerSec).padStart(9)} events/s; replay server ${fmt(sample.serverCpuUsPerEvent, 2)} µs/event; ` +
                `child used ${fmt(sample.childCores ?? NaN, 2)} cores beside ${fmt(sample.otherCores ?? NaN, 2)} of other processes`),
        );
      }
    }
  } finally {
    await server.stop();
  }
  return { markdown: tasksetMarkdown(title, samples, { one, two, server: third }), data: { cpus: { one, two, server: third }, bodies, samples } };
}

/** The check's table: events/s on one core and on two, and their ratio paired by round. */
function tasksetMarkdown(title: string, samples: readonly TasksetSample[], cpus: { one: string; two: string; server: string | null }): string[] {
  const ok = samples.filter((s) => !s.error);
  const of = (c: TasksetContender, cores: 1 | 2): TasksetSample[] => ok.filter((s) => s.contender === c && s.cores === cores);
  const mmm = (s: Summary, d = 0): string => (s.n ? `${fmt(s.min, d)} / **${fmt(s.median, d)}** / ${fmt(s.max, d)}` : '–');
  const L = [
    title,
    '',
    `Each contender in a child process started under \`taskset -c ${cpus.one}\` and \`taskset -c ${cpus.two}\`; events/s as in the tables above, from the ` +
      "first /sync response (server clock, offset-corrected; the child's clock taken as the bench process's) to the last handler call. " +
      (cpus.server !== null
        ? `The replay server is pinned to CPU ${cpus.server} in both runs: it never shares a core with the client.`
        : `The replay server is pinned to CPU ${cpus.two.split(',')[1]} in the one-core run (off the client's core) and shares CPUs ${cpus.two} ` +
          'with the client in the two-core run (there are only two), so the two-core figures carry its load (its CPU per event is in the table).') +
      ' min / **median** / max over rounds; the ratio is paired by round. The last three columns (medians, one core / two) are over each ' +
      "child's whole life, start-up included: its CPU ÷ wall time, and what every other process on the machine took meanwhile (/proc/stat), " +
      'which on a shared machine can leave the second core with little to give.',
    '',
    '| contender | events/s, 1 core | events/s, 2 cores | 2 cores ÷ 1 core | replay server CPU µs/event | cores the child used | other processes, cores |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: |',
  ];
  for (const c of CONTENDERS) {
    const perRound = of(c, 2).flatMap((s) => {
      const o = of(c, 1).find((x) => x.round === s.round);
      return o ? [s.eventsPerSec / o.eventsPerSec] : [];
    });
    const q = summarize(perRound);
    // Medians, one core / two cores.
    const both = (f: (s: TasksetSample) => number | undefined, d: number) =>
      ([1, 2] as const).map((cores) => fmt(summarize(of(c, cores).map(f).filter((x): x is number => x !== undefined && Number.isFinite(x))).median, d)).join(' / ');
    L.push(
      `| ${LABELS[c]} | ${mmm(summarize(of(c, 1).map((s) => s.eventsPerSec)))} | ${mmm(summarize(of(c, 2).map((s) => s.eventsPerSec)))} | ` +
        `${q.n ? `**×${fmt(q.median, 2)}** (rounds ${fmt(q.min, 2)}–${fmt(q.max, 2)})` : '–'} | ${both((s) => s.serverCpuUsPerEvent, 2)} | ` +
        `${both((s) => s.childCores, 2)} | ${both((s) => s.otherCores, 2)} |`,
    );
  }
  const failed = samples.filter((s) => s.error);
  L.push('');
  if (failed.length) L.push(`Failed: ${failed.map((s) => `${s.contender} ${s.cores} core(s) r${s.round}: ${s.error}`).join('; ')}`, '');
  return L;
}

/** Goal (issue 14): Halcyon's busiest thread's CPU per event at most this × the floor's total; 1 ÷ 0.6 ≈ 1.67, over the issue's 1.6× at three cores. */
const BUSIEST_LIMIT = 0.6;

/** Per shape: Halcyon's (trivial handler) busiest thread's CPU per event ÷ the floor's all-threads CPU per event, paired by round. */
type BusiestRatios = ReadonlyArray<{ id: string; q: ReturnType<typeof ratioOf> }>;

/**
 * Issue 14's goal 2, "the busiest thread's CPU per event ≤0.6× the floor's total", per shape, by the per-round
 * ranges (report.ts GOAL_RULE); `rx` formats a ratio.
 */
export function busiestThreadGoal(results: readonly ShapeResult[], rx: (x: number) => string): { goal: GoalEntry; ratios: BusiestRatios } {
  const per = (r: ShapeResult, c: TpContender, key: 'busiestThreadCpuUsPerEvent' | 'allThreadsCpuUsPerEvent') =>
    r.samples.filter((s) => s.contender === c && !s.error).map((s) => ({ round: s.round, value: s[key] ?? NaN }));
  const ratios = results.map((r) => ({ id: r.shape.id, q: ratioOf(per(r, 'halcyon-trivial', 'busiestThreadCpuUsPerEvent'), per(r, 'floor', 'allThreadsCpuUsPerEvent')) }));
  const goal = goalEntry(
    `Busiest thread's CPU per delivered event ≤${BUSIEST_LIMIT}× the floor's total (all threads) CPU per event, from the first to the last handler call`,
    ratios.map(({ id, q }) => `×${rx(q.ofMedians)} (${id}; rounds ${rx(q.perRound.min)}–${rx(q.perRound.max)}; projection: ×${fmt(1 / q.ofMedians, 2)} the floor's events/s)`).join(', '),
    combineVerdicts(ratios.map(({ q }) => ratioVerdict(q, 'lower', BUSIEST_LIMIT))),
  );
  return { goal, ratios };
}

/** Column names of the thread groups (bench/stats.ts threadsCpuMs); Halcyon's workers are `halcyon-<entry>`. */
const GROUP_LABELS: Record<string, string> = {
  main: 'main',
  'halcyon-sync': 'sync worker (sync + cache actors)',
  'halcyon-crypto': 'crypto worker',
  'v8 helpers': 'V8 helper threads',
  other: 'libuv / other',
};
const groupLabel = (g: string): string => GROUP_LABELS[g] ?? (g.startsWith('halcyon-') ? `${g.slice(8)} worker` : g);
const groupOrder = (g: string): number => (g === 'main' ? 0 : g === 'halcyon-sync' ? 1 : g.startsWith('halcyon-') ? 2 : g === 'v8 helpers' ? 3 : 4);

/**
 * The CPU-by-thread table (Halcyon with the trivial handler beside the floor, every shape) and the projection the
 * busiest thread gives (issue 14: with as many cores as busy threads, the busiest thread bounds the rate).
 */
export function threadsMarkdown(results: readonly ShapeResult[], busiest: BusiestRatios, rx: (x: number) => string): string[] {
  const rows: Array<{ id: string; c: TpContender; ss: TpSample[] }> = results.flatMap((r) =>
    (['halcyon-trivial', 'floor'] as const).map((c) => ({ id: r.shape.id, c, ss: r.samples.filter((s) => s.contender === c && !s.error && s.threadsCpuUsPerEvent) })),
  );
  if (!rows.some((x) => x.ss.length)) return ['CPU by thread: not measured (no /proc here).', ''];
  const groups = [...new Set(rows.flatMap((x) => x.ss.flatMap((s) => Object.keys(s.threadsCpuUsPerEvent!))))].sort((a, b) => groupOrder(a) - groupOrder(b) || a.localeCompare(b));
  const med = (xs: number[], d = 1): string => (xs.length ? fmt(summarize(xs).median, d) : '–');
  const L = [
    "CPU per delivered event by thread, µs (median over rounds; each thread's run time from /proc's `schedstat`, grouped by thread name), over the " +
      'all-threads window: the first to the last handler call, per event after the first body. The busiest thread is the single thread that ' +
      'used the most CPU in that window (min / **median** / max, and which one); "all threads" is `process.cpuUsage()`, as in the tables ' +
      `above.${groups.includes('halcyon-crypto') ? '' : ' Halcyon runs with encryption off here, as every contender, so it has no crypto worker.'}`,
    '',
    `| shape | contender | ${groups.map(groupLabel).join(' | ')} | busiest thread | all threads | busiest ÷ floor's all threads |`,
    `| --- | --- | ${groups.map(() => '---:').join(' | ')} | ---: | ---: | ---: |`,
  ];
  for (const { id, c, ss } of rows) {
    const top = summarize(ss.map((s) => s.busiestThreadCpuUsPerEvent!));
    const which = [...new Set(ss.map((s) => s.busiestThread!))].join(', ');
    const q = busiest.find((b) => b.id === id)?.q;
    L.push(
      `| ${id} | ${c === 'floor' ? 'floor' : 'Halcyon (trivial handler)'} | ${groups.map((g) => med(ss.filter((s) => g in s.threadsCpuUsPerEvent!).map((s) => s.threadsCpuUsPerEvent![g]!))).join(' | ')} | ` +
        `${top.n ? `${fmt(top.min, 1)} / **${fmt(top.median, 1)}** / ${fmt(top.max, 1)} (${which})` : '–'} | ${med(ss.map((s) => s.allThreadsCpuUsPerEvent ?? NaN).filter(Number.isFinite))} | ` +
        `${c === 'floor' || !q || !q.perRound.n ? '' : `**×${rx(q.ofMedians)}** (rounds ${rx(q.perRound.min)}–${rx(q.perRound.max)})`} |`,
    );
  }
  const projected = busiest
    .filter(({ q }) => q.perRound.n > 0)
    .map(({ id, q }) => `×${fmt(1 / q.ofMedians, 2)} (${id}; rounds ${fmt(1 / q.perRound.max, 2)}–${fmt(1 / q.perRound.min, 2)})`);
  L.push(
    '',
    `**Projection** (computed from these figures, not measured): with as many cores as it has busy threads, Halcyon's events/s is bounded ` +
      "by its busiest thread, so its projected events/s ÷ the floor's = the floor's CPU per event ÷ Halcyon's busiest thread's (the floor " +
      `taken at one core's worth of its all-threads CPU per event): ${projected.join(', ') || 'not measured'}. Issue 14 asks ≥1.6× the floor ` +
      `with three cores, which needs the busiest thread at ≤0.625× the floor's CPU per event (the goal's ${BUSIEST_LIMIT}× keeps a margin). ` +
      'It assumes the other threads (V8 helpers, the replay server) find cores of their own; the `taskset` runs below check the direction on one core against two.',
    '',
  );
  return L;
}
