/**
 * Shared pieces of the workloads that run against a real Synapse (latency, sends): the server's lifetime, raw
 * client-server API calls (room set-up, sends, `/messages`), fresh devices, and loading the contenders' adapters.
 * @module
 */
import { randomBytes } from 'node:crypto';
import { Agent, request } from 'undici';
import { startSynapse, withTimeout, type Homeserver, type TestUser } from '../../test/harness/synapse.ts';
import type { Contender } from '../report.ts';
import type { PeerClient, PeerStartOptions, StartPeer } from '../peers/types.ts';

export { withTimeout };

/** The contenders that have an adapter in bench/peers/, in the order the workloads list them. */
export type PeerName = Exclude<Contender, 'raw'>;

const PEER_FILES: Record<PeerName, string> = { halcyon: 'halcyon', floor: 'floor', 'matrix-bot-sdk': 'botsdk', 'matrix-js-sdk': 'jssdk' };

/** Every contender with an adapter, in the order the workloads list them. */
export function availablePeers(): PeerName[] {
  return ['halcyon', 'floor', 'matrix-bot-sdk', 'matrix-js-sdk'];
}

/** Starts one contender through its adapter (bench/peers/<file>.ts), failing with the contender's name after `timeoutMs`. */
export async function startPeer(name: PeerName, opts: PeerStartOptions, timeoutMs = 60_000): Promise<PeerClient> {
  const mod = (await import(`../peers/${PEER_FILES[name]}.ts`)) as Record<string, unknown>;
  // Each adapter exports its StartPeer as start<Name> (startHalcyon, startFloor, …).
  const start = Object.entries(mod).find(([k, v]) => k.startsWith('start') && typeof v === 'function')?.[1] as StartPeer | undefined;
  if (!start) throw new Error(`bench/peers/${PEER_FILES[name]}.ts exports no StartPeer (start…)`);
  return withTimeout(start(opts), timeoutMs, `${name} to start`);
}

/**
 * Stops a contender, waiting at most 30 s; a failure goes to stderr instead of being thrown (the measurement is
 * already taken), so the clean-up after it still runs.
 */
export async function stopPeer(name: string, peer: PeerClient | undefined): Promise<void> {
  if (!peer) return;
  await withTimeout(peer.stop(), 30_000, `${name} to stop`).catch((e: unknown) => {
    process.stderr.write(`[bench] ${name}: stop failed: ${e instanceof Error ? e.message : String(e)}\n`);
  });
}

/** Starts Synapse (`config` overrides its homeserver.yaml), runs `fn`, and stops the server however `fn` ends. */
export async function withSynapse<T>(config: Record<string, unknown> | undefined, fn: (hs: Homeserver) => Promise<T>): Promise<T> {
  const hs = await startSynapse(config ? { config } : {});
  try {
    return await fn(hs);
  } finally {
    await hs.stop();
  }
}

/** Epoch ms on the high-resolution clock (what the latency bodies carry). */
export const now = (): number => performance.timeOrigin + performance.now();

/** A reply of the client-server API. */
export interface ApiReply {
  status: number;
  json: any;
}

/** Raw client-server API calls as one user, on their own connection pool (so they never queue behind a contender's). */
export class Api {
  private readonly dispatcher = new Agent({ connections: 16 });
  private txn = 0;
  private readonly txnPrefix = randomBytes(4).toString('hex');

  constructor(readonly baseUrl: string, readonly accessToken: string) {}

  /** One request; resolves with any status (callers decide what is an error). */
  async call(method: 'GET' | 'POST' | 'PUT', path: string, body?: unknown): Promise<ApiReply> {
    const res = await request(`${this.baseUrl}${path}`, {
      method,
      dispatcher: this.dispatcher,
      headers: { authorization: `Bearer ${this.accessToken}`, 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.body.text();
    return { status: res.statusCode, json: text ? JSON.parse(text) : {} };
  }

  /** Like {@link call}, but throws unless the status is 200. */
  async ok(method: 'GET' | 'POST' | 'PUT', path: string, body?: unknown): Promise<any> {
    const r = await this.call(method, path, body);
    if (r.status !== 200) throw new Error(`${method} ${path} -> ${r.status}: ${JSON.stringify(r.json).slice(0, 300)}`);
    return r.json;
  }

  /** Creates a private room inviting `invite`; resolves with its ID. */
  async createRoom(invite: string[] = []): Promise<string> {
    return (await this.ok('POST', '/_matrix/client/v3/createRoom', { preset: 'private_chat', invite })).room_id as string;
  }

  async join(roomId: string): Promise<void> {
    await this.ok('POST', `/_matrix/client/v3/join/${encodeURIComponent(roomId)}`, {});
  }

  /** PUTs an `m.room.message` with a fresh transaction ID; the status is the caller's to judge. */
  send(roomId: string, content: Record<string, unknown>): Promise<ApiReply> {
    return this.call('PUT', `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/send/m.room.message/${this.txnPrefix}-${this.txn++}`, content);
  }

  /** Every `m.room.message` of the room, oldest first (paginating `/messages` backwards from the end). */
  async messages(roomId: string): Promise<Array<{ sender: string; event_id: string; content: Record<string, unknown> }>> {
    const out: Array<{ sender: string; event_id: string; content: Record<string, unknown> }> = [];
    let from: string | undefined;
    for (;;) {
      const qs = new URLSearchParams({ dir: 'b', limit: '500' });
      if (from) qs.set('from', from);
      const page = await this.ok('GET', `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/messages?${qs}`);
      for (const ev of page.chunk ?? []) if (ev.type === 'm.room.message') out.push(ev);
      if (!page.end || (page.chunk ?? []).length === 0) break;
      from = page.end;
    }
    return out.reverse();
  }

  /** Closes this user's connections. */
  close(): Promise<void> {
    return this.dispatcher.close();
  }
}

/** Logs `user` in again: a new device and token, so every client run starts as a device the server has not seen. */
export async function newDevice(hs: Homeserver, user: TestUser): Promise<{ accessToken: string; deviceId: string }> {
  const res = await request(`${hs.baseUrl}/_matrix/client/v3/login`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ type: 'm.login.password', identifier: { type: 'm.id.user', user: user.localpart }, password: user.password }),
  });
  const json = (await res.body.json()) as { access_token: string; device_id: string };
  if (res.statusCode !== 200) throw new Error(`login of ${user.userId} -> ${res.statusCode}: ${JSON.stringify(json)}`);
  return { accessToken: json.access_token, deviceId: json.device_id };
}

/** Resolves after `ms`. */
export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
