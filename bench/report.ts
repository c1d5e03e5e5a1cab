/**
 * What every benchmark workload returns to the orchestrator (bench/run.ts), which turns the reports into
 * bench/results/latest.json, latest.md and latest.svg.
 * @module
 */
import type { Summary } from './stats.ts';

/** The contenders the workloads compare; not every workload runs every one. */
export type Contender = 'halcyon' | 'floor' | 'matrix-bot-sdk' | 'matrix-js-sdk' | 'raw';

/** Handed to every workload's `run`. */
export interface BenchContext {
  /** A few-minute run: fewer rounds and smaller inputs. */
  quick: boolean;
  /** Rounds per measurement (the contenders alternate which goes first each round). */
  rounds: number;
  /**
   * Rounds of a contender no goal is decided against (at most `rounds`): it is only compared, so a ratio with the
   * range of a few rounds says as much, and matrix-js-sdk (×14–20 slower in places) no longer dominates the run.
   */
  sideRounds: number;
  /** A full GC, to run between measurements so one contender's garbage is not collected on another's time. */
  gc: () => void;
  /** Prints one progress line. */
  progress: (line: string) => void;
  /** `--soak SECONDS`: how long the soak workload runs (default: its own, 10 min or 2 with `quick`). */
  soakSeconds?: number;
  /** `--soak-only NAME`: the soak workload runs this contender alone (a long run of Halcyon's own growth, say). */
  soakOnly?: string;
}

/** One ratio of Halcyon against another contender, for the summary table and the chart. */
export interface RatioEntry {
  /** Workload id, e.g. `throughput`. */
  workload: string;
  /** What is compared, e.g. `events/s, 100 rooms × 100 events` or `main CPU/event, 100x100`. */
  metric: string;
  /** The contender Halcyon is divided by. */
  versus: Contender;
  /** Halcyon's median ÷ the other contender's median. */
  ofMedians: number;
  /** min / median / max of the per-round ratios (Halcyon's round-r value ÷ the other's round-r value). */
  perRound: Summary;
  /** Whether a ratio above 1 is good (`higher`: throughput) or bad (`lower`: latency, CPU, memory). */
  better: 'higher' | 'lower';
  /** Halcyon's own median with its unit (e.g. `3.73 µs`), shown beside the ratios so a ratio is never read without the figure. */
  value?: string;
  /**
   * What differs between Halcyon and this contender in this measurement and the reader must know to read the
   * ratio (state kept, work skipped, events not the same); printed next to the figures in the summary table.
   */
  note?: string;
}

/**
 * Where a goal stands. The rule ({@link GOAL_RULE}): `met` only when every round is on the right side of the goal,
 * `missed` when every round is on the wrong side, `inconclusive` when the rounds straddle it.
 */
export type Verdict = 'met' | 'missed' | 'inconclusive' | 'not measured';

/** The rule {@link Verdict}s follow, as the report prints it. */
export const GOAL_RULE =
  'A goal is **met** only when every round is on the right side of it (for a ratio: the whole range of per-round ratios), ' +
  '**missed** when every round is on the wrong side, and **inconclusive** when the rounds straddle it, whatever the median says. ' +
  'A goal over several shapes or percentiles is missed if any part is missed, met only if every part is met.';

/** One of the goals and where it stands after this run. */
export interface GoalEntry {
  /** The goal as stated, e.g. `throughput ≥ 1.0× the floor`. */
  goal: string;
  /** What was measured, e.g. `×0.56 (100x100), ×0.50 (1x10k)`. */
  actual: string;
  /** true met, false missed, null not measured (or inconclusive, see `verdict`) in this run. */
  met: boolean | null;
  /** The verdict by {@link GOAL_RULE}; a goal without one is read from `met`. */
  verdict?: Verdict;
}

/** The verdict of one measurement repeated over rounds: whether each round passed. */
export function roundsVerdict(passed: readonly boolean[]): Verdict {
  if (passed.length === 0) return 'not measured';
  const n = passed.filter(Boolean).length;
  return n === passed.length ? 'met' : n === 0 ? 'missed' : 'inconclusive';
}

/** A ratio's verdict against a threshold from its per-round range: `≥ limit` for `higher`, `≤ limit` for `lower`. */
export function ratioVerdict(r: Pick<RatioEntry, 'perRound'>, better: 'higher' | 'lower', limit: number): Verdict {
  const { min, max, n } = r.perRound;
  if (!n || !Number.isFinite(min) || !Number.isFinite(max)) return 'not measured';
  const ok = (x: number): boolean => (better === 'higher' ? x >= limit : x <= limit);
  return ok(min) && ok(max) ? 'met' : !ok(min) && !ok(max) ? 'missed' : 'inconclusive';
}

