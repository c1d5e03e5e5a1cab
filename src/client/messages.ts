/**
 * Sending, as functions of the client's core: messages with their relations and mentions, edits, any event,
 * redactions, receipts — all through the outbox (durable, ordered per room, paced) — and the outbox's one
 * attempt ({@link attemptSend}), which encrypts for encrypted rooms. Plain text never goes into an encrypted room
 * for want of an answer: with encryption on, a send waits for the crypto actor; with it off, a room the cache
 * has not seen is asked of the server, and no answer means no send.
 */
import { type MentionsContent, newMentions, readMentions } from '../edits.ts';
import { HalcyonError } from '../errors.ts';
import type { ContentInput, Mentions, MessageOptions } from '../events.ts';
import { seg } from '../http.ts';
import { contentArg, eventIdArg, roomIdArg, stringArg } from '../ids.ts';
import { claimSendSlot, type OutboxOp, type SendSlot } from '../outbox.ts';
import type { MatrixEvent } from '../protocol.ts';
import { ENCRYPTED } from './actors.ts';
import type { ClientCore } from './core.ts';
import { MAX_OTHER_ROOMS } from './mirror.ts';
import type { SendOptions } from './options.ts';
import { getStateEvent } from './rooms-api.ts';

/** Sends a message (a string becomes `m.text`), as a reply, in a thread, with mentions; resolves with the event ID. */
export async function sendMessage(core: ClientCore, roomId: string, content: ContentInput, opts: MessageOptions = {}): Promise<string> {
  roomIdArg(roomId, 'sendMessage');
  const c: Record<string, unknown> = typeof content === 'string' ? { msgtype: 'm.text', body: content } : { ...content };
  const eventId = await inRoomOrder(core, roomId, async (slot) => {
    // A thread message that replies to nothing in particular falls back to the thread's latest event.
    const fallback = opts.threadId !== undefined && opts.replyTo === undefined ? await latestInThread(core, roomId, opts.threadId) : undefined;
    return queueSend(core, roomId, 'm.room.message', withRelations(c, opts, fallback), opts, slot);
  });
  core.sentMentions.set(eventId, readMentions(c['m.mentions']));
  return eventId;
}

/** A send queued in the outbox: its delivery (wrapped, so that awaiting the wrapper does not await the delivery). */
type Queued = { delivery: Promise<string> };

/**
 * Runs `prepare` (what must be asked before a send: is the room encrypted, the thread's latest event, the edited
 * message's mentions; it ends by queueing the send) once every earlier send of the room is queued, and resolves
 * with the delivery: sends reach the outbox in call order even when their preparations take different times.
 * The send's place in its handler run is claimed here, where it is called (see `claimSendSlot`).
 */
function inRoomOrder(core: ClientCore, roomId: string, prepare: (slot: SendSlot | null) => Promise<Queued>): Promise<string> {
  const run = claimSendSlot();
  const before = core.sendOrder.get(roomId) ?? Promise.resolve();
  const queued = before.then(() => prepare(run));
  const slot = queued.then(
    () => {},
    () => {},
  );
  core.sendOrder.set(roomId, slot);
  void slot.then(() => {
    if (core.sendOrder.get(roomId) === slot) core.sendOrder.delete(roomId);
  });
  return queued.then((q) => q.delivery);
}

/**
 * Settles once every send called so far is in the outbox (its preparation done, or failed); null when none is on
 * its way. Acknowledging a handler's event waits for it (see `AckTracker.flush`).
 */
export function sendsQueued(core: ClientCore): Promise<unknown> | null {
  return core.sendOrder.size === 0 ? null : Promise.all(core.sendOrder.values());
}

/** The latest event of a thread (the server's `m.thread` relations), or the root when it has none. */
async function latestInThread(core: ClientCore, roomId: string, root: string): Promise<string> {
  const res = await core
    .needHttp()
    .json<{ chunk?: Array<{ event_id?: unknown }> }>('GET', `/_matrix/client/v1/rooms/${seg(roomId)}/relations/${seg(root)}/m.thread`, { query: { dir: 'b', limit: 1 } })
    .catch(() => null);
  const id = res?.chunk?.[0]?.event_id;
  return typeof id === 'string' ? id : root;
}

/**
 * Edits a message (`m.replace`); resolves with the edit's ID. `m.new_content` carries the full `m.mentions`; the
 * top-level `m.mentions` only users the previous version did not mention (nobody when it is unknown: an
 * encrypted message sent before this run), so nobody is pinged twice.
 */
