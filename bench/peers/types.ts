/**
 * One interface over the clients the benchmarks compare (Halcyon, the raw floor, matrix-bot-sdk, matrix-js-sdk),
 * so each workload drives them the same way.
 * @module
 */

/** A timeline event as a contender's handler saw it; `content()` reads the content (for Halcyon: the lazy parse). */
export interface PeerEvent {
  roomId: string;
  type: string;
  sender: string;
  eventId: string;
  content(): Record<string, unknown>;
}

/** How to start a contender. */
export interface PeerStartOptions {
  /** Homeserver base URL (replay server or Synapse), e.g. `http://127.0.0.1:8008`. */
  homeserverUrl: string;
  userId: string;
  accessToken: string;
  deviceId: string;
  /**
   * Called for every timeline event of joined rooms (`m.room.message` and `m.reaction` at least); the bot's own
   * events as {@link PeerStartOptions.ownEvents} says. A returned promise is awaited where the library awaits its
   * handlers (Halcyon: before the room's next event; floor: before the next event at all; the SDKs: not at all).
   */
  onEvent(ev: PeerEvent): void | Promise<void>;
  /** Deliver the events of the first /sync too (the replay benchmarks count them). Default true. */
  deliverInitial?: boolean;
  /**
   * The bot's own events: true delivers them, false skips them, in every contender; unset, each does what its
   * library does by default (Halcyon skips them, the floor and the SDKs deliver them).
   */
  ownEvents?: boolean;
  /**
   * Pace sends as the library does by default (Halcyon: a token bucket of 0.2/s, bursts of 10; the others do not
   * pace). Default false: sends go out unpaced (Halcyon's `rateLimit: false`).
   */
  rateLimit?: boolean;
}

/** A running contender. */
export interface PeerClient {
  /** Sends an `m.room.message` (`m.text`) and resolves with its event id once the server accepted it. */
  sendText(roomId: string, body: string): Promise<string>;
  /** Stops syncing and releases everything (workers, sockets, temp dirs). */
  stop(): Promise<void>;
}

/**
 * A contender's factory: resolves once the client is syncing (its first /sync has been requested) — Halcyon and
 * matrix-js-sdk only once that first /sync has been answered and processed (`run()` / `PREPARED`), so a replay
 * server holding /sync until `setBodies` must get its bodies before their start is awaited. Rejects (having
 * released everything) when the start fails or takes longer than a minute.
 */
export type StartPeer = (opts: PeerStartOptions) => Promise<PeerClient>;
