/**
 * Media: upload and download through authenticated media, and sending images, videos, audio and files.
 * (Interface fixed; implementation in progress.)
 */
import type { Readable } from 'node:stream';
import { HalcyonError } from './errors.ts';
import type { MatrixHttp } from './http.ts';
import type { Logger } from './log.ts';

/** Where media bytes come from: a file path, bytes, or a readable stream. */
export type MediaSource = string | Uint8Array | Readable;

/** Options of an upload. */
export interface UploadOptions {
  /** File name sent to the server (default: the path's base name, or none). */
  filename?: string;
  /** MIME type (default: sniffed from the bytes, else from the file name, else application/octet-stream). */
  contentType?: string;
}

/** Options of sending a media message. */
export interface SendMediaOptions extends UploadOptions {
  /** Caption sent as the body (the file name is kept in `filename`). */
  caption?: string;
  /** Extra `info` fields, merged over what Halcyon reads from the file. */
  info?: Record<string, unknown>;
  /** Send in the clear even into an encrypted room. */
  allowPlaintext?: boolean;
}

/** Options of a download. */
export interface DownloadOptions {
  /** Refuse (HALCYON_MEDIA_TOO_LARGE) past this many bytes. */
  maxBytes?: number;
}

/** The homeserver's media configuration. */
export interface MediaConfig {
  /** Largest upload the server accepts, in bytes, or null if it does not say. */
  uploadSize: number | null;
}

/** What {@link Media} needs from the client. */
export interface MediaDeps {
  http: MatrixHttp;
  /** Sends an event (encrypting it in an encrypted room unless `allowPlaintext`); resolves with its event ID. */
  sendEvent(roomId: string, type: string, content: Record<string, unknown>, opts?: { allowPlaintext?: boolean }): Promise<string>;
  /** Whether the room is encrypted (its media then goes as encrypted attachments). */
  isRoomEncrypted(roomId: string): Promise<boolean>;
  /** The bot's data directory (for temporary files). */
  dataDir: string;
  logger: Logger;
}

/** Media operations of a running client. */
export class Media {
  constructor(private readonly deps: MediaDeps) {}

  /** The server's media configuration (cached after the first call). */
  async config(): Promise<MediaConfig> {
    throw todo();
  }
  /** Uploads bytes and resolves with their `mxc://` URI. */
  async upload(_source: MediaSource, _opts: UploadOptions = {}): Promise<string> {
    throw todo();
  }
  /** Downloads a (plain) mxc URI into memory. */
  async download(_mxc: string, _opts: DownloadOptions = {}): Promise<Buffer> {
    throw todo();
  }
  /** Downloads a (plain) mxc URI as a stream. */
  async downloadStream(_mxc: string): Promise<Readable> {
    throw todo();
  }
  /** Downloads the file of a media message's content (`url`, or `file`: decrypted and hash-checked). */
  async downloadContent(_content: Record<string, unknown>, _opts: DownloadOptions = {}): Promise<Buffer> {
    throw todo();
  }
  /** Sends an `m.image` with its info, a thumbnail and a blurhash; resolves with the event ID. */
  async sendImage(_roomId: string, _source: MediaSource, _opts: SendMediaOptions = {}): Promise<string> {
    throw todo();
  }
  /** Sends an `m.video`; resolves with the event ID. */
  async sendVideo(_roomId: string, _source: MediaSource, _opts: SendMediaOptions = {}): Promise<string> {
    throw todo();
  }
  /** Sends an `m.audio`; resolves with the event ID. */
  async sendAudio(_roomId: string, _source: MediaSource, _opts: SendMediaOptions = {}): Promise<string> {
    throw todo();
  }
  /** Sends an `m.file`; resolves with the event ID. */
  async sendFile(_roomId: string, _source: MediaSource, _opts: SendMediaOptions = {}): Promise<string> {
    throw todo();
  }
  /** Ends the worker pool. */
  async close(): Promise<void> {}
}

function todo(): HalcyonError {
  return new HalcyonError('HALCYON_INTERNAL', 'media: not implemented yet');
}
