/**
 * The account's cryptographic identity, set up at login (the only time the password is at hand) by the crypto
 * actor: cross-signing, secret storage and the key backup.
 *
 * - The account has no cross-signing identity (or `resetCrossSigning`): the engine makes master, self-signing and
 *   user-signing keys, uploads them (answering the server's user-interactive auth with the password) and signs
 *   the device with the self-signing key. A new key backup version is created, and a new secret storage key
 *   (the recovery key) encrypts the three private keys and the backup key into the account data.
 * - The store already holds the identity's private keys (a login again on the same data dir): the device is
 *   signed if it is not; a set-up cut short before its secret storage was written is completed.
 * - The account has an identity this store lacks: with the recovery key, its private keys and the backup key come
 *   from secret storage, the device is signed and the backup is downloaded and imported. Without it, nothing is
 *   changed: the device stays unsigned and a `HALCYON_CROSS_SIGNING_UNAVAILABLE` warning says what to do. An
 *   existing identity is replaced only when asked.
 */
import { createPrivateKey, createPublicKey } from 'node:crypto';
import { HalcyonError, toWireError, type WireError } from '../errors.ts';
import { type MatrixHttp, seg } from '../http.ts';
import type { IdentitySetup, IdentitySetupResult } from '../protocol.ts';
import type { BackupKey, KeyBackup, Machine, Wasm } from './backup.ts';
import type { SerialQueue } from './queue.ts';
import {
  checkKey,
  DEFAULT_KEY_TYPE,
  decodeRecoveryKey,
  describeKey,
  encodeRecoveryKey,
  encryptSecret,
  fromBase64,
  type KeyDescription,
  keyDescriptionType,
  newKeyId,
  newSecretStorageKey,
  readSecret,
  toBase64,
} from './secret-storage.ts';

/** The secrets Halcyon keeps in secret storage: the cross-signing private keys and the backup key. */
const MASTER = 'm.cross_signing.master';
const SELF_SIGNING = 'm.cross_signing.self_signing';
const USER_SIGNING = 'm.cross_signing.user_signing';
const BACKUP = 'm.megolm_backup.v1';
/** Deadline of the probe of a UIA-protected upload. */
const UIA_TIMEOUT_MS = 30_000;

type Device = import('@matrix-org/matrix-sdk-crypto-wasm').Device;

/** What identity set-up needs from its crypto actor. */
export interface IdentityContext {
  /** crypto-wasm, from the actor (the one module importing it). */
  W: Wasm;
  machine: Machine;
  queue: SerialQueue;
  http: MatrixHttp;
  userId: string;
  deviceId: string;
  accessToken: string;
  backup: KeyBackup;
  /** Sends one of the machine's outgoing requests and hands the answer back to it (the actor's sender). */
  send(req: { id: string; type: number; body: string }): Promise<void>;
}

type Outcome = Pick<IdentitySetupResult, 'crossSigning' | 'recoveryKey' | 'keyBackup'>;

/** Sets up the account's identity at login; see the module comment and {@link IdentitySetupResult}. */
export async function setUpIdentity(ctx: IdentityContext, req: IdentitySetup): Promise<IdentitySetupResult> {
  const recovery = req.recoveryKey === null ? null : decodeRecoveryKey(req.recoveryKey);
  await ctx.backup.ready();
  const warnings: WireError[] = [];
  const serverMaster = await ownMasterKey(ctx);
  const localMaster = await storedMasterKey(ctx);
  let outcome: Outcome;
  if (req.resetCrossSigning || serverMaster === null) outcome = await bootstrap(ctx, req, serverMaster === null ? 'created' : 'reset');
  else if (localMaster === serverMaster) outcome = await complete(ctx);
  else if (recovery) outcome = await importFromSecretStorage(ctx, recovery, warnings);
  else {
    warnings.push(unsigned(ctx, serverMaster, 'this login was not given its recovery key'));
    outcome = { crossSigning: 'unsigned', recoveryKey: null, keyBackup: null };
  }
  const masterKey = await ownMasterKey(ctx); // also refreshes the device's signatures
  const deviceSigned = (await ownDevice(ctx)).isCrossSignedByOwner();
  return { ...outcome, masterKey, deviceSigned, warnings };
}

