/**
 * The crypto actor in-thread, against a small scripted homeserver (node:http) that answers the key endpoints and
 * captures to-device messages, and a sender ("alice": a raw OlmMachine with an in-memory store) whose requests the
 * same fake server answers in-process. No /sync: the tests hand the actor its sync changes and decrypt requests
 * directly, the way the sync actor and main would.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test, type TestContext } from 'node:test';
import * as W from '@matrix-org/matrix-sdk-crypto-wasm';
import { localPortPair, type Port } from '../../src/actors.ts';
import { CryptoActor } from '../../src/crypto/actor.ts';
import { BatchReader } from '../../src/events.ts';
import {
  type CryptoConfig,
  type CryptoSyncChanges,
  type CryptoToMain,
  type DecryptResult,
  EVENT_FLAGS,
  type MainToCrypto,
  type WireBatch,
} from '../../src/protocol.ts';

type Json = Record<string, any>;

const BOT = '@bot:example.org';
const ALICE = '@alice:example.org';
const MALLORY = '@mallory:example.org';
/** Bound of every wait on the actor (a `late` message, a status change). */
const WAIT_MS = 10_000;

// ---- the scripted homeserver ----

interface ServerDevice {
  deviceKeys?: Json;
  oneTimeKeys: Map<string, Json>;
  fallbackKeys: Map<string, Json>;
  /** To-device events for this device that no sync has delivered yet. */
  inbox: Json[];
}

/** Device keys, one-time keys and to-device messages, keyed by `user|device`; reached over HTTP (the bot) or directly (alice). */
class FakeHomeserver {
  readonly devices = new Map<string, ServerDevice>();
  /** Every HTTP request the bot made, in order (method, path, body). */
  readonly log: Array<{ method: string; path: string; body: Json }> = [];
  /** Access tokens → who is calling. */
  readonly tokens = new Map<string, { userId: string; deviceId: string }>();
  private server: Server | null = null;
  private uploadGate: { arrive: () => void; released: Promise<void> } | null = null;
  baseUrl = '';

  /** Holds the next /keys/upload before it is handled: `arrived` resolves when it comes, `release` lets it through. */
  holdUploads(): { arrived: Promise<void>; release: () => void } {
    let arrive!: () => void;
    let release!: () => void;
    const arrived = new Promise<void>((r) => (arrive = r));
    const released = new Promise<void>((r) => (release = r));
    this.uploadGate = { arrive, released };
    return { arrived, release };
  }

  async start(): Promise<void> {
    const server = createServer((req, res) => void this.handle(req, res));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    this.server = server;
    this.baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  }

  async stop(): Promise<void> {
    this.server?.closeAllConnections();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }

  device(userId: string, deviceId: string): ServerDevice {
    const k = `${userId}|${deviceId}`;
    let d = this.devices.get(k);
    if (!d) this.devices.set(k, (d = { oneTimeKeys: new Map(), fallbackKeys: new Map(), inbox: [] }));
    return d;
  }

  otkCounts(d: ServerDevice): Record<string, number> {
    const counts: Record<string, number> = {};
    for (const id of d.oneTimeKeys.keys()) {
      const alg = id.split(':')[0]!;
      counts[alg] = (counts[alg] ?? 0) + 1;
    }
    return counts;
  }

  /** Takes the to-device events waiting for a device (as its next /sync would). */
  drainInbox(userId: string, deviceId: string): Json[] {
    return this.device(userId, deviceId).inbox.splice(0);
  }

  /** Answers one client request by kind, as a homeserver would. */
  answer(caller: { userId: string; deviceId: string }, kind: 'upload' | 'query' | 'claim' | 'toDevice' | 'signatures', body: Json, eventType?: string): Json {
    switch (kind) {
      case 'upload': {
        const d = this.device(caller.userId, caller.deviceId);
        if (body.device_keys) d.deviceKeys = body.device_keys;
        for (const [id, key] of Object.entries((body.one_time_keys ?? {}) as Json)) d.oneTimeKeys.set(id, key);
        if (body.fallback_keys) {
          d.fallbackKeys.clear();
          for (const [id, key] of Object.entries(body.fallback_keys as Json)) d.fallbackKeys.set(id, key);
        }
        return { one_time_key_counts: this.otkCounts(d) };
      }
      case 'query': {
        const deviceKeys: Json = {};
        for (const user of Object.keys((body.device_keys ?? {}) as Json)) {
          deviceKeys[user] = {};
          for (const [k, d] of this.devices) {
            const [u, dev] = k.split('|') as [string, string];
            if (u === user && d.deviceKeys) deviceKeys[user][dev] = d.deviceKeys;
          }
        }
        return { device_keys: deviceKeys, failures: {}, master_keys: {}, self_signing_keys: {}, user_signing_keys: {} };
      }
      case 'claim': {
        const out: Json = {};
        for (const [user, devs] of Object.entries((body.one_time_keys ?? {}) as Json)) {
          for (const [dev, alg] of Object.entries(devs as Json)) {
            const d = this.devices.get(`${user}|${dev}`);
            if (!d) continue;
            const pick = [...d.oneTimeKeys.keys()].find((id) => id.startsWith(`${alg}:`));
            let key: [string, Json] | undefined;
            if (pick) {
              key = [pick, d.oneTimeKeys.get(pick)!];
              d.oneTimeKeys.delete(pick);
            } else key = [...d.fallbackKeys].find(([id]) => id.startsWith(`${alg}:`));
            if (key) ((out[user] ??= {})[dev] = { [key[0]]: key[1] });
          }
        }
        return { one_time_keys: out, failures: {} };
      }
      case 'toDevice': {
        for (const [user, devs] of Object.entries((body.messages ?? {}) as Json)) {
          for (const [dev, content] of Object.entries(devs as Json)) {
            const targets = dev === '*' ? [...this.devices.keys()].filter((k) => k.startsWith(`${user}|`)) : [`${user}|${dev}`];
            for (const t of targets) {
              const [u, dv] = t.split('|') as [string, string];
              this.device(u, dv).inbox.push({ type: eventType, sender: caller.userId, content });
            }
          }
        }
        return {};
      }
      case 'signatures':
        return { failures: {} };
    }
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const text = Buffer.concat(chunks).toString('utf8');
    const url = new URL(req.url ?? '/', this.baseUrl);
    const path = url.pathname;
    const send = (status: number, body: Json) => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    const caller = this.tokens.get((req.headers.authorization ?? '').replace(/^Bearer /, ''));
    if (!caller) return send(401, { errcode: 'M_UNKNOWN_TOKEN', error: 'unknown token' });
    let body: Json = {};
    try {
      body = text ? (JSON.parse(text) as Json) : {};
    } catch {
      return send(400, { errcode: 'M_NOT_JSON', error: 'not JSON' });
    }
    this.log.push({ method: req.method ?? '', path, body });
    const p = '/_matrix/client/v3';
    if (req.method === 'POST' && path === `${p}/keys/upload`) {
      const gate = this.uploadGate;
      if (gate) {
        this.uploadGate = null;
        gate.arrive();
        await gate.released;
      }
      return send(200, this.answer(caller, 'upload', body));
    }
    if (req.method === 'POST' && path === `${p}/keys/query`) return send(200, this.answer(caller, 'query', body));
    if (req.method === 'POST' && path === `${p}/keys/claim`) return send(200, this.answer(caller, 'claim', body));
    if (req.method === 'POST' && path === `${p}/keys/signatures/upload`) return send(200, this.answer(caller, 'signatures', body));
    const td = /^\/_matrix\/client\/v3\/sendToDevice\/([^/]+)\/([^/]+)$/.exec(path);
    if (req.method === 'PUT' && td) return send(200, this.answer(caller, 'toDevice', body, decodeURIComponent(td[1]!)));
    send(404, { errcode: 'M_UNRECOGNIZED', error: `fake homeserver: no route for ${req.method} ${path}` });
  }

