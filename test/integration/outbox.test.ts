/**
 * The outbox through the whole client, against a scripted homeserver that records every send (a real one will
 * not answer 429s, 500s and refusals on demand): transaction IDs derived from the triggering event make a
 * re-run handler's sends the same requests; refusals become dead letters with HALCYON_SEND_FAILED and
 * `sendFailed`; 429 storms and 5xx are waited out without losing or reordering sends; pacing spaces sends; sends
 * left unfinished by a stop go out with the next run under the same transaction IDs.
 */
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { Client, type ClientOptions, encodeToken, type HalcyonError } from '../../src/index.ts';
import { deferred, waitUntil } from './util.ts';

const json = (res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}) => {
  res.writeHead(status, { 'content-type': 'application/json', ...headers });
  res.end(JSON.stringify(body));
};
const ev = (n: number) => ({ type: 'm.room.message', event_id: `$e${n}`, sender: '@peer:s', origin_server_ts: n, content: { msgtype: 'm.text', body: `m${n}` } });

interface Sent {
  room: string;
  txn: string;
  body: Record<string, unknown>;
  at: number;
}

/**
 * A homeserver that serves `events` once (after an empty initial sync) and records sends. `onSend` decides each
 * send's answer (default: 200 with an event ID per transaction ID, the same for a repeated one, as Synapse does).
 */
