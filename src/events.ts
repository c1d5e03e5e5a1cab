/**
 * What handlers receive. Objects here read their fields lazily from the batch columns the sync actor sent, so
 * an event whose content no handler reads is never parsed on the main thread.
 */
import { HalcyonError } from './errors.ts';
import { isMembership, isUserId, type Membership, type MessageContent, userIdOfLink } from './content.ts';
import { linkHrefs, sanitizeHtml } from './html.ts';
import { BatchReader } from './batch-reader.ts';
import { EVENT_FLAGS, type InviteWire, type MatrixEvent, OFF, type ReceiptWire, type RoomSummary, TRUST_LEVELS, type TrustLevel } from './protocol.ts';

export { BatchReader };
import type { RoomDetails } from './rooms.ts';

/**
 * How an encrypted event's sender device stands with the bot, as the crypto store knew it at decryption.
 * `trust`: `verified` (the bot verified this device, or its owner), `signed` (cross-signed by its owner, whom the
 * bot has not verified: what most devices are), `unsigned` (not cross-signed by its owner), `unknown-device` (not
 * known to the bot, or its room key came from a backup or another device, which cannot vouch for it),
 * `identity-changed` (its owner was verified and has a new identity since); the bot's own device is `verified`.
 * Under the `trust` option `signed` (the default) events of `unsigned` and `unknown-device` senders never reach
 * handlers; under `verified`, only `verified` ones do.
 */
export interface EncryptionInfo {
  trust: TrustLevel;
  /** The sender's device ID, when known. */
  deviceId: string | null;
}

/**
 * A verification whose short authentication string (SAS) is ready to compare, emitted as `verificationRequest`:
 * show `emoji` (or `decimals`) to the person verifying, who compares them with their own screen; then `confirm()`
 * if they match, else `cancel()`. With `verification.autoConfirm`, the client has confirmed already.
 */
export interface Verification {
  /** The other user, and their device (known once the other side answered an in-room request). */
  readonly userId: string;
  readonly deviceId: string | null;
  /** The flow's ID: the request's transaction ID (to-device) or event ID (in a room). */
  readonly flowId: string;
  /** The room of an in-room verification, else null. */
  readonly roomId: string | null;
  /** Whether the bot started it (`client.requestVerification`). */
  readonly weStarted: boolean;
  /** The seven emoji of the SAS (`symbol`, and its English `description`), in order. */
  readonly emoji: ReadonlyArray<{ symbol: string; description: string }>;
  /** The SAS as three four-digit numbers. */
  readonly decimals: readonly number[];
  /**
   * Says the SAS matches. Resolves once the other side has confirmed too (the verification is done: each side now
   * trusts the other's device); rejects with `HALCYON_VERIFICATION_CANCELLED` if it was cancelled instead.
   */
  confirm(): Promise<void>;
  /** Cancels the verification (`m.user`): say so when the SAS does not match. */
  cancel(): Promise<void>;
}

/** Content to send: a string becomes an `m.text` message. */
export type ContentInput = string | Record<string, unknown>;

/** Who a message mentions (`m.mentions`): user IDs, and whether it mentions the whole room (`@room`). */
export type Mentions = string[] | { userIds?: string[]; room?: boolean };

/** Options of sending a message: relations, mentions, and the encryption opt-out. */
export interface MessageOptions {
  /** Make it a rich reply to this event (`m.in_reply_to`; no fallback text, per the current spec). */
  replyTo?: string;
  /** Send it in the thread rooted at this event (`m.thread`). */
  threadId?: string;
  /** Users (and/or the room) it mentions: sets `m.mentions`. */
  mentions?: Mentions;
  /** Send in the clear even if the room is encrypted (default false: encrypt, or refuse if encryption is off). */
  allowPlaintext?: boolean;
}

/** Options of {@link Message.reply} and {@link Message.replyInThread}: those of any send, and `force`. */
export interface ReplyOptions extends MessageOptions {
  /**
   * Answer even though the message is an `m.notice`. The spec says notices must never be answered
   * automatically (two bots answering each other's notices would loop), so replying to one rejects with
   * `HALCYON_INVALID_ARGUMENT` unless this is true: set it only for a reply a human asked for.
   */
  force?: boolean;
}

