/**
 * Interactive verification (SAS, emoji or decimals) in the crypto actor. The engine runs the protocol; this module
 * finds new requests (to-device ones in a batch's to-device events, in-room ones among decrypted events), asks main
 * whether their sender is allowed (`verification.from` may be a function, which lives on main), accepts or cancels
 * them, goes on to SAS, shows main the SAS once it can be compared, and tells main how each flow ended.
 *
 * Every engine call runs in the actor's serial queue ({@link VerificationHost.run}); the engine's change callbacks
 * fire from inside queued calls, so they only schedule the next step, which runs after the current call. Requests
 * the engine returns are sent after the queued call that made them (sending waits on the queue too), and those it
 * queued among its outgoing requests by a flush after each step.
 */
import { HalcyonError } from '../errors.ts';
import type { CryptoToMain, VerificationWire } from '../protocol.ts';
import type { Wasm } from './trust.ts';

type OlmMachine = import('@matrix-org/matrix-sdk-crypto-wasm').OlmMachine;
type Sas = import('@matrix-org/matrix-sdk-crypto-wasm').Sas;
type VerificationRequest = import('@matrix-org/matrix-sdk-crypto-wasm').VerificationRequest;
type ProcessedToDeviceEvent = import('@matrix-org/matrix-sdk-crypto-wasm').ProcessedToDeviceEvent;
type CancelInfo = import('@matrix-org/matrix-sdk-crypto-wasm').CancelInfo;

/** An outgoing request of the engine, by the fields the actor's sender reads. */
export type Outgoing = { id: string; type: import('@matrix-org/matrix-sdk-crypto-wasm').RequestType; body: string };

/** What verification needs from the crypto actor. */
export interface VerificationHost {
  readonly machine: OlmMachine;
  readonly ownDeviceId: string;
  /** Runs engine calls in the actor's serial queue. */
  run<T>(fn: () => Promise<T>): Promise<T>;
  /** Sends one outgoing request and marks it sent (outside the queue). */
  send(req: Outgoing): Promise<void>;
  /** Sends the engine's queued requests (key queries first of all). */
  flush(): Promise<void>;
  post(msg: CryptoToMain): void;
  /** A verification ended with success: device trust changed. */
  verified(): void;
}

/** One flow the actor follows until it ends. */
interface Flow {
  wire: VerificationWire;
  request: VerificationRequest;
  sas: Sas | null;
  sasShown: boolean;
  startingSas: boolean;
  /** The flows of one {@link Verifications.request} over several devices (the first to be ready goes on). */
  group: string[] | null;
}

const REQUEST_TYPE = 'm.key.verification.request';
/** Retries of a request whose sender device is unknown, before it is given up (the device never came). */
const MAX_RETRIES = 5;
/** A request still unknown after a retry is retried this long after it (doubling), without waiting for a batch. */
const RETRY_MS = 1000;

/** A request the engine ignored because its sender device was unknown: to-device (`raw`) or in-room (`roomId`, `event`). */
interface Parked {
  sender: string;
  /** Its flow: the to-device request's transaction ID, the in-room request's event ID. */
  flowId: string;
  raw?: string;
  roomId?: string;
  event?: Record<string, unknown>;
  /** Retries it had. */
  tries: number;
}

/** The verification flows of one crypto actor; see the module comment. */
export class Verifications {
  private readonly flows = new Map<string, Flow>();
  /** Requests the engine ignored because their sender device was unknown, to retry once its keys are fetched. */
  private unknownSenders: Parked[] = [];
  private retryTimer: ReturnType<typeof setTimeout> | null = null;

  constructor(
    private readonly W: Wasm,
    private readonly host: VerificationHost,
  ) {}

  /** In the queue, after a batch's to-device events were applied: follows the new requests among them. */
  noticeToDevice(processed: ProcessedToDeviceEvent[]): void {
    const T = this.W.ProcessedToDeviceEventType;
    for (const p of processed) {
      if (p.type !== T.Decrypted && p.type !== T.PlainText) continue;
      const ev = parse((p as { rawEvent: string }).rawEvent);
      const content = ev?.content as Record<string, unknown> | undefined;
      if (ev?.type !== REQUEST_TYPE || typeof ev.sender !== 'string' || typeof content?.transaction_id !== 'string') continue;
      // The engine ignores a request from a device it does not know (a user it does not track): fetched, then retried.
      if (!this.follow(ev.sender, content.transaction_id, null)) this.park({ sender: ev.sender, flowId: content.transaction_id, raw: (p as { rawEvent: string }).rawEvent, tries: 0 });
    }
  }

