/**
 * matrix-js-sdk 43 as a benchmark contender (the root package's dev dependency), set up as a bot author would:
 * `createClient` with the access token, no crypto, a memory store, `startClient({ initialSyncLimit: 10,
 * lazyLoadMembers: true })` (Synapse's default timeline limit; members loaded on demand rather than all in every
 * room's state), every other option at its default; live timeline events from `RoomEvent.Timeline`. Its logger is
 * silenced (it logs every sync at debug level); sync errors go to stderr.
 *
 * How it syncs (lib/sync.js): one loop — `GET /sync`, then `processSyncResponse` builds a `MatrixEvent` per event,
 * adds it to its room's live timeline and emits `Room.timeline` synchronously (handlers' promises are not
 * awaited), then the next `/sync`. Every event stays in memory in its room's timeline.
 * @module
 */
import { createRequire } from 'node:module';
import { ClientEvent, createClient, type MatrixClient, type MatrixEvent, RoomEvent, SyncState } from 'matrix-js-sdk';
import type { PeerClient, PeerStartOptions, StartPeer } from './types.ts';

/** How long the initial sync may take before the start counts as failed. */
const START_TIMEOUT_MS = 60_000;

/** A logger that drops everything (also handed out as every child). */
const silent = { trace() {}, debug() {}, info() {}, warn() {}, error() {}, getChild: () => silent };

{
  // Its module loggers are children of the loglevel instance matrix-js-sdk itself resolves; children made later
  // (e.g. one per room for MatrixRTC) copy their parent's method factory, so a no-op factory on every logger
  // silences those too.
  type LogLevelLogger = { methodFactory: () => () => void; rebuild(): void };
  const loglevel = createRequire(import.meta.resolve('matrix-js-sdk'))('loglevel') as LogLevelLogger & { getLoggers(): Record<string, LogLevelLogger> };
  const quiet = () => () => {};
  for (const l of [loglevel, ...Object.values(loglevel.getLoggers())]) {
    l.methodFactory = quiet;
    l.rebuild();
  }
}

/**
 * Starts a matrix-js-sdk client; resolves once its first sync was processed (`PREPARED`), like Halcyon's `run()`.
 * With `deliverInitial: false`, events before `PREPARED` (the initial sync's) are skipped, as bots do.
 */
export const startJsSdk: StartPeer = async (opts: PeerStartOptions): Promise<PeerClient> => {
  const client: MatrixClient = createClient({
    baseUrl: opts.homeserverUrl,
    accessToken: opts.accessToken,
    userId: opts.userId,
    deviceId: opts.deviceId,
    logger: silent,
  });
  const skipOwn = opts.ownEvents === false;
  let prepared = false;
  let stopped = false;
  const deliver = (ev: MatrixEvent): void => {
    if (stopped || (!prepared && opts.deliverInitial === false)) return;
    const sender = ev.getSender()!;
    if (skipOwn && sender === opts.userId) return;
    void opts.onEvent({ roomId: ev.getRoomId()!, type: ev.getType(), sender, eventId: ev.getId()!, content: () => ev.getContent() });
  };
  client.on(RoomEvent.Timeline, (ev: MatrixEvent, _room, toStartOfTimeline, _removed, data) => {
    // Live events only: not back-pagination, and not the local echo of the bot's own send (a temporary ID, before
    // the server has it): that one is delivered when its remote echo arrives below.
    if (!toStartOfTimeline && data.liveEvent && ev.status === null) deliver(ev);
  });
  // The /sync copy of the bot's own send does not fire Room.timeline again: it turns the local echo into the
  // server's event (status null, the server's ID) and fires this.
  client.on(RoomEvent.LocalEchoUpdated, (ev: MatrixEvent) => {
    if (ev.status === null) deliver(ev);
  });
  const ready = new Promise<void>((resolve, reject) => {
    client.on(ClientEvent.Sync, (state, _prev, data) => {
      if (state === SyncState.Prepared) {
        prepared = true;
        resolve();
      } else if (state === SyncState.Error || state === SyncState.Reconnecting) {
        const msg = data?.error?.message ?? 'unknown error';
        process.stderr.write(`[matrix-js-sdk peer] sync ${state}: ${msg}\n`);
        if (!prepared) reject(new Error(`matrix-js-sdk: initial sync failed: ${msg}`));
      }
    });
  });
  const stop = async (): Promise<void> => {
    stopped = true;
    // Aborts the /sync in flight and clears the client's own timers. Not the per-request timeout timers of its
    // HTTP layer (http-api/utils.ts timeoutSignal: one per request, never cleared, up to pollTimeout + 80 s): they
    // keep the process alive that long unless it exits explicitly.
    client.stopClient();
  };
  let timer: NodeJS.Timeout | undefined;
  try {
    await client.startClient({ initialSyncLimit: 10, lazyLoadMembers: true });
    await Promise.race([
      ready,
      new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`matrix-js-sdk: no PREPARED within ${START_TIMEOUT_MS} ms`)), START_TIMEOUT_MS))),
    ]);
  } catch (err) {
    await stop();
    throw err;
  } finally {
    clearTimeout(timer);
  }
  return {
    sendText: async (roomId, body) => (await client.sendTextMessage(roomId, body)).event_id,
    stop,
  };
};