/** A new identity: cross-signing keys (uploaded with the password), the device signed, a key backup, secret storage. */
async function bootstrap(ctx: IdentityContext, req: IdentitySetup, kind: 'created' | 'reset'): Promise<Outcome> {
  const b = await ctx.queue.run(() => ctx.machine.bootstrapCrossSigning(true), 'high');
  const keysUpload = b.uploadKeysRequest as { id: string; type: number; body: string } | undefined;
  if (keysUpload) await ctx.send(keysUpload);
  await postWithPassword(ctx, '/_matrix/client/v3/keys/device_signing/upload', JSON.parse(b.uploadSigningKeysRequest.body) as Record<string, unknown>, req);
  // The device signed by the self-signing key, and the master key by the device.
  await uploadSignatures(ctx, b.uploadSignaturesRequest.body);
  await ownMasterKey(ctx); // the engine learns the uploaded identity as the account's
  const backup = await ctx.backup.create();
  return { crossSigning: kind, recoveryKey: await writeSecretStorage(ctx, backup), keyBackup: { version: backup.version, importedKeys: 0 } };
}

/** The store holds the identity's keys: signs the device if needed, and writes secret storage if a set-up stopped short of it. */
async function complete(ctx: IdentityContext): Promise<Outcome> {
  await signDevice(ctx);
  if (await secretStorageHoldsMaster(ctx)) return { crossSigning: 'existing', recoveryKey: null, keyBackup: null };
  const backup = (await ctx.backup.current()) ?? (await ctx.backup.create());
  return { crossSigning: 'existing', recoveryKey: await writeSecretStorage(ctx, backup), keyBackup: { version: backup.version, importedKeys: 0 } };
}

/**
 * The identity's private keys from secret storage, unlocked with the recovery key: imported, the device signed, and
 * the key backup restored. A key that is not the storage's is refused (`HALCYON_RECOVERY_KEY_INVALID`); missing
 * or unusable secrets leave the device unsigned with a warning.
 */
async function importFromSecretStorage(ctx: IdentityContext, key: Uint8Array, warnings: WireError[]): Promise<Outcome> {
  const keyId = (await accountData(ctx, DEFAULT_KEY_TYPE))?.key;
  const description = typeof keyId === 'string' ? ((await accountData(ctx, keyDescriptionType(keyId))) as KeyDescription | undefined) : undefined;
  if (typeof keyId !== 'string' || !description) {
    warnings.push(unsigned(ctx, await ownMasterKey(ctx), 'the account has no secret storage to take its keys from'));
    return { crossSigning: 'unsigned', recoveryKey: null, keyBackup: null };
  }
  if (!checkKey(key, description)) {
    throw new HalcyonError(
      'HALCYON_RECOVERY_KEY_INVALID',
      `the recovery key is not the key of ${ctx.userId}'s secret storage (key ${keyId}); device ${ctx.deviceId} is kept in the data dir: log in again with the right key`,
    );
  }
  try {
    const [m, s, u] = await Promise.all([MASTER, SELF_SIGNING, USER_SIGNING].map(async (name) => seed(readSecret(key, keyId, name, await accountData(ctx, name)), name)));
    const status = await ctx.queue.run(() => ctx.machine.importCrossSigningKeys(m, s, u), 'high');
    if (!status.hasMaster || !status.hasSelfSigning) throw new HalcyonError('HALCYON_SECRET_STORAGE', 'the engine did not accept the cross-signing keys from secret storage');
  } catch (err) {
    // Not the account's current keys (an identity reset elsewhere without updating secret storage), or missing.
    warnings.push(unsigned(ctx, await ownMasterKey(ctx), `its keys could not be taken from secret storage (${errText(err)})`));
    return { crossSigning: 'unsigned', recoveryKey: null, keyBackup: null };
  }
  await signDevice(ctx);
  let keyBackup: Outcome['keyBackup'] = null;
  try {
    const content = await accountData(ctx, BACKUP);
    if (content) keyBackup = await ctx.backup.restoreAll(readSecret(key, keyId, BACKUP, content));
  } catch (err) {
    warnings.push(toWireError(new HalcyonError('HALCYON_KEY_BACKUP', `the key backup was not restored: ${errText(err)}`, { cause: err })));
  }
  return { crossSigning: 'imported', recoveryKey: null, keyBackup };
}

/**
 * Writes secret storage with a new key: its description, the three cross-signing private keys and the backup key
 * encrypted with it, then (last, so a half-written storage is never the default) the default-key pointer.
 * Resolves with the recovery key.
 */
