/**
 * What crosses NATS for one event: the ingest's encoding of a published event (a {@link ClusterEventHead} line,
 * then the event's JSON) and the worker's decoding of it, and the partition a room's events go to.
 */
import type { ClusterEventHead } from '../protocol.ts';

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
