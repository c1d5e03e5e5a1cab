/**
 * The event journal: batches for main, stored durably before the since token moves past them.
 *
 * Each deliverable batch is appended, and its row committed in `sync.sqlite` in the same SQLite transaction
 * that saves its `next_batch` as the since token (matrix-rust-sdk's model: one change batch saved together with
 * its token), so the token can advance at once without waiting for handlers, and nothing the server sent is
 * lost if the process dies. Main acknowledges events as their handlers settle; their bits are set in the row's
 * `done` bitmap, and the row is deleted when its batch is complete. A restart hands the rows that remain to main
 * again, skipping the events marked done.
 *
 * The batches' bytes go to append-only segment files (`journal-<n>.seg`, 0600) and the rows point into them:
 * appending megabytes to a file is a fraction of the cost of writing them as SQLite blobs (which are copied into
 * pages, the WAL, the checkpoint, and freed again). A segment is written before the row that points into it is
 * committed, so a crash in between leaves only unreferenced bytes; a segment is deleted once no row points into
 * it. Owned by the sync actor (one owner); no threads.
 */
import { closeSync, fstatSync, openSync, readdirSync, readSync, rmSync, writevSync } from 'node:fs';
import { join } from 'node:path';
import { deserialize, serialize } from 'node:v8';
import type { WireBatch } from '../protocol.ts';
import type { Database } from '../store.ts';
import { kvSet } from '../store.ts';
import { withIds } from './ids.ts';

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

/**
 * A segment file past this size is closed and a new one started. Small, so that a segment's batches are all
 * handled soon after it closes, and it is deleted then: the page-cache pages it held are free for the next
 * segment's writes. A write into pages the kernel had not used lately took 5–6 ms per 2.8 MB batch on the bench's
 * machine, ~0.7 ms otherwise; a 20-batch run fits in one 64 MiB segment, which freed nothing before the run's end.
 * Journal writes per run (100 × 100 × 20, 6 runs each, interleaved): 39.6 ms in all at 64 MiB, 26.3 at 8 MiB.
 * Deleted early, a segment's bytes are also seldom written back to the disk at all.
 */
const SEGMENT_BYTES = 8 * 1024 * 1024;

/** The journal over an open `sync.sqlite` and its segment files in `dir`; see the module comment. */
export class EventJournal {
  private readonly stmt;
  /** Rows pointing into each segment. */
  private readonly rowsIn = new Map<number, number>();
  private segment: number;
  private fd: number;
  private size = 0;

  constructor(
    private readonly db: Database,
    private readonly dir: string,
    /** Segment size (a test makes it small). */
    private readonly segmentBytes = SEGMENT_BYTES,
  ) {
    db.exec(`CREATE TABLE IF NOT EXISTS journal (seq INTEGER PRIMARY KEY, segment INTEGER NOT NULL, offset INTEGER NOT NULL,
      meta_length INTEGER NOT NULL, body_length INTEGER NOT NULL, events INTEGER NOT NULL,
      done BLOB, done_events INTEGER NOT NULL DEFAULT 0, posted INTEGER NOT NULL DEFAULT 0)`);
    this.stmt = {
      insert: db.prepare('INSERT INTO journal (seq, segment, offset, meta_length, body_length, events, posted) VALUES (?, ?, ?, ?, ?, ?, ?)'),
      posted: db.prepare('UPDATE journal SET posted = 1 WHERE seq = ? AND posted = 0'),
      loadDone: db.prepare('SELECT done, events, segment FROM journal WHERE seq = ?'),
      saveDone: db.prepare('UPDATE journal SET done = ?, done_events = ? WHERE seq = ?'),
      remove: db.prepare('DELETE FROM journal WHERE seq = ?'),
      load: db.prepare('SELECT segment, offset, meta_length, body_length, done, posted FROM journal WHERE seq = ?'),
      pending: db.prepare('SELECT seq, events, done_events, posted FROM journal ORDER BY seq'),
      maxSeq: db.prepare('SELECT max(seq) AS m FROM journal'),
      backlog: db.prepare('SELECT coalesce(sum(events - done_events), 0) AS n FROM journal'),
      segments: db.prepare('SELECT segment, count(*) AS n FROM journal GROUP BY segment'),
    };
    for (const r of this.stmt.segments.all() as Array<{ segment: number; n: number }>) this.rowsIn.set(r.segment, r.n);
    // Segments no row points into (complete batches, or bytes a crash left before their row) go.
    let last = 0;
    for (const name of readdirSync(dir)) {
      const m = /^journal-(\d+)\.seg$/.exec(name);
      if (!m) continue;
      const n = Number(m[1]);
      last = Math.max(last, n);
      if (!this.rowsIn.has(n)) rmSync(join(dir, name), { force: true });
    }
    // Each run appends to a fresh segment: never after bytes a crash may have left half written.
    this.segment = last + 1;
    this.fd = this.openSegment(this.segment);
  }

