/**
 * Workload 9, cluster (scale-out over NATS JetStream) on Synapse, with a handler-bound bot: every handler burns
 * 5 ms of CPU, 20 rooms. Each bot process is test/fixtures/cluster-bot.ts in a process of its own.
 *
 * - Throughput: the single-process Client, and an ingest with 1, 2 and 3 worker processes. The bot (the single
 *   process, or the ingest) is stopped, the peer sends the messages, the bot starts again and gets them all at
 *   once; events/s from the first handler call to the last (the backlog is handler-bound, not send-bound).
 * - Broker hop: a peer sends 100 messages at 10/s; send → handler call, p50 and p99, single process against an ingest
 *   with two workers (the hop: ingest → NATS → worker).
 * @module
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client } from '../../src/index.ts';
import { type NatsServer, startNats } from '../../test/harness/nats.ts';
import type { Homeserver, TestUser } from '../../test/harness/synapse.ts';
import { type BotLine, type BotProcess, startFaultBot } from '../../test/helpers/fault-stream.ts';
import { combineVerdicts, goalEntry, roundsVerdict, type Workload } from '../report.ts';
import { fmt, percentile, summarize } from '../stats.ts';
import { Api, now, sleep, withSynapse } from './synapse-common.ts';

const ROOMS = 20;
const BURN_MS = 5;
/**
 * Messages of each latency measurement (at 10/s). 100, not 50: the hop is a difference of two p50s of
 * whole-millisecond samples, and with 50 the single process's p50 alone moved 26–30 ms from round to round.
 */
const LATENCY_MESSAGES = 100;
const SCRIPT = join(import.meta.dirname, '..', '..', 'test', 'fixtures', 'cluster-bot.ts');
const CONFIGS = ['single', '1 worker', '2 workers', '3 workers'] as const;
type Config = (typeof CONFIGS)[number];

/** The processes of one bot configuration and their lines. */
class Bot {
  readonly lines: BotLine[] = [];
  private readonly procs: BotProcess[] = [];
  private readonly dirs: string[] = [];
  private ingestEnv: Record<string, string> = {};
  private runs = 0;

  constructor(
    private readonly hs: Homeserver,
    private readonly user: TestUser,
    private readonly nats: NatsServer,
    private readonly workers: number,
  ) {}

  private dir(): string {
    const d = mkdtempSync(join(tmpdir(), 'halcyon-bench-cluster-'));
    this.dirs.push(d);
    return d;
  }

  private async spawn(env: Record<string, string>): Promise<BotProcess> {
    const p = startFaultBot(`r${this.runs++}`, env, this.lines, SCRIPT);
    this.procs.push(p);
    await p.waitFor((l) => l.kind === 'ready', 'a bot process ready', 120_000);
    return p;
  }

  /** Starts the bot: a fresh device (login), its ingest or single process, and its workers. */
  async start(): Promise<void> {
    const dataDir = this.dir();
    const token = await Client.login({ homeserver: this.hs.baseUrl, user: this.user.localpart, password: this.user.password, dataDir });
    const name = `bench${randomBytes(4).toString('hex')}`;
    const cluster = { HC_NATS: this.nats.url, HC_NAME: name };
    const burn = { HC_BURN_MS: String(BURN_MS) };
    // No debug lines (as a bot with debug logging off): two per event per worker, written and then parsed here,
    // would take CPU from the workers.
    const quiet = { HC_NO_DEBUG_LINES: '1' };
    this.ingestEnv = { HC_TOKEN: token, HC_DIR: dataDir, ...quiet, ...(this.workers === 0 ? burn : { ...cluster, HC_ROLE: 'ingest', HC_PARTITIONS: '16' }) };
    await this.spawn(this.ingestEnv);
    await Promise.all(Array.from({ length: this.workers }, () => this.spawn({ HC_TOKEN: token, HC_DIR: this.dir(), ...quiet, ...cluster, ...burn })));
  }

