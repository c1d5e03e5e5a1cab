/** Helpers of the toolkit's integration tests: a peer's view of a room's timeline, and the bot's answers in it. */
import type { TestContext } from 'node:test';
import type { Peer } from '../harness/peer.ts';
import { defer, WAIT_MS, waitUntil } from './util.ts';

/** A timeline event as a peer's /sync shows it, with its room. */
export type SeenEvent = { event_id: string; type: string; sender: string; content: Record<string, any>; room_id: string };

/** What a peer sees: every timeline event of its rooms, gathered by a /sync loop that ends with the test. */
export interface Timeline {
  events: SeenEvent[];
  /** The first event (past or future) matching `pred`. */
  waitFor(pred: (e: SeenEvent) => boolean, what: string, timeoutMs?: number): Promise<SeenEvent>;
  /** The first message of `from` replying to `eventId` (`m.in_reply_to`). */
  answer(from: string, eventId: string, timeoutMs?: number): Promise<SeenEvent>;
}

/** Starts gathering `peer`'s timeline (from now on). */
export function watch(t: TestContext, peer: Peer): Timeline {
  const events: SeenEvent[] = [];
  let stopped = false;
  const loop = (async () => {
    let since = (await peer.request('GET', '/sync', undefined, { timeout: '0' })).next_batch as string;
    while (!stopped) {
      const res = await peer.request('GET', '/sync', undefined, { timeout: '500', since });
      since = res.next_batch;
      for (const [roomId, room] of Object.entries<any>(res.rooms?.join ?? {})) {
        for (const ev of room.timeline?.events ?? []) events.push({ ...ev, room_id: roomId });
      }
    }
  })();
  defer(t, async () => {
    stopped = true;
    await loop.catch(() => {});
  });
  const waitFor = (pred: (e: SeenEvent) => boolean, what: string, timeoutMs = WAIT_MS) => waitUntil(() => events.find(pred), timeoutMs, what);
  return {
    events,
    waitFor,
    answer: (from, eventId, timeoutMs) => waitFor((e) => e.sender === from && replyTarget(e) === eventId, `an answer of ${from} to ${eventId}`, timeoutMs),
  };
}

/** The event `e` replies to, or undefined. */
export function replyTarget(e: SeenEvent): string | undefined {
  return e.content?.['m.relates_to']?.['m.in_reply_to']?.event_id;
}

/** The thread root of `e` (`m.thread`), or undefined. */
export function threadOf(e: SeenEvent): string | undefined {
  const rel = e.content?.['m.relates_to'];
  return rel?.rel_type === 'm.thread' ? rel.event_id : undefined;
}
