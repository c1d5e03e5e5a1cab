/**
 * Halcyon as a benchmark contender: the built `dist/index.js` Client, as users run it, with a fresh data dir per
 * start (removed at stop), the token built with `encodeToken` (no login), and encryption off like the others.
 * @module
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Edit, Logger, Message, Reaction } from '../../src/index.ts';
import type { PeerClient, PeerEvent, PeerStartOptions, StartPeer } from './types.ts';

// Workers load plain JS bundles, so the benchmark runs the build (from source, each worker would transpile through tsx).
const { Client, encodeToken } = (await import('../../dist/index.js' as string)) as typeof import('../../src/index.ts');

/** How long `run()` may take (token check, worker start-up, first sync) before the start counts as failed. */
const START_TIMEOUT_MS = 60_000;

/** Wraps a delivered event; `content()` reads `content`, which Halcyon parses lazily on first access. */
const wrap = (e: Message | Reaction | Edit): PeerEvent => ({
  roomId: e.roomId,
  type: e.type,
  sender: e.sender,
  eventId: e.eventId,
  content: () => e.content,
});

/**
 * Starts a Halcyon client; resolves once `run()` resolved (the first sync was processed). The client's warnings
 * and errors go to stderr.
 */
export const startHalcyon: StartPeer = async (opts: PeerStartOptions): Promise<PeerClient> => {
  const dataDir = await mkdtemp(join(tmpdir(), 'halcyon-peer-'));
  const say = (level: string) => (obj: unknown, msg?: string) =>
    process.stderr.write(`[halcyon peer ${level}] ${msg ?? ''} ${obj instanceof Error ? obj.message : typeof obj === 'string' ? obj : JSON.stringify(obj)}\n`);
  const logger: Logger = { debug: () => {}, info: () => {}, warn: say('warn'), error: say('error') };
  const clientOpts: ConstructorParameters<typeof Client>[0] = {
    dataDir,
    deliverInitialTimeline: opts.deliverInitial ?? true,
    logger,
    stopTimeoutMs: 5_000,
    // Off, as every contender it is compared with runs without a crypto stack (E2EE has its own workload).
    encryption: false,
  };
  if (!opts.rateLimit) clientOpts.rateLimit = false;
  if (opts.ownEvents !== undefined) clientOpts.ignoreOwnEvents = !opts.ownEvents;
  const client = new Client(clientOpts);
  let stopped = false;
  const deliver = (e: Message | Reaction | Edit): void | Promise<void> => (stopped ? undefined : opts.onEvent(wrap(e)));
  client.on('message', deliver);
  client.on('edit', deliver);
  client.on('reaction', deliver);
  client.on('error', (e) => say('error event')(e));
  client.on('syncError', (e) => say('syncError event')(e));

  const token = encodeToken({ homeserver: opts.homeserverUrl, userId: opts.userId, deviceId: opts.deviceId, accessToken: opts.accessToken });
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      client.run(token),
      new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`Halcyon: run() did not resolve within ${START_TIMEOUT_MS} ms`)), START_TIMEOUT_MS))),
    ]);
  } catch (err) {
    stopped = true;
    await client.stop().catch(() => {});
    await rm(dataDir, { recursive: true, force: true });
    throw err;
  } finally {
    clearTimeout(timer);
  }
  return {
    sendText: (roomId, body) => client.sendMessage(roomId, body),
    async stop() {
      if (stopped) return;
      stopped = true;
      try {
        await client.stop();
      } finally {
        await rm(dataDir, { recursive: true, force: true });
      }
    },
  };
};
