/**
 * A low-level E2EE peer for integration tests: a raw OlmMachine (crypto-wasm, in-memory store) that talks to the
 * homeserver over plain HTTP itself. Unlike js-peer (a full client that does everything at once), it lets a test
 * decide when each of the machine's requests reaches the server: e.g. send an encrypted room event first and the
 * to-device messages carrying its room key only later (a late key).
 *
 * Every request the machine produces (keys/upload, keys/query, keys/claim, sendToDevice, signatures/upload) is
 * sent to the real endpoint and its real response is handed back with markRequestAsSent.
 */
import * as W from '@matrix-org/matrix-sdk-crypto-wasm';
import { Peer } from './peer.ts';
import type { Homeserver } from './synapse.ts';

const enc = encodeURIComponent;
const MEGOLM = 'm.megolm.v1.aes-sha2';

/** An outgoing request of the machine (the union crypto-wasm returns, by the fields used here). */
type Outgoing = { id: string; type: W.RequestType; body: string; event_type?: string; txn_id?: string; room_id?: string };

/** To-device messages carrying a room key, produced by shareRoomKey and not yet sent. */
export interface HeldKeys {
  /** The to-device requests, as shareRoomKey returned them. */
  readonly requests: readonly W.ToDeviceRequest[];
}

/** A room message as this peer sees it. */
export interface PeerMessage {
  eventId: string;
  sender: string;
  /** Whether it was m.room.encrypted on the wire. */
  encrypted: boolean;
  body: string;
  /** The (decrypted) content. */
  content: Record<string, any>;
}

export class OlmPeer {
  /** Plain-HTTP side (rooms, membership, /sync); see peer.ts. */
  readonly http: Peer;
  readonly userId: string;
  readonly deviceId: string;
  private since: string | undefined;
  private stopped = false;
  /** Timeline events seen by {@link sync}, per room, in order (as the server sent them: encrypted ones still encrypted). */
  private readonly timeline = new Map<string, any[]>();

  private constructor(
    http: Peer,
    readonly machine: W.OlmMachine,
  ) {
    this.http = http;
    this.userId = http.userId;
    this.deviceId = http.user.deviceId;
  }

  /**
   * Registers a user, creates its OlmMachine for the login's device and uploads the device keys and one-time keys;
   * then, unless `crossSign: false`, cross-signs the device (as spec v1.18 clients expect: MSC4153).
   */
  static async start(hs: Homeserver, opts: { crossSign?: boolean } = {}): Promise<OlmPeer> {
    const user = await hs.registerUser();
    const machine = await W.OlmMachine.initialize(new W.UserId(user.userId), new W.DeviceId(user.deviceId));
    const peer = new OlmPeer(new Peer(hs.baseUrl, user), machine);
    await peer.flush();
    if (opts.crossSign !== false) {
      await crossSignDevice(machine, (method, path, body) => peer.http.request(method, path, body), user.userId, user.password);
      await peer.flush();
    }
    const keys = await peer.http.request('POST', '/keys/query', { device_keys: { [user.userId]: [user.deviceId] } });
    if (!keys.device_keys?.[user.userId]?.[user.deviceId]) throw new Error(`olm-peer: the device keys of ${user.userId}/${user.deviceId} are not on the homeserver after the upload`);
    return peer;
  }

  /** Sends one of the machine's requests to its endpoint and hands the response back to the machine. */
  async send(req: Outgoing): Promise<void> {
    const T = W.RequestType;
    const body = JSON.parse(req.body) as unknown;
    let res: unknown;
    switch (req.type) {
      case T.KeysUpload:
        res = await this.http.request('POST', '/keys/upload', body);
        break;
      case T.KeysQuery:
        res = await this.http.request('POST', '/keys/query', body);
        break;
      case T.KeysClaim:
        res = await this.http.request('POST', '/keys/claim', body);
        break;
      case T.SignatureUpload:
        res = await this.http.request('POST', '/keys/signatures/upload', body);
        break;
      case T.ToDevice:
        res = await this.http.request('PUT', `/sendToDevice/${enc(req.event_type!)}/${enc(req.txn_id!)}`, body);
        break;
      case T.RoomMessage:
        res = await this.http.request('PUT', `/rooms/${enc(req.room_id!)}/send/${enc(req.event_type!)}/${enc(req.txn_id!)}`, body);
        break;
      default:
        throw new Error(`olm-peer: request type ${String(req.type)} is not supported by this harness`);
    }
    await this.machine.markRequestAsSent(req.id, req.type, JSON.stringify(res));
  }

