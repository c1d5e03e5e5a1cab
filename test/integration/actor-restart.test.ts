/**
 * Dead or stuck workers are restarted, on the real Synapse while a peer streams numbered messages: the sync or
 * cache actor's worker crashes mid-stream (fault injection), or the sync actor stops answering while its thread
 * stays alive (the watchdog must notice); the client reports it (`HALCYON_ACTOR_DIED`, `HALCYON_ACTOR_TIMEOUT`),
 * starts the actors again — the restart is awaited on the client's own 'actors restarted' warning — and every
 * message is handled exactly once in this process, in order. A handler is held while the actors die, so the
 * restarted sync actor must merge what it reposts with what main is running.
 */
import assert from 'node:assert/strict';
import { after, before, test, type TestContext } from 'node:test';
import type { Logger } from '../../src/index.ts';
import { testHomeserver, type Homeserver } from '../harness/synapse.ts';
import { startStream } from '../helpers/fault-stream.ts';
import { defer, deferred, newBot, newPeer, roomWithBot, waitUntil } from './util.ts';
import { crashActorForTests, stallActorForTests } from '../../src/client/testing.ts';

let hs: Homeserver;
before(async () => {
  hs = await testHomeserver();
});
after(async () => {
  await hs?.stop();
});

/** Bound of the waits around a restart (a stuck actor takes the watchdog's 10 s, then a bounded stop). */
const RESTART_MS = 60_000;
const COUNT = 100;
/** The message whose handler is held while the actors die. */
const HELD = 40;

/** A logger that keeps warnings (the client's restart signal is one) and drops the rest. */
function warnings(): { logger: Logger; lines: string[] } {
  const lines: string[] = [];
  const keep = (obj: unknown, msg?: string) => void lines.push(`${msg ?? ''} ${obj instanceof Error ? obj.message : JSON.stringify(obj)}`);
  return { lines, logger: { debug() {}, info() {}, warn: keep, error: keep } };
}

/** A bot on a fresh account, a peer streaming COUNT numbered messages into their room, the handler held at HELD. */
async function streamingBot(t: TestContext, opts: { watchdogMs?: number } = {}) {
  const log = warnings();
  const bot = await newBot(t, hs, { encryption: false, maxQueuedEvents: 30, logger: log.logger, ...opts });
  const gate = deferred();
  defer(t, () => gate.resolve());
  const seen: number[] = [];
  bot.client.on('message', async (m) => {
    const n = Number(m.body.slice(1));
    seen.push(n);
    if (n === HELD) await gate.promise;
  });
  await bot.client.run(bot.token);
  const peer = await newPeer(hs);
  const roomId = await roomWithBot(peer, bot.user.userId);
  const stream = startStream({ baseUrl: hs.baseUrl, accessToken: peer.user.accessToken, roomId, count: COUNT, perSecond: 50, prefix: 'n' });
  defer(t, () => stream.stop());
  await waitUntil(() => seen.includes(HELD), RESTART_MS, `message ${HELD} to be in its handler`);
  /** Waits for the client's restart signal, lets the held handler go, and checks every message arrived once, in order. */
  const restartedAndComplete = async () => {
    await waitUntil(() => log.lines.some((l) => l.startsWith('actors restarted')), RESTART_MS, `the 'actors restarted' warning (warnings: ${log.lines.join(' | ')})`);
    assert.equal((await bot.client.health()).state, 'running');
    gate.resolve();
    await stream.done;
    await waitUntil(() => seen.length >= COUNT, RESTART_MS, `all ${COUNT} messages (got ${seen.length})`);
    assert.deepEqual(seen, Array.from({ length: COUNT }, (_, i) => i), 'each message once, in order, across the restart');
    await waitUntil(async () => (await bot.client.health()).backlogEvents === 0, RESTART_MS, 'the journal to empty');
  };
  return { bot, restartedAndComplete };
}

for (const victim of ['sync', 'cache'] as const) {
  test(`the ${victim} actor's worker crashes mid-stream: HALCYON_ACTOR_DIED is reported, the actors restart, every message is handled once, in order`, async (t) => {
    const { bot, restartedAndComplete } = await streamingBot(t);
    await crashActorForTests(bot.client, victim);
    await restartedAndComplete();
    assert.deepEqual(bot.errors.map((e) => e.code), ['HALCYON_ACTOR_DIED']);
    // The cache actor is the sync worker's guest: crashing it ends that worker, which is what is reported.
    assert.match(bot.errors[0]!.message, /the sync actor's worker exited/);
  });
}

test('a sync actor that stops answering while its thread lives is found by the watchdog (watchdogMs) and restarted: HALCYON_ACTOR_TIMEOUT, every message once, in order', async (t) => {
  const { bot, restartedAndComplete } = await streamingBot(t, { watchdogMs: 250 });
  let foundAt = 0;
  bot.client.on('error', (e) => void (e.code === 'HALCYON_ACTOR_TIMEOUT' && (foundAt ||= Date.now())));
  const stalledAt = Date.now();
  await stallActorForTests(bot.client, 'sync');
  await restartedAndComplete();
  assert.deepEqual(bot.errors.map((e) => e.code), ['HALCYON_ACTOR_TIMEOUT']);
  assert.match(bot.errors[0]!.message, /did not answer the watchdog within 10000 ms/);
  // A check every 250 ms finds it 10 s (the answer's deadline) after the stall; the default 30 s period, started
  // with run() a moment before, could not have before ~40 s. The bound is generous on purpose.
  assert.ok(foundAt - stalledAt < 25_000, `the stall was reported ${foundAt - stalledAt} ms after it began: watchdogMs 250 was not used`);
});
