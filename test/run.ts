/**
 * `npm test`: builds, starts one Synapse for the whole run, runs every test file under node:test (through tsx)
 * with the homeserver shared via an environment variable, then stops Synapse. If Synapse cannot be installed or
 * started, the run fails with the reason: integration tests never skip silently.
 */
import { spawn } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { ensureNatsInstalled } from './harness/nats.ts';
import { SHARED_HS_ENV, startSynapse } from './harness/synapse.ts';

const root = join(import.meta.dirname, '..');

function testFiles(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...testFiles(p));
    else if (name.endsWith('.test.ts')) out.push(relative(root, p));
  }
  return out.sort();
}

/**
 * Files that take 20 s or more in a full run, longest first (a full run on two cores, December 2026: faults-kill
 * 149 s, faults-proxy 115 s, cluster-pacing 57 s, … memory-stream 24 s). They start before the rest: two files run
 * at a time, and a run that started one of them last would end on it alone while the other slot idled.
 */
const LONG_FIRST = ['faults-kill', 'faults-proxy', 'cluster-pacing', 'cluster-workers', 'unit/fuzz', 'cluster-handover', 'pack.test', 'cluster-nats-restart', '/actor-restart', 'gap.test', 'security.test', 'cluster-nats-outage', 'memory-stream', 'e2ee-hardening', 'integration/pacing'];
const rank = (f: string) => {
  const i = LONG_FIRST.findIndex((x) => f.includes(x));
  return i < 0 ? LONG_FIRST.length : i;
};

const filter = process.argv.slice(2);
const files = testFiles(join(root, 'test'))
  .filter((f) => filter.length === 0 || filter.some((x) => f.includes(x)))
  .sort((a, b) => rank(a) - rank(b));
// Given no files, `node --test` finds its own: every file under test/, fixtures too (record.ts re-recorded the sync
// fixtures when a filter matched nothing).
if (files.length === 0) {
  process.stderr.write(`npm test: no test file's path contains ${filter.map((x) => JSON.stringify(x)).join(' or ')}\n`);
  process.exit(2);
}

// On a fresh machine nats-server is built from source (`go install`, ~90 s): started now, beside Synapse's
// install, it is ready by the time the cluster files start (after the longest files). Left to the first cluster
// file's `before`, the build held two test slots idle for its whole length. A failed build is reported here and
// again by each cluster file, which tries it once more (the harness's lock lets one build at a time).
if (files.some((f) => f.includes('cluster'))) {
  ensureNatsInstalled().catch((err: unknown) => process.stderr.write(`[nats] the build started ahead failed: ${(err as Error).message}\n`));
}

let hs;
try {
  hs = await startSynapse();
} catch (err) {
  process.stderr.write(`\nnpm test: cannot start the Synapse test homeserver, so the integration tests cannot run.\n${(err as Error).message}\n`);
  process.exit(1);
}
process.stderr.write(`[test] Synapse ${hs.baseUrl} (data ${hs.dataDir}); ${files.length} test files\n`);
const code = await new Promise<number>((resolve) => {
  const child = spawn(process.execPath, ['--import', 'tsx', '--test', '--test-concurrency=2', '--test-timeout=240000', ...files], {
    cwd: root,
    stdio: 'inherit',
    env: {
      ...process.env,
      [SHARED_HS_ENV]: JSON.stringify({ baseUrl: hs.baseUrl, port: hs.port, dataDir: hs.dataDir, registrationSecret: hs.registrationSecret }),
    },
  });
  child.on('exit', (c, sig) => resolve(c ?? (sig ? 1 : 0)));
});
await hs.stop();
process.exit(code);
