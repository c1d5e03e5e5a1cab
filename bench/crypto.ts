/**
 * C. Decryption: Halcyon's delivery of encrypted room events against matrix-js-sdk (same crypto-wasm engine) and a
 * raw crypto-wasm decryption loop, and /sync cadence during an encrypted burst against a plaintext one.
 *
 * Each round sets up, untimed: a replay server that answers the key endpoints; a fresh Halcyon bot (dist `Client`,
 * `@bot:bench` device `BENCHDEV`, fresh data dir, encryption on, `trust: 'all'`) that uploads its device and one-time keys there;
 * a second replay server (plus the js-sdk start-up endpoints of bench/workloads/e2ee-routes.ts) and a fresh
 * matrix-js-sdk client, the same user's device `JSSDKDEV` (`initRustCrypto({ useIndexedDB: false })`: in memory),
 * which uploads its keys there after its first /sync; a "raw" OlmMachine (`@raw:bench` device `RAWDEV`) on the same
 * store type as the bot's crypto actor (fake-indexeddb written through to a SQLite journal, `IdbJournal`, with a
 * store passphrase), in a process of its own that does nothing else (bench/crypto-raw.ts); and alice (an in-memory OlmMachine) who learns the devices' keys (keys/query,
 * keys/claim), shares one megolm session with them (olm to-device events) and encrypts W + N `m.room.message`
 * events once. The bot's /sync #0 carries its to-device key share and the room's `m.room.encryption` state; js-sdk's
 * #0 the room and #1 its key share; then both get the same bodies of `perBody` encrypted events. Warm-up, untimed:
 * the clients get the first W events' bodies and handle them (the bot's crypto worker is a fresh thread, whose wasm
 * code tiers up as it runs); the raw machine decrypts the same W events (so the stores have the same history).
 * Then, timed, each contender going first, second and last in turn over the rounds:
 *
 *  - bot, js-sdk: the bodies of the other N events are added to its replay server and served as fast as the client
 *    polls. Events/s = N ÷ (last handler call − first timed body's response on the server, offset-corrected). The
 *    client not being measured idles in a long-poll meanwhile.
 *  - raw: the same N event texts through `await machine.decryptRoomEvent(text, new RoomId(room),
 *    new DecryptionSettings(Untrusted))` in a loop, reading `.event` and freeing each result, in the raw machine's
 *    own process (the texts are handed over before the clock starts; this process waits meanwhile, its clients
 *    idle in long-polls). Events/s = N ÷ loop time. A thread of its own like the crypto actor's, and alone: not on
 *    the bench's main thread beside the clients, their fixtures and their garbage, which made it slower than
 *    Halcyon's whole pipeline, so no floor.
 *
 * Cadence (a fresh bot per burst, same round): the same kind of burst — the messages in the clear in an unencrypted
 * room, alice's megolm events, or alice's events with a changed one-time-key count in every body (so every poll
 * hands the crypto actor sync changes) — paced: body k (k ≥ 1) released at (k − 1) × releaseEveryMs after the bot
 * first asks for body 1, faster than the crypto actor decrypts, so decryption lags behind polling. Gap = the next
 * /sync request's arrival − the previous /sync response's completion, on the replay server, for the responses that
 * carried the burst's bodies.
 *
 * Also recorded: the CPU of every thread of the bench process and of the raw loop's (/proc/self/task, Linux), so the
 * crypto worker's CPU per event can be set against the raw loop's; and when the clients' first handler calls came.
 * @module
 */
import * as W from '@matrix-org/matrix-sdk-crypto-wasm';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import type { MatrixClient } from 'matrix-js-sdk';
import type { Logger as JsLogger } from 'matrix-js-sdk/lib/logger.js';
import type { Logger, Message } from '../src/index.ts';
import { type RawProcess, type RawRequest, startRawProcess } from './crypto-raw.ts';
import { startReplayServer, type ReplayServer, type ReplayStats } from './replay-server.ts';
import { ratioOf } from './report.ts';
import { clockOffset, fmt, now, percentile, perEventDelta, processCpuMs, type Summary, summarize, threadCpuMs, threadGroupsCpuMs } from './stats.ts';

// The built package, as users run it. HALCYON_BENCH_DIST=/path/to/index.js runs this part against another build
// (e.g. a patched copy of dist/, to try a fix without touching the tree).
const DIST = process.env.HALCYON_BENCH_DIST ? pathToFileURL(resolve(process.env.HALCYON_BENCH_DIST)).href : '../dist/index.js';
const { Client, encodeToken } = (await import(DIST)) as typeof import('../src/index.ts');

const BOT = { userId: '@bot:bench', deviceId: 'BENCHDEV' };
const RAW = { userId: '@raw:bench', deviceId: 'RAWDEV' };
// A second device of the bot's user, so the room (members, state) is the same for both clients.
const JSSDK = { userId: BOT.userId, deviceId: 'JSSDKDEV' };
const ALICE = '@alice:bench';
const ROOM = '!crypto:bench';
const MEGOLM = 'm.megolm.v1.aes-sha2';
const OTK_COUNTS = { signed_curve25519: 50 };
const BASE_TS = 1_700_000_000_000;

/** Options of {@link cryptoBench}. */
export interface CryptoBenchOptions {
  rounds: number;
  /** Encrypted events per round (per contender). */
  events: number;
  /** Events per /sync body in the throughput run. */
  perBody: number;
  /** Throughput run: events decrypted by both contenders, untimed, before the timed ones (a multiple of perBody). */
  warmup: number;
  /** Events per /sync body in the cadence runs. */
  cadencePerBody: number;
  /** Cadence runs: one body released every this many ms. */
  cadenceReleaseEveryMs: number;
  /** Parts to run (default both). */
  parts?: Array<'throughput' | 'cadence'>;
  /** Throughput contenders (default all: the Halcyon bot, the raw loop, matrix-js-sdk). */
  contenders?: ThroughputContender[];
  /** Rounds matrix-js-sdk runs, the first ones (default all): no goal is decided against it, only a ratio. */
  jsSdkRounds?: number;
  /** Full GC between measurements. */
  gc: () => void;
  progress: (line: string) => void;
}

/** One measurement of decryption throughput. */
export interface CryptoThroughputSample {
  round: number;
  contender: ThroughputContender;
  events: number;
  seconds: number;
  eventsPerSec: number;
  /** raw: the loop thread's CPU (its process's main thread); bot, js-sdk: the main thread's CPU from the timed bodies' release to the last handler call. Per event. */
  mainCpuUsPerEvent: number;
  /** The whole bench process (main + workers + V8 helper threads) over the same span, per event; raw: its whole process. */
  allThreadsCpuUsPerEvent: number;
  /**
   * CPU per event by thread over the same span, from /proc/self/task (Linux; 10 ms ticks): `main`, `halcyon-crypto`,
   * `halcyon-sync` (the sync and cache actors), `v8 helpers` (GC, background compilation), `other`.
   */
  threadsCpuUsPerEvent?: Record<string, number>;
  /** bot, js-sdk: /sync requests the server saw between the first encrypted body and the last handler call, and their gaps. */
  syncDuringBurst?: { polls: number; gapP50: number; gapP99: number; gapMax: number; allBodiesFetchedAfterMs: number };
  /** bot: client.run() to the first /sync request (crypto store open, key upload, worker start-up); js-sdk: createClient to the first /sync request (initRustCrypto, push rules, filter); not timed. */
  startupMs?: number;
  /** bot, js-sdk: first timed body's response to the first handler call of the timed burst (it waits for its batch's decryption). */
  firstDeliveryMs?: number;
  /** Events/s of the untimed warm-up (bot: a fresh crypto worker; raw: the first loop over a fresh store). */
  coldEventsPerSec?: number;
  problems?: string[];
  error?: string;
}

/**
 * The cadence bursts: the messages in the clear in an unencrypted room; alice's megolm events; and alice's events with
 * a changed `device_one_time_keys_count` in every body, so every poll hands the crypto actor sync changes (as
 * to-device traffic or key-count changes during a burst would), which wait for the decryption chunk in progress.
 */
export type CadenceBurst = 'plaintext' | 'encrypted' | 'encrypted+keys' | 'encrypted+to-device';
export const CADENCE_BURSTS: CadenceBurst[] = ['plaintext', 'encrypted', 'encrypted+keys', 'encrypted+to-device'];

