/**
 * What the crypto actor hears of a sync batch (to-device events, device lists, key counts, joined rooms' members
 * and settings): taken out of the sync actor, which calls it for every batch and for a streamed first sync.
 */
import type { CryptoSyncChanges, StateChanges } from '../protocol.ts';
import type { ProcessedSync } from './process.ts';

/** State event types the crypto actor hears of (see {@link cryptoChanges}). */
export const CRYPTO_STATE: ReadonlySet<string> = new Set(['m.room.encryption', 'm.room.history_visibility', 'm.room.member']);

/**
 * The batch's crypto-relevant parts, or null when there are none worth a call. `more`: joined rooms' state the
 * batch's own `state` no longer holds (a streamed first sync's, applied slice by slice). `keyCounts.last` is the
 * counts last given to the crypto actor (unchanged counts alone are not worth a call); updated here.
 */
export function cryptoChanges(p: ProcessedSync, more: StateChanges['rooms'], keyCounts: { last: string }): CryptoSyncChanges | null {
  const c = p.crypto;
  const encryption: CryptoSyncChanges['encryption'] = [];
  const members: CryptoSyncChanges['members'] = [];
  const historyVisibility: CryptoSyncChanges['historyVisibility'] = [];
  for (const rooms of [p.state.rooms, more]) {
    for (const r of rooms) {
      if (r.membership !== 'join') continue; // invite state is stripped and unauthenticated
      for (const ev of r.state) {
        if (ev.type === 'm.room.encryption' && ev.state_key === '') encryption.push({ roomId: r.roomId, content: ev.content });
        else if (ev.type === 'm.room.history_visibility' && ev.state_key === '') historyVisibility.push({ roomId: r.roomId, visibility: String(ev.content.history_visibility) });
        else if (ev.type === 'm.room.member' && typeof ev.state_key === 'string' && typeof ev.content.membership === 'string') {
          members.push({ roomId: r.roomId, userId: ev.state_key, membership: ev.content.membership });
        }
      }
    }
  }
  // Counts left out are news too: in sync v2 a missing count is zero (the crypto actor refills the pool).
  const counts = JSON.stringify([c.otkCounts, c.fallbackKeyTypes]);
  const countsChanged = counts !== keyCounts.last;
  if (c.toDevice.length === 0 && c.deviceListsChanged.length === 0 && c.deviceListsLeft.length === 0 && !countsChanged && encryption.length === 0 && members.length === 0 && historyVisibility.length === 0 && p.left.length === 0 && c.verification.length === 0) {
    return null;
  }
  if (countsChanged) keyCounts.last = counts;
  return {
    batchToken: p.nextBatch,
    toDevice: JSON.stringify(c.toDevice),
    toDeviceCount: c.toDevice.length,
    deviceListsChanged: c.deviceListsChanged,
    deviceListsLeft: c.deviceListsLeft,
    otkCounts: c.otkCounts,
    fallbackKeyTypes: c.fallbackKeyTypes,
    encryption,
    members,
    historyVisibility,
    left: p.left,
    ...(c.verification.length > 0 ? { verification: c.verification } : {}),
  };
}

/** Whether crypto changes carry nothing but one-time-key counts and fallback key types. */
export function countsOnly(c: CryptoSyncChanges): boolean {
  return c.toDeviceCount === 0 && c.deviceListsChanged.length === 0 && c.deviceListsLeft.length === 0 && c.encryption.length === 0 && c.members.length === 0 && c.historyVisibility.length === 0 && c.left.length === 0 && !c.verification;
}
