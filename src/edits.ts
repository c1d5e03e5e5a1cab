/**
 * Edits (`m.replace`) by the spec's rules, as pure functions: whether a received edit may replace its original
 * ("Validity of replacement events"), and the mentions of an edit the bot sends (the top-level `m.mentions`
 * names only users the edit newly mentions, so an edit does not ping everyone again).
 */

/** What validation needs of an event: its envelope and (decrypted) content. */
export interface EditSubject {
  sender: string;
  /** The (decrypted) event type. */
  type: string;
  /** Whether the event arrived encrypted (an original is checked as the server holds it: see {@link editProblem}). */
  encrypted: boolean;
  stateKey: string | null;
  content: Record<string, unknown>;
}

/**
 * Why `edit` may not replace `original` by the spec's rules, or null when it may: same sender, same type,
 * neither a state event, the original not itself an edit, and `m.new_content` an object. The original is as the
 * server hands it back: an encrypted one (`m.room.encrypted`) is checked on its envelope — its sender, and that
 * the edit was encrypted too (its decrypted type is not known here).
 */
export function editProblem(edit: EditSubject, original: EditSubject | null): string | null {
  const n = edit.content['m.new_content'];
  if (typeof n !== 'object' || n === null || Array.isArray(n)) return 'it has no m.new_content object';
  if (edit.stateKey !== null) return 'it is a state event';
  if (original === null) return 'the original event cannot be found';
  if (original.sender !== edit.sender) return `it is from ${edit.sender}, the original from ${original.sender}`;
  if (original.stateKey !== null) return 'the original is a state event';
  if (original.type === 'm.room.encrypted') {
    if (!edit.encrypted) return 'the original is encrypted and the edit is not';
  } else if (original.type !== edit.type) return `it has type ${edit.type}, the original ${original.type}`;
  const rel = original.content['m.relates_to'] as { rel_type?: unknown } | undefined;
  if (rel?.rel_type === 'm.replace') return 'the original is itself an edit';
  return null;
}

/** `m.mentions` content: user IDs and whether the whole room is mentioned. */
export interface MentionsContent {
  user_ids?: string[];
  room?: boolean;
}

/** Reads an `m.mentions` value (anything malformed counts as mentioning no one). */
export function readMentions(v: unknown): MentionsContent {
  if (typeof v !== 'object' || v === null) return {};
  const m = v as { user_ids?: unknown; room?: unknown };
  const out: MentionsContent = {};
  if (Array.isArray(m.user_ids)) out.user_ids = m.user_ids.filter((u): u is string => typeof u === 'string');
  if (m.room === true) out.room = true;
  return out;
}

/**
 * The top-level `m.mentions` of an edit: the users (and `@room`) of `next` that `previous` did not mention.
 * `previous` null means unknown: then nobody is newly mentioned (no second ping is better than one too many).
 */
export function newMentions(next: MentionsContent, previous: MentionsContent | null): MentionsContent {
  if (previous === null) return {};
  const before = new Set(previous.user_ids ?? []);
  const out: MentionsContent = {};
  const added = (next.user_ids ?? []).filter((u) => !before.has(u));
  if (added.length > 0) out.user_ids = added;
  if (next.room === true && previous.room !== true) out.room = true;
  return out;
}