/** What a {@link Room} and the event objects need from the client (kept narrow so they stay testable). */
export interface RoomActions {
  /** Sends a message; see `Client.sendMessage`. */
  sendMessage(roomId: string, content: ContentInput, opts?: MessageOptions): Promise<string>;
  /** Sends an `m.notice`; see `Client.sendNotice`. */
  sendNotice(roomId: string, text: string, opts?: MessageOptions): Promise<string>;
  /** Sends an `m.emote`; see `Client.sendEmote`. */
  sendEmote(roomId: string, text: string, opts?: MessageOptions): Promise<string>;
  /** Sends sanitised HTML; see `Client.sendHtml`. */
  sendHtml(roomId: string, html: string, plainText?: string, opts?: MessageOptions): Promise<string>;
  /** Shows or stops typing; see `Client.sendTyping`. */
  sendTyping(roomId: string, on?: boolean | number): Promise<void>;
  /** Typing while work runs; see `Client.typingWhile`. */
  typingWhile<T>(roomId: string, work: Promise<T> | (() => Promise<T>)): Promise<T>;
  /** Sends any room event; see `Client.sendEvent`. */
  sendEvent(roomId: string, type: string, content: Record<string, unknown>): Promise<string>;
  /** Redacts an event; see `Client.redactEvent`. */
  redactEvent(roomId: string, eventId: string, reason?: string): Promise<string>;
  /** Edits a message; see `Client.editMessage`. */
  editMessage(roomId: string, eventId: string, newContent: ContentInput): Promise<string>;
  /** Sends a read receipt; see `Client.sendReadReceipt`. */
  sendReadReceipt(roomId: string, eventId: string, opts?: { private?: boolean; threadId?: string }): Promise<void>;
  /** Leaves a room; see `Client.leaveRoom`. */
  leaveRoom(roomId: string): Promise<void>;
  /** The cache's details of a room; see `Client.getRoom`. */
  getRoom(roomId: string): Promise<RoomDetails | undefined>;
  /** Downloads a media message's file; see `Client.downloadContent`. */
  downloadContent(content: Record<string, unknown>, opts?: { maxBytes?: number }): Promise<Buffer>;
}

/** A room handle with the cached summary (always current) and shortcuts bound to the room. */
export class Room {
  constructor(
    readonly id: string,
    private readonly summaries: Map<string, RoomSummary>,
    private readonly actions: RoomActions,
  ) {}

  private get s(): RoomSummary | undefined {
    return this.summaries.get(this.id);
  }
  /** The room's name (`m.room.name`), or null. */
  get name(): string | null {
    return this.s?.name ?? null;
  }
  /** The room's topic, or null. */
  get topic(): string | null {
    return this.s?.topic ?? null;
  }
  /** The room's canonical alias, or null. */
  get canonicalAlias(): string | null {
    return this.s?.canonicalAlias ?? null;
  }
  /** The room's avatar (mxc URI), or null. */
  get avatarUrl(): string | null {
    return this.s?.avatarUrl ?? null;
  }
  /** Joined members, as the server last counted them. */
  get memberCount(): number {
    return this.s?.joinedMemberCount ?? 0;
  }
  /** Whether the room is encrypted (`m.room.encryption` seen). */
  get encrypted(): boolean {
    return this.s?.encrypted ?? false;
  }
  /** Sends a message (a string becomes `m.text`), optionally as a reply, in a thread, with mentions. */
  send(content: ContentInput, opts?: MessageOptions): Promise<string> {
    return this.actions.sendMessage(this.id, content, opts);
  }
  /** Sends an `m.notice`. */
  sendNotice(text: string, opts?: MessageOptions): Promise<string> {
    return this.actions.sendNotice(this.id, text, opts);
  }
  /** Sends an `m.emote`. */
  sendEmote(text: string, opts?: MessageOptions): Promise<string> {
    return this.actions.sendEmote(this.id, text, opts);
  }
  /** Sends (sanitised) HTML with a generated plain-text body. */
  sendHtml(html: string, plainText?: string, opts?: MessageOptions): Promise<string> {
    return this.actions.sendHtml(this.id, html, plainText, opts);
  }
  /** Shows (or with `false` hides) the bot as typing; a number is the timeout in ms (default 30 s). */
  sendTyping(on: boolean | number = true): Promise<void> {
    return this.actions.sendTyping(this.id, on);
  }
  /**
   * Shows the bot as typing until `work` settles (refreshing the notice while it runs), then stops it; resolves
   * or rejects as `work` does. Typing failures never fail the work.
   */
  typingWhile<T>(work: Promise<T> | (() => Promise<T>)): Promise<T> {
    return this.actions.typingWhile(this.id, work);
  }
  /** Everything the cache knows about the room, with power-level checks (`powerLevel`, `can`). */
  info(): Promise<RoomDetails | undefined> {
    return this.actions.getRoom(this.id);
  }
  /** Leaves the room. */
  leave(): Promise<void> {
    return this.actions.leaveRoom(this.id);
  }
  /** The summary as plain data (for logging). */
  toJSON(): RoomSummary | { roomId: string } {
    return this.s ?? { roomId: this.id };
  }
}

