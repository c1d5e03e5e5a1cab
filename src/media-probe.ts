/**
 * The CPU work of sending media, run on the media pool's worker threads (workers/media.ts): encrypting a file
 * chunk by chunk, and probing a file for the `info` of its event (image size, thumbnail and blurhash; audio/video
 * duration and size).
 *
 * What probing reads: images: width and height of anything image-size knows (PNG, JPEG, GIF, WebP, BMP, HEIF/AVIF,
 * TIFF, SVG, ...), EXIF orientation applied; PNG and JPEG are also decoded (up to {@link MAX_DECODE_PIXELS}) for
 * a JPEG thumbnail (longest side {@link THUMBNAIL_MAX} px, only for larger images; transparency over white) and a
 * 4x3 blurhash. Audio and video: MP4/MOV/M4A (`mvhd` duration; the first visual track's `tkhd` size, rotation
 * applied), WAV (`fmt ` byte rate and `data` size), FLAC (STREAMINFO), Ogg Vorbis and Opus (last granule
 * position), MP3 (Xing/Info or VBRI frame count, else constant bit rate). Not read: WebM/Matroska, AAC in ADTS,
 * anything else (the event then carries no duration). A file that cannot be parsed yields no fields, not an error.
 */
import { closeSync, fstatSync, openSync, readSync, writeSync } from 'node:fs';
import { encode as encodeBlurhash } from 'blurhash';
import { imageSize } from 'image-size';
import jpeg from 'jpeg-js';
import { PNG } from 'pngjs';
import { AttachmentCipher } from './attachments.ts';
import type { MediaProbe } from './protocol.ts';

/** Longest side of a thumbnail, in px; only images larger than this get one. */
export const THUMBNAIL_MAX = 800;
/** Images with more pixels than this are not decoded (dimensions only): the RGBA buffer alone would be 200 MB. */
const MAX_DECODE_PIXELS = 50_000_000;
/** Files larger than this are not read whole for decoding. */
const MAX_DECODE_BYTES = 64 * 1024 * 1024;
const CHUNK = 1 << 20;


/**
 * Encrypts the file at `src` into a new file `dst` (created 0600; it must not exist) chunk by chunk, so neither is
 * ever in memory whole. Returns the attachment info (minus `url`) and the ciphertext's size.
 */
export function encryptFile(src: string, dst: string): { info: ReturnType<AttachmentCipher['finish']>; size: number } {
  const cipher = new AttachmentCipher();
  const input = openSync(src, 'r');
  let output: number | undefined;
  try {
    output = openSync(dst, 'wx', 0o600);
    const buf = Buffer.allocUnsafe(CHUNK);
    let size = 0;
    for (let n; (n = readSync(input, buf, 0, CHUNK, null)) > 0; size += n) {
      const enc = cipher.update(buf.subarray(0, n));
      for (let off = 0; off < enc.length; ) off += writeSync(output, enc, off);
    }
    return { info: cipher.finish(), size };
  } finally {
    cipher.dispose();
    closeSync(input);
    if (output !== undefined) closeSync(output);
  }
}

// ---- images ----

/** Probes an image given as a file path or bytes. */
export function probeImageSource(task: { path?: string; data?: Uint8Array }): MediaProbe {
  if (task.data) return probeImage(task.data);
  const src = fileSource(task.path!);
  try {
    // Decoding needs the whole file; dimensions only need the start (image-size reads headers).
    return probeImage(src.read(0, src.size <= MAX_DECODE_BYTES ? src.size : 512 * 1024));
  } finally {
    src.close();
  }
}

/**
 * Reads an image's displayed size and, for PNG and JPEG, makes its blurhash and (when larger than
 * {@link THUMBNAIL_MAX}) a JPEG thumbnail. Unknown or corrupt input yields `{}`, or the size alone.
 *
 * Invariants: `w`/`h` are the displayed dimensions (swapped for EXIF orientations 5-8); the thumbnail keeps the
 * aspect ratio (each side rounded, at least 1 px), its longest side is exactly {@link THUMBNAIL_MAX}, and its
 * `data` owns its whole ArrayBuffer (transferable).
 */
