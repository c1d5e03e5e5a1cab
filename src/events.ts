/**
 * What handlers receive. Objects here read their fields lazily from the batch columns the sync actor sent, so
 * an event whose content no handler reads is never parsed on the main thread.
 */
import { EVENT_FLAGS, type InviteWire, type MatrixEvent, OFF, OFFSET_STRIDE, type RoomSummary, type WireBatch } from './protocol.ts';

/** Content to send: a string becomes an `m.text` message. */
export type ContentInput = string | Record<string, unknown>;

/** What a {@link Room} and the event objects need from the client (kept narrow so they stay testable). */
export interface RoomActions {
  sendMessage(roomId: string, content: ContentInput): Promise<string>;
  sendNotice(roomId: string, text: string): Promise<string>;
  sendEmote(roomId: string, text: string): Promise<string>;
  sendHtml(roomId: string, html: string, plainText?: string): Promise<string>;
  sendTyping(roomId: string, on?: boolean | number): Promise<void>;
  sendEvent(roomId: string, type: string, content: Record<string, unknown>): Promise<string>;
  redactEvent(roomId: string, eventId: string, reason?: string): Promise<string>;
  leaveRoom(roomId: string): Promise<void>;
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
  /** Sends a message (a string becomes `m.text`); resolves with the event ID. */
  send(content: ContentInput): Promise<string> {
    return this.actions.sendMessage(this.id, content);
  }
  /** Sends an `m.notice`. */
  sendNotice(text: string): Promise<string> {
    return this.actions.sendNotice(this.id, text);
  }
  /** Sends HTML with a generated plain-text body. */
  sendHtml(html: string, plainText?: string): Promise<string> {
    return this.actions.sendHtml(this.id, html, plainText);
  }
  /** Shows (or with `false` hides) the bot as typing; a number is the timeout in ms (default 30 s). */
  sendTyping(on: boolean | number = true): Promise<void> {
    return this.actions.sendTyping(this.id, on);
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

/**
 * Reads the events of one batch from its body bytes. Fields are decoded on demand: an event nobody looks at
 * costs nothing on this thread. Event objects keep the batch's body alive while they are referenced.
 */
export class BatchReader {
  private readonly buf: Buffer;
  /** @internal */
  constructor(readonly batch: WireBatch) {
    const body = batch.body;
    this.buf = Buffer.from(body.buffer, body.byteOffset, body.byteLength);
  }
  /** Decodes the string field at `slot` of event `i`, or null when the event has none. */
  str(i: number, slot: number): string | null {
    const o = this.batch.events.offsets;
    const s = o[i * OFFSET_STRIDE + slot]!;
    if (s < 0) return null;
    const e = o[i * OFFSET_STRIDE + slot + 1]!;
    return this.batch.events.flags[i]! & EVENT_FLAGS.escaped(slot) ? (JSON.parse(this.buf.toString('utf8', s, e)) as string) : this.buf.toString('utf8', s + 1, e - 1);
  }
  /** Parses event `i`. */
  parse(i: number): MatrixEvent {
    const o = this.batch.events.offsets;
    return JSON.parse(this.buf.toString('utf8', o[i * OFFSET_STRIDE + OFF.rawStart], o[i * OFFSET_STRIDE + OFF.rawEnd])) as MatrixEvent;
  }
  /** The type of event `i`. */
  type(i: number): string {
    const ev = this.batch.events;
    return ev.strings[ev.type[i]!]!;
  }
  /** The relation type of event `i`, or null. */
  relType(i: number): string | null {
    const ev = this.batch.events;
    const k = ev.relType[i]!;
    return k < 0 ? null : ev.strings[k]!;
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
  /** Whether it was decrypted late: its room key arrived after the events around it were delivered. */
  get decryptedLate(): boolean {
    return (this.reader.batch.events.flags[this.i]! & EVENT_FLAGS.late) !== 0;
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

/** An `m.room.message` (text, notice, emote, or media). */
export class Message extends RoomEvent {
  /** `content.msgtype`, e.g. `m.text`, `m.image`. */
  get msgtype(): string {
    const t = this.content.msgtype;
    return typeof t === 'string' ? t : '';
  }
  /** `content.body` (the plain text, or a file name for media), or '' if missing. */
  get body(): string {
    const b = this.content.body;
    return typeof b === 'string' ? b : '';
  }
  /** The event ID this message replies to, if it is a reply. */
  get inReplyTo(): string | null {
    const rel = this.content['m.relates_to'] as { 'm.in_reply_to'?: { event_id?: unknown } } | undefined;
    const id = rel?.['m.in_reply_to']?.event_id;
    return typeof id === 'string' ? id : null;
  }
  /** Sends a rich reply to this message (with `m.in_reply_to` and a mention of the sender). */
  reply(content: ContentInput): Promise<string> {
    const c: Record<string, unknown> = typeof content === 'string' ? { msgtype: 'm.text', body: content } : { ...content };
    c['m.relates_to'] = { ...(c['m.relates_to'] as object | undefined), 'm.in_reply_to': { event_id: this.eventId } };
    c['m.mentions'] ??= { user_ids: [this.sender] };
    return this.actions.sendEvent(this.roomId, 'm.room.message', c);
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
  /** Replaces this message's text (an `m.replace` edit; only the sender's own messages can be edited). */
  edit(newText: string): Promise<string> {
    return this.actions.sendEvent(this.roomId, 'm.room.message', {
      msgtype: 'm.text',
      body: `* ${newText}`,
      'm.new_content': { msgtype: 'm.text', body: newText },
      'm.relates_to': { rel_type: 'm.replace', event_id: this.eventId },
    });
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
  /** The new membership: join, leave, invite, ban, knock. */
  get membership(): string {
    const m = this.content.membership;
    return typeof m === 'string' ? m : '';
  }
  /** The membership before this event, when the server says. */
  get previousMembership(): string | null {
    const prev = (this.raw.unsigned?.prev_content as { membership?: unknown } | undefined)?.membership;
    return typeof prev === 'string' ? prev : null;
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

/** An invitation to a room. */
export interface Invite extends InviteWire {
  /** Joins the room. */
  accept(): Promise<string>;
  /** Declines (leaves) the room. */
  decline(): Promise<void>;
}
