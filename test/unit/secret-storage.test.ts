/**
 * Secret storage (`m.secret_storage.v1.aes-hmac-sha2`) and the recovery key (the spec's "cryptographic key
 * representation"), against fixed vectors and against matrix-js-sdk's own implementation of the same functions.
 *
 * The spec describes both algorithms but publishes no numeric vectors for them, so the fixed vectors are those of
 * matrix-rust-sdk's test suite (crates/matrix-sdk-crypto/src/secret_storage.rs: `from_account_data_and_base58`,
 * `base58_parsing`), which is the code crypto-wasm is built from; the AES/HMAC outputs are checked byte for byte
 * against matrix-js-sdk 43 (`encryptAESSecretStorageItem`, `calculateKeyCheck`, `encodeRecoveryKey`) with the same
 * inputs, both ways.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { decodeRecoveryKey as jsDecodeRecoveryKey, encodeRecoveryKey as jsEncodeRecoveryKey } from 'matrix-js-sdk/lib/crypto-api/recovery-key.js';
import { calculateKeyCheck } from 'matrix-js-sdk/lib/secret-storage.js';
import jsDecryptSecret from 'matrix-js-sdk/lib/utils/decryptAESSecretStorageItem.js';
import jsEncryptSecret from 'matrix-js-sdk/lib/utils/encryptAESSecretStorageItem.js';
import {
  checkKey,
  decodeRecoveryKey,
  decryptSecret,
  describeKey,
  encodeRecoveryKey,
  encryptSecret,
  fromBase64,
  newKeyId,
  newSecretStorageKey,
  readSecret,
  SECRET_STORAGE_ALGORITHM,
} from '../../src/crypto/secret-storage.ts';
import type { HalcyonError } from '../../src/errors.ts';

/** matrix-rust-sdk `base58_parsing`: a recovery key (with stray whitespace) and the key bytes it encodes. */
const RUST_KEY_TEXT = 'EsT           pRvZTnjck8    YrhRAtw XLS84Nr2r9S9LGAWDaExVAPBvLRK   ';
const RUST_KEY_BYTES = Uint8Array.from([
  159, 189, 70, 187, 52, 81, 113, 198, 246, 2, 44, 154, 37, 213, 104, 27, 165, 78, 236, 106, 108, 73, 83, 243, 173, 192, 185, 110, 157, 145, 173, 163,
]);
/** matrix-rust-sdk `from_account_data_and_base58`: a recovery key and the key description it unlocks (padded base64). */
const RUST_DESCRIBED_KEY = 'EsTj 3yST y93F SLpB jJsz eAXc 2XzA ygD3 w69H fGaN TKBj jXEd';
const RUST_DESCRIPTION = { algorithm: SECRET_STORAGE_ALGORITHM, iv: 'xv5b6/p3ExEw++wTyfSHEg==', mac: 'ujBBbXahnTAMkmPUX2/0+VTfUh63pGyVRuBcDMgmJC8=' };

const code = (c: string) => (e: unknown) => (e as HalcyonError).code === c;
const key32 = () => Uint8Array.from({ length: 32 }, (_, i) => i);
const iv16 = (b: number) => Uint8Array.from({ length: 16 }, (_, i) => (i * 7 + b) & 0x7f);
const b64 = (bytes: Uint8Array) => Buffer.from(bytes).toString('base64');

test('recovery key: decodes the rust-sdk vector (whitespace ignored) and encodes it back in groups of 4', () => {
  assert.deepEqual(decodeRecoveryKey(RUST_KEY_TEXT), RUST_KEY_BYTES);
  const printed = encodeRecoveryKey(RUST_KEY_BYTES);
  assert.equal(printed, 'EsTp RvZT njck 8Yrh RAtw XLS8 4Nr2 r9S9 LGAW DaEx VAPB vLRK');
  assert.equal(printed.replace(/ /g, ''), RUST_KEY_TEXT.replace(/\s/g, ''));
});

test('recovery key: the rust-sdk bad keys are refused with HALCYON_RECOVERY_KEY_INVALID saying why, never echoing the key', () => {
  const cases: Array<[string, RegExp]> = [
    ['EsTpRvZTnjck8YrhRAtwXLS84Nr2r9S9LGAWDaExVAPBvLRk', /parity/],
    ['AATpRvZTnjck8YrhRAtwXLS84Nr2r9S9LGAWDaExVAPBvLRk', /prefix/],
    ['AATpRvZTnjck8YrhRAtwXLS84Nr2r9S9', /encodes \d+ bytes, not 35/],
    ['AATpRvZTnjck8YrhRAtwXLS84Nr0OIl', /not in the base58 alphabet/],
    ['   ', /empty/],
  ];
  for (const [text, why] of cases) {
    assert.throws(() => decodeRecoveryKey(text), (e: HalcyonError) => e.code === 'HALCYON_RECOVERY_KEY_INVALID' && why.test(e.message) && !e.message.includes(text.trim() || '\u0000'), text);
  }
});

test('recovery key: the same text as matrix-js-sdk for the same bytes, and each decodes the other\'s', () => {
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 32, maxLength: 32 }), (bytes) => {
      const ours = encodeRecoveryKey(bytes);
      assert.equal(ours, jsEncodeRecoveryKey(bytes));
      assert.deepEqual(Uint8Array.from(jsDecodeRecoveryKey(ours)), bytes);
      assert.deepEqual(decodeRecoveryKey(ours), bytes);
    }),
    { numRuns: 200 },
  );
  // Leading zero bytes are leading '1's in base58: the prefix makes them impossible here, but not in the key.
  assert.deepEqual(decodeRecoveryKey(encodeRecoveryKey(new Uint8Array(32))), new Uint8Array(32));
});

