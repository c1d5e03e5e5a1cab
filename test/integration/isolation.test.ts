/**
 * Handler isolation: a handler that blocks the main thread's CPU must not stop the sync actor (a worker thread)
 * from long-polling. The bot talks to Synapse through a logging proxy that runs in a child process (this test's
 * thread is blocked, so nothing here could serve or record anything meanwhile); the proxy child also sends the
 * peer's messages during the block.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client, type HalcyonError, type Logger } from '../../src/index.ts';
import { Peer } from '../harness/peer.ts';
import { testHomeserver, withTimeout, type Homeserver } from '../harness/synapse.ts';
import { startLoggingProxy, type LoggingProxy, type ProxyRecord } from '../helpers/logging-proxy.ts';

const BLOCK_MS = 3_000;
const COUNT = 5;

let hs: Homeserver;

before(async () => {
  hs = await testHomeserver();
}, { timeout: 300_000 });

after(async () => {
  await hs?.stop();
});

function deferred<T = void>() {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

/** Keeps warnings for the failure message instead of printing them. */
function capturingLogger(lines: string[]): Logger {
  const put = (level: string) => (obj: unknown, msg?: string) => {
    lines.push(`${level}: ${msg ?? ''} ${obj instanceof Error ? obj.message : JSON.stringify(obj)}`);
  };
  return { debug: () => {}, info: () => {}, warn: put('warn'), error: put('error') };
}

