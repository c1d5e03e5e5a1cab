/** Client lifecycle: run/stop state rules, stop draining handlers, stop bounded by stopTimeoutMs, stop during start. */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test, type TestContext } from 'node:test';
import { pathToFileURL } from 'node:url';
import { HalcyonError, type Message } from '../../src/index.ts';
import { testHomeserver, withTimeout, type Homeserver } from '../harness/synapse.ts';
import { deferred, newBot, newClient, newPeer, roomWithBot, tempDataDir, WAIT_MS, waitUntil } from './util.ts';

let hs: Homeserver;
before(async () => {
  hs = await testHomeserver();
});
after(async () => {
  await hs?.stop();
});

const repoRoot = join(import.meta.dirname, '..', '..');

test('run twice rejects with HALCYON_ALREADY_RUNNING; stop is idempotent; a stopped client cannot send', async (t) => {
  const bot = await newBot(t, hs);
  await bot.client.run(bot.token);
  await assert.rejects(bot.client.run(bot.token), (e: HalcyonError) => e.code === 'HALCYON_ALREADY_RUNNING');
  assert.equal(bot.client.whoami().userId, bot.user.userId, 'the first run is unaffected');
  await bot.client.stop();
  await bot.client.stop();
  await assert.rejects(bot.client.sendMessage('!x:localhost', 'hi'), (e: HalcyonError) => e.code === 'HALCYON_NOT_RUNNING');
  await assert.rejects(bot.client.run(bot.token), (e: HalcyonError) => e instanceof HalcyonError, 'a stopped client does not run again');
});

test('stop() lets a running handler finish (it can still send), and its event is not redelivered after a restart', async (t) => {
  const bot = await newBot(t, hs);
  const peer = await newPeer(hs);
  const gate = deferred();
  const order: string[] = [];
  let entered = false;
  let replyId: string | undefined;
  bot.client.on('message', async (m: Message) => {
    entered = true;
    await gate.promise;
    replyId = await m.reply('finished during stop');
    order.push('handler finished');
  });
  await bot.client.run(bot.token);
  const roomId = await roomWithBot(peer, bot.user.userId);
  const slowId = await peer.sendText(roomId, 'slow');
  await waitUntil(() => entered, WAIT_MS, 'the handler to start');

  const stopping = bot.client.stop().then(() => order.push('stop resolved'));
  await new Promise<void>((r) => setImmediate(r));
  gate.resolve();
  await withTimeout(stopping, WAIT_MS, 'stop() to resolve after the handler finished');
  assert.deepEqual(order, ['handler finished', 'stop resolved']);
  const reply = await peer.waitFor((ev, rid, section) => section === 'timeline' && rid === roomId && ev.event_id === replyId, WAIT_MS);
  assert.equal(reply.content['m.relates_to']['m.in_reply_to'].event_id, slowId);

  // The event was handled, so its sync token was saved: a new run does not deliver it again.
  const second = newClient(t, bot.dataDir);
  const seen: string[] = [];
  second.on('message', (m) => void seen.push(m.eventId));
  await second.run(bot.token);
  const nextId = await peer.sendText(roomId, 'next');
  await waitUntil(() => seen.includes(nextId), WAIT_MS, "the restarted client's next message");
  assert.deepEqual(seen, [nextId], 'the message handled before stop() is not redelivered');
  assert.deepEqual(bot.errors, []);
});

