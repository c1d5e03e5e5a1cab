/**
 * Memory held after a large initial sync. The body comes from a scripted HTTP server: a real homeserver would
 * need thousands of rooms created to produce 20 MB on demand.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { Client, encodeToken } from '../../src/index.ts';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

/**
 * Bytes of array buffers still reachable. One gc() is not enough to read it: V8 frees the backing stores of dead
 * array buffers on a background thread after the collection (concurrent array buffer sweeping), and on a loaded
 * machine `arrayBuffers` read right after it still counted the dead 2x21 MB of the initial sync's body (its
 * chunks and their copy), which is how this test once failed with "41.9 MB held". The next gc() finishes the
 * previous sweep before it starts, so after two the figure is what is really held.
 */
function heldArrayBuffers(): number {
  gc();
  gc();
  return process.memoryUsage().arrayBuffers;
}

test('after a 20 MB initial sync, the body is not kept alive while the next long-poll waits (threads: inline)', async () => {
  const rooms: Record<string, unknown> = {};
  for (let r = 0; r < 200; r++) {
    const events = Array.from({ length: 50 }, (_, i) => ({
      type: 'm.room.message', event_id: `$r${r}e${i}`, sender: '@peer:s', origin_server_ts: i,
      content: { msgtype: 'm.text', body: `${r}/${i} ${'x'.repeat(2000)}` },
    }));
    rooms[`!r${r}:s`] = {
      state: { events: [{ type: 'm.room.create', state_key: '', event_id: `$c${r}`, sender: '@peer:s', origin_server_ts: 0, content: { creator: '@peer:s' } }] },
      timeline: { events, limited: false },
    };
  }
  const initial = Buffer.from(JSON.stringify({ next_batch: 's1', rooms: { join: rooms } }));
  assert.ok(initial.length > 20e6);
  let polls = 0;
  let heldPoll!: () => void;
  const waiting = new Promise<void>((resolve) => (heldPoll = resolve));
  const server = createServer((req, res) => {
    const url = new URL(req.url!, 'http://x');
    const reply = (body: unknown) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(Buffer.isBuffer(body) ? body : JSON.stringify(body));
    };
    if (url.pathname.endsWith('/account/whoami')) return reply({ user_id: '@bot:s', device_id: 'DEV' });
    if (url.pathname.endsWith('/filter')) return reply({ filter_id: '1' });
    if (url.pathname.endsWith('/sync')) {
      if (polls++ === 0) return reply(initial);
      heldPoll(); // the second poll: held open until the client stops
      return;
    }
    res.writeHead(404).end('{}');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  const dataDir = mkdtempSync(join(tmpdir(), 'halcyon-mem-'));
  const client = new Client({ dataDir, threads: 'inline', encryption: false, stopTimeoutMs: 1000 });
  try {
    const before = heldArrayBuffers();
    await client.run(encodeToken({ homeserver: url, userId: '@bot:s', deviceId: 'DEV', accessToken: 'secret' }));
    await waiting; // the sync actor is in its next long-poll, past the initial body
    const held = heldArrayBuffers() - before;
    assert.ok(held < initial.length / 4, `${(held / 1e6).toFixed(1)} MB of array buffers held after a ${(initial.length / 1e6).toFixed(1)} MB initial sync`);
  } finally {
    await client.stop();
    server.closeAllConnections();
    server.close();
    rmSync(dataDir, { recursive: true, force: true });
  }
});