/** Any room event; the specific kinds below add typed fields. */
export class RoomEvent {
  private parsed: MatrixEvent | undefined;
  private id: string | undefined;
  private from: string | undefined;

  /** @internal */
  constructor(
    protected readonly reader: BatchReader,
    protected readonly i: number,
    /** The room the event belongs to. */
    readonly room: Room,
    protected readonly actions: RoomActions,
  ) {}

  /** The event ID. */
  get eventId(): string {
    return (this.id ??= this.reader.str(this.i, OFF.eventId)!);
  }
  /** The room ID. */
  get roomId(): string {
    return this.room.id;
  }
  /** The event type, e.g. `m.room.message`. */
  get type(): string {
    return this.reader.type(this.i);
  }
  /** The sender's user ID. */
  get sender(): string {
    return (this.from ??= this.reader.str(this.i, OFF.sender)!);
  }
  /** `origin_server_ts`: when the sender's server received it, in ms since the epoch. */
  get timestamp(): number {
    return this.reader.batch.events.ts[this.i]!;
  }
  /** The state key, for state events; else null. */
  get stateKey(): string | null {
    return this.reader.str(this.i, OFF.stateKey);
  }
  /** Whether the event arrived encrypted (`m.room.encrypted`) and was decrypted; type and content are the decrypted ones. */
  get isEncrypted(): boolean {
    return (this.reader.batch.events.flags[this.i]! & EVENT_FLAGS.encrypted) !== 0;
  }
  /**
   * For an event that arrived encrypted: what its sender device is to the bot (`trust`: `verified`, `signed`,
   * `unsigned`, `unknown-device`, `identity-changed`; see {@link EncryptionInfo}), as known when it was decrypted;
   * null for an event sent in the clear.
   */
  get encryption(): EncryptionInfo | null {
    const ev = this.reader.batch.events;
    const code = ev.trust?.[this.i] ?? 0;
    if (code === 0) return null;
    const device = ev.device?.[this.i] ?? -1;
    return { trust: TRUST_LEVELS[code - 1]!, deviceId: device >= 0 ? ev.strings[device]! : null };
  }
  /** Whether it was decrypted late: its room key arrived after the events around it were delivered. */
  get decryptedLate(): boolean {
    return (this.reader.batch.events.flags[this.i]! & EVENT_FLAGS.late) !== 0;
  }
  /**
   * Whether this is a redelivery: an earlier run handed the event to handlers and stopped (crash, kill, stop
   * timeout) before they settled. Handlers that must not act twice can check it (sends are idempotent anyway).
   */
  get redelivered(): boolean {
    return this.reader.batch.redelivered === true;
  }
  /** The whole event as the server sent it (decrypted: type and content in clear); parsed on first access. */
  get raw(): MatrixEvent {
    return (this.parsed ??= this.reader.parse(this.i));
  }
  /** The event's content. */
  get content(): Record<string, unknown> {
    return this.raw.content;
  }
  /** Redacts this event. */
  redact(reason?: string): Promise<string> {
    return this.actions.redactEvent(this.roomId, this.eventId, reason);
  }
  /** Reacts to this event with `key` (an emoji, usually); resolves with the reaction's event ID. */
  react(key: string): Promise<string> {
    return this.actions.sendEvent(this.roomId, 'm.reaction', {
      'm.relates_to': { rel_type: 'm.annotation', event_id: this.eventId, key },
    });
  }
  /** @internal */
  protected get relEventId(): string | null {
    return this.reader.str(this.i, OFF.relEventId);
  }
}

