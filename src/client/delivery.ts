/**
 * Delivery: turns one event of a batch (a {@link BatchReader} slot) into the handler task the dispatcher runs —
 * classified from the columns, wrapped in its typed object, emitted to the handlers of its kind and then to
 * `event` handlers — plus the tasks of invites and of undecryptable events. A task is made only when some handler
 * wants the event: an event nobody listens to costs no object and no parse. It also brings the crypto actor's
 * verification flows to the app (`verificationRequest`, the `verification` option) and its warnings to the log.
 */
import { HalcyonError } from '../errors.ts';
import { type BatchReader, Edit, type Invite, MemberEvent, Message, Reaction, Redaction, type Room, RoomEvent, type Verification } from '../events.ts';
import { editProblem } from '../edits.ts';
import { userIdArg } from '../ids.ts';
import { beginHandlerRun, endHandlerSyncPart } from '../outbox.ts';
import { type CryptoActorApi, type CryptoToMain, EVENT_FLAGS, OFF, type VerificationWire, type WireBatch } from '../protocol.ts';
import { isPromise, settle } from './bus.ts';
import type { ClientCore } from './core.ts';
import { ENCRYPTED } from './actors.ts';
import { fetchEvent } from './messages.ts';
import type { DecryptionErrorInfo } from './options.ts';
import { addDirectRoom, joinRoom, leaveRoom } from './rooms-api.ts';

/** The kinds of room events with handlers of their own. */
export type EventKind = 'message' | 'edit' | 'reaction' | 'member' | 'redaction';

/** A dispatcher task that calls `done` once the handlers settled. */
export type HandlerTask = (done: () => void) => unknown;

/** What a withheld room key means for the bot, by `m.room_key.withheld` code (for the default log line). */
const WITHHELD: Record<string, string> = {
  'm.unverified': "its sender's client shares room keys only with verified devices (m.unverified): the bot's device is not cross-signed or verified",
  'm.blacklisted': "its sender's client blocked the bot's device (m.blacklisted)",
  'm.unauthorised': 'its sender does not allow the bot to read it (m.unauthorised)',
  'm.unavailable': "its sender's client does not have the room key (m.unavailable)",
  'm.no_olm': "its sender's client could not open a secure channel to the bot's device (m.no_olm)",
};

/** How a verification flow ended, as the crypto actor said. */
type Ended = Extract<CryptoToMain, { kind: 'verificationEnded' }>;
/** Ends of flows nobody waited for yet, kept for a late waiter (a request's answer racing its flow IDs). */
const KEEP_ENDED = 100;

/** The handler kind of an event of `type` with relation `relType`, or null (only `event` handlers get it). */
export function classify(type: string, relType: string | null): EventKind | null {
  switch (type) {
    case 'm.room.message':
      return relType === 'm.replace' ? 'edit' : 'message';
    case 'm.reaction':
      return 'reaction';
    case 'm.room.member':
      return 'member';
    case 'm.room.redaction':
      return 'redaction';
    default:
      return null;
  }
}

/** Makes the handler tasks of events, invites and undecryptable events; see the module comment. */
export class Delivery {
  /** Who waits for the end of a verification flow, by `userId|flowId`. */
  private readonly waiting = new Map<string, Array<(e: Ended) => void>>();
  private readonly ended = new Map<string, Ended>();

  constructor(private readonly core: ClientCore) {}

  /** The crypto actor's messages about verification, and its warnings. */
  cryptoNews(msg: CryptoToMain): void {
    switch (msg.kind) {
      case 'warning':
        this.core.opts.logger.warn({}, msg.message);
        break;
      case 'verificationAsked':
        void this.answerRequest(msg.verification);
        break;
      case 'verificationSas':
        this.showSas(msg.verification, msg.emoji, msg.decimals);
        break;
      case 'verificationEnded':
        this.verificationEnded(msg);
        break;
    }
  }

  /** Resolves when flow `flowId` with `userId` ends (at once if it has ended already). */
  whenEnded(userId: string, flowId: string): Promise<Ended> {
    const k = `${userId}|${flowId}`;
    const known = this.ended.get(k);
    if (known) return Promise.resolve(known);
    return new Promise((resolve) => {
      const list = this.waiting.get(k) ?? [];
      list.push(resolve);
      this.waiting.set(k, list);
    });
  }

