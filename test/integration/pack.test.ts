/**
 * The published package works: `npm pack` (whose prepack builds) gives a tarball with the right files; installed
 * into a fresh project, `import 'halcyon-matrix'` logs a bot in, runs a Client on worker threads (so the worker
 * bundles resolve from the installed package), receives a peer's message, replies and stops.
 *
 * The pack runs in a snapshot of the work tree (node_modules linked, not copied), not in the tree itself: prepack
 * deletes and rebuilds dist/, which would pull dist/ from under test files running at the same time (the
 * runner runs two files at once, and cli.test.ts runs dist/cli.js).
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative, sep } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Peer } from '../harness/peer.ts';
import { testHomeserver, type Homeserver } from '../harness/synapse.ts';

const ROOT = join(import.meta.dirname, '..', '..');
const BIN = join(ROOT, 'node_modules', '.bin');

let hs: Homeserver;
let tmp: string;

before(async () => {
  hs = await testHomeserver();
  tmp = mkdtempSync(join(tmpdir(), 'halcyon-pack-'));
}, { timeout: 300_000 });

after(async () => {
  if (tmp) rmSync(tmp, { recursive: true, force: true });
  await hs?.stop();
});

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/**
 * The environment for npm and node children: Node 24 first on PATH, and none of the npm_* variables an outer
 * `npm test` sets (npm_config_local_prefix and friends would point the inner npm at the work tree).
 */
function childEnv(): NodeJS.ProcessEnv {
  const keep = new Set(['npm_config_cache', 'npm_config_registry', 'npm_config_userconfig', 'npm_config_globalconfig']);
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.toLowerCase().startsWith('npm_') || keep.has(k.toLowerCase())) env[k] = v;
  env.PATH = `${BIN}:${process.env.PATH ?? ''}`;
  delete env.HALCYON_TEST_HS;
  delete env.NODE_OPTIONS; // no tsx loader in the consumer: it must run plain JavaScript
  return env;
}

function exec(cmd: string, args: string[], cwd: string, timeoutMs: number, env: NodeJS.ProcessEnv = childEnv()): Promise<Run> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    p.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => {
      p.kill('SIGKILL');
      reject(new Error(`${cmd} ${args.join(' ')} did not finish within ${timeoutMs} ms\n--- stdout\n${stdout}\n--- stderr\n${stderr}`));
    }, timeoutMs);
    p.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    p.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

const show = (what: string, r: Run) => `${what} exited ${r.code}\n--- stdout\n${r.stdout.slice(-4000)}\n--- stderr\n${r.stderr.slice(-4000)}`;