test('key check: the rust-sdk key description accepts its key and refuses another (MAC of 32 zero bytes)', () => {
  assert.equal(checkKey(decodeRecoveryKey(RUST_DESCRIBED_KEY), RUST_DESCRIPTION), true);
  assert.equal(checkKey(RUST_KEY_BYTES, RUST_DESCRIPTION), false);
  // Without iv and mac, any key is taken (the spec's rule).
  assert.equal(checkKey(RUST_KEY_BYTES, { algorithm: SECRET_STORAGE_ALGORITHM }), true);
  assert.throws(() => checkKey(RUST_KEY_BYTES, { ...RUST_DESCRIPTION, algorithm: 'm.secret_storage.custom' }), code('HALCYON_SECRET_STORAGE'));
  assert.throws(() => checkKey(RUST_KEY_BYTES, { ...RUST_DESCRIPTION, iv: b64(new Uint8Array(14)) }), code('HALCYON_SECRET_STORAGE'));
  assert.throws(() => checkKey(RUST_KEY_BYTES, { ...RUST_DESCRIPTION, mac: b64(new Uint8Array(10)) }), code('HALCYON_SECRET_STORAGE'));
});

test('key check: describeKey gives what matrix-js-sdk computes for the same IV, and js-sdk\'s description checks here', async () => {
  const key = key32();
  const ours = describeKey(key);
  assert.equal(ours.algorithm, SECRET_STORAGE_ALGORITHM);
  assert.equal(fromBase64(ours.iv)![8]! & 0x80, 0, 'bit 63 of the IV is cleared');
  const theirs = await calculateKeyCheck(key as Uint8Array<ArrayBuffer>, ours.iv);
  assert.equal(fromBase64(theirs.mac)!.toString(), fromBase64(ours.mac)!.toString());
  assert.equal(checkKey(key, { algorithm: SECRET_STORAGE_ALGORITHM, iv: theirs.iv, mac: theirs.mac }), true);
  assert.equal(checkKey(newSecretStorageKey(), ours), false);
});

test('secrets: encryption equals matrix-js-sdk\'s byte for byte (fixed IV), and each decrypts the other\'s', async () => {
  for (const [name, secret] of [['m.cross_signing.master', 'seed+of/the=master key'], ['m.megolm_backup.v1', ''], ['org.example.unicode', 'ключ 🔑']] as const) {
    const key = newSecretStorageKey();
    const iv = iv16(name.length);
    const ours = encryptSecret(key, name, secret, iv);
    const theirs = await jsEncryptSecret(secret, key as Uint8Array<ArrayBuffer>, name, b64(iv));
    for (const f of ['iv', 'ciphertext', 'mac'] as const) assert.deepEqual(fromBase64(ours[f]), fromBase64(theirs[f]), `${name}: ${f}`);
    assert.doesNotMatch(ours.iv + ours.ciphertext + ours.mac, /=/, 'written base64 is unpadded');
    assert.equal(decryptSecret(key, name, theirs), secret, 'js-sdk (padded base64) decrypts here');
    assert.equal(await jsDecryptSecret(encryptSecret(key, name, secret), key as Uint8Array<ArrayBuffer>, name), secret, 'ours decrypts in js-sdk');
  }
});

test('secrets: a wrong key, another name, or one altered byte fails the MAC (HALCYON_SECRET_STORAGE) before decrypting', () => {
  const key = newSecretStorageKey();
  const sealed = encryptSecret(key, 'm.cross_signing.self_signing', 'a secret');
  assert.throws(() => decryptSecret(newSecretStorageKey(), 'm.cross_signing.self_signing', sealed), code('HALCYON_SECRET_STORAGE'));
  assert.throws(() => decryptSecret(key, 'm.cross_signing.user_signing', sealed), code('HALCYON_SECRET_STORAGE'));
  const bytes = fromBase64(sealed.ciphertext)!;
  bytes[0] = bytes[0]! ^ 1;
  assert.throws(() => decryptSecret(key, 'm.cross_signing.self_signing', { ...sealed, ciphertext: b64(bytes) }), (e: HalcyonError) => e.code === 'HALCYON_SECRET_STORAGE' && /MAC/.test(e.message));
  for (const bad of [{}, { ...sealed, iv: 'not base64!' }, { ...sealed, mac: sealed.mac.slice(0, -1) }, null]) {
    assert.throws(() => decryptSecret(key, 'm.cross_signing.self_signing', bad), code('HALCYON_SECRET_STORAGE'));
  }
});

test('secrets: readSecret takes the entry of its key ID from the account data, and says which is missing', () => {
  const key = newSecretStorageKey();
  const keyId = newKeyId();
  assert.match(keyId, /^[A-Za-z0-9]{32}$/);
  const content = { encrypted: { [keyId]: encryptSecret(key, 'm.cross_signing.master', 'seed') } };
  assert.equal(readSecret(key, keyId, 'm.cross_signing.master', content), 'seed');
  assert.throws(() => readSecret(key, 'otherKeyId', 'm.cross_signing.master', content), (e: HalcyonError) => e.code === 'HALCYON_SECRET_STORAGE' && /otherKeyId/.test(e.message));
  assert.throws(() => readSecret(key, keyId, 'm.cross_signing.master', undefined), code('HALCYON_SECRET_STORAGE'));
});

test('base64: padded and unpadded both read; stray characters refused', () => {
  assert.deepEqual(fromBase64('Zm8='), fromBase64('Zm8'));
  assert.deepEqual([...fromBase64('Zm9vYg')!], [...Buffer.from('foob')]);
  for (const bad of ['Zm8$', 'Z', 'Zm 8', 42, undefined]) assert.equal(fromBase64(bad), null, String(bad));
});
