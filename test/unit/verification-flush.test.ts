/**
 * What the engine queues for a verification is sent when the flow changes (src/crypto/verification.ts). Receiving a
 * verification event can make the engine queue its answer (the SAS key after an accept, `done` after a MAC) among
 * its outgoing requests instead of returning it. A batch's to-device events are followed by a flush, but in-room
 * events decrypted from the timeline (clients that encrypt them, as Element X does in an encrypted room) were not:
 * the answer then waited for the next batch with crypto changes, which a peer waiting for it never sends.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { CryptoToMain } from '../../src/protocol.ts';
import { Verifications, type VerificationHost } from '../../src/crypto/verification.ts';
import type { Wasm } from '../../src/crypto/trust.ts';
import { waitUntil } from '../integration/util.ts';

class Id {
  constructor(private readonly v: string) {}
  toString(): string {
    return this.v;
  }
}

const W = {
  UserId: Id,
  RoomId: Id,
  Sas: class {},
  VerificationRequestPhase: { Created: 0, Requested: 1, Ready: 2, Transitioned: 3, Done: 4, Cancelled: 5 },
} as unknown as Wasm;

test('a change of a followed flow sends what the engine queued for it (an in-room event decrypted from the timeline is not followed by a batch flush)', async () => {
  let onChange: (() => Promise<void>) | null = null;
  const request = { weStarted: () => false, phase: () => 1, otherDeviceId: new Id('PEERDEV'), roomId: new Id('!r:x'), registerChangesCallback: (cb: () => Promise<void>) => void (onChange = cb) };
  let flushes = 0;
  const posted: CryptoToMain[] = [];
  const h = {
    machine: { userId: new Id('@bot:x'), receiveVerificationEvent: async () => {}, getVerificationRequest: () => request },
    ownDeviceId: 'BOTDEV',
    run: <T>(fn: () => Promise<T>) => fn(),
    send: async () => {},
    flush: async () => void flushes++,
    post: (msg: CryptoToMain) => void posted.push(msg),
    verified: () => {},
  } as unknown as VerificationHost;
  const v = new Verifications(W, h);
  await v.noticeRoomEvent('!r:x', { type: 'm.room.message', sender: '@peer:x', event_id: '$req', content: { msgtype: 'm.key.verification.request', to: '@bot:x', from_device: 'PEERDEV', methods: ['m.sas.v1'] } });
  assert.equal(posted[0]?.kind, 'verificationAsked');
  assert.ok(onChange, 'the flow is followed');
  const before = flushes;
  // The engine received the flow's next event (from a decrypted timeline event) and queued its answer.
  await (onChange as () => Promise<void>)();
  await waitUntil(() => flushes > before, 5_000, "the engine's queued requests to be sent after the flow changed");
});
