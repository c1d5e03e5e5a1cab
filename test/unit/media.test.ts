/**
 * Media without a homeserver: mxc validation, MIME sniffing, info extraction on fixtures generated in code (PNG
 * and JPEG from pngjs/jpeg-js, MP4 boxes and WAV in test/fixtures/media/build.ts; FLAC/Ogg/MP3 headers and EXIF
 * here), the media pool's tasks, and the Media class against a scripted HTTP server (limits, retries, redirects,
 * encrypted attachments).
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { decode as decodeBlurhash, isBlurhashValid } from 'blurhash';
import jpeg from 'jpeg-js';
import { PNG } from 'pngjs';
import { decryptAttachment, type EncryptedFileInfo } from '../../src/attachments.ts';
import { MatrixHttp } from '../../src/http.ts';
import { Media, parseMxc, sniffMimetype } from '../../src/media.ts';
import type { MediaProbe } from '../../src/protocol.ts';
import { TaskPool } from '../../src/pool.ts';
import { bytesSource, probeAudioVideo, probeImage, THUMBNAIL_MAX } from '../../src/media-probe.ts';
import { box, jpegImage, mp4, pngImage, u32, u32le, wav } from '../fixtures/media/build.ts';

const silent = { debug() {}, info() {}, warn() {}, error() {} };

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'halcyon-media-'));
  after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

// ---- fixtures ----

/** Inserts an EXIF APP1 segment with an orientation tag right after the JPEG's SOI marker. */
function withOrientation(jpg: Buffer, orientation: number): Buffer {
  const tiff = Buffer.from([0x4d, 0x4d, 0, 0x2a, 0, 0, 0, 8, 0, 1, 0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, orientation, 0, 0, 0, 0, 0, 0]);
  const body = Buffer.concat([Buffer.from('Exif\0\0', 'latin1'), tiff]);
  const app1 = Buffer.concat([Buffer.from([0xff, 0xe1, (body.length + 2) >> 8, (body.length + 2) & 255]), body]);
  return Buffer.concat([jpg.subarray(0, 2), app1, jpg.subarray(2)]);
}

function flac(rate: number, samples: number): Buffer {
  const packed = (BigInt(rate) << 44n) | (1n << 41n) | (15n << 36n) | BigInt(samples);
  const info = Buffer.concat([Buffer.alloc(10), Buffer.from(packed.toString(16).padStart(16, '0'), 'hex'), Buffer.alloc(16)]);
  return Buffer.concat([Buffer.from('fLaC'), Buffer.from([0x80, 0, 0, 34]), info, randomBytes(1000)]);
}

function oggPage(type: number, granule: bigint, serial: number, packet: Buffer): Buffer {
  const h = Buffer.alloc(27);
  h.write('OggS', 0, 'latin1');
  h[5] = type;
  h.writeBigInt64LE(granule, 6);
  h.writeUInt32LE(serial, 14);
  h[26] = packet.length ? 1 : 0;
  return Buffer.concat([h, packet.length ? Buffer.from([packet.length]) : Buffer.alloc(0), packet]);
}

function oggVorbis(rate: number, samples: number): Buffer {
  const id = Buffer.concat([Buffer.from('\x01vorbis', 'latin1'), u32le(0), Buffer.from([2]), u32le(rate), Buffer.alloc(13)]);
  return Buffer.concat([oggPage(2, 0n, 77, id), randomBytes(5000), oggPage(4, BigInt(samples), 77, Buffer.alloc(0)), oggPage(4, 999_999_999n, 78, Buffer.alloc(0))]);
}

function oggOpus(preSkip: number, samples48k: number): Buffer {
  const head = Buffer.concat([Buffer.from('OpusHead'), Buffer.from([1, 2]), Buffer.from([preSkip & 255, preSkip >> 8]), u32le(44100), Buffer.alloc(3)]);
  return Buffer.concat([oggPage(2, 0n, 5, head), randomBytes(3000), oggPage(4, BigInt(samples48k + preSkip), 5, Buffer.alloc(0))]);
}

/** MPEG-1 layer III, 128 kbps, 44.1 kHz, stereo: 417-byte frames; an ID3v2 tag before, optionally a Xing header. */
function mp3(frames: number, xingFrames?: number): Buffer {
  const frame = () => {
    const f = Buffer.alloc(417);
    f.set([0xff, 0xfb, 0x90, 0x00]);
    return f;
  };
  const first = frame();
  if (xingFrames !== undefined) {
    first.write('Xing', 36, 'latin1');
    first.set(u32(1), 40);
    first.set(u32(xingFrames), 44);
  }
  const id3 = Buffer.concat([Buffer.from('ID3'), Buffer.from([3, 0, 0, 0, 0, 0, 100]), Buffer.alloc(100)]);
  return Buffer.concat([id3, first, ...Array.from({ length: frames - 1 }, frame)]);
}

// ---- mxc ----

