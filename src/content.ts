/**
 * What `m.room.message` content and membership look like (Client-Server API, "m.room.message msgtypes",
 * "m.room.member"), as types, and the identifier checks that read them: user IDs (Appendices, "User Identifiers",
 * "Server Name") and the links that point at users (matrix.to, Matrix URIs).
 */
import type { EncryptedFileInfo } from './attachments.ts';
import type { RoomSummary } from './protocol.ts';

/** A membership state (`m.room.member` `membership`): the spec's five. */
export type Membership = RoomSummary['membership'];

const MEMBERSHIPS: ReadonlySet<string> = new Set<Membership>(['join', 'leave', 'invite', 'ban', 'knock']);
/** Whether `m` is one of the five membership states. */
export const isMembership = (m: unknown): m is Membership => typeof m === 'string' && MEMBERSHIPS.has(m);

/** An encrypted attachment as it sits in a message's `file` (or `info.thumbnail_file`): its key material and URL. */
export type EncryptedFile = EncryptedFileInfo & { url: string };

/** Fields every `m.room.message` content may carry (spec: "m.room.message"), and any other key, unchecked. */
export interface MessageContentBase {
  msgtype: string;
  /** The plain text; a file name or caption for media. */
  body: string;
  /** `org.matrix.custom.html` when `formatted_body` holds HTML. */
  format?: string;
  formatted_body?: string;
  'm.relates_to'?: { rel_type?: string; event_id?: string; is_falling_back?: boolean; key?: string; 'm.in_reply_to'?: { event_id?: string } };
  'm.mentions'?: { user_ids?: string[]; room?: boolean };
  [key: string]: unknown;
}

/** `info` of a file (`m.file`), and the base of the other media infos. */
export interface FileInfo {
  mimetype?: string;
  /** Size in bytes. */
  size?: number;
  thumbnail_url?: string;
  thumbnail_file?: EncryptedFile;
  thumbnail_info?: ThumbnailInfo;
  [key: string]: unknown;
}
/** `info.thumbnail_info` of a media message. */
export interface ThumbnailInfo {
  w?: number;
  h?: number;
  mimetype?: string;
  size?: number;
}
/** `info` of an `m.image`: pixel size besides the file's. */
export interface ImageInfo extends FileInfo {
  w?: number;
  h?: number;
}
/** `info` of an `m.audio`: duration in milliseconds. */
export interface AudioInfo extends FileInfo {
  duration?: number;
}
/** `info` of an `m.video`: pixel size and duration in milliseconds. */
export interface VideoInfo extends ImageInfo {
  duration?: number;
}

/** Fields of a media message: the file is `url` (plain) or `file` (encrypted attachment). */
interface MediaContentBase extends MessageContentBase {
  url?: string;
  file?: EncryptedFile;
  /** The file's name; when it differs from `body`, `body` is a caption (spec v1.10). */
  filename?: string;
}
/** `m.text` content. */
export interface TextContent extends MessageContentBase {
  msgtype: 'm.text';
}
/** `m.notice` content: what bots send; never to be answered automatically. */
export interface NoticeContent extends MessageContentBase {
  msgtype: 'm.notice';
}
/** `m.emote` content (`/me`). */
export interface EmoteContent extends MessageContentBase {
  msgtype: 'm.emote';
}
/** `m.image` content. */
export interface ImageContent extends MediaContentBase {
  msgtype: 'm.image';
  info?: ImageInfo;
}
/** `m.file` content. */
export interface FileContent extends MediaContentBase {
  msgtype: 'm.file';
  info?: FileInfo;
}
/** `m.audio` content. */
export interface AudioContent extends MediaContentBase {
  msgtype: 'm.audio';
  info?: AudioInfo;
}
/** `m.video` content. */
export interface VideoContent extends MediaContentBase {
  msgtype: 'm.video';
  info?: VideoInfo;
}
/** `m.location` content. */
export interface LocationContent extends MessageContentBase {
  msgtype: 'm.location';
  /** A `geo:` URI. */
  geo_uri: string;
  info?: { thumbnail_url?: string; thumbnail_file?: EncryptedFile; thumbnail_info?: ThumbnailInfo; [key: string]: unknown };
}

/**
 * The content of an `m.room.message`, typed per `msgtype` as the spec describes it: switch on `msgtype` to get
 * the fields of each kind. This is what senders are supposed to send, not what Halcyon checked: another user's
 * content can carry a `msgtype` not listed here or fields of the wrong type, so check before trusting a value
 * (the getters `body`, `formattedBody`, `msgtype`, `mentionedUserIds` of {@link Message} do).
 */
export type MessageContent = TextContent | NoticeContent | EmoteContent | ImageContent | FileContent | AudioContent | VideoContent | LocationContent;

/**
 * Whether `id` is a user ID: `@localpart:server_name`, at most 255 bytes, the localpart of printable ASCII
 * without `:` (the spec's historical set, which servers still hand to clients), the server name a DNS name,
 * IPv4 or `[IPv6]` address with an optional port. Anchored and unambiguous: linear on any input.
 */
export function isUserId(id: string): boolean {
  return id.length <= 255 && /^@[\x21-\x39\x3b-\x7e]+:(?:\[[0-9A-Fa-f:.]{2,45}\]|[0-9A-Za-z.-]{1,255})(?::\d{1,5})?$/.test(id);
}

/**
 * The user ID a link points at, or null: `https://matrix.to/#/@user:server` (what mention pills link) and
 * `matrix:u/user:server` (a Matrix URI, with or without `//authority/`; the retired `user` type too),
 * percent-decoded, query and fragment ignored, and only if it is a valid user ID.
 */
export function userIdOfLink(href: string): string | null {
  let id: string;
  try {
    const url = new URL(href.trim());
    if ((url.protocol === 'https:' || url.protocol === 'http:') && url.hostname === 'matrix.to') {
      if (!url.hash.startsWith('#/')) return null;
      const end = url.hash.indexOf('?');
      id = decodeURIComponent(url.hash.slice(2, end < 0 ? undefined : end));
    } else if (url.protocol === 'matrix:') {
      const [type, sigilless] = url.pathname.replace(/^\//, '').split('/');
      if ((type !== 'u' && type !== 'user') || !sigilless) return null;
      id = `@${decodeURIComponent(sigilless)}`;
    } else return null;
  } catch {
    return null; // not a URL, or malformed percent-encoding
  }
  return isUserId(id) ? id : null;
}

