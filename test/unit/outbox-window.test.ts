/**
 * The outbox's send window: sends of one chain (a handler run's sends into its event's room; a handler's sends into
 * another room, per room of its event; sends made outside handlers) go one at a time in call order, while chains of
 * one room overlap up to `window` sends in flight. Attempts are answered by the test (no server: what is checked is
 * what the outbox starts and when), and transaction IDs come from the slot claimed where the send was called.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { beginHandlerRun, claimSendSlot, endHandlerSyncPart, laneScope, Outbox, type OutboxOp } from '../../src/outbox.ts';

/** An attempt the test has not answered yet. */
interface Pending {
  roomId: string;
  body: string;
  txnId: string;
  answer(): void;
}

/** An outbox whose attempts wait for the test to answer them; `started` lists them in the order they began. */
async function harness(t: TestContext, window: number) {
  const dataDir = await mkdtemp(join(tmpdir(), 'halcyon-outbox-window-'));
  const started: Pending[] = [];
  let inFlight = 0;
  let most = 0;
  const changed = new Set<() => void>();
  const outbox = new Outbox({
    dataDir,
    attempt: (roomId, txnId, op) =>
      new Promise<string>((resolve) => {
        inFlight++;
        most = Math.max(most, inFlight);
        const body = op.kind === 'send' ? String(op.content.body) : 'redaction';
        started.push({ roomId, body, txnId, answer: () => void (inFlight--, resolve(`$${body}`)) });
        for (const f of changed) f();
      }),
    failed: () => {},
    rateLimit: null,
    window,
    maxAttempts: 3,
    retryMinMs: 1,
    retryMaxMs: 1,
  });
  t.after(async () => {
    outbox.close();
    await rm(dataDir, { recursive: true, force: true });
  });
  /** Resolves once `n` attempts have started (the outbox starts them synchronously or on a settled send's turn). */
  const startedCount = (n: number) =>
    new Promise<void>((resolve) => {
      const check = () => {
        if (started.length < n) return;
        changed.delete(check);
        resolve();
      };
      changed.add(check);
      check();
    });
  return { outbox, started, startedCount, most: () => most };
}

/** One turn of the event loop: attempts the outbox can start have started. */
const turn = () => new Promise<void>((resolve) => setImmediate(resolve));

const msg = (body: string): OutboxOp => ({ kind: 'send', type: 'm.room.message', content: { msgtype: 'm.text', body } });

/** Sends `bodies` into `roomId` from the handler run of `eventId` (an event of `eventRoom`), as a handler would. */
function fromHandler(outbox: Outbox, eventId: string, eventRoom: string, roomId: string, bodies: string[]): Array<Promise<string>> {
  return laneScope(() => {
    beginHandlerRun(eventId, eventRoom);
    return bodies.map((b) => outbox.send(roomId, msg(b), true));
  });
}

test("different events' sends into one room overlap up to the window; each run's own sends go one at a time, in call order", async (t) => {
  const { outbox, started, startedCount, most } = await harness(t, 3);
  const sends = [
    ...fromHandler(outbox, '$e1', '!a', '!a', ['e1-1', 'e1-2']),
    ...fromHandler(outbox, '$e2', '!a', '!a', ['e2-1', 'e2-2']),
    ...fromHandler(outbox, '$e3', '!a', '!a', ['e3-1']),
    ...fromHandler(outbox, '$e4', '!a', '!a', ['e4-1']),
  ];
  // The window (3) holds the first send of each of three runs; e1-2 and e2-2 wait for their own run's first.
  await turn();
  assert.deepEqual(started.map((p) => p.body), ['e1-1', 'e2-1', 'e3-1']);
  started[1]!.answer(); // e2-1 done: e2-2 is next of its run, ahead of e4-1
  await startedCount(4);
  await turn();
  assert.equal(started.length, 4, 'one more in flight, no more');
  assert.equal(started[3]!.body, 'e2-2');
  started[0]!.answer(); // e1-1 done: e1-2 (call order within the room's queue)
  await startedCount(5);
  assert.equal(started[4]!.body, 'e1-2');
  for (let i = 2; i < 5; i++) started[i]!.answer();
  await startedCount(6);
  assert.equal(started[5]!.body, 'e4-1');
  started[5]!.answer();
  assert.deepEqual(await Promise.all(sends), ['$e1-1', '$e1-2', '$e2-1', '$e2-2', '$e3-1', '$e4-1']);
  assert.equal(most(), 3, 'never more than the window in flight');
});

