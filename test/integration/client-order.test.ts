/** Client dispatch: events run in order within a room and concurrently across rooms. */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import type { Message } from '../../src/index.ts';
import type { Peer } from '../harness/peer.ts';
import { testHomeserver, type Homeserver } from '../harness/synapse.ts';
import { deferred, newBot, newPeer, randomHops, roomWithBot, WAIT_MS, waitUntil } from './util.ts';

let hs: Homeserver;
before(async () => {
  hs = await testHomeserver();
});
after(async () => {
  await hs?.stop();
});

/** Sends `bodies` one after another (each send awaited, so server order is send order); returns the event ids. */
async function sendInOrder(peer: Peer, roomId: string, bodies: string[]): Promise<string[]> {
  const ids: string[] = [];
  for (const b of bodies) ids.push(await peer.sendText(roomId, b));
  return ids;
}

const numbered = (prefix: string, n: number) => Array.from({ length: n }, (_, i) => `${prefix} ${i + 1}`);

test('per-room order equals send order with random async handler delays, across two busy rooms', async (t) => {
  const bot = await newBot(t, hs);
  const peer = await newPeer(hs);
  const received = new Map<string, string[]>();
  let running = 0;
  let maxRunning = 0;
  bot.client.on('message', async (m) => {
    running++;
    maxRunning = Math.max(maxRunning, running);
    try {
      await randomHops(30);
      await delay(Math.floor(Math.random() * 6)); // 0-5 ms
      const list = received.get(m.roomId) ?? [];
      list.push(m.body);
      received.set(m.roomId, list);
    } finally {
      running--;
    }
  });
  await bot.client.run(bot.token);
  const [roomA, roomB] = await Promise.all([roomWithBot(peer, bot.user.userId, { name: 'A' }), roomWithBot(peer, bot.user.userId, { name: 'B' })]);

  const bodiesA = numbered('A', 20);
  const bodiesB = numbered('B', 20);
  // Both rooms are sent to at the same time, so their events interleave on the server.
  await Promise.all([sendInOrder(peer, roomA, bodiesA), sendInOrder(peer, roomB, bodiesB)]);
  await waitUntil(
    () => (received.get(roomA)?.length ?? 0) >= 20 && (received.get(roomB)?.length ?? 0) >= 20,
    WAIT_MS,
    `20 messages in each room (A: ${received.get(roomA)?.length ?? 0}, B: ${received.get(roomB)?.length ?? 0})`,
  );
  assert.deepEqual(received.get(roomA), bodiesA, 'room A: receive order equals send order');
  assert.deepEqual(received.get(roomB), bodiesB, 'room B: receive order equals send order');
  assert.equal(received.size, 2);
  t.diagnostic(`at most ${maxRunning} handlers ran at once`);
  assert.deepEqual(bot.errors, []);
});

test('a slow handler in room A does not block room B; room A resumes in order once released', async (t) => {
  const bot = await newBot(t, hs);
  const peer = await newPeer(hs);
  const received: Array<{ roomId: string; body: string }> = [];
  const gate = deferred();
  let blockEntered = false;
  let blockFinished = false;
  bot.client.on('message', async (m: Message) => {
    received.push({ roomId: m.roomId, body: m.body });
    if (m.body === 'block') {
      blockEntered = true;
      await gate.promise;
      blockFinished = true;
    } else {
      await randomHops(10);
    }
  });
  await bot.client.run(bot.token);
  const [roomA, roomB] = await Promise.all([roomWithBot(peer, bot.user.userId, { name: 'A' }), roomWithBot(peer, bot.user.userId, { name: 'B' })]);
  const inRoom = (roomId: string) => received.filter((r) => r.roomId === roomId).map((r) => r.body);

  try {
    await peer.sendText(roomA, 'block');
    await waitUntil(() => blockEntered, WAIT_MS, "room A's handler to start on 'block'");
    const afterA = numbered('A after', 3);
    const bodiesB = numbered('B', 5);
    await sendInOrder(peer, roomA, afterA);
    await sendInOrder(peer, roomB, bodiesB);

    // Room B is delivered in full while room A's handler is still waiting.
    await waitUntil(() => inRoom(roomB).length >= 5, WAIT_MS, `room B's 5 messages while room A is blocked (got ${inRoom(roomB).length})`);
    assert.deepEqual(inRoom(roomB), bodiesB);
    assert.equal(blockFinished, false, "room A's handler is still blocked");
    assert.deepEqual(inRoom(roomA), ['block'], "room A's later messages wait behind the blocked handler");

    gate.resolve();
    await waitUntil(() => inRoom(roomA).length >= 4, WAIT_MS, `room A's messages after the release (got ${inRoom(roomA).length})`);
    assert.ok(blockFinished);
    assert.deepEqual(inRoom(roomA), ['block', ...afterA], 'room A resumes in send order');
    assert.deepEqual(bot.errors, []);
  } finally {
    gate.resolve(); // never leave the handler (and so stop()) hanging
  }
});

test('concurrency: 2 lets handlers of two rooms run at once; a third room waits for one of them to finish', async (t) => {
  const bot = await newBot(t, hs, { encryption: false, concurrency: 2 });
  const peer = await newPeer(hs);
  const gates = new Map([['A', deferred()], ['B', deferred()]]);
  const events: string[] = [];
  bot.client.on('message', async (m: Message) => {
    events.push(`start ${m.body}`);
    await gates.get(m.body)?.promise;
    events.push(`end ${m.body}`);
  });
  await bot.client.run(bot.token);
  const rooms = await Promise.all(['A', 'B', 'C'].map((name) => roomWithBot(peer, bot.user.userId, { name })));
  try {
    await peer.sendText(rooms[0]!, 'A');
    await peer.sendText(rooms[1]!, 'B');
    await waitUntil(() => events.includes('start A') && events.includes('start B'), WAIT_MS, 'the handlers of rooms A and B to run together');
    await peer.sendText(rooms[2]!, 'C');
    // C's event reached the dispatcher (three queued or running) and waits: both slots are taken.
    await waitUntil(async () => (await bot.client.health()).queuedEvents === 3, WAIT_MS, "room C's event to be queued");
    assert.deepEqual(events, ['start A', 'start B'], 'C does not start while A and B run');
    gates.get('B')!.resolve();
    await waitUntil(() => events.includes('end C'), WAIT_MS, 'room C to run once B finished');
    assert.deepEqual(events, ['start A', 'start B', 'end B', 'start C', 'end C']);
  } finally {
    for (const g of gates.values()) g.resolve();
  }
  await waitUntil(() => events.includes('end A'), WAIT_MS, 'room A to finish');
  assert.deepEqual(bot.errors, []);
});
