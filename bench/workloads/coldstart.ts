/**
 * Workload 4, cold start with 1,000 rooms: each contender, in a fresh process of its own, logs in with a password
 * on a replay server whose first `/sync` is a Synapse-shaped initial sync of 1,000 joined rooms (~10 MB), and
 * starts until ready (its first sync processed); the time from the login's start to ready and the process's peak
 * RSS are reported, and the floor's `JSON.parse` of the body alone. Then the one-time set-up of the bot's identity
 * on a real Synapse (bench/identity.ts): a login that creates it against a plain one, matrix-js-sdk's bootstrap,
 * and the key backup's upload of 1,000 room keys.
 * @module
 */
import { BACKUP_KEYS, identityBench, type IdentitySample } from '../identity.ts';
import { goalEntry, ratioOf, ratioVerdict, roundsVerdict, runsInRound, sideRoundsNote, type Contender, type GoalEntry, type RatioEntry, type Workload } from '../report.ts';
import { fmt, summarize } from '../stats.ts';
import { cell, childContenders, runChild, startInitialSyncServer, type ChildContender, type ChildResult } from './client-child.ts';

const ROOMS = 1000;
/** Longest a child may take from spawn to its result (matrix-js-sdk needs ~3 s here; a hung one is killed). */
const CHILD_TIMEOUT_MS = 90_000;

const LABEL: Record<ChildContender, string> = {
  floor: 'floor',
  halcyon: 'Halcyon',
  'halcyon-e2ee': 'Halcyon, E2EE on (default)',
  'matrix-bot-sdk': 'matrix-bot-sdk',
  'matrix-js-sdk': 'matrix-js-sdk',
};

/** Contenders no goal is decided against (the goals are on Halcyon and the floor): `ctx.sideRounds` rounds. */
const SIDE: ReadonlySet<ChildContender> = new Set(['matrix-bot-sdk', 'matrix-js-sdk']);

/** What the contenders do not do alike here: who hands the initial sync's timeline to handlers. */
const NOTE =
  `Not the same work: Halcyon skips the initial sync's ${fmt(ROOMS * 14)} timeline events (its default: history is not handed to handlers); ` +
  'the floor walks them, matrix-bot-sdk and matrix-js-sdk hand them to a handler that returns at once (neither can skip them).';

/** One child's result in one round. */
type Sample = ChildResult & { round: number };