test("sends made outside handlers are one chain; a handler's sends into another room keep the order of its event's room", async (t) => {
  const { outbox, started, startedCount } = await harness(t, 4);
  const outside = ['o1', 'o2', 'o3'].map((b) => outbox.send('!b', msg(b), true));
  // A relay: events of !a answered into !b, each from its own handler run, keep !a's order among themselves.
  const relayed = [...fromHandler(outbox, '$a1', '!a', '!b', ['r1']), ...fromHandler(outbox, '$a2', '!a', '!b', ['r2'])];
  await turn();
  assert.deepEqual(started.map((p) => p.body), ['o1', 'r1'], 'one in flight per chain');
  // Answer whatever is in flight until all five went out; each chain's next starts only after its previous.
  let answered = 0;
  while (answered < 5) {
    await startedCount(answered + 1);
    await turn();
    const now = started.slice(answered);
    assert.ok(now.length <= 2, 'at most one per chain in flight');
    for (const p of now) p.answer();
    answered += now.length;
  }
  await Promise.all([...outside, ...relayed]);
  const order = (prefix: string) => started.map((p) => p.body).filter((b) => b.startsWith(prefix));
  assert.deepEqual(order('o'), ['o1', 'o2', 'o3']);
  assert.deepEqual(order('r'), ['r1', 'r2']);
});

test('a window of 1 is strict call order in a room, whichever run sent', async (t) => {
  const { outbox, started, startedCount, most } = await harness(t, 1);
  const sends = [...fromHandler(outbox, '$e1', '!a', '!a', ['x1']), ...fromHandler(outbox, '$e2', '!a', '!a', ['y1']), outbox.send('!a', msg('z1'), true)];
  for (let n = 1; n <= 3; n++) {
    await startedCount(n);
    started[n - 1]!.answer();
  }
  await Promise.all(sends);
  assert.deepEqual(started.map((p) => p.body), ['x1', 'y1', 'z1']);
  assert.equal(most(), 1);
});

test('the transaction ID comes from the handler run that called the send, even when the send reaches the outbox after the next run began', async (t) => {
  const { outbox, started, startedCount } = await harness(t, 4);
  const late = laneScope(() => {
    beginHandlerRun('$first', '!a');
    const slot = claimSendSlot(); // what sendMessage does where it is called, before its awaits
    beginHandlerRun('$second', '!a'); // the lane moves on while the first send is still being prepared
    return outbox.send('!a', msg('late'), true, slot);
  });
  await startedCount(1);
  assert.match(started[0]!.txnId, /^hcr\./);
  started[0]!.answer();
  assert.equal(await late, '$late');
  // A re-run of $first sends into !a at its position 0 again: the outbox answers it from disk, without an attempt.
  const rerun = laneScope(() => {
    beginHandlerRun('$first', '!a');
    return outbox.send('!a', msg('late'), true);
  });
  assert.equal(await rerun, '$late');
  assert.equal(started.length, 1, 'no second attempt');
});

test("a run keyed by a batch's event decodes its key only at its first send, once, in a lane scope and outside one", async () => {
  let reads = 0;
  const source = { runKey: (i: number) => (reads++, `$event${i}`) };
  // Outside a lane scope (synchronous handlers): the synchronous part of the run.
  beginHandlerRun(source, '!a', 3);
  assert.equal(reads, 0, 'nothing decoded before a send');
  assert.deepEqual(claimSendSlot(), { key: '$event3', room: '!a', n: 0 });
  assert.deepEqual(claimSendSlot(), { key: '$event3', room: '!a', n: 1 });
  assert.equal(reads, 1);
  beginHandlerRun(source, '!a', 4); // a run that sends nothing
  beginHandlerRun('$plain', '!b');
  assert.deepEqual(claimSendSlot(), { key: '$plain', room: '!b', n: 0 }, 'a string key replaces an unread source');
  assert.equal(reads, 1);
  endHandlerSyncPart();
  assert.equal(claimSendSlot(), null, 'after the synchronous part, outside a scope: no run');
  // In a lane scope (async handlers): the run's context holds it across awaits.
  await laneScope(async () => {
    beginHandlerRun(source, '!c', 5);
    await Promise.resolve();
    assert.deepEqual(claimSendSlot(), { key: '$event5', room: '!c', n: 0 });
    assert.equal(reads, 2);
  });
});
