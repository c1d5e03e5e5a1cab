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
  /** Called for every timeline event of joined rooms (`m.room.message` and `m.reaction` at least), own events included. */
  onEvent(ev: PeerEvent): void | Promise<void>;
  /** Deliver the events of the first /sync too (the replay benchmarks count them). Default true. */
  deliverInitial?: boolean;
}

/** A running contender. */
export interface PeerClient {
  /** Sends an `m.room.message` (`m.text`) and resolves with its event id once the server accepted it. */
  sendText(roomId: string, body: string): Promise<string>;
  /** Stops syncing and releases everything (workers, sockets, temp dirs). */
  stop(): Promise<void>;
}

/** A contender's factory: resolves once the client is syncing (its first /sync has been requested). */
export type StartPeer = (opts: PeerStartOptions) => Promise<PeerClient>;
