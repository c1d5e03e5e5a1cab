import assert from 'node:assert/strict';
import { createHash, randomBytes, webcrypto } from 'node:crypto';
import { test } from 'node:test';
import { Attachment, EncryptedAttachment } from '@matrix-org/matrix-sdk-crypto-wasm';
import { decryptAttachment, encryptAttachment, type EncryptedFileInfo } from '../../src/attachments.ts';

const UNPADDED_B64 = /^[A-Za-z0-9+/]*$/;
const UNPADDED_B64URL = /^[A-Za-z0-9_-]*$/;

function code(expected: string) {
  return (e: unknown) => {
    assert.equal((e as { name?: string }).name, 'HalcyonError');
    assert.equal((e as { code?: string }).code, expected);
    return true;
  };
}

function clone<T>(v: T): T {
  return structuredClone(v);
}

test('round trip: empty, 1 byte, 1 MB; the info has the v2 shape', () => {
  for (const size of [0, 1, 1024 * 1024]) {
    const plain = new Uint8Array(randomBytes(size));
    const before = Buffer.from(plain);
    const { data, info } = encryptAttachment(plain);
    assert.equal(data.length, size);
    assert.equal(data.byteOffset, 0);
    assert.equal(data.buffer.byteLength, size, 'the ciphertext owns its whole ArrayBuffer');
    assert.deepEqual(Buffer.from(plain), before, 'the input is not modified');
    if (size > 16) assert.notDeepEqual(Buffer.from(data), before);

    assert.equal(info.v, 'v2');
    assert.deepEqual({ ...info.key, k: undefined }, { kty: 'oct', key_ops: ['encrypt', 'decrypt'], alg: 'A256CTR', k: undefined, ext: true });
    assert.match(info.key.k, UNPADDED_B64URL);
    assert.equal(Buffer.from(info.key.k, 'base64url').length, 32);
    assert.match(info.iv, UNPADDED_B64);
    const iv = Buffer.from(info.iv, 'base64');
    assert.equal(iv.length, 16);
    assert.deepEqual(iv.subarray(8), Buffer.alloc(8), 'the counter half of the IV is zero');
    assert.match(info.hashes.sha256, UNPADDED_B64);
    assert.equal(info.hashes.sha256, createHash('sha256').update(data).digest('base64').replace(/=+$/, ''));

    const out = decryptAttachment(data, info);
    assert.equal(out.buffer.byteLength, size);
    assert.deepEqual(Buffer.from(out), before);
    // survives a JSON round trip, with extra EncryptedFile fields such as `url`
    assert.deepEqual(Buffer.from(decryptAttachment(data, { ...JSON.parse(JSON.stringify(info)), url: 'mxc://x/y' })), before);
  }
});

test('keys and IVs are fresh for every call', () => {
  const a = encryptAttachment(new Uint8Array(32));
  const b = encryptAttachment(new Uint8Array(32));
  assert.notEqual(a.info.key.k, b.info.key.k);
  assert.notEqual(a.info.iv, b.info.iv);
  assert.notDeepEqual(Buffer.from(a.data), Buffer.from(b.data));
});

test('tampered ciphertext or wrong hash is HALCYON_ATTACHMENT_HASH_MISMATCH', () => {
  const { data, info } = encryptAttachment(new TextEncoder().encode('hello, attachment'));
  const flipped = new Uint8Array(data);
  flipped[3]! ^= 1;
  assert.throws(() => decryptAttachment(flipped, info), code('HALCYON_ATTACHMENT_HASH_MISMATCH'));
  assert.throws(() => decryptAttachment(data.subarray(1), info), code('HALCYON_ATTACHMENT_HASH_MISMATCH'));
  assert.throws(() => decryptAttachment(new Uint8Array([...data, 0]), info), code('HALCYON_ATTACHMENT_HASH_MISMATCH'));
  const otherHash = clone(info);
  otherHash.hashes.sha256 = createHash('sha256').update('something else').digest('base64').replace(/=+$/, '');
  assert.throws(() => decryptAttachment(data, otherHash), code('HALCYON_ATTACHMENT_HASH_MISMATCH'));
});