  /** Accepts an incoming request if `verification.from` allows its sender, else cancels it and reports that. */
  private async answerRequest(v: VerificationWire): Promise<void> {
    const { opts, bus, actors } = this.core;
    let allowed = false;
    try {
      const from = opts.verification?.from;
      allowed = from === undefined ? false : Array.isArray(from) ? from.includes(v.userId) : (await from(v.userId)) === true;
    } catch (err) {
      bus.handlerFailed(err, 'verification.from');
    }
    try {
      await actors.openCrypto?.answerVerification(v.userId, v.flowId, allowed);
    } catch (err) {
      bus.emitError(err as HalcyonError);
    }
    if (!allowed) {
      const why = opts.verification ? 'verification.from does not allow this user' : 'the client accepts no verification (no `verification` option)';
      bus.emitError(new HalcyonError('HALCYON_VERIFICATION_REFUSED', `a verification request from ${v.userId} (device ${v.deviceId ?? 'unknown'}) was cancelled: ${why}`));
    }
  }

  /** Emits a SAS ready to compare; confirms it first with `autoConfirm`, cancels it when nobody could compare it. */
  private showSas(v: VerificationWire, emoji: Verification['emoji'], decimals: number[]): void {
    const { opts, bus } = this.core;
    const verification: Verification = { ...v, emoji, decimals, confirm: () => this.confirmSas(v), cancel: () => this.crypto().cancelVerification(v.userId, v.flowId) };
    const auto = opts.verification?.autoConfirm === true;
    if (auto) verification.confirm().catch(() => {}); // its end is reported by verificationEnded
    else if (!bus.has('verificationRequest')) {
      opts.logger.warn({ userId: v.userId, deviceId: v.deviceId }, `verification with ${v.userId} cancelled: no verificationRequest handler shows the SAS, and verification.autoConfirm is off`);
      void verification.cancel().catch(() => {});
      return;
    }
    bus.emit('verificationRequest', verification)?.catch(() => {});
  }

  private async confirmSas(v: VerificationWire): Promise<void> {
    const end = this.whenEnded(v.userId, v.flowId);
    await this.crypto().confirmVerification(v.userId, v.flowId);
    const e = await end;
    if (!e.done) throw cancelled(e);
  }

  private verificationEnded(e: Ended): void {
    const v = e.verification;
    const k = `${v.userId}|${v.flowId}`;
    const waiters = this.waiting.get(k);
    this.waiting.delete(k);
    for (const w of waiters ?? []) w(e);
    if (!waiters) {
      this.ended.set(k, e);
      while (this.ended.size > KEEP_ENDED) this.ended.delete(this.ended.keys().next().value!);
      if (e.done) this.core.opts.logger.info({ userId: v.userId, deviceId: v.deviceId }, `verified device ${v.deviceId} of ${v.userId}`);
      else if (!e.byUs) this.core.bus.emitError(cancelled(e));
    }
  }

  private crypto(): CryptoActorApi {
    const crypto = this.core.actors.openCrypto;
    if (!crypto) throw new HalcyonError('HALCYON_RESTARTING', 'the crypto actor is restarting');
    return crypto;
  }

  /** The task delivering event `i` of a reader, or null if no handler wants it. */
  eventTask(r: BatchReader, i: number, roomId: string, anyEvent: boolean): HandlerTask | null {
    // A cluster's ingest hands every event to the stream; the workers' handlers run it.
    const cluster = this.core.cluster;
    if (cluster?.role === 'ingest') return cluster.publishTask(r, i, roomId);
    const kind = this.wanted(r, i, anyEvent);
    if (kind === undefined) return null;
    return (done) => this.run(r, i, roomId, kind, anyEvent, done);
  }

  /**
   * The handler kind event `i` is delivered as (null: only to `event` handlers), or undefined when no handler
   * wants it. Not for a cluster's ingest (see {@link eventTask}).
   */
  wanted(r: BatchReader, i: number, anyEvent: boolean): EventKind | null | undefined {
    const { opts, bus } = this.core;
    const kind = classify(r.type(i), r.relType(i));
    const flags = r.batch.events.flags[i]!;
    const own = (flags & EVENT_FLAGS.own) !== 0;
    const wantKind =
      kind !== null &&
      bus.has(kind) &&
      !(opts.ignoreOwnEvents && kind !== 'member' && own) &&
      // Spec: never answer a notice automatically; other senders' notices stay away from `message` handlers.
      !(kind === 'message' && !own && (flags & EVENT_FLAGS.notice) !== 0 && !opts.deliverNotices);
    if (!wantKind && !anyEvent) return undefined;
    return wantKind ? kind : null;
  }

