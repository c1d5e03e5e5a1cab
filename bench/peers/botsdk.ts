/**
 * matrix-bot-sdk 0.8 as a benchmark contender (from bench/node_modules, installed by `node bench/setup.mjs`), set up
 * as its README shows a bot: `MatrixClient` with a `MemoryStorageProvider`, no encryption, `room.event` for every
 * timeline event.
 *
 * How it syncs (lib/MatrixClient.js `startSync`): one loop — `GET /sync`, save `next_batch` to the storage
 * provider (before processing: `persistTokenAfterSync` is false by default), then `processSync`, which goes
 * through the rooms and their events one by one, `await`ing each `emit` — but `emit` is Node's synchronous
 * EventEmitter wrapped in `Promise.resolve`, so a handler's returned promise is not awaited: the next `/sync` is
 * requested once every handler has been called (their synchronous parts run), not once they have settled.
 * @module
 */
import { createRequire } from 'node:module';
import type { PeerClient, PeerStartOptions, StartPeer } from './types.ts';

interface RawEvent {
  type: string;
  sender: string;
  event_id: string;
  content: Record<string, unknown>;
}

/** The parts of matrix-bot-sdk the adapter uses (typed here: bench/node_modules exists only after setup). */
interface BotSdkClient {
  on(event: 'room.event', handler: (roomId: string, event: RawEvent) => void): void;
  start(filter?: unknown): Promise<void>;
  stop(): void;
  sendText(roomId: string, text: string): Promise<string>;
  processSync(raw: unknown, emitFn?: unknown): Promise<void>;
}
interface BotSdk {
  MatrixClient: new (homeserverUrl: string, accessToken: string, storage: unknown) => BotSdkClient;
  MemoryStorageProvider: new () => unknown;
  LogService: { setLevel(level: unknown): void; muteModule(name: string): void };
  LogLevel: { WARN: unknown };
  setRequestFn(fn: RequestFn): void;
  getRequestFn(): RequestFn;
}
/** The `request` library's call, as matrix-bot-sdk makes it. */
type RequestFn = (params: { uri: string; headers?: Record<string, string> }, cb: (...args: unknown[]) => void) => { abort(): void };

/** How long `start()` may take (account data, joined rooms, whoami) before the start counts as failed. */
const START_TIMEOUT_MS = 30_000;

/** `/sync` requests in flight per access token, so `stop()` can abort its client's long-poll (matrix-bot-sdk cannot). */
const syncsInFlight = new Map<string, Set<{ abort(): void }>>();

/** Loads matrix-bot-sdk; its request function is wrapped to track `/sync` requests. */
function load(): BotSdk {
  const require = createRequire(new URL('../node_modules/', import.meta.url));
  let sdk: BotSdk;
  try {
    sdk = require('matrix-bot-sdk') as BotSdk;
  } catch (err) {
    throw new Error(`matrix-bot-sdk is not installed in bench/node_modules: run \`node bench/setup.mjs\` (${(err as Error).message})`);
  }
  // Errors the sync loop hits are logged by MatrixClientLite; the HTTP layer also logs every 404 as an error
  // (e.g. the absent m.direct account data at start-up), which is noise here.
  sdk.LogService.setLevel(sdk.LogLevel.WARN);
  sdk.LogService.muteModule('MatrixHttpClient');
  const original = sdk.getRequestFn();
  sdk.setRequestFn((params, cb) => {
    const req = original(params, cb);
    const auth = params.headers?.Authorization;
    if (auth && params.uri.endsWith('/_matrix/client/v3/sync')) {
      let set = syncsInFlight.get(auth);
      if (!set) syncsInFlight.set(auth, (set = new Set()));
      set.add(req);
      const emitter = req as unknown as { once(ev: string, f: () => void): void };
      emitter.once('complete', () => set.delete(req));
      emitter.once('error', () => set.delete(req));
    }
    return req;
  });
  return sdk;
}

// Loaded with this module, as the Halcyon adapter imports its build: loading is not part of any measured start.
const { MatrixClient, MemoryStorageProvider } = load();

/** Starts a matrix-bot-sdk client; resolves once `client.start()` resolved (its first `/sync` is requested). */
export const startBotSdk: StartPeer = async (opts: PeerStartOptions): Promise<PeerClient> => {
  const client = new MatrixClient(opts.homeserverUrl, opts.accessToken, new MemoryStorageProvider());
  const skipOwn = opts.ownEvents === false;
  let stopped = false;
  client.on('room.event', (roomId, ev) => {
    if (stopped || (skipOwn && ev.sender === opts.userId)) return;
    void opts.onEvent({ roomId, type: ev.type, sender: ev.sender, eventId: ev.event_id, content: () => ev.content });
  });
  if (opts.deliverInitial === false) {
    // matrix-bot-sdk hands the first sync's timeline to handlers like any other; a bot that must not answer history
    // skips that first response.
    const processSync = client.processSync.bind(client);
    let first = true;
    client.processSync = async (raw, emitFn) => {
      if (first) {
        first = false;
        return;
      }
      return processSync(raw, emitFn);
    };
  }
  // client.stop() only sets a flag the loop reads after its long-poll returns (up to 30 s on a quiet server), so
  // the poll in flight is aborted too; `request` then never calls back, and the loop's last step stays pending.
  const stop = async (): Promise<void> => {
    stopped = true;
    client.stop();
    const auth = `Bearer ${opts.accessToken}`;
    for (const req of syncsInFlight.get(auth) ?? []) req.abort();
    syncsInFlight.delete(auth);
  };
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      client.start(),
      new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`matrix-bot-sdk: start() did not resolve within ${START_TIMEOUT_MS} ms`)), START_TIMEOUT_MS))),
    ]);
  } catch (err) {
    await stop();
    throw err;
  } finally {
    clearTimeout(timer);
  }
  return { sendText: (roomId, body) => client.sendText(roomId, body), stop };
};