test('malformed info is HALCYON_ATTACHMENT_INVALID, and the message never contains the key', () => {
  const { data, info } = encryptAttachment(new TextEncoder().encode('payload'));
  const variants: [string, unknown][] = [];
  const add = (name: string, edit: (i: Record<string, any>) => unknown) => {
    const i = clone(info) as unknown as Record<string, any>;
    const r = edit(i);
    variants.push([name, r === undefined ? i : r]);
  };
  add('null', () => null);
  add('string', () => 'info');
  add('array', () => [info]);
  add('v missing', (i) => void delete i.v);
  add('v1', (i) => void (i.v = 'v1'));
  add('V2', (i) => void (i.v = 'V2'));
  add('key missing', (i) => void delete i.key);
  add('key string', (i) => void (i.key = info.key.k));
  add('kty', (i) => void (i.key.kty = 'RSA'));
  add('alg missing', (i) => void delete i.key.alg);
  add('alg', (i) => void (i.key.alg = 'A128CTR'));
  add('key_ops without decrypt', (i) => void (i.key.key_ops = ['encrypt']));
  add('key_ops not an array', (i) => void (i.key.key_ops = 'decrypt'));
  add('k missing', (i) => void delete i.key.k);
  add('k number', (i) => void (i.key.k = 42));
  add('k 16 bytes', (i) => void (i.key.k = randomBytes(16).toString('base64url')));
  add('k 33 bytes', (i) => void (i.key.k = randomBytes(33).toString('base64url')));
  add('k not base64', (i) => void (i.key.k = `${info.key.k.slice(0, -1)}!`));
  add('k bad length', (i) => void (i.key.k = `${info.key.k}A`));
  add('iv missing', (i) => void delete i.iv);
  add('iv 8 bytes', (i) => void (i.iv = randomBytes(8).toString('base64')));
  add('iv 17 bytes', (i) => void (i.iv = randomBytes(17).toString('base64')));
  add('iv with spaces', (i) => void (i.iv = ` ${info.iv}`));
  add('hashes missing', (i) => void delete i.hashes);
  add('sha256 missing', (i) => void (i.hashes = { sha512: info.hashes.sha256 }));
  add('sha256 short', (i) => void (i.hashes.sha256 = info.hashes.sha256.slice(0, 20)));
  add('sha256 not base64', (i) => void (i.hashes.sha256 = 'not base64 at all!'));
  add('bad padding', (i) => void (i.hashes.sha256 = `${info.hashes.sha256}===`));
  for (const [name, bad] of variants) {
    assert.throws(
      () => decryptAttachment(data, bad as Record<string, unknown>),
      (e: unknown) => {
        code('HALCYON_ATTACHMENT_INVALID')(e);
        assert.ok(!(e as Error).message.includes(info.key.k), `${name}: message leaks the key`);
        return true;
      },
      name,
    );
  }
  assert.throws(() => decryptAttachment('abc' as unknown as Uint8Array, info), code('HALCYON_ATTACHMENT_INVALID'));
});

test('accepts padded or unpadded, standard or URL-safe base64, and key_ops in any order', () => {
  const plain = randomBytes(1000);
  const { data, info } = encryptAttachment(plain);
  const raw = { k: Buffer.from(info.key.k, 'base64url'), iv: Buffer.from(info.iv, 'base64'), h: Buffer.from(info.hashes.sha256, 'base64') };
  for (const enc of ['base64', 'base64url'] as const) {
    for (const pad of [true, false]) {
      const s = (b: Buffer) => {
        const t = b.toString('base64');
        const u = enc === 'base64url' ? t.replace(/\+/g, '-').replace(/\//g, '_') : t;
        return pad ? u : u.replace(/=+$/, '');
      };
      const variant = { ...clone(info), key: { ...info.key, k: s(raw.k), key_ops: ['decrypt', 'encrypt'] }, iv: s(raw.iv), hashes: { sha256: s(raw.h) } };
      assert.deepEqual(Buffer.from(decryptAttachment(data, variant)), plain, `${enc} padded=${pad}`);
    }
  }
});

test('the counter is the low 64 bits of the IV and wraps like WebCrypto AES-CTR with length 64', async () => {
  // Not something we produce (our counter half starts at zero), but another client might send it.
  const key = randomBytes(32);
  const iv = Buffer.concat([randomBytes(8), Buffer.from('fffffffffffffffe', 'hex')]);
  const plain = randomBytes(16 * 5 + 7);
  const ck = await webcrypto.subtle.importKey('raw', key, 'AES-CTR', false, ['encrypt']);
  const data = new Uint8Array(await webcrypto.subtle.encrypt({ name: 'AES-CTR', counter: iv, length: 64 }, ck, plain));
  const info: EncryptedFileInfo = {
    v: 'v2',
    key: { kty: 'oct', key_ops: ['encrypt', 'decrypt'], alg: 'A256CTR', k: key.toString('base64url'), ext: true },
    iv: iv.toString('base64'),
    hashes: { sha256: createHash('sha256').update(data).digest('base64') },
  };
  assert.deepEqual(Buffer.from(decryptAttachment(data, info)), plain);
});

test('interop: matrix-sdk-crypto-wasm decrypts ours', () => {
  for (const size of [0, 1, 4097, 1024 * 1024]) {
    const plain = randomBytes(size);
    const { data, info } = encryptAttachment(plain);
    const att = new EncryptedAttachment(data, JSON.stringify(info));
    try {
      assert.deepEqual(Buffer.from(Attachment.decrypt(att)), plain, `size ${size}`);
    } finally {
      att.free();
    }
  }
});

test('interop: we decrypt matrix-sdk-crypto-wasm\'s, and reject it tampered', () => {
  for (const size of [0, 1, 4097, 1024 * 1024]) {
    const plain = randomBytes(size);
    const att = Attachment.encrypt(plain);
    try {
      const info = JSON.parse(att.mediaEncryptionInfo!) as Record<string, unknown>;
      const data = att.encryptedData;
      assert.deepEqual(Buffer.from(decryptAttachment(data, info)), plain, `size ${size}`);
      if (size > 0) {
        data[size - 1]! ^= 0x80;
        assert.throws(() => decryptAttachment(data, info), code('HALCYON_ATTACHMENT_HASH_MISMATCH'));
      }
    } finally {
      att.free();
    }
  }
});