describe('mxc URIs', () => {
  test('valid: DNS names, IPv4, bracketed IPv6, ports; media IDs of [A-Za-z0-9_-]', () => {
    for (const [uri, serverName, mediaId] of [
      ['mxc://example.org/abcDEF123_-', 'example.org', 'abcDEF123_-'],
      ['mxc://localhost:8448/x', 'localhost:8448', 'x'],
      ['mxc://1.2.3.4/m', '1.2.3.4', 'm'],
      ['mxc://[::1]:8448/m', '[::1]:8448', 'm'],
      ['mxc://[2001:db8::1]/m', '[2001:db8::1]', 'm'],
      ['mxc://matrix-client.example.com:443/AbC', 'matrix-client.example.com:443', 'AbC'],
    ]) {
      assert.deepEqual(parseMxc(uri), { serverName, mediaId }, uri);
    }
  });

  test('hostile or malformed URIs are HALCYON_MEDIA_URI_INVALID', () => {
    const bad: unknown[] = [
      '', 'mxc://', 'mxc:///id', 'mxc://server', 'mxc://server/', 'mxc://server//id', 'mxc://server/a/b', 'mxc://../x', 'mxc://./x',
      'mxc://server/..', 'mxc://server/.', 'mxc://s..t/x', 'mxc://.s/x', 'mxc://s./x', 'mxc://server/a%2Fb', 'mxc://server%2F..%2Fx/a',
      'mxc://server/a?b', 'mxc://server/a?', 'mxc://server/a#b', 'mxc://server\\a/b', 'mxc://server/a\\b', 'mxc://ser ver/a', ' mxc://s/a',
      'mxc://s/a ', 'mxc://s/a\n', 'mxc://s/a\t', 'https://s/a', 'MXC://s/a', 'mxc:/s/a', 'mxc://user@s/a', 'mxc://s:99999/a', 'mxc://s:/a',
      'mxc://s:123456/a', 'mxc://[::1/a', 'mxc://::1/a', 'mxc://[::g]/a', `mxc://${'a'.repeat(63)}.${'b'.repeat(63)}.${'c'.repeat(63)}.${'d'.repeat(63)}.e/x`,
      'mxc://s/ä', 'mxc://s/%41', 123, null, undefined, { toString: () => 'mxc://s/a' },
    ];
    for (const uri of bad) assert.throws(() => parseMxc(uri), { code: 'HALCYON_MEDIA_URI_INVALID' }, String(uri));
  });
});

test('sniffMimetype: magic numbers first, then the extension, then application/octet-stream', () => {
  assert.equal(sniffMimetype(pngImage(2, 2)), 'image/png');
  assert.equal(sniffMimetype(jpegImage(2, 2), 'x.png'), 'image/jpeg');
  assert.equal(sniffMimetype(Buffer.from('GIF89a')), 'image/gif');
  assert.equal(sniffMimetype(mp4({ timescale: 1, duration: 1 })), 'video/mp4');
  assert.equal(sniffMimetype(mp4({ timescale: 1, duration: 1 }), undefined, 'audio'), 'audio/mp4');
  assert.equal(sniffMimetype(mp4({ timescale: 1, duration: 1, brand: 'qt  ' })), 'video/quicktime');
  assert.equal(sniffMimetype(mp4({ timescale: 1, duration: 1, brand: 'M4A ' })), 'audio/mp4');
  assert.equal(sniffMimetype(wav(8000, 1, 8, 10)), 'audio/wav');
  assert.equal(sniffMimetype(flac(8000, 1)), 'audio/flac');
  assert.equal(sniffMimetype(oggVorbis(8000, 1)), 'audio/ogg');
  assert.equal(sniffMimetype(mp3(2)), 'audio/mpeg');
  assert.equal(sniffMimetype(Buffer.from('%PDF-1.7')), 'application/pdf');
  assert.equal(sniffMimetype(Buffer.from('hello'), 'notes.TXT'), 'text/plain');
  assert.equal(sniffMimetype(Buffer.from('hello'), 'blob'), 'application/octet-stream');
  assert.equal(sniffMimetype(new Uint8Array(0)), 'application/octet-stream');
});

// ---- info extraction ----

describe('image info', () => {
  test('a large PNG: size, an 800 px JPEG thumbnail of the same aspect, and a decodable 4x3 blurhash', () => {
    const p = probeImage(pngImage(1000, 500));
    assert.equal(p.w, 1000);
    assert.equal(p.h, 500);
    assert.ok(p.thumbnail);
    assert.deepEqual([p.thumbnail.w, p.thumbnail.h], [800, 400]);
    const decoded = jpeg.decode(p.thumbnail.data);
    assert.deepEqual([decoded.width, decoded.height], [800, 400]);
    assert.equal(p.thumbnail.data.buffer.byteLength, p.thumbnail.data.length, 'the thumbnail owns its buffer (transferable)');
    assert.ok(p.blurhash && isBlurhashValid(p.blurhash).result, p.blurhash);
    assert.equal(p.blurhash.length, 4 + 2 * 4 * 3, '4x3 components');
    assert.equal(decodeBlurhash(p.blurhash, 32, 16).length, 32 * 16 * 4);
    // The gradient survives: the thumbnail's left edge is dark red, its right edge bright red.
    assert.ok(decoded.data[(200 * 800 + 2) * 4]! < 40 && decoded.data[(200 * 800 + 797) * 4]! > 210);
  });

  test('portrait and JPEG input; small images get a blurhash but no thumbnail', () => {
    const tall = probeImage(jpegImage(300, 1000));
    assert.deepEqual([tall.w, tall.h, tall.thumbnail?.w, tall.thumbnail?.h], [300, 1000, 240, THUMBNAIL_MAX]);
    const big = probeImage(jpegImage(1200, 900));
    assert.deepEqual([big.thumbnail?.w, big.thumbnail?.h], [800, 600]);
    const small = probeImage(pngImage(120, 80));
    assert.deepEqual([small.w, small.h, small.thumbnail], [120, 80, undefined]);
    assert.ok(small.blurhash && isBlurhashValid(small.blurhash).result);
    const edge = probeImage(pngImage(800, 10));
    assert.equal(edge.thumbnail, undefined, 'exactly 800 px needs no thumbnail');
  });

  test('transparent PNG pixels are flattened over white in the thumbnail', () => {
    const p = probeImage(pngImage(900, 900, 0));
    const d = jpeg.decode(p.thumbnail!.data);
    assert.ok(d.data[0]! > 240 && d.data[1]! > 240 && d.data[2]! > 240);
  });

  test('EXIF orientation 6 (90° clockwise): the displayed size is swapped, and the thumbnail is turned', () => {
    const p = probeImage(withOrientation(jpegImage(1000, 500), 6));
    assert.deepEqual([p.w, p.h, p.thumbnail?.w, p.thumbnail?.h], [500, 1000, 400, 800]);
  });

  test('other formats get dimensions only; garbage gets nothing', () => {
    const gif = Buffer.concat([Buffer.from('GIF89a'), Buffer.from([0x20, 0x03, 0x58, 0x02]), Buffer.alloc(20)]);
    assert.deepEqual(probeImage(gif), { w: 800, h: 600 });
    assert.deepEqual(probeImage(randomBytes(300)), {});
    const truncated = pngImage(1000, 500).subarray(0, 200);
    assert.deepEqual(probeImage(truncated), { w: 1000, h: 500 }, 'a truncated PNG still has its header');
  });
});

