/**
 * An in-process bot behind the fault proxy, for the fault-injection and security tests: it replies to every
 * message (`re: <body>`, awaited in the handler), and records everything it emits (handled messages, sync errors
 * and recoveries, errors, failed sends) and everything it logs, so a test can check that no secret leaks.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { inspect } from 'node:util';
import { Client, type ClientOptions, decodeToken, type HalcyonError } from '../../src/index.ts';
import { type FaultProxy, startFaultProxy } from '../harness/fault-proxy.ts';
import { Peer } from '../harness/peer.ts';
import type { Homeserver, TestUser } from '../harness/synapse.ts';
import { defer } from '../integration/util.ts';

/** A sync error as the test saw it. */
export interface SeenSyncError {
  at: number;
  code: string;
  message: string;
  status?: number;
  retryAfterMs?: number;
  attempt: number;
  retryInMs: number;
}

export interface ProxiedBot {
  proxy: FaultProxy;
  client: Client;
  /** The Halcyon token (its homeserver is the proxy) and the access token inside it. */
  token: string;
  accessToken: string;
  user: TestUser;
  dataDir: string;
  handled: Array<{ eventId: string; body: string; redelivered: boolean; at: number }>;
  replies: Map<string, string>;
  syncErrors: SeenSyncError[];
  recovered: Array<{ at: number; afterAttempts: number }>;
  errors: HalcyonError[];
  sendFailed: Array<{ error: HalcyonError; info: unknown }>;
  /** Every log line (level, message, the logged object inspected in depth). */
  logs: string[];
  /** Everything that could carry a secret: the logs and every emitted error, inspected with its causes. */
  texts(): string[];
  /** The secrets that must never appear in {@link texts}: the access token, the token, a slice of its payload. */
  secrets(): string[];
}

/** Options of {@link proxiedBot}. */
export interface ProxiedBotOptions {
  client?: Partial<ClientOptions>;
  /** Seed of the proxy's RNG. */
  seed?: number;
  /** Reply to every message (default true). */
  reply?: boolean;
  /**
   * Listen to `error` and `sendFailed` (default true). Without listeners, errors go to the logger: the paths a
   * token could leak through.
   */
  errorListeners?: boolean;
}

const deep = (x: unknown) => inspect(x, { depth: null, breakLength: Infinity, showHidden: false });

/**
 * Starts a fault proxy in front of `hs`, logs a new user in through it on a fresh data dir and builds the client
 * (not running). The client is stopped, the proxy closed and the dir removed when the test ends.
 */
export async function proxiedBot(t: TestContext, hs: Homeserver, opts: ProxiedBotOptions = {}): Promise<ProxiedBot> {
  const proxy = await startFaultProxy(hs.baseUrl, { seed: opts.seed ?? 1 });
  defer(t, () => proxy.close());
  const user = await hs.registerUser();
  const dataDir = mkdtempSync(join(tmpdir(), 'halcyon-fault-'));
  defer(t, () => rmSync(dataDir, { recursive: true, force: true }));
  const token = await Client.login({ homeserver: proxy.url, user: user.localpart, password: user.password, dataDir });
  const logs: string[] = [];
  const rec = (level: string) => (obj: unknown, msg?: string) => void logs.push(`${level} ${msg ?? ''} ${typeof obj === 'string' ? obj : deep(obj)}`);
  const client = new Client({
    dataDir,
    encryption: false,
    rateLimit: false,
    pollTimeoutMs: 1000,
    backoffMinMs: 50,
    backoffMaxMs: 400,
    stopTimeoutMs: 10_000,
    logger: { debug: rec('debug'), info: rec('info'), warn: rec('warn'), error: rec('error') },
    ...opts.client,
  });
  defer(t, () => client.stop());
  const bot: ProxiedBot = {
    proxy,
    client,
    token,
    accessToken: decodeToken(token).accessToken,
    user,
    dataDir,
    handled: [],
    replies: new Map(),
    syncErrors: [],
    recovered: [],
    errors: [],
    sendFailed: [],
    logs,
    texts: () => [...logs, ...bot.errors.map(deep), ...bot.sendFailed.map(deep), ...bot.syncErrors.map(deep)],
    secrets: () => [bot.accessToken, token, token.slice(20, 60)],
  };
  client.on('message', async (m) => {
    bot.handled.push({ eventId: m.eventId, body: m.body, redelivered: m.redelivered, at: Date.now() });
    if (opts.reply === false) return;
    bot.replies.set(m.eventId, await m.reply(`re: ${m.body}`));
  });
  client.on('syncError', (e, info) => {
    const s: SeenSyncError = { at: Date.now(), code: e.code, message: e.message, attempt: info.attempt, retryInMs: info.retryInMs };
    if (e.status !== undefined) s.status = e.status;
    if (e.retryAfterMs !== undefined) s.retryAfterMs = e.retryAfterMs;
    bot.syncErrors.push(s);
    // The error object itself is inspected for secrets too.
    logs.push(`syncError ${deep(e)}`);
  });
  client.on('syncRecovered', (info) => void bot.recovered.push({ at: Date.now(), afterAttempts: info.afterAttempts }));
  if (opts.errorListeners !== false) {
    client.on('error', (e) => void bot.errors.push(e));
    client.on('sendFailed', (error, info) => void bot.sendFailed.push({ error, info }));
  }
  return bot;
}

/** A peer (straight to the homeserver) with a room the bot has joined. */
export async function peerRoomWithBot(hs: Homeserver, bot: ProxiedBot): Promise<{ peer: Peer; roomId: string }> {
  const peer = new Peer(hs.baseUrl, await hs.registerUser());
  const roomId = await peer.createRoom({ invite: [bot.user.userId] });
  await peer.waitForJoined(roomId, bot.user.userId, 30_000);
  return { peer, roomId };
}

/** The texts among `texts` that contain one of `secrets` (cut short around the leak). */
export function leaks(texts: string[], secrets: string[]): string[] {
  const out: string[] = [];
  for (const t of texts) {
    for (const s of secrets) {
      const i = t.indexOf(s);
      if (i >= 0) out.push(`...${t.slice(Math.max(0, i - 120), i)}<SECRET>...`);
    }
  }
  return out;
}