export async function editMessage(core: ClientCore, roomId: string, eventId: string, newContent: ContentInput, opts: { mentions?: Mentions } = {}): Promise<string> {
  roomIdArg(roomId, 'editMessage');
  const n: Record<string, unknown> = typeof newContent === 'string' ? { msgtype: 'm.text', body: newContent } : { ...newContent };
  delete n['m.relates_to'];
  if (opts.mentions !== undefined && n['m.mentions'] === undefined) n['m.mentions'] = mentionsContent(opts.mentions);
  const full = readMentions(n['m.mentions']);
  const id = await inRoomOrder(core, roomId, async (slot) => {
    const previous = await previousMentions(core, roomId, eventId);
    const body = typeof n.body === 'string' ? n.body : '';
    const outer: Record<string, unknown> = {
      ...n,
      body: `* ${body}`,
      'm.new_content': n,
      'm.relates_to': { rel_type: 'm.replace', event_id: eventId },
      'm.mentions': newMentions(full, previous),
    };
    if (typeof n.formatted_body === 'string') outer.formatted_body = `* ${n.formatted_body}`;
    return queueSend(core, roomId, 'm.room.message', outer, {}, slot);
  });
  core.sentMentions.set(eventId, full);
  return id;
}

/** The mentions of a message's current version: as the bot sent it this run, else as the server holds it. */
async function previousMentions(core: ClientCore, roomId: string, eventId: string): Promise<MentionsContent | null> {
  const known = core.sentMentions.get(eventId);
  if (known) return known;
  const ev = await fetchEvent(core, roomId, eventId);
  if (ev?.type !== 'm.room.message') return null; // encrypted (or gone): unknown
  // The server bundles the latest edit with the original (spec: m.relations); its m.new_content is current.
  const latest = (ev.unsigned?.['m.relations'] as { 'm.replace'?: { content?: Record<string, unknown> } } | undefined)?.['m.replace'];
  const current = latest?.content?.['m.new_content'] as Record<string, unknown> | undefined;
  if (latest) return current ? readMentions(current['m.mentions']) : null;
  return readMentions(ev.content['m.mentions']);
}

/** An event as the server holds it (encrypted ones stay encrypted), or null when it cannot be had. */
export async function fetchEvent(core: ClientCore, roomId: string, eventId: string): Promise<MatrixEvent | null> {
  try {
    const ev = await core.needHttp().json<MatrixEvent>('GET', `/_matrix/client/v3/rooms/${seg(roomId)}/event/${seg(eventId)}`);
    return typeof ev.type === 'string' && typeof ev.content === 'object' && ev.content !== null ? ev : null;
  } catch (err) {
    core.opts.logger.info({ code: (err as HalcyonError).code, roomId, eventId }, 'event not available');
    return null;
  }
}

/** Sends a read receipt up to `eventId` (`private`: `m.read.private`; `threadId`: a threaded receipt). */
export async function sendReadReceipt(core: ClientCore, roomId: string, eventId: string, opts: { private?: boolean; threadId?: string } = {}): Promise<void> {
  roomIdArg(roomId, 'sendReadReceipt');
  const type = opts.private ? 'm.read.private' : 'm.read';
  await core.needHttp().json('POST', `/_matrix/client/v3/rooms/${seg(roomId)}/receipt/${type}/${seg(eventId)}`, {
    body: opts.threadId === undefined ? {} : { thread_id: opts.threadId },
  });
}

/**
 * Sends any room event through the outbox; resolves with its event ID. Encrypted in an encrypted room; with
 * encryption off, refused there (`HALCYON_ROOM_ENCRYPTED`) unless `allowPlaintext`.
 */
export async function sendEvent(core: ClientCore, roomId: string, type: string, content: Record<string, unknown>, opts: SendOptions = {}): Promise<string> {
  roomIdArg(roomId, 'sendEvent');
  stringArg(type, 'sendEvent', 'the event type');
  contentArg(type, content, 'sendEvent');
  core.need();
  return inRoomOrder(core, roomId, (slot) => queueSend(core, roomId, type, content, opts, slot));
}

/** Checks what a send into `roomId` needs (encryption off: the room must not be encrypted) and queues it. */
async function queueSend(core: ClientCore, roomId: string, type: string, content: Record<string, unknown>, opts: SendOptions, slot: SendSlot | null): Promise<Queued> {
  contentArg(type, content, 'sendEvent');
  const plaintextOk = opts.allowPlaintext === true || core.opts.encryption?.allowPlaintext === true;
  if (!core.opts.encryption && !plaintextOk && (await encryptedForSend(core, roomId))) {
    throw new HalcyonError('HALCYON_ROOM_ENCRYPTED', `room ${roomId} is encrypted and encryption is off; pass { allowPlaintext: true } to send in the clear`, { roomId });
  }
  return { delivery: core.needOutbox().send(roomId, { kind: 'send', type, content }, plaintextOk, slot) };
}

/** Redacts an event through the outbox; resolves with the redaction's event ID. */
export async function redactEvent(core: ClientCore, roomId: string, eventId: string, reason?: string): Promise<string> {
  roomIdArg(roomId, 'redactEvent');
  eventIdArg(eventId, 'redactEvent');
  core.need();
  const op: OutboxOp = reason === undefined ? { kind: 'redact', eventId } : { kind: 'redact', eventId, reason };
  return inRoomOrder(core, roomId, async (slot) => ({ delivery: core.needOutbox().send(roomId, op, true, slot) }));
}

