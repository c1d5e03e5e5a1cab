/**
 * The raw floor as a benchmark contender: the least any client must do, on one thread, one step at a time —
 * long-poll `/sync` with undici, `JSON.parse` the body, hand each timeline event of the joined rooms to the
 * handler (awaiting it when it returns a promise), then poll again. Sends are one raw undici PUT each.
 * @module
 */
import { request } from 'undici';
import type { PeerClient, PeerStartOptions, StartPeer } from './types.ts';

interface RawEvent {
  type: string;
  sender: string;
  event_id: string;
  content: Record<string, unknown>;
}

/** Long-poll timeout asked of the server, as the libraries ask by default. */
const POLL_TIMEOUT_MS = 30_000;

/** Starts the floor loop; resolves at once (its first `/sync` is on its way). A failed poll ends the loop: `stop()` rethrows it. */
export const startFloor: StartPeer = async (opts: PeerStartOptions): Promise<PeerClient> => {
  const base = opts.homeserverUrl.replace(/\/+$/, '');
  const auth = { authorization: `Bearer ${opts.accessToken}` };
  const abort = new AbortController();
  const skipOwn = opts.ownEvents === false;
  let stopped = false;
  let txn = 0;

  const loop = async (): Promise<void> => {
    let since: string | undefined;
    let first = true;
    while (!stopped) {
      const qs = new URLSearchParams({ timeout: String(POLL_TIMEOUT_MS) });
      if (since !== undefined) qs.set('since', since);
      const { statusCode, body } = await request(`${base}/_matrix/client/v3/sync?${qs}`, { headers: auth, signal: abort.signal });
      const text = await body.text();
      if (statusCode !== 200) throw new Error(`floor: /sync returned ${statusCode}: ${text.slice(0, 200)}`);
      const sync = JSON.parse(text) as { next_batch: string; rooms?: { join?: Record<string, { timeline?: { events?: RawEvent[] } }> } };
      const join = sync.rooms?.join;
      if (join && (!first || opts.deliverInitial !== false)) {
        for (const roomId in join) {
          const events = join[roomId]!.timeline?.events;
          if (!events) continue;
          for (let i = 0; i < events.length && !stopped; i++) {
            const ev = events[i]!;
            if (skipOwn && ev.sender === opts.userId) continue;
            const r = opts.onEvent({ roomId, type: ev.type, sender: ev.sender, eventId: ev.event_id, content: () => ev.content });
            if (r) await r;
          }
        }
      }
      first = false;
      since = sync.next_batch;
    }
  };
  const running = loop().then(
    () => null,
    (err: unknown) => {
      if (stopped) return null; // the abort of the poll in flight
      process.stderr.write(`[floor peer] sync loop ended: ${(err as Error).message}\n`);
      return err;
    },
  );

  return {
    async sendText(roomId, text) {
      const url = `${base}/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/send/m.room.message/floor${Date.now()}.${txn++}`;
      const { statusCode, body } = await request(url, {
        method: 'PUT',
        headers: { ...auth, 'content-type': 'application/json' },
        body: JSON.stringify({ msgtype: 'm.text', body: text }),
      });
      const res = (await body.json()) as { event_id?: string; errcode?: string; error?: string };
      if (statusCode !== 200 || typeof res.event_id !== 'string') throw new Error(`floor: send returned ${statusCode}: ${res.errcode ?? ''} ${res.error ?? ''}`);
      return res.event_id;
    },
    async stop() {
      stopped = true;
      abort.abort();
      const err = await running;
      if (err) throw err;
    },
  };
};