export function probeImage(data: Uint8Array): MediaProbe {
  let size: ReturnType<typeof imageSize>;
  try {
    size = imageSize(data);
  } catch {
    return {};
  }
  const orientation = size.orientation ?? 1;
  const turned = orientation >= 5 && orientation <= 8;
  const out: MediaProbe = { w: turned ? size.height : size.width, h: turned ? size.width : size.height };
  if ((size.type !== 'png' && size.type !== 'jpg') || size.width * size.height > MAX_DECODE_PIXELS) return out;
  let rgba: Uint8Array;
  try {
    rgba = size.type === 'png' ? PNG.sync.read(Buffer.from(data.buffer, data.byteOffset, data.byteLength)).data : jpeg.decode(data, { useTArray: true, formatAsRGBA: true, maxResolutionInMP: MAX_DECODE_PIXELS / 1e6, maxMemoryUsageInMB: 1024 }).data;
  } catch {
    return out;
  }
  if (rgba.length !== size.width * size.height * 4) return out;
  flatten(rgba);
  const W = out.w!;
  const H = out.h!;
  // Resize in the stored orientation, then turn the small result.
  const scaled = (max: number) => {
    const s = Math.min(1, max / Math.max(W, H));
    const [tw, th] = [Math.max(1, Math.round(W * s)), Math.max(1, Math.round(H * s))];
    return turned ? ([th, tw] as const) : ([tw, th] as const);
  };
  let base = { px: rgba, w: size.width, h: size.height };
  if (Math.max(W, H) > THUMBNAIL_MAX) {
    const [sw, sh] = scaled(THUMBNAIL_MAX);
    base = { px: resize(rgba, size.width, size.height, sw, sh), w: sw, h: sh };
    const thumb = orient(base.px, sw, sh, orientation);
    const jpg = jpeg.encode({ data: thumb.px, width: thumb.w, height: thumb.h }, 80).data;
    out.thumbnail = { data: new Uint8Array(jpg), w: thumb.w, h: thumb.h };
  }
  const [bw, bh] = scaled(32);
  const small = orient(resize(base.px, base.w, base.h, bw, bh), bw, bh, orientation);
  out.blurhash = encodeBlurhash(new Uint8ClampedArray(small.px.buffer, small.px.byteOffset, small.px.length), small.w, small.h, 4, 3);
  return out;
}

/** Composites RGBA pixels over white in place and makes them opaque (the thumbnail is a JPEG). */
function flatten(px: Uint8Array): void {
  for (let i = 0; i < px.length; i += 4) {
    const a = px[i + 3]!;
    if (a === 255) continue;
    for (let c = 0; c < 3; c++) px[i + c] = Math.round((px[i + c]! * a + 255 * (255 - a)) / 255);
    px[i + 3] = 255;
  }
}

/** Box-filter downscale of RGBA pixels: each output pixel averages the source rectangle it covers. */
function resize(src: Uint8Array, sw: number, sh: number, dw: number, dh: number): Uint8Array {
  const out = new Uint8Array(dw * dh * 4);
  for (let dy = 0; dy < dh; dy++) {
    const y0 = Math.floor((dy * sh) / dh);
    const y1 = Math.max(y0 + 1, Math.floor(((dy + 1) * sh) / dh));
    for (let dx = 0; dx < dw; dx++) {
      const x0 = Math.floor((dx * sw) / dw);
      const x1 = Math.max(x0 + 1, Math.floor(((dx + 1) * sw) / dw));
      let r = 0;
      let g = 0;
      let b = 0;
      for (let y = y0; y < y1; y++) {
        for (let i = (y * sw + x0) * 4, end = (y * sw + x1) * 4; i < end; i += 4) {
          r += src[i]!;
          g += src[i + 1]!;
          b += src[i + 2]!;
        }
      }
      const n = (y1 - y0) * (x1 - x0);
      const o = (dy * dw + dx) * 4;
      out[o] = Math.round(r / n);
      out[o + 1] = Math.round(g / n);
      out[o + 2] = Math.round(b / n);
      out[o + 3] = 255;
    }
  }
  return out;
}

