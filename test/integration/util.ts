/** Shared helpers of the Client integration tests: bots on fresh data dirs, peers, and bounded waits. */
import { randomBytes } from 'node:crypto';
import { createServer, request as httpRequest } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import type { TestContext } from 'node:test';
import { Client, type ClientOptions, type DecryptionErrorInfo, type HalcyonError, type Message } from '../../src/index.ts';
import { Peer } from '../harness/peer.ts';
import type { Homeserver, TestUser } from '../harness/synapse.ts';

/** The since token the sync actor saved in the data dir (`sync.sqlite`), or null. */
export function savedSince(dataDir: string): string | null {
  const db = new DatabaseSync(join(dataDir, 'sync.sqlite'), { readOnly: true });
  try {
    return (db.prepare("SELECT v FROM kv WHERE k = 'since'").get() as { v: string } | undefined)?.v ?? null;
  } finally {
    db.close();
  }
}

/** Default bound of every wait in these tests. */
export const WAIT_MS = 20_000;

/**
 * Resolves with the first truthy value of `fn` (sync or async), checking again every 20 ms; rejects with
 * "Timed out after <ms> ms waiting for <what>" (plus the last error `fn` threw, if any) past `timeoutMs`.
 */
export async function waitUntil<T>(fn: () => T | Promise<T>, timeoutMs: number, what: string): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v as NonNullable<T>;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() >= deadline) {
      const why = lastError ? ` (last error: ${(lastError as Error).message ?? String(lastError)})` : '';
      throw new Error(`Timed out after ${timeoutMs} ms waiting for ${what}${why}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A promise with its resolve function exposed (for handlers the test releases). */
export function deferred<T = void>(): { promise: Promise<T>; resolve: (v: T) => void } {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

const stacks = new WeakMap<TestContext, Array<() => unknown>>();

/**
 * Runs `fn` when the test ends, in reverse order of registration (node:test runs t.after hooks first-in
 * first-out, but a client must stop before its data dir is removed).
 */
export function defer(t: TestContext, fn: () => unknown): void {
  let stack = stacks.get(t);
  if (!stack) {
    const s: Array<() => unknown> = [];
    stacks.set(t, (stack = s));
    t.after(async () => {
      for (let f = s.pop(); f; f = s.pop()) await f();
    });
  }
  stack.push(fn);
}

/** A fresh temp data dir, removed when the test ends (after the clients using it have stopped). */
export function tempDataDir(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'halcyon-it-'));
  defer(t, () => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** A fresh peer (a registered user talking plain HTTP). */
export async function newPeer(hs: Homeserver): Promise<Peer> {
  return new Peer(hs.baseUrl, await hs.registerUser());
}

/** A bot: a fresh user, a Halcyon token for it, and a (not yet running) client on a fresh data dir. */
export interface Bot {
  user: TestUser;
  token: string;
  dataDir: string;
  client: Client;
  /** Every 'error' event the client emitted. */
  errors: HalcyonError[];
}

/** Default client options of the tests: quick polls so that stop() is quick. */
export const FAST: Partial<ClientOptions> = { pollTimeoutMs: 2000, stopTimeoutMs: 10_000, rateLimit: false };

/**
 * Registers a user, logs it in with Client.login on a fresh data dir and builds a client (not running). The
 * client is stopped when the test ends, before its data dir is removed.
 */
export async function newBot(t: TestContext, hs: Homeserver, opts: Partial<ClientOptions> = {}): Promise<Bot> {
  const user = await hs.registerUser();
  const dataDir = tempDataDir(t);
  // The client's encryption options go to the login too: it opens the crypto store with the client's passphrase.
  const token = await Client.login({ homeserver: hs.baseUrl, user: user.localpart, password: user.password, dataDir, ...(opts.encryption === undefined ? {} : { encryption: opts.encryption }) });
  const client = newClient(t, dataDir, opts);
  const errors: HalcyonError[] = [];
  client.on('error', (e) => void errors.push(e));
  return { user, token, dataDir, client, errors };
}

/** A client on `dataDir`, stopped when the test ends. */
export function newClient(t: TestContext, dataDir: string, opts: Partial<ClientOptions> = {}): Client {
  const client = new Client({ ...FAST, ...opts, dataDir });
  defer(t, () => client.stop());
  return client;
}

/**
 * Peer creates a room inviting the bot (which autojoins) and waits until the bot is joined. Returns the room id.
 */
export async function roomWithBot(peer: Peer, botUserId: string, opts: { name?: string; topic?: string; preset?: string } = {}): Promise<string> {
  const roomId = await peer.createRoom({ ...opts, invite: [botUserId] });
  await peer.waitForJoined(roomId, botUserId, WAIT_MS);
  return roomId;
}

/** A random suffix for aliases and names. */
export function rand(): string {
  return randomBytes(4).toString('hex');
}

/** Awaits a random number (0..maxHops) of setImmediate turns: a small, random, non-timer async delay. */
export async function randomHops(maxHops = 20): Promise<void> {
  const n = Math.floor(Math.random() * (maxHops + 1));
  for (let i = 0; i < n; i++) await new Promise<void>((r) => setImmediate(r));
}

/**
 * An HTTP proxy in front of `target` (Synapse) that logs each request line (method and path with query) as it
 * arrives. `hold(method, url)` may return a promise: the request's answer is held back until it settles (a lagging
 * sync, a slow answer). `release` runs at the end of the test, before the proxy closes, to let held answers go.
 */
export async function loggingProxy(
  t: TestContext,
  target: string,
  opts: { hold?: (method: string, url: string) => Promise<void> | null; release?: () => void } = {},
): Promise<{ url: string; log: string[] }> {
  const up = new URL(target);
  const log: string[] = [];
  const server = createServer((req, res) => {
    log.push(`${req.method} ${req.url}`);
    const held = opts.hold?.(req.method ?? 'GET', req.url ?? '/') ?? null;
    // No keep-alive upstream, and the upstream exchange ends with the client's: nothing outlives the proxy.
    const fwd = httpRequest({ host: up.hostname, port: up.port, method: req.method, path: req.url, headers: { ...req.headers, host: up.host }, agent: false }, (answer) => {
      const send = () => {
        if (res.destroyed) return void answer.destroy();
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(res);
      };
      if (held) void held.then(send);
      else send();
    });
    fwd.on('error', () => res.destroy());
    res.on('close', () => fwd.destroy());
    req.pipe(fwd);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  defer(t, async () => {
    opts.release?.();
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, log };
}

/** Records a bot's messages and decryption errors, for assertions (and for a dump when a wait times out). */
export function recordMessages(bot: Pick<Bot, 'client'>): { messages: Message[]; decryptionErrors: Array<{ code: string; message: string } & DecryptionErrorInfo> } {
  const messages: Message[] = [];
  const decryptionErrors: Array<{ code: string; message: string } & DecryptionErrorInfo> = [];
  bot.client.on('message', (m) => void messages.push(m));
  bot.client.on('decryptionError', (e: HalcyonError, info) => void decryptionErrors.push({ code: e.code, message: e.message, ...info }));
  return { messages, decryptionErrors };
}

/**
 * A client on `dataDir` (see {@link newClient}) recording its messages, decryption errors and errors, with a dump of
 * them for failure messages.
 */
export function recordingClient(t: TestContext, dataDir: string, opts: Partial<ClientOptions> = {}) {
  const client = newClient(t, dataDir, opts);
  const { messages, decryptionErrors } = recordMessages({ client });
  const errors: HalcyonError[] = [];
  client.on('error', (e) => void errors.push(e));
  const dump = () =>
    JSON.stringify({ messages: messages.map((m) => [m.eventId, m.body, m.encryption, m.decryptedLate]), decryptionErrors, errors: errors.map((e) => `${e.code}: ${e.message}`) });
  return { client, messages, decryptionErrors, errors, dump };
}