  /** Runs the handlers of event `i` as `kind` ({@link wanted}); `done` once they settled. */
  run(r: BatchReader, i: number, roomId: string, kind: EventKind | null, anyEvent: boolean, done: { eventDone(i: number): void } | (() => void)): unknown {
    // The handler run is keyed by its event: sends it makes get transaction IDs derived from it (idempotent replays).
    beginHandlerRun(r, roomId, i); // the event ID is decoded only if the handler sends
    try {
      const res = this.deliver(r, i, roomId, kind, anyEvent);
      // A synchronous run (most) tells its batch at once, without a closure: one fewer object per event.
      if (isPromise(res)) return res.finally(typeof done === 'function' ? done : () => done.eventDone(i));
      if (typeof done === 'function') done();
      else done.eventDone(i);
      return res;
    } finally {
      endHandlerSyncPart();
    }
  }

  /**
   * The task of an invite. Its sends are keyed by this invite, not by its room: a second invite to the same room
   * must not reuse the first run's transaction IDs (the outbox would answer its sends from disk, and nothing would
   * be sent). The batch's token stands in when the server sends the invite event without its ID (Synapse does);
   * a redelivered batch keeps it, so a re-run stays idempotent.
   */
  inviteTask(inv: WireBatch['invites'][number], batchToken: string): HandlerTask {
    return (done) => {
      beginHandlerRun(`invite:${inv.eventId ?? `${inv.roomId}@${batchToken}`}`, inv.roomId);
      try {
        return settle(this.deliverInvite(inv), done);
      } finally {
        endHandlerSyncPart();
      }
    };
  }

  /**
   * The task reporting an event that could not be decrypted: to `decryptionError` handlers, or, when there are
   * none, as a warning (a bot that silently cannot read a room is the complaint users have most of E2EE).
   */
  decryptionErrorTask(err: HalcyonError, r: BatchReader, i: number, roomId: string, why: Pick<DecryptionErrorInfo, 'sessionId' | 'willRetry' | 'withheldCode'>): HandlerTask {
    return (done) => settle(this.decryptionError(err, r, i, roomId, why), done);
  }

  private decryptionError(err: HalcyonError, r: BatchReader, i: number, roomId: string, why: Pick<DecryptionErrorInfo, 'sessionId' | 'willRetry' | 'withheldCode'>): unknown {
    const eventId = r.str(i, OFF.eventId) ?? '';
    err.eventId = eventId;
    const info: DecryptionErrorInfo = { roomId, eventId, sender: r.str(i, OFF.sender) ?? '', ...why };
    if (this.core.bus.has('decryptionError')) return this.core.bus.emit('decryptionError', err, info);
    const withheld = why.withheldCode === null ? null : (WITHHELD[why.withheldCode] ?? `its sender withheld the room key (${why.withheldCode})`);
    this.core.opts.logger.warn(
      { code: err.code, ...info },
      `cannot decrypt ${eventId} from ${info.sender} in ${roomId}: ${withheld ?? err.message}${why.willRetry ? ' (kept: it is delivered if its key arrives)' : ''}`,
    );
    return undefined;
  }

  private deliver(b: BatchReader, i: number, roomId: string, kind: EventKind | null, anyEvent: boolean): unknown {
    const { bus, mirror, client } = this.core;
    const room = mirror.room(roomId);
    if (kind === 'edit') return this.deliverEdit(b, i, room, anyEvent);
    let first: unknown;
    if (kind !== null) {
      const obj =
        kind === 'message' ? new Message(b, i, room, client)
        : kind === 'reaction' ? new Reaction(b, i, room, client)
        : kind === 'member' ? new MemberEvent(b, i, room, client)
        : new Redaction(b, i, room, client);
      first = bus.emit(kind, obj as never);
    }
    if (!anyEvent) return first;
    const generic = () => bus.emit('event', new RoomEvent(b, i, room, client));
    return isPromise(first) ? first.then(generic) : generic();
  }

