/**
 * Prometheus metrics over a scripted homeserver: events in and handled, handler durations and lag, sync state,
 * sends and their outcomes, in the client's registry and at the optional `/metrics` endpoint; and tokens never
 * in them.
 */
import assert from 'node:assert/strict';
import { createServer as createNetServer } from 'node:net';
import { createServer, type ServerResponse } from 'node:http';
import { test } from 'node:test';
import { encodeToken } from '../../src/index.ts';
import { newClient, tempDataDir, waitUntil } from './util.ts';

const json = (res: ServerResponse, status: number, body: unknown) => {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
};
const ev = (n: number) => ({ type: 'm.room.message', event_id: `$e${n}`, sender: '@peer:s', origin_server_ts: Date.now(), content: { msgtype: 'm.text', body: `m${n}` } });

async function freePort(): Promise<number> {
  const s = createNetServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as { port: number }).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

test('metrics: events, handlers, sync, sends, in the registry and at /metrics; no token in them', async (t) => {
  let sends = 0;
  const srv = createServer((req, res) => {
    const url = new URL(req.url!, 'http://x');
    if (url.pathname.endsWith('/account/whoami')) return json(res, 200, { user_id: '@bot:s', device_id: 'DEV' });
    if (url.pathname.endsWith('/filter')) return json(res, 200, { filter_id: '1' });
    if (req.method === 'PUT' && url.pathname.includes('/send/')) {
      req.resume();
      // The first send meets a 429 with a retry time, then goes through.
      if (sends++ === 0) return json(res, 429, { errcode: 'M_LIMIT_EXCEEDED', error: 'slow', retry_after_ms: 10 });
      return json(res, 200, { event_id: `$sent${sends}` });
    }
    if (url.pathname.endsWith('/sync')) {
      const since = url.searchParams.get('since');
      if (since === null) return json(res, 200, { next_batch: 's1' });
      if (since === 's1') return json(res, 200, { next_batch: 's2', rooms: { join: { '!r:s': { timeline: { events: [ev(0), ev(1), ev(2)] } } } } });
      const tm = setTimeout(() => json(res, 200, { next_batch: since }), Number(url.searchParams.get('timeout') ?? 0));
      res.on('close', () => clearTimeout(tm));
      return;
    }
    // The room has no encryption state event (what a homeserver answers: the bot asks before its first send).
    if (url.pathname.includes('/state/m.room.encryption')) return json(res, 404, { errcode: 'M_NOT_FOUND', error: 'no such state' });
    json(res, 404, { errcode: 'M_UNRECOGNIZED', error: 'not scripted' });
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  t.after(() => new Promise<void>((r) => { srv.closeAllConnections(); srv.close(() => r()); }));
  const port = await freePort();
  const secret = 'fake-test-access-token-metrics-secret';
  const client = newClient(t, tempDataDir(t), { encryption: false, pollTimeoutMs: 500, metrics: { port } });
  let handled = 0;
  client.on('message', async (m) => {
    if (m.body === 'm0') await m.reply('pong');
    handled++;
  });
  await client.run(encodeToken({ homeserver: `http://127.0.0.1:${(srv.address() as { port: number }).port}`, userId: '@bot:s', deviceId: 'DEV', accessToken: secret }));
  await waitUntil(() => handled === 3, 10_000, 'the 3 messages');
  const text = await waitUntil(async () => {
    const body = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    return /halcyon_sends_total\{result="sent"\} 1/.test(body) ? body : undefined;
  }, 10_000, 'the send to be counted');
  assert.match(text, /halcyon_events_received_total 3/);
  assert.match(text, /halcyon_events_handled_total\{kind="message"\} 3/);
  assert.match(text, /halcyon_handler_duration_seconds_count\{kind="message"\} 3/);
  assert.match(text, /halcyon_handler_lag_seconds_count\{kind="message"\} 3/);
  assert.match(text, /halcyon_sends_total\{result="rate_limited"\} 1/);
  assert.match(text, /halcyon_sync_polls [1-9]/);
  assert.match(text, /halcyon_sync_seconds_since_success \d/);
  assert.match(text, /halcyon_queued_events 0/);
  assert.match(text, /halcyon_journal_backlog_events 0/);
  assert.match(text, /halcyon_outbox_pending 0/);
  assert.ok(!text.includes(secret), 'no token in the metrics');
  assert.match((await client.metricsRegistry?.metrics()) ?? '', /halcyon_events_received_total 3/, 'the registry is readable directly too');
  assert.equal((await fetch(`http://127.0.0.1:${port}/other`)).status, 404);
});
