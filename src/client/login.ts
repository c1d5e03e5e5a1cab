/**
 * Getting a token, before any client runs: a password login, or wrapping an access token one already has. Each
 * resolves the homeserver as typed (discovery for a server name; plain http to another machine refused) and, with
 * a data directory, binds it to the account and device.
 *
 * With encryption on (the default) and a data dir, a password login also sets up the device's cryptographic
 * identity while the password is at hand: a crypto actor runs in this thread on the data dir's crypto store (the
 * store `run()` opens later), uploads the device keys and cross-signs the device (see crypto/identity.ts). The
 * recovery key of a new secret storage is written once to `<dataDir>/recovery-key.txt` (0600) and returned by
 * {@link loginWithDetails}; it is never logged.
 */
import { join } from 'node:path';
import { claimDataDir, storedDeviceId } from '../account.ts';
import { localPortPair, traceStartup } from '../actors.ts';
import { CryptoActor } from '../crypto/actor.ts';
import { decodeRecoveryKey } from '../crypto/secret-storage.ts';
import { resolveHomeserver } from '../discovery.ts';
import { fromWireError, HalcyonError } from '../errors.ts';
import { MatrixHttp } from '../http.ts';
import { stringArg } from '../ids.ts';
import { consoleLogger } from '../log.ts';
import type { CryptoToMain, IdentitySetupResult, MainToCrypto } from '../protocol.ts';
import { storePassphrase, writeSecretFile } from '../store.ts';
import { encodeToken, type Session } from '../token.ts';
import type { EncryptionOptions, ImportTokenOptions, LoginOptions } from './options.ts';

/** The file in the data dir the recovery key of a new secret storage is written to (0600). */
export const RECOVERY_KEY_FILE = 'recovery-key.txt';

/** What {@link loginWithDetails} did: the token, and what became of the device's cryptographic identity. */
export interface LoginDetails {
  /** The token, as `Client.login` returns it. */
  token: string;
  /**
   * `created`: the account had no cross-signing identity, login made one (with secret storage and a key backup);
   * `reset`: a new one replaced it (`resetCrossSigning`); `imported`: its keys came from secret storage with the
   * recovery key; `existing`: the data dir's store held them already; `unsigned`: the account has an identity and
   * the device could not be signed (see `warnings`); `off`: encryption off, or no `dataDir` to keep keys in.
   */
  crossSigning: IdentitySetupResult['crossSigning'] | 'off';
  /** Whether the device is cross-signed by the account (what clients that exclude insecure devices require). */
  deviceSigned: boolean;
  /** The account's master cross-signing key (unpadded base64), or null. */
  masterKey: string | null;
  /**
   * The recovery key of the secret storage this login created (`created`, `reset`, or `existing` completing a
   * set-up cut short), else null. It unlocks the identity and the key backup from a new data dir: keep it offline.
   */
  recoveryKey: string | null;
  /** Where that recovery key was written (`<dataDir>/recovery-key.txt`, 0600), or null. */
  recoveryKeyFile: string | null;
  /** The key backup this login created (`importedKeys` 0) or restored, or null. */
  keyBackup: { version: string; importedKeys: number } | null;
  /** Problems that did not stop the login (also logged): `HALCYON_CROSS_SIGNING_UNAVAILABLE`, `HALCYON_KEY_BACKUP`. */
  warnings: HalcyonError[];
}

/** Password login; resolves with the token string. With `dataDir`, the device of an earlier login there is reused. */
export async function login(opts: LoginOptions): Promise<string> {
  return (await loginWithDetails(opts)).token;
}

/**
 * `Client.login`, resolving with what it did about the device's cryptographic identity too (the recovery key of a
 * new secret storage among it). Warnings are also logged (`opts.logger`, default stderr).
 */