  /**
   * An edit reaches `edit` handlers only if it may replace its original by the spec's rules (same sender and
   * type, no state event, the original not an edit, `m.new_content` present): anyone can send an `m.replace`
   * relation to anyone's message, and servers do not check. Invalid ones are only logged (and still reach
   * `event` handlers, as every event does).
   */
  private async deliverEdit(b: BatchReader, i: number, room: Room, anyEvent: boolean): Promise<void> {
    const { bus, client } = this.core;
    const edit = new Edit(b, i, room, client);
    const original = await fetchEvent(this.core, room.id, edit.replaces);
    const problem = editProblem(
      { sender: edit.sender, type: edit.type, encrypted: edit.isEncrypted, stateKey: edit.stateKey, content: edit.content },
      original && { sender: original.sender ?? '', type: original.type, encrypted: original.type === ENCRYPTED, stateKey: original.state_key ?? null, content: original.content },
    );
    if (problem) this.core.opts.logger.info({ roomId: room.id, eventId: edit.eventId }, `an invalid edit was ignored: ${problem}`);
    else await bus.emit('edit', edit);
    if (anyEvent) await bus.emit('event', new RoomEvent(b, i, room, client));
  }

  private deliverInvite(inv: WireBatch['invites'][number]): unknown {
    const core = this.core;
    const invite: Invite = { ...inv, accept: () => joinRoom(core, inv.roomId), decline: (reason?: string) => leaveRoom(core, inv.roomId, reason) };
    const r = core.bus.emit('invite', invite);
    if (core.opts.autoJoin === false) return r;
    const join = async () => {
      if (!(await this.acceptsInvite(invite))) return;
      try {
        await joinRoom(core, inv.roomId);
        // A direct chat the inviter started is recorded in m.direct, so getOrCreateDm finds it later.
        if (inv.isDirect && inv.inviter) await addDirectRoom(core, inv.inviter, inv.roomId);
      } catch (err) {
        core.bus.emitError(err as HalcyonError);
      }
    };
    return isPromise(r) ? r.then(join) : join();
  }

  /** Whether the `autoJoin` policy accepts this invite. */
  private async acceptsInvite(invite: Invite): Promise<boolean> {
    const policy = this.core.opts.autoJoin;
    if (policy === true) return true;
    if (typeof policy === 'function') {
      try {
        return (await policy(invite)) === true;
      } catch (err) {
        this.core.bus.handlerFailed(err, 'autoJoin', invite.roomId);
        return false;
      }
    }
    if (typeof policy !== 'object' || !invite.inviter) return false;
    const server = invite.inviter.slice(invite.inviter.indexOf(':') + 1);
    return (policy.users?.includes(invite.inviter) ?? false) || (policy.servers?.includes(server) ?? false);
  }
}

/** The error of a verification that ended without success. */
function cancelled(e: Ended): HalcyonError {
  const v = e.verification;
  const who = e.byUs ? 'the bot' : v.userId;
  return new HalcyonError('HALCYON_VERIFICATION_CANCELLED', `the verification with ${v.userId} (device ${v.deviceId ?? 'unknown'}) was cancelled by ${who}: ${e.cancelCode}${e.reason ? ` (${e.reason})` : ''}`);
}

/**
 * Starts a verification with `userId`'s device `deviceId`, or with each of its devices (the first to accept goes on);
 * resolves with the verified device once done, rejects with `HALCYON_VERIFICATION_CANCELLED` if none was.
 */
export async function requestVerification(core: ClientCore, userId: string, deviceId?: string): Promise<{ userId: string; deviceId: string | null }> {
  userIdArg(userId, 'requestVerification');
  if (deviceId !== undefined && (typeof deviceId !== 'string' || deviceId === '')) throw new HalcyonError('HALCYON_INVALID_ARGUMENT', 'requestVerification: deviceId must be a non-empty string');
  core.need();
  if (!core.opts.encryption) throw new HalcyonError('HALCYON_INVALID_ARGUMENT', 'requestVerification needs encryption (the client was created with encryption: false)');
  const crypto = core.actors.openCrypto;
  if (!crypto) throw new HalcyonError('HALCYON_RESTARTING', 'the crypto actor is restarting');
  const flows = await crypto.requestVerification(userId, deviceId ?? null);
  return new Promise((resolve, reject) => {
    let left = flows.length;
    let worst: Ended | null = null;
    for (const f of flows) {
      void core.intake.delivery.whenEnded(userId, f).then((e) => {
        if (e.done) return resolve({ userId, deviceId: e.verification.deviceId });
        if (!worst || !e.byUs) worst = e; // the other side's cancel says more than ours of the devices let go
        if (--left === 0) reject(cancelled(worst));
      });
    }
  });
}
