/**
 * setPresence while a long-poll is out, over a scripted homeserver: the poll carries the old `set_presence`, which
 * the server applies when the poll reaches it, so a poll still connecting when the presence PUT lands would undo
 * the PUT (Synapse keeps presence per device, and every poll's value overwrites it). The sync actor abandons that
 * poll and polls again at once with the new value; nothing is lost and no sync error is reported.
 */
import assert from 'node:assert/strict';
import { createServer, type ServerResponse } from 'node:http';
import { test } from 'node:test';
import { encodeToken } from '../../src/index.ts';
import { newClient, tempDataDir, waitUntil } from './util.ts';

const json = (res: ServerResponse, status: number, body: unknown) => {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
};

interface Poll {
  presence: string | null;
  closed: boolean;
  answered: boolean;
}

test('setPresence while a long-poll is out: that poll is abandoned and the next carries the new set_presence', async (t) => {
  const polls: Poll[] = [];
  const log: string[] = [];
  const srv = createServer((req, res) => {
    const url = new URL(req.url!, 'http://x');
    if (url.pathname.endsWith('/account/whoami')) return json(res, 200, { user_id: '@bot:s', device_id: 'DEV' });
    if (req.method === 'PUT' && url.pathname.includes('/presence/')) {
      req.resume();
      log.push('PUT presence');
      return json(res, 200, {});
    }
    if (url.pathname.endsWith('/sync')) {
      const since = url.searchParams.get('since');
      if (since === null) return json(res, 200, { next_batch: 's1' });
      // Held until the client gives up on it: the long-poll of a quiet account.
      const poll: Poll = { presence: url.searchParams.get('set_presence'), closed: false, answered: false };
      polls.push(poll);
      log.push(`poll ${poll.presence}`);
      res.on('close', () => (poll.closed = !res.writableEnded));
      return;
    }
    json(res, 404, { errcode: 'M_UNRECOGNIZED', error: 'not scripted' });
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  t.after(() => new Promise<void>((r) => { srv.closeAllConnections(); srv.close(() => r()); }));
  const client = newClient(t, tempDataDir(t), { encryption: false, pollTimeoutMs: 60_000 });
  const problems: unknown[] = [];
  client.on('syncError', (e) => void problems.push(e));
  client.on('error', (e) => void problems.push(e));
  await client.run(encodeToken({ homeserver: `http://127.0.0.1:${(srv.address() as { port: number }).port}`, userId: '@bot:s', deviceId: 'DEV', accessToken: 'fake-token' }));

  await waitUntil(() => polls.length === 1, 10_000, 'the first long-poll');
  assert.equal(polls[0]!.presence, null, 'polls carry no set_presence by default (online)');
  await client.setPresence('unavailable', 'busy');
  await waitUntil(() => polls[0]!.closed, 10_000, 'the poll that carried the old value to be abandoned');
  await waitUntil(() => polls.length >= 2, 10_000, 'a new poll');
  assert.deepEqual(polls.slice(1).map((p) => p.presence), polls.slice(1).map(() => 'unavailable'), `every later poll carries the new value (${log.join(', ')})`);
  assert.ok(log.indexOf('PUT presence') > 0, 'the PUT went out');
  assert.deepEqual(problems, [], 'an abandoned poll is no sync error');
  // Setting the value a poll already carries leaves that poll alone.
  const before = polls.length;
  await client.setPresence('unavailable');
  assert.equal(polls.at(-1)!.closed, false);
  assert.equal(polls.length, before);
});