  /** Stops the ingest (or single process) cleanly: its token is saved, what comes next waits on the server. */
  async pauseIngest(): Promise<void> {
    await this.procs[0]!.stop();
  }

  async resumeIngest(): Promise<void> {
    this.procs[0] = await this.spawn(this.ingestEnv);
  }

  /** Handler start times of the messages tagged `tag`, once there are `n` of them (first handling only). */
  async handled(tag: string, n: number, timeoutMs: number): Promise<Map<string, number>> {
    const deadline = now() + timeoutMs;
    for (;;) {
      const seen = new Map<string, number>();
      for (const l of this.lines) if (l.kind === 'message' && String(l.body).startsWith(`${tag} `) && !seen.has(l.body)) seen.set(l.body, l.t);
      if (seen.size >= n) return seen;
      if (now() > deadline) throw new Error(`only ${seen.size} of ${n} messages handled within ${timeoutMs} ms`);
      await sleep(20);
    }
  }

  async stop(): Promise<void> {
    await Promise.all(this.procs.map((p) => p.stop().catch(() => p.kill9())));
    for (const d of this.dirs) rmSync(d, { recursive: true, force: true });
  }
}

/** Messages/s of one configuration on a backlog of `n` messages. */
async function throughput(hs: Homeserver, user: TestUser, nats: NatsServer, peer: Api, rooms: string[], config: Config, n: number): Promise<number> {
  const bot = new Bot(hs, user, nats, config === 'single' ? 0 : Number(config[0]));
  try {
    await bot.start();
    await bot.pauseIngest();
    const tag = `tp${randomBytes(3).toString('hex')}`;
    await Promise.all(
      rooms.map(async (roomId, r) => {
        for (let i = r; i < n; i += rooms.length) await peer.ok('PUT', `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/send/m.room.message/${tag}-${i}`, { msgtype: 'm.text', body: `${tag} ${i}` });
      }),
    );
    await bot.resumeIngest();
    const ts = [...(await bot.handled(tag, n, 300_000)).values()];
    return ((n - 1) * 1000) / (Math.max(...ts) - Math.min(...ts));
  } finally {
    await bot.stop();
  }
}

/** Send → handler latencies (ms) of `n` messages at 10/s, single process or ingest + two workers. */
async function latency(hs: Homeserver, user: TestUser, nats: NatsServer, peer: Api, rooms: string[], workers: number, n: number): Promise<number[]> {
  const bot = new Bot(hs, user, nats, workers);
  try {
    await bot.start();
    const tag = `lat${randomBytes(3).toString('hex')}`;
    const sentAt = new Map<string, number>();
    const t0 = now();
    for (let i = 0; i < n; i++) {
      await sleep(Math.max(0, t0 + i * 100 - now())); // a rate, not a wait for a condition
      const body = `${tag} ${i}`;
      sentAt.set(body, Date.now());
      void peer.ok('PUT', `/_matrix/client/v3/rooms/${encodeURIComponent(rooms[i % rooms.length]!)}/send/m.room.message/${tag}-${i}`, { msgtype: 'm.text', body });
    }
    const handled = await bot.handled(tag, n, 120_000);
    return [...handled].map(([body, t]) => t - sentAt.get(body)!);
  } finally {
    await bot.stop();
  }
}

