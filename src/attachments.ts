/**
 * Encrypted attachments (client-server API, "Sending encrypted attachments", version `v2`): AES-256-CTR with a
 * random key and IV, and a SHA-256 of the ciphertext that is checked before anything is decrypted.
 * Pure `node:crypto`; no Olm/Megolm involved, so this works on any thread.
 */
import { type Cipheriv, createCipheriv, createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { HalcyonError } from './errors.ts';

/** JWK + IV + hashes as in an m.file EncryptedFile object, minus `url` (the caller adds it after upload). */
export interface EncryptedFileInfo {
  /** Protocol version; always `v2`. */
  v: 'v2';
  /** The AES key as a JSON Web Key; `k` is 32 bytes, unpadded base64url. */
  key: { kty: 'oct'; key_ops: ['encrypt', 'decrypt']; alg: 'A256CTR'; k: string; ext: true };
  /** 16-byte initial counter block, unpadded standard base64; its low 64 bits are zero when we encrypt. */
  iv: string;
  /** SHA-256 of the ciphertext, unpadded standard base64. */
  hashes: { sha256: string };
}

const ALGORITHM = 'aes-256-ctr';
const TWO_POW_64 = 1n << 64n;

/**
 * Encrypts a file for upload to an encrypted room, with a fresh random key and IV.
 *
 * Invariants: `data` has exactly `plain.length` bytes and is a fresh `Uint8Array` owning its whole `ArrayBuffer`
 * (safe to transfer to another thread); `info.key.k` is 32 random bytes; the IV's high 64 bits are random and its
 * low 64 bits (the block counter) zero, so the counter never wraps; `info.hashes.sha256` hashes `data`; `plain` is
 * not modified. Two calls never share a key.
 */
export function encryptAttachment(plain: Uint8Array): { data: Uint8Array; info: EncryptedFileInfo } {
  const cipher = new AttachmentCipher();
  try {
    const data = new Uint8Array(plain.length);
    data.set(cipher.update(plain));
    return { data, info: cipher.finish() };
  } finally {
    cipher.dispose();
  }
}

/**
 * Verifies and decrypts a downloaded encrypted attachment, given the `file` object of its event (`url` and any
 * other extra fields are ignored).
 *
 * Invariants: `info` is validated and the SHA-256 of `data` compared with `info.hashes.sha256` before any byte is
 * decrypted, so it never returns plaintext for corrupted or tampered ciphertext; it throws a `HalcyonError` with code
 * `HALCYON_ATTACHMENT_INVALID` if `info` is malformed (`v` not `v2`, `key.kty` not `oct`, `key.alg` not `A256CTR`,
 * `key.key_ops` present without `decrypt`, key not 32 bytes, IV not 16 bytes, hash missing or not 32 bytes) or
 * `HALCYON_ATTACHMENT_HASH_MISMATCH` if the hash differs; messages never contain key material. Base64 fields may be
 * padded or unpadded, standard or URL-safe. The result has `data.length` bytes and is a fresh `Uint8Array` owning its
 * whole `ArrayBuffer`. The counter is the IV's low 64 bits, wrapping as the spec's 64-bit counter does.
 */
export function decryptAttachment(data: Uint8Array, info: EncryptedFileInfo | Record<string, unknown>): Uint8Array {
  if (!(data instanceof Uint8Array)) throw invalid('the ciphertext is not a Uint8Array');
  const { key, iv, sha256 } = parseAttachmentInfo(info);
  try {
    checkAttachmentHash(createHash('sha256').update(data).digest(), sha256);
    const out = new Uint8Array(data.length);
    out.set(new CtrStream(key, iv).update(data));
    return out;
  } finally {
    key.fill(0);
  }
}

/**
 * Validates an EncryptedFile object (see {@link decryptAttachment} for the rules) and decodes its key, IV and hash.
 *
 * Invariants: throws `HALCYON_ATTACHMENT_INVALID` (never quoting key material) unless `key` is 32 bytes, `iv` 16 and
 * `sha256` 32; the caller owns `key` and should zero it when done.
 */
export function parseAttachmentInfo(info: unknown): { key: Buffer; iv: Buffer; sha256: Buffer } {
  if (!isObject(info)) throw invalid('the file info is not an object');
  if (info.v !== 'v2') throw invalid(`unsupported version ${describe(info.v)} (only "v2" is supported)`);
  const jwk = info.key;
  if (!isObject(jwk)) throw invalid('key is missing or not an object');
  if (jwk.kty !== 'oct') throw invalid(`unsupported key type ${describe(jwk.kty)} (expected "oct")`);
  if (jwk.alg !== 'A256CTR') throw invalid(`unsupported algorithm ${describe(jwk.alg)} (expected "A256CTR")`);
  if (jwk.key_ops !== undefined && !(Array.isArray(jwk.key_ops) && jwk.key_ops.includes('decrypt'))) {
    throw invalid('key.key_ops does not allow "decrypt"');
  }
  const iv = base64(info.iv);
  if (iv?.length !== 16) throw invalid('iv is not 16 bytes of base64');
  const hashes = info.hashes;
  const sha256 = isObject(hashes) ? base64(hashes.sha256) : undefined;
  if (sha256?.length !== 32) throw invalid('hashes.sha256 is missing or not a 32-byte base64 hash');
  const key = base64(jwk.k);
  if (key?.length !== 32) {
    key?.fill(0);
    throw invalid('key.k is not a 32-byte base64 key');
  }
  return { key, iv, sha256 };
}

/** Throws `HALCYON_ATTACHMENT_HASH_MISMATCH` unless the ciphertext's SHA-256 `actual` equals `expected` (constant time). */
function checkAttachmentHash(actual: Buffer, expected: Buffer): void {
  if (!timingSafeEqual(actual, expected)) {
    throw new HalcyonError('HALCYON_ATTACHMENT_HASH_MISMATCH', 'the attachment does not match its SHA-256 hash (corrupted or tampered); not decrypted');
  }
}

/**
 * Encrypts an attachment chunk by chunk (so a big file never has to be in memory whole), with a fresh random key
 * and IV, hashing the ciphertext as it goes.
 *
 * Invariants: the IV's low 64 bits (the counter) start at zero, so the counter never wraps; {@link finish} returns
 * the `file` info (minus `url`) of exactly the bytes `update` returned, in order; {@link dispose} zeroes the key.
 */
export class AttachmentCipher {
  private readonly key = randomBytes(32);
  private readonly iv = Buffer.alloc(16);
  private readonly ctr: CtrStream;
  private readonly hash = createHash('sha256');

  constructor() {
    randomBytes(8).copy(this.iv, 0);
    this.ctr = new CtrStream(this.key, this.iv);
  }

  /** Encrypts the next chunk; the result has the chunk's length. */
  update(chunk: Uint8Array): Buffer {
    const out = this.ctr.update(chunk);
    this.hash.update(out);
    return out;
  }

  /** The EncryptedFile info (minus `url`) of everything encrypted so far; call once, after the last chunk. */
  finish(): EncryptedFileInfo {
    return {
      v: 'v2',
      key: { kty: 'oct', key_ops: ['encrypt', 'decrypt'], alg: 'A256CTR', k: this.key.toString('base64url'), ext: true },
      iv: unpadded(this.iv.toString('base64')),
      hashes: { sha256: unpadded(this.hash.digest('base64')) },
    };
  }

  /** Zeroes the key. */
  dispose(): void {
    this.key.fill(0);
  }
}

/**
 * AES-256-CTR over a stream of chunks with the spec's 64-bit counter (the IV's low half). OpenSSL increments all
 * 128 bits, which differs only if the low half wraps; then the cipher restarts with the low half at zero.
 *
 * Invariants: each `update` returns exactly as many bytes as it was given; CTR is symmetric, so this both encrypts
 * and decrypts.
 */
class CtrStream {
  private cipher: Cipheriv;
  /** Bytes left before the counter's low half wraps (-1n once it has wrapped: it cannot wrap again within 2^68 bytes). */
  private left: bigint;

  constructor(
    private readonly key: Buffer,
    private readonly iv: Buffer,
  ) {
    this.cipher = createCipheriv(ALGORITHM, key, iv);
    this.left = (TWO_POW_64 - iv.readBigUInt64BE(8)) * 16n;
  }

  /** Processes the next chunk. */
  update(chunk: Uint8Array): Buffer {
    if (this.left < 0n || BigInt(chunk.length) <= this.left) {
      if (this.left >= 0n) this.left -= BigInt(chunk.length);
      return this.cipher.update(chunk);
    }
    const split = Number(this.left);
    const head = this.cipher.update(chunk.subarray(0, split));
    const wrapped = Buffer.alloc(16);
    this.iv.copy(wrapped, 0, 0, 8);
    this.cipher = createCipheriv(ALGORITHM, this.key, wrapped);
    this.left = -1n;
    return Buffer.concat([head, this.cipher.update(chunk.subarray(split))]);
  }
}

/** Strict base64 decode: standard or URL-safe alphabet, padded or not; anything else is `undefined`. */
function base64(s: unknown): Buffer | undefined {
  if (typeof s !== 'string' || !/^[A-Za-z0-9+/_-]*={0,2}$/.test(s)) return undefined;
  const body = unpadded(s);
  if (body.length % 4 === 1) return undefined;
  if (body.length !== s.length && s.length % 4 !== 0) return undefined;
  return Buffer.from(body, 'base64'); // Node's base64 decoder also accepts the URL-safe alphabet
}

function unpadded(s: string): string {
  return s.replace(/=+$/, '');
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function describe(v: unknown): string {
  return typeof v === 'string' ? JSON.stringify(v.slice(0, 32)) : v === undefined ? '(missing)' : typeof v;
}

function invalid(why: string): HalcyonError {
  return new HalcyonError('HALCYON_ATTACHMENT_INVALID', `invalid encrypted attachment info: ${why}`);
}