  /** How many one-time keys and device-key uploads the bot's /keys/upload requests carried. */
  uploadsBy(): Array<{ deviceKeys: boolean; oneTimeKeys: number }> {
    return this.log
      .filter((r) => r.path.endsWith('/keys/upload'))
      .map((r) => ({ deviceKeys: r.body.device_keys !== undefined, oneTimeKeys: Object.keys(r.body.one_time_keys ?? {}).length }));
  }
}

// ---- the sender ----

/** A sender device: a raw OlmMachine (in-memory store) whose requests the fake homeserver answers directly. */
class Alice {
  private constructor(
    readonly machine: W.OlmMachine,
    private readonly hs: FakeHomeserver,
    readonly deviceId: string,
  ) {}

  static async create(hs: FakeHomeserver, userId = ALICE): Promise<Alice> {
    const deviceId = `ALICE${randomBytes(4).toString('hex').toUpperCase()}`;
    const machine = await W.OlmMachine.initialize(new W.UserId(userId), new W.DeviceId(deviceId));
    const a = new Alice(machine, hs, deviceId);
    await a.pump();
    return a;
  }

  get userId(): string {
    return this.machine.userId.toString();
  }

  private async answer(r: { id: string; type: W.RequestType; body: string; event_type?: string }): Promise<void> {
    const T = W.RequestType;
    const kind = r.type === T.KeysUpload ? 'upload' : r.type === T.KeysQuery ? 'query' : r.type === T.KeysClaim ? 'claim' : r.type === T.ToDevice ? 'toDevice' : r.type === T.SignatureUpload ? 'signatures' : null;
    if (!kind) throw new Error(`alice: unexpected request type ${r.type}`);
    const res = this.hs.answer({ userId: this.userId, deviceId: this.deviceId }, kind, JSON.parse(r.body) as Json, r.event_type);
    await this.machine.markRequestAsSent(r.id, r.type, JSON.stringify(res));
  }

  /** Answers alice's outgoing requests until none are left. */
  async pump(): Promise<void> {
    for (let round = 0; ; round++) {
      const reqs = (await this.machine.outgoingRequests()) as Array<{ id: string; type: W.RequestType; body: string; event_type?: string }>;
      if (reqs.length === 0) return;
      if (round > 20) throw new Error('alice: outgoing requests do not settle');
      for (const r of reqs) await this.answer(r);
    }
  }

  /** Makes the room a megolm room for alice (no rotation in these tests). */
  async useRoom(roomId: string): Promise<void> {
    const s = new W.RoomSettings();
    s.algorithm = W.EncryptionAlgorithm.MegolmV1AesSha2;
    s.sessionRotationPeriodMessages = 1_000_000;
    s.sessionRotationPeriodMs = 7 * 24 * 3600 * 1000;
    await this.machine.setRoomSettings(new W.RoomId(roomId), s);
  }

  /**
   * Shares alice's room key with every known device of `users` (querying their keys and claiming one-time keys
   * first); the to-device messages stay on the server until someone drains the inbox. Returns how many were sent.
   */
  async shareKey(roomId: string, users: string[]): Promise<number> {
    await this.machine.updateTrackedUsers(users.map((u) => new W.UserId(u)));
    await this.pump();
    const claim = await this.machine.getMissingSessions(users.map((u) => new W.UserId(u)));
    if (claim) await this.answer(claim as unknown as { id: string; type: W.RequestType; body: string });
    const enc = new W.EncryptionSettings();
    enc.rotationPeriodMessages = 1_000_000n;
    enc.rotationPeriod = 7n * 24n * 3600n * 1_000_000n;
    const reqs = await this.machine.shareRoomKey(new W.RoomId(roomId), users.map((u) => new W.UserId(u)), enc);
    for (const r of reqs) await this.answer(r as unknown as { id: string; type: W.RequestType; body: string; event_type: string });
    return reqs.length;
  }

  /** A full m.room.encrypted room event (as /sync would carry it) of an m.text message. */
  async encrypt(roomId: string, body: string, eventId = `$ev-${randomBytes(6).toString('hex')}`): Promise<Json> {
    const content = await this.machine.encryptRoomEvent(new W.RoomId(roomId), 'm.room.message', JSON.stringify({ msgtype: 'm.text', body }));
    return { event_id: eventId, sender: this.userId, origin_server_ts: Date.now(), room_id: roomId, type: 'm.room.encrypted', content: JSON.parse(content) as Json, unsigned: {} };
  }

  close(): void {
    this.machine.close();
  }
}

// ---- the actor under test ----

let batchCounter = 0;