async function server(events: number, onSend?: (s: Sent, n: number, res: ServerResponse) => boolean) {
  const sent: Sent[] = [];
  const eventIds = new Map<string, string>();
  const handler = (req: IncomingMessage, res: ServerResponse, body: string) => {
    const url = new URL(req.url!, 'http://x');
    if (url.pathname.endsWith('/account/whoami')) return json(res, 200, { user_id: '@bot:s', device_id: 'DEV' });
    if (url.pathname.endsWith('/filter')) return json(res, 200, { filter_id: '1' });
    const m = url.pathname.match(/\/rooms\/([^/]+)\/(?:send\/[^/]+|redact\/[^/]+)\/([^/]+)$/);
    if (m && req.method === 'PUT') {
      const s: Sent = { room: decodeURIComponent(m[1]!), txn: decodeURIComponent(m[2]!), body: JSON.parse(body || '{}'), at: Date.now() };
      sent.push(s);
      if (onSend?.(s, sent.length, res)) return;
      let id = eventIds.get(s.txn);
      if (!id) eventIds.set(s.txn, (id = `$sent${eventIds.size}`));
      return json(res, 200, { event_id: id });
    }
    if (url.pathname.endsWith('/sync')) {
      const since = url.searchParams.get('since');
      if (since === null) return json(res, 200, { next_batch: 's1' });
      if (since === 's1' && events > 0) {
        return json(res, 200, { next_batch: 's2', rooms: { join: { '!r:s': { timeline: { events: Array.from({ length: events }, (_, i) => ev(i)) } } } } });
      }
      const t = setTimeout(() => json(res, 200, { next_batch: since }), Number(url.searchParams.get('timeout') ?? 0));
      res.on('close', () => clearTimeout(t));
      return;
    }
    // No encryption state event in the room (what a homeserver answers when an unencrypted bot asks before sending).
    if (url.pathname.includes('/state/m.room.encryption')) return json(res, 404, { errcode: 'M_NOT_FOUND', error: 'no such state' });
    json(res, 404, { errcode: 'M_UNRECOGNIZED', error: 'not scripted' });
  };
  const srv = createServer((req, res) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => handler(req, res, body));
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(srv.address() as { port: number }).port}`;
  return { url, sent, close: () => new Promise<void>((r) => { srv.closeAllConnections(); srv.close(() => r()); }) };
}

const token = (url: string) => encodeToken({ homeserver: url, userId: '@bot:s', deviceId: 'DEV', accessToken: 'fake-test-access-token-outbox' });

function client(t: TestContext, dataDir: string, opts: Partial<ClientOptions> = {}): Client {
  const c = new Client({ dataDir, encryption: false, pollTimeoutMs: 500, rateLimit: false, stopTimeoutMs: 1000, ...opts });
  t.after(() => c.stop());
  return c;
}

test('a handler run again after a stop repeats the same transaction IDs: the server de-duplicates, the room gets each reply once', async (t) => {
  // The first run's second reply never gets an answer: its handler is abandoned at stop.
  let hold = true;
  const hs = await server(1, (s, _n, res) => {
    if (hold && s.body.body === 'second reply') {
      res.on('close', () => {});
      return true; // no answer
    }
    return false;
  });
  t.after(() => hs.close());
  const dataDir = mkdtempSync(join(tmpdir(), 'hc-outbox-'));
  const first = client(t, dataDir);
  const replied = deferred();
  first.on('message', async (m) => {
    await m.reply('first reply');
    replied.resolve();
    await m.reply('second reply');
  });
  await first.run(token(hs.url));
  await replied.promise;
  await waitUntil(() => hs.sent.some((s) => s.body.body === 'second reply'), 10_000, 'the second reply to be sent');
  await first.stop();
  hold = false;

  const second = client(t, dataDir);
  const redelivered: boolean[] = [];
  second.on('message', async (m) => {
    redelivered.push(m.redelivered);
    await m.reply('first reply');
    await m.reply('second reply');
  });
  await second.run(token(hs.url));
  await waitUntil(() => redelivered.length === 1 && hs.sent.filter((s) => s.body.body === 'second reply').length >= 2, 10_000, 'the redelivered handler to run');
  await waitUntil(async () => second.outboxStatus().pending === 0, 10_000, 'the outbox to empty');
  assert.deepEqual(redelivered, [true]);
  const firsts = hs.sent.filter((s) => s.body.body === 'first reply');
  const seconds = hs.sent.filter((s) => s.body.body === 'second reply');
  // The first reply was acknowledged before the stop: the re-run handler got its event ID from disk, no request.
  assert.equal(firsts.length, 1, 'the acknowledged reply was not sent again');
  // The second was in flight: the outbox (and the re-run handler) repeat its transaction ID.
  assert.ok(seconds.length >= 2);
  assert.equal(new Set(seconds.map((s) => s.txn)).size, 1, `one transaction ID for every attempt of the second reply: ${seconds.map((s) => s.txn)}`);
  assert.match(seconds[0]!.txn, /^hcr\./, 'a derived transaction ID');
  assert.notEqual(firsts[0]!.txn, seconds[0]!.txn);
});

test('a refused send is a dead letter: the caller gets HALCYON_SEND_FAILED with the errcode, sendFailed fires once, later sends still go', async (t) => {
  const hs = await server(0, (s, _n, res) => {
    if (s.body.body === 'forbidden') {
      json(res, 403, { errcode: 'M_FORBIDDEN', error: 'not in this room' });
      return true;
    }
    return false;
  });
  t.after(() => hs.close());
  const c = client(t, mkdtempSync(join(tmpdir(), 'hc-outbox-')));
  const failed: Array<{ code: string; errcode?: string; roomId: string; attempts: number }> = [];
  c.on('sendFailed', (e, info) => void failed.push({ code: e.code, errcode: e.errcode, roomId: info.roomId, attempts: info.attempts }));
  await c.run(token(hs.url));
  const err = await c.sendMessage('!r:s', 'forbidden').then(
    () => null,
    (e: HalcyonError) => e,
  );
  assert.equal(err?.code, 'HALCYON_SEND_FAILED');
  assert.equal(err?.errcode, 'M_FORBIDDEN');
  assert.equal(err?.status, 403);
  assert.deepEqual(failed, [{ code: 'HALCYON_SEND_FAILED', errcode: 'M_FORBIDDEN', roomId: '!r:s', attempts: 1 }]);
  assert.equal(await c.sendMessage('!r:s', 'fine'), '$sent0');
  assert.deepEqual({ ...c.outboxStatus(), nextAttemptAt: null }, { pending: 0, dead: 1, waiting: { pacing: 0, rate_limited: 0, retrying: 0 }, nextAttemptAt: null });
  assert.equal(c.deadLetters()[0]!.roomId, '!r:s');
  assert.match(c.deadLetters()[0]!.error ?? '', /M_FORBIDDEN/);
});

test('429 storms (retry_after_ms, Retry-After, neither) and 5xx are waited out: every send arrives once, in order', async (t) => {
  const hs = await server(0, (_s, n, res) => {
    const k = n % 7;
    if (k === 1) json(res, 429, { errcode: 'M_LIMIT_EXCEEDED', error: 'slow down', retry_after_ms: 30 });
    else if (k === 2) json(res, 429, { errcode: 'M_LIMIT_EXCEEDED', error: 'slow down' }, { 'retry-after': '0' });
    else if (k === 3) json(res, 429, { errcode: 'M_LIMIT_EXCEEDED', error: 'slow down' });
    else if (k === 4) json(res, 502, { errcode: 'M_UNKNOWN', error: 'bad gateway' });
    else return false;
    return true;
  });
  t.after(() => hs.close());
  const c = client(t, mkdtempSync(join(tmpdir(), 'hc-outbox-')));
  const failed: string[] = [];
  c.on('sendFailed', (e) => void failed.push(e.message));
  await c.run(token(hs.url));
  // Retries back off from 1 s by default; the storm is dense, so keep the count small.
  const ids = await Promise.all(Array.from({ length: 6 }, (_, i) => c.sendMessage('!r:s', `n${i}`)));
  assert.equal(new Set(ids).size, 6);
  const delivered = hs.sent.filter((s) => !hs.sent.some((o) => o !== s && o.txn === s.txn && o.at > s.at));
  const order = [...new Map(hs.sent.map((s) => [s.txn, s.body.body])).values()];
  assert.deepEqual(order, ['n0', 'n1', 'n2', 'n3', 'n4', 'n5'], 'sent in call order');
  assert.ok(delivered.length >= 6);
  assert.deepEqual(failed, []);
});

test('pacing: with 20 sends per second and bursts of 3, sends are spaced by the token bucket', async (t) => {
  const hs = await server(0);
  t.after(() => hs.close());
  const c = client(t, mkdtempSync(join(tmpdir(), 'hc-outbox-')), { rateLimit: { perSecond: 20, burst: 3 } });
  await c.run(token(hs.url));
  // A first send makes the client learn the room is not encrypted (one state request): the 9 then go out together.
  await c.sendMessage('!r:s', 'prime');
  await Promise.all(Array.from({ length: 9 }, (_, i) => c.sendMessage('!r:s', `p${i}`)));
  const at = hs.sent.slice(1).map((s) => s.at);
  // The first 3 use the burst; the next 6 need at least 6 × 50 ms of refill.
  assert.ok(at.at(-1)! - at[0]! >= 6 * 50 - 20, `9 sends spanned ${at.at(-1)! - at[0]!} ms`);
});

test('pacing and a 429: the retry goes out when retry_after_ms says, without waiting for another token; the next send waits a full refill after it', async (t) => {
  const hs = await server(0, (_s, n, res) => {
    if (n !== 1) return false;
    json(res, 429, { errcode: 'M_LIMIT_EXCEEDED', error: 'slow down', retry_after_ms: 100 });
    return true;
  });
  t.after(() => hs.close());
  // One token every 2 s (2.1 s with the bucket's margin), none spare: a retry that took a token would wait ~2 s.
  const c = client(t, mkdtempSync(join(tmpdir(), 'hc-outbox-')), { rateLimit: { perSecond: 0.5, burst: 1 } });
  await c.run(token(hs.url));
  await Promise.all([c.sendMessage('!r:s', 'first'), c.sendMessage('!r:s', 'second')]);
  const [refused, retry, next] = hs.sent;
  assert.deepEqual(hs.sent.map((s) => s.body.body), ['first', 'first', 'second']);
  assert.equal(retry!.txn, refused!.txn);
  assert.ok(retry!.at - refused!.at < 1500, `the retry came ${retry!.at - refused!.at} ms after the 429 (retry_after_ms 100)`);
  assert.ok(next!.at - retry!.at >= 1900, `the next send came ${next!.at - retry!.at} ms after the retry, inside the server's window`);
});