describe('audio and video info', () => {
  const probe = (b: Buffer): MediaProbe => probeAudioVideo(bytesSource(b));

  test('MP4/MOV: mvhd duration (v0 and v1) past a big mdat, the video track size, rotation applied', () => {
    assert.deepEqual(probe(mp4({ timescale: 600, duration: 7407, w: 640, h: 360 })), { duration: 12345, w: 640, h: 360 });
    assert.deepEqual(probe(mp4({ timescale: 90_000, duration: 270_000, w: 1920, h: 1080, v1: true })), { duration: 3000, w: 1920, h: 1080 });
    assert.deepEqual(probe(mp4({ timescale: 1000, duration: 5000, w: 1920, h: 1080, rotated: true })), { duration: 5000, w: 1080, h: 1920 });
    assert.deepEqual(probe(mp4({ timescale: 44_100, duration: 44_100 * 4, brand: 'M4A ' })), { duration: 4000 }, 'M4A: duration, no size');
  });

  test('WAV, FLAC, Ogg Vorbis, Ogg Opus, MP3 (CBR and Xing)', () => {
    assert.deepEqual(probe(wav(8000, 1, 16, 1500)), { duration: 1500 });
    assert.deepEqual(probe(wav(44_100, 2, 16, 250)), { duration: 250 });
    assert.deepEqual(probe(flac(44_100, 110_250)), { duration: 2500 });
    assert.deepEqual(probe(oggVorbis(48_000, 144_000)), { duration: 3000 });
    assert.deepEqual(probe(oggOpus(312, 96_000)), { duration: 2000 });
    assert.deepEqual(probe(mp3(100)), { duration: Math.round((417 * 100 * 8) / 128) });
    assert.deepEqual(probe(mp3(3, 1000)), { duration: Math.round((1000 * 1152 * 1000) / 44_100) });
  });

  test('unknown or corrupt files yield nothing, never an error', () => {
    // Random bytes without 0xff: an MP3 frame header can start at any offset (MP3 has no magic number), and about
    // one random kilobyte in eighteen holds one that looks valid, which is an MP3 to any prober.
    const noise = Buffer.from(randomBytes(1000).map((x) => (x === 0xff ? 0 : x)));
    for (const b of [Buffer.alloc(0), noise, Buffer.from('RIFF\0\0\0\0WAVE'), box('ftyp', Buffer.from('isom')), Buffer.from('OggS'), Buffer.from('fLaC')]) {
      assert.deepEqual(probe(b), {});
    }
  });
});

// ---- the pool ----