/** Login → ready and peak RSS of every contender, `ctx.rounds` rounds in alternating order. */
export const run: Workload = async (ctx) => {
  const contenders = childContenders();
  const samples: Sample[] = [];
  const { server, bodyBytes } = await startInitialSyncServer(ROOMS);
  try {
    for (let round = 0; round < ctx.rounds; round++) {
      const order = (round % 2 === 0 ? contenders : [...contenders].reverse()).filter((c) => runsInRound(ctx, round, SIDE.has(c)));
      for (const c of order) {
        ctx.gc();
        const r = await runChild({ contender: c, url: server.url, mode: 'coldstart' }, CHILD_TIMEOUT_MS);
        samples.push({ ...r, round });
        ctx.progress(
          r.ok
            ? `coldstart round ${round + 1}/${ctx.rounds} ${LABEL[c]}: login→ready ${fmt(r.readyMs)} ms, peak RSS ${fmt(r.peakRssMb)} MB${r.parseMs !== undefined ? `, JSON.parse ${fmt(r.parseMs)} ms` : ''}`
            : `coldstart round ${round + 1}/${ctx.rounds} ${LABEL[c]}: FAILED: ${r.error}`,
        );
      }
    }
  } finally {
    await server.stop();
  }
  const identity = await identityBench({ rounds: ctx.rounds, progress: ctx.progress, gc: ctx.gc });

  const ok = (c: ChildContender) => samples.filter((s) => s.contender === c && s.ok);
  const series = (c: ChildContender, k: 'readyMs' | 'peakRssMb') => ok(c).map((s) => ({ round: s.round, value: s[k] }));
  const sum = (c: ChildContender, k: 'readyMs' | 'peakRssMb' | 'loginMs' | 'importRssMb' | 'parseMs') => summarize(ok(c).map((s) => s[k] ?? NaN).filter(Number.isFinite));
  /** run()→ready: login→ready without the login. */
  const runSeries = (c: ChildContender) => ok(c).map((s) => ({ round: s.round, value: s.readyMs - s.loginMs }));
  const runSum = (c: ChildContender) => summarize(runSeries(c).map((x) => x.value));

  const ratios: RatioEntry[] = [];
  for (const other of contenders.filter((c): c is Contender & ChildContender => c !== 'halcyon' && c !== 'halcyon-e2ee')) {
    const common = { workload: 'coldstart', versus: other, better: 'lower' as const, note: NOTE };
    ratios.push({ ...common, metric: `login→ready, ${ROOMS} rooms`, ...ratioOf(series('halcyon', 'readyMs'), series(other, 'readyMs')), value: `${fmt(sum('halcyon', 'readyMs').median)} ms` });
    ratios.push({ ...common, metric: `peak RSS, ${ROOMS} rooms`, ...ratioOf(series('halcyon', 'peakRssMb'), series(other, 'peakRssMb')), value: `${fmt(sum('halcyon', 'peakRssMb').median)} MB` });
  }

  const h = sum('halcyon', 'readyMs').median;
  const e2ee = sum('halcyon-e2ee', 'readyMs').median;
  const floorReady = sum('floor', 'readyMs').median;
  const parse = sum('floor', 'parseMs').median;
  const limit = 1.5 * floorReady + 100;
  const parseLimit = 1.5 * parse + 100;
  const rss = sum('halcyon', 'peakRssMb').median;
  const rssE2ee = sum('halcyon-e2ee', 'peakRssMb').median;
  // Round by round: Halcyon's login→ready against the limit the floor's run of the same round sets.
  const readyRounds = ok('halcyon').flatMap((s) => {
    const f = ok('floor').find((x) => x.round === s.round);
    return f ? [s.readyMs <= 1.5 * f.readyMs + 100] : [];
  });
  const goals: GoalEntry[] = [
    goalEntry(
      `cold start with ${fmt(ROOMS)} rooms ≤1.5× the floor's parse time + 100 ms`,
      `login→ready ${fmt(h)} ms vs 1.5 × floor's login→ready (${fmt(floorReady)} ms) + 100 = ${fmt(limit)} ms (medians; within the round's limit in ` +
        `${readyRounds.filter(Boolean).length} of ${readyRounds.length} rounds); vs 1.5 × the bare JSON.parse (${fmt(parse)} ms) + 100 = ${fmt(parseLimit)} ms; E2EE on: ${fmt(e2ee)} ms`,
      roundsVerdict(readyRounds),
    ),
    runReadyGoal(runSeries('halcyon-e2ee'), runSeries('halcyon')),
    goalEntry(
      '≤150 MB RSS (cold start, peak)',
      `${fmt(rss)} MB peak (median; rounds ${fmt(sum('halcyon', 'peakRssMb').min)}–${fmt(sum('halcyon', 'peakRssMb').max)}; E2EE on: ${fmt(rssE2ee)} MB; after imports ${fmt(sum('halcyon', 'importRssMb').median)} MB: node, tsx, the child script and the package; the floor's ${fmt(sum('floor', 'importRssMb').median)} MB with undici)`,
      roundsVerdict(ok('halcyon').map((s) => s.peakRssMb <= 150)),
    ),
  ];

  const failed = samples.filter((s) => !s.ok);
  const markdown = [
    `Each contender runs in a fresh process of its own (\`node --expose-gc --import tsx\`, modules loaded before the clock starts): it logs in with a password (\`m.login.password\`) on the replay server, whose first \`/sync\` is a Synapse-shaped initial sync of ${fmt(ROOMS)} joined rooms (${fmt(bodyBytes / 1e6, 1)} MB: per room create, power levels, join rules, history visibility, guest access, name/topic/alias/avatar for some, 6 members, 14 messages, summary, unread counts; push rules at the top), and starts until ready: Halcyon \`Client.login\` then \`run(token)\` resolved; the floor an undici login, one \`GET /sync\`, \`JSON.parse\`, a walk over every room's events; matrix-bot-sdk \`MatrixAuth.passwordLogin\`, \`start()\` and its first \`processSync\` done (\`start()\` itself resolves before the first sync); matrix-js-sdk \`loginRequest\`, \`startClient\` and \`PREPARED\`. Halcyon runs with encryption off like the peers (none loads a crypto stack here); "E2EE on" is its default configuration, for reference. ${NOTE} Peak RSS is the whole process's (\`process.resourceUsage().maxRSS\`: main thread, workers, native), up to ready; "after imports" is the RSS before the login (node + tsx + the child script + the contender's library: each child imports only its own, undici only the floor's). ${ctx.rounds} rounds, contenders alternating order; min / **median** / max. ${sideRoundsNote(contenders.filter((c) => SIDE.has(c)).map((c) => LABEL[c]), ctx.sideRounds, ctx.rounds)}`,
    '',
    '| contender | login→ready (ms) | peak RSS (MB) | login (ms) | run()→ready (ms) | RSS after imports (MB) |',
    '|---|---|---|---|---|---|',
    ...contenders.map((c) => `| ${LABEL[c]} | ${cell(sum(c, 'readyMs'))} | ${cell(sum(c, 'peakRssMb'))} | ${cell(sum(c, 'loginMs'))} | ${cell(runSum(c))} | ${cell(sum(c, 'importRssMb'))} |`),
    `| floor: \`JSON.parse\` of the body alone | ${cell(sum('floor', 'parseMs'))} | | | | |`,
    ...(failed.length ? ['', `**Failed runs:** ${failed.map((s) => `round ${s.round + 1}: ${s.error}`).join('; ')}.`] : []),
    '',
    ...stepsMarkdown(samples),
    ...identityMarkdown(identity),
  ];
  ratios.push(...identityRatios(identity));

  return {
    id: 'coldstart',
    title: `4. Cold start with ${fmt(ROOMS)} rooms`,
    ratios,
    goals,
    markdown,
    data: { rooms: ROOMS, bodyBytes, contenders, samples, identity },
  };
};

