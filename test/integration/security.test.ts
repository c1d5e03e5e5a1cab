/**
 * Security under faults (README: Security), against the real Synapse, with the fault proxy in front of it:
 * - the data dir is 0700 and every file in it 0600 (SQLite stores with their -wal/-shm, crypto.key, the media
 *   temp dir), while running and after a stop;
 * - the access token (and the Halcyon token holding it) never appears in a log line, an emitted error, or a
 *   rejection, whatever fails: a revoked token at start and mid-run, 5xx, resets, truncated bodies, 429s, a poll
 *   timing out, redirects, sends refused for good;
 * - redirects are never followed: login, whoami, /sync and sends answered with 302/307/308 fail with
 *   HALCYON_REDIRECT, and the host they point to never receives a request (so never the token or the password).
 */
import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, before, test } from 'node:test';
import { inspect } from 'node:util';
import { Client, decodeToken, type HalcyonError } from '../../src/index.ts';
import { startFaultProxy, startRecorder } from '../harness/fault-proxy.ts';
import { testHomeserver, type Homeserver } from '../harness/synapse.ts';
import { leaks, peerRoomWithBot, proxiedBot } from '../helpers/proxied-bot.ts';
import { defer, newBot, newPeer, roomWithBot, WAIT_MS, waitUntil } from './util.ts';

let hs: Homeserver;
before(async () => {
  hs = await testHomeserver();
});
after(async () => {
  await hs?.stop();
});

/** Permission bits of `dir` and everything under it, by path relative to it. */
function modes(dir: string, rel = '.'): Record<string, { mode: string; dir: boolean }> {
  const out: Record<string, { mode: string; dir: boolean }> = { [rel]: { mode: (statSync(join(dir)).mode & 0o777).toString(8), dir: true } };
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    const st = statSync(p);
    if (st.isDirectory()) Object.assign(out, modes(p, join(rel, name)));
    else out[join(rel, name)] = { mode: (st.mode & 0o777).toString(8), dir: false };
  }
  return out;
}

function wrongModes(m: Record<string, { mode: string; dir: boolean }>): string[] {
  return Object.entries(m)
    .filter(([, v]) => v.mode !== (v.dir ? '700' : '600'))
    .map(([k, v]) => `${k}: ${v.mode}${v.dir ? ' (dir)' : ''}`);
}

const deep = (x: unknown) => inspect(x, { depth: null, breakLength: Infinity });

test('the data dir is 0700 and every file in it 0600 (stores, WAL and SHM files, crypto.key, media temp dir), running and stopped', async (t) => {
  const bot = await newBot(t, hs); // encryption on: crypto.sqlite and crypto.key exist too
  bot.client.on('message', async (m) => void (await m.reply(`re: ${m.body}`)));
  await bot.client.run(bot.token);
  const peer = await newPeer(hs);
  const roomId = await roomWithBot(peer, bot.user.userId);
  await peer.sendText(roomId, 'hello');
  await peer.waitFor((ev) => ev.sender === bot.user.userId && ev.content?.body === 're: hello', WAIT_MS);
  // A stream of unknown length goes through a temp file in <dataDir>/media-tmp.
  await bot.client.uploadMedia(Readable.from([Buffer.from('some bytes of unknown length')]), { contentType: 'text/plain' });

  const running = modes(bot.dataDir);
  const names = Object.keys(running);
  for (const f of ['sync.sqlite', 'cache.sqlite', 'account.sqlite', 'outbox.sqlite', 'crypto.sqlite', 'crypto.key']) assert.ok(names.includes(f), `${f} exists (have: ${names.join(', ')})`);
  assert.ok(names.some((n) => n.endsWith('-wal')), `WAL files exist while running (have: ${names.join(', ')})`);
  await bot.client.stop();
  const stopped = modes(bot.dataDir);
  t.diagnostic(`running: ${Object.entries(running).map(([k, v]) => `${k} ${v.mode}`).join(', ')}`);
  assert.deepEqual(wrongModes(running), [], 'modes while running');
  assert.deepEqual(wrongModes(stopped), [], 'modes after stop');
});

test('an existing data dir made 0755 (by hand, by a deploy tool) is made 0700 by Client.login and by run()', async (t) => {
  for (const step of ['login', 'run'] as const) {
    const user = await hs.registerUser();
    const dataDir = mkdtempSync(join(tmpdir(), 'halcyon-mode-'));
    defer(t, () => rmSync(dataDir, { recursive: true, force: true }));
    chmodSync(dataDir, 0o755);
    const token = await Client.login({ homeserver: hs.baseUrl, user: user.localpart, password: user.password, ...(step === 'login' ? { dataDir } : {}) });
    if (step === 'run') {
      const client = new Client({ dataDir, encryption: false, pollTimeoutMs: 1000 });
      defer(t, () => client.stop());
      await client.run(token);
    }
    assert.equal((statSync(dataDir).mode & 0o777).toString(8), '700', `after ${step}`);
  }
});

