/**
 * Media: upload and download through authenticated media, and sending images, videos, audio and files (as
 * encrypted attachments in encrypted rooms).
 *
 * Nothing here holds a path's or a stream's file whole: uploads stream from the file, downloads stream from the
 * socket, and a stream of unknown length is spooled to a 0600 temp file first (homeservers require a
 * Content-Length; Synapse refuses an upload without one). CPU work (thumbnails, blurhash, AES-CTR and SHA-256)
 * runs on the media task pool (workers/media.ts over src/media-probe.ts), whose threads start on first use.
 */
import { randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, open, rm, stat } from 'node:fs/promises';
import { basename, extname, join } from 'node:path';
import { pipeline, type Readable, Transform } from 'node:stream';
import { type EncryptedFileInfo, parseAttachmentInfo } from './attachments.ts';
import { isServerName } from './discovery.ts';
import { HalcyonError } from './errors.ts';
import { type MatrixHttp, seg } from './http.ts';
import type { Logger } from './log.ts';
import { TaskPool } from './pool.ts';
import type { MediaProbe, MediaTask } from './protocol.ts';

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
  /**
   * Refuse (`HALCYON_MEDIA_TOO_LARGE`) past this many bytes. Default: the server's upload limit (`m.upload.size`),
   * or 100 MiB when it states none. `Infinity` lifts the limit.
   */
  maxBytes?: number;
}

/** Options of `Client.downloadThumbnail`. */
export interface ThumbnailOptions extends DownloadOptions {
  /** Desired width and height in px (positive integers); the server picks the nearest size it has or makes. */
  width: number;
  height: number;
  /** `crop` fills the box exactly; `scale` fits inside it, keeping the aspect ratio (the server's default). */
  method?: 'crop' | 'scale';
  /** Ask for an animated thumbnail of an animated image, where the server can make one. */
  animated?: boolean;
}

/** The download limit when the server states no upload limit (or its media config cannot be read): 100 MiB. */
export const FALLBACK_DOWNLOAD_MAX_BYTES = 100 * 1024 * 1024;

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
  /**
   * Whether media for the room goes as encrypted attachments (the room is encrypted and plain sending was not
   * allowed). Throws `HALCYON_ROOM_ENCRYPTED` when the room is encrypted but this client cannot encrypt, so the
   * refusal comes before the upload, not after it.
   */
  encryptAttachments(roomId: string, allowPlaintext: boolean): Promise<boolean>;
  /** The bot's data directory (for temporary files). */
  dataDir: string;
  logger: Logger;
}

/** The server name and media ID of a valid `mxc://` URI. */
export interface MxcParts {
  serverName: string;
  mediaId: string;
}

// A server name (checked with the spec's grammar: see isServerName), then a media ID of [A-Za-z0-9_-]+.
const MXC = /^mxc:\/\/([^/]+)\/([A-Za-z0-9_-]+)$/;

/**
 * Parses an `mxc://<server-name>/<media-id>` URI.
 *
 * Invariants: anything else (another scheme, an empty or extra segment, `..`, `%2F`, `?`, `#`, a backslash,
 * whitespace, a server name longer than 255 characters, a port over 65535) throws `HALCYON_MEDIA_URI_INVALID`;
 * the parts returned contain no character that needs escaping in a URL path except IPv6 brackets and colons.
 */
export function parseMxc(uri: unknown): MxcParts {
  const m = typeof uri === 'string' ? MXC.exec(uri) : null;
  if (!m || !isServerName(m[1]!)) {
    const shown = typeof uri === 'string' ? JSON.stringify(uri.slice(0, 100)) : typeof uri;
    throw new HalcyonError('HALCYON_MEDIA_URI_INVALID', `not a valid mxc://<server-name>/<media-id> URI: ${shown}`);
  }
  return { serverName: m[1]!, mediaId: m[2]! };
}

