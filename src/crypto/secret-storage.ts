/**
 * Secret storage (the spec's "Secrets" module, SSSS) and the recovery key, in TypeScript: crypto-wasm has no API
 * for either. Pure functions over node:crypto; reading and writing the account data is the caller's (identity.ts).
 *
 * - A secret storage key is 32 random bytes with an ID. Its description, account data
 *   `m.secret_storage.key.<id>`, holds an `iv` and the `mac` of 32 zero bytes encrypted with it, so a key typed
 *   back in can be checked before anything is decrypted with it. `m.secret_storage.default_key` names the key
 *   clients use.
 * - A secret (account data named after it, e.g. `m.cross_signing.master`) is encrypted per key in its
 *   `encrypted[<key id>]` as `m.secret_storage.v1.aes-hmac-sha2`: HKDF-SHA-256 of the key (32 zero bytes of salt,
 *   the secret's name as info) gives an AES-256-CTR key and an HMAC-SHA-256 key; the MAC covers the ciphertext.
 * - The recovery key is the key as a person writes it down: base58 of 0x8B 0x01, the 32 key bytes and a parity
 *   byte (the XOR of all the bytes before it), in groups of 4 characters.
 *
 * Written base64 is unpadded (what the spec says); padded base64, which some clients write, is read too.
 */
import { createCipheriv, createDecipheriv, createHmac, hkdfSync, randomBytes, timingSafeEqual } from 'node:crypto';
import { HalcyonError } from '../errors.ts';

/** The one secret storage algorithm of the spec. */
export const SECRET_STORAGE_ALGORITHM = 'm.secret_storage.v1.aes-hmac-sha2';
/** Account data type naming the default key. */
export const DEFAULT_KEY_TYPE = 'm.secret_storage.default_key';
/** Account data type of the description of key `keyId`. */
export const keyDescriptionType = (keyId: string): string => `m.secret_storage.key.${keyId}`;

/** A key description (`m.secret_storage.key.<id>`), as far as this algorithm reads it. */
export interface KeyDescription {
  algorithm: string;
  name?: string;
  /** Optional in the spec: without `iv` and `mac`, any key is taken as the right one. */
  iv?: string;
  mac?: string;
  /** For a key derived from a passphrase (not supported here: Halcyon takes the recovery key only). */
  passphrase?: unknown;
}

/** One secret encrypted with one key: the value of `encrypted[<key id>]`. */
export interface EncryptedSecret {
  iv: string;
  ciphertext: string;
  mac: string;
}

const PREFIX = [0x8b, 0x01] as const;
const KEY_BYTES = 32;
const BASE58 = '123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz';

function invalidKey(why: string): HalcyonError {
  return new HalcyonError('HALCYON_RECOVERY_KEY_INVALID', `the recovery key is not valid: ${why}`);
}

/** The recovery key of a 32-byte secret storage key, as the spec prints it (base58, groups of 4). */
export function encodeRecoveryKey(key: Uint8Array): string {
  if (key.length !== KEY_BYTES) throw new HalcyonError('HALCYON_INVALID_ARGUMENT', `a secret storage key has ${KEY_BYTES} bytes, not ${key.length}`);
  const bytes = new Uint8Array(PREFIX.length + KEY_BYTES + 1);
  bytes.set(PREFIX, 0);
  bytes.set(key, PREFIX.length);
  bytes[bytes.length - 1] = bytes.subarray(0, -1).reduce((p, b) => p ^ b, 0);
  return base58Encode(bytes).match(/.{1,4}/g)!.join(' ');
}

/**
 * The 32 key bytes of a recovery key; whitespace is ignored. Throws `HALCYON_RECOVERY_KEY_INVALID` saying what is
 * wrong (a character outside base58, the length, the prefix, the parity: a typo), never echoing the key.
 */
