/**
 * The crypto actor's verification flows (src/crypto/verification.ts), against a stand-in engine:
 * - A request from a sender whose devices the bot has not fetched yet: the engine ignores it, so the actor parks
 *   it, fetches the sender's devices and notices it again. When the device is still unknown at that retry (its key
 *   query still out, or answered before the device was uploaded), the request must stay parked and be retried
 *   again, not dropped: a dropped request is a verification the peer waits for forever (the in-room verification
 *   test hung that way when timings shifted).
 * - What the engine queues for a flow is sent when the flow changes. Receiving a verification event can make the
 *   engine queue its answer (the SAS key after an accept, `done` after a MAC) among its outgoing requests instead
 *   of returning it. A batch's to-device events are followed by a flush, but in-room events decrypted from the
 *   timeline (clients that encrypt them in an encrypted room) were not: the answer then waited for the next batch
 *   with crypto changes, which a peer waiting for it never sends.
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

/** The engine's types the retry path touches. */
const W = {
  UserId: Id,
  RoomId: Id,
  DeviceLists: class {},
  DecryptionSettings: class {},
  TrustRequirement: { Untrusted: 0 },
  VerificationRequestPhase: { Requested: 1 },
  ProcessedToDeviceEventType: { Decrypted: 0, PlainText: 1 },
} as unknown as Wasm;

/** A host whose engine knows the request's sender only after `unknownFor` lookups of it; it counts flushes and keeps the flow's change callback. */
function host(unknownFor: number) {
  let lookups = 0;
  let flushes = 0;
  let onChange: (() => Promise<void>) | null = null;
  const posted: CryptoToMain[] = [];
  const request = { weStarted: () => false, phase: () => 1, otherDeviceId: new Id('PEERDEV'), roomId: new Id('!r:x'), registerChangesCallback: (cb: () => Promise<void>) => void (onChange = cb) };
  const h = {
    machine: {
      userId: new Id('@bot:x'),
      receiveVerificationEvent: async () => {},
      updateTrackedUsers: async () => {},
      receiveSyncChangesMsc4186: async () => [],
      getVerificationRequest: () => (++lookups > unknownFor ? request : undefined),
    },
    ownDeviceId: 'BOTDEV',
    run: <T>(fn: () => Promise<T>) => fn(),
    send: async () => {},
    flush: async () => void flushes++,
    post: (msg: CryptoToMain) => void posted.push(msg),
    verified: () => {},
  } as unknown as VerificationHost;
  return { h, posted, lookups: () => lookups, flushes: () => flushes, onChange: () => onChange };
}

const REQUEST = { type: 'm.room.message', sender: '@peer:x', event_id: '$req', content: { msgtype: 'm.key.verification.request', to: '@bot:x', from_device: 'PEERDEV', methods: ['m.sas.v1'] } };

test("an in-room request whose sender's device is still unknown at the first retry is retried again, and main is asked", async () => {
  // Unknown at the notice and at the first retry; known from the second retry on.
  const { h, posted, lookups } = host(2);
  const v = new Verifications(W, h);
  await v.noticeRoomEvent('!r:x', REQUEST);
  assert.equal(lookups(), 1);
  await v.retryUnknownSenders();
  assert.equal(lookups(), 2, 'the first retry looked the request up again');
  // The next retry comes by itself (a timer), or with the next batch: either way the request is asked about.
  await v.retryUnknownSenders();
  await waitUntil(() => posted.some((m) => m.kind === 'verificationAsked'), 10_000, 'main to be asked about the request');
  const asked = posted.find((m) => m.kind === 'verificationAsked');
  assert.deepEqual(asked?.kind === 'verificationAsked' && asked.verification, { flowId: '$req', userId: '@peer:x', deviceId: 'PEERDEV', roomId: '!r:x', weStarted: false });
});

test('a request whose sender stays unknown is given up after a bounded number of retries', async () => {
  const { h, posted, lookups } = host(Number.POSITIVE_INFINITY);
  const v = new Verifications(W, h);
  await v.noticeRoomEvent('!r:x', REQUEST);
  for (let i = 0; i < 20; i++) await v.retryUnknownSenders();
  assert.ok(lookups() <= 8, `${lookups()} lookups: the retries stop`);
  assert.deepEqual(posted, []);
});

test('a to-device request whose sender device is still unknown at the first retry is retried again too', async () => {
  const { h, posted, lookups } = host(2);
  const v = new Verifications(W, h);
  const raw = JSON.stringify({ type: 'm.key.verification.request', sender: '@peer:x', content: { transaction_id: 'txn1', from_device: 'PEERDEV', methods: ['m.sas.v1'] } });
  v.noticeToDevice([{ type: 0, rawEvent: raw }] as never);
  await v.retryUnknownSenders();
  assert.equal(lookups(), 2);
  await v.retryUnknownSenders();
  await waitUntil(() => posted.some((m) => m.kind === 'verificationAsked'), 10_000, 'main to be asked about the request');
});

test('a change of a followed flow sends what the engine queued for it (an in-room event decrypted from the timeline is not followed by a batch flush)', async () => {
  const { h, posted, flushes, onChange } = host(0);
  const v = new Verifications(W, h);
  await v.noticeRoomEvent('!r:x', REQUEST);
  assert.equal(posted[0]?.kind, 'verificationAsked');
  const changed = onChange();
  assert.ok(changed, 'the flow is followed');
  const before = flushes();
  // The engine received the flow's next event (from a decrypted timeline event) and queued its answer.
  await changed();
  await waitUntil(() => flushes() > before, 5_000, "the engine's queued requests to be sent after the flow changed");
});

test('stop() drops the parked requests and their retry timer (the actor is closing)', async () => {
  const { h, lookups } = host(Number.POSITIVE_INFINITY);
  const v = new Verifications(W, h);
  await v.noticeRoomEvent('!r:x', REQUEST);
  await v.retryUnknownSenders(); // parked again, with a timer for the next retry
  const seen = lookups();
  v.stop();
  await v.retryUnknownSenders();
  assert.equal(lookups(), seen, 'nothing was left to retry');
});