/**
 * `body` without an old-style reply fallback: a leading run of lines starting with `> ` ended by a blank line
 * (as clients wrote them before spec v1.13). Without the blank line the quote is taken for the sender's own.
 * One pass, no regex: the body is the sender's to make as long and as odd as they like.
 */
function stripReplyFallback(body: string): string {
  let at = 0;
  while (body.startsWith('> ', at)) {
    const nl = body.indexOf('\n', at);
    if (nl < 0) return body;
    at = nl + 1;
  }
  if (at === 0) return body;
  if (body.startsWith('\n', at)) return body.slice(at + 1);
  if (body.startsWith('\r\n', at)) return body.slice(at + 2);
  return body;
}

/** An `m.room.message` (text, notice, emote, or media). */
export class Message extends RoomEvent {
  private shownBody: string | undefined;
  private html: string | null | undefined;
  private mentioned: string[] | undefined;

  /** The content, typed per `msgtype` (see {@link MessageContent}: as sent, not validated). */
  override get content(): MessageContent {
    return super.content as MessageContent;
  }
  /** `content.msgtype`, e.g. `m.text`, `m.image`. */
  get msgtype(): string {
    const t = this.content.msgtype;
    return typeof t === 'string' ? t : '';
  }
  /**
   * The plain text (`content.body`; a file name or caption for media), or '' if missing. In a reply
   * (`m.in_reply_to`), without the reply fallback older clients put before the text: a leading run of `> `
   * lines and the blank line after it. `content.body` keeps what was sent.
   */
  get body(): string {
    if (this.shownBody === undefined) {
      const b = this.content.body;
      this.shownBody = typeof b !== 'string' ? '' : this.repliesToEvent ? stripReplyFallback(b) : b;
    }
    return this.shownBody;
  }
  /**
   * The message's HTML (`formatted_body` with `format: org.matrix.custom.html`), sanitised by
   * {@link sanitizeHtml}: only the spec's tags and attributes, so it is safe to render or send on, and without
   * the reply fallback (`mx-reply`, which the spec says to strip); null when the message has no HTML. Computed
   * on first read. The HTML as sent is `content.formatted_body`.
   */
  get formattedBody(): string | null {
    if (this.html === undefined) {
      const c = this.content;
      this.html = c.format === 'org.matrix.custom.html' && typeof c.formatted_body === 'string' ? sanitizeHtml(c.formatted_body) : null;
    }
    return this.html;
  }
  /** Whether the content has an `m.in_reply_to` (a thread's fallback reply included: its body may carry a fallback too). */
  private get repliesToEvent(): boolean {
    const rel = this.content['m.relates_to'] as { 'm.in_reply_to'?: { event_id?: unknown } } | undefined;
    return typeof rel?.['m.in_reply_to']?.event_id === 'string';
  }
  /** The event ID this message replies to, if it is a reply (a thread's fallback reply is not one). */
  get inReplyTo(): string | null {
    const rel = this.content['m.relates_to'] as { rel_type?: unknown; is_falling_back?: unknown; 'm.in_reply_to'?: { event_id?: unknown } } | undefined;
    if (rel?.rel_type === 'm.thread' && rel.is_falling_back === true) return null;
    const id = rel?.['m.in_reply_to']?.event_id;
    return typeof id === 'string' ? id : null;
  }
  /** The root event ID of the thread this message is in (`m.thread`), or null. */
  get threadId(): string | null {
    const rel = this.content['m.relates_to'] as { rel_type?: unknown; event_id?: unknown } | undefined;
    return rel?.rel_type === 'm.thread' && typeof rel.event_id === 'string' ? rel.event_id : null;
  }
  /**
   * Every user this message mentions, as user IDs: `m.mentions.user_ids`, then the users linked in its HTML
   * (the pills Element sends, whose `body` shows only display names): `https://matrix.to/#/@user:server` and
   * `matrix:u/user:server` links, percent-decoded. Only valid user IDs, each once; links inside the reply fallback
   * do not count. Computed on first read. For a command bot: who was addressed, by ID.
   */
  get mentionedUserIds(): string[] {
    if (this.mentioned === undefined) {
      const ids = new Set(this.mentions.filter(isUserId));
      const c = this.content;
      if (c.format === 'org.matrix.custom.html' && typeof c.formatted_body === 'string') {
        for (const href of linkHrefs(c.formatted_body)) {
          const id = userIdOfLink(href);
          if (id !== null) ids.add(id);
        }
      }
      this.mentioned = [...ids];
    }
    return this.mentioned;
  }
  /** The users this message mentions (`m.mentions.user_ids`, the strings as sent); see also {@link mentionedUserIds}. */
  get mentions(): string[] {
    const ids = (this.content['m.mentions'] as { user_ids?: unknown } | undefined)?.user_ids;
    return Array.isArray(ids) ? ids.filter((u): u is string => typeof u === 'string') : [];
  }
  /** Whether this message mentions the whole room (`m.mentions.room`). */
  get mentionsRoom(): boolean {
    return (this.content['m.mentions'] as { room?: unknown } | undefined)?.room === true;
  }
  /** Whether this is an `m.notice`: what bots send, and what the spec says must never be answered automatically. */
  get isNotice(): boolean {
    return this.msgtype === 'm.notice';
  }
  /**
   * Sends a rich reply to this message (`m.in_reply_to`, no fallback text, mentioning the sender). A reply to a
   * message in a thread stays in that thread. On a notice it rejects with `HALCYON_INVALID_ARGUMENT` unless
   * `opts.force` (see {@link ReplyOptions.force}).
   */
  reply(content: ContentInput, opts: ReplyOptions = {}): Promise<string> {
    const { force, ...rest } = opts;
    if (this.isNotice && force !== true) return this.noticeRefused();
    return this.actions.sendMessage(this.roomId, content, { mentions: [this.sender], threadId: this.threadId ?? undefined, ...rest, replyTo: this.eventId });
  }
  /**
   * Replies in the thread of this message (starting one rooted at it if it is not in a thread). On a notice it
   * rejects with `HALCYON_INVALID_ARGUMENT` unless `opts.force` (see {@link ReplyOptions.force}).
   */
  replyInThread(content: ContentInput, opts: ReplyOptions = {}): Promise<string> {
    const { force, ...rest } = opts;
    if (this.isNotice && force !== true) return this.noticeRefused();
    return this.actions.sendMessage(this.roomId, content, { mentions: [this.sender], ...rest, threadId: this.threadId ?? this.eventId, replyTo: this.eventId });
  }
  private noticeRefused(): Promise<never> {
    const why = 'not replying to an m.notice: the spec says notices must never be answered automatically (bots answering bots loop); pass { force: true } to reply anyway';
    return Promise.reject(new HalcyonError('HALCYON_INVALID_ARGUMENT', why, { roomId: this.roomId, eventId: this.eventId }));
  }
  /** Sends a read receipt for this message (in its thread, if it is in one). */
  markRead(opts: { private?: boolean } = {}): Promise<void> {
    return this.actions.sendReadReceipt(this.roomId, this.eventId, { ...opts, threadId: this.threadId ?? undefined });
  }
  /** Whether this is a media message (`m.image`, `m.video`, `m.audio`, `m.file`, or a sticker-like with a file). */
  get isMedia(): boolean {
    const c = this.content;
    return typeof c.url === 'string' || (typeof c.file === 'object' && c.file !== null);
  }
  /**
   * Downloads the message's file through authenticated media; an encrypted attachment is decrypted after its
   * SHA-256 is checked (`HALCYON_ATTACHMENT_HASH_MISMATCH` otherwise).
   */
  download(opts?: { maxBytes?: number }): Promise<Buffer> {
    return this.actions.downloadContent(this.content, opts);
  }
  /** Replaces this message's content (an `m.replace` edit; only the sender's own messages can be edited). */
  edit(newContent: ContentInput): Promise<string> {
    return this.actions.editMessage(this.roomId, this.eventId, newContent);
  }
}