  /** Sends the machine's outgoing requests until it has none left. */
  async flush(): Promise<void> {
    for (let round = 0; ; round++) {
      const reqs = (await this.machine.outgoingRequests()) as Outgoing[];
      if (reqs.length === 0) return;
      if (round >= 20) throw new Error(`olm-peer: still ${reqs.length} outgoing requests after 20 rounds (types ${reqs.map((r) => r.type).join(',')})`);
      for (const r of reqs) await this.send(r);
    }
  }

  /**
   * One /sync (long-polling up to `timeoutMs` once a token is held): hands the to-device events, device-list changes
   * and one-time key counts to the machine, then sends the requests that follow. Returns the raw response.
   */
  async sync(timeoutMs = 0): Promise<any> {
    const query: Record<string, string> = { timeout: String(this.since ? timeoutMs : 0) };
    if (this.since) query.since = this.since;
    const res = await this.http.request('GET', '/sync', undefined, query);
    this.since = res.next_batch;
    const changed = ((res.device_lists?.changed ?? []) as string[]).map((u) => new W.UserId(u));
    const left = ((res.device_lists?.left ?? []) as string[]).map((u) => new W.UserId(u));
    const counts = new Map<string, number>(Object.entries((res.device_one_time_keys_count ?? {}) as Record<string, number>));
    const fallback = res.device_unused_fallback_key_types ? new Set<string>(res.device_unused_fallback_key_types as string[]) : undefined;
    await this.machine.receiveSyncChanges(JSON.stringify(res.to_device?.events ?? []), new W.DeviceLists(changed, left), counts, fallback);
    await this.flush();
    for (const [roomId, room] of Object.entries<any>(res.rooms?.join ?? {})) {
      let list = this.timeline.get(roomId);
      if (!list) this.timeline.set(roomId, (list = []));
      list.push(...((room.timeline?.events ?? []) as any[]));
    }
    return res;
  }

  /**
   * Syncs until a timeline message of the room matches (encrypted ones are offered once they decrypt: a key that
   * arrives in a later sync is waited for); resolves with it.
   */
  async waitForMessage(roomId: string, match: (m: PeerMessage) => boolean, timeoutMs = 20_000): Promise<PeerMessage> {
    const deadline = Date.now() + timeoutMs;
    const failures = new Map<string, string>();
    for (;;) {
      for (const ev of this.timeline.get(roomId) ?? []) {
        const m = await this.toMessage(roomId, ev, failures);
        if (m && match(m)) return m;
      }
      const remaining = deadline - Date.now();
      if (remaining <= 0) {
        const seen = (this.timeline.get(roomId) ?? []).map((e) => `${e.event_id} ${e.type} from ${e.sender}${failures.has(e.event_id) ? ` (undecryptable: ${failures.get(e.event_id)})` : ''}`);
        throw new Error(`olm-peer ${this.userId}: no matching message in ${roomId} within ${timeoutMs} ms; saw:\n  ${seen.join('\n  ')}`);
      }
      await this.sync(Math.min(1000, remaining));
    }
  }

  /** A timeline event as a message (decrypted if it was encrypted), or null if it is none or does not decrypt (yet). */
  private async toMessage(roomId: string, ev: any, failures: Map<string, string>): Promise<PeerMessage | null> {
    let type = ev.type as string;
    let content = ev.content as Record<string, any>;
    const encrypted = type === 'm.room.encrypted';
    if (encrypted) {
      try {
        const d = await this.machine.decryptRoomEvent(JSON.stringify(ev), new W.RoomId(roomId), new W.DecryptionSettings(W.TrustRequirement.Untrusted));
        const clear = JSON.parse(d.event) as { type: string; content: Record<string, any> };
        d.free();
        type = clear.type;
        content = clear.content;
        failures.delete(ev.event_id);
      } catch (err) {
        failures.set(ev.event_id, String((err as { description?: string }).description ?? err));
        return null;
      }
    }
    if (type !== 'm.room.message') return null;
    return { eventId: ev.event_id, sender: ev.sender, encrypted, body: typeof content.body === 'string' ? content.body : '', content };
  }

