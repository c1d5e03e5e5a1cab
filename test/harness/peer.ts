/** Minimal plain-HTTP Matrix client acting as the "other side" in integration tests. */
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import type { TestUser } from './synapse.ts';

const enc = encodeURIComponent;
let txnCounter = 0;

/** A logged-in test user talking to the homeserver over the client-server API. */
export class Peer {
  /** The peer's full Matrix user id. */
  readonly userId: string;
  private since?: string;
  /** Events from past syncs that came after the last match, oldest first. */
  private pending: { ev: any; roomId: string; section: string }[] = [];

  /** Wraps an already logged-in `user` on the homeserver at `baseUrl` (use http://127.0.0.1:port). */
  constructor(readonly baseUrl: string, readonly user: TestUser) {
    this.userId = user.userId;
  }

  /** Calls the API (paths not starting with "/_" are relative to /_matrix/client/v3) and returns the JSON body; throws on non-2xx with `status` and `errcode` set on the Error. */
  async request(method: string, path: string, body?: unknown, query?: Record<string, string>): Promise<any> {
    const url = new URL(path.startsWith('/_') ? path : `/_matrix/client/v3${path}`, this.baseUrl);
    for (const [k, v] of Object.entries(query ?? {})) url.searchParams.set(k, v);
    const res = await fetch(url, {
      method,
      headers: { authorization: `Bearer ${this.user.accessToken}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(30_000),
    });
    const text = await res.text();
    const data = text ? JSON.parse(text) : {};
    if (!res.ok) {
      const err = new Error(`${this.userId}: ${method} ${url.pathname} -> ${res.status} ${data.errcode ?? ''}: ${data.error ?? text}`);
      throw Object.assign(err, { status: res.status, errcode: data.errcode, body: data });
    }
    return data;
  }

  /** Creates a room (preset private_chat unless given; `encrypted` adds m.room.encryption) and returns its id. */
  async createRoom(opts: { invite?: string[]; name?: string; topic?: string; preset?: string; encrypted?: boolean } = {}): Promise<string> {
    const initial_state = opts.encrypted
      ? [{ type: 'm.room.encryption', state_key: '', content: { algorithm: 'm.megolm.v1.aes-sha2' } }]
      : [];
    const res = await this.request('POST', '/createRoom',
      { preset: opts.preset ?? 'private_chat', invite: opts.invite ?? [], name: opts.name, topic: opts.topic, initial_state });
    return res.room_id;
  }

  /** Invites `userId` into `roomId`. */
  async invite(roomId: string, userId: string): Promise<void> {
    await this.request('POST', `/rooms/${enc(roomId)}/invite`, { user_id: userId });
  }

  /** Joins a room by id or alias and returns the room id. */
  async join(roomIdOrAlias: string): Promise<string> {
    return (await this.request('POST', `/join/${enc(roomIdOrAlias)}`, {})).room_id;
  }

  /** Leaves `roomId`. */
  async leave(roomId: string): Promise<void> {
    await this.request('POST', `/rooms/${enc(roomId)}/leave`, {});
  }

  /** Sends an m.text message and returns its event id. */
  sendText(roomId: string, body: string): Promise<string> {
    return this.sendEvent(roomId, 'm.room.message', { msgtype: 'm.text', body });
  }

  /** Sends a timeline event with a unique transaction id and returns its event id. */
  async sendEvent(roomId: string, type: string, content: object): Promise<string> {
    return (await this.request('PUT', `/rooms/${enc(roomId)}/send/${enc(type)}/${txnId()}`, content)).event_id;
  }

  /** Sets a state event and returns its event id. */
  async sendState(roomId: string, type: string, stateKey: string, content: object): Promise<string> {
    return (await this.request('PUT', `/rooms/${enc(roomId)}/state/${enc(type)}/${enc(stateKey)}`, content)).event_id;
  }

  /** Redacts `eventId` and returns the redaction's event id. */
  async redact(roomId: string, eventId: string, reason?: string): Promise<string> {
    return (await this.request('PUT', `/rooms/${enc(roomId)}/redact/${enc(eventId)}/${txnId()}`, reason ? { reason } : {})).event_id;
  }

  /** Sends an m.reaction annotation with `key` to `eventId` and returns its event id. */
  react(roomId: string, eventId: string, key: string): Promise<string> {
    return this.sendEvent(roomId, 'm.reaction', { 'm.relates_to': { rel_type: 'm.annotation', event_id: eventId, key } });
  }

  /** Sends an m.replace edit of `eventId` (body "* newBody", m.new_content with newBody) and returns its event id. */
  edit(roomId: string, eventId: string, newBody: string): Promise<string> {
    return this.sendEvent(roomId, 'm.room.message', {
      msgtype: 'm.text',
      body: `* ${newBody}`,
      'm.new_content': { msgtype: 'm.text', body: newBody },
      'm.relates_to': { rel_type: 'm.replace', event_id: eventId },
    });
  }

  /** Sets this peer's own presence (and optional status message). */
  async setPresence(presence: 'online' | 'offline' | 'unavailable', statusMsg?: string): Promise<void> {
    await this.request('PUT', `/presence/${enc(this.userId)}/status`, { presence, status_msg: statusMsg });
  }

  /** Returns GET /presence/{userId}/status. */
  getPresence(userId: string): Promise<any> {
    return this.request('GET', `/presence/${enc(userId)}/status`);
  }

  /**
   * Syncs until `predicate(event, roomId, section)` holds and returns that event; section is
   * 'timeline' | 'ephemeral' | 'state' | 'invite' (or 'presence' with roomId '').
   * Events up to and including the match are consumed, later ones stay queued for the next call,
   * so consecutive calls only see new data. Not safe to run two waitFor calls on one Peer at once.
   */
  async waitFor(predicate: (ev: any, roomId: string, section: string) => boolean, timeoutMs = 20_000): Promise<any> {
    const deadline = Date.now() + timeoutMs;
    const seen: string[] = [];
    for (;;) {
      while (this.pending.length) {
        const item = this.pending.shift()!;
        seen.push(`${item.section}:${item.ev.type}${item.roomId ? `@${item.roomId}` : ''}`);
        if (predicate(item.ev, item.roomId, item.section)) return item.ev;
      }
      const remaining = deadline - Date.now();
      if (remaining <= 0) {
        throw new Error(`${this.userId}: waitFor timed out after ${timeoutMs} ms; saw ${seen.length} non-matching events` +
          (seen.length ? `, last: ${seen.slice(-10).join(', ')}` : ''));
      }
      const query: Record<string, string> = { timeout: this.since ? String(Math.min(1000, remaining)) : '0' };
      if (this.since) query.since = this.since;
      const res = await this.request('GET', '/sync', undefined, query);
      this.since = res.next_batch;
      this.pending.push(...flatten(res));
    }
  }

  /** Polls joined_members every 100 ms until `userId` is joined to `roomId`. */
  async waitForJoined(roomId: string, userId: string, timeoutMs = 20_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let last = 'not joined yet';
    while (Date.now() < deadline) {
      try {
        const { joined } = await this.request('GET', `/rooms/${enc(roomId)}/joined_members`);
        if (joined?.[userId]) return;
      } catch (e) {
        last = (e as Error).message;
      }
      await sleep(100);
    }
    throw new Error(`${this.userId}: ${userId} did not join ${roomId} within ${timeoutMs} ms (${last})`);
  }
}

function txnId(): string {
  return `t${Date.now()}.${++txnCounter}.${randomBytes(4).toString('hex')}`;
}

/** Flattens a /sync response into (event, roomId, section) items. */
function flatten(res: any): { ev: any; roomId: string; section: string }[] {
  const out: { ev: any; roomId: string; section: string }[] = [];
  const add = (events: any[] | undefined, roomId: string, section: string) => {
    for (const ev of events ?? []) out.push({ ev, roomId, section });
  };
  for (const [roomId, room] of Object.entries<any>({ ...res.rooms?.join, ...res.rooms?.leave })) {
    add(room.state?.events, roomId, 'state');
    add(room.timeline?.events, roomId, 'timeline');
    add(room.ephemeral?.events, roomId, 'ephemeral');
  }
  for (const [roomId, room] of Object.entries<any>(res.rooms?.invite ?? {})) add(room.invite_state?.events, roomId, 'invite');
  add(res.presence?.events, '', 'presence');
  return out;
}