test('the sync actor keeps polling while a handler blocks the main thread; the messages sent meanwhile arrive in order', { timeout: 120_000 }, async () => {
  const dataDir = mkdtempSync(join(tmpdir(), 'halcyon-isolation-'));
  let proxy: LoggingProxy | undefined;
  let client: Client | undefined;
  try {
    proxy = await startLoggingProxy(hs.baseUrl);
    const px = proxy;
    const bot = await hs.registerUser();
    const alice = await hs.registerUser();
    const peer = new Peer(hs.baseUrl, alice);

    // Everything the bot does goes through the proxy, the login included.
    const token = await Client.login({ homeserver: px.url, user: bot.localpart, password: bot.password });
    const logLines: string[] = [];
    const errors: HalcyonError[] = [];
    const syncErrors: string[] = [];
    client = new Client({ dataDir, pollTimeoutMs: 1_000, threads: 'worker', logger: capturingLogger(logLines) });
    client.on('error', (e) => void errors.push(e));
    client.on('syncError', (e, info) => void syncErrors.push(`${e.code} attempt ${info.attempt}: ${e.message}`));

    let blockStart = 0;
    let blockEnd = 0;
    const blocked = deferred();
    const received: { body: string; eventId: string; at: number }[] = [];
    const allReceived = deferred();
    client.on('message', async (m) => {
      if (m.sender !== alice.userId) return;
      if (m.body === 'block') {
        // The child sends the peer's messages on its own clock, ~300 ms into the block, ~200 ms apart.
        await px.sendMessages({ roomId: m.roomId, accessToken: alice.accessToken, count: COUNT, startDelayMs: 300, spacingMs: 200, prefix: 'm' });
        blockStart = Date.now();
        const end = blockStart + BLOCK_MS;
        while (Date.now() < end) {
          // Busy-wait: the main thread's event loop is fully blocked.
        }
        blockEnd = Date.now();
        blocked.resolve();
        return;
      }
      received.push({ body: m.body, eventId: m.eventId, at: Date.now() });
      if (received.length === COUNT) allReceived.resolve();
    });

    await withTimeout(client.run(token), 60_000, 'client.run');
    const roomId = await peer.createRoom({ invite: [bot.userId], name: 'isolation' });
    await peer.waitForJoined(roomId, bot.userId, 30_000);
    await peer.sendText(roomId, 'block');

    await withTimeout(blocked.promise, 30_000, 'the "block" message to reach the handler');
    const sent = await withTimeout(px.sentDone(), 30_000, 'the proxy child to send the peer messages');
    const diag = () =>
      `\nreceived: ${JSON.stringify(received.map((r) => r.body))}\nerrors: ${errors.map((e) => `${e.code} ${e.message}`).join('; ')}` +
      `\nsyncErrors: ${syncErrors.join('; ')}\nlog: ${logLines.join('\n')}`;
    await withTimeout(allReceived.promise, 30_000, `all ${COUNT} messages to reach the handler`).catch((e: Error) => {
      throw new Error(e.message + diag());
    });

    // The messages really were sent while main was blocked.
    assert.equal(sent.length, COUNT);
    for (const s of sent) {
      assert.equal(s.error, undefined, `send of ${s.body} failed: ${s.error}`);
      assert.ok(s.sentAt >= blockStart && s.answeredAt <= blockEnd, `${s.body} was sent at ${s.sentAt - blockStart} ms, answered at ${s.answeredAt - blockStart} ms, not inside the ${blockEnd - blockStart} ms block`);
    }
    assert.ok(blockEnd - blockStart >= BLOCK_MS);

    const log = await px.log();
    const describe = (r: ProxyRecord) =>
      `#${r.n} ${r.method} ${r.path}${r.syncTimeout !== undefined ? ` timeout=${r.syncTimeout}${r.syncHasSince ? ' since' : ''}` : ''} ` +
      `arrival=${r.arrival - blockStart} complete=${r.complete === undefined ? '-' : r.complete - blockStart}${r.status ? ` status=${r.status}` : ''}${r.error ? ` error=${r.error}` : ''}`;
    const timeline = `\nblock window [0, ${blockEnd - blockStart}] ms; requests relative to blockStart:\n${log.requests.map(describe).join('\n')}`;

    // The proxy is really in the bot's path: login, filter upload and the initial sync passed through it.
    assert.ok(log.requests.some((r) => r.method === 'POST' && r.path.endsWith('/login')), 'login did not go through the proxy' + timeline);
    assert.ok(log.requests.some((r) => r.method === 'POST' && /\/user\/[^/]+\/filter$/.test(r.path)), 'the filter upload did not go through the proxy' + timeline);
    const syncs = log.requests.filter((r) => r.path === '/_matrix/client/v3/sync');
    assert.ok(syncs.some((r) => r.syncHasSince === false && r.syncTimeout === '0'), 'no initial /sync (timeout=0, no since) through the proxy' + timeline);
    for (const s of syncs) assert.equal(s.error, undefined, `a /sync failed at the proxy: ${describe(s)}` + timeline);

    // (a) While main was blocked, the sync actor kept polling: a /sync response completed inside the window
    // and a new /sync request arrived after it, still inside the window.
    const inWindow = (t: number | undefined): t is number => t !== undefined && t >= blockStart && t <= blockEnd;
    const completedInWindow = syncs.filter((s) => inWindow(s.complete));
    assert.ok(completedInWindow.length > 0, 'no /sync response completed during the block' + timeline);
    const followedInWindow = completedInWindow.some((s) => syncs.some((r) => r !== s && r.arrival >= s.complete! && r.arrival <= blockEnd));
    assert.ok(followedInWindow, 'no /sync request arrived during the block after a /sync response completed in it' + timeline);

    // Stronger: every /sync response that completed in the window (> 50 ms before its end) was followed by a
    // new /sync request within 1000 ms: no poll waited for the main thread.
    for (const s of completedInWindow.filter((s) => s.complete! < blockEnd - 50)) {
      const next = syncs.filter((r) => r !== s && r.arrival >= s.complete!).sort((a, b) => a.arrival - b.arrival)[0];
      assert.ok(next !== undefined && next.arrival - s.complete! <= 1_000, `after ${describe(s)} the next /sync came ${next ? `${next.arrival - s.complete!} ms later` : 'never'}` + timeline);
    }

    // (b) After the block, all five messages reached the handler, in send order.
    assert.deepEqual(received.map((r) => r.body), sent.map((s) => s.body));
    assert.deepEqual(received.map((r) => r.eventId), sent.map((s) => s.eventId));
    assert.deepEqual(received.map((r) => r.body), ['m0', 'm1', 'm2', 'm3', 'm4']);
    for (const r of received) assert.ok(r.at >= blockEnd, `${r.body} was handled before the block ended`);
    assert.deepEqual(errors.map((e) => `${e.code}: ${e.message}`), [], 'the client reported errors' + diag());
  } finally {
    await client?.stop();
    await proxy?.stop();
    rmSync(dataDir, { recursive: true, force: true });
  }
});
