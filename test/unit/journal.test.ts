/** The event journal over a real SQLite file: append with the since token, acks, completion, reload after reopening. */
import assert from 'node:assert/strict';
import { appendFileSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { MessageChannel } from 'node:worker_threads';
import { kvGet, openDatabase } from '../../src/store.ts';
import { EventJournal, isDone, type JournaledBatch } from '../../src/sync/journal.ts';
import { processSync } from '../../src/sync/process.ts';
import { tempDataDir } from '../integration/util.ts';

function batchOf(n: number, tag: string): JournaledBatch {
  const events = Array.from({ length: n }, (_, i) => ({ type: 'm.room.message', event_id: `$${tag}${i}`, sender: '@a:x', origin_server_ts: i, content: { body: `${tag} ${i}` } }));
  const body = Buffer.from(JSON.stringify({ next_batch: `s-${tag}`, rooms: { join: { '!r:x': { timeline: { events } } } } }));
  const p = processSync(body, { wantedTypes: null });
  return {
    nextBatch: p.nextBatch,
    first: false,
    deliver: true,
    rooms: p.rooms,
    body: new Uint8Array(body.buffer, body.byteOffset, body.byteLength),
    events: p.events,
    invites: [],
    knocks: [],
    left: [],
    summaries: [],
    errors: [],
    accountData: [],
    receipts: [],
  };
}

test('append saves the batch and the since token together; acks set done bits; complete deletes; a reopened journal has the rest', (t) => {
  const dir = tempDataDir(t);
  let db = openDatabase(dir, 'sync.sqlite');
  let j = new EventJournal(db, dir);
  assert.equal(j.maxSeq(), 0);
  j.append([{ seq: 1, batch: batchOf(3, 'a') }], 's-a');
  j.append([{ seq: 2, batch: batchOf(5, 'b') }], 's-b');
  j.append([{ seq: 3, batch: batchOf(2, 'c') }], 's-c');
  assert.equal(kvGet(db, 'since'), 's-c', 'the since token moved with the last append');
  assert.equal(j.backlogEvents(), 10);
  j.markPosted(1);
  j.markPosted(2);
  // Batch 1 completes whole; two events of batch 2 are done (one acked twice), an out-of-range index is ignored.
  const freed = j.ack([{ seq: 2, indices: [1, 3, 3, 99] }], [1]);
  assert.deepEqual([...freed].sort(), [[1, 3], [2, 2]]);
  assert.equal(j.backlogEvents(), 5);
  db.close();

  db = openDatabase(dir, 'sync.sqlite');
  j = new EventJournal(db, dir);
  assert.deepEqual(j.pending(), [
    { seq: 2, events: 5, doneEvents: 2, posted: true },
    { seq: 3, events: 2, doneEvents: 0, posted: false },
  ]);
  assert.equal(j.maxSeq(), 3);
  const row = j.load(2)!;
  assert.equal(row.posted, true);
  assert.deepEqual([0, 1, 2, 3, 4].map((i) => isDone(row.done, i)), [false, true, false, true, false]);
  const b = row.batch;
  assert.equal(b.events.count, 5);
  assert.equal(b.nextBatch, 's-b');
  const text = Buffer.from(b.body).toString('utf8', b.events.offsets[0]!, b.events.offsets[1]!);
  assert.equal(JSON.parse(text).event_id, '$b0');
  // The ID columns are not journaled (a fifth more bytes to write): the load gathers them from the body again.
  assert.equal(Buffer.from(b.events.ids!).toString('latin1'), '$b0@a:x$b1@a:x$b2@a:x$b3@a:x$b4@a:x');
  assert.deepEqual(Array.from(b.events.idAt!), [0, 3, 7, 10, 14, 17, 21, 24, 28, 31]);
  assert.ok(!readdirSync(dir).some((f) => f.endsWith('.seg') && readFileSync(join(dir, f)).includes('$b0@a:x$b1')), 'ID columns in a segment');
  // Every typed array owns its buffer: the batch can be transferred to another thread.
  const { port1, port2 } = new MessageChannel();
  const e = b.events;
  port1.postMessage(b, [b.body.buffer, e.room.buffer, e.type.buffer, e.relType.buffer, e.ts.buffer, e.flags.buffer, e.offsets.buffer, e.ids!.buffer, e.idAt!.buffer] as ArrayBuffer[]);
  port1.close();
  port2.close();
  assert.equal(j.load(99), undefined);
  // Completing a partly done batch frees what was left of it.
  assert.deepEqual([...j.ack([{ seq: 2, indices: [1] }], [2, 3])].sort(), [[2, 3], [3, 2]], 'an index acknowledged twice frees nothing twice');
  assert.deepEqual(j.pending(), []);
  assert.equal(j.backlogEvents(), 0);
  // Segments no row points into are gone; what is left (the one being written) is private.
  const segs = readdirSync(dir).filter((f) => f.endsWith('.seg'));
  assert.equal(segs.length, 1, `segments left: ${segs}`);
  assert.equal(statSync(join(dir, segs[0]!)).mode & 0o777, 0o600);
  j.close();
  db.close();
});

test('bytes a crash left after the last committed row are ignored: the next run writes a fresh segment', (t) => {
  const dir = tempDataDir(t);
  let db = openDatabase(dir, 'sync.sqlite');
  let j = new EventJournal(db, dir);
  j.append([{ seq: 1, batch: batchOf(2, 'a') }], 's-a');
  // A half-written batch: bytes in the segment, no row (the process died before the commit).
  const seg = readdirSync(dir).find((f) => f.endsWith('.seg'))!;
  appendFileSync(join(dir, seg), Buffer.from('garbage from a crash'));
  j.close();
  db.close();
  db = openDatabase(dir, 'sync.sqlite');
  j = new EventJournal(db, dir);
  assert.deepEqual(j.pending().map((r) => r.seq), [1]);
  assert.equal(j.load(1)!.batch.events.count, 2);
  j.append([{ seq: 2, batch: batchOf(1, 'b') }], 's-b');
  assert.equal(j.load(2)!.batch.events.count, 1);
  assert.equal(readdirSync(dir).filter((f) => f.endsWith('.seg')).length, 2, 'the new run appends to a fresh segment');
  j.close();
  db.close();
});

test('saveSince alone moves the token without a journal row', (t) => {
  const dir = tempDataDir(t);
  const db = openDatabase(dir, 'sync.sqlite');
  const j = new EventJournal(db, dir);
  j.saveSince('s-9');
  assert.equal(kvGet(db, 'since'), 's-9');
  assert.deepEqual(j.pending(), []);
  j.close();
  db.close();
});

test('a batch appended as posted (the sync actor posts it at once) reads back posted without a markPosted commit of its own', (t) => {
  const dir = tempDataDir(t);
  let db = openDatabase(dir, 'sync.sqlite');
  let j = new EventJournal(db, dir);
  j.append([{ seq: 1, batch: batchOf(2, 'a'), posted: true }], 's-a');
  j.append([{ seq: 2, batch: batchOf(1, 'b') }], 's-b');
  j.close();
  db.close();
  // After a crash, the first batch's events come again flagged as redeliveries; the second's, never posted, do not.
  db = openDatabase(dir, 'sync.sqlite');
  j = new EventJournal(db, dir);
  assert.deepEqual(j.pending(), [
    { seq: 1, events: 2, doneEvents: 0, posted: true },
    { seq: 2, events: 1, doneEvents: 0, posted: false },
  ]);
  assert.equal(j.load(1)!.posted, true);
  assert.equal(kvGet(db, 'since'), 's-b');
  j.close();
  db.close();
});

test('two batches appended together (a gap and its batch) go to one segment: the second never deletes the first', (t) => {
  const dir = tempDataDir(t);
  const db = openDatabase(dir, 'sync.sqlite');
  t.after(() => db.close());
  const j = new EventJournal(db, dir, 1); // every append past the first starts the next segment
  j.append([{ seq: 1, batch: batchOf(3, 'a') }], 's1');
  j.ack([], [1]);
  const gap = batchOf(4, 'gap');
  const batch = batchOf(2, 'b');
  j.append([{ seq: 2, batch: gap }, { seq: 3, batch }], 's3');
  assert.deepEqual(Buffer.from(j.load(2)!.batch.body), Buffer.from(gap.body));
  assert.deepEqual(Buffer.from(j.load(3)!.batch.body), Buffer.from(batch.body));
  j.close();
});