/**
 * Whether a room is encrypted. With encryption on, the crypto store decides (asking the server once for rooms it
 * has not seen); otherwise main's mirror and the cache do, and a room the cache has not seen joined (just
 * joined, or not synced yet) is asked of the server. Fail closed: an error is no answer. A plain answer is
 * remembered: the server's until an encryption event reaches the mirror, which is asked first; the cache's while
 * the cache has made no room encrypted since (src/client/plain-rooms.ts).
 */
export async function isRoomEncrypted(core: ClientCore, roomId: string): Promise<boolean> {
  core.need();
  if (core.opts.encryption) return (await core.openCrypto()).isRoomEncrypted(roomId);
  if (core.mirror.get(roomId)?.encrypted) return true;
  if (core.plainRooms.has(roomId)) return false;
  const set = core.actors.set;
  // A joined room the cache said was not encrypted, while the cache has made no room encrypted since (plain-rooms.ts).
  const memo = set?.plainJoined;
  if (memo?.plain(roomId)) return false;
  const at = memo?.now() ?? 0;
  const cached = await set?.cache.api.getRoom(roomId).catch(() => undefined);
  if (cached?.membership === 'join') {
    if (!cached.encrypted) memo?.remember(roomId, at);
    return cached.encrypted;
  }
  const content = await getStateEvent(core, roomId, 'm.room.encryption');
  const encrypted = content !== null && typeof content.algorithm === 'string';
  if (!encrypted && core.plainRooms.size < MAX_OTHER_ROOMS) core.plainRooms.add(roomId);
  return encrypted;
}

/** {@link isRoomEncrypted} for a send: a failure to tell says which send it stopped. */
async function encryptedForSend(core: ClientCore, roomId: string): Promise<boolean> {
  try {
    return await isRoomEncrypted(core, roomId);
  } catch (err) {
    const e = err as HalcyonError;
    const out = new HalcyonError(e.code ?? 'HALCYON_INTERNAL', `cannot send into ${roomId}: cannot tell whether the room is encrypted (is the bot in it?): ${e.message}`, { roomId, cause: e });
    if (e.status !== undefined) out.status = e.status;
    if (e.errcode !== undefined) out.errcode = e.errcode;
    throw out;
  }
}

/** One attempt of an outbox entry: encrypts a send for an encrypted room, then PUTs it with its transaction ID. */
export async function attemptSend(core: ClientCore, roomId: string, txnId: string, op: OutboxOp, allowPlaintext: boolean, signal: AbortSignal): Promise<string> {
  const http = core.needHttp();
  let res: { event_id?: unknown };
  // 429s are waited out by the outbox (with its pacing), not here.
  if (op.kind === 'redact') {
    res = await http.json('PUT', `/_matrix/client/v3/rooms/${seg(roomId)}/redact/${seg(op.eventId)}/${seg(txnId)}`, {
      body: op.reason === undefined ? {} : { reason: op.reason },
      maxRateLimitRetries: 0,
      signal,
    });
  } else {
    let { type, content } = op;
    if (core.opts.encryption && !allowPlaintext) {
      // Never in the clear for want of an actor: during a restart the send waits for the new one.
      const r = await (await core.openCrypto(signal)).encrypt(roomId, type, content);
      if (r.encrypted) {
        type = ENCRYPTED;
        content = r.content;
      }
    }
    res = await http.json('PUT', `/_matrix/client/v3/rooms/${seg(roomId)}/send/${seg(type)}/${seg(txnId)}`, { body: content, maxRateLimitRetries: 0, signal });
  }
  if (typeof res.event_id !== 'string') throw new HalcyonError('HALCYON_BAD_RESPONSE', 'send: no event_id in the answer', { roomId });
  return res.event_id;
}

/**
 * Adds reply, thread and mention relations to message content. Replies carry no fallback text (the current spec
 * dropped it); a thread message that is not a reply to a particular event falls back to the thread's last event
 * as clients expect (`is_falling_back`).
 */
function withRelations(content: Record<string, unknown>, opts: MessageOptions, threadFallback?: string): Record<string, unknown> {
  const c = content;
  if (opts.threadId !== undefined) {
    c['m.relates_to'] = {
      rel_type: 'm.thread',
      event_id: opts.threadId,
      is_falling_back: opts.replyTo === undefined,
      'm.in_reply_to': { event_id: opts.replyTo ?? threadFallback ?? opts.threadId },
    };
  } else if (opts.replyTo !== undefined) {
    c['m.relates_to'] = { ...(c['m.relates_to'] as object | undefined), 'm.in_reply_to': { event_id: opts.replyTo } };
  }
  if (opts.mentions !== undefined && c['m.mentions'] === undefined) c['m.mentions'] = mentionsContent(opts.mentions);
  return c;
}

function mentionsContent(m: Mentions): Record<string, unknown> {
  const userIds = Array.isArray(m) ? m : (m.userIds ?? []);
  const out: Record<string, unknown> = { user_ids: [...new Set(userIds)] };
  if (!Array.isArray(m) && m.room) out.room = true;
  return out;
}
