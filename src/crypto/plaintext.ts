/**
 * What the crypto actor accepts from a decrypted room event. The ciphertext is written by any member of the room
 * and nothing in it is checked by the homeserver, so what it claims beyond a message-like event is refused here,
 * before the event is turned into a batch that handlers see.
 */

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