/** The consumer's bot script: plain ESM, run with Node 24, no loader. Reads its inputs from the environment. */
const BOT_SCRIPT = String.raw`
import { Client } from 'halcyon-matrix';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const { HS, BOT_USER, BOT_PASSWORD, PEER_ID, PEER_TOKEN, ROOM_ID } = process.env;
const watchdog = setTimeout(() => { console.error('bot script: no result within 120 s'); process.exit(3); }, 120_000);
const enc = encodeURIComponent;
const deadline = (ms) => Date.now() + ms;
const pause = (ms) => new Promise((r) => setTimeout(r, ms));

async function peer(method, path, body) {
  const res = await fetch(HS + '/_matrix/client/v3' + path, {
    method,
    headers: { authorization: 'Bearer ' + PEER_TOKEN, ...(body ? { 'content-type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
    signal: AbortSignal.timeout(20_000),
  });
  const data = await res.json();
  if (!res.ok) throw new Error(method + ' ' + path + ' -> ' + res.status + ' ' + JSON.stringify(data));
  return data;
}

/** Polls cond() every 100 ms until it returns a value, or throws after ms. */
async function until(what, ms, cond) {
  const end = deadline(ms);
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > end) throw new Error('timed out waiting for ' + what);
    await pause(100);
  }
}

const dataDir = mkdtempSync(join(tmpdir(), 'halcyon-consumer-'));
const result = { resolved: import.meta.resolve('halcyon-matrix') };
let client;
try {
  const token = await Client.login({ homeserver: HS, user: BOT_USER, password: BOT_PASSWORD, dataDir });
  client = new Client({ dataDir, threads: 'worker', pollTimeoutMs: 2_000 });
  const errors = [];
  client.on('error', (e) => errors.push(e.code + ': ' + e.message));
  let gotMessage;
  const got = new Promise((resolve) => (gotMessage = resolve));
  client.on('message', async (m) => {
    if (m.sender !== PEER_ID) return;
    const replyId = await m.reply('pong: ' + m.body);
    gotMessage({ body: m.body, eventId: m.eventId, roomId: m.roomId, replyId });
  });
  await client.run(token);
  result.whoami = client.whoami();

  // The invite came with the first sync and the bot joins on its own; then the peer talks.
  await until('the bot to join', 30_000, async () => (await peer('GET', '/rooms/' + enc(ROOM_ID) + '/joined_members')).joined?.[result.whoami.userId]);
  const sent = await peer('PUT', '/rooms/' + enc(ROOM_ID) + '/send/m.room.message/pack' + Date.now(), { msgtype: 'm.text', body: 'ping from the peer' });
  result.pingId = sent.event_id;
  result.received = await Promise.race([got, pause(30_000).then(() => { throw new Error('the bot never got the message'); })]);

  // The peer sees the bot's reply.
  const reply = await until("the bot's reply", 30_000, async () => {
    const page = await peer('GET', '/rooms/' + enc(ROOM_ID) + '/messages?dir=b&limit=50');
    return page.chunk.find((e) => e.event_id === result.received.replyId);
  });
  result.reply = { sender: reply.sender, body: reply.content.body, inReplyTo: reply.content['m.relates_to']?.['m.in_reply_to']?.event_id };
  result.rooms = (await client.listRooms()).map((r) => r.roomId);
  await client.stop();
  client = undefined;
  result.errors = errors;
  result.ok = true;
} catch (e) {
  result.ok = false;
  result.error = (e && e.code ? e.code + ': ' : '') + (e && e.message ? e.message : String(e));
} finally {
  await client?.stop().catch(() => {});
  rmSync(dataDir, { recursive: true, force: true });
  clearTimeout(watchdog);
}
console.log('RESULT ' + JSON.stringify(result));
`;

