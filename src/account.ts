/**
 * The account record of a data directory (`account.sqlite`, owned by main): which homeserver and user the
 * directory belongs to, and the device ID to reuse at the next login.
 */
import { HalcyonError } from './errors.ts';
import { kvGet, kvSet, openDatabase } from './store.ts';

/**
 * The device ID a previous login of `user` (localpart or user ID) on `homeserver` stored in `dataDir`, if any.
 * Throws `HALCYON_STORE_MISMATCH` if the directory belongs to another account.
 */
export function storedDeviceId(dataDir: string, homeserver: string, user: string): string | undefined {
  const db = openDatabase(dataDir, 'account.sqlite');
  try {
    const rec = readAccount(kvGet(db, 'account'));
    if (!rec) return undefined;
    if (rec.homeserver !== homeserver || !sameUser(rec.userId, user)) throw mismatch(dataDir, rec, user, homeserver);
    return rec.deviceId;
  } finally {
    db.close();
  }
}

/**
 * Throws `HALCYON_STORE_MISMATCH` if `dataDir` belongs to another user or homeserver; writes nothing (the device
 * is recorded by {@link claimDataDir} only once the crypto store has accepted it).
 */
export function checkDataDir(dataDir: string, homeserver: string, userId: string): void {
  const db = openDatabase(dataDir, 'account.sqlite');
  try {
    const rec = readAccount(kvGet(db, 'account'));
    if (rec && (rec.userId !== userId || rec.homeserver !== homeserver)) throw mismatch(dataDir, rec, userId, homeserver);
  } finally {
    db.close();
  }
}

/**
 * Claims `dataDir` for the session, or throws `HALCYON_STORE_MISMATCH` if it belongs to another user or
 * homeserver: mixing two accounts' state silently is how peer libraries end up with broken stores.
 */
export function claimDataDir(dataDir: string, homeserver: string, userId: string, deviceId: string): void {
  const db = openDatabase(dataDir, 'account.sqlite');
  try {
    const rec = readAccount(kvGet(db, 'account'));
    if (rec && (rec.userId !== userId || rec.homeserver !== homeserver)) throw mismatch(dataDir, rec, userId, homeserver);
    if (!rec || rec.deviceId !== deviceId) kvSet(db, 'account', JSON.stringify({ homeserver, userId, deviceId }));
  } finally {
    db.close();
  }
}

function mismatch(dataDir: string, rec: { userId: string; homeserver: string }, user: string, homeserver: string): HalcyonError {
  return new HalcyonError(
    'HALCYON_STORE_MISMATCH',
    `the data directory ${dataDir} belongs to ${rec.userId} on ${rec.homeserver}, not ${user} on ${homeserver}; use another directory`,
  );
}

function readAccount(v: string | undefined): { homeserver: string; userId: string; deviceId: string } | undefined {
  return v === undefined ? undefined : (JSON.parse(v) as { homeserver: string; userId: string; deviceId: string });
}

/** Login accepts a localpart or a full user ID; the record holds the full ID. */
function sameUser(stored: string, given: string): boolean {
  return stored === given || stored.slice(1, stored.indexOf(':')) === given;
}
