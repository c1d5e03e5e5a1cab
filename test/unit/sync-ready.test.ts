/**
 * A run's first batch and `ready` (src/sync/actor.ts, postFirst): the marker that fires `ready` goes to main once the
 * batch's state is applied in the cache's memory, before the cache writes it; the since token is saved only after
 * that write, and a failed write saves none.
 */
import assert from 'node:assert/strict';
import { createServer, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import type { Port } from '../../src/actors.ts';
import { CacheActor } from '../../src/cache/actor.ts';
import { HalcyonError } from '../../src/errors.ts';
import type { MainToSync, StateChanges, SyncConfig, SyncToMain } from '../../src/protocol.ts';
import { SyncActor } from '../../src/sync/actor.ts';
import { savedSince, tempDataDir, waitUntil } from '../integration/util.ts';

const BODY = JSON.stringify({
  next_batch: 's1',
  rooms: { join: { '!r:x': { state: { events: [{ type: 'm.room.name', state_key: '', content: { name: 'Room' }, sender: '@a:x', event_id: '$n' }] }, timeline: { events: [] } } } },
});

/** A homeserver answering the first /sync with BODY and holding every later poll until it closes. */
async function server(t: { after(fn: () => Promise<void>): void }): Promise<string> {
  const held: ServerResponse[] = [];
  const srv = createServer((req, res) => {
    if (new URL(req.url!, 'http://x').searchParams.has('since')) return void held.push(res);
    // With its length announced, as a server sends it: the body is read whole (a streamed one is applied in slices).
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(BODY) }).end(BODY);
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  t.after(async () => {
    for (const res of held) res.destroy();
    await new Promise((r) => srv.close(r));
  });
  return `http://127.0.0.1:${(srv.address() as AddressInfo).port}`;
}

function config(homeserver: string, dataDir: string): SyncConfig {
  return {
    homeserver, userId: '@bot:x', deviceId: 'D', accessToken: 't', dataDir, pollTimeoutMs: 30_000, deadlineMarginMs: 15_000, requestTimeoutMs: 10_000,
    maxInFlightEvents: 20_000, maxJournalEvents: 100_000, maxGapEvents: 0, seqFloor: 0, deliverInitialTimeline: false,
    backoffMinMs: 60_000, backoffMaxMs: 60_000, wantedTypes: null, encryption: false,
  };
}

/** The sync actor over a real cache whose calls are logged (and whose commit may fail), and the messages it posts. */
function actor(t: { after(fn: () => Promise<void>): void }, dataDir: string, failCommit: boolean) {
  const log: string[] = [];
  const posted: SyncToMain[] = [];
  const cache = new CacheActor();
  const events: Port<MainToSync, SyncToMain> = {
    post: (msg) => {
      posted.push(msg);
      if (msg.kind === 'batch' && msg.batch.first) log.push(`ready marker (${msg.batch.summaries.map((s) => s.name).join()})`);
    },
    onMessage: () => {},
    close: () => {},
  };
  const sync = new SyncActor({
    cache: {
      open: (c) => cache.open(c),
      apply: async (changes: StateChanges, deferWrite?: boolean) => {
        log.push(`apply deferWrite=${deferWrite}`);
        return cache.apply(changes, deferWrite);
      },
      commit: async () => {
        log.push(`commit (since saved: ${savedSince(dataDir)})`);
        if (failCommit) throw new HalcyonError('HALCYON_STORE', 'cache: cannot save room state: disk full (injected)');
        return cache.commit();
      },
      getRoom: (id) => cache.getRoom(id),
      summaries: () => cache.summaries(),
      accountData: (r, type) => cache.accountData(r, type),
      close: () => cache.close(),
    },
    events,
  });
  t.after(async () => {
    await sync.stop(0);
    await cache.close();
  });
  return { sync, cache, log, posted };
}

test('first batch: the ready marker goes out before the cache writes the state, the token is saved after the write', async (t) => {
  const dataDir = tempDataDir(t);
  const { sync, cache, log } = actor(t, dataDir, false);
  await cache.open({ dataDir, maxRoomsInMemory: 100 });
  await sync.start(config(await server(t), dataDir));
  await waitUntil(async () => (await sync.status()).since === 's1', 5_000, 'the first batch handed off');
  assert.deepEqual(log, ['apply deferWrite=true', 'ready marker (Room)', 'commit (since saved: null)']);
  assert.equal(savedSince(dataDir), 's1');
  await sync.stop(0);
  const reopened = new CacheActor();
  await reopened.open({ dataDir, maxRoomsInMemory: 100 });
  assert.equal((await reopened.getRoom('!r:x'))?.name, 'Room', 'the state is in cache.sqlite');
  await reopened.close();
});

test('first batch: a failed write of its state fails the poll and saves no token', async (t) => {
  const dataDir = tempDataDir(t);
  const { sync, cache, log, posted } = actor(t, dataDir, true);
  await cache.open({ dataDir, maxRoomsInMemory: 100 });
  await sync.start(config(await server(t), dataDir));
  await waitUntil(() => posted.some((m) => m.kind === 'syncError'), 5_000, 'the poll failed');
  const err = posted.find((m) => m.kind === 'syncError');
  assert.equal(err?.kind === 'syncError' && err.error.code, 'HALCYON_STORE');
  assert.deepEqual(log, ['apply deferWrite=true', 'ready marker (Room)', 'commit (since saved: null)']);
  assert.equal((await sync.status()).since, null);
  assert.equal(savedSince(dataDir), null, 'no token saved: the next poll (or run) fetches the batch again');
});