  /** Outside the queue, after a batch's events: queries the devices of unknown requesters and retries their requests. */
  async retryUnknownSenders(): Promise<void> {
    const W = this.W;
    const pending = this.unknownSenders.splice(0);
    if (pending.length === 0) return;
    await this.host.run(() => this.host.machine.updateTrackedUsers(pending.map((p) => new W.UserId(p.sender))));
    await this.host.flush();
    await this.host.run(async () => {
      const toDevice = pending.flatMap((p) => (p.raw === undefined ? [] : [JSON.parse(p.raw) as unknown]));
      // Without key counts: the variant that reads missing counts as unknown, not zero.
      const settings = new W.DecryptionSettings(W.TrustRequirement.Untrusted);
      // The engine sees the to-device requests again, now that their senders' devices were fetched.
      if (toDevice.length > 0) await this.host.machine.receiveSyncChangesMsc4186(JSON.stringify(toDevice), new W.DeviceLists([], []), new Map(), undefined, settings);
      for (const p of pending) {
        if (p.roomId !== undefined && p.event !== undefined) await this.noticeRoomEvent(p.roomId, p.event, p.tries + 1);
        else if (!this.follow(p.sender, p.flowId, null)) this.park({ ...p, tries: p.tries + 1 });
      }
    });
  }

