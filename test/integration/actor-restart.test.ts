/**
 * Dead workers are restarted: the sync or cache actor's worker crashes mid-stream (fault injection), the client
 * reports `HALCYON_ACTOR_DIED`, starts the actors again, and every event is handled exactly once in this
 * process, in order. A scripted homeserver serves the stream (a steady, numbered flow on demand).
 */
import assert from 'node:assert/strict';
import { createServer, type ServerResponse } from 'node:http';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { Client, encodeToken, type HalcyonError } from '../../src/index.ts';
import { deferred, waitUntil } from './util.ts';
import { crashActorForTests } from '../../src/client/testing.ts';

const json = (res: ServerResponse, status: number, body: unknown) => {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
};
const ev = (n: number) => ({ type: 'm.room.message', event_id: `$e${n}`, sender: '@peer:s', origin_server_ts: n, content: { msgtype: 'm.text', body: `m${n}` } });

/** Serves `bodies` bodies of `per` events each, one per poll, then holds polls. */
async function streamServer(bodies: number, per: number) {
  let polls = 0;
  const server = createServer((req, res) => {
    const url = new URL(req.url!, 'http://x');
    if (url.pathname.endsWith('/account/whoami')) return json(res, 200, { user_id: '@bot:s', device_id: 'DEV' });
    if (url.pathname.endsWith('/filter')) return json(res, 200, { filter_id: '1' });
    if (url.pathname.endsWith('/sync')) {
      polls++;
      const since = url.searchParams.get('since');
      const k = since === null ? 0 : Number(since.slice(1));
      if (k <= bodies) {
        const events = since === null ? [] : Array.from({ length: per }, (_, i) => ev((k - 1) * per + i));
        return json(res, 200, { next_batch: `s${k + 1}`, rooms: { join: { '!r:s': { timeline: { events } } } } });
      }
      const t = setTimeout(() => json(res, 200, { next_batch: since }), Number(url.searchParams.get('timeout') ?? 0));
      res.on('close', () => clearTimeout(t));
      return;
    }
    // No encryption state event in the room (what a homeserver answers when an unencrypted bot asks before sending).
    if (url.pathname.includes('/state/m.room.encryption')) return json(res, 404, { errcode: 'M_NOT_FOUND', error: 'no such state' });
    json(res, 404, { errcode: 'M_UNRECOGNIZED', error: 'not scripted' });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  return { url, polls: () => polls, close: () => new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); }) };
}

for (const victim of ['sync', 'cache'] as const) {
  test(`the ${victim} actor's worker crashes mid-stream: HALCYON_ACTOR_DIED is reported, the actors restart, every event is handled once, in order`, async (t) => {
    const bodies = 20;
    const per = 50;
    const hs = await streamServer(bodies, per);
    t.after(() => hs.close());
    const client = new Client({ dataDir: mkdtempSync(join(tmpdir(), 'hc-restart-')), encryption: false, pollTimeoutMs: 500, rateLimit: false, maxQueuedEvents: 120 });
    t.after(() => client.stop());
    const errors: HalcyonError[] = [];
    client.on('error', (e) => void errors.push(e));
    const seen: number[] = [];
    const gate = deferred();
    client.on('message', async (m) => {
      const n = Number(m.body.slice(1));
      seen.push(n);
      if (n === 100) await gate.promise; // hold the stream while the worker dies
    });
    await client.run(encodeToken({ homeserver: hs.url, userId: '@bot:s', deviceId: 'DEV', accessToken: 'fake-test-access-token-restart' }));
    await waitUntil(() => seen.includes(100), 20_000, 'event 100 to be in its handler');
    await crashActorForTests(client, victim);
    await waitUntil(() => errors.some((e) => e.code === 'HALCYON_ACTOR_DIED'), 10_000, 'the HALCYON_ACTOR_DIED report');
    // The restarted sync actor posts the journal's unfinished batches again while event 100 still runs.
    await waitUntil(async () => (await client.health()).sync !== null && (await client.health()).state === 'running', 20_000, 'the actors to be back');
    gate.resolve();
    const total = bodies * per;
    await waitUntil(() => seen.length >= total, 30_000, `all ${total} events (got ${seen.length})`);
    assert.deepEqual(seen, Array.from({ length: total }, (_, i) => i), 'each event once, in order, across the restart');
    assert.deepEqual(errors.map((e) => e.code), ['HALCYON_ACTOR_DIED']);
    await waitUntil(async () => (await client.health()).backlogEvents === 0, 10_000, 'the journal to empty');
  });
}