test('sends left pending by a stop go out with the next run, under the same transaction IDs', async (t) => {
  let down = true;
  const hs = await server(0, (_s, _n, res) => {
    if (!down) return false;
    json(res, 503, { errcode: 'M_UNKNOWN', error: 'maintenance' });
    return true;
  });
  t.after(() => hs.close());
  const dataDir = mkdtempSync(join(tmpdir(), 'hc-outbox-'));
  const first = client(t, dataDir);
  await first.run(token(hs.url));
  const settled = (p: Promise<string>) => p.then(() => null, (e: HalcyonError) => e);
  const pending = [settled(first.sendMessage('!r:s', 'later 1')), settled(first.sendMessage('!r:s', 'later 2')), settled(first.sendMessage('!other:s', 'later 3'))];
  await waitUntil(() => hs.sent.length >= 2, 10_000, 'the first attempts');
  await first.stop();
  for (const p of pending) assert.equal((await p)?.code, 'HALCYON_STOPPED');
  const txns = new Map(hs.sent.map((s) => [s.body.body, s.txn]));

  down = false;
  const second = client(t, dataDir);
  await second.run(token(hs.url));
  await waitUntil(() => second.outboxStatus().pending === 0, 10_000, 'the outbox to empty');
  const last = new Map(hs.sent.map((s) => [s.body.body, s.txn]));
  assert.deepEqual([...last.keys()].sort(), ['later 1', 'later 2', 'later 3']);
  for (const [body, txn] of txns) assert.equal(last.get(body), txn, `${String(body)} kept its transaction ID`);
});