const EXTENSIONS: Record<string, string> = {
  png: 'image/png', jpg: 'image/jpeg', jpeg: 'image/jpeg', gif: 'image/gif', webp: 'image/webp', avif: 'image/avif',
  heic: 'image/heic', svg: 'image/svg+xml', bmp: 'image/bmp', tif: 'image/tiff', tiff: 'image/tiff',
  mp4: 'video/mp4', m4v: 'video/mp4', mov: 'video/quicktime', webm: 'video/webm', mkv: 'video/x-matroska',
  mp3: 'audio/mpeg', m4a: 'audio/mp4', aac: 'audio/aac', ogg: 'audio/ogg', oga: 'audio/ogg', opus: 'audio/ogg',
  wav: 'audio/wav', flac: 'audio/flac', pdf: 'application/pdf', zip: 'application/zip', txt: 'text/plain',
  json: 'application/json', html: 'text/html', csv: 'text/csv',
};

/**
 * The MIME type of a file from its first bytes (magic numbers of common image, audio, video and document
 * formats), else from its file name's extension, else `application/octet-stream`. `kind` resolves containers
 * that hold audio or video alike (MP4, Ogg) the way the caller sends them.
 */
export function sniffMimetype(head: Uint8Array, filename?: string, kind?: 'image' | 'video' | 'audio' | 'file'): string {
  const at = (i: number, s: string) => i + s.length <= head.length && String.fromCharCode(...head.subarray(i, i + s.length)) === s;
  const bytes = (...b: number[]) => b.every((x, i) => head[i] === x);
  if (bytes(0x89, 0x50, 0x4e, 0x47)) return 'image/png';
  if (bytes(0xff, 0xd8, 0xff)) return 'image/jpeg';
  if (at(0, 'GIF8')) return 'image/gif';
  if (at(0, 'RIFF') && at(8, 'WEBP')) return 'image/webp';
  if (at(0, 'RIFF') && at(8, 'WAVE')) return 'audio/wav';
  if (at(4, 'ftyp')) {
    if (at(8, 'qt  ')) return 'video/quicktime';
    if (at(8, 'M4A ') || at(8, 'M4B ')) return 'audio/mp4';
    if (at(8, 'avif')) return 'image/avif';
    if (at(8, 'heic') || at(8, 'heix') || at(8, 'mif1')) return 'image/heic';
    return kind === 'audio' ? 'audio/mp4' : 'video/mp4';
  }
  if (bytes(0x1a, 0x45, 0xdf, 0xa3)) return String.fromCharCode(...head).includes('webm') ? (kind === 'audio' ? 'audio/webm' : 'video/webm') : 'video/x-matroska';
  if (at(0, 'OggS')) return kind === 'video' ? 'video/ogg' : 'audio/ogg';
  if (at(0, 'fLaC')) return 'audio/flac';
  if (at(0, 'ID3') || (head[0] === 0xff && ((head[1] ?? 0) & 0xe6) === 0xe2)) return 'audio/mpeg';
  if (at(0, '%PDF-')) return 'application/pdf';
  return EXTENSIONS[extname(filename ?? '').slice(1).toLowerCase()] ?? 'application/octet-stream';
}

const UPLOAD_PATH = '/_matrix/media/v3/upload';
const HEAD_BYTES = 256;

type Kind = 'image' | 'video' | 'audio' | 'file';

/** A source made ready to upload: bytes, or a file of known size (the caller's, or a spooled temp file). */
interface Staged {
  size: number;
  data?: Uint8Array;
  path?: string;
  /** The path's base name, when the source was a path. */
  name?: string;
  head: Uint8Array;
  dispose(): Promise<void>;
}

/** Which authenticated-media endpoint a download reads, with its query. */
interface Endpoint {
  endpoint: 'download' | 'thumbnail';
  query?: Record<string, string | number | boolean | undefined>;
}

/** Where a media message's file went: `url` (plain) or `file` (encrypted attachment). */
type Stored = { url: string } | { file: EncryptedFileInfo & { url: string } };

