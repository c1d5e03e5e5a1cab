/**
 * What crosses NATS between the processes of a bot: the ingest's encoding of a published event (a
 * {@link ClusterEventHead} line, then the event's JSON) and the worker's decoding of it, the partition a room's
 * events go to, and the requests workers make of the ingest ({@link ClusterRpc}). The threads' messages are in
 * protocol.ts; these cross processes and machines.
 */
import type { WireError } from '../errors.ts';
import type { SharedPaceOp } from '../outbox.ts';
import type { CryptoIdentity, CryptoStatus, EncryptResult, RoomInfo, RoomSummary, StateChanges, SyncConfig } from '../protocol.ts';

const dec = new TextDecoder();

/** The partition of a room: FNV-1a of its ID, mod `partitions` (stable across processes and versions). */
export function partitionOf(roomId: string, partitions: number): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < roomId.length; i++) {
    h ^= roomId.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h % partitions;
}

/** A published event: its head on the first line, the event's JSON text after it. */
export function encodeEvent(head: ClusterEventHead, eventJson: string): Uint8Array {
  return Buffer.from(`${JSON.stringify(head)}\n${eventJson}`, 'utf8');
}

/** Reads a published event back; throws on anything that is not one (the caller reports it). */
export function decodeEvent(data: Uint8Array): { head: ClusterEventHead; event: Record<string, unknown> } {
  const text = dec.decode(data);
  const nl = text.indexOf('\n');
  if (nl < 0) throw new Error('no head line');
  const head = JSON.parse(text.slice(0, nl)) as ClusterEventHead;
  const event = JSON.parse(text.slice(nl + 1)) as Record<string, unknown>;
  if (typeof head?.roomId !== 'string' || typeof head.flags !== 'number' || typeof event !== 'object' || event === null) throw new Error('not a Halcyon cluster event');
  return { head, event };
}

// ---- what crosses NATS between processes (the threads' messages are in protocol.ts) ----

/**
 * The first line of an event the ingest publishes; the event's JSON (decrypted) follows after a newline. It says
 * what a worker cannot tell from the event itself.
 */
export interface ClusterEventHead {
  roomId: string;
  /** The `EVENT_FLAGS` bits `encrypted` and `late` (the worker recomputes the others). */
  flags: number;
  /** The room's summary when the event was published: the worker's mirror takes it before handlers run. */
  summary: RoomSummary | null;
  /** The ingest's journal handed the event out before (an ingest restart): it may have been published already. */
  redelivered: boolean;
}

/** What a worker asks of the ingest (request/reply), by method: the request and the answer. */
export interface ClusterRpc {
  /** The device's identity keys (null: the ingest runs without encryption). */
  identity: { req: null; res: CryptoIdentity | null };
  getRoom: { req: { roomId: string }; res: RoomInfo | null };
  /** Room summaries, a page at a time (a worker's mirror starts from them). */
  summaries: { req: { offset: number }; res: { summaries: RoomSummary[]; more: boolean } };
  accountData: { req: { roomId: string | null; type: string }; res: Record<string, unknown> | null };
  /** State or account data a worker learned (a member list it loaded, account data it set): the ingest's cache applies it. */
  apply: { req: StateChanges; res: RoomSummary[] };
  isRoomEncrypted: { req: { roomId: string }; res: boolean };
  cryptoStatus: { req: null; res: CryptoStatus | null };
  /** Content encrypted by the ingest's crypto actor (the OlmMachine has one owner); the worker sends it. */
  encrypt: { req: { roomId: string; type: string; content: Record<string, unknown> }; res: EncryptResult };
  setPresence: { req: { state: SyncConfig['setPresence'] }; res: null };
  /** The account's send budget, kept by the ingest's outbox: take a token (`next`) or report what a send met. */
  pace: { req: { op: SharedPaceOp; retryAfterMs?: number }; res: { waitMs: number; describe: string } };
}

/** The answer to a {@link ClusterRpc} request: its result, or why it failed. */
export type ClusterRpcAnswer<T> = { ok: T } | { error: WireError };