export function decodeRecoveryKey(text: string): Uint8Array {
  if (typeof text !== 'string') throw invalidKey('it is not a string');
  const compact = text.replace(/\s+/g, '');
  if (compact === '') throw invalidKey('it is empty');
  const bad = [...compact].findIndex((c) => !BASE58.includes(c));
  if (bad >= 0) throw invalidKey(`character ${bad + 1} is not in the base58 alphabet (0, O, I and l never appear in one)`);
  const bytes = base58Decode(compact);
  if (bytes.length !== PREFIX.length + KEY_BYTES + 1) throw invalidKey(`it encodes ${bytes.length} bytes, not ${PREFIX.length + KEY_BYTES + 1} (a character missing or extra?)`);
  if (bytes[0] !== PREFIX[0] || bytes[1] !== PREFIX[1]) throw invalidKey('it does not start with the recovery key prefix (is it a key of another kind?)');
  const parity = bytes.subarray(0, -1).reduce((p, b) => p ^ b, 0);
  if (parity !== bytes[bytes.length - 1]) throw invalidKey('its parity byte does not match (a character was mistyped)');
  return bytes.slice(PREFIX.length, PREFIX.length + KEY_BYTES);
}

/** A new random secret storage key (32 bytes). */
export function newSecretStorageKey(): Uint8Array {
  return new Uint8Array(randomBytes(KEY_BYTES));
}

/** A new key ID: 32 random letters and digits, as other clients make them. */
export function newKeyId(): string {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
  // 62 does not divide 256: bytes from 248 up are dropped so that every character is equally likely.
  const out: string[] = [];
  while (out.length < 32) for (const b of randomBytes(48)) if (b < 248 && out.length < 32) out.push(alphabet[b % 62]!);
  return out.join('');
}

/** The description of `key` to store as `m.secret_storage.key.<id>`: its algorithm, and the `iv`/`mac` key check. */
export function describeKey(key: Uint8Array, name?: string): KeyDescription {
  const check = encryptSecret(key, '', new Uint8Array(32));
  return { algorithm: SECRET_STORAGE_ALGORITHM, ...(name === undefined ? {} : { name }), iv: check.iv, mac: check.mac };
}

/**
 * Whether `key` is the key `description` describes: the MAC of 32 zero bytes encrypted with the description's IV
 * matches. A description without `iv` and `mac` accepts any key (the spec's rule). Throws
 * `HALCYON_SECRET_STORAGE` for a description of another algorithm or with a malformed `iv`/`mac`.
 */
export function checkKey(key: Uint8Array, description: KeyDescription): boolean {
  if (description.algorithm !== SECRET_STORAGE_ALGORITHM) {
    throw new HalcyonError('HALCYON_SECRET_STORAGE', `the secret storage key uses the algorithm ${JSON.stringify(description.algorithm)}, not ${SECRET_STORAGE_ALGORITHM}`);
  }
  if (description.iv === undefined && description.mac === undefined) return true;
  const iv = base64Field(description.iv, 'the key description', 'iv', 16);
  const mac = base64Field(description.mac, 'the key description', 'mac', 32);
  return timingSafeEqual(mac, fromBase64(encryptSecret(key, '', new Uint8Array(32), iv).mac)!);
}

/**
 * Encrypts `secret` (a string, or raw bytes for the key check) for the account data named `name`. `iv` is for
 * tests (vectors); by default 16 random bytes with bit 63 cleared, so that implementations with a 64-bit CTR
 * counter never wrap.
 */
export function encryptSecret(key: Uint8Array, name: string, secret: string | Uint8Array, iv?: Uint8Array): EncryptedSecret {
  const nonce = iv ?? new Uint8Array(randomBytes(16));
  if (!iv) nonce[8] = nonce[8]! & 0x7f;
  const { aesKey, macKey } = deriveKeys(key, name);
  const plain = typeof secret === 'string' ? Buffer.from(secret, 'utf8') : secret;
  const cipher = createCipheriv('aes-256-ctr', aesKey, nonce);
  const ciphertext = Buffer.concat([cipher.update(plain), cipher.final()]);
  return { iv: toBase64(nonce), ciphertext: toBase64(ciphertext), mac: toBase64(createHmac('sha256', macKey).update(ciphertext).digest()) };
}