/** Media operations of a running client. */
export class Media {
  private configured: Promise<MediaConfig> | null = null;
  private tmpDir: Promise<string> | null = null;
  private readonly pool = new TaskPool('media');

  constructor(private readonly deps: MediaDeps) {}

  /** The server's media configuration (cached after the first successful call). */
  async config(): Promise<MediaConfig> {
    this.configured ??= this.deps.http.json('GET', '/_matrix/client/v1/media/config').then(
      (body) => {
        const size = body['m.upload.size'];
        return { uploadSize: typeof size === 'number' && Number.isSafeInteger(size) && size >= 0 ? size : null };
      },
      (err: unknown) => {
        this.configured = null; // a failure is not remembered: the next call asks again
        throw err;
      },
    );
    return this.configured;
  }

  /**
   * Uploads bytes and resolves with their `mxc://` URI. A path or stream is streamed, never read whole; past the
   * server's upload limit it throws `HALCYON_MEDIA_TOO_LARGE` before sending (a stream: as soon as it passes it).
   */
  async upload(source: MediaSource, opts: UploadOptions = {}): Promise<string> {
    const staged = await this.stage(source, await this.uploadLimit());
    try {
      const filename = opts.filename ?? staged.name;
      return await this.put(staged, opts.contentType ?? sniffMimetype(staged.head, filename), filename);
    } finally {
      await staged.dispose();
    }
  }

  /** Downloads a (plain) mxc URI into memory; past `maxBytes` it throws `HALCYON_MEDIA_TOO_LARGE`. */
  async download(mxc: string, opts: DownloadOptions = {}): Promise<Buffer> {
    const data = await this.fetchBytes(mxc, opts.maxBytes);
    return Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  }

