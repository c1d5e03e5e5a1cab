/**
 * Per-room metrics against the real Synapse, in the host application's own registry with its own prefix: only
 * joined rooms get series, at most `maxRoomLabels` of them (the rest count under `other`), and a room's series
 * go when the bot leaves it, so joins, leaves and invite spam cannot grow the registry without bound.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { Registry } from 'prom-client';
import { testHomeserver, type Homeserver } from '../harness/synapse.ts';
import { newBot, newPeer, roomWithBot, WAIT_MS, waitUntil } from './util.ts';

let hs: Homeserver;
before(async () => {
  hs = await testHomeserver();
});
after(async () => {
  await hs?.stop();
});

/** The `room` label values of a metric in the exposition text. */
function rooms(text: string, metric: string): string[] {
  const out = new Set<string>();
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${metric}{`)) continue;
    const m = /room="([^"]*)"/.exec(line);
    if (m) out.add(m[1]!);
  }
  return [...out].sort();
}

test('metrics { registry, prefix, perRoom, maxRoomLabels }: joined rooms labelled up to the cap, the rest "other", series gone on leave', async (t) => {
  const registry = new Registry();
  const bot = await newBot(t, hs, { encryption: false, metrics: { registry, prefix: 'mybot_', perRoom: true, maxRoomLabels: 2 } });
  let handled = 0;
  bot.client.on('message', () => void handled++);
  bot.client.on('invite', () => void handled++);
  await bot.client.run(bot.token);
  assert.equal(bot.client.metricsRegistry, registry);
  const peer = await newPeer(hs);
  const [a, b, c] = [await roomWithBot(peer, bot.user.userId), await roomWithBot(peer, bot.user.userId), await roomWithBot(peer, bot.user.userId)];
  for (const r of [a, b, c]) await peer.sendText(r, 'hi');
  await waitUntil(() => handled >= 6, WAIT_MS, 'three invites and three messages handled');
  const text = await registry.metrics();
  assert.match(text, /^mybot_events_handled_total\{/m, 'the prefix is used');
  const labelled = rooms(text, 'mybot_events_handled_total');
  assert.equal(labelled.length, 3, `two rooms and other: ${labelled.join(', ')}`);
  assert.ok(labelled.includes('other'));
  // Invites (rooms not yet joined) never got a label of their own: the two labelled rooms are joined rooms.
  const own = labelled.filter((r) => r !== 'other');
  assert.ok(own.every((r) => [a, b, c].includes(r)));

  await bot.client.leaveRoom(own[0]!);
  await waitUntil(async () => !rooms(await registry.metrics(), 'mybot_events_handled_total').includes(own[0]!), WAIT_MS, 'the left room\'s series removed');
  const after = await registry.metrics();
  assert.ok(!rooms(after, 'mybot_handler_duration_seconds_count').includes(own[0]!));
  assert.ok(!rooms(after, 'mybot_handler_lag_seconds_count').includes(own[0]!));
});