/** Issue 14's goal: run()→ready with encryption on (the default) at most 1.3× with it off, round by round. */
function runReadyGoal(on: Array<{ round: number; value: number }>, off: Array<{ round: number; value: number }>): GoalEntry {
  const goal = 'run()→ready with encryption on ≤1.3× encryption off (cold start, 1,000 rooms)';
  const r = ratioOf(on, off);
  if (!Number.isFinite(r.ofMedians)) return goalEntry(goal, 'not measured (see failures)', 'not measured');
  return goalEntry(
    goal,
    `×${fmt(r.ofMedians, 2)}: ${fmt(summarize(on.map((x) => x.value)).median)} ms vs ${fmt(summarize(off.map((x) => x.value)).median)} ms (medians; per round ×${fmt(r.perRound.min, 2)}–×${fmt(r.perRound.max, 2)})`,
    ratioVerdict(r, 'lower', 1.3),
  );
}

/**
 * With `HALCYON_TRACE_STARTUP=1` in the bench's environment: Halcyon's start-up steps, median ms from the login's
 * start and the process's RSS then, per contender (a step's repeats are numbered: login's crypto store, then run's).
 */
function stepsMarkdown(samples: Sample[]): string[] {
  const traced = (['halcyon', 'halcyon-e2ee'] as const).filter((c) => samples.some((s) => s.contender === c && s.steps));
  if (traced.length === 0) return [];
  const out = [`**Where start-up goes** (\`HALCYON_TRACE_STARTUP=1\`): median ms from the login's start, and the process's RSS (MB) then; thread 0 is main.`, ''];
  for (const c of traced) {
    const byKey = new Map<string, { ms: number[]; rss: number[]; thread: number }>();
    for (const s of samples) {
      if (s.contender !== c || !s.steps) continue;
      const seen = new Map<string, number>();
      for (const st of s.steps) {
        const n = (seen.get(st.step) ?? 0) + 1;
        seen.set(st.step, n);
        const key = n > 1 ? `${st.step} (${n})` : st.step;
        const e = byKey.get(key) ?? { ms: [], rss: [], thread: st.thread };
        e.ms.push(st.ms);
        e.rss.push(st.rssMb);
        byKey.set(key, e);
      }
    }
    const rows = [...byKey].map(([step, e]) => ({ step, thread: e.thread, ms: summarize(e.ms).median, rss: summarize(e.rss).median })).sort((a, b) => a.ms - b.ms);
    out.push(`| ${LABEL[c]}: step | thread | ms | RSS (MB) |`, '|---|---|---|---|', ...rows.map((r) => `| ${r.step} | ${r.thread} | ${fmt(r.ms)} | ${fmt(r.rss)} |`), '');
  }
  return out;
}