  /** Creates a private room with m.room.encryption (megolm) inviting `invite`; returns its ID. */
  async createEncryptedRoom(invite: string[]): Promise<string> {
    const roomId = await this.http.createRoom({ invite, encrypted: true });
    const settings = new W.RoomSettings();
    settings.algorithm = W.EncryptionAlgorithm.MegolmV1AesSha2;
    await this.machine.setRoomSettings(new W.RoomId(roomId), settings);
    return roomId;
  }

  /** The room's joined members, as the server says. */
  async joinedMembers(roomId: string): Promise<string[]> {
    const { joined } = await this.http.request('GET', `/rooms/${enc(roomId)}/joined_members`);
    return Object.keys(joined ?? {});
  }

  /**
   * Prepares the room key for the room's joined members: queries their devices, claims one-time keys (both sent at
   * once: they are not what a test holds back) and creates the to-device messages carrying the key, which are
   * returned unsent. An empty list means every member's device already has the current session.
   */
  async prepareRoomKey(roomId: string): Promise<HeldKeys> {
    const members = await this.joinedMembers(roomId);
    const ids = () => members.map((u) => new W.UserId(u));
    await this.machine.updateTrackedUsers(ids());
    await this.flush(); // keys/query of the members' devices
    const claim = await this.machine.getMissingSessions(ids());
    if (claim) await this.send(claim as unknown as Outgoing);
    const requests = await this.machine.shareRoomKey(new W.RoomId(roomId), ids(), new W.EncryptionSettings());
    return { requests };
  }

  /** Sends held room-key messages (to-device) now. */
  async releaseKeys(held: HeldKeys): Promise<void> {
    for (const r of held.requests) await this.send(r as unknown as Outgoing);
  }

  /**
   * Encrypts `content` as an event of `type` for the room with the current outbound session (prepareRoomKey must
   * have been called for the room) and sends it as an m.room.encrypted room event; returns the event ID and the
   * encrypted content.
   */
  async sendEncrypted(roomId: string, type: string, content: Record<string, unknown>): Promise<{ eventId: string; content: Record<string, any> }> {
    const encrypted = JSON.parse(await this.machine.encryptRoomEvent(new W.RoomId(roomId), type, JSON.stringify(content))) as Record<string, any>;
    if (encrypted.algorithm !== MEGOLM) throw new Error(`olm-peer: unexpected algorithm ${encrypted.algorithm}`);
    const eventId = await this.http.sendEvent(roomId, 'm.room.encrypted', encrypted);
    return { eventId, content: encrypted };
  }

  /** Shares the room key (sent at once) and sends an encrypted m.text message; returns its event ID. */
  async sendText(roomId: string, body: string): Promise<string> {
    await this.releaseKeys(await this.prepareRoomKey(roomId));
    return (await this.sendEncrypted(roomId, 'm.room.message', { msgtype: 'm.text', body })).eventId;
  }

  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.machine.close();
  }
}

/**
 * Gives the machine's user a new cross-signing identity and signs the machine's device with it: the keys upload is
 * authorised with the password (user-interactive auth: the first attempt's 401 gives the session). `request` sends
 * one client-server API request (paths under /_matrix/client/v3) and throws an error with `status` and `body`.
 */
export async function crossSignDevice(
  machine: W.OlmMachine,
  request: (method: string, path: string, body: unknown) => Promise<any>,
  user: string,
  password: string,
): Promise<void> {
  const reqs = await machine.bootstrapCrossSigning(true);
  const keys = JSON.parse(reqs.uploadSigningKeysRequest.body) as Record<string, unknown>;
  try {
    await request('POST', '/keys/device_signing/upload', keys);
  } catch (err) {
    const e = err as { status?: number; body?: { session?: string } };
    if (e.status !== 401 || !e.body?.session) throw err;
    const auth = { type: 'm.login.password', identifier: { type: 'm.id.user', user }, password, session: e.body.session };
    await request('POST', '/keys/device_signing/upload', { ...keys, auth });
  }
  const sigs = reqs.uploadSignaturesRequest;
  const res = await request('POST', '/keys/signatures/upload', JSON.parse(sigs.body));
  if (sigs.id) await machine.markRequestAsSent(sigs.id, sigs.type, JSON.stringify(res));
  reqs.free();
}