/** One cadence measurement. */
export interface CryptoCadenceSample {
  round: number;
  contender: CadenceBurst;
  bodies: number;
  gapsMs: number[];
  gapP50: number;
  gapP99: number;
  gapMax: number;
  /** How far the last burst body's response trailed its release (body k at (k − 1) × releaseEveryMs after body 1). */
  lagAtLastBodyMs: number;
  /** Last handler call − last burst body's response: the backlog left when polling was done. */
  drainAfterLastBodyMs: number;
  /** Handler events/s over the burst (first burst body served to last handler call). */
  eventsPerSec: number;
  problems?: string[];
  error?: string;
}

/** Halcyon bot ÷ another contender, events/s: the ratio of the medians and the per-round ratios. */
export interface ThroughputRatio {
  ofMedians: number;
  perRound: Summary;
  perRoundValues: number[];
}

/** Result of {@link cryptoBench}. */
export interface CryptoResult {
  config: { rounds: number; jsSdkRounds: number; events: number; warmup: number; perBody: number; cadencePerBody: number; cadenceReleaseEveryMs: number; bodyBytesPerEvent: number; store: string; jssdkStore: string };
  throughput: {
    samples: CryptoThroughputSample[];
    summary: Record<ThroughputContender, { eventsPerSec: Summary; mainCpuUsPerEvent: Summary; allThreadsCpuUsPerEvent: Summary }>;
    /** bot ÷ raw events/s: ratio of the medians and per-round ratios. */
    ratio: ThroughputRatio;
    /** bot ÷ matrix-js-sdk events/s (null when js-sdk did not take part). */
    ratioVsJsSdk: ThroughputRatio | null;
  } | null;
  cadence: {
    samples: CryptoCadenceSample[];
    summary: Record<CadenceBurst, { gapP50: Summary; gapP99: Summary; gapMax: Summary; lagAtLastBodyMs: Summary; drainAfterLastBodyMs: Summary; eventsPerSec: Summary; pooled: { n: number; p50: number; p99: number; max: number } }>;
  } | null;
}

type Json = Record<string, any>;

// ---------------------------------------------------------------- a fake key server for alice and the raw machine

interface Device {
  deviceKeys?: Json;
  oneTimeKeys: Map<string, Json>;
  fallbackKeys: Map<string, Json>;
  inbox: Json[];
}

/** Keys and to-device messages of the in-process devices (alice, raw) and of the bot (fed from the replay server). */
class Keys {
  readonly devices = new Map<string, Device>();

  device(user: string, dev: string): Device {
    const k = `${user}|${dev}`;
    let d = this.devices.get(k);
    if (!d) this.devices.set(k, (d = { oneTimeKeys: new Map(), fallbackKeys: new Map(), inbox: [] }));
    return d;
  }

  upload(user: string, dev: string, body: Json): void {
    const d = this.device(user, dev);
    if (body.device_keys) d.deviceKeys = body.device_keys;
    for (const [id, key] of Object.entries((body.one_time_keys ?? {}) as Json)) d.oneTimeKeys.set(id, key);
    for (const [id, key] of Object.entries((body.fallback_keys ?? {}) as Json)) d.fallbackKeys.set(id, key);
  }

  /** The keys/query answer for `users`. */
  query(users: string[]): Json {
    const deviceKeys: Json = {};
    for (const user of users) {
      deviceKeys[user] = {};
      for (const [k, d] of this.devices) {
        const [u, dev] = k.split('|') as [string, string];
        if (u === user && d.deviceKeys) deviceKeys[user][dev] = d.deviceKeys;
      }
    }
    return { device_keys: deviceKeys, failures: {}, master_keys: {}, self_signing_keys: {}, user_signing_keys: {} };
  }

  answer(machine: W.OlmMachine, req: RawRequest): string {
    return this.answerFor(machine.userId.toString(), machine.deviceId.toString(), req);
  }

  /** Answers a request of device `dev` of user `me` (the raw machine's come over IPC, from its own process). */
  answerFor(me: string, dev: string, req: RawRequest): string {
    const body = JSON.parse(req.body) as Json;
    switch (req.type) {
      case W.RequestType.KeysUpload: {
        this.upload(me, dev, body);
        return JSON.stringify({ one_time_key_counts: OTK_COUNTS });
      }
      case W.RequestType.KeysQuery:
        return JSON.stringify(this.query(Object.keys((body.device_keys ?? {}) as Json)));
      case W.RequestType.KeysClaim: {
        const out: Json = {};
        for (const [user, devices] of Object.entries((body.one_time_keys ?? {}) as Json)) {
          for (const [dev, alg] of Object.entries(devices as Json)) {
            const d = this.devices.get(`${user}|${dev}`);
            const pick = d && [...d.oneTimeKeys.keys()].find((id) => id.startsWith(`${alg}:`));
            if (!d || !pick) continue;
            ((out[user] ??= {})[dev] = { [pick]: d.oneTimeKeys.get(pick)! });
            d.oneTimeKeys.delete(pick);
          }
        }
        return JSON.stringify({ one_time_keys: out, failures: {} });
      }
      case W.RequestType.ToDevice: {
        for (const [user, devices] of Object.entries((body.messages ?? {}) as Json)) {
          for (const [dev, content] of Object.entries(devices as Json)) this.device(user, dev).inbox.push({ type: req.event_type, sender: me, content });
        }
        return '{}';
      }
      case W.RequestType.SignatureUpload:
        return JSON.stringify({ failures: {} });
      default:
        throw new Error(`crypto bench: unexpected request type ${String(req.type)}`);
    }
  }

  /** Answers `machine`'s outgoing requests until there are none. */
  async pump(machine: W.OlmMachine): Promise<void> {
    for (let round = 0; round < 20; round++) {
      const reqs = await machine.outgoingRequests();
      if (reqs.length === 0) return;
      for (const r of reqs as Array<{ id: string; type: W.RequestType; body: string; event_type?: string }>) {
        await machine.markRequestAsSent(r.id, r.type, this.answer(machine, r));
      }
    }
    throw new Error(`crypto bench: ${machine.userId.toString()} keeps making requests`);
  }
}


// ---------------------------------------------------------------- fixtures

const FILLER = 'the quick brown fox jumps over the lazy dog while the bot decrypts another megolm message';

/** The clear content of message i (60–100 characters). */
function messageBody(i: number): string {
  return `bench message ${i}: ${FILLER}`.slice(0, 60 + (i % 41));
}

interface Fixture {
  /** /sync bodies: #0 joins the room (and carries the key share), #1… carry the timeline events. */
  bodies: string[];
  /** The timeline events' JSON texts as served (what decryptRoomEvent gets). */
  texts: string[];
  bytes: number;
}

/** The message event envelope (everything but type and content). */
function envelope(i: number): Json {
  return { event_id: `$bench${i}-${'x'.repeat(32)}`, sender: ALICE, origin_server_ts: BASE_TS + i, unsigned: { age: 100 } };
}

function nextBatch(k: number): string {
  return `s${k + 1}_0`;
}

/** What else every body of a burst carries: nothing, a changed key count, or a to-device event. */
type Extra = 'none' | 'keys' | 'to-device';

/** /sync bodies: `heads` (before the timeline, e.g. the room's state and the key share), then `perBody` events per body. */
function buildBodies(heads: Json[], events: Json[], perBody: number, extra: Extra = 'none'): Fixture {
  const bodies = heads.map((h, k) => JSON.stringify({ next_batch: nextBatch(k), ...h }));
  const texts: string[] = [];
  for (let start = 0, k = heads.length; start < events.length; start += perBody, k++) {
    const chunk = events.slice(start, start + perBody);
    for (const ev of chunk) texts.push(JSON.stringify(ev));
    bodies.push(
      JSON.stringify({
        next_batch: nextBatch(k),
        // 51 (above the 50 uploaded, so no top-up upload) and 50 in turn: a change the sync actor hands over every poll.
        device_one_time_keys_count: extra === 'keys' ? { signed_curve25519: k % 2 === 1 ? 51 : 50 } : OTK_COUNTS,
        // A plain to-device event: the sync actor must wait until the crypto actor has applied it (the next poll
        // lets the server delete it), as it would for room keys arriving during a burst.
        ...(extra === 'to-device' ? { to_device: { events: [{ type: 'org.halcyon.bench.ping', sender: ALICE, content: { k } }] } } : {}),
        rooms: { join: { [ROOM]: { timeline: { events: chunk, limited: false, prev_batch: `p${k}` } } } },
      }),
    );
  }
  return { bodies, texts, bytes: bodies.slice(heads.length).reduce((n, b) => n + Buffer.byteLength(b), 0) };
}

