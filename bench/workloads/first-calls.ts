/**
 * Per-body timing of the throughput workload: when each body's first handler call came, and from it the response →
 * first handler call of each body and the events/s after warm-up (see {@link FirstCalls}).
 * @module
 */
import type { ReplayStats } from '../replay-server.ts';
import { now } from '../stats.ts';

/**
 * The share of a run's bodies that is its warm-up, left out of the events/s after warm-up ({@link FirstCalls.figures}): a fresh
 * client's first bodies run code not yet optimized (V8's JIT tiers, WebAssembly's tier-up, undici's HTTP parser
 * among it) while the compilers take CPU of their own. Traced on Halcyon (2 cores, 10,000-event bodies): the sync
 * worker took 15–50 ms per body for the first four or five bodies and 5–8 ms after, main 20 ms for the first two and
 * ~4 ms after.
 */
export const WARM_UP_SHARE = 0.25;

/**
 * When each body's first handler call came. Every room has `perRoom` events in every body and a room's events
 * reach handlers in timeline order in every contender, so a room's n-th event (from 0) belongs to body
 * ⌊n / perRoom⌋, and the first call of body k is the first call whose room's count is k × perRoom — exact even
 * where a client runs one room's next body before another room's current one (counting all events would not be).
 */
export class FirstCalls {
  /** Epoch ms of each body's first handler call; NaN until it came. */
  readonly at: number[];
  private readonly seen = new Map<string, number>();
  constructor(
    private readonly perRoom: number,
    bodies: number,
  ) {
    this.at = new Array<number>(bodies).fill(NaN);
  }
  /** Called in the handler with the event's room. */
  readonly hit = (roomId: string): void => {
    const n = this.seen.get(roomId) ?? 0;
    this.seen.set(roomId, n + 1);
    if (n % this.perRoom !== 0) return;
    const k = n / this.perRoom;
    if (this.at[k] !== this.at[k]) this.at[k] = now(); // NaN: the body's first call
  };
  /**
   * The per-body figures of a run: response → first handler call (ms) of each body after the first (start-up is
   * not in it), and the events/s after warm-up: the events of the bodies from the first after the warm-up
   * ({@link WARM_UP_SHARE}) on, from that body's response to the last handler call (`lastAt`; NaN if that body was
   * not sent). Events of earlier bodies handled in that window are not counted: a client that fetches ahead of its
   * handlers is not favoured. A body's response is the first the server sent with it since request `before`
   * (server clock, offset-corrected).
   */
  figures(st: ReplayStats, before: number, offsetMs: number, lastAt: number, perBatch: number): { latencies: number[]; steadyEventsPerSec: number } {
    const sent = this.responses(st, before, offsetMs);
    const latencies = this.at.slice(1).map((t, j) => t - sent[j + 1]!).filter(Number.isFinite);
    const k = Math.floor(this.at.length * WARM_UP_SHARE);
    const from = sent[k];
    const steady = k < 1 || from === undefined || !Number.isFinite(from) || !Number.isFinite(lastAt) ? NaN : ((this.at.length - k) * perBatch) / ((lastAt - from) / 1000);
    return { latencies, steadyEventsPerSec: steady };
  }

  /** When the server first sent each body since request `before` (server clock, offset-corrected); NaN if never. */
  private responses(st: ReplayStats, before: number, offsetMs: number): number[] {
    const sent = new Array<number>(this.at.length).fill(NaN);
    for (let i = before; i < st.requestBodies.length; i++) {
      const k = st.requestBodies[i]!;
      if (k >= 0 && k < sent.length && Number.isNaN(sent[k])) sent[k] = st.responseTimes[i]! - offsetMs;
    }
    return sent;
  }
}