/**
 * Decrypts a secret of the account data named `name`; throws `HALCYON_SECRET_STORAGE` when its MAC does not match
 * (another key, or tampered with) or its fields are malformed. Nothing is decrypted before the MAC is checked.
 */
export function decryptSecret(key: Uint8Array, name: string, data: unknown): string {
  const d = (typeof data === 'object' && data !== null ? data : {}) as Record<string, unknown>;
  const what = `the secret ${name}`;
  const iv = base64Field(d.iv, what, 'iv', 16);
  const ciphertext = base64Field(d.ciphertext, what, 'ciphertext');
  const mac = base64Field(d.mac, what, 'mac', 32);
  const { aesKey, macKey } = deriveKeys(key, name);
  if (!timingSafeEqual(mac, createHmac('sha256', macKey).update(ciphertext).digest())) {
    throw new HalcyonError('HALCYON_SECRET_STORAGE', `${what} does not match its MAC: it was encrypted with another key, or altered`);
  }
  const decipher = createDecipheriv('aes-256-ctr', aesKey, iv);
  return Buffer.concat([decipher.update(ciphertext), decipher.final()]).toString('utf8');
}

/**
 * The secret in account data `content` (of type `name`) encrypted for key `keyId`, decrypted; throws
 * `HALCYON_SECRET_STORAGE` when it is not stored for that key, or does not decrypt.
 */
export function readSecret(key: Uint8Array, keyId: string, name: string, content: unknown): string {
  const encrypted = (content as { encrypted?: unknown } | null | undefined)?.encrypted;
  const entry = typeof encrypted === 'object' && encrypted !== null ? (encrypted as Record<string, unknown>)[keyId] : undefined;
  if (entry === undefined) throw new HalcyonError('HALCYON_SECRET_STORAGE', `secret storage holds no ${name} for the key ${keyId}`);
  return decryptSecret(key, name, entry);
}

/** Unpadded base64 (the spec's encoding of binary values). */
export function toBase64(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64').replace(/=+$/, '');
}

/**
 * Bytes of base64 text, padded or not; null for anything else. (Buffer.from would silently skip stray
 * characters, and a secret with a character dropped must not become another secret.)
 */
export function fromBase64(text: unknown): Uint8Array | null {
  if (typeof text !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(text)) return null;
  const bare = text.replace(/=+$/, '');
  if (bare.length % 4 === 1) return null;
  return new Uint8Array(Buffer.from(bare, 'base64'));
}

function base64Field(v: unknown, what: string, field: string, length?: number): Buffer {
  const bytes = fromBase64(v);
  if (!bytes || (length !== undefined && bytes.length !== length)) {
    throw new HalcyonError('HALCYON_SECRET_STORAGE', `${what} has no valid ${field} (base64${length === undefined ? '' : ` of ${length} bytes`})`);
  }
  return Buffer.from(bytes);
}

function deriveKeys(key: Uint8Array, name: string): { aesKey: Buffer; macKey: Buffer } {
  const out = Buffer.from(hkdfSync('sha256', key, new Uint8Array(32), Buffer.from(name, 'utf8'), 64));
  return { aesKey: out.subarray(0, 32), macKey: out.subarray(32) };
}

function base58Encode(bytes: Uint8Array): string {
  let n = BigInt(`0x${Buffer.from(bytes).toString('hex') || '0'}`);
  let out = '';
  while (n > 0n) {
    out = BASE58[Number(n % 58n)]! + out;
    n /= 58n;
  }
  // Each leading zero byte is one leading '1'.
  for (const b of bytes) {
    if (b !== 0) break;
    out = '1' + out;
  }
  return out;
}

function base58Decode(text: string): Uint8Array {
  let n = 0n;
  for (const c of text) n = n * 58n + BigInt(BASE58.indexOf(c));
  const hex = n === 0n ? '' : n.toString(16);
  const body = Buffer.from(hex.length % 2 ? `0${hex}` : hex, 'hex');
  let zeros = 0;
  while (zeros < text.length && text[zeros] === '1') zeros++;
  const out = new Uint8Array(zeros + body.length);
  out.set(body, zeros);
  return out;
}
