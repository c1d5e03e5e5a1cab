/**
 * Undecryptable events kept for a late room key, in the crypto store's SQLite database (table `pending_utd`), so
 * that a key arriving after a restart still unlocks them. Bounded by age and count (the client's options). Part of
 * the crypto actor, which runs every call here on its thread; no call waits.
 */
import type { Database } from '../store.ts';

/** A kept event, as read back for a retry. */
export interface PendingRow {
  event_id: string;
  room_id: string;
  session_id: string | null;
  raw: string;
}

/** The kept undecryptable events; see the module comment. */
export class PendingEvents {
  constructor(
    private readonly db: Database,
    private readonly limits: { maxAgeMs: number; maxCount: number },
  ) {
    db.exec(`CREATE TABLE IF NOT EXISTS pending_utd (event_id TEXT PRIMARY KEY, room_id TEXT NOT NULL, session_id TEXT, raw TEXT NOT NULL,
        at INTEGER NOT NULL, posted INTEGER NOT NULL DEFAULT 0);
      CREATE INDEX IF NOT EXISTS pending_utd_session ON pending_utd (session_id);`);
  }

  /** Keeps an event, dropping the oldest beyond the limits. */
  keep(eventId: string, roomId: string, sessionId: string, raw: string): void {
    const now = Date.now();
    this.db.prepare('INSERT OR IGNORE INTO pending_utd (event_id, room_id, session_id, raw, at) VALUES (?, ?, ?, ?, ?)').run(eventId, roomId, sessionId, raw, now);
    this.expire(now);
    this.db.prepare('DELETE FROM pending_utd WHERE event_id IN (SELECT event_id FROM pending_utd ORDER BY at DESC, rowid DESC LIMIT -1 OFFSET ?)').run(this.limits.maxCount);
  }

  /** Kept events not yet posted to main (of these sessions, or all), oldest first; expired ones are dropped first. */
  due(sessions: Set<string> | null): PendingRow[] {
    this.expire(Date.now());
    const rows = this.db.prepare('SELECT event_id, room_id, session_id, raw FROM pending_utd WHERE posted = 0 ORDER BY at, rowid').all() as unknown as PendingRow[];
    return rows.filter((r) => sessions === null || (r.session_id !== null && sessions.has(r.session_id)));
  }

  /** Marks events as posted to main (kept until main says they were handled: a crash before that retries them). */
  markPosted(ids: string[]): void {
    const mark = this.db.prepare('UPDATE pending_utd SET posted = 1 WHERE event_id = ?');
    for (const id of ids) mark.run(id);
  }

  /** At start: events posted to a main that is gone are due again. */
  unpostAll(): void {
    this.db.exec('UPDATE pending_utd SET posted = 0');
  }

  /** Forgets events (handled, or given up). */
  forget(ids: string[]): void {
    const del = this.db.prepare('DELETE FROM pending_utd WHERE event_id = ?');
    for (const id of ids) del.run(id);
  }

  /** How many events are kept. */
  count(): number {
    return (this.db.prepare('SELECT count(*) AS n FROM pending_utd').get() as { n: number }).n;
  }

  /** Room and session of every kept event (looked up in the key backup at start). */
  sessions(): Array<{ roomId: string; sessionId: string }> {
    const rows = this.db.prepare('SELECT DISTINCT room_id, session_id FROM pending_utd WHERE session_id IS NOT NULL').all() as { room_id: string; session_id: string }[];
    return rows.map((r) => ({ roomId: r.room_id, sessionId: r.session_id }));
  }

  private expire(now: number): void {
    this.db.prepare('DELETE FROM pending_utd WHERE at < ?').run(now - this.limits.maxAgeMs);
  }
}