  /**
   * Appends batches and saves `since` with them: the bytes first, then their rows and the token in one
   * transaction. A row `posted` is recorded as handed to main already: the caller posts it right after, and one
   * commit saves what {@link markPosted}'s own would (a crash in between only flags its events as redeliveries).
   */
  append(rows: ReadonlyArray<{ seq: number; batch: JournaledBatch; posted?: boolean }>, since: string): void {
    // Before the first row, never between two: a row placed but not yet committed is not counted in its segment,
    // which rotate() would delete as if nothing pointed into it.
    if (this.size > this.segmentBytes) this.rotate();
    const placed = rows.map(({ seq, batch, posted }) => {
      // The body is written as it is; the rest (columns, invites, ...) is serialised beside it, but for the ID
      // columns, which load() gathers from the body again (~20% more bytes to write, for a restart's sake).
      const meta = serialize({ ...batch, body: null, events: { ...batch.events, ids: undefined, idAt: undefined } });
      const offset = this.size;
      writevSync(this.fd, [meta, batch.body]);
      this.size += meta.length + batch.body.length;
      return { seq, segment: this.segment, offset, metaLength: meta.length, bodyLength: batch.body.length, events: batch.events.count, posted: posted ? 1 : 0 };
    });
    this.tx(() => {
      for (const r of placed) this.stmt.insert.run(r.seq, r.segment, r.offset, r.metaLength, r.bodyLength, r.events, r.posted);
      kvSet(this.db, 'since', since);
    });
    for (const r of placed) this.rowsIn.set(r.segment, (this.rowsIn.get(r.segment) ?? 0) + 1);
  }

  /** Closes the segment being written. */
  close(): void {
    closeSync(this.fd);
  }

  private openSegment(n: number): number {
    const fd = openSync(join(this.dir, `journal-${String(n).padStart(6, '0')}.seg`), 'a+', 0o600);
    this.size = fstatSync(fd).size;
    return fd;
  }

  private rotate(): void {
    closeSync(this.fd);
    const old = this.segment;
    this.segment++;
    this.fd = this.openSegment(this.segment);
    if (!this.rowsIn.get(old)) this.dropSegment(old);
  }

  private dropSegment(n: number): void {
    this.rowsIn.delete(n);
    rmSync(join(this.dir, `journal-${String(n).padStart(6, '0')}.seg`), { force: true });
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
   * Returns, per batch, how many of its events stopped being unhandled (newly marked, or left when deleted).
   * Indices already marked count for nothing: acknowledging an event twice is harmless.
   */
  ack(progress: ReadonlyArray<{ seq: number; indices: ArrayLike<number> }>, complete: readonly number[]): Map<number, number> {
    const freed = new Map<number, number>();
    const emptied: number[] = [];
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
        if (n > 0) {
          this.stmt.saveDone.run(bits, popcount(bits), seq);
          freed.set(seq, (freed.get(seq) ?? 0) + n);
        }
      }
      for (const seq of complete) {
        const row = this.stmt.loadDone.get(seq) as { events: number; done: Uint8Array | null; segment: number } | undefined;
        if (!row) continue;
        freed.set(seq, (freed.get(seq) ?? 0) + row.events - (row.done ? popcount(new Uint8Array(row.done)) : 0));
        this.stmt.remove.run(seq);
        emptied.push(row.segment);
      }
    });
    // After the commit: a segment goes only once no committed row points into it.
    for (const seg of emptied) {
      const left = (this.rowsIn.get(seg) ?? 1) - 1;
      this.rowsIn.set(seg, left);
      if (left === 0 && seg !== this.segment) this.dropSegment(seg);
    }
    return freed;
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
    const row = this.stmt.load.get(seq) as
      | { segment: number; offset: number; meta_length: number; body_length: number; done: Uint8Array | null; posted: number }
      | undefined;
    if (!row) return undefined;
    const fd = row.segment === this.segment ? this.fd : openSync(join(this.dir, `journal-${String(row.segment).padStart(6, '0')}.seg`), 'r');
    try {
      const meta = Buffer.alloc(row.meta_length);
      readExactly(fd, meta, row.offset);
      // The body is read straight into a buffer of its own, so it can be transferred to main.
      const body = new Uint8Array(row.body_length);
      readExactly(fd, body, row.offset + row.meta_length);
      const batch = deserialize(meta) as JournaledBatch;
      // Deserialised typed arrays share one buffer; each gets its own, so each can be transferred too.
      const e = batch.events;
      batch.body = body;
      batch.events = withIds(body, { ...e, room: e.room.slice(), type: e.type.slice(), relType: e.relType.slice(), ts: e.ts.slice(), flags: e.flags.slice(), offsets: e.offsets.slice() });
      return { batch, done: row.done ? new Uint8Array(row.done) : null, posted: row.posted === 1 };
    } finally {
      if (fd !== this.fd) closeSync(fd);
    }
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

function readExactly(fd: number, into: Uint8Array, position: number): void {
  for (let got = 0; got < into.length; ) {
    const n = readSync(fd, into, got, into.length - got, position + got);
    if (n === 0) throw new Error(`journal segment ends early (at ${position + got})`);
    got += n;
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
