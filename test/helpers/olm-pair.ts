/**
 * Two OlmMachines (alice sends, bob receives) wired together through a fake in-process key server, for unit tests and
 * benchmarks of decryption without a homeserver. Every outgoing request of either machine is answered here the way a
 * homeserver would (keys/upload, keys/query, keys/claim, sendToDevice) and marked as sent.
 */
import { randomBytes } from 'node:crypto';
import {
  DecryptionSettings,
  DeviceId,
  DeviceLists,
  EncryptionAlgorithm,
  EncryptionSettings,
  HistoryVisibility,
  OlmMachine,
  RequestType,
  RoomId,
  RoomSettings,
  TrustRequirement,
  UserId,
} from '@matrix-org/matrix-sdk-crypto-wasm';

export interface OlmPair {
  /** sender */
  alice: OlmMachine;
  /** receiver */
  bob: OlmMachine;
  roomId: string;
  /**
   * Makes alice share a megolm room key with bob's device; returns the to-device events (as they'd appear in bob's
   * /sync `to_device.events`) without delivering them. Each call returns the events queued for bob since the last
   * call, so `[]` if alice's current session was already handed out (call `alice.invalidateGroupSession(roomId)` to
   * force a new session).
   */
  shareKey(): Promise<object[]>;
  /** Delivers to-device events to bob (receiveSyncChanges), then answers bob's resulting requests (e.g. key top-ups). */
  deliverToBob(events: object[]): Promise<void>;
  /**
   * Encrypts n m.room.message events from alice into full room-event JSON objects (event_id, sender, origin_server_ts,
   * room_id, type m.room.encrypted, content), ready for bob.decryptRoomEvent. If alice has no shared session it
   * shares one first; those to-device events wait for the next `shareKey()` (nothing is delivered to bob here).
   */
  encryptMessages(n: number, body?: (i: number) => string): Promise<object[]>;
}

/** Settings for decrypting with no trust requirement (the devices here are never verified). */
export function untrusted(): DecryptionSettings {
  return new DecryptionSettings(TrustRequirement.Untrusted);
}

type Json = Record<string, any>;

/** A device's state as the homeserver would hold it. */
interface ServerDevice {
  deviceKeys?: Json;
  oneTimeKeys: Map<string, Json>;
  fallbackKeys: Map<string, Json>;
  /** To-device events waiting for the next sync of this device. */
  inbox: object[];
}

/** The fake homeserver: device keys, one-time keys and to-device messages, keyed by `user|device`. */
class FakeKeyServer {
  readonly devices = new Map<string, ServerDevice>();

  device(userId: string, deviceId: string): ServerDevice {
    const k = `${userId}|${deviceId}`;
    let d = this.devices.get(k);
    if (!d) this.devices.set(k, (d = { oneTimeKeys: new Map(), fallbackKeys: new Map(), inbox: [] }));
    return d;
  }

  otkCounts(d: ServerDevice): Map<string, number> {
    const counts = new Map<string, number>();
    for (const id of d.oneTimeKeys.keys()) {
      const alg = id.split(':')[0]!;
      counts.set(alg, (counts.get(alg) ?? 0) + 1);
    }
    return counts;
  }

