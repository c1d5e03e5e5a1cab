/**
 * The ingest's role: its client runs the usual sync, cache and crypto actors and intake, but each timeline event
 * (decrypted, in room order: the dispatcher's room lanes) becomes a publish task instead of a handler task. The
 * task settles — and the event is acknowledged to the sync actor's journal — only once the stream has stored the
 * event, so the journal's guarantee moves to the stream: an event is in the journal (and published again by the
 * next ingest run from the same data dir, where the stream drops it as a duplicate of its event ID) or in the
 * stream. It also answers the workers' requests: room state from the cache actor, encryption by the crypto actor
 * (the OlmMachine has one owner), presence, and the account's send budget (its outbox's pacer: one per account).
 */
import type { BatchReader } from '../events.ts';
import { HalcyonError } from '../errors.ts';
import { delay } from '../http.ts';
import type { ClientCore } from '../client/core.ts';
import type { HandlerTask } from '../client/delivery.ts';
import { isRoomEncrypted } from '../client/messages.ts';
import type { SharedPaceOp } from '../outbox.ts';
import { OFF, type StateChanges, type SyncConfig } from '../protocol.ts';
import type { ClusterRole } from './index.ts';
import type { Lease } from './lease.ts';
import type { Broker } from './nats.ts';
import { type ClusterRpc, encodeEvent, partitionOf } from './wire.ts';

/** Summaries a worker gets per `summaries` request. */
const SUMMARY_PAGE = 500;
/** Wait between attempts of a publish that failed (NATS unreachable or restarting). */
const PUBLISH_RETRY_MS = 250;

/** The ingest's part of a clustered client; see the module comment. */
export class IngestRole implements ClusterRole {
  readonly role = 'ingest';
  readonly strategy = null;
  private unserve: (() => void) | null = null;
  /** Publishes are failing (NATS unreachable): told once until one succeeds again. */
  private failing = false;

  constructor(
    private readonly core: ClientCore,
    private readonly broker: Broker,
    private readonly partitions: number,
    private readonly lease: Lease,
  ) {
    lease.onLost((why) => {
      // At once, before the stop drains: the next leader's crypto actor must be the only one encrypting.
      this.unserve?.();
      this.unserve = null;
      core.fail(new HalcyonError('HALCYON_CLUSTER', `the ingest lost its lease (${why}); it stops so that another can take over`));
    });
  }

  sharedPacer(): null {
    return null;
  }

  /** The task that publishes event `i` of `r` to its room's partition; it settles once the stream has it. */
  publishTask(r: BatchReader, i: number, roomId: string): HandlerTask {
    return (done) => {
      const eventId = r.str(i, OFF.eventId);
      if (eventId === null) return done(); // a timeline event without an ID is refused by the sync actor already
      const data = encodeEvent({ roomId, flags: r.batch.events.flags[i]!, summary: this.core.mirror.get(roomId) ?? null, redelivered: r.batch.redelivered }, r.rawText(i));
      return this.publish(partitionOf(roomId, this.partitions), eventId, data).then(done, () => {}); // a stop abandons it: the journal keeps it
    };
  }

  /** Publishes until the stream acknowledges; a NATS outage is waited out (the room's lane waits with it). */
  private async publish(p: number, msgId: string, data: Uint8Array): Promise<void> {
    const { lifecycle, opts } = this.core;
    for (;;) {
      try {
        await this.broker.publish(p, msgId, data);
        if (this.failing) opts.logger.info({}, 'cluster: publishing to the stream again');
        this.failing = false;
        return;
      } catch (err) {
        if (lifecycle.signal.aborted) throw err;
        // Said once per outage, not once per waiting room.
        if (!this.failing) opts.logger.warn({ err: (err as Error).message }, 'cluster: cannot publish to the stream; events wait in the journal, retrying');
        this.failing = true;
        await delay(PUBLISH_RETRY_MS, lifecycle.signal);
      }
    }
  }

  running(): void {
    this.unserve ??= this.broker.serve((method, body) => this.answer(method as keyof ClusterRpc, body));
  }

  /** Answers one worker request (see `ClusterRpc` in protocol.ts). */
  private async answer(method: keyof ClusterRpc, body: unknown): Promise<unknown> {
    const core = this.core;
    const b = (body ?? {}) as Record<string, unknown>;
    const roomId = typeof b.roomId === 'string' ? b.roomId : '';
    switch (method) {
      case 'identity':
        return core.actors.identity;
      case 'getRoom':
        return (await core.needCache().getRoom(roomId)) ?? null;
      case 'summaries': {
        const all = await core.needCache().summaries();
        const from = Number(b.offset) || 0;
        return { summaries: all.slice(from, from + SUMMARY_PAGE), more: all.length > from + SUMMARY_PAGE };
      }
      case 'accountData':
        return (await core.needCache().accountData((b.roomId as string | null) ?? null, String(b.type))) ?? null;
      case 'apply':
        return core.needCache().apply(body as StateChanges);
      case 'isRoomEncrypted':
        return isRoomEncrypted(core, roomId);
      case 'encrypt': {
        if (!core.opts.encryption) return { encrypted: false };
        return (await core.openCrypto(core.lifecycle.signal)).encrypt(roomId, String(b.type), b.content as Record<string, unknown>);
      }
      case 'cryptoStatus':
        return (await core.actors.openCrypto?.status()) ?? null;
      case 'setPresence':
        await core.actors.set?.sync.api.setPresence(b.state as SyncConfig['setPresence']);
        return null;
      case 'pace': {
        // The account's one budget is this process's outbox's pacer (it exists once running() serves).
        const outbox = core.outbox;
        if (!outbox) throw new HalcyonError('HALCYON_CLUSTER', 'the ingest is not running yet');
        return outbox.sharedPace(String(b.op) as SharedPaceOp, Number(b.retryAfterMs) || 0);
      }
      default:
        throw new HalcyonError('HALCYON_INVALID_ARGUMENT', `unknown cluster request ${String(method)}`);
    }
  }

  async close(): Promise<void> {
    this.unserve?.();
    this.unserve = null;
    await this.lease.release().catch(() => {});
    await this.broker.close();
  }
}
