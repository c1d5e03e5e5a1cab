/**
 * Media against the real Synapse: authenticated upload and download (a 20 MB file streamed both ways), media
 * messages as a plain-HTTP peer sees them, a peer's media downloaded by the bot, encrypted attachments both ways
 * with a matrix-js-sdk peer (image, file, audio and video; checked with crypto-wasm's Attachment), tampering, hostile mxc URIs, and the upload
 * limit (Synapse's max_upload_size in the harness is 50M).
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import fs, { createWriteStream, statSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { after, before, describe, test } from 'node:test';
import { Attachment, EncryptedAttachment } from '@matrix-org/matrix-sdk-crypto-wasm';
import { isBlurhashValid } from 'blurhash';
import { imageSize } from 'image-size';
import jpeg from 'jpeg-js';
import type { HalcyonError, Message } from '../../src/index.ts';
import { startJsPeer } from '../harness/js-peer.ts';
import { testHomeserver, withTimeout, type Homeserver } from '../harness/synapse.ts';
import { mp4, pngImage, wav } from '../fixtures/media/build.ts';
import { defer, deferred, newBot, newPeer, roomWithBot, tempDataDir, WAIT_MS, type Bot } from './util.ts';

let hs: Homeserver;
before(async () => {
  hs = await testHomeserver();
});
after(async () => {
  await hs?.stop();
});

const SYNAPSE_LIMIT = 50 * 1024 * 1024; // max_upload_size: '50M' in test/harness/synapse.ts

/** Downloads through authenticated media as someone else (a peer's access token). */
async function fetchMedia(token: string, mxc: string): Promise<Buffer> {
  const m = /^mxc:\/\/([^/]+)\/(.+)$/.exec(mxc);
  assert.ok(m, `not an mxc URI: ${mxc}`);
  const res = await fetch(`${hs.baseUrl}/_matrix/client/v1/media/download/${m[1]}/${m[2]}`, { headers: { authorization: `Bearer ${token}` } });
  assert.equal(res.status, 200, `download of ${mxc} as the peer`);
  return Buffer.from(await res.arrayBuffer());
}

/** Downloads an encrypted attachment as someone else and decrypts it with crypto-wasm (not Halcyon's code). */
async function decryptedMedia(token: string, file: Record<string, unknown>): Promise<Buffer> {
  const att = new EncryptedAttachment(await fetchMedia(token, file.url as string), JSON.stringify(file));
  try {
    return Buffer.from(Attachment.decrypt(att));
  } finally {
    att.free();
  }
}

