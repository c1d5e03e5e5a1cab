/**
 * Runs one workload module alone and prints its report: `node --import tsx bench/workload.ts NAME [--quick] [--rounds N] [--soak SECONDS]`
 * (NAME is a file in bench/workloads/ without `.ts`). `npm run bench` runs them all through bench/run.ts.
 * @module
 */
import { parseArgs } from 'node:util';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { DEFAULT_SIDE_ROUNDS, verdictOf, type Workload } from './report.ts';

const { values, positionals } = parseArgs({ allowPositionals: true, options: { quick: { type: 'boolean', default: false }, rounds: { type: 'string' }, soak: { type: 'string' } } });
const name = positionals[0];
if (!name) throw new Error('usage: bench/workload.ts NAME [--quick] [--rounds N] [--soak SECONDS]');
setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;
const { run } = (await import(`./workloads/${name}.ts`)) as { run: Workload };
const soakSeconds = values.soak !== undefined ? Number(values.soak) : undefined;
if (soakSeconds !== undefined && !(soakSeconds > 0)) throw new Error(`--soak must be a number of seconds, not ${values.soak}`);
const rounds = values.rounds ? Number(values.rounds) : values.quick ? 2 : 5;
const report = await run({ quick: values.quick, rounds, sideRounds: Math.min(rounds, DEFAULT_SIDE_ROUNDS), gc, progress: (l) => console.log(l), ...(soakSeconds !== undefined ? { soakSeconds } : {}) });
console.log(`\n## ${report.title}\n\n${report.markdown.join('\n')}\n`);
for (const r of report.ratios) console.log(`ratio ${r.metric} ÷ ${r.versus}: ×${r.ofMedians.toFixed(2)} (rounds ${r.perRound.min.toFixed(2)}–${r.perRound.max.toFixed(2)}; ${r.better} is better)`);
for (const g of report.goals) console.log(`goal ${verdictOf(g).toUpperCase()}: ${g.goal} — ${g.actual}`);
process.exit(0);