  /**
   * Downloads a (plain) mxc URI as a stream (consume or destroy it: it holds a connection). Past `maxBytes` it
   * throws `HALCYON_MEDIA_TOO_LARGE` (from the Content-Length) or the stream errors with it (counting).
   */
  async downloadStream(mxc: string, opts: DownloadOptions = {}): Promise<Readable> {
    const { body, maxBytes } = await this.fetch(mxc, opts.maxBytes);
    if (maxBytes === Infinity) return body;
    let got = 0;
    const counted = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        got += chunk.length;
        if (got > maxBytes) cb(tooLarge(`over ${got}`, maxBytes));
        else cb(null, chunk);
      },
    });
    // Errors either way end both streams (and free the connection).
    pipeline(body, counted, () => {});
    return counted;
  }

  /**
   * Downloads a server-made thumbnail of a (plain) mxc URI through authenticated media
   * (`GET /_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}`), into memory. The URI is checked as for
   * downloads (`HALCYON_MEDIA_URI_INVALID`) and the options (`HALCYON_INVALID_ARGUMENT`) before any request; the
   * size limit is that of downloads. Resolves with the image bytes (usually PNG or JPEG).
   */
  async downloadThumbnail(mxc: string, opts: ThumbnailOptions): Promise<Buffer> {
    parseMxc(mxc);
    const bad = (what: string) => new HalcyonError('HALCYON_INVALID_ARGUMENT', `downloadThumbnail: ${what}`);
    if (typeof opts !== 'object' || opts === null) throw bad('options { width, height } are required');
    const { width, height, method, animated } = opts;
    for (const [k, v] of [['width', width], ['height', height]] as const) {
      if (!Number.isSafeInteger(v) || v < 1) throw bad(`${k} must be a positive integer (px), not ${JSON.stringify(v) ?? String(v)}`);
    }
    if (method !== undefined && method !== 'crop' && method !== 'scale') throw bad(`method must be 'crop' or 'scale', not ${JSON.stringify(method)}`);
    if (animated !== undefined && typeof animated !== 'boolean') throw bad('animated must be a boolean');
    const data = await this.fetchBytes(mxc, opts.maxBytes, { endpoint: 'thumbnail', query: { width, height, method, animated } });
    return Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  }

  /**
   * Downloads the file of a media message's content: `url`, or `file` (an encrypted attachment: its info is
   * validated before any request, `HALCYON_ATTACHMENT_INVALID`; its SHA-256 is checked before anything is
   * decrypted, `HALCYON_ATTACHMENT_HASH_MISMATCH`; hashing and decryption run on the pool).
   */
  async downloadContent(content: Record<string, unknown>, opts: DownloadOptions = {}): Promise<Buffer> {
    if (typeof content !== 'object' || content === null) throw new HalcyonError('HALCYON_INVALID_ARGUMENT', 'downloadContent: content is not an object');
    const file = content.file;
    if (file !== undefined) {
      if (typeof file !== 'object' || file === null || Array.isArray(file)) {
        throw new HalcyonError('HALCYON_ATTACHMENT_INVALID', 'invalid encrypted attachment info: file is not an object');
      }
      parseAttachmentInfo(file).key.fill(0);
      const data = await this.fetchBytes((file as Record<string, unknown>).url, opts.maxBytes);
      const plain = await this.pool.run<Uint8Array>({ op: 'decrypt', data, info: file as Record<string, unknown> } satisfies MediaTask, [data.buffer as ArrayBuffer]);
      return Buffer.from(plain.buffer, plain.byteOffset, plain.byteLength);
    }
    if (content.url === undefined) throw new HalcyonError('HALCYON_INVALID_ARGUMENT', 'downloadContent: the content has neither `url` nor `file`');
    return this.download(content.url as string, opts);
  }

  /** Sends an `m.image` with its info, a thumbnail and a blurhash; resolves with the event ID. */
  async sendImage(roomId: string, source: MediaSource, opts: SendMediaOptions = {}): Promise<string> {
    return this.send('image', roomId, source, opts);
  }
  /** Sends an `m.video` (with its duration and size where the container says); resolves with the event ID. */
  async sendVideo(roomId: string, source: MediaSource, opts: SendMediaOptions = {}): Promise<string> {
    return this.send('video', roomId, source, opts);
  }
  /** Sends an `m.audio` (with its duration where the format says); resolves with the event ID. */
  async sendAudio(roomId: string, source: MediaSource, opts: SendMediaOptions = {}): Promise<string> {
    return this.send('audio', roomId, source, opts);
  }
  /** Sends an `m.file`; resolves with the event ID. */
  async sendFile(roomId: string, source: MediaSource, opts: SendMediaOptions = {}): Promise<string> {
    return this.send('file', roomId, source, opts);
  }

  /** Ends the worker pool; calls still using it reject with `HALCYON_STOPPED`. */
  async close(): Promise<void> {
    await this.pool.destroy();
  }

  private async send(kind: Kind, roomId: string, source: MediaSource, opts: SendMediaOptions): Promise<string> {
    const [limit, encrypted] = await Promise.all([this.uploadLimit(), this.deps.encryptAttachments(roomId, opts.allowPlaintext === true)]);
    const staged = await this.stage(source, limit);
    try {
      const mimetype = opts.contentType ?? sniffMimetype(staged.head, opts.filename ?? staged.name, kind);
      const filename = opts.filename ?? staged.name ?? `${kind}${extensionOf(mimetype)}`;
      const info: Record<string, unknown> = { mimetype, size: staged.size };
      if (kind !== 'file') {
        const probe = await this.probe(kind, staged);
        if (probe.w !== undefined && probe.h !== undefined) Object.assign(info, { w: probe.w, h: probe.h });
        if (probe.duration !== undefined) info.duration = probe.duration;
        if (probe.blurhash !== undefined) info['xyz.amorgan.blurhash'] = probe.blurhash;
        // A thumbnail no smaller than the image (a flat PNG's JPEG can be 3x its size) only costs clients more.
        const thumb = probe.thumbnail && probe.thumbnail.data.length < staged.size ? probe.thumbnail : undefined;
        if (thumb) {
          const stored = await this.store({ data: thumb.data, size: thumb.data.length }, 'image/jpeg', 'thumbnail.jpg', encrypted);
          if ('file' in stored) info.thumbnail_file = stored.file;
          else info.thumbnail_url = stored.url;
          info.thumbnail_info = { w: thumb.w, h: thumb.h, mimetype: 'image/jpeg', size: thumb.data.length };
        }
      }
      const stored = await this.store(staged, mimetype, filename, encrypted);
      const content = { msgtype: `m.${kind}`, body: opts.caption ?? filename, filename, info: { ...info, ...opts.info }, ...stored };
      return await this.deps.sendEvent(roomId, 'm.room.message', content, opts.allowPlaintext === undefined ? undefined : { allowPlaintext: opts.allowPlaintext });
    } finally {
      await staged.dispose();
    }
  }

  /** Info for the event; a probe that fails leaves it out (the file is still sent) unless the pool was closed. */
  private async probe(kind: 'image' | 'video' | 'audio', staged: Staged): Promise<MediaProbe> {
    try {
      if (staged.path) return await this.pool.run<MediaProbe>({ op: 'probe', kind, path: staged.path } satisfies MediaTask);
      const copy = new Uint8Array(staged.data!); // the pool takes the copy's buffer; the caller keeps its bytes
      return await this.pool.run<MediaProbe>({ op: 'probe', kind, data: copy } satisfies MediaTask, [copy.buffer]);
    } catch (err) {
      if ((err as HalcyonError).code === 'HALCYON_STOPPED') throw err;
      this.deps.logger.warn(err, `media: could not read the ${kind}'s info; sending it without`);
      return {};
    }
  }

  /** Uploads a file as is, or (in an encrypted room) encrypted on the pool, file to temp file when it is one. */
  private async store(body: { data?: Uint8Array; path?: string; size: number }, mimetype: string, filename: string, encrypted: boolean): Promise<Stored> {
    if (!encrypted) return { url: await this.put(body, mimetype, filename) };
    // Encrypted uploads carry no file name or type: the server must learn nothing the event does not tell it.
    if (body.data) {
      const copy = new Uint8Array(body.data);
      const { data, info } = await this.pool.run<{ data: Uint8Array; info: EncryptedFileInfo }>({ op: 'encrypt', data: copy } satisfies MediaTask, [copy.buffer]);
      return { file: { ...info, url: await this.put({ data, size: data.length }, 'application/octet-stream') } };
    }
    const dst = await this.tempPath();
    try {
      const { info, size } = await this.pool.run<{ info: EncryptedFileInfo; size: number }>({ op: 'encryptFile', src: body.path!, dst } satisfies MediaTask);
      return { file: { ...info, url: await this.put({ path: dst, size }, 'application/octet-stream') } };
    } finally {
      await rm(dst, { force: true });
    }
  }

  /** POST /upload; the file is streamed from disk. A server-side 413 becomes `HALCYON_MEDIA_TOO_LARGE` too. */
  private async put(body: { data?: Uint8Array; path?: string; size: number }, contentType: string, filename?: string): Promise<string> {
    const path = body.path;
    let res: { content_uri?: unknown };
    try {
      res = await this.deps.http.upload(UPLOAD_PATH, body.data ?? (() => createReadStream(path!, { highWaterMark: 1 << 20 })), {
        contentType,
        contentLength: body.size,
        query: { filename },
      });
    } catch (err) {
      const e = err as HalcyonError;
      if (e.errcode === 'M_TOO_LARGE') throw new HalcyonError('HALCYON_MEDIA_TOO_LARGE', `the server refused ${body.size} bytes as too large`, { status: e.status, errcode: e.errcode, cause: e });
      throw err;
    }
    try {
      parseMxc(res.content_uri);
    } catch (err) {
      throw new HalcyonError('HALCYON_BAD_RESPONSE', `POST ${UPLOAD_PATH}: content_uri is not an mxc URI`, { cause: err });
    }
    return res.content_uri as string;
  }

  /**
   * Opens a download: checks the URI (before any request), settles the limit (the caller's, else the server's
   * upload limit, else the fallback), and refuses a Content-Length over it before reading.
   */
  private async fetch(mxc: unknown, max: number | undefined, what: Endpoint = { endpoint: 'download' }): Promise<{ body: Readable; length: number | undefined; maxBytes: number }> {
    const { serverName, mediaId } = parseMxc(mxc);
    if (max !== undefined && !(max >= 0)) throw new HalcyonError('HALCYON_INVALID_ARGUMENT', 'maxBytes must be a number >= 0');
    const maxBytes = max ?? (await this.uploadLimit()) ?? FALLBACK_DOWNLOAD_MAX_BYTES;
    const path = `/_matrix/client/v1/media/${what.endpoint}/${seg(serverName)}/${seg(mediaId)}`;
    const res = await this.deps.http.stream('GET', path, what.query ? { query: what.query } : {});
    const cl = res.headers['content-length'];
    const length = typeof cl === 'string' && /^[0-9]+$/.test(cl) ? Number(cl) : undefined;
    if (length !== undefined && length > maxBytes) {
      res.body.destroy();
      throw tooLarge(length, maxBytes);
    }
    return { body: res.body, length, maxBytes };
  }

  /** The whole file, in a fresh Uint8Array owning its ArrayBuffer (so it can be transferred to the pool). */
  private async fetchBytes(mxc: unknown, max: number | undefined, what?: Endpoint): Promise<Uint8Array> {
    const { body, length, maxBytes } = await this.fetch(mxc, max, what);
    try {
      // With a Content-Length the bytes go straight into their final buffer; without, chunks are joined at the end.
      let out: Uint8Array | undefined;
      try {
        out = length === undefined ? undefined : new Uint8Array(length);
      } catch (err) {
        throw new HalcyonError('HALCYON_MEDIA_TOO_LARGE', `the media is ${length} bytes, more than fits in memory (use downloadMediaStream)`, { cause: err });
      }
      const chunks: Buffer[] = [];
      let got = 0;
      for await (const chunk of body as AsyncIterable<Buffer>) {
        if (got + chunk.length > maxBytes) throw tooLarge(`over ${got + chunk.length}`, maxBytes);
        if (out && got + chunk.length > out.length) throw new HalcyonError('HALCYON_BAD_RESPONSE', 'the media is longer than its Content-Length');
        if (out) out.set(chunk, got);
        else chunks.push(chunk);
        got += chunk.length;
      }
      if (out) return got === out.length ? out : out.slice(0, got);
      const joined = new Uint8Array(got);
      let at = 0;
      for (const c of chunks) {
        joined.set(c, at);
        at += c.length;
      }
      return joined;
    } finally {
      body.destroy(); // a no-op after the end; on any failure it frees the connection at once
    }
  }

  /** The upload limit, or null if the server does not say (or cannot be asked: the upload then finds out). */
  private async uploadLimit(): Promise<number | null> {
    try {
      return (await this.config()).uploadSize;
    } catch (err) {
      this.deps.logger.debug(err, 'media: no upload limit known');
      return null;
    }
  }

  /** Checks the size limit, and spools a stream to a temp file (counting, refusing past the limit as it goes). */
  private async stage(source: MediaSource, limit: number | null): Promise<Staged> {
    const check = (size: number) => {
      if (limit !== null && size > limit) throw new HalcyonError('HALCYON_MEDIA_TOO_LARGE', `the file is ${size} bytes, over the server's upload limit of ${limit}`);
    };
    const none = async () => {};
    if (typeof source === 'string') {
      const st = await stat(source).catch((e: NodeJS.ErrnoException) => {
        throw new HalcyonError('HALCYON_INVALID_ARGUMENT', `cannot read the file to upload ${JSON.stringify(source)} (${e.code ?? e.message})`, { cause: e });
      });
      if (!st.isFile()) throw new HalcyonError('HALCYON_INVALID_ARGUMENT', `the path to upload ${JSON.stringify(source)} is not a regular file`);
      check(st.size);
      return { size: st.size, path: source, name: basename(source), head: await readHead(source), dispose: none };
    }
    if (source instanceof Uint8Array) {
      check(source.length);
      return { size: source.length, data: source, head: source.subarray(0, HEAD_BYTES), dispose: none };
    }
    if (typeof (source as Partial<AsyncIterable<unknown>>)?.[Symbol.asyncIterator] !== 'function') {
      throw new HalcyonError('HALCYON_INVALID_ARGUMENT', 'a media source is a file path, a Uint8Array or a Readable');
    }
    const path = await this.tempPath();
    const dispose = () => rm(path, { force: true });
    try {
      const size = await spool(source, path, limit);
      return { size, path, head: await readHead(path), dispose };
    } catch (err) {
      await dispose();
      throw err;
    }
  }

  /** A fresh path in `<dataDir>/media-tmp` (0700; emptied on first use: leftovers of a crash). */
  private async tempPath(): Promise<string> {
    this.tmpDir ??= (async () => {
      const dir = join(this.deps.dataDir, 'media-tmp');
      await rm(dir, { recursive: true, force: true });
      await mkdir(dir, { recursive: true, mode: 0o700 });
      return dir;
    })().catch((err: unknown) => {
      this.tmpDir = null;
      throw new HalcyonError('HALCYON_STORE', `cannot create the media temp directory: ${(err as Error).message}`, { cause: err });
    });
    return join(await this.tmpDir, randomBytes(12).toString('hex'));
  }
}