/** Applies an EXIF orientation (1-8) to stored pixels, giving the displayed image. */
function orient(px: Uint8Array, w: number, h: number, orientation: number): { px: Uint8Array; w: number; h: number } {
  if (orientation < 2 || orientation > 8) return { px, w, h };
  const turned = orientation >= 5;
  const [W, H] = turned ? [h, w] : [w, h];
  const out = new Uint8Array(px.length);
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      // The stored pixel shown at (x, y).
      let sx = x;
      let sy = y;
      switch (orientation) {
        case 2: sx = w - 1 - x; break;
        case 3: sx = w - 1 - x; sy = h - 1 - y; break;
        case 4: sy = h - 1 - y; break;
        case 5: sx = y; sy = x; break;
        case 6: sx = y; sy = h - 1 - x; break;
        case 7: sx = w - 1 - y; sy = h - 1 - x; break;
        case 8: sx = w - 1 - y; sy = x; break;
      }
      const i = (sy * w + sx) * 4;
      const o = (y * W + x) * 4;
      out[o] = px[i]!;
      out[o + 1] = px[i + 1]!;
      out[o + 2] = px[i + 2]!;
      out[o + 3] = px[i + 3]!;
    }
  }
  return { px: out, w: W, h: H };
}

// ---- audio and video ----

/** Random access to a file's bytes (a file in the worker, or bytes handed over). */
export interface ByteSource {
  readonly size: number;
  /** Up to `len` bytes at `pos` (fewer at the end). */
  read(pos: number, len: number): Uint8Array;
  close(): void;
}

/** A {@link ByteSource} over a file, read with positioned reads (never loaded whole). */
/** A file as a {@link ByteSource} (read in pieces, never whole). */
export function fileSource(path: string): ByteSource {
  const fd = openSync(path, 'r');
  const size = fstatSync(fd).size;
  return {
    size,
    read(pos, len) {
      const n = Math.max(0, Math.min(len, size - pos));
      const buf = Buffer.allocUnsafe(n);
      let got = 0;
      while (got < n) {
        const r = readSync(fd, buf, got, n - got, pos + got);
        if (r === 0) break;
        got += r;
      }
      return buf.subarray(0, got);
    },
    close: () => closeSync(fd),
  };
}

/** A {@link ByteSource} over bytes in memory. */
export function bytesSource(data: Uint8Array): ByteSource {
  return { size: data.length, read: (pos, len) => data.subarray(pos, pos + len), close() {} };
}

/**
 * Reads the duration (ms) and, for video, the displayed size of an audio or video file from its container
 * headers (formats: see the module comment). Closes `src`. Unknown or corrupt input yields `{}`.
 */
export function probeAudioVideo(src: ByteSource): MediaProbe {
  try {
    const head = src.read(0, 64);
    const tag = (at: number, s: string) => ascii(head, at, s.length) === s;
    if (tag(4, 'ftyp') || tag(4, 'moov') || tag(4, 'mdat') || tag(4, 'free') || tag(4, 'wide')) return mp4(src);
    if (tag(0, 'RIFF') && tag(8, 'WAVE')) return wav(src);
    if (tag(0, 'fLaC')) return flac(head);
    if (tag(0, 'OggS')) return ogg(src);
    return mp3(src);
  } catch {
    return {};
  } finally {
    src.close();
  }
}

function ascii(b: Uint8Array, at: number, n: number): string {
  return at + n <= b.length ? String.fromCharCode(...b.subarray(at, at + n)) : '';
}

function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

function ms(units: number, perSecond: number): number | undefined {
  const v = Math.round((units * 1000) / perSecond);
  return Number.isFinite(v) && v > 0 ? v : undefined;
}