export const run: Workload = (ctx) =>
  withSynapse(undefined, async (hs) => {
    const nats = await startNats();
    const peerUser = await hs.registerUser();
    const peer = new Api(hs.baseUrl, peerUser.accessToken);
    try {
      const user = await hs.registerUser();
      const botApi = new Api(hs.baseUrl, user.accessToken);
      const rooms = await Promise.all(Array.from({ length: ROOMS }, () => peer.createRoom([user.userId])));
      await Promise.all(rooms.map((r) => botApi.join(r)));
      await botApi.close();
      const rounds = ctx.quick ? 1 : Math.min(ctx.rounds, 3);
      const n = ctx.quick ? 100 : 400;
      const tp: Array<{ round: number; config: Config; eventsPerS: number }> = [];
      const lat: Array<{ round: number; config: 'single' | '2 workers'; p50: number; p99: number }> = [];
      for (let round = 0; round < rounds; round++) {
        const order = round % 2 === 0 ? CONFIGS : [...CONFIGS].reverse();
        for (const config of order) {
          ctx.gc();
          const eventsPerS = await throughput(hs, user, nats, peer, rooms, config, n);
          tp.push({ round, config, eventsPerS });
          ctx.progress(`cluster round ${round + 1}/${rounds}: ${config}, ${fmt(eventsPerS)} events/s`);
        }
        for (const workers of round % 2 === 0 ? [0, 2] : [2, 0]) {
          const ms = await latency(hs, user, nats, peer, rooms, workers, ctx.quick ? 20 : LATENCY_MESSAGES);
          const config = workers === 0 ? 'single' : '2 workers';
          lat.push({ round, config, p50: percentile(ms, 50), p99: percentile(ms, 99) });
          ctx.progress(`cluster round ${round + 1}/${rounds}: latency ${config}, p50 ${fmt(percentile(ms, 50))} ms`);
        }
      }
      const med = (config: Config) => summarize(tp.filter((s) => s.config === config).map((s) => s.eventsPerS)).median;
      const perRound = (f: (r: number) => number) => Array.from({ length: rounds }, (_, r) => f(r));
      const tpOf = (config: Config, r: number) => tp.find((s) => s.config === config && s.round === r)!.eventsPerS;
      const latOf = (config: 'single' | '2 workers', r: number) => lat.find((s) => s.config === config && s.round === r)!;
      const speedup = perRound((r) => tpOf('2 workers', r) / tpOf('1 worker', r));
      const hop = perRound((r) => latOf('2 workers', r).p50 - latOf('single', r).p50);
      const latMed = (config: 'single' | '2 workers', k: 'p50' | 'p99') => summarize(lat.filter((s) => s.config === config).map((s) => s[k])).median;
      return {
        id: 'cluster',
        title: '9. Cluster: handler-bound scale-out over NATS JetStream',
        ratios: [],
        goals: [
          goalEntry('2 workers ≥ 1.7× 1 worker (events/s, 5 ms CPU per event)', speedup.map((x) => `×${x.toFixed(2)}`).join(', '), roundsVerdict(speedup.map((x) => x >= 1.7))),
          goalEntry('broker hop ≤ +5 ms p50 (send → handler, 2 workers − single process)', hop.map((x) => `${x >= 0 ? '+' : ''}${x.toFixed(1)} ms`).join(', '), combineVerdicts([roundsVerdict(hop.map((x) => x <= 5))])),
        ],
        markdown: [
          `${n} messages over ${ROOMS} rooms, each handler burning ${BURN_MS} ms of CPU; ${rounds} round(s), medians. The bot is stopped while the peer sends, so its restart meets the whole backlog: events/s from the first handler call to the last.`,
          '',
          '| configuration | events/s | × 1 worker |',
          '|---|---|---|',
          ...CONFIGS.map((c) => `| ${c === 'single' ? 'single-process Client' : `ingest + ${c}`} | ${fmt(med(c))} | ${c === 'single' ? '' : `×${(med(c) / med('1 worker')).toFixed(2)}`} |`),
          '',
          `Send → handler of ${ctx.quick ? 20 : LATENCY_MESSAGES} messages at 10/s (Synapse, same clock):`,
          '',
          '| | p50 ms | p99 ms |',
          '|---|---|---|',
          `| single-process Client | ${fmt(latMed('single', 'p50'))} | ${fmt(latMed('single', 'p99'))} |`,
          `| ingest + 2 workers | ${fmt(latMed('2 workers', 'p50'))} | ${fmt(latMed('2 workers', 'p99'))} |`,
        ],
        data: { tp, lat },
      };
    } finally {
      await peer.close();
      await nats.stop();
    }
  });
