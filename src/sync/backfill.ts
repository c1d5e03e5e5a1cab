/**
 * Gap backfill for the sync actor: the events a limited (gappy) timeline left out, fetched with `/messages` before
 * the batch is handed over. Kept out of actor.ts, which owns the loop, the journal and the hand-off.
 */
import { isTransient, type WireError } from '../errors.ts';
import { type MatrixHttp, seg } from '../http.ts';
import type { JournaledBatch } from './journal.ts';
import { type ProcessedSync, timelineBatch } from './process.ts';

/** The events a gap backfill fetched, as a batch (null when none), and the problems met. */
export interface Backfill {
  batch: JournaledBatch | null;
  errors: WireError[];
}

/** What {@link backfill} needs of the sync actor's configuration and state. */
export interface BackfillOptions {
  /** At most this many events per room (`maxGapEvents`). */
  maxGapEvents: number;
  /** The bot's user ID: its own join bounds a gap. */
  userId: string;
  /** Event types for handlers (null: all). */
  wanted: Set<string> | null;
  signal: AbortSignal;
  /** Whether the actor still runs: a failure while stopping fails the poll instead of being reported. */
  running: () => boolean;
}

const GAP_FILTER = JSON.stringify({ lazy_load_members: true });

/**
 * Fetches, with `/messages` backwards from each gap's `prev_batch` to the previous sync's token `to`, the events a
 * limited timeline left out: at most `maxGapEvents` per room (a larger gap is reported, its oldest events are
 * skipped). Returns them as one batch, in timeline order, plus the problems met. Their state events do not
 * reach the cache: the sync's state block is newer.
 */
export async function backfill(http: MatrixHttp, gaps: ProcessedSync['gaps'], to: string, opts: BackfillOptions): Promise<Backfill> {
  const byRoom = new Map<string, unknown[]>();
  const errors: WireError[] = [];
  for (const g of gaps) {
    const events: unknown[] = [];
    let from = g.prevBatch;
    try {
      for (;;) {
        const limit = Math.min(100, opts.maxGapEvents - events.length);
        if (limit <= 0) {
          errors.push({ code: 'HALCYON_TIMELINE_GAP', message: `room ${g.roomId}: more than maxGapEvents (${opts.maxGapEvents}) events were missing from the timeline; the older ones were not fetched`, roomId: g.roomId });
          break;
        }
        const res = await http.json<{ chunk?: unknown; end?: unknown }>('GET', `/_matrix/client/v3/rooms/${seg(g.roomId)}/messages`, {
          query: { dir: 'b', from, to, limit, filter: GAP_FILTER },
          signal: opts.signal,
        });
        const chunk = Array.isArray(res.chunk) ? res.chunk : [];
        // Back to the bot's own join at most: before it lies the room's history, not something the bot missed
        // (the previous sync's token may predate the join when the bot had not synced since accepting it).
        const joined = chunk.findIndex((e) => isOwnJoin(e, opts.userId));
        events.push(...(joined >= 0 ? chunk.slice(0, joined + 1) : chunk));
        if (joined >= 0 || chunk.length === 0 || typeof res.end !== 'string' || res.end === from) break;
        from = res.end;
      }
    } catch (err) {
      // A transient failure fails the poll: it is retried from the same since token, and nothing is lost.
      if (!opts.running() || isTransient(err)) throw err;
      errors.push({ code: 'HALCYON_TIMELINE_GAP', message: `room ${g.roomId}: fetching the events missing from the timeline failed (${(err as Error).message}); they are not delivered`, roomId: g.roomId });
    }
    if (events.length > 0) byRoom.set(g.roomId, events.reverse());
  }
  if (byRoom.size === 0) return { batch: null, errors };
  const batch = timelineBatch(byRoom, { wantedTypes: opts.wanted, ownUserId: opts.userId });
  batch.errors.push(...errors);
  return { batch, errors: [] };
}

/** Whether an event is the user's own join (a change into `join`, not a profile update). */
function isOwnJoin(e: unknown, userId: string): boolean {
  const ev = e as { type?: unknown; state_key?: unknown; content?: { membership?: unknown }; unsigned?: { prev_content?: { membership?: unknown } } };
  return ev?.type === 'm.room.member' && ev.state_key === userId && ev.content?.membership === 'join' && ev.unsigned?.prev_content?.membership !== 'join';
}
