/**
 * The long-lived token: one opaque string holding the homeserver URL, user ID, device ID and access token.
 * Never the password. Treat it as a secret: it is as good as the access token inside it.
 */
import { HalcyonError } from './errors.ts';

/** What a token holds. */
export interface Session {
  homeserver: string;
  userId: string;
  deviceId: string;
  accessToken: string;
}

const PREFIX = 'halcyon1.';

/** Packs a session into a token string. */
export function encodeToken(s: Session): string {
  const json = JSON.stringify({ v: 1, hs: s.homeserver, u: s.userId, d: s.deviceId, t: s.accessToken });
  return PREFIX + Buffer.from(json, 'utf8').toString('base64url');
}

/** Unpacks a token string; throws `HALCYON_INVALID_TOKEN` (without echoing the token) if it is not one. */
export function decodeToken(token: string): Session {
  if (typeof token !== 'string' || !token.startsWith(PREFIX)) {
    throw new HalcyonError('HALCYON_INVALID_TOKEN', 'not a Halcyon token (it should start with "halcyon1.")');
  }
  let o: Record<string, unknown>;
  try {
    o = JSON.parse(Buffer.from(token.slice(PREFIX.length), 'base64url').toString('utf8')) as Record<string, unknown>;
  } catch {
    throw new HalcyonError('HALCYON_INVALID_TOKEN', 'the token is damaged (its payload does not decode)');
  }
  const { hs, u, d, t } = o ?? {};
  if (typeof hs !== 'string' || typeof u !== 'string' || typeof d !== 'string' || typeof t !== 'string' || !/^https?:\/\//.test(hs)) {
    throw new HalcyonError('HALCYON_INVALID_TOKEN', 'the token is damaged (fields missing)');
  }
  return { homeserver: hs, userId: u, deviceId: d, accessToken: t };
}