/** Drops undefined fields (so a result never carries `duration: undefined`). */
function defined(p: MediaProbe): MediaProbe {
  return Object.fromEntries(Object.entries(p).filter(([, v]) => v !== undefined)) as MediaProbe;
}

/** ISO BMFF: walks top-level boxes (skipping `mdat` without reading it) to `moov`, then reads `mvhd` and `tkhd`. */
function mp4(src: ByteSource): MediaProbe {
  for (let pos = 0; pos + 8 <= src.size; ) {
    const h = view(src.read(pos, 16));
    let size = h.getUint32(0);
    let header = 8;
    if (size === 1 && h.byteLength >= 16) {
      size = Number(h.getBigUint64(8));
      header = 16;
    } else if (size === 0) size = src.size - pos;
    if (size < header) return {};
    if (ascii(new Uint8Array(h.buffer, h.byteOffset, 8), 4, 4) === 'moov') {
      return size > MAX_DECODE_BYTES ? {} : moov(src.read(pos + header, size - header));
    }
    pos += size;
  }
  return {};
}

function boxes(b: Uint8Array, visit: (type: string, body: Uint8Array) => void): void {
  const v = view(b);
  for (let pos = 0; pos + 8 <= b.length; ) {
    const size = v.getUint32(pos);
    if (size < 8 || pos + size > b.length) return;
    visit(ascii(b, pos + 4, 4), b.subarray(pos + 8, pos + size));
    pos += size;
  }
}

function moov(b: Uint8Array): MediaProbe {
  const out: MediaProbe = {};
  boxes(b, (type, body) => {
    const v = view(body);
    if (type === 'mvhd' && body.length >= 32) {
      const v1 = body[0] === 1;
      const scale = v.getUint32(v1 ? 20 : 12);
      const units = v1 ? Number(v.getBigUint64(24)) : v.getUint32(16);
      if (scale > 0 && !(!v1 && units === 0xffffffff)) out.duration = ms(units, scale);
    } else if (type === 'trak' && out.w === undefined) {
      boxes(body, (t, tkhd) => {
        if (t !== 'tkhd' || out.w !== undefined) return;
        const m = tkhd[0] === 1 ? 52 : 40;
        if (tkhd.length < m + 44) return;
        const d = view(tkhd);
        const [w, h] = [Math.round(d.getUint32(m + 36) / 65536), Math.round(d.getUint32(m + 40) / 65536)];
        if (w === 0 || h === 0) return; // an audio track
        const quarterTurn = d.getInt32(m) === 0 && d.getInt32(m + 4) !== 0; // matrix a = 0, b = ±1: rotated 90°/270°
        [out.w, out.h] = quarterTurn ? [h, w] : [w, h];
      });
    }
  });
  return defined(out);
}

function wav(src: ByteSource): MediaProbe {
  let byteRate = 0;
  for (let pos = 12; pos + 8 <= src.size; ) {
    const c = src.read(pos, 24);
    const v = view(c);
    const id = ascii(c, 0, 4);
    const len = v.getUint32(4, true);
    if (id === 'fmt ' && c.length >= 20) byteRate = v.getUint32(16, true);
    if (id === 'data') {
      // Streaming writers leave the length at 0 or 0xffffffff: the data then runs to the end of the file.
      const data = len === 0 || len === 0xffffffff || pos + 8 + len > src.size ? src.size - pos - 8 : len;
      return byteRate > 0 ? defined({ duration: ms(data, byteRate) }) : {};
    }
    pos += 8 + len + (len & 1);
  }
  return {};
}

function flac(head: Uint8Array): MediaProbe {
  if (head.length < 26 || (head[4]! & 0x7f) !== 0) return {}; // the first metadata block must be STREAMINFO
  const rate = (head[18]! << 12) | (head[19]! << 4) | (head[20]! >> 4);
  const samples = (head[21]! & 0x0f) * 2 ** 32 + view(head).getUint32(22);
  return rate > 0 ? defined({ duration: ms(samples, rate) }) : {};
}

