/**
 * Polls sent ahead (src/sync/poller.ts, SyncActor.pollAhead): once a body is scanned, the next poll goes out while
 * the body is still applied, journaled and handed off; not when the body brings to-device events (the next poll's
 * token lets the server delete them, so the crypto actor must have them first); and a body whose hand-off fails is
 * polled again with its own token, the poll sent ahead dropped.
 */
import assert from 'node:assert/strict';
import { createServer, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import type { Port, Remote } from '../../src/actors.ts';
import { CacheActor } from '../../src/cache/actor.ts';
import { HalcyonError } from '../../src/errors.ts';
import type { CryptoActorApi, MainToSync, StateChanges, SyncConfig, SyncToMain } from '../../src/protocol.ts';
import { SyncActor } from '../../src/sync/actor.ts';
import { savedSince, tempDataDir, waitUntil } from '../integration/util.ts';

type After = { after(fn: () => Promise<void>): void };

const STATE = { state: { events: [{ type: 'm.room.name', state_key: '', content: { name: 'Room' }, sender: '@a:x', event_id: '$n' }] }, timeline: { events: [] } };
const TO_DEVICE = { events: [{ type: 'm.room_key_request', sender: '@a:x', content: { action: 'request_cancellation', request_id: 'r', requesting_device_id: 'A' } }] };

/** One /sync request as the server saw it: its since token, and whether it ended without an answer. */
interface Seen {
  since: string | null;
  abandoned: boolean;
}

/** A homeserver answering the poll without a token with `first`, and holding every later poll until it closes. */
async function server(t: After, first: unknown): Promise<{ url: string; seen: Seen[] }> {
  const seen: Seen[] = [];
  const held: ServerResponse[] = [];
  const srv = createServer((req, res) => {
    const poll: Seen = { since: new URL(req.url!, 'http://x').searchParams.get('since'), abandoned: false };
    seen.push(poll);
    if (poll.since !== null) {
      res.on('close', () => (poll.abandoned = !res.writableEnded));
      return void held.push(res);
    }
    const body = JSON.stringify(first);
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) }).end(body);
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  t.after(async () => {
    for (const res of held) res.destroy();
    await new Promise((r) => srv.close(r));
  });
  return { url: `http://127.0.0.1:${(srv.address() as AddressInfo).port}`, seen };
}

function config(homeserver: string, dataDir: string, encryption = false): SyncConfig {
  return {
    homeserver, userId: '@bot:x', deviceId: 'D', accessToken: 't', dataDir, pollTimeoutMs: 30_000, deadlineMarginMs: 15_000, requestTimeoutMs: 10_000,
    maxInFlightEvents: 20_000, maxJournalEvents: 100_000, maxGapEvents: 0, seqFloor: 0, deliverInitialTimeline: true,
    backoffMinMs: 10, backoffMaxMs: 10, wantedTypes: null, encryption,
  };
}

/** A gate a fake actor call waits on until the test opens it. */
function gate(): { wait: Promise<void>; open: () => void; reached: boolean } {
  let open!: () => void;
  const g = { wait: new Promise<void>((r) => (open = r)), open: () => open(), reached: false };
  return g;
}

/** The sync actor over a real cache whose `apply` runs `beforeApply` first, and a crypto actor that only takes sync changes. */
async function actor(t: After, dataDir: string, beforeApply: () => Promise<void>, crypto?: Pick<CryptoActorApi, 'receiveSyncChanges'>) {
  const posted: SyncToMain[] = [];
  const cache = new CacheActor();
  await cache.open({ dataDir, maxRoomsInMemory: 100 });
  const events: Port<MainToSync, SyncToMain> = { post: (msg) => void posted.push(msg), onMessage: () => {}, close: () => {} };
  const sync = new SyncActor({
    cache: {
      open: (c) => cache.open(c),
      apply: async (changes: StateChanges, deferWrite?: boolean) => {
        await beforeApply();
        return cache.apply(changes, deferWrite);
      },
      commit: () => cache.commit(),
      getRoom: (id) => cache.getRoom(id),
      summaries: () => cache.summaries(),
      accountData: (r, type) => cache.accountData(r, type),
      close: () => cache.close(),
    },
    crypto: crypto as Remote<CryptoActorApi> | undefined,
    events,
  });
  t.after(async () => {
    await sync.stop(0);
    await cache.close();
  });
  return { sync, posted };
}

