/** Halcyon: a Matrix bot library with polling, parsing and room state on worker threads. */
// First: on a Node.js too old for Halcyon, importing the package fails here with a coded line.
import './runtime-check.ts';
export { Client } from './client.ts';
export type { AutoJoinPolicy, BackpressureInfo, ImportTokenOptions, Knock, Listener, ClientEvents, ClientOptions, CreateRoomOptions, Health, DecryptionErrorInfo, EncryptionOptions, LoginOptions, SendOptions, SyncErrorInfo, VerificationOptions, WhoAmI } from './client.ts';
export { Edit, MemberEvent, Message, Reaction, Redaction, Room, RoomEvent, User } from './events.ts';
export type { AccountDataEvent, ContentInput, Invite, Mentions, MessageOptions, Presence, Profile, Receipt, RoomActions } from './events.ts';
export type { ReplyOptions } from './events.ts';
export type { EncryptionInfo, Verification } from './events.ts';
export type { AudioContent, AudioInfo, EmoteContent, EncryptedFile, FileContent, FileInfo, ImageContent, ImageInfo, LocationContent, Membership, MessageContent, MessageContentBase, NoticeContent, TextContent, ThumbnailInfo, VideoContent, VideoInfo } from './content.ts';
export { RoomDetails } from './rooms.ts';
export type { RoomMember } from './rooms.ts';
export type { Action } from './power.ts';
export { ERROR_CODES, HalcyonError } from './errors.ts';
export type { ErrorCode, ErrorDetails } from './errors.ts';
export type { Logger } from './log.ts';
export type { MetricsOptions } from './metrics.ts';
export type { OutboxOp, OutboxStatus, RateLimit, SendFailure, WaitReason } from './outbox.ts';
export { consoleLogger } from './log.ts';
export { DEFAULT_RATE_LIMIT } from './outbox.ts';
export type { AccountDataWire, CryptoIdentity, CryptoStatus, MatrixEvent, ReceiptWire, RoomInfo, RoomSummary } from './protocol.ts';
export type { TrustLevel, TrustPolicy } from './protocol.ts';
export { decryptAttachment, encryptAttachment } from './attachments.ts';
export type { EncryptedFileInfo } from './attachments.ts';
export type { DownloadOptions, MediaConfig, MediaSource, SendMediaOptions, ThumbnailOptions, UploadOptions } from './media.ts';
export { decodeToken, encodeToken } from './token.ts';
export type { Session } from './token.ts';
export { htmlToText, sanitizeHtml } from './html.ts';
