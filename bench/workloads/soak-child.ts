/**
 * One contender of the soak workload in a process of its own (so its RSS is its own): a reply bot that answers
 * every message the sender posts with a rich reply, as a new user would write it — Halcyon with its defaults but
 * `rateLimit: false` (so encryption is on, as by default), matrix-bot-sdk as its README shows (a `MatrixClient`
 * with a `MemoryStorageProvider`, no crypto).
 *
 * Talks to the parent in JSON lines: it prints `ready`, then `stats` (handled, replied, failed) every second and,
 * for Halcyon, a per-thread `memory` breakdown every {@link ChildArgs.memoryEveryMs}; a `stop` line on stdin makes
 * it print a last `memory` and `done`, and exit.
 *
 * Usage: `node --import tsx bench/workloads/soak-child.ts`, then {@link ChildArgs} as one JSON line on stdin (not
 * argv: it holds an access token).
 * @module
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import type { MemoryReport } from '../../src/memory.ts';

/** The contenders of the soak. */
export type SoakContender = 'halcyon' | 'matrix-bot-sdk';

/** What the parent passes (the first line on stdin, JSON). */
export interface ChildArgs {
  contender: SoakContender;
  homeserverUrl: string;
  userId: string;
  deviceId: string;
  accessToken: string;
  /** Only this user's messages are answered. */
  senderId: string;
  /** How often Halcyon's per-thread breakdown is printed, ms. */
  memoryEveryMs: number;
}

/** The lines a child prints. */
export type ChildLine =
  | { soak: 'ready' }
  | { soak: 'stats'; handled: number; replied: number; failed: number; lastError?: string }
  | { soak: 'memory'; at: number; report: MemoryReport }
  | { soak: 'done' }
  | { soak: 'error'; error: string };

const say = (line: ChildLine): void => void process.stdout.write(`${JSON.stringify(line)}\n`);
const now = (): number => performance.timeOrigin + performance.now();

/** A running bot: how to stop it and (Halcyon) how to read its memory. */
interface Bot {
  stop(): Promise<void>;
  memory?(): Promise<MemoryReport>;
}

const counts = { handled: 0, replied: 0, failed: 0, lastError: undefined as string | undefined };
const replied = (p: Promise<unknown>): void => {
  p.then(
    () => counts.replied++,
    (e: unknown) => {
      counts.failed++;
      counts.lastError = e instanceof Error ? e.message : String(e);
    },
  );
};

async function startHalcyon(a: ChildArgs): Promise<Bot> {
  const { Client, encodeToken } = (await import('../../dist/index.js' as string)) as typeof import('../../src/index.ts');
  const dataDir = await mkdtemp(join(tmpdir(), 'halcyon-soak-'));
  const log = (level: string) => (obj: unknown, msg?: string) =>
    process.stderr.write(`[halcyon ${level}] ${msg ?? ''} ${obj instanceof Error ? obj.message : typeof obj === 'string' ? obj : JSON.stringify(obj)}\n`);
  // As a new user writes it: the defaults (encryption on), pacing off for a bot that answers 20 messages/s.
  const client = new Client({ dataDir, rateLimit: false, logger: { debug() {}, info() {}, warn: log('warn'), error: log('error') } });
  client.on('message', (m) => {
    if (m.sender !== a.senderId) return;
    counts.handled++;
    replied(m.reply(`re: ${m.body}`));
  });
  client.on('error', (e) => log('error event')(e));
  await client.run(encodeToken({ homeserver: a.homeserverUrl, userId: a.userId, deviceId: a.deviceId, accessToken: a.accessToken }));
  return {
    async stop() {
      await client.stop();
      await rm(dataDir, { recursive: true, force: true });
    },
    // As an operator sees it: health() (heaps as they stand, garbage not yet collected included).
    memory: async () => (await client.health()).memory,
  };
}

/** The parts of matrix-bot-sdk used here (typed locally: bench/node_modules exists only after setup). */
interface BotSdk {
  MatrixClient: new (url: string, token: string, storage: unknown) => {
    on(ev: 'room.message', f: (roomId: string, ev: { sender: string; content?: { body?: unknown } }) => void): void;
    start(): Promise<void>;
    stop(): void;
    replyText(roomId: string, event: unknown, text: string): Promise<string>;
  };
  MemoryStorageProvider: new () => unknown;
  LogService: { setLevel(level: unknown): void; muteModule(name: string): void };
  LogLevel: { WARN: unknown };
}

async function startBotSdk(a: ChildArgs): Promise<Bot> {
  const sdk = createRequire(new URL('../node_modules/', import.meta.url))('matrix-bot-sdk') as BotSdk;
  sdk.LogService.setLevel(sdk.LogLevel.WARN);
  sdk.LogService.muteModule('MatrixHttpClient');
  const client = new sdk.MatrixClient(a.homeserverUrl, a.accessToken, new sdk.MemoryStorageProvider());
  client.on('room.message', (roomId, ev) => {
    if (ev.sender !== a.senderId) return;
    counts.handled++;
    replied(client.replyText(roomId, ev, `re: ${String(ev.content?.body)}`));
  });
  await client.start();
  // Its stop() only sets a flag the loop reads after the long-poll; the process exits right after anyway.
  return { stop: async () => client.stop() };
}

async function main(): Promise<void> {
  const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
  const a = JSON.parse(((await lines.next()).value as string | undefined) ?? '{}') as ChildArgs;
  let bot: Bot;
  try {
    bot = a.contender === 'halcyon' ? await startHalcyon(a) : await startBotSdk(a);
  } catch (err) {
    say({ soak: 'error', error: (err as Error).stack ?? String(err) });
    process.exit(1);
  }
  say({ soak: 'ready' });
  const stats = setInterval(() => say({ soak: 'stats', ...counts }), 1000);
  const snapshot = async (): Promise<void> => {
    if (bot.memory) say({ soak: 'memory', at: now(), report: await bot.memory() });
  };
  const memTimer = setInterval(() => void snapshot().catch(() => {}), a.memoryEveryMs);
  await snapshot();
  for (let line = await lines.next(); !line.done; line = await lines.next()) {
    if ((line.value as string).trim() !== 'stop') continue;
    clearInterval(memTimer);
    clearInterval(stats);
    say({ soak: 'stats', ...counts });
    await snapshot();
    await bot.stop().catch(() => {});
    say({ soak: 'done' });
    process.exit(0);
  }
}

if (process.argv[1] === new URL(import.meta.url).pathname) await main();