test('the next poll goes out while a body is still being applied, for its next_batch', async (t) => {
  const dataDir = tempDataDir(t);
  const { url, seen } = await server(t, { next_batch: 's1', rooms: { join: { '!r:x': STATE } } });
  const applying = gate();
  const { sync } = await actor(t, dataDir, () => {
    applying.reached = true;
    return applying.wait;
  });
  await sync.start(config(url, dataDir));
  await waitUntil(() => seen.length === 2, 5_000, 'the poll sent ahead');
  assert.equal(applying.reached, true, 'the body is being applied');
  assert.equal(seen[1]!.since, 's1');
  assert.equal(savedSince(dataDir), null, 'the token is not saved before the body is applied and journaled');
  applying.open();
  await waitUntil(async () => (await sync.status()).since === 's1', 5_000, 'the body handed off');
  assert.equal(seen.length, 2, 'the loop took the poll sent ahead: no second request for s1');
  assert.equal(seen[1]!.abandoned, false);
});

test('a body with to-device events: the next poll goes out only once the crypto actor has them', async (t) => {
  const dataDir = tempDataDir(t);
  const { url, seen } = await server(t, { next_batch: 's1', to_device: TO_DEVICE, rooms: { join: { '!r:x': STATE } } });
  const crypto = gate();
  const { sync } = await actor(t, dataDir, async () => {}, {
    receiveSyncChanges: async () => {
      crypto.reached = true;
      await crypto.wait;
    },
  });
  await sync.start(config(url, dataDir, true));
  const firstPollAt = await waitUntil(async () => crypto.reached && (await sync.status()).lastPollStartAt, 5_000, 'the to-device events given to the crypto actor');
  // A poll is sent synchronously once the body is scanned, before its changes go anywhere: none has started since.
  assert.equal((await sync.status()).lastPollStartAt, firstPollAt);
  assert.deepEqual(seen.map((s) => s.since), [null]);
  crypto.open();
  await waitUntil(() => seen.length === 2, 5_000, 'the next poll, after the crypto actor took the events');
  assert.equal(seen[1]!.since, 's1');
});

test('a body whose hand-off fails is polled again with its own token; the poll sent ahead is dropped', async (t) => {
  const dataDir = tempDataDir(t);
  const { url, seen } = await server(t, { next_batch: 's1', rooms: { join: { '!r:x': STATE } } });
  let failures = 1;
  const { sync, posted } = await actor(t, dataDir, async () => {
    if (failures-- > 0) {
      // Not before the poll ahead reached the server: the test must see it dropped, not never sent.
      await waitUntil(() => seen.length === 2, 5_000, 'the poll sent ahead');
      throw new HalcyonError('HALCYON_STORE', 'cache: cannot apply (injected)');
    }
  });
  await sync.start(config(url, dataDir));
  await waitUntil(async () => (await sync.status()).since === 's1', 5_000, 'the body applied on its second poll');
  assert.ok(posted.some((m) => m.kind === 'syncError' && m.error.code === 'HALCYON_STORE'), 'the failure was reported');
  assert.deepEqual(seen.slice(0, 3).map((s) => s.since), [null, 's1', null], 'polled again without a token');
  assert.equal(seen[1]!.abandoned, true, 'the poll sent ahead for the failed body was dropped');
  await waitUntil(() => seen.length === 4, 5_000, 'a poll sent ahead for the body polled again');
  assert.equal(seen[3]!.since, 's1');
});