function stateEvent(type: string, stateKey: string, content: Json, i: number): Json {
  return { type, state_key: stateKey, sender: ALICE, content, origin_server_ts: BASE_TS - 1000 + i, event_id: `$state${i}-${type}-${stateKey}`, unsigned: {} };
}

function firstBody(toDevice: Json[], encrypted: boolean): Json {
  const state = [
    stateEvent('m.room.create', '', { creator: ALICE, room_version: '10' }, 0),
    stateEvent('m.room.member', ALICE, { membership: 'join' }, 1),
    stateEvent('m.room.member', BOT.userId, { membership: 'join' }, 2),
  ];
  if (encrypted) state.push(stateEvent('m.room.encryption', '', { algorithm: MEGOLM, rotation_period_ms: 604_800_000, rotation_period_msgs: 1_000_000 }, 3));
  return {
    to_device: { events: toDevice },
    device_one_time_keys_count: OTK_COUNTS,
    device_unused_fallback_key_types: ['signed_curve25519'],
    rooms: { join: { [ROOM]: { state: { events: state }, timeline: { events: [], limited: false, prev_batch: 'p0' } } } },
  };
}

/**
 * js-sdk's first /sync: the room (as for the bot), as a new device sees it before its first key upload (no one-time
 * or fallback keys on the server), since js-sdk uploads its keys after its first sync.
 */
function jsInitialBody(): Json {
  return { ...firstBody([], true), device_one_time_keys_count: { signed_curve25519: 0 }, device_unused_fallback_key_types: [] };
}

/** js-sdk's second /sync: alice's key share. */
function jsKeyShareBody(toDevice: Json[]): Json {
  return { to_device: { events: toDevice }, device_one_time_keys_count: OTK_COUNTS, device_unused_fallback_key_types: ['signed_curve25519'] };
}

/** The plaintext burst: the same messages in the clear, in an unencrypted room. */
function plaintextFixture(n: number, perBody: number): Fixture {
  const events = Array.from({ length: n }, (_, i) => ({ ...envelope(i), type: 'm.room.message', content: { msgtype: 'm.text', body: messageBody(i) } }));
  return buildBodies([firstBody([], false)], events, perBody);
}

/** Alice: an in-memory OlmMachine whose device keys and one-time keys are uploaded to `keys`. */
async function openAlice(keys: Keys, round: number): Promise<W.OlmMachine> {
  const alice = await W.OlmMachine.initialize(new W.UserId(ALICE), new W.DeviceId(`ALICE${round}${randomBytes(3).toString('hex').toUpperCase()}`));
  try {
    await keys.pump(alice);
    return alice;
  } catch (err) {
    alice.close();
    throw err;
  }
}

/** The encrypted events, as bodies for the Halcyon bot and (if it takes part) for matrix-js-sdk. */
interface EncryptedFixture {
  fixture: Fixture;
  /** js-sdk's bodies: its own first sync ({@link jsInitialBody}), its key share, then the same timeline bodies. */
  jsFixture: Fixture | null;
  aliceKeysQuery: Json;
}

/**
 * Alice learns the bot's keys (uploaded to the replay server) and, if given, the raw machine's and js-sdk's (the
 * bot user's second device); shares one megolm session with them and encrypts n messages. The raw machine
 * receives its key share here.
 */
async function encryptedFixture(
  keys: Keys,
  alice: W.OlmMachine,
  botUpload: Json,
  raw: RawProcess | null,
  n: number,
  perBody: number,
  extra: Extra = 'none',
  jsUpload: Json | null = null,
): Promise<EncryptedFixture> {
  keys.upload(BOT.userId, BOT.deviceId, botUpload);
  if (jsUpload) keys.upload(JSSDK.userId, JSSDK.deviceId, jsUpload);
  const recipients = [BOT.userId, ...(raw ? [RAW.userId] : [])];
  await alice.updateTrackedUsers(recipients.map((u) => new W.UserId(u)));
  await keys.pump(alice);
  const room = new W.RoomId(ROOM);
  const settings = new W.RoomSettings();
  settings.algorithm = W.EncryptionAlgorithm.MegolmV1AesSha2;
  settings.sessionRotationPeriodMessages = 1_000_000;
  settings.sessionRotationPeriodMs = 604_800_000;
  await alice.setRoomSettings(room, settings);
  const claim = await alice.getMissingSessions(recipients.map((u) => new W.UserId(u)));
  if (claim) await alice.markRequestAsSent(claim.id, claim.type, keys.answer(alice, claim as never));
  const enc = new W.EncryptionSettings();
  enc.algorithm = W.EncryptionAlgorithm.MegolmV1AesSha2;
  enc.historyVisibility = W.HistoryVisibility.Shared;
  enc.rotationPeriodMessages = 1_000_000n;
  enc.rotationPeriod = 604_800_000_000n;
  for (const r of await alice.shareRoomKey(new W.RoomId(ROOM), recipients.map((u) => new W.UserId(u)), enc)) {
    await alice.markRequestAsSent(r.id, r.type, keys.answer(alice, r as never));
  }
  await keys.pump(alice);
  const inbox = (who: { userId: string; deviceId: string }, name: string): Json[] => {
    const got = keys.device(who.userId, who.deviceId).inbox.splice(0);
    if (got.length !== 1) throw new Error(`crypto bench: alice sent ${name} ${got.length} to-device events, not 1 (did she get its keys?)`);
    return got;
  };
  const botInbox = inbox(BOT, 'the bot');
  const jsInbox = jsUpload ? inbox(JSSDK, 'matrix-js-sdk') : null;
  if (raw) await raw.receiveToDevice(inbox(RAW, 'the raw machine'));
  const events: Json[] = [];
  for (let i = 0; i < n; i++) {
    const content = await alice.encryptRoomEvent(new W.RoomId(ROOM), 'm.room.message', JSON.stringify({ msgtype: 'm.text', body: messageBody(i) }));
    events.push({ ...envelope(i), type: 'm.room.encrypted', content: JSON.parse(content) as Json });
  }
  return {
    fixture: buildBodies([firstBody(botInbox, true)], events, perBody, extra),
    jsFixture: jsInbox ? buildBodies([jsInitialBody(), jsKeyShareBody(jsInbox)], events, perBody, extra) : null,
    aliceKeysQuery: keys.query([ALICE]),
  };
}

// ---------------------------------------------------------------- the bot

/** A client under test: the Halcyon bot or matrix-js-sdk. */
interface Bot {
  /** Resolves once the client took its first /sync batch (Halcyon: `client.run()` resolved; js-sdk: sync `PREPARED`). */
  running: Promise<void>;
  startAt: number;
  /** Resolves with the time (epoch ms) the `count`-th message reached the handler; call before it can happen. */
  at(count: number): Promise<number>;
  counts: () => { messages: number; encrypted: number; wrongBody: number; decryptionErrors: number };
  problems: string[];
  stop(): Promise<void>;
}