const IDENTITY_NOTE =
  "Halcyon's figure is its identity login minus its plain login of the same round: it also creates the crypto store and uploads the device keys, " +
  "which matrix-js-sdk did before its clock started (its bootstrap runs on a started client).";

/** Per round: Halcyon's identity set-up (identity login − plain login) and matrix-js-sdk's bootstrap. */
function identitySeries(identity: IdentitySample[]) {
  return {
    halcyon: identity.map((s) => ({ round: s.round, value: s.identityLoginMs - s.plainLoginMs })).filter((x) => Number.isFinite(x.value)),
    jsSdk: identity.map((s) => ({ round: s.round, value: s.jsSdkBootstrapMs })).filter((x) => Number.isFinite(x.value)),
  };
}

function identityRatios(identity: IdentitySample[]): RatioEntry[] {
  const { halcyon, jsSdk } = identitySeries(identity);
  if (halcyon.length === 0 || jsSdk.length === 0) return [];
  return [{
    workload: 'coldstart', metric: 'identity set-up (cross-signing + secret storage + key backup)', versus: 'matrix-js-sdk', better: 'lower',
    ...ratioOf(halcyon, jsSdk), value: `${fmt(summarize(halcyon.map((x) => x.value)).median)} ms`, note: IDENTITY_NOTE,
  }];
}

function identityMarkdown(identity: IdentitySample[]): string[] {
  const col = (f: (s: IdentitySample) => number) => cell(summarize(identity.map(f).filter(Number.isFinite)));
  const { halcyon, jsSdk } = identitySeries(identity);
  const r = ratioOf(halcyon, jsSdk);
  const errors = identity.flatMap((s) => s.errors.map((e) => `round ${s.round + 1}: ${e}`));
  return [
    `**The bot's identity, once per data dir** (a real Synapse, fresh accounts every round; bench/identity.ts has the method). ${IDENTITY_NOTE} ` +
      `The backup upload runs the crypto actor's backup code on ${fmt(BACKUP_KEYS)} imported room keys, from the flush after the import until the backup counts them all. ` +
      'matrix-bot-sdk has no cross-signing, secret storage or key backup (matrix-bot-sdk#145). min / **median** / max, ms.',
    '',
    '| operation | Halcyon | matrix-js-sdk | Halcyon ÷ matrix-js-sdk |',
    '|---|---|---|---|',
    `| plain login (encryption off) | ${col((s) => s.plainLoginMs)} | | |`,
    `| login that creates the identity (cross-signing, secret storage, key backup) | ${col((s) => s.identityLoginMs)} | | |`,
    `| identity set-up alone | ${cell(summarize(halcyon.map((x) => x.value)))} | ${col((s) => s.jsSdkBootstrapMs)} | ${Number.isFinite(r.ofMedians) ? `×${fmt(r.ofMedians, 2)}` : 'n/a'} |`,
    `| key backup upload of ${fmt(BACKUP_KEYS)} room keys | ${col((s) => s.backupUploadMs)} | | |`,
    `| (importing those keys, not part of the upload) | ${col((s) => s.importMs)} | | |`,
    ...(errors.length ? ['', `**Failed parts:** ${errors.join('; ')}.`] : []),
  ];
}