/** A sync batch's crypto changes carrying these to-device events (and the bot's one-time key count, as /sync reports it). */
function syncChanges(hs: FakeHomeserver, toDevice: Json[], extra: Partial<CryptoSyncChanges> = {}): CryptoSyncChanges {
  const bot = hs.device(BOT, BOT_DEVICE);
  return {
    batchToken: `s${++batchCounter}`,
    toDevice: JSON.stringify(toDevice),
    toDeviceCount: toDevice.length,
    deviceListsChanged: [],
    deviceListsLeft: [],
    otkCounts: hs.otkCounts(bot),
    fallbackKeyTypes: [...bot.fallbackKeys.keys()].map((k) => k.split(':')[0]!),
    encryption: [],
    members: [],
    historyVisibility: [],
    left: [],
    ...extra,
  };
}

const BOT_DEVICE = 'BOTDEVICE';
const BOT_TOKEN = 'bot-token';

/** An actor on its in-thread port; `messages` collects what it posts to main. */
interface Running {
  actor: CryptoActor;
  main: Port<CryptoToMain, MainToCrypto>;
  messages: CryptoToMain[];
  /** Resolves with the next message of this kind (one already received and not yet taken counts). */
  next<K extends CryptoToMain['kind']>(kind: K): Promise<Extract<CryptoToMain, { kind: K }>>;
}

function config(hs: FakeHomeserver, dataDir: string, over: Partial<CryptoConfig> = {}): CryptoConfig {
  return {
    homeserver: hs.baseUrl,
    userId: BOT,
    deviceId: BOT_DEVICE,
    accessToken: BOT_TOKEN,
    dataDir,
    passphrase: 'correct horse battery staple',
    wantedTypes: null,
    maxPendingUndecryptable: 1000,
    pendingUndecryptableMaxAgeMs: 24 * 3600_000,
    ...over,
  };
}

async function startActor(t: TestContext, hs: FakeHomeserver, dataDir: string, over: Partial<CryptoConfig> = {}): Promise<Running> {
  const [main, side] = localPortPair<CryptoToMain, MainToCrypto>();
  const actor = new CryptoActor(side);
  const messages: CryptoToMain[] = [];
  const taken = new Set<CryptoToMain>();
  const waiters = new Set<() => void>();
  main.onMessage((m) => {
    messages.push(m);
    for (const w of [...waiters]) w();
  });
  const next = <K extends CryptoToMain['kind']>(kind: K) =>
    new Promise<Extract<CryptoToMain, { kind: K }>>((resolve, reject) => {
      const check = () => {
        const m = messages.find((x) => x.kind === kind && !taken.has(x));
        if (!m) return;
        taken.add(m);
        waiters.delete(check);
        clearTimeout(timer);
        resolve(m as Extract<CryptoToMain, { kind: K }>);
      };
      const timer = setTimeout(() => {
        waiters.delete(check);
        reject(new Error(`no '${kind}' message from the crypto actor within ${WAIT_MS} ms; got ${JSON.stringify(messages.map((x) => x.kind))}`));
      }, WAIT_MS);
      waiters.add(check);
      check();
    });
  await actor.open(config(hs, dataDir, over));
  t.after(() => actor.close());
  return { actor, main, messages, next };
}

