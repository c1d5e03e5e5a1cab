/**
 * Bad input through the whole client, from a scripted HTTP server (a real homeserver will not send broken bodies
 * on demand): truncated and non-JSON /sync bodies, 5xx, connection resets, malformed events, a 10 MB body, and a
 * token revoked mid-run. The bot must report each with a coded event, keep running, and deliver the good events.
 */
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { Client, encodeToken, type HalcyonError } from '../../src/index.ts';
import { tempDataDir } from './util.ts';

type Step = (req: IncomingMessage, res: ServerResponse) => void;
const json = (res: ServerResponse, status: number, body: unknown) => {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(typeof body === 'string' ? body : JSON.stringify(body));
};
const ev = (n: number) => ({ type: 'm.room.message', event_id: `$e${n}`, sender: '@peer:s', origin_server_ts: n, content: { msgtype: 'm.text', body: `good ${n}` } });
const syncBody = (next: string, events: unknown[]) => ({ next_batch: next, rooms: { join: { '!r:s': { timeline: { events } } } } });
const ACCESS_TOKEN = 'fake-test-access-token-very-secret-value';

/** A scripted homeserver: /sync answers follow `steps`; once they run out, polls are held until `timeout`. */
async function scripted(steps: Step[], opts: { refuseToken?: boolean } = {}) {
  let syncs = 0;
  const since: Array<string | null> = [];
  const server = createServer((req, res) => {
    const url = new URL(req.url!, 'http://x');
    if (url.pathname.endsWith('/account/whoami')) {
      if (opts.refuseToken) return json(res, 401, { errcode: 'M_UNKNOWN_TOKEN', error: 'Invalid access token passed.' });
      return json(res, 200, { user_id: '@bot:s', device_id: 'DEV' });
    }
    if (url.pathname.endsWith('/filter')) return json(res, 200, { filter_id: '1' });
    if (url.pathname.endsWith('/sync')) {
      since.push(url.searchParams.get('since'));
      const step = steps[syncs++];
      if (step) return step(req, res);
      const t = setTimeout(() => json(res, 200, { next_batch: url.searchParams.get('since') }), Number(url.searchParams.get('timeout') ?? 0));
      res.on('close', () => clearTimeout(t));
      return;
    }
    // No encryption state event in the room (what a homeserver answers when an unencrypted bot asks before sending).
    if (url.pathname.includes('/state/m.room.encryption')) return json(res, 404, { errcode: 'M_NOT_FOUND', error: 'no such state' });
    json(res, 404, { errcode: 'M_UNRECOGNIZED', error: 'not scripted' });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  return {
    url: `http://127.0.0.1:${port}`,
    syncCount: () => syncs,
    since,
    close: () => new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); }),
  };
}

function captureLogger(lines: string[]) {
  const rec = (obj: unknown, msg?: string) => lines.push(`${msg ?? ''} ${obj instanceof Error ? obj.message : JSON.stringify(obj)}`);
  return { debug: rec, info: rec, warn: rec, error: rec };
}

test('bad /sync bodies, 5xx, resets and malformed events: coded events, no crash, every good event delivered in order', async (t) => {
  const big = { ...ev(3), content: { msgtype: 'm.text', body: 'x'.repeat(10 * 1024 * 1024) } };
  const hs = await scripted([
    (_q, res) => json(res, 200, syncBody('s1', [])),
    (_q, res) => json(res, 200, JSON.stringify(syncBody('s2', [ev(1)])).slice(0, 40)), // truncated
    (_q, res) => json(res, 200, '<html>not json</html>'),
    (_q, res) => json(res, 502, '<html>Bad Gateway</html>'),
    (req) => req.socket.destroy(), // connection reset
    (_q, res) => {
      // Headers then half a body, then the connection drops.
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': '1000' });
      res.write('{"next_batch":"s2","rooms":{');
      setImmediate(() => res.socket?.destroy());
    },
    (_q, res) => json(res, 200, syncBody('s2', [ev(1), 7, { type: 'm.room.message', event_id: '$bad', sender: 5, origin_server_ts: 1, content: {} }, { type: 'm.room.message' }, ev(2)])),
    (_q, res) => json(res, 200, syncBody('s3', [big, ev(4)])),
  ]);
  const logs: string[] = [];
  const client = new Client({ dataDir: tempDataDir(t), encryption: false, backoffMinMs: 5, backoffMaxMs: 20, pollTimeoutMs: 1000, logger: captureLogger(logs) });
  const bodies: string[] = [];
  const syncErrors: string[] = [];
  const errors: HalcyonError[] = [];
  let recovered = 0;
  let allDelivered!: () => void;
  const delivered = new Promise<void>((r) => (allDelivered = r));
  client.on('message', (m) => {
    bodies.push(m.body.slice(0, 10));
    if (bodies.length === 4) allDelivered();
  });
  const retries: Array<{ attempt: number; retryInMs: number }> = [];
  client.on('syncError', (e, info) => {
    syncErrors.push(e.code);
    retries.push({ attempt: info.attempt, retryInMs: info.retryInMs });
    assert.ok(!e.message.includes(ACCESS_TOKEN));
  });
  client.on('syncRecovered', () => recovered++);
  client.on('error', (e) => errors.push(e));
  try {
    await client.run(encodeToken({ homeserver: hs.url, userId: '@bot:s', deviceId: 'DEV', accessToken: ACCESS_TOKEN }));
    await delivered;
    assert.deepEqual(bodies, ['good 1', 'good 2', 'xxxxxxxxxx', 'good 4']);
    assert.deepEqual(syncErrors, ['HALCYON_BAD_SYNC', 'HALCYON_BAD_SYNC', 'HALCYON_MATRIX', 'HALCYON_HTTP', 'HALCYON_HTTP']);
    assert.deepEqual(retries.map((r) => r.attempt), [1, 2, 3, 4, 5], 'consecutive failed polls are counted');
    // backoffMinMs 5 doubling up to backoffMaxMs 20, with ±20% jitter under the ceiling.
    for (const r of retries) assert.ok(r.retryInMs >= 4 && r.retryInMs <= 20, `attempt ${r.attempt}: retry in ${r.retryInMs} ms, outside the backoff's 4..20 ms`);
    assert.equal(recovered, 1);
    assert.deepEqual(errors.map((e) => e.code), ['HALCYON_BAD_EVENT', 'HALCYON_BAD_EVENT', 'HALCYON_BAD_EVENT']);
    assert.ok(errors.every((e) => e.roomId === '!r:s'));
    // A failed poll is retried with the same since token: nothing between s1 and s2 is skipped.
    assert.deepEqual(hs.since.slice(0, 8), [null, 's1', 's1', 's1', 's1', 's1', 's1', 's2']);
  } finally {
    await client.stop();
    await hs.close();
  }
  assert.ok(!logs.join('\n').includes(ACCESS_TOKEN), 'the access token reached the logs');
});

