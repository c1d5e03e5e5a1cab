/**
 * The main thread's acknowledgement bookkeeping (src/client/acks.ts), as pure objects: which items of a batch run
 * or are done, and the coalesced messages the sync actor's journal gets.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { AckTracker, DONE, HeldBatch, PROGRESS_ACK_MS, STARTED } from '../../src/client/acks.ts';
import type { MainToSync } from '../../src/protocol.ts';

const turn = () => new Promise<void>((r) => setImmediate(r));

test('HeldBatch: items go not started → started → done; waiters of an item run when it is done; takeDone lists events only, each once', () => {
  const held = new HeldBatch(3, 2); // 3 events, then 2 other items (an invite, a receipt, ...)
  assert.deepEqual([...held.state], [0, 0, 0, 0, 0]);
  held.start(1);
  held.start(3);
  assert.equal(held.state[1], STARTED);
  const woken: number[] = [];
  held.whenDone(1, () => woken.push(1));
  held.whenDone(1, () => woken.push(11));
  held.done(3);
  held.done(1);
  assert.deepEqual(woken, [1, 11], 'both waiters, once');
  held.done(1);
  assert.deepEqual(woken, [1, 11], 'not again');
  assert.equal(held.state[3], DONE);
  assert.deepEqual(held.takeDone(), [1], 'item 3 is not an event');
  held.done(0);
  assert.deepEqual(held.takeDone(), [0], 'only what was done since the last take');
  assert.deepEqual(held.takeDone(), []);
});

test('AckTracker: a burst of handled events costs one message, progress alone after PROGRESS_ACK_MS, with the indices read at send time; a complete batch goes at the end of its turn', async (t) => {
  t.mock.timers.enable({ apis: ['setTimeout'] });
  const sent: MainToSync[] = [];
  const helds = new Map([[7, new HeldBatch(4, 0)], [8, new HeldBatch(2, 0)]]);
  const acks = new AckTracker((m) => void sent.push(m), (seq) => helds.get(seq)?.takeDone() ?? null);
  for (const i of [0, 2]) {
    helds.get(7)!.done(i);
    acks.done(7);
  }
  helds.get(8)!.done(0);
  acks.done(8);
  await turn();
  assert.deepEqual(sent, [], 'progress alone waits: handlers that settle one a turn cost a message per PROGRESS_ACK_MS, not per event');
  t.mock.timers.tick(PROGRESS_ACK_MS);
  assert.deepEqual(sent, [{ kind: 'acks', progress: [{ seq: 7, indices: [0, 2] }, { seq: 8, indices: [0] }], complete: [] }]);
  // The next message carries only what was handled since: a batch's acknowledgements cost its events once,
  // not its done events again at every message (an ingest whose publishes settle one a turn sent ~n²/2 indices).
  helds.get(7)!.done(3);
  acks.done(7);
  t.mock.timers.tick(PROGRESS_ACK_MS);
  assert.deepEqual(sent.splice(1), [{ kind: 'acks', progress: [{ seq: 7, indices: [3] }], complete: [] }]);
  // Batch 8 completes after more progress, with progress of batch 7 waiting: both go at the end of the turn, 8 as
  // complete, without indices (its room in the sync actor is freed at once).
  helds.get(7)!.done(1);
  acks.done(7);
  helds.get(8)!.done(1);
  acks.done(8);
  acks.finish(8);
  await turn();
  assert.deepEqual(sent[1], { kind: 'acks', progress: [{ seq: 7, indices: [1] }], complete: [8] });
  t.mock.timers.tick(PROGRESS_ACK_MS);
  await turn();
  assert.equal(sent.length, 2, 'nothing more: the progress timer went with that message');
});

test('AckTracker.flush sends at once; a batch whose held state is gone (completed meanwhile) sends no progress', () => {
  const sent: MainToSync[] = [];
  const acks = new AckTracker((m) => void sent.push(m), () => null);
  acks.done(3);
  acks.flush();
  assert.deepEqual(sent, [{ kind: 'acks', progress: [], complete: [] }]);
});

test('AckTracker: an acknowledgement waits for the sends still being queued (a kill in between would lose them), and acknowledgements keep their order', async () => {
  const sent: MainToSync[] = [];
  let queueing: Promise<void> | null = null;
  let queued!: () => void;
  const acks = new AckTracker((m) => void sent.push(m), () => null, () => queueing);
  // A handler of batch 1 called a send whose preparation (is the room encrypted? an actor's answer) is not done.
  queueing = new Promise<void>((r) => (queued = r));
  acks.finish(1);
  await turn();
  await turn();
  assert.equal(sent.length, 0, "batch 1 acknowledged before its handler's send reached the outbox");
  // Batch 2 completes meanwhile, with nothing of its own being queued: it still goes after batch 1.
  queueing = null;
  acks.finish(2);
  await turn();
  assert.equal(sent.length, 0, 'batch 2 acknowledged ahead of batch 1');
  queued();
  await turn();
  assert.deepEqual(
    sent.map((m) => (m.kind === 'acks' ? m.complete : null)),
    [[1], [2]],
  );
  acks.finish(3);
  await turn();
  assert.equal(sent.length, 3, 'with nothing being queued, the next acknowledgement goes at once (next turn)');
});