/** Polls `fn` (every 10 ms) until it holds; fails after WAIT_MS. */
async function waitFor(fn: () => Promise<boolean> | boolean, what: string): Promise<void> {
  const deadline = Date.now() + WAIT_MS;
  while (!(await fn())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${WAIT_MS} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

function decryptRequest(roomId: string, events: Array<Json | string>) {
  return { rooms: [roomId], room: events.map(() => 0), raw: events.map((e) => (typeof e === 'string' ? e : JSON.stringify(e))) };
}

/** The decrypted events of a result, per request index (null where it failed). */
function decrypted(r: DecryptResult): Array<{ event: Json; flags: number } | null> {
  const reader = r.batch ? new BatchReader(r.batch) : null;
  return r.slot.map((s) => (s < 0 || !reader ? null : { event: reader.parse(s) as unknown as Json, flags: r.batch!.events.flags[s]! }));
}

/** The events of a `late` batch, in batch order. */
function lateEvents(batch: WireBatch): Array<{ event: Json; flags: number }> {
  const reader = new BatchReader(batch);
  const out = [];
  for (let i = 0; i < batch.events.count; i++) out.push({ event: reader.parse(i) as unknown as Json, flags: batch.events.flags[i]! });
  return out;
}

function tempDir(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'halcyon-crypto-actor-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Errors the actor posted (a to-device event it could not use, a failed upload): none are expected unless a test says so. */
function errors(r: Running): string[] {
  return r.messages.filter((m) => m.kind !== 'late').map((m) => `${m.kind}: ${'error' in m ? `${m.error.code} ${m.error.message}` : ''}`);
}

// ---- fixtures shared by the tests ----

let hs: FakeHomeserver;
before(async () => {
  hs = new FakeHomeserver();
  hs.tokens.set(BOT_TOKEN, { userId: BOT, deviceId: BOT_DEVICE });
  await hs.start();
});
after(async () => {
  await hs.stop();
});

/** A fresh world: the bot's devices are forgotten by the server (each test opens a new store for the same device). */
async function world(t: TestContext, over: Partial<CryptoConfig> = {}) {
  hs.devices.clear();
  hs.log.length = 0;
  const dataDir = tempDir(t);
  const alice = await Alice.create(hs);
  t.after(() => alice.close());
  const bot = await startActor(t, hs, dataDir, over);
  const roomId = `!room-${randomBytes(4).toString('hex')}:example.org`;
  await alice.useRoom(roomId);
  return { dataDir, alice, bot, roomId };
}

// ---- the tests ----

test('open uploads the device keys and one-time keys before returning; the identity matches what was uploaded', async (t) => {
  const { bot } = await world(t);
  const uploads = hs.uploadsBy();
  assert.ok(uploads.length >= 1, 'keys were uploaded during open');
  assert.equal(uploads[0]!.deviceKeys, true);
  assert.ok(uploads.reduce((n, u) => n + u.oneTimeKeys, 0) > 0, 'one-time keys were uploaded');
  const st = await bot.actor.status();
  const keys = hs.device(BOT, BOT_DEVICE).deviceKeys!;
  assert.equal(keys.keys[`curve25519:${BOT_DEVICE}`], st.identity.curve25519);
  assert.equal(keys.keys[`ed25519:${BOT_DEVICE}`], st.identity.ed25519);
  assert.deepEqual(errors(bot), []);
});

test('(a) an event decrypts after receiveSyncChanges delivers its room key', async (t) => {
  const { alice, bot, roomId } = await world(t);
  assert.equal(await alice.shareKey(roomId, [BOT]), 1, 'one to-device request carries the key');
  const ev = await alice.encrypt(roomId, 'hello bot');
  await bot.actor.receiveSyncChanges(syncChanges(hs, hs.drainInbox(BOT, BOT_DEVICE)));
  const res = await bot.actor.decrypt(decryptRequest(roomId, [ev]));
  assert.deepEqual(res.failures, []);
  const [d] = decrypted(res);
  assert.ok(d, 'decrypted');
  assert.equal(d.event.type, 'm.room.message');
  assert.equal(d.event.content.body, 'hello bot');
  assert.equal(d.event.event_id, ev.event_id);
  assert.equal(d.event.sender, ALICE);
  assert.equal(d.flags & EVENT_FLAGS.encrypted, EVENT_FLAGS.encrypted);
  assert.equal(d.flags & EVENT_FLAGS.late, 0);
  assert.equal((await bot.actor.status()).pendingUndecryptable, 0);
  assert.deepEqual(errors(bot), []);
});

test('(b) late key: MISSING_KEY with pending, then the key arrives → a late batch; lateHandled forgets it', async (t) => {
  const { alice, bot, roomId } = await world(t);
  await alice.shareKey(roomId, [BOT]);
  const held = hs.drainInbox(BOT, BOT_DEVICE); // the key, held back
  const ev = await alice.encrypt(roomId, 'early bird');
  const res = await bot.actor.decrypt(decryptRequest(roomId, [ev]));
  assert.equal(res.batch, null);
  assert.deepEqual(res.slot, [-1]);
  assert.equal(res.failures.length, 1);
  const f = res.failures[0]!;
  assert.equal(f.code, 'HALCYON_DECRYPT_MISSING_KEY');
  assert.equal(f.pending, true);
  assert.equal(f.index, 0);
  assert.equal(f.sessionId, ev.content.session_id);
  assert.equal(f.withheldCode, null);
  assert.doesNotMatch(f.message, /withheld code|None|Some\(/, `no Rust formatting in "${f.message}"`);
  assert.equal((await bot.actor.status()).pendingUndecryptable, 1);

  await bot.actor.receiveSyncChanges(syncChanges(hs, held));
  const late = await bot.next('late');
  assert.deepEqual(late.ids, [ev.event_id]);
  const [d, ...rest] = lateEvents(late.batch);
  assert.equal(rest.length, 0);
  assert.equal(d!.event.content.body, 'early bird');
  assert.equal(d!.event.event_id, ev.event_id);
  assert.equal(d!.flags & (EVENT_FLAGS.encrypted | EVENT_FLAGS.late), EVENT_FLAGS.encrypted | EVENT_FLAGS.late);
  assert.equal((await bot.actor.status()).pendingUndecryptable, 1, 'kept until main says it was handled');

  bot.main.post({ kind: 'lateHandled', ids: late.ids });
  await waitFor(async () => (await bot.actor.status()).pendingUndecryptable === 0, 'pendingUndecryptable to drop to 0');
  assert.deepEqual(errors(bot), []);
});

test('(c) the same to-device batch applied twice (a crash replay) is skipped the second time, without errors', async (t) => {
  const { alice, bot, roomId } = await world(t);
  await alice.shareKey(roomId, [BOT]);
  const toDevice = hs.drainInbox(BOT, BOT_DEVICE);
  assert.equal(toDevice.length, 1);
  await bot.actor.receiveSyncChanges(syncChanges(hs, toDevice));
  const s1 = await bot.actor.status();
  assert.equal(s1.duplicateToDevice, 0);
  await bot.actor.receiveSyncChanges(syncChanges(hs, toDevice));
  const s2 = await bot.actor.status();
  assert.equal(s2.duplicateToDevice, 1);
  assert.equal(s2.appliedBatches, s1.appliedBatches + 1);
  // The key from the first application works.
  const ev = await alice.encrypt(roomId, 'after replay');
  const [d] = decrypted(await bot.actor.decrypt(decryptRequest(roomId, [ev])));
  assert.equal(d?.event.content.body, 'after replay');
  assert.deepEqual(errors(bot), [], 'a replayed olm message would fail to decrypt if it were applied again');
});

test('(c) a replay after a restart is recognised too (the hashes are durable)', async (t) => {
  const { alice, bot, roomId, dataDir } = await world(t);
  await alice.shareKey(roomId, [BOT]);
  const toDevice = hs.drainInbox(BOT, BOT_DEVICE);
  await bot.actor.receiveSyncChanges(syncChanges(hs, toDevice));
  await bot.actor.close();
  const again = await startActor(t, hs, dataDir);
  await again.actor.receiveSyncChanges(syncChanges(hs, toDevice));
  assert.equal((await again.actor.status()).duplicateToDevice, 1);
  const ev = await alice.encrypt(roomId, 'after a restart and a replay');
  const [d] = decrypted(await again.actor.decrypt(decryptRequest(roomId, [ev])));
  assert.equal(d?.event.content.body, 'after a restart and a replay');
  assert.deepEqual(errors(again), []);
});

test('(d) restart: same identity, no new device keys, and the already-shared session decrypts without re-sharing', async (t) => {
  const { alice, bot, roomId, dataDir } = await world(t);
  const before = (await bot.actor.status()).identity;
  await alice.shareKey(roomId, [BOT]);
  await bot.actor.receiveSyncChanges(syncChanges(hs, hs.drainInbox(BOT, BOT_DEVICE)));
  const first = await alice.encrypt(roomId, 'before restart');
  assert.equal(decrypted(await bot.actor.decrypt(decryptRequest(roomId, [first])))[0]?.event.content.body, 'before restart');
  await bot.actor.close();
  const uploadsBefore = hs.uploadsBy().length;

  const again = await startActor(t, hs, dataDir);
  const st = await again.actor.status();
  assert.deepEqual(st.identity, before, 'same user, device and identity keys');
  assert.ok(st.storedRecords > 0);
  assert.ok(hs.uploadsBy().slice(uploadsBefore).every((u) => !u.deviceKeys), 'the device keys are not uploaded again');

  assert.equal(await alice.shareKey(roomId, [BOT]), 0, 'alice has nothing new to share: the session is the same');
  assert.deepEqual(hs.drainInbox(BOT, BOT_DEVICE), []);
  const second = await alice.encrypt(roomId, 'after restart');
  assert.equal(second.content.session_id, first.content.session_id);
  const res = await again.actor.decrypt(decryptRequest(roomId, [first, second]));
  assert.deepEqual(res.failures, []);
  assert.deepEqual(decrypted(res).map((d) => d?.event.content.body), ['before restart', 'after restart']);
  assert.deepEqual(errors(again), []);
});

test('(d) pending undecryptable events survive a restart and are delivered late when the key comes after it', async (t) => {
  const { alice, bot, roomId, dataDir } = await world(t);
  await alice.shareKey(roomId, [BOT]);
  const held = hs.drainInbox(BOT, BOT_DEVICE);
  const ev1 = await alice.encrypt(roomId, 'kept one');
  const ev2 = await alice.encrypt(roomId, 'kept two');
  const res = await bot.actor.decrypt(decryptRequest(roomId, [ev1, ev2]));
  assert.deepEqual(res.failures.map((f) => [f.index, f.code, f.pending]), [[0, 'HALCYON_DECRYPT_MISSING_KEY', true], [1, 'HALCYON_DECRYPT_MISSING_KEY', true]]);
  await bot.actor.close();

  const again = await startActor(t, hs, dataDir);
  assert.equal((await again.actor.status()).pendingUndecryptable, 2, 'kept across the restart');
  await again.actor.receiveSyncChanges(syncChanges(hs, held));
  const late = await again.next('late');
  assert.deepEqual([...late.ids].sort(), [ev1.event_id, ev2.event_id].sort());
  const got = lateEvents(late.batch);
  assert.deepEqual(got.map((d) => d.event.content.body), ['kept one', 'kept two']);
  for (const d of got) assert.equal(d.flags & (EVENT_FLAGS.encrypted | EVENT_FLAGS.late), EVENT_FLAGS.encrypted | EVENT_FLAGS.late);
  again.main.post({ kind: 'lateHandled', ids: late.ids });
  await waitFor(async () => (await again.actor.status()).pendingUndecryptable === 0, 'pendingUndecryptable to drop to 0');
  assert.deepEqual(errors(again), []);
});

test('(d) a late batch posted but not acknowledged before a restart is posted again after it', async (t) => {
  const { alice, bot, roomId, dataDir } = await world(t);
  await alice.shareKey(roomId, [BOT]);
  const held = hs.drainInbox(BOT, BOT_DEVICE);
  const ev = await alice.encrypt(roomId, 'unacknowledged');
  await bot.actor.decrypt(decryptRequest(roomId, [ev]));
  await bot.actor.receiveSyncChanges(syncChanges(hs, held));
  assert.deepEqual((await bot.next('late')).ids, [ev.event_id]);
  await bot.actor.close(); // main never said lateHandled (it crashed mid-handler, say)

  const again = await startActor(t, hs, dataDir);
  const late = await again.next('late');
  assert.deepEqual(late.ids, [ev.event_id]);
  assert.equal(lateEvents(late.batch)[0]!.event.content.body, 'unacknowledged');
});

test('(e) malformed events are HALCYON_DECRYPT_FAILED failures, not throws; good events in the batch still decrypt', async (t) => {
  const { alice, bot, roomId } = await world(t);
  await alice.shareKey(roomId, [BOT]);
  await bot.actor.receiveSyncChanges(syncChanges(hs, hs.drainInbox(BOT, BOT_DEVICE)));
  const good = await alice.encrypt(roomId, 'good');
  const base = { sender: ALICE, origin_server_ts: 1, room_id: roomId, type: 'm.room.encrypted' };
  // One base64 character changed in the middle of the ciphertext: the version byte is intact, the MAC is not.
  const ct = good.content.ciphertext as string;
  const mid = Math.floor(ct.length / 2);
  const flipped = `${ct.slice(0, mid)}${ct[mid] === 'A' ? 'B' : 'A'}${ct.slice(mid + 1)}`;
  const bad: Array<[string, Json | string]> = [
    ['empty content', { ...base, event_id: '$empty', content: {} }],
    ['unknown algorithm', { ...base, event_id: '$alg', content: { algorithm: 'm.fancy.v9', ciphertext: 'x', session_id: 's' } }],
    ['garbage ciphertext, known session', { ...base, event_id: '$garbage', content: { ...good.content, ciphertext: 'bm90IGEgbWVnb2xtIG1lc3NhZ2U' } }],
    ['tampered ciphertext, known session', { ...base, event_id: '$tampered', content: { ...good.content, ciphertext: flipped } }],
    ['ciphertext not a string', { ...base, event_id: '$numeric', content: { ...good.content, ciphertext: 42 } }],
    ['not JSON', '{"event_id": "$nope", "content": {'],
    ['JSON null', 'null'],
    ['JSON array', '[1,2]'],
    ['no event_id', { ...base, content: good.content }],
    ['content a string', { ...base, event_id: '$str', content: 'hello' }],
  ];
  const events = [...bad.map(([, e]) => e), good];
  const res = await bot.actor.decrypt(decryptRequest(roomId, events));
  const byIndex = new Map(res.failures.map((f) => [f.index, f]));
  bad.forEach(([what], i) => {
    const f = byIndex.get(i);
    assert.ok(f, `${what}: reported as a failure`);
    assert.equal(f.code, 'HALCYON_DECRYPT_FAILED', `${what}: ${f.message}`);
    assert.equal(f.pending, false, `${what}: not kept`);
    assert.equal(res.slot[i], -1);
  });
  assert.equal(res.failures.length, bad.length);
  assert.equal(decrypted(res)[bad.length]?.event.content.body, 'good');
  assert.equal((await bot.actor.status()).pendingUndecryptable, 0);
  assert.deepEqual(errors(bot), []);
});

/**
 * Replaces Date.now with a clock that starts now and moves 1 ms per call, so that events kept one after the
 * other always get different times (the real clock often gives two of them the same millisecond); `jump` moves it on.
 */
function steppingClock(t: TestContext): { jump(ms: number): void } {
  let now = Date.now();
  t.mock.method(Date, 'now', () => ++now);
  return { jump: (ms) => void (now += ms) };
}

test('(f) pending bounds: with maxPendingUndecryptable 3, only the newest 3 of 5 are kept and delivered late', async (t) => {
  steppingClock(t);
  const { alice, bot, roomId } = await world(t, { maxPendingUndecryptable: 3 });
  await alice.shareKey(roomId, [BOT]);
  const held = hs.drainInbox(BOT, BOT_DEVICE);
  const evs: Json[] = [];
  for (let i = 0; i < 5; i++) evs.push(await alice.encrypt(roomId, `m${i}`, `$bound-${i}`));
  const res = await bot.actor.decrypt(decryptRequest(roomId, evs));
  assert.equal(res.failures.length, 5);
  assert.ok(res.failures.every((f) => f.code === 'HALCYON_DECRYPT_MISSING_KEY'));
  assert.equal((await bot.actor.status()).pendingUndecryptable, 3);
  await bot.actor.receiveSyncChanges(syncChanges(hs, held));
  const late = await bot.next('late');
  assert.deepEqual([...late.ids].sort(), ['$bound-2', '$bound-3', '$bound-4'], 'the newest three (the last in timeline order) are the ones kept');
});

test('(f) pending bounds across batches: each new batch evicts the oldest kept events', async (t) => {
  steppingClock(t);
  const { alice, bot, roomId } = await world(t, { maxPendingUndecryptable: 3 });
  await alice.shareKey(roomId, [BOT]);
  const held = hs.drainInbox(BOT, BOT_DEVICE);
  for (let i = 0; i < 5; i++) {
    const ev = await alice.encrypt(roomId, `m${i}`, `$batch-${i}`);
    const res = await bot.actor.decrypt(decryptRequest(roomId, [ev]));
    assert.equal(res.failures[0]?.pending, true);
  }
  assert.equal((await bot.actor.status()).pendingUndecryptable, 3);
  await bot.actor.receiveSyncChanges(syncChanges(hs, held));
  const late = await bot.next('late');
  assert.deepEqual([...late.ids].sort(), ['$batch-2', '$batch-3', '$batch-4']);
});

test('(f) pending bounds when the events are kept within one millisecond: still the newest 3 (timeline order) are kept', async (t) => {
  // A batch of small events is often decrypted within one millisecond; the clock is frozen to make that certain.
  const frozen = Date.now();
  const { alice, bot, roomId } = await world(t, { maxPendingUndecryptable: 3 });
  await alice.shareKey(roomId, [BOT]);
  const held = hs.drainInbox(BOT, BOT_DEVICE);
  const evs: Json[] = [];
  for (let i = 0; i < 5; i++) evs.push(await alice.encrypt(roomId, `m${i}`, `$tie-${i}`));
  const clock = t.mock.method(Date, 'now', () => frozen);
  const res = await bot.actor.decrypt(decryptRequest(roomId, evs));
  clock.mock.restore();
  assert.equal(res.failures.length, 5);
  assert.equal((await bot.actor.status()).pendingUndecryptable, 3);
  await bot.actor.receiveSyncChanges(syncChanges(hs, held));
  const late = await bot.next('late');
  assert.deepEqual([...late.ids].sort(), ['$tie-2', '$tie-3', '$tie-4'], 'the last three of the batch are the newest');
});

test('(f) pending bounds: events older than pendingUndecryptableMaxAgeMs are dropped', async (t) => {
  const clock = steppingClock(t);
  const { alice, bot, roomId } = await world(t, { pendingUndecryptableMaxAgeMs: 60_000 });
  await alice.shareKey(roomId, [BOT]);
  const held = hs.drainInbox(BOT, BOT_DEVICE);
  const old = await alice.encrypt(roomId, 'old', '$old');
  await bot.actor.decrypt(decryptRequest(roomId, [old]));
  assert.equal((await bot.actor.status()).pendingUndecryptable, 1);
  clock.jump(60_001);
  const fresh = await alice.encrypt(roomId, 'fresh', '$fresh');
  await bot.actor.decrypt(decryptRequest(roomId, [fresh]));
  assert.equal((await bot.actor.status()).pendingUndecryptable, 1, 'the old one was dropped');
  await bot.actor.receiveSyncChanges(syncChanges(hs, held));
  assert.deepEqual((await bot.next('late')).ids, ['$fresh']);
});

test('a to-device event that cannot be decrypted is reported as an error; the batch still applies, nothing throws', async (t) => {
  const { alice, bot, roomId } = await world(t);
  await alice.shareKey(roomId, [BOT]);
  const [key] = hs.drainInbox(BOT, BOT_DEVICE);
  const botKey = (await bot.actor.status()).identity.curve25519;
  const broken = { type: 'm.room.encrypted', sender: ALICE, content: { ...key!.content, ciphertext: { [botKey]: { type: 0, body: 'bm90IGFuIG9sbSBtZXNzYWdl' } } } };
  await bot.actor.receiveSyncChanges(syncChanges(hs, [broken, key!]));
  const err = await bot.next('error');
  assert.equal(err.error.code, 'HALCYON_DECRYPT_FAILED');
  assert.match(err.error.message, new RegExp(`from ${ALICE.replace(/[.$]/g, '\\$&')}`));
  const ev = await alice.encrypt(roomId, 'the good key of the batch was applied');
  assert.equal(decrypted(await bot.actor.decrypt(decryptRequest(roomId, [ev])))[0]?.event.content.body, 'the good key of the batch was applied');
});

test('(g) a forged sender (the event says another user sent it) is HALCYON_DECRYPT_FAILED', async (t) => {
  const { alice, bot, roomId } = await world(t);
  await alice.shareKey(roomId, [BOT]);
  await bot.actor.receiveSyncChanges(syncChanges(hs, hs.drainInbox(BOT, BOT_DEVICE)));
  const ev = await alice.encrypt(roomId, 'I am mallory, honest');
  const forged = { ...ev, sender: MALLORY };
  const res = await bot.actor.decrypt(decryptRequest(roomId, [forged, ev]));
  assert.equal(res.failures.length, 1, JSON.stringify(res.failures));
  assert.equal(res.failures[0]!.index, 0);
  assert.equal(res.failures[0]!.code, 'HALCYON_DECRYPT_FAILED');
  assert.match(res.failures[0]!.message, /claims to be from @mallory:example\.org/);
  assert.equal(res.failures[0]!.pending, false);
  assert.equal(res.slot[0], -1);
  assert.equal(decrypted(res)[1]?.event.sender, ALICE, 'the genuine event still decrypts');
});

test('a store opened for another device is refused with HALCYON_STORE_MISMATCH (no new identity)', async (t) => {
  const { bot, dataDir } = await world(t);
  await bot.actor.close();
  const [, side] = localPortPair<CryptoToMain, MainToCrypto>();
  const other = new CryptoActor(side);
  await assert.rejects(other.open(config(hs, dataDir, { deviceId: 'OTHERDEVICE' })), (e: { code?: string }) => e.code === 'HALCYON_STORE_MISMATCH');
  // The store is still usable by its owner afterwards.
  const again = await startActor(t, hs, dataDir);
  assert.equal((await again.actor.status()).identity.deviceId, BOT_DEVICE);
});

test('decrypt requests complete in the order they were made (a burst does not hold the first batch until the end)', async (t) => {
  const { alice, bot, roomId } = await world(t);
  await alice.shareKey(roomId, [BOT]);
  await bot.actor.receiveSyncChanges(syncChanges(hs, hs.drainInbox(BOT, BOT_DEVICE)));
  const batches: Json[][] = [];
  for (let b = 0; b < 4; b++) {
    const evs: Json[] = [];
    for (let i = 0; i < 6; i++) evs.push(await alice.encrypt(roomId, `batch ${b} message ${i}`));
    batches.push(evs);
  }
  const order: number[] = [];
  const results = await Promise.all(batches.map((evs, b) => bot.actor.decrypt(decryptRequest(roomId, evs)).then((r) => (order.push(b), r))));
  assert.deepEqual(order, [0, 1, 2, 3]);
  for (const [b, r] of results.entries()) {
    assert.deepEqual(r.failures, []);
    assert.deepEqual(decrypted(r).map((d) => d?.event.content.body), batches[b]!.map((_, i) => `batch ${b} message ${i}`));
  }
  assert.deepEqual(errors(bot), []);
});

test('sync changes queued behind a burst of decryption are applied before the burst ends', async (t) => {
  const { alice, bot, roomId } = await world(t);
  await alice.shareKey(roomId, [BOT]);
  await bot.actor.receiveSyncChanges(syncChanges(hs, hs.drainInbox(BOT, BOT_DEVICE)));
  const evs: Json[] = [];
  for (let i = 0; i < 60; i++) evs.push(await alice.encrypt(roomId, `burst ${i}`));
  let burstDone = false;
  const burst = bot.actor.decrypt(decryptRequest(roomId, evs)).then((r) => ((burstDone = true), r));
  // A plain to-device event, as a batch arriving mid-burst would carry.
  await bot.actor.receiveSyncChanges(syncChanges(hs, [{ type: 'org.example.ping', sender: ALICE, content: {} }]));
  assert.equal(burstDone, false, 'the sync changes were applied while the burst was still being decrypted');
  const r = await burst;
  assert.equal(decrypted(r).filter(Boolean).length, 60);
  assert.deepEqual(errors(bot), []);
});

/** Every API call of an actor that is not open, each settled: its error's code and message, or 'resolved'. */
async function callEverything(actor: CryptoActor, skip: string[] = []): Promise<Record<string, string>> {
  const calls: Record<string, () => Promise<unknown>> = {
    encrypt: () => actor.encrypt('!x:example.org', 'm.room.message', { body: 'x' }),
    decrypt: () => actor.decrypt(decryptRequest('!x:example.org', ['{}'])),
    isRoomEncrypted: () => actor.isRoomEncrypted('!x:example.org'),
    status: () => actor.status(),
    receiveSyncChanges: () => actor.receiveSyncChanges(syncChanges(hs, [])),
    setWantedTypes: () => actor.setWantedTypes(null),
  };
  const out: Record<string, string> = {};
  for (const [name, call] of Object.entries(calls)) {
    if (skip.includes(name)) continue;
    out[name] = await Promise.resolve()
      .then(call)
      .then(
        () => 'resolved',
        (e: { code?: string; message?: string }) => `${e.code ?? e.constructor?.name}: ${e.message}`,
      );
  }
  return out;
}

const NOT_OPEN = 'HALCYON_NOT_RUNNING: the crypto actor is not open';

test('calls before open (and while it runs) are refused at once with HALCYON_NOT_RUNNING, not a TypeError; sync changes made while it runs wait for it', async (t) => {
  hs.devices.clear();
  const [, side] = localPortPair<CryptoToMain, MainToCrypto>();
  const actor = new CryptoActor(side);
  t.after(() => actor.close());
  const expected = Object.fromEntries(Object.keys(await callEverything(actor)).map((k) => [k, NOT_OPEN]));
  assert.deepEqual(await callEverything(actor), expected, 'before open');
  const opening = actor.open(config(hs, tempDir(t)));
  const { receiveSyncChanges: _waits, ...refused } = expected;
  assert.deepEqual(await callEverything(actor, ['receiveSyncChanges']), refused, 'while open runs');
  // The sync actor starts beside the opening store (client/actors.ts): its first batch's changes wait for the open.
  let opened = false;
  void opening.then(() => (opened = true));
  await actor.receiveSyncChanges(syncChanges(hs, []));
  assert.equal(opened, true, 'sync changes given while open ran were applied once it had resolved');
  await opening;
  assert.equal((await actor.status()).identity.deviceId, BOT_DEVICE, 'open once open resolved');
});

test('calls after close are refused with HALCYON_NOT_RUNNING, not a wasm null pointer', async (t) => {
  const { bot } = await world(t);
  await bot.actor.close();
  const got = await callEverything(bot.actor);
  assert.deepEqual(got, Object.fromEntries(Object.keys(got).map((k) => [k, NOT_OPEN])));
});

test('a call queued before close and reaching the machine after it is refused with HALCYON_STOPPED', async (t) => {
  const { alice, bot, roomId } = await world(t);
  await alice.shareKey(roomId, [BOT]);
  await bot.actor.receiveSyncChanges(syncChanges(hs, hs.drainInbox(BOT, BOT_DEVICE)));
  const evs: Json[] = [];
  for (let i = 0; i < 40; i++) evs.push(await alice.encrypt(roomId, `m${i}`));
  const burst = bot.actor.decrypt(decryptRequest(roomId, evs)).then(
    () => 'resolved',
    (e: { code?: string }) => e.code,
  );
  await bot.actor.close();
  // Decrypted in slices: the slices after close are refused (or the burst finished before close took its turn).
  assert.ok(['HALCYON_STOPPED', 'resolved'].includes((await burst) ?? ''), String(await burst));
});

test('an event kept for its key that decrypts to a refused type (m.room.member) is not delivered late, and is forgotten', async (t) => {
  const { alice, bot, roomId } = await world(t);
  await alice.shareKey(roomId, [BOT]);
  const held = hs.drainInbox(BOT, BOT_DEVICE);
  const content = await alice.machine.encryptRoomEvent(new W.RoomId(roomId), 'm.room.member', JSON.stringify({ membership: 'join' }));
  const member = { event_id: '$member', sender: ALICE, origin_server_ts: Date.now(), room_id: roomId, type: 'm.room.encrypted', content: JSON.parse(content) as Json };
  const text = await alice.encrypt(roomId, 'a real one', '$text');
  const res = await bot.actor.decrypt(decryptRequest(roomId, [member, text]));
  assert.deepEqual(res.failures.map((f) => [f.index, f.code, f.pending]), [[0, 'HALCYON_DECRYPT_MISSING_KEY', true], [1, 'HALCYON_DECRYPT_MISSING_KEY', true]]);
  await bot.actor.receiveSyncChanges(syncChanges(hs, held));
  const late = await bot.next('late');
  assert.deepEqual(late.ids, ['$text'], 'only the message is delivered late');
  assert.deepEqual(lateEvents(late.batch).map((d) => d.event.type), ['m.room.message']);
  bot.main.post({ kind: 'lateHandled', ids: late.ids });
  await waitFor(async () => (await bot.actor.status()).pendingUndecryptable === 0, 'both kept events to be forgotten');
  assert.deepEqual(errors(bot), []);
});

// A sync v2 server may leave out `device_one_time_keys_count`, or its `signed_curve25519` entry, when the count is
// zero (the spec: the field is optional only when no unclaimed one-time keys exist).
for (const [what, otkCounts] of [['without device_one_time_keys_count', null], ['whose count has no signed_curve25519 entry', {}]] as const) {
  test(`every one-time key claimed, then a sync ${what}: the machine uploads new one-time keys`, async (t) => {
    const { bot } = await world(t);
    const dev = hs.device(BOT, BOT_DEVICE);
    assert.ok(dev.oneTimeKeys.size > 0, 'one-time keys were uploaded at open');
    dev.oneTimeKeys.clear(); // every key claimed by senders
    const before = hs.uploadsBy().length;
    await bot.actor.receiveSyncChanges(syncChanges(hs, [], { otkCounts }));
    await waitFor(() => hs.uploadsBy().slice(before).some((u) => u.oneTimeKeys > 0), 'an upload of new one-time keys');
    assert.ok(dev.oneTimeKeys.size > 0);
    assert.deepEqual(errors(bot), []);
  });
}

test('a key upload in flight when the pool drains: its answer without a count (zero) still gets the new keys uploaded', async (t) => {
  const { bot } = await world(t);
  const dev = hs.device(BOT, BOT_DEVICE);
  // The fallback key was used: the machine uploads a new one (no one-time keys), and its answer is held back.
  const gate = hs.holdUploads();
  await bot.actor.receiveSyncChanges(syncChanges(hs, [], { fallbackKeyTypes: [] }));
  await gate.arrived;
  // Meanwhile every one-time key is claimed and a sync says so: the machine makes new keys. The held answer
  // (counted after the claims: none, so no signed_curve25519 entry) marks every key the machine has as published.
  dev.oneTimeKeys.clear();
  await bot.actor.receiveSyncChanges(syncChanges(hs, [], { otkCounts: null }));
  const before = hs.uploadsBy().length;
  gate.release();
  await waitFor(() => hs.uploadsBy().slice(before).some((u) => u.oneTimeKeys > 0), 'an upload of new one-time keys after the held answer');
  assert.ok(dev.oneTimeKeys.size > 0);
  assert.deepEqual(errors(bot), []);
});

// The key will not come for m.unverified, m.blacklisted and m.unauthorised (the sender decided so); it may still
// come for m.unavailable (another device had no copy) and m.no_olm (no Olm session yet; the engine records it per
// device, not per session, so the event's failure carries no code). A withheld notice from someone else than the
// event's sender proves nothing: the event is kept.
for (const [code, from, pending, reported] of [
  ['m.unverified', ALICE, false, 'm.unverified'],
  ['m.blacklisted', ALICE, false, 'm.blacklisted'],
  ['m.unauthorised', ALICE, false, 'm.unauthorised'],
  ['m.unavailable', ALICE, true, 'm.unavailable'],
  ['m.no_olm', ALICE, true, null],
  ['m.unverified', MALLORY, true, 'm.unverified'],
] as const) {
  test(`a room key withheld with ${code} by ${from === ALICE ? 'the sender' : 'another user'}: withheldCode ${reported}, pending ${pending}`, async (t) => {
    const { alice, bot, roomId } = await world(t);
    await alice.shareKey(roomId, [BOT]);
    hs.drainInbox(BOT, BOT_DEVICE); // the key is never delivered
    const ev = await alice.encrypt(roomId, 'withheld');
    const notice = {
      type: 'm.room_key.withheld',
      sender: from,
      content: { algorithm: 'm.megolm.v1.aes-sha2', room_id: roomId, session_id: ev.content.session_id, sender_key: ev.content.sender_key, code, reason: 'a reason' },
    };
    await bot.actor.receiveSyncChanges(syncChanges(hs, [notice]));
    const res = await bot.actor.decrypt(decryptRequest(roomId, [ev]));
    assert.equal(res.failures.length, 1);
    const f = res.failures[0]!;
    assert.equal(f.code, 'HALCYON_DECRYPT_MISSING_KEY');
    assert.equal(f.withheldCode, reported);
    assert.equal(f.pending, pending);
    if (reported) assert.match(f.message, new RegExp(`withheld \\(${reported.replace('.', '\\.')}`));
    assert.doesNotMatch(f.message, /Some\(/, 'no Rust formatting in the message');
    assert.equal((await bot.actor.status()).pendingUndecryptable, pending ? 1 : 0);
    assert.deepEqual(errors(bot), []);
  });
}