test('a token revoked mid-run stops the bot with HALCYON_UNKNOWN_TOKEN and no retry loop', async (t) => {
  let release!: () => void;
  const revoked = new Promise<void>((r) => (release = r));
  const hs = await scripted([
    (_q, res) => json(res, 200, syncBody('s1', [])),
    (_q, res) => {
      json(res, 401, { errcode: 'M_UNKNOWN_TOKEN', error: 'Invalid access token passed.', soft_logout: false });
      release();
    },
  ]);
  const logs: string[] = [];
  const client = new Client({ dataDir: tempDataDir(t), encryption: false, backoffMinMs: 5, pollTimeoutMs: 1000, logger: captureLogger(logs) });
  const fatal = new Promise<HalcyonError>((resolve) => client.on('error', resolve));
  try {
    await client.run(encodeToken({ homeserver: hs.url, userId: '@bot:s', deviceId: 'DEV', accessToken: ACCESS_TOKEN }));
    await revoked;
    const err = await fatal;
    assert.equal(err.code, 'HALCYON_UNKNOWN_TOKEN');
    assert.equal(err.errcode, 'M_UNKNOWN_TOKEN');
    assert.ok(!err.message.includes(ACCESS_TOKEN));
    // The client shuts itself down: sending now says it is not running, and no further /sync was made.
    await waitFor(() => !isRunning(client));
    assert.equal(hs.syncCount(), 2);
  } finally {
    await client.stop();
    await hs.close();
  }
});

test('run() rejects with HALCYON_UNKNOWN_TOKEN when the server refuses the token at start, and starts no poll', async (t) => {
  const hs = await scripted([], { refuseToken: true });
  const client = new Client({ dataDir: tempDataDir(t), encryption: false });
  try {
    await assert.rejects(
      client.run(encodeToken({ homeserver: hs.url, userId: '@bot:s', deviceId: 'DEV', accessToken: ACCESS_TOKEN })),
      (e: HalcyonError) => e.code === 'HALCYON_UNKNOWN_TOKEN' && e.status === 401 && !e.message.includes(ACCESS_TOKEN),
    );
    assert.equal(hs.syncCount(), 0);
  } finally {
    await hs.close();
  }
});

test('a repeated next_batch is skipped: nothing in that response is delivered again', async (t) => {
  const hs = await scripted([
    (_q, res) => json(res, 200, syncBody('s1', [])),
    (_q, res) => json(res, 200, syncBody('s2', [ev(1)])),
    (_q, res) => json(res, 200, syncBody('s2', [ev(1)])), // the same batch again
    (_q, res) => json(res, 200, syncBody('s3', [ev(2)])),
  ]);
  const dataDir = tempDataDir(t);
  const client = new Client({ dataDir, pollTimeoutMs: 1000, encryption: false });
  const seen: string[] = [];
  let done!: () => void;
  const second = new Promise<void>((r) => (done = r));
  client.on('message', (m) => {
    seen.push(m.eventId);
    if (m.eventId === '$e2') done();
  });
  try {
    await client.run(encodeToken({ homeserver: hs.url, userId: '@bot:s', deviceId: 'DEV', accessToken: ACCESS_TOKEN }));
    await second;
    assert.deepEqual(seen, ['$e1', '$e2']);
  } finally {
    await client.stop();
    await hs.close();
  }
  for (const f of ['sync.sqlite', 'cache.sqlite', 'account.sqlite']) assert.equal(statSync(join(dataDir, f)).mode & 0o777, 0o600, f);
  assert.equal(statSync(dataDir).mode & 0o777, 0o700);
});

function isRunning(client: Client): boolean {
  try {
    client.whoami();
    return true;
  } catch {
    return false;
  }
}

async function waitFor(cond: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}