/** An edit: an `m.room.message` that replaces an earlier one. */
export class Edit extends Message {
  /** The event ID of the message being replaced. */
  get replaces(): string {
    return this.relEventId ?? '';
  }
  /** The new content (`m.new_content`), or the content itself when missing. */
  get newContent(): Record<string, unknown> {
    const n = this.content['m.new_content'];
    return n && typeof n === 'object' ? (n as Record<string, unknown>) : this.content;
  }
}

/** An `m.reaction` (an annotation) on another event. */
export class Reaction extends RoomEvent {
  /** The event reacted to. */
  get targetEventId(): string {
    return this.relEventId ?? '';
  }
  /** The reaction key (usually an emoji). */
  get key(): string {
    const rel = this.content['m.relates_to'] as { key?: unknown } | undefined;
    return typeof rel?.key === 'string' ? rel.key : '';
  }
}

/** An `m.room.member` change. */
export class MemberEvent extends RoomEvent {
  /** The user whose membership changed. */
  get userId(): string {
    return this.stateKey ?? '';
  }
  /** The new membership: join, leave, invite, ban or knock; '' if the event has none of these (malformed). */
  get membership(): Membership | '' {
    const m = this.content.membership;
    return isMembership(m) ? m : '';
  }
  /** The membership before this event, when the server says (null if it does not, or says something else). */
  get previousMembership(): Membership | null {
    const prev = (this.raw.unsigned?.prev_content as { membership?: unknown } | undefined)?.membership;
    return isMembership(prev) ? prev : null;
  }
  /** The display name set by this event, if any. */
  get displayName(): string | null {
    const d = this.content.displayname;
    return typeof d === 'string' ? d : null;
  }
}