async function writeSecretStorage(ctx: IdentityContext, backup: BackupKey): Promise<string> {
  const keys = await ctx.queue.run(() => ctx.machine.exportCrossSigningKeys(), 'high');
  if (!keys?.masterKey || !keys.self_signing_key || !keys.userSigningKey) throw new HalcyonError('HALCYON_INTERNAL', 'the store holds no cross-signing private keys to put in secret storage');
  const key = newSecretStorageKey();
  const keyId = newKeyId();
  await putAccountData(ctx, keyDescriptionType(keyId), describeKey(key));
  const secrets: Array<[string, string]> = [[MASTER, keys.masterKey], [SELF_SIGNING, keys.self_signing_key], [USER_SIGNING, keys.userSigningKey], [BACKUP, backup.keyBase64]];
  for (const [name, value] of secrets) await putAccountData(ctx, name, { encrypted: { [keyId]: encryptSecret(key, name, value) } });
  await putAccountData(ctx, DEFAULT_KEY_TYPE, { key: keyId });
  return encodeRecoveryKey(key);
}

/** Whether the default key of secret storage has the master key encrypted for it. */
async function secretStorageHoldsMaster(ctx: IdentityContext): Promise<boolean> {
  const keyId = (await accountData(ctx, DEFAULT_KEY_TYPE))?.key;
  const encrypted = (await accountData(ctx, MASTER))?.encrypted;
  return typeof keyId === 'string' && typeof encrypted === 'object' && encrypted !== null && keyId in encrypted;
}

/** Signs this device with the self-signing key (held by the store), unless it is signed already. */
async function signDevice(ctx: IdentityContext): Promise<void> {
  const device = await ownDevice(ctx);
  if (device.isCrossSignedByOwner()) return;
  const req = await ctx.queue.run(() => device.verify(), 'high');
  await uploadSignatures(ctx, req.body);
}

async function ownDevice(ctx: IdentityContext): Promise<Device> {
  const device = await ctx.queue.run(() => ctx.machine.getDevice(new ctx.W.UserId(ctx.userId), new ctx.W.DeviceId(ctx.deviceId)), 'high');
  if (!device) throw new HalcyonError('HALCYON_INTERNAL', `the keys of device ${ctx.deviceId} are not known after a key query`);
  return device;
}

/** Uploads signatures; the server's per-key `failures` are an error (a signature it refused signs nothing). */
async function uploadSignatures(ctx: IdentityContext, body: string): Promise<void> {
  const res = await ctx.http.json<{ failures?: Record<string, unknown> }>('POST', '/_matrix/client/v3/keys/signatures/upload', { body: JSON.parse(body) as unknown });
  if (res.failures && Object.keys(res.failures).length > 0) {
    throw new HalcyonError('HALCYON_MATRIX', `the homeserver refused signatures: ${JSON.stringify(res.failures).slice(0, 300)}`);
  }
}

/** Queries the account's own keys (the engine learns its identity and devices); resolves with its master key, or null. */
async function ownMasterKey(ctx: IdentityContext): Promise<string | null> {
  const q = await ctx.queue.run(() => ctx.machine.queryKeysForUsers([new ctx.W.UserId(ctx.userId)]), 'high');
  await ctx.send(q);
  const identity = await ctx.queue.run(() => ctx.machine.getIdentity(new ctx.W.UserId(ctx.userId)), 'high');
  if (!identity || !('masterKey' in identity)) return null;
  const keys = (JSON.parse(identity.masterKey) as { keys?: Record<string, string> }).keys;
  return Object.values(keys ?? {})[0] ?? null;
}

/** The public key of the master private key the store holds, or null. */
async function storedMasterKey(ctx: IdentityContext): Promise<string | null> {
  const keys = await ctx.queue.run(() => ctx.machine.exportCrossSigningKeys(), 'high');
  return keys?.masterKey ? ed25519PublicKey(keys.masterKey) : null;
}

/**
 * The unpadded base64 Ed25519 public key of a 32-byte seed given as base64 (how cross-signing private keys are
 * stored and exported).
 */
export function ed25519PublicKey(seedBase64: string): string {
  const seed = fromBase64(seedBase64);
  if (!seed || seed.length !== 32) throw new HalcyonError('HALCYON_SECRET_STORAGE', 'an Ed25519 private key is not 32 bytes of base64');
  // PKCS#8 wrapping of a raw Ed25519 seed (RFC 8410): the fixed header, then the 32 bytes.
  const der = Buffer.concat([Buffer.from('302e020100300506032b657004220420', 'hex'), seed]);
  const jwk = createPublicKey(createPrivateKey({ key: der, format: 'der', type: 'pkcs8' })).export({ format: 'jwk' });
  return String(jwk.x).replace(/-/g, '+').replace(/_/g, '/');
}