export async function loginWithDetails(opts: LoginOptions): Promise<LoginDetails> {
  if (typeof opts !== 'object' || opts === null) throw new HalcyonError('HALCYON_INVALID_ARGUMENT', 'Client.login({ homeserver, user, password }) needs an options object');
  stringArg(opts.homeserver, 'Client.login', 'homeserver');
  stringArg(opts.user, 'Client.login', 'user');
  stringArg(opts.password, 'Client.login', 'password (read it from an environment variable or a secret store)');
  const e2ee = checkIdentityOptions(opts);
  const homeserver = await resolveHomeserver(opts.homeserver, { allowInsecureHttp: opts.allowInsecureHttp === true });
  const session = await passwordLogin(opts, homeserver);
  const token = encodeToken(session);
  const logger = opts.logger ?? consoleLogger();
  const off: LoginDetails = { token, crossSigning: 'off', deviceSigned: false, masterKey: null, recoveryKey: null, recoveryKeyFile: null, keyBackup: null, warnings: [] };
  if (!e2ee) return off;
  if (!opts.dataDir) {
    const w = new HalcyonError(
      'HALCYON_CROSS_SIGNING_UNAVAILABLE',
      `device ${session.deviceId} is not cross-signed: login had no dataDir to keep its keys in (pass the data dir the client runs with)`,
    );
    logger.warn(w);
    return { ...off, warnings: [w] };
  }
  const details = await setUpIdentity(session, opts, opts.dataDir, e2ee);
  for (const w of details.warnings) logger.warn(w);
  return { token, ...details };
}

/**
 * The encryption options of a login (null: off), checked before anything is sent: a malformed recovery key, or
 * identity options without a data dir to keep keys in, fail here and lose nothing.
 */
function checkIdentityOptions(opts: LoginOptions): EncryptionOptions | null {
  const e2ee = opts.encryption === false ? null : typeof opts.encryption === 'object' && opts.encryption !== null ? opts.encryption : {};
  if (opts.resetCrossSigning !== undefined && typeof opts.resetCrossSigning !== 'boolean') {
    throw new HalcyonError('HALCYON_INVALID_ARGUMENT', 'Client.login: resetCrossSigning must be a boolean');
  }
  if (opts.recoveryKey !== undefined) decodeRecoveryKey(opts.recoveryKey);
  if ((opts.recoveryKey !== undefined || opts.resetCrossSigning) && (!e2ee || !opts.dataDir)) {
    throw new HalcyonError('HALCYON_INVALID_ARGUMENT', `Client.login: ${opts.recoveryKey !== undefined ? 'recoveryKey' : 'resetCrossSigning'} needs encryption on and a dataDir (where the keys are kept)`);
  }
  return e2ee;
}

async function passwordLogin(opts: LoginOptions, homeserver: string): Promise<Session> {
  const http = new MatrixHttp(homeserver);
  try {
    // Refuses (HALCYON_STORE_MISMATCH) before logging in if the data dir belongs to another account.
    const deviceId = opts.dataDir ? storedDeviceId(opts.dataDir, homeserver, opts.user) : undefined;
    let res: { user_id?: unknown; access_token?: unknown; device_id?: unknown };
    traceStartup('login sent');
    try {
      res = await http.json('POST', '/_matrix/client/v3/login', {
        anonymous: true,
        body: {
          type: 'm.login.password',
          identifier: { type: 'm.id.user', user: opts.user },
          password: opts.password,
          device_id: deviceId,
          initial_device_display_name: opts.deviceName ?? 'Halcyon bot',
        },
      });
    } catch (err) {
      const e = err as HalcyonError;
      if (e.code === 'HALCYON_MATRIX' || e.code === 'HALCYON_UNKNOWN_TOKEN') {
        const refused = new HalcyonError('HALCYON_LOGIN_FAILED', `login refused: ${e.message}`, { cause: e });
        if (e.status !== undefined) refused.status = e.status;
        if (e.errcode !== undefined) refused.errcode = e.errcode;
        throw refused;
      }
      throw err;
    }
    if (typeof res.user_id !== 'string' || typeof res.access_token !== 'string' || typeof res.device_id !== 'string') {
      throw new HalcyonError('HALCYON_BAD_RESPONSE', 'login: the answer lacks user_id, access_token or device_id');
    }
    traceStartup('login answered');
    if (opts.dataDir) claimDataDir(opts.dataDir, homeserver, res.user_id, res.device_id);
    return { homeserver, userId: res.user_id, deviceId: res.device_id, accessToken: res.access_token };
  } finally {
    await http.close();
  }
}