function launchBot(url: string): Bot {
  const problems: string[] = [];
  const note = (level: string) => (obj: unknown, msg?: string) => {
    if (problems.length < 20) problems.push(`${level}: ${msg ?? ''} ${obj instanceof Error ? obj.message : typeof obj === 'string' ? obj : JSON.stringify(obj)}`.trim());
  };
  const logger: Logger = { debug: () => {}, info: () => {}, warn: note('warn'), error: note('error') };
  const dataDirP = mkdtemp(join(tmpdir(), 'halcyon-bench-crypto-'));
  let messages = 0;
  let encrypted = 0;
  let wrongBody = 0;
  let decryptionErrors = 0;
  const marks = marker();
  let client: InstanceType<typeof Client> | null = null;
  const startAt = now();
  const running = dataDirP.then(async (dataDir) => {
    // trust 'all': the raw loop decrypts with `TrustRequirement.Untrusted`, and alice's device is not cross-signed
    // (the default, 'signed', refuses her events).
    client = new Client({ dataDir, deliverInitialTimeline: false, pollTimeoutMs: 30_000, logger, stopTimeoutMs: 5_000, trust: 'all' });
    client.on('message', (m: Message) => {
      // What a bot reads: the sender, whether it was encrypted, the text.
      if (m.isEncrypted) encrypted++;
      const body = m.body;
      if (!body.startsWith(`bench message `) || m.sender !== ALICE) wrongBody++;
      marks.hit(++messages);
    });
    client.on('decryptionError', (err) => {
      decryptionErrors++;
      note('decryptionError')(err);
    });
    client.on('error', (e) => note('error event')(e));
    client.on('syncError', (e) => note('syncError event')(e));
    const token = encodeToken({ homeserver: url, userId: BOT.userId, deviceId: BOT.deviceId, accessToken: 'bench' });
    await client.run(token);
  });
  running.catch(() => {});
  return {
    running,
    startAt,
    at: marks.at,
    counts: () => ({ messages, encrypted, wrongBody, decryptionErrors }),
    problems,
    async stop() {
      // Not waiting for run() first: it may wait for a /sync body that never comes; stop() makes it fail.
      const dataDir = await dataDirP; // the client exists once this has resolved
      await (client as InstanceType<typeof Client> | null)?.stop();
      await running.catch(() => {});
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}

/** Resolves `count`-th mark promises; shared by the bot and js-sdk launchers. */
function marker(): { at(count: number): Promise<number>; hit(count: number): void } {
  const marks = new Map<number, { promise: Promise<number>; resolve: (t: number) => void }>();
  let reached = 0;
  return {
    at(count) {
      let m = marks.get(count);
      if (!m) {
        let resolve!: (t: number) => void;
        const promise = new Promise<number>((r) => (resolve = r));
        marks.set(count, (m = { promise, resolve }));
        if (reached >= count) resolve(NaN); // too late to know when
      }
      return m.promise;
    },
    hit(count) {
      reached = count;
      marks.get(count)?.resolve(now());
    },
  };
}

/**
 * matrix-js-sdk as a bot author sets it up: `createClient` with the bot user's second device, `initRustCrypto`
 * with the in-memory store (`useIndexedDB: false`), `startClient()`, and a `RoomEvent.Timeline` handler that awaits
 * `decryptEventIfNeeded` (js-sdk's sync hands timeline events over undecrypted) and reads what the bot's handler
 * reads. Its logger is silenced; warnings and errors are kept as problems.
 */
function launchJsSdk(url: string): Bot {
  const problems: string[] = [];
  const note = (level: string) => (...msg: unknown[]) => {
    // js-sdk warns that it adds the push rules it knows and Synapse 1.163 does not send (so it would against Synapse too).
    if (level === 'warn' && typeof msg[0] === 'string' && msg[0].startsWith('Adding default global')) return;
    if (problems.length < 20) problems.push(`${level}: ${msg.map((m) => (m instanceof Error ? m.message : typeof m === 'string' ? m : JSON.stringify(m))).join(' ')}`.slice(0, 300));
  };
  const logger: JsLogger = { trace: () => {}, debug: () => {}, info: () => {}, warn: note('warn'), error: note('error'), getChild: () => logger };
  let messages = 0;
  let encrypted = 0;
  let wrongBody = 0;
  let decryptionErrors = 0;
  const marks = marker();
  let client: MatrixClient | null = null;
  let stopped = false;
  const startAt = now();
  const running = (async () => {
    const sdk = await import('matrix-js-sdk');
    // Some modules (MatrixRTC, the sync loop) log through children of js-sdk's global loglevel logger rather than the
    // client's logger; the children copy the root's method factory (its type hides it).
    const root = (await import('matrix-js-sdk/lib/logger.js')).logger as unknown as { methodFactory: () => () => void; rebuild(): void };
    root.methodFactory = () => () => {};
    root.rebuild();
    const c = sdk.createClient({ baseUrl: url, userId: JSSDK.userId, deviceId: JSSDK.deviceId, accessToken: 'bench', logger });
    client = c;
    await c.initRustCrypto({ useIndexedDB: false });
    if (stopped) {
      c.stopClient();
      throw new Error('matrix-js-sdk was stopped while starting');
    }
    c.on(sdk.RoomEvent.Timeline, (event, room, toStartOfTimeline) => {
      if (toStartOfTimeline || room?.roomId !== ROOM) return;
      void (async () => {
        await c.decryptEventIfNeeded(event);
        if (event.isDecryptionFailure()) {
          decryptionErrors++;
          note('decryption failure')(event.decryptionFailureReason);
          return;
        }
        if (event.getType() !== 'm.room.message') return;
        // What a bot reads: the sender, whether it was encrypted, the text.
        if (event.isEncrypted()) encrypted++;
        const body = (event.getContent() as { body?: unknown }).body;
        if (typeof body !== 'string' || !body.startsWith('bench message ') || event.getSender() !== ALICE) wrongBody++;
        marks.hit(++messages);
      })().catch((err: unknown) => note('handler')(err));
    });
    const prepared = new Promise<void>((resolve, reject) =>
      c.on(sdk.ClientEvent.Sync, (state, _prev, data) => {
        if (state === sdk.SyncState.Prepared) resolve();
        else if (state === sdk.SyncState.Error) reject(data?.error ?? new Error('js-sdk sync error'));
      }),
    );
    await c.startClient();
    await prepared;
  })();
  running.catch(() => {});
  return {
    running,
    startAt,
    at: marks.at,
    counts: () => ({ messages, encrypted, wrongBody, decryptionErrors }),
    problems,
    stop() {
      stopped = true;
      (client as MatrixClient | null)?.stopClient();
      return Promise.resolve();
    },
  };
}

async function withTimeout<T>(p: Promise<T>, ms: number, what: () => string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(what())), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

function botProblems(bot: Bot, n: number, wantEncrypted: boolean): string[] {
  const c = bot.counts();
  const out = [...bot.problems];
  if (c.messages !== n) out.push(`${c.messages} of ${n} messages handled`);
  if (wantEncrypted && c.encrypted !== c.messages) out.push(`${c.messages - c.encrypted} messages not marked isEncrypted`);
  if (!wantEncrypted && c.encrypted !== 0) out.push(`${c.encrypted} plaintext messages marked isEncrypted`);
  if (c.wrongBody) out.push(`${c.wrongBody} messages with a wrong body or sender`);
  return out;
}

/** Gaps (ms) from each /sync response carrying a body in [from, to] to the next /sync request. */
function gapsForBodies(st: ReplayStats, from: number, to: number): number[] {
  const gaps: number[] = [];
  for (let i = 0; i + 1 < st.syncRequests; i++) {
    const k = st.requestBodies[i]!;
    if (k >= from && k <= to) gaps.push(st.requestTimes[i + 1]! - st.responseTimes[i]!);
  }
  return gaps;
}

// ---------------------------------------------------------------- measurements

const TIMEOUT_MS = 120_000;

/** One timed loop of the raw machine, in its own process (bench/crypto-raw.ts), as a sample. */
async function rawLoop(raw: RawProcess, texts: string[]): Promise<CryptoThroughputSample> {
  const r = await raw.loop(texts, ROOM);
  return { round: 0, contender: 'raw', ...r };
}

/** The throughput contenders: the Halcyon bot, the raw loop, matrix-js-sdk. */
export type ThroughputContender = 'bot' | 'raw' | 'jssdk';
/** All throughput contenders, in the first round's order. */
export const THROUGHPUT_CONTENDERS: ThroughputContender[] = ['bot', 'raw', 'jssdk'];
const CONTENDER_LABEL: Record<ThroughputContender, string> = { bot: 'bot (Halcyon)', raw: 'raw loop', jssdk: 'matrix-js-sdk' };

/** The endpoints js-sdk needs besides the replay server's own (push rules, capabilities, key backup). */
const JS_ROUTES = join(import.meta.dirname, 'workloads', 'e2ee-routes.ts');

const startupFailure = (b: Bot, name: string) => () => `${name} uploaded no keys; problems: ${b.problems.join(' | ') || 'none'}`;

/** Waits for a client's first key upload, or fails with its error if it stopped first. */
function firstUpload(server: ReplayServer, b: Bot, name: string): Promise<Json> {
  // `running` resolving without an upload is no failure for js-sdk (it uploads after its first sync): only a rejection counts.
  const failed = b.running.then(() => new Promise<never>(() => {}));
  return withTimeout(Promise.race([server.keysUploads(1), failed]), 60_000, startupFailure(b, name)).then(([u]) => u as Json);
}

/**
 * One throughput round: alice encrypts `warmup` + `events` messages; the first `warmup` go through every contender
 * untimed (the bot's crypto worker is a fresh thread: its wasm code and store warm up; the raw machine gets the same
 * store history), then the rest, timed, through each, in the given order. The Halcyon bot and js-sdk each have their
 * own replay server (same timeline bodies); the one not being measured idles in its long-poll.
 */
async function throughputRound(o: CryptoBenchOptions, round: number, order: ThroughputContender[]): Promise<{ samples: CryptoThroughputSample[]; bytesPerEvent: number }> {
  const n = o.events;
  const w = o.warmup;
  if (w % o.perBody !== 0) throw new Error(`warm-up (${w}) must be a multiple of perBody (${o.perBody})`);
  const withJs = order.includes('jssdk');
  const samples: CryptoThroughputSample[] = [];
  const servers: ReplayServer[] = [];
  const clients = new Map<'bot' | 'jssdk', Bot>();
  // js-sdk failing to set up leaves the round to the others (a failure of the bot's set-up fails the round).
  const setupFailures = new Map<ThroughputContender, unknown>();
  const dropJs = async (err: unknown) => {
    setupFailures.set('jssdk', err);
    const js = clients.get('jssdk');
    clients.delete('jssdk');
    await js?.stop().catch(() => {});
  };
  let raw: RawProcess | null = null;
  let alice: W.OlmMachine | null = null;
  try {
    const botServer = await startReplayServer({ keys: true, whoami: BOT, longPollMs: 1000 });
    servers.push(botServer);
    // Long-polls held up to 25 s: the replay server's empty answers carry no `device_one_time_keys_count`, which
    // js-sdk takes (as the spec says) for "no one-time keys left" and uploads 50 more; Synapse always sends the count.
    const jsServer = withJs ? await startReplayServer({ keys: true, whoami: JSSDK, longPollMs: 25_000, routes: JS_ROUTES }) : null;
    if (jsServer) servers.push(jsServer);
    const botOffset = (await clockOffset(botServer)).offsetMs;
    const jsOffset = jsServer ? (await clockOffset(jsServer)).offsetMs : NaN;
    const keys = new Keys();
    alice = await openAlice(keys, round);
    // Every user the clients ask about must be in the answer (the bot's own user too, whose devices are not uploaded
    // yet): js-sdk asks again at once for a user missing from it, in a loop.
    const keysQuery = keys.query([ALICE, BOT.userId]);
    await botServer.setKeysQuery(keysQuery);

    const bot = launchBot(botServer.url);
    clients.set('bot', bot);
    const js = jsServer ? launchJsSdk(jsServer.url) : null;
    if (js && jsServer) {
      clients.set('jssdk', js);
      await jsServer.setKeysQuery(keysQuery);
      await jsServer.setBodies([JSON.stringify({ next_batch: nextBatch(0), ...jsInitialBody() })]);
    }
    const botUpload = await firstUpload(botServer, bot, 'the bot');
    const jsUpload = js && jsServer ? await firstUpload(jsServer, js, 'matrix-js-sdk').catch(async (err: unknown) => (await dropJs(err), null)) : null;
    raw = await startRawProcess(RAW, (req) => keys.answerFor(RAW.userId, RAW.deviceId, req));
    const { fixture, jsFixture } = await encryptedFixture(keys, alice, botUpload, raw, w + n, o.perBody, 'none', jsUpload);
    alice.close();
    alice = null;
    const firstSync = (await botServer.stats()).requestTimes[0];
    const warmTexts = fixture.texts.slice(0, w);
    const timedTexts = fixture.texts.slice(w);

    // Untimed warm-up (its rates are kept as the cold numbers).
    interface Subject { b: Bot; server: ReplayServer; offsetMs: number; bodies: string[]; firstTimed: number; firstSyncAt: number; cold: number; name: string }
    const subjects = new Map<'bot' | 'jssdk', Subject>();
    subjects.set('bot', { b: bot, server: botServer, offsetMs: botOffset, bodies: fixture.bodies, firstTimed: 1 + w / o.perBody, firstSyncAt: firstSync ?? NaN, cold: NaN, name: 'the bot' });
    if (js && jsServer && jsFixture && jsUpload) {
      subjects.set('jssdk', { b: js, server: jsServer, offsetMs: jsOffset, bodies: jsFixture.bodies, firstTimed: 2 + w / o.perBody, firstSyncAt: (await jsServer.stats()).requestTimes[0] ?? NaN, cold: NaN, name: 'matrix-js-sdk' });
    }
    const stuck = (sub: Subject, what: string, count: number) => () =>
      `${what}: ${sub.name} handled ${sub.b.counts().messages} of ${count} messages; problems: ${botProblems(sub.b, count, true).join(' | ')}`;
    const timedMarks = new Map<'bot' | 'jssdk', { first: Promise<number>; last: Promise<number> }>();
    for (const [id, sub] of subjects) {
      const warmDone = sub.b.at(w);
      timedMarks.set(id, { first: sub.b.at(w + 1), last: sub.b.at(w + n) });
      // The warm-up bodies start with the first timeline body (the bot's body 1, js-sdk's body 2).
      const firstWarm = sub.firstTimed - w / o.perBody;
      try {
        await sub.server.setBodies(sub.bodies.slice(0, sub.firstTimed));
        await withTimeout(sub.b.running, TIMEOUT_MS, () => `${sub.name} did not start; problems: ${sub.b.problems.join(' | ') || 'none'}`);
        if (w > 0) {
          const t = await withTimeout(warmDone, TIMEOUT_MS, stuck(sub, 'warm-up', w));
          sub.cold = w / ((t - ((await sub.server.stats()).bodyTimes[firstWarm]! - sub.offsetMs)) / 1000);
        }
      } catch (err) {
        if (id === 'bot') throw err;
        subjects.delete(id);
        await dropJs(err);
      }
    }
    const coldRaw = w > 0 ? (await rawLoop(raw, warmTexts)).eventsPerSec : NaN;

    const measureRaw = async () => {
      o.gc();
      const s = await rawLoop(raw!, timedTexts);
      s.round = round;
      s.coldEventsPerSec = coldRaw;
      samples.push(s);
    };
    const measureClient = async (id: 'bot' | 'jssdk') => {
      const sub = subjects.get(id)!;
      const marks = timedMarks.get(id)!;
      o.gc();
      const th0 = threadGroupsCpuMs();
      const cpu0 = threadCpuMs();
      const proc0 = processCpuMs();
      await sub.server.setBodies(sub.bodies);
      const last = await withTimeout(marks.last, TIMEOUT_MS, stuck(sub, 'timed burst', w + n));
      const cpu = threadCpuMs() - cpu0;
      const proc = processCpuMs() - proc0;
      const th1 = threadGroupsCpuMs();
      const st = await sub.server.stats();
      const startServer = st.bodyTimes[sub.firstTimed]!;
      const start = startServer - sub.offsetMs;
      const seconds = (last - start) / 1000;
      const endServer = last + sub.offsetMs;
      const gaps: number[] = [];
      for (let i = 0; i + 1 < st.syncRequests; i++) {
        if (st.requestTimes[i]! < startServer - 1 || st.requestTimes[i + 1]! > endServer) continue;
        gaps.push(st.requestTimes[i + 1]! - st.responseTimes[i]!);
      }
      const s: CryptoThroughputSample = {
        round,
        contender: id,
        events: n,
        seconds,
        eventsPerSec: n / seconds,
        mainCpuUsPerEvent: (cpu * 1000) / n,
        allThreadsCpuUsPerEvent: (proc * 1000) / n,
        syncDuringBurst: {
          polls: gaps.length,
          gapP50: percentile(gaps, 50),
          gapP99: percentile(gaps, 99),
          gapMax: gaps.length ? Math.max(...gaps) : NaN,
          allBodiesFetchedAfterMs: st.bodyTimes[st.bodyTimes.length - 1]! - startServer,
        },
        startupMs: sub.firstSyncAt - sub.offsetMs - sub.b.startAt,
        firstDeliveryMs: (await marks.first) - start,
        coldEventsPerSec: sub.cold,
      };
      const th = perEventDelta(th0, th1, n);
      if (th) s.threadsCpuUsPerEvent = th;
      const problems = botProblems(sub.b, w + n, true);
      if (problems.length) s.problems = problems;
      samples.push(s);
      await sub.b.stop();
      clients.delete(id);
    };
    for (const c of order) {
      if (setupFailures.has(c)) {
        samples.push(failedSample(round, c, setupFailures.get(c)));
        continue;
      }
      try {
        await (c === 'raw' ? measureRaw() : measureClient(c));
      } catch (err) {
        // One contender failing leaves the others' measurements standing.
        samples.push(failedSample(round, c, err));
        const b = c === 'raw' ? undefined : clients.get(c);
        if (b && c !== 'raw') {
          clients.delete(c);
          await b.stop().catch(() => {});
        }
      }
    }
    return { samples, bytesPerEvent: fixture.bytes / (w + n) };
  } finally {
    for (const b of clients.values()) await b.stop().catch(() => {});
    alice?.close();
    await raw?.close();
    for (const s of servers) await s.stop();
  }
}

function failedSample(round: number, contender: ThroughputContender, err: unknown): CryptoThroughputSample {
  return { round, contender, events: 0, seconds: NaN, eventsPerSec: NaN, mainCpuUsPerEvent: NaN, allThreadsCpuUsPerEvent: NaN, error: (err as Error).message };
}

async function cadenceRun(o: CryptoBenchOptions, round: number, contender: CadenceBurst): Promise<CryptoCadenceSample> {
  const n = o.events;
  const T = o.cadenceReleaseEveryMs;
  const server = await startReplayServer({ keys: true, whoami: BOT, longPollMs: 1000, releaseEveryMs: T, releaseFrom: 1 });
  let bot: Bot | null = null;
  try {
    const { offsetMs } = await clockOffset(server);
    bot = launchBot(server.url);
    const b = bot;
    const lastHandled = b.at(n);
    const failedEarly = b.running.then(() => new Promise<never>(() => {}));
    const [upload] = await withTimeout(Promise.race([server.keysUploads(1), failedEarly]), 60_000, () => `the bot uploaded no keys; problems: ${b.problems.join(' | ') || 'none'}`);
    let fixture: Fixture;
    const encrypted = contender !== 'plaintext';
    if (encrypted) {
      const keys = new Keys();
      const alice = await openAlice(keys, round);
      let f: EncryptedFixture;
      try {
        f = await encryptedFixture(keys, alice, upload as Json, null, n, o.cadencePerBody, contender === 'encrypted+keys' ? 'keys' : contender === 'encrypted+to-device' ? 'to-device' : 'none');
      } finally {
        alice.close();
      }
      await server.setKeysQuery(f.aliceKeysQuery);
      fixture = f.fixture;
    } else fixture = plaintextFixture(n, o.cadencePerBody);
    o.gc();
    await server.setBodies(fixture.bodies);
    await withTimeout(b.running, TIMEOUT_MS, () => `client.run() did not resolve; problems: ${b.problems.join(' | ') || 'none'}`);
    const lastAt = await withTimeout(lastHandled, TIMEOUT_MS, () => `the bot handled ${b.counts().messages} of ${n} messages; problems: ${botProblems(b, n, encrypted).join(' | ')}`);
    const st = await server.stats();
    const last = fixture.bodies.length - 1;
    const gaps = gapsForBodies(st, 1, last);
    const i1 = st.requestBodies.indexOf(1);
    const lag = st.bodyTimes[last]! - (st.requestTimes[i1]! + (last - 1) * T);
    const s: CryptoCadenceSample = {
      round,
      contender,
      bodies: last,
      gapsMs: gaps,
      gapP50: percentile(gaps, 50),
      gapP99: percentile(gaps, 99),
      gapMax: gaps.length ? Math.max(...gaps) : NaN,
      lagAtLastBodyMs: lag,
      drainAfterLastBodyMs: lastAt - (st.bodyTimes[last]! - offsetMs),
      eventsPerSec: n / ((lastAt - (st.bodyTimes[1]! - offsetMs)) / 1000),
    };
    const problems = botProblems(b, n, encrypted);
    if (problems.length) s.problems = problems;
    return s;
  } finally {
    await (bot as Bot | null)?.stop().catch(() => {});
    await server.stop();
  }
}

// ---------------------------------------------------------------- the part

function threadsLine(t: Record<string, number>): string {
  return Object.entries(t)
    .filter(([, v]) => v >= 0.05)
    .sort((a, b) => b[1] - a[1])
    .map(([k, v]) => `${k} ${fmt(v, 1)}`)
    .join(', ');
}

/** Runs part C; see the module comment. */
export async function cryptoBench(o: CryptoBenchOptions): Promise<CryptoResult> {
  const parts = o.parts ?? ['throughput', 'cadence'];
  const contenders = o.contenders ?? THROUGHPUT_CONTENDERS;
  const jsSdkRounds = Math.min(o.rounds, o.jsSdkRounds ?? o.rounds);
  const offered = (o.cadencePerBody * 1000) / o.cadenceReleaseEveryMs;
  o.progress(
    `[C] ${fmt(o.events)} encrypted m.room.message events per measurement; throughput: ${o.perBody} per /sync body, served at once, after ${fmt(o.warmup)} untimed; ` +
      `cadence: ${o.cadencePerBody} per body, one body every ${o.cadenceReleaseEveryMs} ms (${fmt(offered)} events/s offered)`,
  );
  const tp: CryptoThroughputSample[] = [];
  const cd: CryptoCadenceSample[] = [];
  let bytesPerEvent = NaN;
  for (let round = 1; round <= o.rounds; round++) {
    if (parts.includes('throughput')) {
      // Each contender goes first, second and last in turn.
      const order = contenders.map((_, i) => contenders[(i + round - 1) % contenders.length]!).filter((c) => c !== 'jssdk' || round <= jsSdkRounds);
      try {
        const r = await throughputRound(o, round, order);
        bytesPerEvent = r.bytesPerEvent;
        tp.push(...r.samples);
      } catch (err) {
        tp.push(...order.map((c) => failedSample(round, c, err)));
      }
      for (const s of tp.filter((x) => x.round === round)) {
        o.progress(
          `[C r${round}/${o.rounds}] ${CONTENDER_LABEL[s.contender].padEnd(13)} ` +
            (s.error
              ? `FAILED: ${s.error}`
              : `${fmt(s.eventsPerSec).padStart(6)} events/s in ${fmt(s.seconds, 3)} s (warm-up ${fmt(s.coldEventsPerSec ?? NaN)}); main CPU ${fmt(s.mainCpuUsPerEvent, 1)} µs/event, all threads ${fmt(s.allThreadsCpuUsPerEvent, 1)} µs/event` +
                (s.threadsCpuUsPerEvent ? ` (${threadsLine(s.threadsCpuUsPerEvent)})` : '') +
                (s.syncDuringBurst
                  ? `; first handler call ${fmt(s.firstDeliveryMs!)} ms after the first timed body; start-up ${fmt(s.startupMs!)} ms; /sync during the burst: ${s.syncDuringBurst.polls} polls, gap p50 ${fmt(s.syncDuringBurst.gapP50, 1)} / max ${fmt(s.syncDuringBurst.gapMax, 1)} ms, all bodies fetched ${fmt(s.syncDuringBurst.allBodiesFetchedAfterMs)} ms after the first`
                  : '') +
                (s.problems ? `; PROBLEMS: ${s.problems.join(' | ')}` : '')),
        );
      }
      const rate = (c: ThroughputContender) => tp.find((x) => x.round === round && x.contender === c && !x.error)?.eventsPerSec ?? NaN;
      o.progress(
        `[C r${round}/${o.rounds}] bot ÷ raw = ${fmt(rate('bot') / rate('raw'), 2)}` +
          (order.includes('jssdk') ? `, bot ÷ js-sdk = ${fmt(rate('bot') / rate('jssdk'), 2)}` : '') +
          ` (order: ${order.join(', ')})`,
      );
    }
    if (parts.includes('cadence')) {
      const order = CADENCE_BURSTS.map((_, i) => CADENCE_BURSTS[(i + round - 1) % CADENCE_BURSTS.length]!);
      for (const c of order) {
        let s: CryptoCadenceSample;
        try {
          s = await cadenceRun(o, round, c);
        } catch (err) {
          s = { round, contender: c, bodies: 0, gapsMs: [], gapP50: NaN, gapP99: NaN, gapMax: NaN, lagAtLastBodyMs: NaN, drainAfterLastBodyMs: NaN, eventsPerSec: NaN, error: (err as Error).message };
        }
        cd.push(s);
        o.progress(
          `[C cadence r${round}/${o.rounds}] ${c.padEnd(14)} ` +
            (s.error
              ? `FAILED: ${s.error}`
              : `${s.bodies} bodies; gap to next /sync p50 ${fmt(s.gapP50, 1)} ms, p99 ${fmt(s.gapP99, 1)} ms, max ${fmt(s.gapMax, 1)} ms; ` +
                `last body ${fmt(s.lagAtLastBodyMs)} ms behind release; last handler ${fmt(s.drainAfterLastBodyMs)} ms after it; ${fmt(s.eventsPerSec)} events/s` +
                (s.problems ? `; PROBLEMS: ${s.problems.join(' | ')}` : '')),
        );
      }
    }
  }

  const result: CryptoResult = {
    config: {
      rounds: o.rounds,
      jsSdkRounds,
      events: o.events,
      warmup: o.warmup,
      perBody: o.perBody,
      cadencePerBody: o.cadencePerBody,
      cadenceReleaseEveryMs: o.cadenceReleaseEveryMs,
      bodyBytesPerEvent: bytesPerEvent,
      store: 'fake-indexeddb + SQLite journal (IdbJournal), passphrase-encrypted crypto store',
      jssdkStore: 'in memory (initRustCrypto({ useIndexedDB: false })): nothing persisted, nothing encrypted at rest',
    },
    throughput: null,
    cadence: null,
  };
  if (parts.includes('throughput')) {
    const of = (c: ThroughputContender) => tp.filter((s) => s.contender === c && !s.error);
    const sum = (c: ThroughputContender) => ({
      eventsPerSec: summarize(of(c).map((s) => s.eventsPerSec)),
      mainCpuUsPerEvent: summarize(of(c).map((s) => s.mainCpuUsPerEvent)),
      allThreadsCpuUsPerEvent: summarize(of(c).map((s) => s.allThreadsCpuUsPerEvent)),
    });
    const summary = { bot: sum('bot'), raw: sum('raw'), jssdk: sum('jssdk') };
    // Paired by round (js-sdk may run fewer): the bot's median is over the rounds the other ran too.
    const ratio = (other: ThroughputContender) => {
      const series = (c: ThroughputContender) => of(c).map((x) => ({ round: x.round, value: x.eventsPerSec }));
      const { ofMedians, perRound } = ratioOf(series('bot'), series(other));
      const perRoundValues = of('bot').flatMap((b) => of(other).filter((x) => x.round === b.round).map((x) => b.eventsPerSec / x.eventsPerSec));
      return { ofMedians, perRound, perRoundValues };
    };
    result.throughput = { samples: tp, summary, ratio: ratio('raw'), ratioVsJsSdk: contenders.includes('jssdk') ? ratio('jssdk') : null };
    const t = result.throughput;
    o.progress(
      `[C] decryption events/s (median): bot ${fmt(summary.bot.eventsPerSec.median)}, raw ${fmt(summary.raw.eventsPerSec.median)}` +
        (t.ratioVsJsSdk ? `, js-sdk ${fmt(summary.jssdk.eventsPerSec.median)}` : '') +
        `; bot ÷ raw ×${fmt(t.ratio.ofMedians, 2)} (rounds ${t.ratio.perRoundValues.map((x) => fmt(x, 2)).join(', ')}; goal ≥ 0.9)` +
        (t.ratioVsJsSdk ? `; bot ÷ js-sdk ×${fmt(t.ratioVsJsSdk.ofMedians, 2)} (rounds ${t.ratioVsJsSdk.perRoundValues.map((x) => fmt(x, 2)).join(', ')})` : ''),
    );
  }
  if (parts.includes('cadence')) {
    const sum = (c: CadenceBurst) => {
      const ss = cd.filter((s) => s.contender === c && !s.error);
      const pooled = ss.flatMap((s) => s.gapsMs);
      return {
        gapP50: summarize(ss.map((s) => s.gapP50)),
        gapP99: summarize(ss.map((s) => s.gapP99)),
        gapMax: summarize(ss.map((s) => s.gapMax)),
        lagAtLastBodyMs: summarize(ss.map((s) => s.lagAtLastBodyMs)),
        drainAfterLastBodyMs: summarize(ss.map((s) => s.drainAfterLastBodyMs)),
        eventsPerSec: summarize(ss.map((s) => s.eventsPerSec)),
        pooled: { n: pooled.length, p50: percentile(pooled, 50), p99: percentile(pooled, 99), max: pooled.length ? Math.max(...pooled) : NaN },
      };
    };
    result.cadence = { samples: cd, summary: Object.fromEntries(CADENCE_BURSTS.map((c) => [c, sum(c)])) as NonNullable<CryptoResult['cadence']>['summary'] };
    o.progress(
      `[C] /sync gap pooled p50/p99/max: ` +
        CADENCE_BURSTS.map((c) => {
          const p = result.cadence!.summary[c].pooled;
          return `${c} ${fmt(p.p50, 1)}/${fmt(p.p99, 1)}/${fmt(p.max, 1)} ms`;
        }).join(', '),
    );
  }
  return result;
}

// ---------------------------------------------------------------- report

const mmm = (s: Summary | undefined, d = 0): string => (s && s.n > 0 ? `${fmt(s.min, d)} / **${fmt(s.median, d)}** / ${fmt(s.max, d)}` : '–');

/** The markdown section of part C; `withTitle` false leaves out its `##` title (for a caller that gives its own). */
export function cryptoMarkdown(r: CryptoResult, withTitle = true): string[] {
  const c = r.config;
  const L: string[] = [];
  if (withTitle) L.push('## C. Decryption: Halcyon vs matrix-js-sdk vs a raw `OlmMachine.decryptRoomEvent` loop', '');
  if (r.throughput) {
    const t = r.throughput;
    const js = t.ratioVsJsSdk !== null;
    L.push(
      `Per round: a fresh Halcyon bot (dist \`Client\`, fresh data dir, encryption on, \`trust: 'all'\` as the raw loop's \`Untrusted\`: alice's device is not cross-signed) uploads its keys to a replay server` +
        (js
          ? '; a fresh matrix-js-sdk 43 client (the bot user\'s second device) does the same to a second replay server' +
            (c.jsSdkRounds < c.rounds ? ` (in the first ${c.jsSdkRounds} of the ${c.rounds} rounds: no goal is decided against it, its ratio spans those rounds)` : '')
          : '') +
        `; alice (crypto-wasm, in memory) shares one megolm session with ${js ? 'both' : 'the bot'} and with a raw \`OlmMachine\` on the same store type as the ` +
        `crypto actor's (${c.store}), in a process of its own that does nothing else (as the crypto actor has a thread of its own), and encrypts ${fmt(c.warmup)} + ${fmt(c.events)} \`m.room.message\` events. ` +
        `Bot: /sync #0 carries the key share (to-device) and the room's \`m.room.encryption\`; then ${c.perBody} encrypted events per body ` +
        `(${fmt(c.bodyBytesPerEvent)} B/event). ` +
        (js
          ? 'js-sdk (`initRustCrypto`, the same crypto-wasm, on the main thread; its logger silenced) uploads its keys after its first /sync, so its /sync #0 ' +
            'carries the room and #1 the key share; then the same timeline bodies. Its store is in memory (`useIndexedDB: false`): ' +
            'nothing persisted or encrypted at rest, which Halcyon\'s store and the raw machine\'s are, a handicap for both. Its handler is what a ' +
            'js-sdk bot writes: `RoomEvent.Timeline` → `await client.decryptEventIfNeeded(event)` (js-sdk\'s sync hands timeline events over ' +
            'undecrypted) → type, sender, body. Its replay server also answers push rules, capabilities and key backup as Synapse 1.163 does. '
          : '') +
        `Warm-up, untimed: every contender handles the first ${fmt(c.warmup)} (Halcyon's crypto worker is a fresh thread whose wasm code tiers up as it ` +
        'runs; the raw machine gets the same store history). Timed: the bodies of the other events are added to the replay server and served as fast ' +
        'as the client polls; events/s from the first timed body\'s response (server clock, offset-corrected) to the last handler call (which reads ' +
        'the sender, whether it was encrypted and the body). Raw: the same event texts through `await decryptRoomEvent(text, new RoomId(…), ' +
        'new DecryptionSettings(Untrusted))`, reading `.event`, in a loop in the raw machine\'s process (texts handed over before its clock starts; ' +
        'the bench process waits meanwhile, its clients idle in long-polls). The contenders take turns going first; the client not being measured ' +
        'idles in a long-poll. Client CPU: from just before the timed bodies are added to the last handler call (main thread; all threads of the ' +
        'bench process: main, Halcyon\'s workers, V8 helper threads); raw CPU: the loop\'s thread, and all threads of its process.',
      '',
    );
    L.push('| contender | events/s | main-thread CPU µs/event | all-threads CPU µs/event |', '| --- | ---: | ---: | ---: |');
    const row = (label: string, k: ThroughputContender) =>
      `| ${label} | ${mmm(t.summary[k].eventsPerSec)} | ${mmm(t.summary[k].mainCpuUsPerEvent, 1)} | ${mmm(t.summary[k].allThreadsCpuUsPerEvent, 1)} |`;
    L.push(row('raw `decryptRoomEvent` loop (a process of its own)', 'raw'));
    if (js) L.push(row('matrix-js-sdk 43 (rust crypto, in-memory store)', 'jssdk'));
    L.push(row('Halcyon bot (crypto actor on a worker)', 'bot'));
    L.push('');
    const ratioLine = (name: string, q: ThroughputRatio) => `**Halcyon ÷ ${name} events/s: ×${fmt(q.ofMedians, 2)}** (ratio of the medians; per round ${q.perRoundValues.map((x) => fmt(x, 2)).join(', ')})`;
    L.push(`${ratioLine('raw', t.ratio)}. Goal ≥ 0.9.` + (t.ratioVsJsSdk ? ` ${ratioLine('matrix-js-sdk', t.ratioVsJsSdk)}.` : ''), '');
    const clients = t.samples.filter((s) => s.syncDuringBurst && !s.error);
    const startup = (k: ThroughputContender) => mmm(summarize(clients.filter((s) => s.contender === k).map((s) => s.startupMs!)));
    const first = (k: ThroughputContender) => mmm(summarize(clients.filter((s) => s.contender === k).map((s) => s.firstDeliveryMs!)));
    const burst = (k: ThroughputContender) => mmm(summarize(clients.filter((s) => s.contender === k).map((s) => s.seconds * 1000)));
    const cold = (k: ThroughputContender) => mmm(summarize(t.samples.filter((s) => s.contender === k && !s.error).map((s) => s.coldEventsPerSec ?? NaN).filter(Number.isFinite)));
    const bots = clients.filter((s) => s.contender === 'bot');
    if (bots.length) {
      L.push(
        `While the bot decrypted (unpaced run), its sync actor kept polling the exhausted server (long-polls held ≤ 1 s): ` +
          bots.map((s) => `r${s.round}: ${s.syncDuringBurst!.polls} polls, gap p50 ${fmt(s.syncDuringBurst!.gapP50, 1)} / max ${fmt(s.syncDuringBurst!.gapMax, 1)} ms, all bodies fetched ${fmt(s.syncDuringBurst!.allBodiesFetchedAfterMs)} ms after the first`).join('; ') +
          (js
            ? `. js-sdk's sync loop handles each body on the main thread, between decryptions, so it fetches more slowly: all bodies fetched ` +
              `${mmm(summarize(clients.filter((s) => s.contender === 'jssdk').map((s) => s.syncDuringBurst!.allBodiesFetchedAfterMs)))} ms after the first, ` +
              `gap to the next /sync p50 ${mmm(summarize(clients.filter((s) => s.contender === 'jssdk').map((s) => s.syncDuringBurst!.gapP50)), 1)} ms`
            : '') +
          `. Start-up to the first /sync request (not timed), ms: bot (\`run()\`: crypto store, key upload) ${startup('bot')}` +
          (js ? `; js-sdk (\`createClient\`, \`initRustCrypto\`, \`startClient\`) ${startup('jssdk')}` : '') +
          `. First handler call after the first timed body, ms: bot ${first('bot')}${js ? `, js-sdk ${first('jssdk')}` : ''} ` +
          `(of a whole burst of bot ${burst('bot')}${js ? `, js-sdk ${burst('jssdk')}` : ''}). ` +
          `Warm-up (${fmt(c.warmup)} events, untimed) events/s: bot ${cold('bot')}, raw ${cold('raw')}${js ? `, js-sdk ${cold('jssdk')}` : ''}.`,
        '',
      );
    }
    const withThreads = t.samples.filter((s) => s.threadsCpuUsPerEvent && !s.error);
    if (withThreads.length) {
      const med = (c: ThroughputContender, k: string) => percentile(withThreads.filter((s) => s.contender === c).map((s) => s.threadsCpuUsPerEvent![k] ?? 0), 50);
      const crypto = med('bot', 'halcyon-crypto');
      const raw = med('raw', 'main');
      L.push(
        `CPU by thread (/proc, 10 ms ticks), median µs/event: bot: crypto worker ${fmt(crypto, 0)}, sync worker (sync and cache actors) ${fmt(med('bot', 'halcyon-sync'), 0)}, ` +
          `main ${fmt(med('bot', 'main'), 0)}, V8 helper threads ${fmt(med('bot', 'v8 helpers'), 0)}; ` +
          `raw: loop thread ${fmt(raw, 0)}, V8 helper threads ${fmt(med('raw', 'v8 helpers'), 0)}` +
          (js ? `; js-sdk: main ${fmt(med('jssdk', 'main'), 0)}, V8 helper threads ${fmt(med('jssdk', 'v8 helpers'), 0)}` : '') +
          `. Crypto worker ÷ raw loop CPU per event: ×${fmt(crypto / raw, 2)}.`,
        '',
      );
    }
    const bad = t.samples.filter((s) => s.error || s.problems);
    if (bad.length) L.push(`Failures / problems: ${bad.map((s) => `${s.contender} r${s.round}: ${s.error ?? s.problems!.join(' | ')}`).join('; ')}`, '');
  }
  if (r.cadence) {
    const cs = r.cadence.summary;
    L.push('### /sync cadence during an encrypted burst vs a plaintext burst', '');
    L.push(
      `${fmt(c.events)} events, ${c.cadencePerBody} per body, body k ≥ 1 released at (k − 1) × ${c.cadenceReleaseEveryMs} ms after the bot's first request ` +
        `for body 1 (${fmt((c.cadencePerBody * 1000) / c.cadenceReleaseEveryMs)} events/s offered, more than the crypto actor decrypts), each burst to a fresh bot ` +
        'with encryption on. *plaintext*: the same messages in the clear, in an unencrypted room. *encrypted*: alice\'s megolm events. ' +
        '*encrypted+keys*: the same, but `device_one_time_keys_count` changes in every body (the sync actor hands the change over without ' +
        'waiting: the server repeats counts in every sync). *encrypted+to-device*: the same, with a to-device event in every body, which ' +
        'the sync actor must see applied before its next poll (that poll lets the server delete it); the call jumps the decryption queue ' +
        'but waits for the slice being decrypted (about 4 ms). Gap = next /sync request − previous /sync response (server clock), over the responses carrying the burst. ' +
        'Lag = last body\'s response − its release. Drain = last handler call − last body\'s response (the decryption backlog polling left behind).',
      '',
    );
    L.push(
      '| burst | gap p50 ms | gap p99 ms | gap max ms | all gaps pooled p50 / p99 / max ms | lag at last body ms | drain after last body ms | events/s over the burst |',
      '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
    );
    for (const k of CADENCE_BURSTS) {
      const s = cs[k];
      if (s.gapP50.n === 0 && !r.cadence.samples.some((x) => x.contender === k)) continue;
      L.push(
        `| ${k} | ${mmm(s.gapP50, 1)} | ${mmm(s.gapP99, 1)} | ${mmm(s.gapMax, 1)} | ${fmt(s.pooled.p50, 1)} / ${fmt(s.pooled.p99, 1)} / ${fmt(s.pooled.max, 1)} (n=${s.pooled.n}) | ` +
          `${mmm(s.lagAtLastBodyMs)} | ${mmm(s.drainAfterLastBodyMs)} | ${mmm(s.eventsPerSec)} |`,
      );
    }
    L.push('');
    const bad = r.cadence.samples.filter((s) => s.error || s.problems);
    if (bad.length) L.push(`Failures / problems: ${bad.map((s) => `${s.contender} r${s.round}: ${s.error ?? s.problems!.join(' | ')}`).join('; ')}`, '');
  }
  return L;
}