describe('media pool tasks', () => {
  const pool = new TaskPool('media');
  after(() => pool.destroy());

  test('encrypt then decrypt round-trips; the buffers are transferred; a tampered ciphertext is HALCYON_ATTACHMENT_HASH_MISMATCH', async () => {
    const plain = randomBytes(300_000);
    const copy = new Uint8Array(plain);
    const { data, info } = await pool.run<{ data: Uint8Array; info: EncryptedFileInfo }>({ op: 'encrypt', data: copy }, [copy.buffer]);
    assert.equal(copy.byteLength, 0, 'the input buffer moved to the worker');
    assert.equal(data.length, plain.length);
    assert.equal(info.hashes.sha256, createHash('sha256').update(data).digest('base64').replace(/=+$/, ''));
    const tampered = new Uint8Array(data);
    tampered[1000]! ^= 1;
    const out = await pool.run<Uint8Array>({ op: 'decrypt', data, info }, [data.buffer as ArrayBuffer]);
    assert.deepEqual(Buffer.from(out), plain);
    await assert.rejects(pool.run({ op: 'decrypt', data: tampered, info }), { code: 'HALCYON_ATTACHMENT_HASH_MISMATCH' });
    await assert.rejects(pool.run({ op: 'decrypt', data: tampered, info: { ...info, v: 'v1' } }), { code: 'HALCYON_ATTACHMENT_INVALID' });
  });

  test('encryptFile writes a 0600 ciphertext file that decrypts to the source', async () => {
    const dir = tempDir();
    const src = join(dir, 'plain.bin');
    const plain = randomBytes(3 * 1024 * 1024 + 17); // several of the worker's 1 MiB chunks
    writeFileSync(src, plain);
    const dst = join(dir, 'cipher.bin');
    const { info, size } = await pool.run<{ info: EncryptedFileInfo; size: number }>({ op: 'encryptFile', src, dst });
    assert.equal(size, plain.length);
    assert.equal(statSync(dst).mode & 0o777, 0o600);
    assert.deepEqual(Buffer.from(decryptAttachment(readFileSync(dst), info)), plain);
    await assert.rejects(pool.run({ op: 'encryptFile', src, dst }), { code: 'HALCYON_INTERNAL' }, 'an existing destination is never overwritten');
  });

  test('probe by path equals probe by bytes', async () => {
    const dir = tempDir();
    const img = pngImage(1600, 900);
    writeFileSync(join(dir, 'a.png'), img);
    const byPath = await pool.run<MediaProbe>({ op: 'probe', kind: 'image', path: join(dir, 'a.png') });
    const byBytes = await pool.run<MediaProbe>({ op: 'probe', kind: 'image', data: new Uint8Array(img) });
    assert.deepEqual(byPath, byBytes);
    assert.deepEqual([byPath.thumbnail?.w, byPath.thumbnail?.h], [800, 450]);
    writeFileSync(join(dir, 'a.mp4'), mp4({ timescale: 1000, duration: 2500, w: 320, h: 240 }));
    assert.deepEqual(await pool.run({ op: 'probe', kind: 'video', path: join(dir, 'a.mp4') }), { duration: 2500, w: 320, h: 240 });
  });

  test('after destroy, tasks reject with HALCYON_STOPPED', async () => {
    const p = new TaskPool('media');
    await p.run({ op: 'encrypt', data: new Uint8Array(1) });
    await p.destroy();
    await assert.rejects(p.run({ op: 'encrypt', data: new Uint8Array(1) }), { code: 'HALCYON_STOPPED' });
  });
});

// ---- Media against a scripted server ----

interface Recorded {
  method: string;
  url: string;
  headers: IncomingMessage['headers'];
  body: Buffer;
}

/** A scripted homeserver: media config, upload (stored by media ID) and download, with per-test hooks. */
class FakeMediaServer {
  readonly requests: Recorded[] = [];
  readonly media = new Map<string, Buffer>();
  uploadLimit: number | undefined = 50_000_000;
  /** Answers a request instead of the default behaviour when it returns true. */
  hook: ((r: Recorded, res: ServerResponse) => boolean) | null = null;
  /** Chunk size of downloads and whether they carry a Content-Length. */
  chunk = 64 * 1024;
  contentLength = true;
  private readonly server = createServer((req, res) => void this.handle(req, res));
  url = '';

  async start(): Promise<void> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    this.url = `http://127.0.0.1:${(this.server.address() as { port: number }).port}`;
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise((r) => this.server.close(r));
  }

  uploads(): Recorded[] {
    return this.requests.filter((r) => r.url.startsWith('/_matrix/media/v3/upload'));
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const r: Recorded = { method: req.method!, url: req.url!, headers: req.headers, body: Buffer.concat(chunks) };
    this.requests.push(r);
    if (this.hook?.(r, res)) return;
    const json = (status: number, body: unknown) => void res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
    if (r.url === '/_matrix/client/v1/media/config') return json(200, this.uploadLimit === undefined ? {} : { 'm.upload.size': this.uploadLimit });
    if (r.method === 'POST' && r.url.startsWith('/_matrix/media/v3/upload')) {
      const id = randomBytes(8).toString('hex');
      this.media.set(id, r.body);
      return json(200, { content_uri: `mxc://fake.test/${id}` });
    }
    const m = /^\/_matrix\/client\/v1\/media\/download\/fake\.test\/([A-Za-z0-9]+)$/.exec(r.url);
    const data = m && this.media.get(m[1]!);
    if (!data) return json(404, { errcode: 'M_NOT_FOUND', error: 'no such media' });
    res.writeHead(200, { 'content-type': 'application/octet-stream', ...(this.contentLength ? { 'content-length': data.length } : {}) });
    for (let i = 0; i < data.length; i += this.chunk) {
      if (!res.write(data.subarray(i, i + this.chunk))) await new Promise((ok) => res.once('drain', ok));
    }
    res.end();
  }
}