test('the access token never appears in logs, errors or rejections, whatever fails', { timeout: 180_000 }, async (t) => {
  // No 'error' or 'sendFailed' listener: what goes wrong reaches the logger (the default logger writes to stderr).
  const bot = await proxiedBot(t, hs, { client: { pollTimeoutMs: 500, maxSendAttempts: 2 }, errorListeners: false });
  const texts: string[] = [];
  const recorder = await startRecorder();
  defer(t, () => recorder.close());

  // A revoked token at start.
  const revokedToken = await Client.login({ homeserver: bot.proxy.url, user: bot.user.localpart, password: bot.user.password });
  const revoked = decodeToken(revokedToken).accessToken;
  const out = await fetch(`${hs.baseUrl}/_matrix/client/v3/logout`, { method: 'POST', headers: { authorization: `Bearer ${revoked}` }, body: '{}' });
  assert.equal(out.status, 200);
  const revokedLogs: string[] = [];
  const rec = (obj: unknown, msg?: string) => void revokedLogs.push(`${msg ?? ''} ${deep(obj)}`);
  const refused = new Client({ dataDir: bot.dataDir, encryption: false, logger: { debug: rec, info: rec, warn: rec, error: rec } });
  const err = await refused.run(revokedToken).then(
    () => assert.fail('run() with a revoked token resolved'),
    (e: HalcyonError) => e,
  );
  assert.equal(err.code, 'HALCYON_UNKNOWN_TOKEN', `${err.code}: ${err.message}`);
  texts.push(deep(err), ...revokedLogs);

  await bot.client.run(bot.token);
  const { peer, roomId } = await peerRoomWithBot(hs, bot);
  let n = 0;
  const roundTrip = async (what: string) => {
    const id = await peer.sendText(roomId, `${what} ${n++}`);
    await waitUntil(() => bot.replies.has(id), 60_000, `the bot to handle and answer a message after ${what}`);
  };
  await roundTrip('start');

  // Polls failing every way the proxy knows, one after another (the stall costs one client deadline).
  const syncFaults = [
    { kind: 'status', status: 500 },
    { kind: 'status', status: 502, html: true },
    { kind: 'reset', when: 'before-headers' },
    { kind: 'reset', when: 'mid-body' },
    { kind: 'truncate' },
    { kind: 'rateLimit', retryAfterMs: 100 },
    { kind: 'rateLimit', retryAfterSeconds: 1 },
    { kind: 'redirect', location: recorder.url },
    { kind: 'stall' },
  ] as const;
  for (const fault of syncFaults) {
    const rule = bot.proxy.inject({ method: 'GET', path: '/sync', fault, times: 1 });
    await rule.spent(60_000);
    await roundTrip(`a ${fault.kind} on /sync`);
  }
  const syncCodes = [...new Set(bot.syncErrors.map((e) => e.code))].sort();
  assert.deepEqual(syncCodes, ['HALCYON_BAD_SYNC', 'HALCYON_HTTP', 'HALCYON_MATRIX', 'HALCYON_RATE_LIMITED', 'HALCYON_REDIRECT', 'HALCYON_TIMEOUT']);

  // Sends: transient failures (retried), then a refusal and a redirect (failed for good: dead letters).
  for (const fault of [{ kind: 'status', status: 503 }, { kind: 'reset', when: 'after-headers' }, { kind: 'rateLimit' }] as const) {
    bot.proxy.inject({ method: 'PUT', path: '/send/', fault, times: 1 });
    await roundTrip(`a ${fault.kind} on a send`);
  }
  const forbidden = bot.proxy.inject({ method: 'PUT', path: '/send/', fault: { kind: 'status', status: 403 }, times: 1 });
  const e403 = await bot.client.sendMessage(roomId, 'refused').then(() => null, (e: HalcyonError) => e);
  assert.equal(e403?.code, 'HALCYON_SEND_FAILED');
  assert.equal(forbidden.hits, 1);
  bot.proxy.inject({ method: 'PUT', path: '/send/', fault: { kind: 'redirect', location: recorder.url, status: 307 }, times: 1 });
  const eRedirect = await bot.client.sendMessage(roomId, 'redirected').then(() => null, (e: HalcyonError) => e);
  assert.equal(eRedirect?.code, 'HALCYON_SEND_FAILED');
  texts.push(deep(e403), deep(eRedirect));
  // A handler whose reply is redirected: its failure goes to the logger (no 'error' listener).
  bot.proxy.inject({ method: 'PUT', path: '/send/', fault: { kind: 'redirect', location: recorder.url }, times: 1 });
  const failing = await peer.sendText(roomId, 'reply redirected');
  await waitUntil(() => bot.handled.some((h) => h.eventId === failing), 30_000, 'the message whose reply is redirected');
  await waitUntil(() => bot.logs.some((l) => l.includes('HALCYON_HANDLER_FAILED')), 30_000, 'the failed handler in the log');

  // The token revoked mid-run: the bot reports it and stops.
  const logout = await fetch(`${hs.baseUrl}/_matrix/client/v3/logout`, { method: 'POST', headers: { authorization: `Bearer ${bot.accessToken}` }, body: '{}' });
  assert.equal(logout.status, 200);
  await waitUntil(() => bot.logs.some((l) => l.includes('HALCYON_UNKNOWN_TOKEN')), 30_000, 'HALCYON_UNKNOWN_TOKEN in the log after the token was revoked');
  await waitUntil(async () => (await bot.client.health()).state === 'stopped', 30_000, 'the bot to stop on the dead token');
  const health = await bot.client.health();
  texts.push(deep(health));

  const all = [...texts, ...bot.texts()];
  const secrets = [...bot.secrets(), revoked, revokedToken, bot.user.password];
  t.diagnostic(`${all.length} log lines and errors checked (${bot.logs.filter((l) => !l.startsWith('syncError')).length} logged by the client); syncErrors: ${bot.syncErrors.map((e) => e.code).join(',')}`);
  for (const l of bot.logs.filter((x) => !x.startsWith('syncError'))) t.diagnostic(`log: ${l.slice(0, 300)}`);
  assert.deepEqual(leaks(all, secrets), [], 'no secret in any log line, error or rejection');
  assert.ok(all.some((x) => x.includes('HALCYON_REDIRECT')), 'the redirects were reported');
  assert.deepEqual(recorder.requests, [], 'the redirect target never received a request');
});