/** An `m.room.redaction`. */
export class Redaction extends RoomEvent {
  /** The redacted event (from `content.redacts`, or the top-level `redacts` of older room versions). */
  get redacts(): string {
    const r = this.content.redacts ?? this.raw.redacts;
    return typeof r === 'string' ? r : '';
  }
  /** The reason given, if any. */
  get reason(): string | null {
    const r = this.content.reason;
    return typeof r === 'string' ? r : null;
  }
}

/** A read receipt: `userId` has read `roomId` up to `eventId`. */
export interface Receipt extends ReceiptWire {
  /** The room the receipt is in. */
  room: Room;
}

/** Account data that changed: global (`roomId` null) or for one room. */
export interface AccountDataEvent {
  roomId: string | null;
  type: string;
  content: Record<string, unknown>;
}

/** An invitation to a room. */
export interface Invite extends InviteWire {
  /** Joins the room. */
  accept(): Promise<string>;
  /** Declines (leaves) the room. */
  decline(reason?: string): Promise<void>;
}

/** A user's profile. */
export interface Profile {
  displayName: string | null;
  /** Avatar as an `mxc://` URI. */
  avatarUrl: string | null;
}

/** A user's presence. */
export interface Presence {
  /** `online`, `unavailable` or `offline`. */
  presence: string;
  statusMsg: string | null;
  /** Milliseconds since the user was last active, when the server says. */
  lastActiveAgo: number | null;
  currentlyActive: boolean;
}

/** What a {@link User} needs from the client. */
export interface UserActions {
  getProfile(userId: string): Promise<Profile>;
  getPresence(userId: string): Promise<Presence>;
  getOrCreateDm(userId: string, opts?: { encrypted?: boolean }): Promise<string>;
}

/** A handle on a user: look-ups go to the server when called. */
export class User {
  /** @internal */
  constructor(
    /** The user ID. */
    readonly id: string,
    private readonly actions: UserActions,
  ) {}
  /** The user's profile (display name, avatar). */
  profile(): Promise<Profile> {
    return this.actions.getProfile(this.id);
  }
  /** The user's display name, or null. */
  async displayName(): Promise<string | null> {
    return (await this.actions.getProfile(this.id)).displayName;
  }
  /** The user's avatar (`mxc://`), or null. */
  async avatarUrl(): Promise<string | null> {
    return (await this.actions.getProfile(this.id)).avatarUrl;
  }
  /** The user's presence. */
  presence(): Promise<Presence> {
    return this.actions.getPresence(this.id);
  }
  /** The direct chat with this user (reused from `m.direct`, or created); resolves with its room ID. */
  dm(opts?: { encrypted?: boolean }): Promise<string> {
    return this.actions.getOrCreateDm(this.id, opts);
  }
}