describe('Media over a scripted server', () => {
  const server = new FakeMediaServer();
  let http: MatrixHttp;
  let dataDir: string;
  const sent: Array<{ roomId: string; content: Record<string, any>; opts?: { allowPlaintext?: boolean } }> = [];
  const encryptedRooms = new Set<string>();
  let media: Media;

  before(async () => {
    await server.start();
    http = new MatrixHttp(server.url, 'syt_secret_token', { maxRetryAfterMs: 50 });
    // Not tempDir(): a hook registered from inside a before() hook never ran, and the dir was left behind.
    dataDir = mkdtempSync(join(tmpdir(), 'halcyon-media-'));
    media = new Media({
      http,
      dataDir,
      logger: silent,
      encryptAttachments: async (roomId, allowPlaintext) => !allowPlaintext && encryptedRooms.has(roomId),
      sendEvent: async (roomId, _type, content, opts) => {
        sent.push({ roomId, content, ...(opts ? { opts } : {}) });
        return `$event${sent.length}`;
      },
    });
  });
  after(async () => {
    await media.close();
    await http.close();
    await server.stop();
    rmSync(dataDir, { recursive: true, force: true });
  });
  const reset = () => {
    server.requests.length = 0;
    server.hook = null;
    server.uploadLimit = 50_000_000;
    server.chunk = 64 * 1024;
    server.contentLength = true;
  };
  const tmpLeft = () => readdirSync(join(dataDir, 'media-tmp'));

  test('config: m.upload.size, cached', async () => {
    reset();
    assert.deepEqual(await media.config(), { uploadSize: 50_000_000 });
    assert.deepEqual(await media.config(), { uploadSize: 50_000_000 });
    assert.equal(server.requests.filter((r) => r.url.endsWith('/config')).length <= 1, true);
  });

  test('upload: bytes, a path and a stream arrive byte for byte with Content-Length, type and file name; only the Authorization header holds the token', async () => {
    reset();
    const dir = tempDir();
    const bytes = randomBytes(200_000);
    writeFileSync(join(dir, 'photo.png'), pngImage(10, 10));
    const a = await media.upload(bytes, { filename: 'a.bin' });
    const b = await media.upload(join(dir, 'photo.png'));
    const c = await media.upload(Readable.from([randomBytes(10), Buffer.from('tail')]), { contentType: 'text/x-test' });
    const [ua, ub, uc] = server.uploads();
    assert.deepEqual(server.media.get(parseMxc(a).mediaId), bytes);
    assert.equal(ua!.headers['content-length'], '200000');
    assert.equal(ua!.headers['content-type'], 'application/octet-stream');
    assert.equal(new URL(ua!.url, server.url).searchParams.get('filename'), 'a.bin');
    assert.deepEqual(server.media.get(parseMxc(b).mediaId), readFileSync(join(dir, 'photo.png')));
    assert.equal(ub!.headers['content-type'], 'image/png');
    assert.equal(new URL(ub!.url, server.url).searchParams.get('filename'), 'photo.png');
    assert.equal(server.media.get(parseMxc(c).mediaId)!.length, 14);
    assert.equal(uc!.headers['content-length'], '14', 'a stream is spooled so its length is known');
    assert.equal(uc!.headers['content-type'], 'text/x-test');
    assert.equal(new URL(uc!.url, server.url).searchParams.has('filename'), false);
    for (const r of server.requests) {
      assert.equal(r.headers.authorization, 'Bearer syt_secret_token');
      assert.ok(!r.url.includes('syt_secret_token'));
    }
    assert.deepEqual(tmpLeft(), [], 'the spool file is removed');
  });

  test('the upload limit is enforced before sending: bytes, a path, and a stream as soon as it passes it', async () => {
    reset();
    server.uploadLimit = 1000;
    const fresh = new Media({ http, dataDir, logger: silent, encryptAttachments: async () => false, sendEvent: async () => '$x' });
    const dir = tempDir();
    writeFileSync(join(dir, 'big.bin'), Buffer.alloc(1001));
    let pulled = 0;
    const endless = new Readable({
      read() {
        pulled++;
        this.push(Buffer.alloc(100));
      },
    });
    try {
      await assert.rejects(fresh.upload(Buffer.alloc(1001)), { code: 'HALCYON_MEDIA_TOO_LARGE' });
      await assert.rejects(fresh.upload(join(dir, 'big.bin')), { code: 'HALCYON_MEDIA_TOO_LARGE' });
      await assert.rejects(fresh.sendFile('!room:x', join(dir, 'big.bin')), { code: 'HALCYON_MEDIA_TOO_LARGE' });
      await assert.rejects(fresh.upload(endless), { code: 'HALCYON_MEDIA_TOO_LARGE' });
      assert.ok(pulled < 2000, `the endless stream was read only about up to the limit and its buffering (${pulled} chunks)`);
      assert.equal(endless.destroyed, true);
      assert.deepEqual(server.uploads(), [], 'nothing was uploaded');
      assert.deepEqual(tmpLeft(), []);
      assert.ok(await fresh.upload(Buffer.alloc(1000)), 'exactly the limit is fine');
    } finally {
      await fresh.close();
    }
  });

  test('a server-side 413 M_TOO_LARGE is HALCYON_MEDIA_TOO_LARGE; a 429 is retried by sending the file again', async () => {
    reset();
    server.hook = (r, res) => {
      if (!r.url.startsWith('/_matrix/media/v3/upload')) return false;
      res.writeHead(413, { 'content-type': 'application/json' }).end(JSON.stringify({ errcode: 'M_TOO_LARGE', error: 'too big' }));
      return true;
    };
    await assert.rejects(media.upload(Buffer.alloc(10)), { code: 'HALCYON_MEDIA_TOO_LARGE', status: 413 });

    reset();
    let n = 0;
    server.hook = (r, res) => {
      if (!r.url.startsWith('/_matrix/media/v3/upload') || n++ > 0) return false;
      res.writeHead(429, { 'content-type': 'application/json' }).end(JSON.stringify({ errcode: 'M_LIMIT_EXCEEDED', retry_after_ms: 5 }));
      return true;
    };
    const dir = tempDir();
    const file = randomBytes(150_000);
    writeFileSync(join(dir, 'f.bin'), file);
    const uri = await media.upload(join(dir, 'f.bin'));
    const ups = server.uploads();
    assert.equal(ups.length, 2);
    assert.deepEqual(ups[0]!.body, file, 'the refused attempt carried the whole file');
    assert.deepEqual(server.media.get(parseMxc(uri).mediaId), file);
  });

  test('download: byte for byte, as a stream in several chunks, and hostile URIs request nothing', async () => {
    reset();
    const bytes = randomBytes(1_000_000);
    const uri = await media.upload(bytes);
    assert.deepEqual(await media.download(uri), bytes);
    const stream = await media.downloadStream(uri);
    const chunks: Buffer[] = [];
    for await (const c of stream) chunks.push(c as Buffer);
    assert.ok(chunks.length > 1, `${chunks.length} chunks`);
    assert.deepEqual(Buffer.concat(chunks), bytes);
    const before = server.requests.length;
    for (const bad of ['mxc://fake.test/../../v3/account/whoami', 'mxc://fake.test/a%2F..', 'mxc://fake.test/a?x=1', 'mxc://../x', 'http://fake.test/x']) {
      await assert.rejects(media.download(bad), { code: 'HALCYON_MEDIA_URI_INVALID' });
      await assert.rejects(media.downloadStream(bad), { code: 'HALCYON_MEDIA_URI_INVALID' });
      await assert.rejects(media.downloadContent({ url: bad }), { code: 'HALCYON_MEDIA_URI_INVALID' });
    }
    assert.equal(server.requests.length, before);
    await assert.rejects(media.download('mxc://fake.test/missing'), { code: 'HALCYON_MATRIX', errcode: 'M_NOT_FOUND', status: 404 });
  });

  test('maxBytes: refused from the Content-Length, or by counting without one', async () => {
    reset();
    const bytes = randomBytes(300_000);
    const uri = await media.upload(bytes);
    await assert.rejects(media.download(uri, { maxBytes: 299_999 }), { code: 'HALCYON_MEDIA_TOO_LARGE' });
    assert.deepEqual(await media.download(uri, { maxBytes: 300_000 }), bytes);
    server.contentLength = false;
    server.chunk = 10_000;
    await assert.rejects(media.download(uri, { maxBytes: 299_999 }), { code: 'HALCYON_MEDIA_TOO_LARGE' });
    assert.deepEqual(await media.download(uri, { maxBytes: 300_000 }), bytes);
    assert.deepEqual(await media.download(uri), bytes);
  });

  test("downloads default to the server's upload limit (m.upload.size); an explicit maxBytes wins; without a stated limit, the fallback", async () => {
    reset();
    const bytes = randomBytes(3000);
    const uri = await media.upload(bytes);
    const { content } = { content: { url: uri } };
    server.uploadLimit = 2999;
    const limited = new Media({ http, dataDir, logger: silent, encryptAttachments: async () => false, sendEvent: async () => '$x' });
    try {
      await assert.rejects(limited.download(uri), { code: 'HALCYON_MEDIA_TOO_LARGE', message: /2999/ });
      await assert.rejects(limited.downloadStream(uri), { code: 'HALCYON_MEDIA_TOO_LARGE' });
      await assert.rejects(limited.downloadContent(content), { code: 'HALCYON_MEDIA_TOO_LARGE' });
      server.contentLength = false;
      await assert.rejects(limited.download(uri), { code: 'HALCYON_MEDIA_TOO_LARGE' });
      await assert.rejects(limited.downloadStream(uri).then((s) => s.toArray()), { code: 'HALCYON_MEDIA_TOO_LARGE' });
      assert.deepEqual(await limited.download(uri, { maxBytes: 3000 }), bytes, 'an explicit maxBytes wins');
      assert.deepEqual(Buffer.concat(await (await limited.downloadStream(uri, { maxBytes: Infinity })).toArray()), bytes);
      assert.deepEqual(await limited.downloadContent(content, { maxBytes: 3000 }), bytes);
    } finally {
      await limited.close();
    }
    server.uploadLimit = undefined;
    const unstated = new Media({ http, dataDir, logger: silent, encryptAttachments: async () => false, sendEvent: async () => '$x' });
    try {
      assert.deepEqual(await unstated.download(uri), bytes, 'no stated limit: the 100 MiB fallback');
    } finally {
      await unstated.close();
    }
  });

  test('a Content-Length too large to hold is refused (coded), even with maxBytes: Infinity', async () => {
    reset();
    server.hook = (r, res) => {
      if (!r.url.includes('/download/')) return false;
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': '999999999999999' });
      res.write('abc');
      return true;
    };
    await assert.rejects(media.download('mxc://fake.test/huge', { maxBytes: Infinity }), { code: 'HALCYON_MEDIA_TOO_LARGE' });
    await assert.rejects(media.download('mxc://fake.test/huge'), { code: 'HALCYON_MEDIA_TOO_LARGE' });
  });

  test('downloadThumbnail: GET /_matrix/client/v1/media/thumbnail with width, height, method, animated; strict mxc and options; the size limit', async () => {
    reset();
    const thumb = pngImage(32, 32);
    server.hook = (r, res) => {
      if (!r.url.startsWith('/_matrix/client/v1/media/thumbnail/')) return false;
      res.writeHead(200, { 'content-type': 'image/png', 'content-length': thumb.length }).end(thumb);
      return true;
    };
    assert.deepEqual(await media.downloadThumbnail('mxc://fake.test/abc', { width: 32, height: 32 }), thumb);
    await media.downloadThumbnail('mxc://[::1]:8448/x_Y-9', { width: 640, height: 480, method: 'scale', animated: true });
    const [a, b] = server.requests.filter((r) => r.url.includes('/thumbnail/'));
    const qa = new URL(a!.url, server.url);
    assert.equal(qa.pathname, '/_matrix/client/v1/media/thumbnail/fake.test/abc');
    assert.deepEqual(Object.fromEntries(qa.searchParams), { width: '32', height: '32' });
    const qb = new URL(b!.url, server.url);
    assert.equal(qb.pathname, `/_matrix/client/v1/media/thumbnail/${encodeURIComponent('[::1]:8448')}/x_Y-9`);
    assert.deepEqual(Object.fromEntries(qb.searchParams), { width: '640', height: '480', method: 'scale', animated: 'true' });
    assert.equal(a!.headers.authorization, 'Bearer syt_secret_token');
    await assert.rejects(media.downloadThumbnail('mxc://fake.test/abc', { width: 32, height: 32, maxBytes: thumb.length - 1 }), { code: 'HALCYON_MEDIA_TOO_LARGE' });

    const before = server.requests.length;
    for (const bad of ['mxc://fake.test/../x', 'mxc://fake.test/a?b', 'https://fake.test/x', 42]) {
      await assert.rejects(media.downloadThumbnail(bad as string, { width: 32, height: 32 }), { code: 'HALCYON_MEDIA_URI_INVALID' });
    }
    for (const opts of [{ width: 0, height: 32 }, { width: 32.5, height: 32 }, { width: 32 }, { width: 32, height: -1 }, { width: 32, height: 32, method: 'stretch' }, { width: 32, height: 32, animated: 'yes' }, { width: 32, height: 32, maxBytes: -1 }, undefined]) {
      await assert.rejects(media.downloadThumbnail('mxc://fake.test/abc', opts as never), { code: 'HALCYON_INVALID_ARGUMENT' }, JSON.stringify(opts));
    }
    assert.equal(server.requests.length, before, 'nothing was requested');
  });

  test('a redirect is never followed (HALCYON_REDIRECT)', async () => {
    reset();
    server.hook = (r, res) => {
      if (!r.url.includes('/download/')) return false;
      res.writeHead(307, { location: 'http://127.0.0.1:1/elsewhere' }).end();
      return true;
    };
    await assert.rejects(media.download('mxc://fake.test/abc'), { code: 'HALCYON_REDIRECT' });
    assert.equal(server.requests.length, 1);
  });

  test('sendImage to a plain room: url, info with size/mimetype/w/h/blurhash, a thumbnail_url of the thumbnail', async () => {
    reset();
    const img = pngImage(1600, 1200, 255, 2); // grainy, as photos are: its thumbnail is far smaller
    await media.sendImage('!plain:x', img, { filename: 'pic.png', caption: 'a picture' });
    const { content } = sent.at(-1)!;
    assert.equal(content.msgtype, 'm.image');
    assert.equal(content.body, 'a picture');
    assert.equal(content.filename, 'pic.png');
    assert.equal(content.file, undefined);
    assert.deepEqual(await media.downloadContent(content), img);
    const { info } = content;
    assert.deepEqual([info.mimetype, info.size, info.w, info.h], ['image/png', img.length, 1600, 1200]);
    assert.ok(isBlurhashValid(info['xyz.amorgan.blurhash']).result);
    assert.deepEqual({ ...info.thumbnail_info, size: 0 }, { w: 800, h: 600, mimetype: 'image/jpeg', size: 0 });
    const thumb = await media.download(info.thumbnail_url);
    assert.equal(thumb.length, info.thumbnail_info.size);
    assert.deepEqual([jpeg.decode(thumb).width, jpeg.decode(thumb).height], [800, 600]);
  });

  test('sendImage/sendFile to an encrypted room: file and thumbnail_file, uploaded as opaque octet-streams; downloadContent decrypts', async () => {
    reset();
    encryptedRooms.add('!secret:x');
    const dir = tempDir();
    const img = jpegImage(1000, 1000);
    writeFileSync(join(dir, 'photo.jpg'), img);
    await media.sendImage('!secret:x', join(dir, 'photo.jpg'));
    const { content } = sent.at(-1)!;
    assert.equal(content.url, undefined);
    assert.equal(content.body, 'photo.jpg');
    assert.equal(content.filename, 'photo.jpg');
    assert.equal(content.file.v, 'v2');
    assert.equal(content.info.thumbnail_url, undefined);
    assert.equal(content.info.thumbnail_file.key.alg, 'A256CTR');
    for (const u of server.uploads()) {
      assert.equal(u.headers['content-type'], 'application/octet-stream');
      assert.equal(new URL(u.url, server.url).searchParams.has('filename'), false, 'no file name leaks to the server');
    }
    assert.notDeepEqual(server.media.get(parseMxc(content.file.url).mediaId), img, 'the server holds ciphertext');
    assert.deepEqual(await media.downloadContent(content), img);
    const thumb = await media.downloadContent({ file: content.info.thumbnail_file });
    assert.deepEqual([jpeg.decode(thumb).width, jpeg.decode(thumb).height], [800, 800]);
    assert.equal(thumb.length, content.info.thumbnail_info.size);

    // A stream into an encrypted room: spooled, then encrypted file to file; no temp file is left.
    const bytes = randomBytes(2_500_000);
    await media.sendFile('!secret:x', Readable.from([bytes.subarray(0, 1_000_000), bytes.subarray(1_000_000)]), { filename: 'data.bin' });
    const file = sent.at(-1)!.content;
    assert.equal(file.msgtype, 'm.file');
    assert.deepEqual(file.info, { mimetype: 'application/octet-stream', size: bytes.length });
    assert.deepEqual(await media.downloadContent(file), bytes);
    assert.deepEqual(tmpLeft(), []);

    // allowPlaintext: in the clear, and the flag reaches sendEvent.
    await media.sendFile('!secret:x', Buffer.from('clear'), { allowPlaintext: true, filename: 'c.txt' });
    assert.equal(typeof sent.at(-1)!.content.url, 'string');
    assert.deepEqual(sent.at(-1)!.opts, { allowPlaintext: true });
  });

  test('received encrypted attachments: malformed info is refused before any request, tampered ciphertext is a hash mismatch', async () => {
    reset();
    encryptedRooms.add('!secret:x');
    await media.sendFile('!secret:x', Buffer.from('the secret plans'), { filename: 'plans.txt' });
    const { content } = sent.at(-1)!;
    const requests = server.requests.length;
    await assert.rejects(media.downloadContent({ file: { ...content.file, v: 'v1' } }), { code: 'HALCYON_ATTACHMENT_INVALID' });
    await assert.rejects(media.downloadContent({ file: { ...content.file, iv: 'AAAA' } }), { code: 'HALCYON_ATTACHMENT_INVALID' });
    await assert.rejects(media.downloadContent({ file: 'mxc://fake.test/x' }), { code: 'HALCYON_ATTACHMENT_INVALID' });
    await assert.rejects(media.downloadContent({ file: { ...content.file, url: 'mxc://fake.test/../x' } }), { code: 'HALCYON_MEDIA_URI_INVALID' });
    await assert.rejects(media.downloadContent({ body: 'no file' }), { code: 'HALCYON_INVALID_ARGUMENT' });
    assert.equal(server.requests.length, requests);
    const id = parseMxc(content.file.url).mediaId;
    const stored = server.media.get(id)!;
    server.media.set(id, Buffer.concat([stored.subarray(0, 3), Buffer.from([stored[3]! ^ 1]), stored.subarray(4)]));
    await assert.rejects(media.downloadContent(content), { code: 'HALCYON_ATTACHMENT_HASH_MISMATCH' });
    await assert.rejects(media.downloadContent(content, { maxBytes: 3 }), { code: 'HALCYON_MEDIA_TOO_LARGE' });
  });

  test('sendAudio/sendVideo carry the duration (and the video size); unnamed sources get a default file name', async () => {
    reset();
    await media.sendAudio('!plain:x', wav(8000, 1, 16, 1500));
    const audio = sent.at(-1)!.content;
    assert.deepEqual([audio.msgtype, audio.body, audio.filename, audio.info.mimetype, audio.info.duration], ['m.audio', 'audio.wav', 'audio.wav', 'audio/wav', 1500]);
    const dir = tempDir();
    writeFileSync(join(dir, 'clip.mp4'), mp4({ timescale: 1000, duration: 4321, w: 1280, h: 720 }));
    await media.sendVideo('!plain:x', join(dir, 'clip.mp4'), { info: { 'com.example.extra': 1 } });
    const video = sent.at(-1)!.content;
    assert.equal(video.msgtype, 'm.video');
    assert.deepEqual(video.info, { mimetype: 'video/mp4', size: statSync(join(dir, 'clip.mp4')).size, w: 1280, h: 720, duration: 4321, 'com.example.extra': 1 });
  });

  test('a missing file is HALCYON_INVALID_ARGUMENT naming its path (sendImage and upload), and nothing is sent', async () => {
    reset();
    const missing = join(tempDir(), 'nope.png');
    const sentBefore = sent.length;
    for (const call of [() => media.sendImage('!plain:x', missing), () => media.upload(missing), () => media.sendFile('!plain:x', missing)]) {
      await assert.rejects(call(), (e: { code?: string; message: string }) => {
        assert.equal(e.code, 'HALCYON_INVALID_ARGUMENT');
        assert.ok(e.message.includes(missing), `the message names the path: ${e.message}`);
        assert.match(e.message, /ENOENT/);
        return true;
      });
    }
    assert.equal(sent.length, sentBefore);
    assert.deepEqual(server.uploads(), []);
  });

  test('sendImage skips the thumbnail when it would not be smaller than the image itself', async () => {
    reset();
    // A flat-coloured 900 px PNG compresses to a few kB; its 800 px JPEG thumbnail would be larger.
    const png = new PNG({ width: 900, height: 900 });
    for (let i = 0; i < png.data.length; i += 4) png.data.set([200, 30, 60, 255], i);
    const img = PNG.sync.write(png);
    await media.sendImage('!plain:x', img, { filename: 'flat.png' });
    const { info } = sent.at(-1)!.content;
    assert.deepEqual([info.w, info.h, info.size], [900, 900, img.length]);
    assert.equal(info.thumbnail_url, undefined);
    assert.equal(info.thumbnail_info, undefined);
    assert.ok(isBlurhashValid(info['xyz.amorgan.blurhash']).result, 'the blurhash is still there');
    assert.equal(server.uploads().length, 1, 'only the image was uploaded');
  });

  test('bad sources are HALCYON_INVALID_ARGUMENT', async () => {
    reset();
    await assert.rejects(media.upload('/nonexistent/file.bin'), { code: 'HALCYON_INVALID_ARGUMENT' });
    await assert.rejects(media.upload(tmpdir()), { code: 'HALCYON_INVALID_ARGUMENT' });
    await assert.rejects(media.upload(42 as unknown as string), { code: 'HALCYON_INVALID_ARGUMENT' });
    await assert.rejects(media.upload(Readable.from([{ not: 'bytes' }])), { code: 'HALCYON_INVALID_ARGUMENT' });
    assert.deepEqual(server.uploads(), []);
  });
});