  /**
   * Keeps a request whose sender device is still unknown for another retry, up to {@link MAX_RETRIES}. The device
   * can be missing at a retry (the key query that fetches it still out, or answered before the device was
   * uploaded); dropping the request there left the peer waiting for an answer that never came. The next retry
   * comes with the next batch or decryption, or after a delay: a quiet room may bring neither for a long-poll.
   */
  private park(p: Parked): void {
    if (p.tries >= MAX_RETRIES) return;
    this.unknownSenders.push(p);
    if (p.tries === 0 || this.retryTimer) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      this.retryUnknownSenders().catch((err: unknown) => this.warn('retrying a request from an unknown device', err));
    }, RETRY_MS * 2 ** (p.tries - 1));
    this.retryTimer.unref?.();
  }

  /**
   * In the queue: hands an in-room event (decrypted, or clear from the sync) to the engine if it belongs to a
   * verification. A request to the bot the engine ignored (its sender's devices are not known: a user the bot does
   * not track) is kept for {@link retryUnknownSenders} ({@link park}); `tries` counts the retries it had.
   */
  async noticeRoomEvent(roomId: string, event: Record<string, unknown>, tries = 0): Promise<void> {
    const type = event.type;
    const content = event.content as Record<string, unknown> | undefined;
    const isRequest = type === 'm.room.message' && content?.msgtype === REQUEST_TYPE;
    if (!isRequest && !(typeof type === 'string' && type.startsWith('m.key.verification.'))) return;
    await this.host.machine.receiveVerificationEvent(JSON.stringify({ ...event, room_id: roomId }), new this.W.RoomId(roomId));
    const { sender, event_id: flowId } = event;
    if (!isRequest || typeof sender !== 'string' || typeof flowId !== 'string' || content?.to !== this.ownUserId()) return;
    if (!this.follow(sender, flowId, null)) this.park({ sender, flowId, roomId, event, tries });
  }

  /** Accepts a request whose sender main allows (SAS only: the bot can neither show nor scan a QR code), or cancels it. */
  async answer(userId: string, flowId: string, accept: boolean): Promise<void> {
    const out = await this.host.run(async () => {
      const req = this.requestOf(userId, flowId);
      const r = accept ? req.acceptWithMethods([this.W.VerificationMethod.SasV1]) : req.cancel();
      return r ? [r] : [];
    });
    await this.sendAll(out);
  }

  /** Confirms that the SAS matches. */
  async confirm(userId: string, flowId: string): Promise<void> {
    const out = await this.host.run(async () => {
      const v = this.host.machine.getVerification(new this.W.UserId(userId), flowId);
      if (!(v instanceof this.W.Sas)) throw new HalcyonError('HALCYON_INVALID_ARGUMENT', `verification ${flowId} with ${userId} has no SAS to confirm`);
      return v.confirm();
    });
    await this.sendAll(out);
  }

  /** Cancels a verification (`m.user`). */
  async cancel(userId: string, flowId: string): Promise<void> {
    const out = await this.host.run(async () => {
      const v = this.host.machine.getVerification(new this.W.UserId(userId), flowId);
      const r = v instanceof this.W.Sas ? v.cancel() : this.requestOf(userId, flowId).cancel();
      return r ? [r] : [];
    });
    await this.sendAll(out);
  }

  /**
   * Requests a verification of one device of `userId`, or of each of its devices the bot knows (not its own).
   * The user's devices are queried first, so a user the bot shares no room with works too.
   */
  async request(userId: string, deviceId: string | null): Promise<string[]> {
    const W = this.W;
    await this.host.run(() => this.host.machine.updateTrackedUsers([new W.UserId(userId)]));
    await this.host.flush();
    const { out, flowIds } = await this.host.run(async () => {
      const all = await this.host.machine.getUserDevices(new W.UserId(userId));
      const devices = all.devices().filter((d) => (deviceId === null || d.deviceId.toString() === deviceId) && !(userId === this.ownUserId() && d.deviceId.toString() === this.host.ownDeviceId));
      all.free();
      if (devices.length === 0) {
        throw new HalcyonError('HALCYON_INVALID_ARGUMENT', `requestVerification: ${deviceId === null ? `${userId} has no device` : `device ${deviceId} of ${userId} is not`} known to the homeserver`);
      }
      const out: Outgoing[] = [];
      const keys: string[] = [];
      for (const d of devices) {
        const [req, toDevice] = d.requestVerification([W.VerificationMethod.SasV1]);
        out.push(toDevice);
        keys.push(key(userId, req.flowId));
        this.follow(userId, req.flowId, keys, req);
        d.free();
      }
      return { out, flowIds: keys.map((k) => k.slice(userId.length + 1)) };
    });
    await this.sendAll(out);
    return flowIds;
  }

  /** Drops the pending retry's timer (the actor is closing: a retry would find its queue shut). */
  stop(): void {
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.unknownSenders = [];
  }

  /** Reports a failure that does not end a flow (what it could not do is tried again later). */
  private warn(what: string, err: unknown): void {
    this.host.post({ kind: 'warning', message: `verification: ${what} failed: ${(err as Error)?.message ?? String(err)}` });
  }

  private ownUserId(): string {
    return this.host.machine.userId.toString();
  }

  private requestOf(userId: string, flowId: string): VerificationRequest {
    const req = this.host.machine.getVerificationRequest(new this.W.UserId(userId), flowId);
    if (!req) throw new HalcyonError('HALCYON_INVALID_ARGUMENT', `no verification ${flowId} with ${userId} is in progress`);
    return req;
  }

  /** Starts following a flow (once); an incoming request still waiting for an answer is put to main. False: no such flow. */
  private follow(userId: string, flowId: string, group: string[] | null, known?: VerificationRequest): boolean {
    const k = key(userId, flowId);
    if (this.flows.has(k)) return true;
    const request = known ?? this.host.machine.getVerificationRequest(new this.W.UserId(userId), flowId);
    if (!request) return false;
    const incoming = !request.weStarted();
    if (incoming && request.phase() !== this.W.VerificationRequestPhase.Requested) return true; // answered or ended already
    const wire: VerificationWire = { flowId, userId, deviceId: request.otherDeviceId?.toString() ?? null, roomId: request.roomId?.toString() ?? null, weStarted: !incoming };
    this.flows.set(k, { wire, request, sas: null, sasShown: false, startingSas: false, group });
    request.registerChangesCallback(async () => this.changed(k));
    if (incoming) this.host.post({ kind: 'verificationAsked', verification: { ...wire } });
    return true;
  }

  /** An engine change callback: the next step runs after the queued call that is running now. */
  private changed(k: string): void {
    void this.step(k).catch((err: unknown) => {
      const flow = this.flows.get(k);
      if (flow) this.end(flow, false, null, `the verification failed in Halcyon: ${(err as Error)?.message ?? String(err)}`);
    });
  }

  private async step(k: string): Promise<void> {
    const flow = this.flows.get(k);
    if (!flow) return;
    const out = await this.host.run(() => this.advance(k, flow));
    await this.sendAll(out);
    // The change may have come with an answer the engine queued rather than returned (the SAS key after an accept,
    // `done` after a MAC): a batch's to-device events are followed by a flush, but an in-room event decrypted from
    // the timeline is not, and the peer waiting for that answer sends nothing that would bring the next one.
    // Not the flow's failure: what was not sent stays queued in the engine, and the next flush sends it.
    await this.host.flush().catch((err: unknown) => this.warn("sending the engine's queued requests", err));
  }

  /** In the queue: moves a flow on by its phase; returns the requests to send. */
  private async advance(k: string, flow: Flow): Promise<Outgoing[]> {
    const P = this.W.VerificationRequestPhase;
    const req = flow.request;
    flow.wire.deviceId ??= req.otherDeviceId?.toString() ?? null;
    const phase = req.phase();
    if (phase === P.Cancelled) return (this.end(flow, false, req.cancelInfo ?? null), []);
    if (phase === P.Done) return (this.end(flow, true, null), []);
    const out: Outgoing[] = [];
    if (phase === P.Ready && flow.wire.weStarted && !flow.startingSas) {
      // We asked: we start SAS once the other side is ready; the other devices asked in the same call are let go.
      flow.startingSas = true;
      for (const other of flow.group ?? []) if (other !== k) this.cancelQuietly(other, out);
      const started = await req.startSas();
      if (started) {
        this.watch(k, flow, started[0]);
        out.push(started[1]);
      }
    }
    if (phase === P.Transitioned && !flow.sas) {
      const v = req.getVerification();
      if (v instanceof this.W.Sas) this.watch(k, flow, v);
    }
    const sas = flow.sas;
    if (!sas) return out;
    // Accepts a start sent by the other side; nothing when we sent it, or accepted already.
    const accepted = sas.accept();
    if (accepted) out.push(accepted);
    if (sas.isCancelled()) this.end(flow, false, sas.cancelInfo() ?? null);
    else if (sas.isDone()) this.end(flow, true, null);
    else if (sas.canBePresented() && !flow.sasShown) {
      flow.sasShown = true;
      const emoji = (sas.emoji() ?? []).map((e) => ({ symbol: e.symbol, description: e.description }));
      this.host.post({ kind: 'verificationSas', verification: { ...flow.wire }, emoji, decimals: [...(sas.decimals() ?? [])] });
    }
    return out;
  }

  private watch(k: string, flow: Flow, sas: Sas): void {
    flow.sas = sas;
    sas.registerChangesCallback(async () => this.changed(k));
  }

  /** Cancels another flow of a group (its request is no longer needed). */
  private cancelQuietly(k: string, out: Outgoing[]): void {
    const other = this.flows.get(k);
    if (!other) return;
    const r = other.request.cancel();
    if (r) out.push(r);
  }

  private end(flow: Flow, done: boolean, cancel: CancelInfo | null, reason?: string): void {
    const k = key(flow.wire.userId, flow.wire.flowId);
    if (this.flows.get(k) !== flow) return;
    this.flows.delete(k);
    if (done) this.host.verified();
    this.host.post({
      kind: 'verificationEnded',
      verification: { ...flow.wire },
      done,
      cancelCode: done ? null : (cancel?.cancelCode() ?? 'm.user'),
      reason: done ? null : (reason ?? cancel?.reason() ?? null),
      byUs: done ? false : reason !== undefined || (cancel?.cancelledbyUs() ?? true),
    });
  }

  private async sendAll(out: Outgoing[]): Promise<void> {
    for (const r of out) await this.host.send(r);
  }
}

function key(userId: string, flowId: string): string {
  return `${userId}|${flowId}`;
}

function parse(text: string): Record<string, unknown> | null {
  try {
    const v = JSON.parse(text) as unknown;
    return typeof v === 'object' && v !== null ? (v as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}