/** Uploads as someone else; resolves with the mxc URI. */
async function uploadAs(token: string, bytes: Uint8Array, contentType = 'application/octet-stream'): Promise<string> {
  const res = await fetch(`${hs.baseUrl}/_matrix/media/v3/upload`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': contentType }, body: new Uint8Array(bytes) });
  const body = (await res.json()) as { content_uri: string };
  assert.equal(res.status, 200);
  return body.content_uri;
}

/** A running bot. */
async function runningBot(t: Parameters<typeof defer>[0]): Promise<Bot> {
  const bot = await newBot(t, hs);
  await bot.client.run(bot.token);
  return bot;
}

/** Resolves with the bot's first message matching `pred`. */
function botMessage(bot: { client: Bot['client'] }, pred: (m: Message) => boolean, what: string): Promise<Message> {
  const got = deferred<Message>();
  bot.client.on('message', (m) => {
    if (pred(m)) got.resolve(m);
  });
  return withTimeout(got.promise, WAIT_MS, what);
}


describe('plain media', () => {
  test('upload and download byte for byte; the config reports the server limit; the peer downloads it too', async (t) => {
    const bot = await runningBot(t);
    const peer = await newPeer(hs);
    assert.deepEqual(await bot.client.mediaConfig(), { uploadSize: SYNAPSE_LIMIT });
    const bytes = randomBytes(300_000);
    const mxc = await bot.client.uploadMedia(bytes, { filename: 'noise.bin' });
    assert.match(mxc, /^mxc:\/\/localhost\/[A-Za-z0-9_-]+$/);
    assert.deepEqual(await bot.client.downloadMedia(mxc), bytes);
    assert.deepEqual(await fetchMedia(peer.user.accessToken, mxc), bytes);
    await assert.rejects(bot.client.downloadMedia(mxc, { maxBytes: 299_999 }), { code: 'HALCYON_MEDIA_TOO_LARGE' });
    await assert.rejects(bot.client.downloadMedia('mxc://localhost/doesnotexist'), { code: 'HALCYON_MATRIX', status: 404 });
  });

  test('authenticated thumbnails of the requested size (crop and scale); a bad mxc is refused without a request', async (t) => {
    const bot = await runningBot(t);
    const mxc = await bot.client.uploadMedia(pngImage(400, 300), { filename: 'pic.png' });
    const crop = await bot.client.downloadThumbnail(mxc, { width: 96, height: 96, method: 'crop' });
    const c = imageSize(crop);
    assert.deepEqual([c.width, c.height], [96, 96], `crop: ${c.type} ${c.width}x${c.height}`);
    const scale = await bot.client.downloadThumbnail(mxc, { width: 320, height: 240, method: 'scale' });
    const s = imageSize(scale);
    assert.deepEqual([s.width, s.height], [320, 240], `scale: ${s.type} ${s.width}x${s.height}`);
    await assert.rejects(bot.client.downloadThumbnail('mxc://localhost/../../v3/account/whoami', { width: 96, height: 96 }), { code: 'HALCYON_MEDIA_URI_INVALID' });
    await assert.rejects(bot.client.downloadThumbnail('mxc://localhost/doesnotexist', { width: 96, height: 96 }), { code: 'HALCYON_MATRIX', status: 404 });
  });

  test('a 20 MB file is streamed up from its path in chunks and down as a stream of many chunks', async (t) => {
    const bot = await runningBot(t);
    const dir = tempDataDir(t);
    const path = join(dir, 'big.bin');
    // Written and hashed chunk by chunk: the test does not hold the file whole either.
    const hash = createHash('sha256');
    await pipeline(
      Readable.from((function* () {
        for (let i = 0; i < 20; i++) {
          const c = randomBytes(1024 * 1024);
          hash.update(c);
          yield c;
        }
      })()),
      createWriteStream(path),
    );
    const expected = hash.digest('hex');

    // Every read of the file on this thread goes through fs.read (that is what a read stream calls); record them.
    const reads: number[] = [];
    const realRead = fs.read;
    fs.read = ((fd: number, buf: Buffer, off: number, len: number, ...rest: unknown[]) => {
      reads.push(len);
      return (realRead as (...a: unknown[]) => void)(fd, buf, off, len, ...rest);
    }) as typeof fs.read;
    let mxc: string;
    try {
      mxc = await bot.client.uploadMedia(path);
    } finally {
      fs.read = realRead;
    }
    assert.ok(reads.length >= 20, `the file was read in ${reads.length} pieces`);
    assert.ok(Math.max(...reads) <= 1024 * 1024, `no read was larger than 1 MiB (largest ${Math.max(...reads)})`);

    const stream = await bot.client.downloadMediaStream(mxc);
    const down = createHash('sha256');
    let chunks = 0;
    let total = 0;
    let largest = 0;
    for await (const c of stream) {
      chunks++;
      total += (c as Buffer).length;
      largest = Math.max(largest, (c as Buffer).length);
      down.update(c as Buffer);
    }
    assert.equal(total, 20 * 1024 * 1024);
    assert.equal(down.digest('hex'), expected);
    assert.ok(chunks > 20 && largest < 20 * 1024 * 1024, `${chunks} chunks, the largest ${largest} bytes`);
  });

  test('sendImage/sendFile/sendAudio/sendVideo into a plain room, as the peer sees them', async (t) => {
    const bot = await runningBot(t);
    const peer = await newPeer(hs);
    const roomId = await roomWithBot(peer, bot.user.userId);
    const dir = tempDataDir(t);
    const img = pngImage(1200, 900, 255, 2); // grainy, as photos are: its thumbnail is far smaller
    const doc = randomBytes(5000);
    writeFileSync(join(dir, 'report.pdf'), Buffer.concat([Buffer.from('%PDF-1.7\n'), doc]));
    const clip = mp4({ timescale: 1000, duration: 3210, w: 640, h: 480 });
    writeFileSync(join(dir, 'clip.mp4'), clip);
    const sound = wav(8000, 1, 16, 1250);

    const imageId = await bot.client.sendImage(roomId, img, { filename: 'gradient.png', caption: 'a gradient' });
    const fileId = await bot.client.sendFile(roomId, join(dir, 'report.pdf'));
    const audioId = await bot.client.sendAudio(roomId, Readable.from([sound.subarray(0, 1000), sound.subarray(1000)]), { filename: 'beep.wav' });
    const videoId = await bot.client.sendVideo(roomId, join(dir, 'clip.mp4'));
    const seen = new Map<string, any>();
    for (const id of [imageId, fileId, audioId, videoId]) {
      seen.set(id, (await peer.waitFor((ev, rid) => rid === roomId && ev.event_id === id, WAIT_MS)).content);
    }
    const token = peer.user.accessToken;

    const image = seen.get(imageId);
    assert.equal(image.msgtype, 'm.image');
    assert.equal(image.body, 'a gradient');
    assert.equal(image.filename, 'gradient.png');
    assert.deepEqual(await fetchMedia(token, image.url), img);
    const { info } = image;
    assert.deepEqual([info.mimetype, info.size, info.w, info.h], ['image/png', img.length, 1200, 900]);
    assert.ok(isBlurhashValid(info['xyz.amorgan.blurhash']).result, 'a valid blurhash');
    assert.equal(info.thumbnail_info.mimetype, 'image/jpeg');
    assert.deepEqual([info.thumbnail_info.w, info.thumbnail_info.h], [800, 600]);
    const thumb = await fetchMedia(token, info.thumbnail_url);
    assert.equal(thumb.length, info.thumbnail_info.size);
    const decoded = jpeg.decode(thumb);
    assert.deepEqual([decoded.width, decoded.height], [800, 600]);

    const file = seen.get(fileId);
    assert.deepEqual([file.msgtype, file.body, file.filename], ['m.file', 'report.pdf', 'report.pdf']);
    assert.deepEqual(file.info, { mimetype: 'application/pdf', size: doc.length + 9 });
    assert.deepEqual(await fetchMedia(token, file.url), Buffer.concat([Buffer.from('%PDF-1.7\n'), doc]));

    const audio = seen.get(audioId);
    assert.deepEqual([audio.msgtype, audio.body, audio.filename], ['m.audio', 'beep.wav', 'beep.wav']);
    assert.deepEqual(audio.info, { mimetype: 'audio/wav', size: sound.length, duration: 1250 });
    assert.deepEqual(await fetchMedia(token, audio.url), sound);

    const video = seen.get(videoId);
    assert.deepEqual([video.msgtype, video.body], ['m.video', 'clip.mp4']);
    assert.deepEqual(video.info, { mimetype: 'video/mp4', size: clip.length, w: 640, h: 480, duration: 3210 });
    assert.deepEqual(await fetchMedia(token, video.url), clip);
    assert.deepEqual(bot.errors, []);
  });

  test("the bot downloads a peer's m.image byte for byte; a hostile mxc in an event is refused before any request", async (t) => {
    const bot = await runningBot(t);
    const peer = await newPeer(hs);
    const roomId = await roomWithBot(peer, bot.user.userId);
    const img = pngImage(64, 48);
    const url = await uploadAs(peer.user.accessToken, img, 'image/png');
    const got = botMessage(bot, (m) => m.msgtype === 'm.image', "the peer's image");
    await peer.sendEvent(roomId, 'm.room.message', { msgtype: 'm.image', body: 'cat.png', url, info: { mimetype: 'image/png', size: img.length, w: 64, h: 48 } });
    const message = await got;
    assert.equal(message.isMedia, true);
    assert.deepEqual(await message.download(), img);
    await assert.rejects(message.download({ maxBytes: 10 }), { code: 'HALCYON_MEDIA_TOO_LARGE' });

    for (const bad of ['mxc://localhost/../../v3/account/whoami', 'mxc://localhost/abc%2F..%2F..', 'mxc://localhost/abc?allow_redirect=true', 'https://evil.example/x.png']) {
      const hostile = botMessage(bot, (m) => m.body === bad, `the event with ${bad}`);
      await peer.sendEvent(roomId, 'm.room.message', { msgtype: 'm.image', body: bad, url: bad });
      await assert.rejects((await hostile).download(), { code: 'HALCYON_MEDIA_URI_INVALID' });
    }
    assert.deepEqual(bot.errors, []);
  });

  test('over the upload limit: HALCYON_MEDIA_TOO_LARGE before anything is sent (a path, and a stream past the limit)', async (t) => {
    const bot = await runningBot(t);
    const peer = await newPeer(hs);
    const roomId = await roomWithBot(peer, bot.user.userId);
    const path = join(tempDataDir(t), 'huge.bin');
    writeFileSync(path, '');
    truncateSync(path, SYNAPSE_LIMIT + 1); // sparse: no disk used
    // Refused by the client's own check (no status: no HTTP answer was involved), not by a 413 from the server.
    const refused = (e: HalcyonError) => e.code === 'HALCYON_MEDIA_TOO_LARGE' && e.status === undefined && /upload limit/.test(e.message);
    await assert.rejects(bot.client.sendFile(roomId, path), refused);
    await assert.rejects(bot.client.uploadMedia(path), refused);
    let produced = 0;
    const endless = new Readable({
      read() {
        produced += 1024 * 1024;
        this.push(Buffer.alloc(1024 * 1024));
      },
    });
    await assert.rejects(bot.client.uploadMedia(endless), refused);
    assert.ok(produced < SYNAPSE_LIMIT + 8 * 1024 * 1024, `the stream was read up to about the limit (${produced} bytes)`);
    assert.equal(statSync(path).size, SYNAPSE_LIMIT + 1);
  });
});

describe('encrypted media with a matrix-js-sdk peer', () => {
  test('the bot sends an encrypted image: the peer decrypts the event, and the attachment with crypto-wasm', async (t) => {
    const bot = await runningBot(t);
    const peer = await startJsPeer(hs);
    defer(t, () => peer.stop());
    const roomId = await peer.createEncryptedRoom({ invite: [bot.user.userId] });
    await peer.waitForMember(roomId, bot.user.userId, 'join');
    assert.equal(await bot.client.isRoomEncrypted(roomId), true);

    const img = pngImage(1000, 1000, 255, 2); // grainy, as photos are: its thumbnail is far smaller
    const eventId = await bot.client.sendImage(roomId, img, { filename: 'secret.png' });
    const got = await peer.waitForMessage(roomId, (m) => m.eventId === eventId);
    assert.equal(got.encrypted, true);
    assert.equal(got.decryptionFailure, undefined, `the peer could not decrypt: ${got.decryptionFailure}`);
    const content = got.content as any;
    assert.equal(content.msgtype, 'm.image');
    assert.equal(content.body, 'secret.png');
    assert.equal(content.url, undefined, 'no plain url in an encrypted room');
    assert.equal(content.info.thumbnail_url, undefined);
    assert.deepEqual([content.info.w, content.info.h, content.info.size, content.info.mimetype], [1000, 1000, img.length, 'image/png']);

    const token = peer.client.getAccessToken()!;
    const ciphertext = await fetchMedia(token, content.file.url);
    assert.notDeepEqual(ciphertext, img, 'the server holds ciphertext');
    assert.deepEqual(await decryptedMedia(token, content.file), img);
    const thumb = await decryptedMedia(token, content.info.thumbnail_file);
    assert.equal(thumb.length, content.info.thumbnail_info.size);
    assert.deepEqual([jpeg.decode(thumb).width, jpeg.decode(thumb).height], [800, 800]);
    assert.deepEqual(bot.errors, []);
  });

  test('the bot sends an encrypted file (a path), audio (a stream) and video: the peer decrypts the events, downloads and decrypts the attachments', async (t) => {
    const bot = await runningBot(t);
    const peer = await startJsPeer(hs);
    defer(t, () => peer.stop());
    const roomId = await peer.createEncryptedRoom({ invite: [bot.user.userId] });
    await peer.waitForMember(roomId, bot.user.userId, 'join');
    const dir = tempDataDir(t);
    const doc = Buffer.concat([Buffer.from('%PDF-1.7\n'), randomBytes(5000)]);
    writeFileSync(join(dir, 'report.pdf'), doc);
    const sound = wav(8000, 1, 16, 1250);
    const clip = mp4({ timescale: 1000, duration: 3210, w: 640, h: 480 });
    writeFileSync(join(dir, 'clip.mp4'), clip);

    const fileId = await bot.client.sendFile(roomId, join(dir, 'report.pdf'));
    const audioId = await bot.client.sendAudio(roomId, Readable.from([sound.subarray(0, 1000), sound.subarray(1000)]), { filename: 'beep.wav' });
    const videoId = await bot.client.sendVideo(roomId, join(dir, 'clip.mp4'));
    const token = peer.client.getAccessToken()!;
    const received = async (id: string) => {
      const m = await peer.waitForMessage(roomId, (x) => x.eventId === id);
      assert.equal(m.encrypted, true);
      assert.equal(m.decryptionFailure, undefined, `the peer could not decrypt: ${m.decryptionFailure}`);
      const content = m.content as any;
      assert.equal(content.url, undefined, 'no plain url in an encrypted room');
      return content;
    };

    const file = await received(fileId);
    assert.deepEqual([file.msgtype, file.body, file.filename], ['m.file', 'report.pdf', 'report.pdf']);
    assert.deepEqual(file.info, { mimetype: 'application/pdf', size: doc.length });
    assert.notDeepEqual(await fetchMedia(token, file.file.url), doc, 'the server holds ciphertext');
    assert.deepEqual(await decryptedMedia(token, file.file), doc);

    const audio = await received(audioId);
    assert.deepEqual([audio.msgtype, audio.body, audio.filename], ['m.audio', 'beep.wav', 'beep.wav']);
    assert.deepEqual(audio.info, { mimetype: 'audio/wav', size: sound.length, duration: 1250 });
    assert.deepEqual(await decryptedMedia(token, audio.file), sound);

    const video = await received(videoId);
    assert.deepEqual([video.msgtype, video.body], ['m.video', 'clip.mp4']);
    assert.deepEqual(video.info, { mimetype: 'video/mp4', size: clip.length, w: 640, h: 480, duration: 3210 });
    assert.deepEqual(await decryptedMedia(token, video.file), clip);
    assert.deepEqual(bot.errors, []);
  });

  test("the peer's encrypted attachment (crypto-wasm): the bot downloads and decrypts it; a tampered copy is a hash mismatch", async (t) => {
    const bot = await runningBot(t);
    const peer = await startJsPeer(hs);
    defer(t, () => peer.stop());
    const roomId = await peer.createEncryptedRoom({ invite: [bot.user.userId] });
    await peer.waitForMember(roomId, bot.user.userId, 'join');
    // Through the harness first: it shares the room key (then the direct sends below need no key requests).
    const warm = botMessage(bot, (m) => m.body === 'warm-up', 'the warm-up message');
    await peer.sendText(roomId, 'warm-up');
    assert.equal((await warm).isEncrypted, true);

    const plain = randomBytes(700_000);
    const att = Attachment.encrypt(plain);
    let info: Record<string, unknown>;
    let ciphertext: Uint8Array;
    try {
      info = JSON.parse(att.mediaEncryptionInfo!) as Record<string, unknown>;
      ciphertext = att.encryptedData;
    } finally {
      att.free();
    }
    const token = peer.client.getAccessToken()!;
    const file = { ...info, url: await uploadAs(token, ciphertext) };
    const tampered = Buffer.from(ciphertext);
    tampered[12345]! ^= 0x40;
    const badFile = { ...info, url: await uploadAs(token, tampered) };

    const good = botMessage(bot, (m) => m.body === 'data.bin', 'the encrypted m.file');
    const bad = botMessage(bot, (m) => m.body === 'tampered.bin', 'the tampered m.file');
    await peer.sendContent(roomId, { msgtype: 'm.file', body: 'data.bin', info: { size: plain.length, mimetype: 'application/octet-stream' }, file });
    await peer.sendContent(roomId, { msgtype: 'm.file', body: 'tampered.bin', info: { size: plain.length }, file: badFile });
    const message = await good;
    assert.equal(message.isEncrypted, true);
    assert.deepEqual(await message.download(), plain);
    assert.deepEqual(await bot.client.downloadContent(message.content), plain);
    await assert.rejects((await bad).download(), { code: 'HALCYON_ATTACHMENT_HASH_MISMATCH' });
    await assert.rejects(bot.client.downloadContent({ file: { ...file, hashes: {} } }), { code: 'HALCYON_ATTACHMENT_INVALID' });
    assert.deepEqual(bot.errors, []);
  });
});