test('npm pack gives an installable package whose Client runs on worker threads', { timeout: 900_000 }, async () => {
  // 1. Pack a snapshot of the work tree; prepack builds dist/ in the snapshot.
  const snapshot = join(tmp, 'tree');
  const skip = new Set(['node_modules', 'dist', '.git']);
  cpSync(ROOT, snapshot, {
    recursive: true,
    filter: (src) => {
      const rel = relative(ROOT, src);
      const top = rel.split(sep)[0] ?? '';
      return !skip.has(top) && !(rel === top && top.endsWith('.tgz'));
    },
  });
  symlinkSync(join(ROOT, 'node_modules'), join(snapshot, 'node_modules'), 'dir');
  const packDir = join(tmp, 'pack');
  mkdirSync(packDir);
  const pack = await exec('npm', ['pack', '--pack-destination', packDir], snapshot, 300_000);
  assert.equal(pack.code, 0, show('npm pack', pack));
  assert.match(pack.stdout + pack.stderr, /built dist\//, `prepack did not build\n${show('npm pack', pack)}`);
  const tarballs = readdirSync(packDir).filter((f) => f.endsWith('.tgz'));
  assert.deepEqual(tarballs, ['halcyon-matrix-0.1.0.tgz'], show('npm pack', pack));
  const tarball = join(packDir, tarballs[0]!);

  // 2. The tarball holds the build and the README, and no sources or tests.
  const list = await exec('tar', ['-tzf', tarball], tmp, 60_000);
  assert.equal(list.code, 0, show('tar -tzf', list));
  const files = list.stdout.split('\n').filter(Boolean).map((f) => f.replace(/^package\//, ''));
  const want = ['package.json', 'dist/index.js', 'dist/workers/sync.js', 'dist/workers/crypto.js', 'dist/cli.js', 'dist/types/index.d.ts'];
  if (existsSync(join(ROOT, 'README.md'))) want.push('README.md');
  for (const f of want) assert.ok(files.includes(f), `the tarball lacks ${f}; it has:\n${files.join('\n')}`);
  const forbidden = files.filter((f) => /^(src|test|workers|bench|scripts|examples)\//.test(f) || f === 'esbuild.mjs' || f.startsWith('node_modules/'));
  assert.deepEqual(forbidden, [], 'the tarball ships files it should not');

  // 3. A fresh project installs it (runtime dependencies from the npm cache or registry).
  const consumer = join(tmp, 'consumer');
  mkdirSync(consumer);
  const init = await exec('npm', ['init', '-y'], consumer, 60_000);
  assert.equal(init.code, 0, show('npm init -y', init));
  const pkgPath = join(consumer, 'package.json');
  writeFileSync(pkgPath, JSON.stringify({ ...JSON.parse(readFileSync(pkgPath, 'utf8')), type: 'module' }, null, 2));
  const install = await exec('npm', ['install', tarball, '--prefer-offline', '--no-audit', '--no-fund'], consumer, 600_000);
  assert.equal(install.code, 0, show('npm install', install));
  const installed = join(consumer, 'node_modules', 'halcyon-matrix');
  for (const dep of ['undici', 'comlink', 'piscina', 'lru-cache']) {
    assert.ok(existsSync(join(consumer, 'node_modules', dep, 'package.json')), `runtime dependency ${dep} was not installed`);
  }
  for (const f of ['dist/workers/sync.js', 'dist/workers/crypto.js']) assert.ok(existsSync(join(installed, f)), `installed package lacks ${f}`);
  // Published declarations import .js, not the sources' .ts.
  const dts = readdirSync(join(installed, 'dist', 'types'), { recursive: true }).map(String).filter((f) => f.endsWith('.d.ts'));
  assert.ok(dts.length > 0);
  for (const f of dts) {
    const text = readFileSync(join(installed, 'dist', 'types', f), 'utf8');
    assert.doesNotMatch(text, /from\s+'\.{1,2}\/[^']+\.ts'/, `dist/types/${f} imports a .ts path`);
  }
  // The bin is installed and runs.
  assert.ok(existsSync(join(consumer, 'node_modules', '.bin', 'halcyon')), 'the halcyon bin was not linked');
  const help = await exec(process.execPath, [join(installed, 'dist', 'cli.js'), 'help'], consumer, 30_000);
  assert.equal(help.code, 0, show('halcyon help', help));
  assert.match(help.stdout, /halcyon login/);

  // 4. A plain .mjs bot in the consumer logs in, runs on worker threads, gets a message and replies.
  const bot = await hs.registerUser();
  const alice = await hs.registerUser();
  const peer = new Peer(hs.baseUrl, alice);
  const roomId = await peer.createRoom({ invite: [bot.userId], name: 'pack test' });
  writeFileSync(join(consumer, 'bot.mjs'), BOT_SCRIPT);
  const env = { ...childEnv(), HS: hs.baseUrl, BOT_USER: bot.localpart, BOT_PASSWORD: bot.password, PEER_ID: alice.userId, PEER_TOKEN: alice.accessToken, ROOM_ID: roomId };
  const run = await exec(process.execPath, ['bot.mjs'], consumer, 180_000, env);
  const line = run.stdout.split('\n').find((l) => l.startsWith('RESULT '));
  assert.ok(line, show('node bot.mjs', run));
  const result = JSON.parse(line.slice('RESULT '.length)) as {
    ok: boolean;
    error?: string;
    resolved: string;
    whoami: { userId: string; deviceId: string; homeserver: string };
    pingId: string;
    received: { body: string; eventId: string; roomId: string; replyId: string };
    reply: { sender: string; body: string; inReplyTo?: string };
    rooms: string[];
    errors: string[];
  };
  assert.equal(result.ok, true, `${result.error}\n${show('node bot.mjs', run)}`);
  assert.equal(run.code, 0, show('node bot.mjs', run));
  // It used the installed package, not the work tree.
  assert.equal(result.resolved, pathToFileURL(join(installed, 'dist', 'index.js')).href);
  assert.equal(result.whoami.userId, bot.userId);
  assert.equal(result.whoami.homeserver, hs.baseUrl);
  assert.deepEqual(result.received, { body: 'ping from the peer', eventId: result.pingId, roomId, replyId: result.received.replyId });
  assert.equal(result.reply.sender, bot.userId);
  assert.equal(result.reply.body.endsWith('pong: ping from the peer'), true, result.reply.body);
  assert.equal(result.reply.inReplyTo, result.pingId);
  assert.ok(result.rooms.includes(roomId));
  assert.deepEqual(result.errors, []);
  // The peer sees the reply too, through its own sync.
  const seen = await peer.waitFor((ev, rid) => rid === roomId && ev.event_id === result.received.replyId, 20_000);
  assert.equal(seen.sender, bot.userId);
});