  /** Answers one request from `machine`; returns the response body, as JSON. */
  answer(machine: OlmMachine, req: { type: RequestType; body: string; event_type?: string }): string {
    const me = machine.userId.toString();
    const body = JSON.parse(req.body) as Json;
    switch (req.type) {
      case RequestType.KeysUpload: {
        const d = this.device(me, machine.deviceId.toString());
        if (body.device_keys) d.deviceKeys = body.device_keys;
        for (const [id, key] of Object.entries((body.one_time_keys ?? {}) as Json)) d.oneTimeKeys.set(id, key);
        if (body.fallback_keys) {
          d.fallbackKeys.clear();
          for (const [id, key] of Object.entries(body.fallback_keys as Json)) d.fallbackKeys.set(id, key);
        }
        return JSON.stringify({ one_time_key_counts: Object.fromEntries(this.otkCounts(d)) });
      }
      case RequestType.KeysQuery: {
        const deviceKeys: Json = {};
        for (const user of Object.keys((body.device_keys ?? {}) as Json)) {
          deviceKeys[user] = {};
          for (const [k, d] of this.devices) {
            const [u, dev] = k.split('|') as [string, string];
            if (u === user && d.deviceKeys) deviceKeys[user][dev] = d.deviceKeys;
          }
        }
        return JSON.stringify({ device_keys: deviceKeys, failures: {}, master_keys: {}, self_signing_keys: {}, user_signing_keys: {} });
      }
      case RequestType.KeysClaim: {
        const out: Json = {};
        for (const [user, devices] of Object.entries((body.one_time_keys ?? {}) as Json)) {
          for (const [dev, alg] of Object.entries(devices as Json)) {
            const d = this.devices.get(`${user}|${dev}`);
            if (!d) continue;
            const pick = [...d.oneTimeKeys.keys()].find((id) => id.startsWith(`${alg}:`));
            let key: [string, Json] | undefined;
            if (pick) {
              key = [pick, d.oneTimeKeys.get(pick)!];
              d.oneTimeKeys.delete(pick);
            } else {
              const fb = [...d.fallbackKeys].find(([id]) => id.startsWith(`${alg}:`));
              if (fb) key = fb;
            }
            if (key) ((out[user] ??= {})[dev] = { [key[0]]: key[1] });
          }
        }
        return JSON.stringify({ one_time_keys: out, failures: {} });
      }
      case RequestType.ToDevice: {
        for (const [user, devices] of Object.entries((body.messages ?? {}) as Json)) {
          for (const [dev, content] of Object.entries(devices as Json)) {
            const targets = dev === '*' ? [...this.devices.keys()].filter((k) => k.startsWith(`${user}|`)) : [`${user}|${dev}`];
            for (const t of targets) {
              const [u, d] = t.split('|') as [string, string];
              this.device(u, d).inbox.push({ type: req.event_type, sender: me, content });
            }
          }
        }
        return '{}';
      }
      case RequestType.SignatureUpload:
        return JSON.stringify({ failures: {} });
      case RequestType.RoomMessage:
        return JSON.stringify({ event_id: `$fake-${Math.random().toString(36).slice(2)}` });
      case RequestType.KeysBackup:
        return JSON.stringify({ etag: '1', count: 0 });
      default:
        throw new Error(`olm-pair: unexpected request type ${String(req.type)}`);
    }
  }

  /** Answers `machine`'s outgoing requests until it has none left. */
  async pump(machine: OlmMachine): Promise<void> {
    for (let round = 0; ; round++) {
      const reqs = await machine.outgoingRequests();
      if (reqs.length === 0) return;
      if (round >= 20) throw new Error(`olm-pair: ${machine.userId.toString()} still has ${reqs.length} outgoing requests after 20 rounds (types ${reqs.map((r) => r.type).join(',')})`);
      for (const r of reqs) {
        if (r.id === undefined) throw new Error(`olm-pair: request of type ${r.type} has no id`);
        await machine.markRequestAsSent(r.id, r.type, this.answer(machine, r as { type: RequestType; body: string; event_type?: string }));
      }
    }
  }

  /**
   * Makes sure the server holds `machine`'s device keys and some one-time keys. A machine that published its keys
   * elsewhere earlier (a reused, persistent one) will not upload them again: its device keys are rebuilt and signed
   * here, and a sync reporting zero one-time keys makes it upload fresh ones.
   */
  async publish(machine: OlmMachine): Promise<void> {
    await this.pump(machine);
    const user = machine.userId.toString();
    const dev = machine.deviceId.toString();
    const d = this.device(user, dev);
    if (!d.deviceKeys) {
      const keys: Json = {
        algorithms: ['m.olm.v1.curve25519-aes-sha2', 'm.megolm.v1.aes-sha2'],
        device_id: dev,
        keys: { [`curve25519:${dev}`]: machine.identityKeys.curve25519.toBase64(), [`ed25519:${dev}`]: machine.identityKeys.ed25519.toBase64() },
        user_id: user,
      };
      const sigs = JSON.parse((await machine.sign(canonicalJson(keys))).asJSON()) as Json;
      d.deviceKeys = { ...keys, signatures: { [user]: { [`ed25519:${dev}`]: sigs[user][`ed25519:${dev}`] } } };
    }
    if (d.oneTimeKeys.size === 0) await this.sync(machine, []);
    if (d.oneTimeKeys.size === 0 && d.fallbackKeys.size === 0) throw new Error(`olm-pair: ${user} published no one-time or fallback keys`);
  }

  /** Delivers `events` as a /sync would (to-device events, device-list changes, key counts), then answers the requests that follow. */
  async sync(machine: OlmMachine, events: object[], changedUsers: string[] = []): Promise<void> {
    const d = this.device(machine.userId.toString(), machine.deviceId.toString());
    const changed = new DeviceLists(changedUsers.map((u) => new UserId(u)));
    await machine.receiveSyncChanges(JSON.stringify(events), changed, this.otkCounts(d), new Set(d.fallbackKeys.keys()));
    await this.pump(machine);
  }
}

