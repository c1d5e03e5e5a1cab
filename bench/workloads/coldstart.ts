/**
 * Workload 4, cold start with 1,000 rooms: each contender, in a fresh process of its own, logs in with a password
 * on a replay server whose first `/sync` is a Synapse-shaped initial sync of 1,000 joined rooms (~10 MB), and
 * starts until ready (its first sync processed); the time from the login's start to ready and the process's peak
 * RSS are reported, and the floor's `JSON.parse` of the body alone.
 * @module
 */
import { goalEntry, ratioOf, roundsVerdict, type Contender, type GoalEntry, type RatioEntry, type Workload } from '../report.ts';
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
      const order = round % 2 === 0 ? contenders : [...contenders].reverse();
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

  const ok = (c: ChildContender) => samples.filter((s) => s.contender === c && s.ok);
  const series = (c: ChildContender, k: 'readyMs' | 'peakRssMb') => ok(c).map((s) => ({ round: s.round, value: s[k] }));
  const sum = (c: ChildContender, k: 'readyMs' | 'peakRssMb' | 'loginMs' | 'importRssMb' | 'parseMs') => summarize(ok(c).map((s) => s[k] ?? NaN).filter(Number.isFinite));

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
    goalEntry(
      '≤150 MB RSS (cold start, peak)',
      `${fmt(rss)} MB peak (median; rounds ${fmt(sum('halcyon', 'peakRssMb').min)}–${fmt(sum('halcyon', 'peakRssMb').max)}; E2EE on: ${fmt(rssE2ee)} MB; the harness alone — node, tsx, the child script — is ~${fmt(sum('floor', 'importRssMb').median)} MB with undici loaded)`,
      roundsVerdict(ok('halcyon').map((s) => s.peakRssMb <= 150)),
    ),
  ];

  const failed = samples.filter((s) => !s.ok);
  const markdown = [
    `Each contender runs in a fresh process of its own (\`node --expose-gc --import tsx\`, modules loaded before the clock starts): it logs in with a password (\`m.login.password\`) on the replay server, whose first \`/sync\` is a Synapse-shaped initial sync of ${fmt(ROOMS)} joined rooms (${fmt(bodyBytes / 1e6, 1)} MB: per room create, power levels, join rules, history visibility, guest access, name/topic/alias/avatar for some, 6 members, 14 messages, summary, unread counts; push rules at the top), and starts until ready: Halcyon \`Client.login\` then \`run(token)\` resolved; the floor an undici login, one \`GET /sync\`, \`JSON.parse\`, a walk over every room's events; matrix-bot-sdk \`MatrixAuth.passwordLogin\`, \`start()\` and its first \`processSync\` done (\`start()\` itself resolves before the first sync); matrix-js-sdk \`loginRequest\`, \`startClient\` and \`PREPARED\`. Halcyon runs with encryption off like the peers (none loads a crypto stack here); "E2EE on" is its default configuration, for reference. ${NOTE} Peak RSS is the whole process's (\`process.resourceUsage().maxRSS\`: main thread, workers, native), up to ready; "after imports" is the RSS before the login (node + tsx + the library). ${ctx.rounds} rounds, contenders alternating order; min / **median** / max.`,
    '',
    '| contender | login→ready (ms) | peak RSS (MB) | login (ms) | RSS after imports (MB) |',
    '|---|---|---|---|---|',
    ...contenders.map((c) => `| ${LABEL[c]} | ${cell(sum(c, 'readyMs'))} | ${cell(sum(c, 'peakRssMb'))} | ${cell(sum(c, 'loginMs'))} | ${cell(sum(c, 'importRssMb'))} |`),
    `| floor: \`JSON.parse\` of the body alone | ${cell(sum('floor', 'parseMs'))} | | | |`,
    ...(failed.length ? ['', `**Failed runs:** ${failed.map((s) => `round ${s.round + 1}: ${s.error}`).join('; ')}.`] : []),
  ];

  return {
    id: 'coldstart',
    title: `4. Cold start with ${fmt(ROOMS)} rooms`,
    ratios,
    goals,
    markdown,
    data: { rooms: ROOMS, bodyBytes, contenders, samples },
  };
};