/** Several parts of one goal (shapes, percentiles): missed if any is, met if all are, else inconclusive (or not measured). */
export function combineVerdicts(parts: readonly Verdict[]): Verdict {
  if (parts.length === 0 || parts.some((v) => v === 'not measured')) return parts.includes('missed') ? 'missed' : 'not measured';
  if (parts.includes('missed')) return 'missed';
  return parts.every((v) => v === 'met') ? 'met' : 'inconclusive';
}

/** A goal entry from its verdict (`met` kept in step for readers of `met`). */
export function goalEntry(goal: string, actual: string, verdict: Verdict): GoalEntry {
  return { goal, actual, verdict, met: verdict === 'met' ? true : verdict === 'missed' ? false : null };
}

/** A goal's verdict: its own, else read from `met`. */
export function verdictOf(g: GoalEntry): Verdict {
  return g.verdict ?? (g.met === true ? 'met' : g.met === false ? 'missed' : 'not measured');
}

/** {@link BenchContext.sideRounds} unless `--side-rounds` says otherwise (capped at the rounds). */
export const DEFAULT_SIDE_ROUNDS = 2;

/**
 * Whether a contender runs in round `round` (0-based). Halcyon and every contender a goal is decided against run
 * every round (a goal is met only when every round is on its right side); a `side` one, only compared, runs the
 * first `ctx.sideRounds`.
 */
export function runsInRound(ctx: Pick<BenchContext, 'sideRounds'>, round: number, side: boolean): boolean {
  return !side || round < ctx.sideRounds;
}

/**
 * The report's sentence on the contenders that ran fewer rounds than `rounds`, e.g. "matrix-js-sdk ran 2 of the
 * 5 rounds (no goal is decided against it; its ratios span those rounds)."; empty when none did.
 */
export function sideRoundsNote(names: readonly string[], sideRounds: number, rounds: number): string {
  if (names.length === 0 || sideRounds >= rounds) return '';
  const them = names.length === 1 ? 'it' : 'them';
  return `${names.join(' and ')} ran ${sideRounds} of the ${rounds} rounds (no goal is decided against ${them}; ${names.length === 1 ? 'its' : 'their'} ratios span those rounds).`;
}

/** What a workload's `run(ctx)` resolves with. */
export interface WorkloadReport {
  /** Short id: `throughput`, `isolation`, `latency`, `coldstart`, `memory`, `sends`, `e2ee`, `soak`. */
  id: string;
  /** Section title, e.g. `1. Throughput on replayed /sync bodies`. */
  title: string;
  ratios: RatioEntry[];
  goals: GoalEntry[];
  /** The workload's Markdown section body (tables and a sentence on method), without the title. */
  markdown: string[];
  /** Everything measured (samples included), for latest.json. */
  data: unknown;
}

/** A workload module's export. */
export type Workload = (ctx: BenchContext) => Promise<WorkloadReport>;

/**
 * Ratio of medians and the per-round spread, pairing samples by round; NaN entries are skipped. Halcyon's median is
 * over the rounds the other ran too: against a contender of fewer rounds ({@link BenchContext.sideRounds}) a median
 * over all of Halcyon's could put the ratio outside the range of the per-round ones.
 */
export function ratioOf(h: ReadonlyArray<{ round: number; value: number }>, other: ReadonlyArray<{ round: number; value: number }>): { ofMedians: number; perRound: Summary } {
  const med = (xs: number[]): number => {
    if (xs.length === 0) return NaN;
    const s = [...xs].sort((a, b) => a - b);
    const r = (s.length - 1) / 2;
    return (s[Math.floor(r)]! + s[Math.ceil(r)]!) / 2;
  };
  const ov = other.filter((s) => Number.isFinite(s.value));
  const hv = h.filter((s) => Number.isFinite(s.value) && ov.some((o) => o.round === s.round)).map((s) => s.value);
  const per: number[] = [];
  for (const s of h) {
    const o = other.find((x) => x.round === s.round);
    if (o && Number.isFinite(s.value) && Number.isFinite(o.value) && o.value !== 0) per.push(s.value / o.value);
  }
  return {
    ofMedians: med(hv) / med(ov.map((s) => s.value)),
    perRound: { min: per.length ? Math.min(...per) : NaN, median: med(per), max: per.length ? Math.max(...per) : NaN, n: per.length },
  };
}