/** Canonical JSON (sorted keys, no whitespace), which is what Matrix signatures cover. */
function canonicalJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(',')}]`;
  if (v && typeof v === 'object') {
    const o = v as Json;
    return `{${Object.keys(o).sort().map((k) => `${JSON.stringify(k)}:${canonicalJson(o[k])}`).join(',')}}`;
  }
  return JSON.stringify(v);
}

let eventCounter = 0;
let pairCounter = 0;

/** bobUserId/bobDeviceId/store options let callers reuse a bob machine created elsewhere (e.g. with a persistent store). */
export async function makeOlmPair(opts: { bob?: OlmMachine; roomId?: string } = {}): Promise<OlmPair> {
  const roomIdStr = opts.roomId ?? '!olmpair:example.org';
  const server = new FakeKeyServer();
  // A fresh device ID per pair, so a reused bob never confuses this alice with an earlier one.
  const alice = await OlmMachine.initialize(new UserId('@alice:example.org'), new DeviceId(`ALICE${++pairCounter}${randomBytes(4).toString('hex').toUpperCase()}`));
  const bob = opts.bob ?? (await OlmMachine.initialize(new UserId('@bob:example.org'), new DeviceId('BOBDEVICE')));
  const aliceId = alice.userId.toString();
  const bobId = bob.userId.toString();
  if (aliceId === bobId) throw new Error(`olm-pair: bob must not be ${aliceId}`);

  // Publish both devices' keys, then let each learn the other's.
  await server.publish(alice);
  await server.publish(bob);
  await alice.updateTrackedUsers([new UserId(bobId)]);
  await bob.updateTrackedUsers([new UserId(aliceId)]);
  await server.pump(alice);
  // As the homeserver would in bob's next /sync: alice's device list changed (a reused bob may track her already).
  await server.sync(bob, [], [aliceId]);

  const settings = new RoomSettings();
  settings.algorithm = EncryptionAlgorithm.MegolmV1AesSha2;
  settings.sessionRotationPeriodMessages = 1_000_000;
  settings.sessionRotationPeriodMs = 7 * 24 * 3600 * 1000;
  await alice.setRoomSettings(new RoomId(roomIdStr), settings);

  const bobDevice = server.device(bobId, bob.deviceId.toString());

  /** Shares alice's current megolm session with bob's device if not yet shared (a no-op otherwise). */
  async function ensureShared(): Promise<void> {
    const claim = await alice.getMissingSessions([new UserId(bobId)]);
    if (claim) await alice.markRequestAsSent(claim.id, claim.type, server.answer(alice, claim));
    const enc = new EncryptionSettings();
    enc.algorithm = EncryptionAlgorithm.MegolmV1AesSha2;
    enc.historyVisibility = HistoryVisibility.Shared;
    enc.rotationPeriodMessages = 1_000_000n;
    enc.rotationPeriod = 7n * 24n * 3600n * 1_000_000n;
    for (const r of await alice.shareRoomKey(new RoomId(roomIdStr), [new UserId(bobId)], enc)) {
      await alice.markRequestAsSent(r.id, r.type, server.answer(alice, r));
    }
    await server.pump(alice);
  }

  async function shareKey(): Promise<object[]> {
    await ensureShared();
    return bobDevice.inbox.splice(0);
  }

  async function deliverToBob(events: object[]): Promise<void> {
    await server.sync(bob, events);
  }

  async function encryptMessages(n: number, body: (i: number) => string = (i) => `message ${i}`): Promise<object[]> {
    const room = new RoomId(roomIdStr);
    // encryptRoomEvent panics the wasm module (RuntimeError: unreachable) if no session was shared: never let it.
    await ensureShared();
    const out: object[] = [];
    const ts = Date.now();
    for (let i = 0; i < n; i++) {
      const content = await alice.encryptRoomEvent(room, 'm.room.message', JSON.stringify({ msgtype: 'm.text', body: body(i) }));
      out.push({
        event_id: `$olmpair${++eventCounter}`,
        sender: aliceId,
        origin_server_ts: ts + i,
        room_id: roomIdStr,
        type: 'm.room.encrypted',
        content: JSON.parse(content),
        unsigned: {},
      });
    }
    return out;
  }

  return { alice, bob, roomId: roomIdStr, shareKey, deliverToBob, encryptMessages };
}