function tooLarge(size: number | string, maxBytes: number): HalcyonError {
  return new HalcyonError('HALCYON_MEDIA_TOO_LARGE', `the media is ${size} bytes, more than the download limit of ${maxBytes} (maxBytes, else the server's upload limit)`);
}

/** Writes a stream to a new 0600 file, counting; past `limit` it stops reading and throws `HALCYON_MEDIA_TOO_LARGE`. */
async function spool(source: AsyncIterable<unknown>, path: string, limit: number | null): Promise<number> {
  const fh = await open(path, 'wx', 0o600);
  let size = 0;
  try {
    for await (const chunk of source) {
      const b = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
      if (!(b instanceof Uint8Array)) throw new HalcyonError('HALCYON_INVALID_ARGUMENT', 'the media stream yields neither bytes nor strings');
      size += b.length;
      if (limit !== null && size > limit) {
        throw new HalcyonError('HALCYON_MEDIA_TOO_LARGE', `the stream passed the server's upload limit of ${limit} bytes; nothing was uploaded`);
      }
      for (let off = 0; off < b.length; ) off += (await fh.write(b, off)).bytesWritten;
    }
  } finally {
    await fh.close();
  }
  return size;
}

async function readHead(path: string): Promise<Uint8Array> {
  const fh = await open(path, 'r').catch((e: NodeJS.ErrnoException) => {
    throw new HalcyonError('HALCYON_INVALID_ARGUMENT', `cannot read the file to upload ${JSON.stringify(path)} (${e.code ?? e.message})`, { cause: e });
  });
  try {
    const buf = Buffer.alloc(HEAD_BYTES);
    const { bytesRead } = await fh.read(buf, 0, HEAD_BYTES, 0);
    return buf.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
}

function extensionOf(mimetype: string): string {
  const ext = Object.keys(EXTENSIONS).find((e) => EXTENSIONS[e] === mimetype);
  return ext ? `.${ext}` : '';
}
