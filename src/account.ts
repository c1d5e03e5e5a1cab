/**
 * The account record of a data directory (`account.sqlite`, owned by main): which homeserver and user the
 * directory belongs to, and the device ID to reuse at the next login.
 */
import { HalcyonError } from './errors.ts';
import { kvGet, kvSet, openDatabase } from './store.ts';

/** The device ID a previous login of `userId` on `homeserver` stored in `dataDir`, if any. */
export function storedDeviceId(dataDir: string, homeserver: string, userId: string): string | undefined {
  const db = openDatabase(dataDir, 'account.sqlite');
  try {
    const rec = readAccount(kvGet(db, 'account'));
    return rec && rec.homeserver === homeserver && sameUser(rec.userId, userId) ? rec.deviceId : undefined;
  } finally {
    db.close();
  }
}

/** Records the account and device a login produced. */
export function storeAccount(dataDir: string, homeserver: string, userId: string, deviceId: string): void {
  const db = openDatabase(dataDir, 'account.sqlite');
  try {
    kvSet(db, 'account', JSON.stringify({ homeserver, userId, deviceId }));
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
    if (rec && (rec.userId !== userId || rec.homeserver !== homeserver)) {
      throw new HalcyonError(
        'HALCYON_STORE_MISMATCH',
        `the data directory ${dataDir} belongs to ${rec.userId} on ${rec.homeserver}, not ${userId} on ${homeserver}; use another directory`,
      );
    }
    if (!rec || rec.deviceId !== deviceId) kvSet(db, 'account', JSON.stringify({ homeserver, userId, deviceId }));
  } finally {
    db.close();
  }
}

function readAccount(v: string | undefined): { homeserver: string; userId: string; deviceId: string } | undefined {
  return v === undefined ? undefined : (JSON.parse(v) as { homeserver: string; userId: string; deviceId: string });
}

/** Login accepts a localpart or a full user ID; the record holds the full ID. */
function sameUser(stored: string, given: string): boolean {
  return stored === given || stored.slice(1, stored.indexOf(':')) === given;
}
