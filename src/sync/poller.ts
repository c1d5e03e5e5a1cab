/**
 * The sync actor's /sync requests: builds them, and keeps at most one poll sent ahead. Once a body is scanned its
 * `next_batch` is known, and the next poll can go out while the body is still being applied, journaled and
 * handed to main: the network round trip (and the server's work) then overlaps this thread's, instead of
 * following it. The actor decides when a poll may go ahead (see `SyncActor.pollAhead`); this part only sends it,
 * hands it over if the next poll is for the same token and presence, and aborts it otherwise.
 */
import type { MatrixHttp, RequestOptions } from '../http.ts';
import type { SyncConfig } from '../protocol.ts';

const SYNC_PATH = '/_matrix/client/v3/sync';
/** A big account's initial sync runs to 100s of MB; the limit only stops a server that never ends its answer. */
export const MAX_SYNC_BYTES = 512 * 1024 * 1024;

const FILTER = JSON.stringify({
  room: {
    state: { lazy_load_members: true },
    // 50 rather than the server's default 10: a busy room between two polls should rarely come back gappy.
    timeline: { lazy_load_members: true, limit: 50 },
  },
});

/** One poll on its way: its answer, and what it was sent with. */
export interface Poll {
  readonly since: string | null;
  readonly presence: SyncConfig['setPresence'];
  /** Aborts this poll alone (a presence change, a poll ahead that is not wanted). */
  readonly abort: AbortController;
  readonly answer: Promise<Uint8Array>;
}

/** Sends the sync actor's polls; see the module comment. */
export class Poller {
  /** A poll sent ahead, not yet taken (null when none is out). */
  private ahead: Poll | null = null;
  /** The poll being awaited or sent ahead now: a presence change aborts it (null when none is). */
  private live: Poll | null = null;
  /** When the last poll was sent (ms since the epoch). */
  lastStartAt: number | null = null;

  constructor(
    private readonly http: MatrixHttp,
    private readonly config: SyncConfig,
    /** The actor's own signal: stopping it aborts every poll. */
    private readonly stopped: AbortSignal,
  ) {}

  /**
   * The request of a poll for `since`. A run's first poll answers at once, whatever it brings: `ready` must not
   * wait out a long-poll on a quiet account (a restart took 30 s to become ready).
   */
  request(since: string | null, first: boolean): RequestOptions & { query: { set_presence: SyncConfig['setPresence'] } } {
    const { pollTimeoutMs, deadlineMarginMs, setPresence } = this.config;
    return {
      // Inline (the spec allows a filter's JSON in place of its ID): no upload, so a fresh start's first poll
      // goes out a round trip sooner.
      query: { since: since ?? undefined, timeout: first ? 0 : pollTimeoutMs, filter: FILTER, set_presence: setPresence },
      // Client-side deadline: a silently dead connection must not stall the loop forever. An initial sync or a
      // catch-up after downtime can take the server a while to assemble.
      timeoutMs: (first ? Math.max(pollTimeoutMs, 120_000) : pollTimeoutMs) + deadlineMarginMs,
      signal: this.stopped,
      maxRateLimitRetries: 0,
    };
  }

  /** The answer to `request` as a stream (a fresh run's first sync: see `SyncActor.streamFirst`). */
  stream(request: RequestOptions): ReturnType<MatrixHttp['stream']> {
    this.lastStartAt = Date.now();
    return this.http.stream('GET', SYNC_PATH, request);
  }

  /** The poll for `since`: the one sent ahead if it was sent for `since` with the presence configured now, else a new one. */
  take(since: string | null, first: boolean): Poll {
    const ahead = this.ahead;
    this.ahead = null;
    if (ahead && ahead.since === since && ahead.presence === this.config.setPresence) return (this.live = ahead);
    ahead?.abort.abort();
    return (this.live = this.send(since, first));
  }

  /** Sends the next poll now, for `since`, to be taken by {@link take}. */
  sendAhead(since: string): void {
    this.ahead?.abort.abort();
    this.ahead = this.live = this.send(since, false);
  }

  /** The poll `poll` is answered or failed: a presence change no longer concerns it. */
  settled(poll: Poll): void {
    if (this.live === poll) this.live = null;
  }

  /** The configured presence changed: a poll carrying another value is aborted (it goes again with the new one). */
  presenceChanged(): void {
    if (this.live && this.live.presence !== this.config.setPresence) this.live.abort.abort();
  }

  private send(since: string | null, first: boolean): Poll {
    const request = this.request(since, first);
    const abort = new AbortController();
    this.lastStartAt = Date.now();
    const answer = this.http.bytes('GET', SYNC_PATH, { ...request, signal: AbortSignal.any([this.stopped, abort.signal]), maxBytes: MAX_SYNC_BYTES });
    // A poll sent ahead may fail before anyone awaits it (the stop, an abort): that is not an unhandled rejection.
    answer.catch(() => {});
    return { since, presence: request.query.set_presence, abort, answer };
  }
}
