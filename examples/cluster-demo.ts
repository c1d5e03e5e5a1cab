/**
 * `npm run demo:cluster`: one bot across four processes. Starts a local Synapse and a local nats-server (both built
 * into ~/.cache/halcyon on first use), runs the bot's ingest here and three workers as child processes (this file
 * again, with HALCYON_DEMO_WORKER set), has a scripted peer write in 20 rooms, and prints which worker handled
 * which room. Then it stops everything.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { Client } from '../src/index.ts';
import { startNats } from '../test/harness/nats.ts';
import { Peer } from '../test/harness/peer.ts';
import { startSynapse } from '../test/harness/synapse.ts';

const quiet = { debug() {}, info() {}, warn() {}, error: (o: unknown, m?: string) => process.stderr.write(`${m ?? ''} ${JSON.stringify(o)}\n`) };
const env = process.env;

if (env.HALCYON_DEMO_WORKER) {
  // A worker: the same handler API as a single-process bot; events come from the ingest through NATS.
  const dataDir = mkdtempSync(join(tmpdir(), 'halcyon-demo-worker-'));
  const worker = new Client({ dataDir, encryption: false, logger: quiet, cluster: { servers: env.HALCYON_DEMO_NATS!, name: 'demo', role: 'worker' } });
  worker.on('message', async (m) => {
    process.stdout.write(`${JSON.stringify({ room: m.room.name ?? m.roomId, body: m.body })}\n`);
    await m.reply(`worker ${env.HALCYON_DEMO_WORKER} handled "${m.body}"`);
  });
  const stop = () => void worker.stop().finally(() => rmSync(dataDir, { recursive: true, force: true })).then(() => process.exit(0));
  process.on('SIGTERM', stop);
  await worker.run(env.HALCYON_DEMO_TOKEN!);
  process.stdout.write('{"ready":true}\n');
} else {
  const say = (s: string) => process.stdout.write(s + '\n');
  say('Halcyon cluster demo: starting Synapse and nats-server (the first run builds them, which takes a few minutes)...');
  const [hs, nats] = await Promise.all([startSynapse({ log: (s) => say(`  [synapse] ${s}`) }), startNats()]);
  const dataDir = mkdtempSync(join(tmpdir(), 'halcyon-demo-ingest-'));
  const workers: ChildProcess[] = [];
  let ingest: Client | null = null;
  try {
    await hs.registerUser('clusterbot', 'demo-password');
    const token = await Client.login({ homeserver: hs.baseUrl, user: 'clusterbot', password: 'demo-password', dataDir, deviceName: 'demo' });
    ingest = new Client({ dataDir, encryption: false, logger: quiet, cluster: { servers: nats.url, name: 'demo', role: 'ingest', partitions: 8 } });
    await ingest.run(token);
    say(`Synapse at ${hs.baseUrl}, NATS at ${nats.url}; the ingest (this process) is ready.`);

    const handled = new Map<string, string[]>();
    const ready = [1, 2, 3].map((n) => {
      const child = spawn(process.execPath, ['--import', 'tsx', import.meta.filename], {
        env: { ...env, HALCYON_DEMO_WORKER: String(n), HALCYON_DEMO_NATS: nats.url, HALCYON_DEMO_TOKEN: token },
        stdio: ['ignore', 'pipe', 'inherit'],
      });
      workers.push(child);
      return new Promise<void>((resolve) =>
        createInterface({ input: child.stdout! }).on('line', (line) => {
          const o = JSON.parse(line) as { ready?: true; room?: string; body?: string };
          if (o.ready) return resolve();
          if (!handled.has(o.room!)) handled.set(o.room!, []);
          handled.get(o.room!)!.push(`${o.body!.replace('hello ', '')} → worker ${n}`);
        }),
      );
    });
    await Promise.all(ready);
    say('Three workers are ready.\n');

    const alice = new Peer(hs.baseUrl, await hs.registerUser('alice'));
    const me = ingest.whoami().userId;
    const rooms = await Promise.all(Array.from({ length: 20 }, (_, i) => alice.createRoom({ name: `room ${String(i + 1).padStart(2)}`, invite: [me] })));
    await Promise.all(rooms.map((r) => alice.waitForJoined(r, me, 30_000)));
    say('alice writes three messages in each of 20 rooms...');
    await Promise.all(rooms.map(async (r) => {
      for (let i = 1; i <= 3; i++) await alice.sendText(r, `hello #${i}`);
    }));
    let replies = 0;
    await alice.waitFor((ev) => ev.type === 'm.room.message' && ev.sender === me && ++replies === rooms.length * 3, 60_000);
    say('\nWho handled what: a room\'s events go one at a time, in order, to whichever worker pulls its partition:');
    for (const [room, seq] of [...handled].sort()) say(`  ${room}: ${seq.join(', ')}`);
  } finally {
    for (const w of workers) w.kill('SIGTERM');
    await Promise.all(workers.map((w) => new Promise((r) => (w.exitCode !== null ? r(null) : w.once('exit', r)))));
    await ingest?.stop();
    await Promise.all([nats.stop(), hs.stop()]);
    rmSync(dataDir, { recursive: true, force: true });
  }
  say('\nDone.');
}
