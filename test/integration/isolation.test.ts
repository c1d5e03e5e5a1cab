/**
 * Handler isolation: a handler that blocks the main thread's CPU must not stop the sync actor (a worker thread)
 * from long-polling. The bot talks to Synapse through a logging proxy that runs in a child process (this test's
 * thread is blocked, so nothing here could serve or record anything meanwhile); the proxy child also sends the
 * peer's messages during the block.
 *
 * No clock decides the outcome: the block lasts until the child reports, through a file (IPC needs this
 * thread), that every message was answered and that the bot polled past them — a /sync that arrived after the
 * last message completed and another one followed it — all while this thread was still blocked. A bound only
 * ends a block that never sees that (the test then fails with the proxy's timeline).
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client, type HalcyonError, type Logger } from '../../src/index.ts';
import { Peer } from '../harness/peer.ts';
import { testHomeserver, withTimeout, type Homeserver } from '../harness/synapse.ts';
import { startLoggingProxy, type LoggingProxy, type ProxyRecord } from '../helpers/logging-proxy.ts';
import { deferred } from './util.ts';

/** Longest block before the test gives up on the child's report. */
const BLOCK_CAP_MS = 60_000;
const COUNT = 5;

let hs: Homeserver;

before(async () => {
  hs = await testHomeserver();
}, { timeout: 300_000 });

after(async () => {
  await hs?.stop();
});

/** Keeps warnings for the failure message instead of printing them. */
function capturingLogger(lines: string[]): Logger {
  const put = (level: string) => (obj: unknown, msg?: string) => {
    lines.push(`${level}: ${msg ?? ''} ${obj instanceof Error ? obj.message : JSON.stringify(obj)}`);
  };
  return { debug: () => {}, info: () => {}, warn: put('warn'), error: put('error') };
}

test('the sync actor keeps polling while a handler blocks the main thread; the messages sent meanwhile arrive in order', { timeout: 180_000 }, async () => {
  const dataDir = mkdtempSync(join(tmpdir(), 'halcyon-isolation-'));
  const startFile = join(dataDir, 'block-started');
  const doneFile = join(dataDir, 'polled-past');
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
    let polledPast = false;
    const blocked = deferred();
    const received: { body: string; eventId: string; at: number }[] = [];
    const allReceived = deferred();
    client.on('message', async (m) => {
      if (m.sender !== alice.userId) return;
      if (m.body === 'block') {
        // The child sends the peer's messages once the block has begun, 50 ms apart, then watches the bot poll.
        await px.sendMessages({ roomId: m.roomId, accessToken: alice.accessToken, count: COUNT, spacingMs: 50, prefix: 'm', startFile, doneFile });
        blockStart = Date.now();
        writeFileSync(startFile, '');
        const cap = blockStart + BLOCK_CAP_MS;
        while (!existsSync(doneFile) && Date.now() < cap) {
          // Busy-wait: the main thread's event loop is fully blocked.
        }
        blockEnd = Date.now();
        polledPast = existsSync(doneFile);
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

    await withTimeout(blocked.promise, BLOCK_CAP_MS + 30_000, 'the "block" message to reach the handler and the block to end');
    const sent = await withTimeout(px.sentDone(), 30_000, 'the proxy child to send the peer messages');
    const diag = () =>
      `\nreceived: ${JSON.stringify(received.map((r) => r.body))}\nerrors: ${errors.map((e) => `${e.code} ${e.message}`).join('; ')}` +
      `\nsyncErrors: ${syncErrors.join('; ')}\nlog: ${logLines.join('\n')}`;
    await withTimeout(allReceived.promise, 30_000, `all ${COUNT} messages to reach the handler`).catch((e: Error) => {
      throw new Error(e.message + diag());
    });

    assert.ok(polledPast, `the block ended at its ${BLOCK_CAP_MS} ms bound: while main was blocked, the bot did not poll past the messages${diag()}`);
    // The messages really were sent while main was blocked.
    assert.equal(sent.length, COUNT);
    for (const s of sent) {
      assert.equal(s.error, undefined, `send of ${s.body} failed: ${s.error}`);
      assert.ok(s.sentAt >= blockStart && s.answeredAt <= blockEnd, `${s.body} was sent at ${s.sentAt - blockStart} ms, answered at ${s.answeredAt - blockStart} ms, not inside the ${blockEnd - blockStart} ms block`);
    }

    const log = await px.log();
    const describe = (r: ProxyRecord) =>
      `#${r.n} ${r.method} ${r.path}${r.syncTimeout !== undefined ? ` timeout=${r.syncTimeout}${r.syncHasSince ? ' since' : ''}` : ''} ` +
      `arrival=${r.arrival - blockStart} complete=${r.complete === undefined ? '-' : r.complete - blockStart}${r.status ? ` status=${r.status}` : ''}${r.error ? ` error=${r.error}` : ''}`;
    const timeline = `\nblock window [0, ${blockEnd - blockStart}] ms; requests relative to blockStart:\n${log.requests.map(describe).join('\n')}`;

    // The proxy is really in the bot's path: login and the initial sync passed through it.
    assert.ok(log.requests.some((r) => r.method === 'POST' && r.path.endsWith('/login')), 'login did not go through the proxy' + timeline);
    const syncs = log.requests.filter((r) => r.path === '/_matrix/client/v3/sync');
    // The filter goes inline in every poll (no upload): lazy-loaded members, a timeline limit of 50.
    assert.ok(!log.requests.some((r) => /\/user\/[^/]+\/filter$/.test(r.path)), 'a filter was uploaded' + timeline);
    for (const s of syncs) assert.deepEqual(JSON.parse(s.syncFilter ?? 'null'), { room: { state: { lazy_load_members: true }, timeline: { lazy_load_members: true, limit: 50 } } }, `a /sync without the inline filter: ${describe(s)}` + timeline);
    assert.ok(syncs.some((r) => r.syncHasSince === false && r.syncTimeout === '0'), 'no initial /sync (timeout=0, no since) through the proxy' + timeline);
    for (const s of syncs) assert.equal(s.error, undefined, `a /sync failed at the proxy: ${describe(s)}` + timeline);

    // (a) While main was blocked, the sync actor kept polling past the messages: a /sync that arrived after
    // the last message was answered completed inside the window, and a new /sync arrived after it, still inside.
    const lastAnswer = Math.max(...sent.map((x) => x.answeredAt));
    const fetched = syncs.find((s) => s.arrival >= lastAnswer && s.complete !== undefined && s.complete <= blockEnd);
    assert.ok(fetched, 'no /sync that started after the last message completed during the block' + timeline);
    assert.ok(syncs.some((r) => r.arrival >= fetched.complete! && r.arrival <= blockEnd), `no /sync arrived during the block after ${describe(fetched)}` + timeline);

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
