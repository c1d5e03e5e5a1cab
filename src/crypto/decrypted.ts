/**
 * Decrypted room events: what the crypto actor accepts from them, how they become a batch for main, and what a
 * withheld room key means. The ciphertext is written by any member of the room and nothing in it is checked by
 * the homeserver, so what it claims beyond a message-like event is refused here, before the event is turned into
 * a batch handlers see.
 */
import { BatchReader } from '../batch-reader.ts';
import { EVENT_FLAGS, type EventColumns, OFF, type WireBatch } from '../protocol.ts';
import { type ProcessOptions, timelineBatch } from '../sync/process.ts';
import { type SenderTrust, trustCode } from './trust.ts';

/** A decrypted event and its room. */
export interface Decrypted {
  roomId: string;
  event: Record<string, unknown>;
  /** Its sender device's trust (see trust.ts). */
  trust?: SenderTrust;
}

/**
 * Types a decrypted event may not have. A redaction must be in the clear for servers to apply it, and state events
 * are never encrypted in Matrix (servers must read state to authorise events), so an encrypted one can only try to
 * make the bot believe in a membership, a redaction or room state the room does not have; `m.room.encrypted`
 * inside a ciphertext is never produced by a client either. The list is every state event type of the spec
 * (client-server API and its modules); any other type is refused too when it carries a `state_key` (every real
 * state event has one). A namespace rule (all of `m.room.*` but messages) would also refuse message types the
 * spec may add there.
 */
export const REFUSED_DECRYPTED_TYPES: ReadonlySet<string> = new Set([
  'm.room.redaction',
  'm.room.encrypted',
  'm.room.create',
  'm.room.member',
  'm.room.power_levels',
  'm.room.join_rules',
  'm.room.history_visibility',
  'm.room.name',
  'm.room.topic',
  'm.room.avatar',
  'm.room.canonical_alias',
  'm.room.aliases',
  'm.room.encryption',
  'm.room.server_acl',
  'm.room.tombstone',
  'm.room.pinned_events',
  'm.room.guest_access',
  'm.room.third_party_invite',
  'm.space.child',
  'm.space.parent',
  'm.policy.rule.user',
  'm.policy.rule.room',
  'm.policy.rule.server',
]);

/**
 * Why a decrypted event is refused, or null if it is acceptable: its type is in {@link REFUSED_DECRYPTED_TYPES},
 * or it carries a `state_key` in the plaintext (`clear`) or in the encrypted envelope (`envelope`).
 */
export function refusal(clear: Record<string, unknown>, envelope: Record<string, unknown>): string | null {
  const type = clear.type;
  if (typeof type !== 'string') return 'its plaintext has no type';
  if (REFUSED_DECRYPTED_TYPES.has(type)) {
    return type === 'm.room.redaction' ? 'it claims to be an m.room.redaction (redactions are never encrypted)' : `it claims the type ${type} (never encrypted)`;
  }
  if (clear.state_key !== undefined) return `it claims to be a state event of type ${type} (state_key ${JSON.stringify(clear.state_key)} in the plaintext)`;
  if (envelope.state_key !== undefined) return `it is an encrypted state event of type ${type} (state_key ${JSON.stringify(envelope.state_key)})`;
  return null;
}

/**
 * Gives the decrypted event the relation of the encrypted event's clear part, or none. The spec keeps
 * `m.relates_to` in the clear (servers aggregate relations) and says one inside the ciphertext is ignored; the
 * engine keeps the inner one when both exist and copies the clear one only when the plaintext has none, so a
 * sender could otherwise show the bot an edit or a reply that other clients do not see.
 */
export function useClearRelation(clear: Record<string, unknown>, envelopeContent: Record<string, unknown>): void {
  const c = clear.content;
  if (typeof c !== 'object' || c === null || Array.isArray(c)) return;
  const content = c as Record<string, unknown>;
  const relation = envelopeContent['m.relates_to'];
  if (relation === undefined) delete content['m.relates_to'];
  else content['m.relates_to'] = relation;
}

/**
 * Turns decrypted events into a batch in the same column format as a /sync batch, by running them through the
 * same pure processing (so validation, flags and wanted types are applied exactly as for clear events). `slots`
 * gives each item's index in the batch (-1: not delivered); null when nothing is delivered.
 */
export function decryptedBatch(items: Decrypted[], extraFlags: number, opts: ProcessOptions): { batch: WireBatch; slots: number[] } | null {
  if (items.length === 0) return null;
  const byRoom = new Map<string, unknown[]>();
  for (const d of items) {
    let list = byRoom.get(d.roomId);
    if (!list) byRoom.set(d.roomId, (list = []));
    list.push(d.event);
  }
  const batch: WireBatch = { ...timelineBatch(byRoom, opts), seq: 0, redelivered: false, done: null };
  const ev = batch.events;
  const reader = new BatchReader(batch);
  const idToSlot = new Map<string, number>();
  for (let i = 0; i < ev.count; i++) {
    idToSlot.set(reader.str(i, OFF.eventId)!, i);
    ev.flags[i] = ev.flags[i]! | EVENT_FLAGS.encrypted | extraFlags;
  }
  if (ev.count === 0) return null;
  const slots = items.map((d) => idToSlot.get(d.event.event_id as string) ?? -1);
  addTrustColumns(ev, items, slots);
  return { batch, slots };
}

/** Gives a decrypted batch its trust and sender-device columns (clear batches have none: they cost nothing). */
function addTrustColumns(ev: EventColumns, items: Decrypted[], slots: number[]): void {
  ev.trust = new Uint8Array(ev.count);
  ev.device = new Int32Array(ev.count).fill(-1);
  for (const [k, d] of items.entries()) {
    const slot = slots[k]!;
    if (slot < 0 || !d.trust) continue;
    ev.trust[slot] = trustCode(d.trust.level);
    const id = d.trust.deviceId;
    if (id === null) continue;
    let s = ev.strings.indexOf(id);
    if (s < 0) s = ev.strings.push(id) - 1;
    ev.device[slot] = s;
  }
}

/**
 * Withheld codes after which the room key will not come: its sender decided not to share it with this device
 * (`m.unverified`: the device is not verified, which bots rarely are; `m.blacklisted`: blocked;
 * `m.unauthorised`: not allowed to have it). After `m.unavailable` (a device asked had no copy) and `m.no_olm`
 * (no Olm session with this device yet, e.g. its one-time keys were used up) the key may still come, as after
 * codes not known here.
 */
export const WITHHELD_FOR_GOOD: ReadonlySet<string> = new Set(['m.unverified', 'm.blacklisted', 'm.unauthorised']);

/** Why a key is missing when it was withheld: the code, and the engine's text for it when it has one. */
export function withheldReason(code: string, text: unknown): string {
  return `its room key was withheld (${code}${typeof text === 'string' && text !== '' ? `: ${text}` : ''})`;
}

/** The JSON object in `text`, or null when it is not JSON or not an object. */
export function safeJson(text: string): Record<string, unknown> | null {
  try {
    const v = JSON.parse(text) as unknown;
    return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}

/** The text of an error, including the engine's (wasm errors carry `description`, not `message`). */
export function errMessage(err: unknown): string {
  if (err instanceof Error) return err.message;
  const d = (err as { description?: unknown })?.description;
  return typeof d === 'string' ? d : String(err);
}