test('stop() returns within about stopTimeoutMs while a handler hangs; the unfinished event is redelivered by the next run', async (t) => {
  const stopTimeoutMs = 1000;
  const bot = await newBot(t, hs, { stopTimeoutMs });
  const peer = await newPeer(hs);
  const gate = deferred();
  let entered = false;
  bot.client.on('message', async () => {
    entered = true;
    await gate.promise;
  });
  await bot.client.run(bot.token);
  const roomId = await roomWithBot(peer, bot.user.userId);
  const stuckId = await peer.sendText(roomId, 'stuck');
  await waitUntil(() => entered, WAIT_MS, 'the handler to start');
  const t0 = Date.now();
  const stopping = bot.client.stop();
  try {
    // Bound: stopTimeoutMs plus generous slack for the actors to end.
    await withTimeout(stopping, stopTimeoutMs + 9000, `stop() with stopTimeoutMs=${stopTimeoutMs} while a handler never finishes`);
    t.diagnostic(`stop() took ${Date.now() - t0} ms`);
  } finally {
    gate.resolve(); // let the stuck handler (and the stop it may block) finish before anything else
    await stopping;
  }

  const second = newClient(t, bot.dataDir);
  const seen: string[] = [];
  second.on('message', (m) => void seen.push(m.eventId));
  await second.run(bot.token);
  await waitUntil(() => seen.includes(stuckId), WAIT_MS, 'the unfinished event to be redelivered after the restart');
  assert.equal(seen[0], stuckId);
});

/**
 * Runs, in a child process, a client whose stop() is called right after run() (while run is still starting),
 * and reports how run() settled. The process must then exit by itself: anything left running (workers, polls)
 * would keep it alive. Returns the report, or `exited: false` when it had to be killed.
 */
async function stopDuringStart(t: TestContext, threads: 'worker' | 'inline', token: string, dataDir: string) {
  const script = join(tempDataDir(t), 'stop-during-start.mjs');
  writeFileSync(script, `
    import { Client } from ${JSON.stringify(pathToFileURL(join(repoRoot, 'src', 'index.ts')).href)};
    const client = new Client({ dataDir: process.env.HC_DIR, threads: process.env.HC_THREADS, pollTimeoutMs: 2000, logger: { debug() {}, info() {}, warn() {}, error() {} } });
    const running = client.run(process.env.HC_TOKEN);
    await client.stop();
    const report = await running.then(
      () => ({ settled: 'resolved' }),
      (e) => ({ settled: 'rejected', code: e?.code ?? null, name: e?.name, message: e?.message }),
    );
    process.stdout.write(JSON.stringify(report) + '\\n');`);
  const child = spawn(process.execPath, ['--import', 'tsx', script], {
    cwd: repoRoot,
    env: { ...process.env, HC_DIR: dataDir, HC_THREADS: threads, HC_TOKEN: token },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (err += d));
  const exit = new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
  let exited = true;
  try {
    // From the spawn, so tsx's start-up on a busy machine counts too; a process something keeps alive never exits.
    await withTimeout(exit, 30_000, 'the child process to exit after stop()');
  } catch {
    exited = false;
    child.kill('SIGKILL');
    await exit;
  }
  const line = out.trim().split('\n').filter(Boolean).pop();
  return { exited, report: line ? (JSON.parse(line) as { settled: string; code?: string | null; name?: string; message?: string }) : null, stderr: err };
}

for (const threads of ['worker', 'inline'] as const) {
  test(`stop() right after run() (threads: ${threads}): run rejects with HALCYON_STOPPED and nothing keeps running`, async (t) => {
    const bot = await newBot(t, hs, { threads });
    const { exited, report, stderr } = await stopDuringStart(t, threads, bot.token, bot.dataDir);
    assert.ok(report, `the child reported nothing; stderr:\n${stderr}`);
    const problems: string[] = [];
    if (report.settled !== 'rejected' || report.code !== 'HALCYON_STOPPED') {
      problems.push(
        `run() should reject with HALCYON_STOPPED when stop() is called while it starts; it ${report.settled}` +
          (report.settled === 'rejected' ? ` with ${report.name} code=${report.code}: ${report.message}` : ''),
      );
    }
    if (!exited) problems.push('after stop() and run() had settled, the process did not exit within 10 s: what run() started was left running');
    assert.deepEqual(problems, []);
    // The data dir is still usable afterwards.
    await bot.client.run(bot.token);
    assert.equal(bot.client.whoami().userId, bot.user.userId);
  });
}