test('redirects are never followed: login, whoami, /sync and sends fail with HALCYON_REDIRECT and the other host sees no token', { timeout: 120_000 }, async (t) => {
  const recorder = await startRecorder();
  defer(t, () => recorder.close());

  // Login: the password must not travel to the other host either.
  const user = await hs.registerUser();
  const loginProxy = await startFaultProxy(hs.baseUrl);
  defer(t, () => loginProxy.close());
  for (const status of [302, 307, 308]) {
    loginProxy.inject({ method: 'POST', path: '/login', fault: { kind: 'redirect', location: recorder.url, status }, times: 1 });
    const e = await Client.login({ homeserver: loginProxy.url, user: user.localpart, password: user.password }).then(
      () => null,
      (x: HalcyonError) => x,
    );
    assert.equal(e?.code, 'HALCYON_REDIRECT', `login answered ${status}: ${e?.code} ${e?.message}`);
  }

  // whoami at run(): refused before anything else.
  const bot = await proxiedBot(t, hs);
  bot.proxy.inject({ method: 'GET', path: '/account/whoami', fault: { kind: 'redirect', location: recorder.url }, times: 1 });
  const eRun = await bot.client.run(bot.token).then(
    () => null,
    (x: HalcyonError) => x,
  );
  assert.equal(eRun?.code, 'HALCYON_REDIRECT', `run(): ${eRun?.code} ${eRun?.message}`);

  // A fresh client on the same dir: /sync redirected (302, 307, 308), then a reply redirected (302, 307).
  const client = new Client({ dataDir: bot.dataDir, encryption: false, rateLimit: false, pollTimeoutMs: 1000, backoffMinMs: 50, backoffMaxMs: 200 });
  defer(t, () => client.stop());
  const syncErrors: HalcyonError[] = [];
  const sendFailed: HalcyonError[] = [];
  const handlerErrors: HalcyonError[] = [];
  client.on('syncError', (e) => void syncErrors.push(e));
  client.on('sendFailed', (e) => void sendFailed.push(e));
  client.on('error', (e) => void handlerErrors.push(e));
  client.on('message', async (m) => void (await m.reply(`re: ${m.body}`)));
  await client.run(bot.token);
  const { peer, roomId } = await peerRoomWithBot(hs, bot);
  for (const status of [302, 307, 308]) {
    const rule = bot.proxy.inject({ method: 'GET', path: '/sync', fault: { kind: 'redirect', location: recorder.url, status }, times: 1 });
    await rule.spent(30_000);
  }
  await waitUntil(() => syncErrors.length >= 3, 30_000, 'three syncErrors');
  assert.deepEqual(syncErrors.map((e) => e.code), ['HALCYON_REDIRECT', 'HALCYON_REDIRECT', 'HALCYON_REDIRECT']);
  for (const status of [302, 307]) {
    const rule = bot.proxy.inject({ method: 'PUT', path: '/send/', fault: { kind: 'redirect', location: recorder.url, status }, times: 1 });
    await peer.sendText(roomId, `to be answered ${status}`);
    await rule.spent(30_000);
  }
  await waitUntil(() => sendFailed.length >= 2, 30_000, 'two sendFailed events');
  const causes = sendFailed.map((e) => `${e.code}<-${(e.cause as HalcyonError | undefined)?.code}`);
  assert.deepEqual(causes, ['HALCYON_SEND_FAILED<-HALCYON_REDIRECT', 'HALCYON_SEND_FAILED<-HALCYON_REDIRECT'], 'a redirected send is a dead letter caused by HALCYON_REDIRECT');
  assert.equal(client.outboxStatus().dead, 2);

  const refusedCount = [...loginProxy.records, ...bot.proxy.records].filter((r) => r.faultKind === 'redirect').length;
  t.diagnostic(`redirects answered: ${refusedCount}; requests the other host received: ${recorder.requests.length}`);
  assert.deepEqual(
    recorder.requests.map((r) => `${r.method} ${r.path} auth=${r.authorization !== undefined}`),
    [],
    'the redirect target never received a request (no token, no password)',
  );
});