function ogg(src: ByteSource): MediaProbe {
  const first = src.read(0, 27 + 255 + 32);
  const v = view(first);
  const serial = v.getUint32(14, true);
  const packet = 27 + first[26]!;
  let rate: number;
  let preSkip = 0;
  if (first[packet] === 1 && ascii(first, packet + 1, 6) === 'vorbis') rate = v.getUint32(packet + 12, true);
  else if (ascii(first, packet, 8) === 'OpusHead') {
    rate = 48_000; // Opus granule positions always count 48 kHz samples
    preSkip = v.getUint16(packet + 10, true);
  } else return {};
  // The last page of this stream carries the total sample count as its granule position.
  const tailStart = Math.max(0, src.size - 65_536);
  const tail = src.read(tailStart, src.size - tailStart);
  const t = view(tail);
  for (let i = tail.length - 27; i >= 0; i--) {
    if (tail[i] !== 0x4f || ascii(tail, i, 4) !== 'OggS' || t.getUint32(i + 14, true) !== serial) continue;
    const granule = t.getBigInt64(i + 6, true);
    if (granule > 0n) return rate > 0 ? defined({ duration: ms(Number(granule) - preSkip, rate) }) : {};
  }
  return {};
}

const MP3_KBPS = [
  [0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320], // MPEG-1 layer III
  [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160], // MPEG-2/2.5 layer III
];

/** MP3 (MPEG-1/2/2.5 layer III): skips an ID3v2 tag, finds the first frame, then Xing/Info, VBRI, or CBR. */
function mp3(src: ByteSource): MediaProbe {
  let start = 0;
  const id3 = src.read(0, 10);
  if (ascii(id3, 0, 3) === 'ID3' && id3.length === 10) {
    start = 10 + ((id3[6]! & 0x7f) << 21 | (id3[7]! & 0x7f) << 14 | (id3[8]! & 0x7f) << 7 | (id3[9]! & 0x7f)) + (id3[5]! & 0x10 ? 10 : 0);
  }
  const b = src.read(start, 65_536);
  for (let i = 0; i + 4 <= b.length; i++) {
    if (b[i] !== 0xff || (b[i + 1]! & 0xe0) !== 0xe0) continue;
    const version = (b[i + 1]! >> 3) & 3; // 3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5
    const layer = (b[i + 1]! >> 1) & 3; // 1: layer III
    const bitrate = b[i + 2]! >> 4;
    const rateIndex = (b[i + 2]! >> 2) & 3;
    if (version === 1 || layer !== 1 || bitrate === 0 || bitrate === 15 || rateIndex === 3) continue;
    const mpeg1 = version === 3;
    const rate = [44_100, 48_000, 32_000][rateIndex]! / (mpeg1 ? 1 : version === 2 ? 2 : 4);
    const perFrame = mpeg1 ? 1152 : 576;
    const mono = b[i + 3]! >> 6 === 3;
    const xing = i + 4 + (mpeg1 ? (mono ? 17 : 32) : mono ? 9 : 17);
    const v = view(b);
    if ((ascii(b, xing, 4) === 'Xing' || ascii(b, xing, 4) === 'Info') && xing + 12 <= b.length && v.getUint32(xing + 4) & 1) {
      return defined({ duration: ms(v.getUint32(xing + 8) * perFrame, rate) });
    }
    if (ascii(b, i + 36, 4) === 'VBRI' && i + 54 <= b.length) return defined({ duration: ms(v.getUint32(i + 50) * perFrame, rate) });
    const id3v1 = src.size >= 128 && ascii(src.read(src.size - 128, 3), 0, 3) === 'TAG' ? 128 : 0;
    return defined({ duration: ms((src.size - start - i - id3v1) * 8, MP3_KBPS[mpeg1 ? 0 : 1]![bitrate]! * 1000) });
  }
  return {};
}
