/**
 * The event journal: batches for main, stored durably in `sync.sqlite` before the since token moves past them.
 *
 * Each deliverable batch is appended in the same SQLite transaction that saves its `next_batch` as the since
 * token (matrix-rust-sdk's model: one change batch saved together with its token), so the token can advance at
 * once without waiting for handlers, and nothing the server sent is lost if the process dies. Main acknowledges
 * events as their handlers settle; their bits are set in the row's `done` bitmap, and the row is deleted when its
 * batch is complete. A restart hands the rows that remain to main again, skipping the events marked done.
 * Owned by the sync actor (one owner); pure SQLite, no threads.
 */
import { deserialize, serialize } from 'node:v8';
import type { WireBatch } from '../protocol.ts';
import type { Database } from '../store.ts';
import { kvSet } from '../store.ts';

/** A batch as journaled: everything of a {@link WireBatch} but its run-local fields. */
export type JournaledBatch = Omit<WireBatch, 'seq' | 'redelivered' | 'done'>;

/** A journal row not yet complete. */
export interface PendingRow {
  seq: number;
  /** Timeline events in the batch. */
  events: number;
  /** Events of it already handled. */
  doneEvents: number;
  /** Whether it was handed to main (by this run or an earlier one). */
  posted: boolean;
}

/** The journal over an open `sync.sqlite`; see the module comment. */
export class EventJournal {
  private readonly stmt;

  constructor(private readonly db: Database) {
    db.exec(`CREATE TABLE IF NOT EXISTS journal (seq INTEGER PRIMARY KEY, batch BLOB NOT NULL, events INTEGER NOT NULL,
      done BLOB, done_events INTEGER NOT NULL DEFAULT 0, posted INTEGER NOT NULL DEFAULT 0)`);
    this.stmt = {
      insert: db.prepare('INSERT INTO journal (seq, batch, events) VALUES (?, ?, ?)'),
      posted: db.prepare('UPDATE journal SET posted = 1 WHERE seq = ? AND posted = 0'),
      loadDone: db.prepare('SELECT done, events FROM journal WHERE seq = ?'),
      saveDone: db.prepare('UPDATE journal SET done = ?, done_events = ? WHERE seq = ?'),
      remove: db.prepare('DELETE FROM journal WHERE seq = ?'),
      load: db.prepare('SELECT batch, done, posted FROM journal WHERE seq = ?'),
      pending: db.prepare('SELECT seq, events, done_events, posted FROM journal ORDER BY seq'),
      maxSeq: db.prepare('SELECT max(seq) AS m FROM journal'),
      backlog: db.prepare('SELECT coalesce(sum(events - done_events), 0) AS n FROM journal'),
    };
  }

  /** Appends batches and saves `since` with them, in one transaction: all are durable, or none. */
  append(rows: ReadonlyArray<{ seq: number; batch: JournaledBatch }>, since: string): void {
    this.tx(() => {
      for (const { seq, batch } of rows) this.stmt.insert.run(seq, serialize(batch), batch.events.count);
      kvSet(this.db, 'since', since);
    });
  }

  /** Saves the since token alone (a batch with nothing to journal). */
  saveSince(since: string): void {
    kvSet(this.db, 'since', since);
  }

  /** Records that batch `seq` was handed to main: after a restart its events count as redeliveries. */
  markPosted(seq: number): void {
    this.stmt.posted.run(seq);
  }

  /**
   * Marks events handled (`progress`: batch → event indices) and deletes complete batches, in one transaction.
   * Returns how many journaled events stopped being unhandled (newly marked, plus those of deleted batches).
   */
  ack(progress: ReadonlyArray<{ seq: number; indices: ArrayLike<number> }>, complete: readonly number[]): number {
    let newlyDone = 0;
    this.tx(() => {
      for (const { seq, indices } of progress) {
        const row = this.stmt.loadDone.get(seq) as { done: Uint8Array | null; events: number } | undefined;
        if (!row) continue;
        const bits = row.done ? new Uint8Array(row.done) : new Uint8Array((row.events + 7) >> 3);
        let n = 0;
        for (let k = 0; k < indices.length; k++) {
          const i = indices[k]!;
          if (i < 0 || i >= row.events) continue;
          const mask = 1 << (i & 7);
          if (!(bits[i >> 3]! & mask)) {
            bits[i >> 3] = bits[i >> 3]! | mask;
            n++;
          }
        }
        if (n > 0) this.stmt.saveDone.run(bits, popcount(bits), seq);
        newlyDone += n;
      }
      for (const seq of complete) {
        const row = this.stmt.loadDone.get(seq) as { events: number; done: Uint8Array | null } | undefined;
        if (!row) continue;
        newlyDone += row.events - (row.done ? popcount(new Uint8Array(row.done)) : 0);
        this.stmt.remove.run(seq);
      }
    });
    return newlyDone;
  }

  /** The rows not yet complete, oldest first (without their bodies). */
  pending(): PendingRow[] {
    return (this.stmt.pending.all() as Array<{ seq: number; events: number; done_events: number; posted: number }>).map((r) => ({
      seq: r.seq,
      events: r.events,
      doneEvents: r.done_events,
      posted: r.posted === 1,
    }));
  }

  /** Reads batch `seq` back, with its done bitmap and whether it was posted before; undefined if gone. */
  load(seq: number): { batch: JournaledBatch; done: Uint8Array | null; posted: boolean } | undefined {
    const row = this.stmt.load.get(seq) as { batch: Uint8Array; done: Uint8Array | null; posted: number } | undefined;
    if (!row) return undefined;
    const batch = deserialize(row.batch) as JournaledBatch;
    // Deserialised typed arrays share one buffer; each gets its own, so each can be transferred to main.
    const e = batch.events;
    batch.body = batch.body.slice();
    batch.events = { ...e, room: e.room.slice(), type: e.type.slice(), relType: e.relType.slice(), ts: e.ts.slice(), flags: e.flags.slice(), offsets: e.offsets.slice() };
    return { batch, done: row.done ? new Uint8Array(row.done) : null, posted: row.posted === 1 };
  }

  /** The highest sequence number journaled, or 0. */
  maxSeq(): number {
    return (this.stmt.maxSeq.get() as { m: number | null }).m ?? 0;
  }

  /** Events journaled and not yet handled. */
  backlogEvents(): number {
    return (this.stmt.backlog.get() as { n: number }).n;
  }

  private tx(fn: () => void): void {
    this.db.exec('BEGIN IMMEDIATE');
    try {
      fn();
      this.db.exec('COMMIT');
    } catch (err) {
      this.db.exec('ROLLBACK');
      throw err;
    }
  }
}

/** Whether event `i` is set in a done bitmap. */
export function isDone(done: Uint8Array | null | undefined, i: number): boolean {
  return !!done && (done[i >> 3]! & (1 << (i & 7))) !== 0;
}

function popcount(bits: Uint8Array): number {
  let n = 0;
  for (let b of bits) {
    while (b) {
      b &= b - 1;
      n++;
    }
  }
  return n;
}
