/**
 * The OlmMachine's outgoing requests (key uploads and queries, one-time key claims, signatures, to-device and
 * in-room messages), sent to the homeserver and marked as sent in the machine. Part of the crypto actor (which
 * owns the machine and the queue every machine call goes through); kept apart so the actor reads in one sitting.
 */
import { HalcyonError } from '../errors.ts';
import { type MatrixHttp, seg } from '../http.ts';
import { free } from '../memory.ts';
import type { KeyBackup, Machine, Wasm } from './backup.ts';
import { errMessage } from './decrypted.ts';
import type { SerialQueue } from './queue.ts';
import type { Outgoing } from './verification.ts';

/** Rounds of "ask the machine, send what it made" per flush (each round's answers may make more requests). */
const MAX_ROUNDS = 10;

/** What the requests need from their crypto actor. */
export interface OutgoingContext {
  W: Wasm;
  machine: Machine;
  queue: SerialQueue;
  http: MatrixHttp;
  deviceId: string;
  /** True when this run created the crypto store (a key upload the server refuses then means the store was lost). */
  freshStore: boolean;
  /** The key backup, kicked when a flush finds nothing left to send; null until the actor has one. */
  backup(): KeyBackup | null;
  /** Stops the bot: the device's keys cannot be uploaded, ever. */
  fatal(err: HalcyonError): void;
}

/** Sends the machine's outgoing requests; see the module comment. */
export class OutgoingRequests {
  private running: Promise<void> | null = null;
  private queued: Promise<void> | null = null;

  constructor(private readonly ctx: OutgoingContext) {}

  /**
   * Sends the machine's outgoing requests until none are left. Callers share loops: a call made while a loop
   * runs waits for one more loop after it (so requests created by the caller's own changes are included).
   */
  flush(): Promise<void> {
    if (this.queued) return this.queued;
    if (!this.running) {
      const run = this.loop().finally(() => (this.running = null));
      this.running = run;
      return run;
    }
    const queued = this.running.catch(() => {}).then(() => {
      this.queued = null;
      return this.flush();
    });
    this.queued = queued;
    return queued;
  }

  /** Resolves once no loop runs or waits (the actor is closing). */
  async settle(): Promise<void> {
    await this.running?.catch(() => {});
    await this.queued?.catch(() => {});
  }

  /** Sends requests the machine just made, in order, each freed (a wasm object) once sent or once one failed. */
  async sendAll(reqs: Array<Outgoing & { free(): void }>): Promise<void> {
    try {
      for (const r of reqs) await this.send(r);
    } finally {
      free(...reqs);
    }
  }

  /** Sends one request and tells the machine its answer. Key backup requests are not sent here (backup.ts). */
  async send(req: Outgoing): Promise<void> {
    const { W, http, queue, machine } = this.ctx;
    const T = W.RequestType;
    const target = requestTarget(W, req);
    if (!target) return;
    let res: unknown;
    try {
      res = await http.json(target.method, target.path, { body: JSON.parse(req.body) as unknown });
    } catch (err) {
      if (req.type === T.KeysUpload && this.ctx.freshStore && (err as HalcyonError).status === 400) {
        // The server holds keys of an earlier store of this device: a new identity would be rejected forever.
        const e = new HalcyonError(
          'HALCYON_CRYPTO_STORE',
          `the homeserver already holds other keys for device ${this.ctx.deviceId} (its crypto store was lost); log in again for a new device: ${errMessage(err)}`,
          { cause: err },
        );
        this.ctx.fatal(e);
        throw e;
      }
      throw err;
    }
    // An answer without a signed_curve25519 count means zero (as in a sync). The engine reads a missing count as
    // "unchanged", yet marks every key it holds as published, new ones made while this upload was in flight
    // included: without the zero, those are never uploaded and the pool stays empty.
    if (req.type === T.KeysUpload) res = withZeroCount(res);
    await queue.run(() => machine.markRequestAsSent(req.id, req.type, JSON.stringify(res)), 'high');
  }

  private async loop(): Promise<void> {
    for (let round = 0; round < MAX_ROUNDS; round++) {
      const reqs = await this.ctx.queue.run(() => this.ctx.machine.outgoingRequests(), 'high');
      if (reqs.length === 0) {
        this.ctx.backup()?.kick(); // room keys that arrived meanwhile go to the key backup, without holding this loop up
        return;
      }
      await this.sendAll(reqs as Array<Outgoing & { free(): void }>);
    }
  }
}

/** The endpoint of a request the machine made, or null for a type it does not send through here. */
function requestTarget(W: Wasm, req: Outgoing): { method: string; path: string } | null {
  const T = W.RequestType;
  switch (req.type) {
    case T.KeysUpload: return { method: 'POST', path: '/_matrix/client/v3/keys/upload' };
    case T.KeysQuery: return { method: 'POST', path: '/_matrix/client/v3/keys/query' };
    case T.KeysClaim: return { method: 'POST', path: '/_matrix/client/v3/keys/claim' };
    case T.SignatureUpload: return { method: 'POST', path: '/_matrix/client/v3/keys/signatures/upload' };
    case T.ToDevice: {
      const r = req as InstanceType<Wasm['ToDeviceRequest']>;
      return { method: 'PUT', path: `/_matrix/client/v3/sendToDevice/${seg(r.event_type)}/${seg(r.txn_id)}` };
    }
    case T.RoomMessage: {
      const r = req as InstanceType<Wasm['RoomMessageRequest']>;
      return { method: 'PUT', path: `/_matrix/client/v3/rooms/${seg(r.room_id)}/send/${seg(r.event_type)}/${seg(r.txn_id)}` };
    }
    default:
      return null; // nothing else is produced here (key backup requests come from backupRoomKeys: see backup.ts)
  }
}

/** A /keys/upload answer with `signed_curve25519: 0` added to `one_time_key_counts` when the server left it out. */
function withZeroCount(res: unknown): unknown {
  if (typeof res !== 'object' || res === null) return res;
  const counts = (res as { one_time_key_counts?: unknown }).one_time_key_counts;
  const given = typeof counts === 'object' && counts !== null ? counts : {};
  return { ...res, one_time_key_counts: { signed_curve25519: 0, ...given } };
}