/**
 * Runs a crypto actor in this thread on the data dir's store and has it set up the identity; writes a new recovery
 * key to its file. Anything that fails (the server, the store) leaves the device unsigned with a warning, since the
 * token is good and a later login with the same data dir tries again; a recovery key that is not the account's is
 * an error.
 */
async function setUpIdentity(session: Session, opts: LoginOptions, dataDir: string, e2ee: EncryptionOptions): Promise<Omit<LoginDetails, 'token'>> {
  const [mainSide, cryptoSide] = localPortPair<CryptoToMain, MainToCrypto>();
  const reported: HalcyonError[] = [];
  mainSide.onMessage((msg) => {
    if (msg.kind === 'error' || msg.kind === 'fatal') reported.push(fromWireError(msg.error));
  });
  const actor = new CryptoActor(cryptoSide);
  let result: IdentitySetupResult | null = null;
  let failure: HalcyonError | null = null;
  try {
    await actor.open({
      ...session,
      dataDir,
      passphrase: e2ee.passphrase ?? storePassphrase(dataDir),
      wantedTypes: null,
      maxPendingUndecryptable: e2ee.maxPendingUndecryptable ?? 1_000,
      pendingUndecryptableMaxAgeMs: e2ee.pendingUndecryptableMaxAgeMs ?? 24 * 3600_000,
    });
    result = await actor.setupIdentity({ user: opts.user, password: opts.password, recoveryKey: opts.recoveryKey ?? null, resetCrossSigning: opts.resetCrossSigning === true });
  } catch (err) {
    if ((err as HalcyonError).code === 'HALCYON_RECOVERY_KEY_INVALID') throw err;
    failure = new HalcyonError(
      'HALCYON_CROSS_SIGNING_UNAVAILABLE',
      `device ${session.deviceId} of ${session.userId} is not cross-signed: setting up its identity failed (${(err as Error).message}); the token works, and a login again with the same data dir tries again`,
      { cause: err },
    );
  } finally {
    await new Promise((r) => setImmediate(r)); // the actor's last reports reach the port
    await actor.close();
    mainSide.close();
  }
  const warnings = [...(result?.warnings.map(fromWireError) ?? []), ...reported, ...(failure ? [failure] : [])];
  if (!result) return { crossSigning: 'unsigned', deviceSigned: false, masterKey: null, recoveryKey: null, recoveryKeyFile: null, keyBackup: null, warnings };
  let recoveryKeyFile: string | null = null;
  if (result.recoveryKey) {
    recoveryKeyFile = join(dataDir, RECOVERY_KEY_FILE);
    writeSecretFile(recoveryKeyFile, result.recoveryKey + '\n');
  }
  const { crossSigning, deviceSigned, masterKey, recoveryKey, keyBackup } = result;
  return { crossSigning, deviceSigned, masterKey, recoveryKey, recoveryKeyFile, keyBackup, warnings };
}

/** Wraps an existing access token into a token for its device (asks `whoami`); see `Client.importToken`. */
export async function importToken(opts: ImportTokenOptions): Promise<string> {
  if (typeof opts !== 'object' || opts === null) throw new HalcyonError('HALCYON_INVALID_ARGUMENT', 'Client.importToken({ homeserver, accessToken }) needs an options object');
  stringArg(opts.homeserver, 'Client.importToken', 'homeserver');
  stringArg(opts.accessToken, 'Client.importToken', 'accessToken');
  const homeserver = await resolveHomeserver(opts.homeserver, { allowInsecureHttp: opts.allowInsecureHttp === true });
  const http = new MatrixHttp(homeserver, opts.accessToken);
  try {
    const who = await http.json<{ user_id?: unknown; device_id?: unknown }>('GET', '/_matrix/client/v3/account/whoami');
    if (typeof who.user_id !== 'string') throw new HalcyonError('HALCYON_BAD_RESPONSE', 'whoami: the answer has no user_id');
    if (typeof who.device_id !== 'string') {
      throw new HalcyonError('HALCYON_INVALID_TOKEN', 'this access token belongs to no device (whoami names none): log in with Client.login for a device of its own');
    }
    if (opts.dataDir) claimDataDir(opts.dataDir, homeserver, who.user_id, who.device_id);
    return encodeToken({ homeserver, userId: who.user_id, deviceId: who.device_id, accessToken: opts.accessToken });
  } finally {
    await http.close();
  }
}
