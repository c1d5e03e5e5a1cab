/**
 * Workload 7, decryption (E2EE): decrypted events/s of a Halcyon bot against matrix-js-sdk (same crypto-wasm engine)
 * and a raw `OlmMachine.decryptRoomEvent` loop on replayed megolm events, plus Halcyon's /sync cadence during an
 * encrypted burst; the measurements are bench/crypto.ts's (its module comment has the method).
 * @module
 */
import { cryptoBench, cryptoMarkdown, type CryptoThroughputSample, type ThroughputContender } from '../crypto.ts';
import { goalEntry, ratioOf, ratioVerdict, type Contender, type GoalEntry, type RatioEntry, type Workload } from '../report.ts';
import { fmt, summarize } from '../stats.ts';

const GOAL = 'E2EE ≥ 0.9× the raw loop (alone, in a process of its own)';

/** Runs workload 7: `ctx.rounds` rounds of the throughput run (3 contenders) and of the cadence bursts. */
export const run: Workload = async (ctx) => {
  // Sized so the whole workload takes about 1.5 min with --quick and 6 min by default (both parts, 5 rounds).
  const r = await cryptoBench({
    rounds: ctx.rounds,
    jsSdkRounds: ctx.sideRounds,
    events: ctx.quick ? 2_000 : 3_000,
    warmup: 500,
    perBody: 100,
    cadencePerBody: 50,
    cadenceReleaseEveryMs: 25,
    gc: ctx.gc,
    progress: ctx.progress,
  });
  const samples = r.throughput?.samples ?? [];
  const values = (c: ThroughputContender) => samples.filter((s: CryptoThroughputSample) => s.contender === c && !s.error).map((s) => ({ round: s.round, value: s.eventsPerSec }));
  const halcyon = values('bot');
  const versus: Array<[ThroughputContender, Contender]> = [
    ['raw', 'raw'],
    ['jssdk', 'matrix-js-sdk'],
  ];
  const value = `${fmt(summarize(halcyon.map((x) => x.value)).median)} events/s`;
  const notes: Partial<Record<ThroughputContender, string>> = {
    raw: 'The raw loop decrypts event texts already in memory (no /sync, no dispatch), alone in a process of its own.',
    jssdk: "matrix-js-sdk's crypto store is in memory (nothing persisted or encrypted at rest); Halcyon's is persisted and passphrase-encrypted.",
  };
  const ratios: RatioEntry[] = versus
    .filter(([c]) => values(c).length > 0)
    .map(([c, name]) => ({ workload: 'e2ee', metric: 'decrypted events/s', versus: name, ...ratioOf(halcyon, values(c)), better: 'higher', value, note: notes[c] }));
  const vsRaw = ratios.find((x) => x.versus === 'raw');
  const goals: GoalEntry[] = [
    vsRaw && Number.isFinite(vsRaw.ofMedians)
      ? goalEntry(GOAL, `×${fmt(vsRaw.ofMedians, 2)} (per round ${fmt(vsRaw.perRound.min, 2)}–${fmt(vsRaw.perRound.max, 2)})`, ratioVerdict(vsRaw, 'higher', 0.9))
      : goalEntry(GOAL, 'not measured (see failures)', 'not measured'),
  ];
  return { id: 'e2ee', title: '7. Decryption (E2EE)', ratios, goals, markdown: cryptoMarkdown(r, false), data: r };
};