/** A cross-signing seed from secret storage as the engine imports it: unpadded base64 of 32 bytes (other clients pad). */
function seed(secret: string, name: string): string {
  const bytes = fromBase64(secret);
  if (!bytes || bytes.length !== 32) throw new HalcyonError('HALCYON_SECRET_STORAGE', `the secret ${name} is not a 32-byte key in base64`);
  return toBase64(bytes);
}

/** The warning of a device left unsigned, with what to do. */
function unsigned(ctx: IdentityContext, masterKey: string | null, why: string): WireError {
  return toWireError(
    new HalcyonError(
      'HALCYON_CROSS_SIGNING_UNAVAILABLE',
      `device ${ctx.deviceId} of ${ctx.userId} is not cross-signed: the account already has a cross-signing identity${masterKey ? ` (master key ${masterKey})` : ''}, and ${why}. ` +
        'Clients that exclude insecure devices (MSC4153) will neither share room keys with it nor show its messages. ' +
        'Log in again with the same data dir and the recovery key (recoveryKey; halcyon login --recovery-key @FILE), or verify the device from another session; ' +
        'resetCrossSigning: true replaces the identity (whoever verified the account sees it change). The identity was left as it is.',
    ),
  );
}

async function accountData(ctx: IdentityContext, type: string): Promise<Record<string, unknown> | undefined> {
  try {
    return await ctx.http.json('GET', `/_matrix/client/v3/user/${seg(ctx.userId)}/account_data/${seg(type)}`);
  } catch (err) {
    if ((err as HalcyonError).errcode === 'M_NOT_FOUND') return undefined;
    throw err;
  }
}

async function putAccountData(ctx: IdentityContext, type: string, content: unknown): Promise<void> {
  await ctx.http.json('PUT', `/_matrix/client/v3/user/${seg(ctx.userId)}/account_data/${seg(type)}`, { body: content });
}

/**
 * POSTs `body` to an endpoint behind user-interactive auth, answering it with the password. The first attempt
 * goes without `auth` (a first cross-signing upload needs none: MSC3967); a 401 then names the UIA session the
 * password is sent with. That one answer is read with fetch, not MatrixHttp: MatrixHttp turns a non-2xx answer
 * into a coded error without its body, and the body of a UIA 401 is where the session is. No redirect is followed
 * (it would carry the token); the retry goes through MatrixHttp.
 */
async function postWithPassword(ctx: IdentityContext, path: string, body: Record<string, unknown>, req: IdentitySetup): Promise<void> {
  let res: Response;
  let text: string;
  try {
    res = await fetch(ctx.http.baseUrl + path, {
      method: 'POST',
      headers: { authorization: `Bearer ${ctx.accessToken}`, 'content-type': 'application/json' },
      body: JSON.stringify(body),
      redirect: 'manual',
      signal: AbortSignal.timeout(UIA_TIMEOUT_MS),
    });
    text = (await res.text()).slice(0, 64 * 1024);
  } catch (err) {
    throw new HalcyonError('HALCYON_HTTP', `POST ${path}: ${errText(err)}`, { cause: err });
  }
  if (res.ok) return;
  const uia = safeJson(text);
  const flows = Array.isArray(uia?.flows) ? (uia.flows as Array<{ stages?: unknown }>) : null;
  if (res.status !== 401 || typeof uia?.session !== 'string' || !flows) {
    const errcode = typeof uia?.errcode === 'string' ? uia.errcode : undefined;
    const code = res.status >= 300 && res.status < 400 ? 'HALCYON_REDIRECT' : 'HALCYON_MATRIX';
    throw new HalcyonError(code, `POST ${path}: ${res.status}${errcode ? ` ${errcode}` : ''}`, { status: res.status, ...(errcode ? { errcode } : {}) });
  }
  if (!flows.some((f) => Array.isArray(f.stages) && f.stages.length === 1 && f.stages[0] === 'm.login.password')) {
    throw new HalcyonError('HALCYON_CROSS_SIGNING_UNAVAILABLE', `the homeserver protects the cross-signing upload with ${JSON.stringify(flows.map((f) => f.stages)).slice(0, 200)}, not a password alone`);
  }
  const auth = { type: 'm.login.password', identifier: { type: 'm.id.user', user: req.user }, password: req.password, session: uia.session };
  await ctx.http.json('POST', path, { body: { ...body, auth } });
}

function safeJson(text: string): Record<string, unknown> | null {
  try {
    const v = JSON.parse(text) as unknown;
    return typeof v === 'object' && v !== null ? (v as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}

function errText(err: unknown): string {
  return err instanceof Error ? err.message : String((err as { description?: unknown })?.description ?? err);
}
