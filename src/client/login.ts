/**
 * Getting a token, before any client runs: a password login, or wrapping an access token one already has. Each
 * resolves the homeserver as typed (discovery for a server name; plain http to another machine refused) and, with
 * a data directory, binds it to the account and device.
 */
import { claimDataDir, storedDeviceId } from '../account.ts';
import { resolveHomeserver } from '../discovery.ts';
import { HalcyonError } from '../errors.ts';
import { MatrixHttp } from '../http.ts';
import { stringArg } from '../ids.ts';
import { encodeToken } from '../token.ts';
import type { ImportTokenOptions, LoginOptions } from './options.ts';

/** Password login; resolves with the token string. With `dataDir`, the device of an earlier login there is reused. */
export async function login(opts: LoginOptions): Promise<string> {
  if (typeof opts !== 'object' || opts === null) throw new HalcyonError('HALCYON_INVALID_ARGUMENT', 'Client.login({ homeserver, user, password }) needs an options object');
  stringArg(opts.homeserver, 'Client.login', 'homeserver');
  stringArg(opts.user, 'Client.login', 'user');
  stringArg(opts.password, 'Client.login', 'password (read it from an environment variable or a secret store)');
  const homeserver = await resolveHomeserver(opts.homeserver, { allowInsecureHttp: opts.allowInsecureHttp === true });
  const http = new MatrixHttp(homeserver);
  try {
    // Refuses (HALCYON_STORE_MISMATCH) before logging in if the data dir belongs to another account.
    const deviceId = opts.dataDir ? storedDeviceId(opts.dataDir, homeserver, opts.user) : undefined;
    let res: { user_id?: unknown; access_token?: unknown; device_id?: unknown };
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
    if (opts.dataDir) claimDataDir(opts.dataDir, homeserver, res.user_id, res.device_id);
    return encodeToken({ homeserver, userId: res.user_id, deviceId: res.device_id, accessToken: res.access_token });
  } finally {
    await http.close();
  }
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
