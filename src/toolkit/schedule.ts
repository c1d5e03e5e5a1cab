/**
 * Scheduled messages (`client.schedule`, `client.cancelScheduled`), in one of two places:
 * - on the server, as a delayed event (MSC4140), when the homeserver offers them (`org.matrix.msc4140` in
 *   `/versions`' unstable features, or a positive `max_delay_ms` in `/capabilities`; Synapse with
 *   `max_event_delay_duration`) and the delay is within its limit: the server sends it even while the bot is down;
 * - else in a durable local schedule, `<dataDir>/schedule.sqlite` (0600), whose timers fire while the client runs
 *   and, after a restart, fire what came due while it was down as soon as it is ready.
 *
 * Encrypted rooms always use the local schedule: a delayed event is stored as sent, so it would be encrypted when
 * scheduled, with the room key of that moment, and members who join (or devices added) before it goes out could
 * not read it. The local schedule encrypts at send time, like any send.
 *
 * A local send runs as a handler run of its own keyed by the schedule entry (host.ts): its transaction ID is the
 * same on every attempt, so a crash between the send and the removal of the entry sends nothing twice (the outbox
 * answers the re-run from its record). The entry is removed once the outbox has the server's answer.
 */
import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { Client } from '../client.ts';
import { HalcyonError } from '../errors.ts';
import type { ContentInput } from '../events.ts';
import { seg } from '../http.ts';
import { contentArg, roomIdArg } from '../ids.ts';
import { type Database, openDatabase } from '../store.ts';
import { type ToolkitHost, inHandlerRun } from './host.ts';

/** When a scheduled message goes out: exactly one of `at` and `inMs`. */
export interface ScheduleOptions {
  /** The time to send it (a `Date`, or ms since the epoch). */
  at?: Date | number;
  /** How long from now, in ms. */
  inMs?: number;
  /** `local`: keep it in the local schedule even where the server offers delayed events (default `auto`). */
  mode?: 'auto' | 'local';
}

/** A scheduled message, as `client.schedule` resolves. */
export interface ScheduledMessage {
  /** Its ID, for `client.cancelScheduled(id)`. */
  id: string;
  roomId: string;
  /** When it is due, in ms since the epoch. */
  at: number;
  /** `server`: an MSC4140 delayed event on the homeserver; `local`: the bot's local schedule. */
  mode: 'server' | 'local';
}

const FILE = 'schedule.sqlite';
const UNSTABLE = '/_matrix/client/unstable/org.matrix.msc4140';
/** Longest timer Node keeps (2^31 - 1 ms); a later entry re-arms when it fires. */
const MAX_TIMER_MS = 2 ** 31 - 1;

interface Row {
  id: string;
  room_id: string;
  content: string;
  due_at: number;
}

/** The scheduler of one client; see the module comment. */
export class Scheduler {
  readonly #client: Client;
  readonly #host: ToolkitHost;
  #db: Database | null = null;
  readonly #timers = new Map<string, NodeJS.Timeout>();
  /** The server's longest delay for delayed events (0: none), asked once per run. */
  #serverMax: Promise<number> | null = null;

  /** @internal */
  constructor(client: Client, host: ToolkitHost) {
    this.#client = client;
    this.#host = host;
    // Entries an earlier run left arm once the client is ready (a fresh data dir has no file: nothing opens).
    client.on('ready', () => {
      if (existsSync(join(host.dataDir, FILE))) this.#armAll();
    });
  }

  /** See `Client.schedule`. */
  async schedule(roomId: string, content: ContentInput, opts: ScheduleOptions): Promise<ScheduledMessage> {
    roomIdArg(roomId, 'schedule');
    const c = contentArg('m.room.message', typeof content === 'string' ? { msgtype: 'm.text', body: content } : content, 'schedule');
    const at = dueTime(opts);
    this.#host.http(); // throws HALCYON_NOT_RUNNING
    const encrypted = await this.#client.isRoomEncrypted(roomId);
    if (encrypted && !this.#host.encryption) {
      throw new HalcyonError('HALCYON_ROOM_ENCRYPTED', `room ${roomId} is encrypted and encryption is off: a scheduled message could not be sent there`, { roomId });
    }
    const onServer = opts.mode === 'local' || encrypted ? null : await this.#onServer(roomId, c, at);
    if (onServer) return onServer;
    const id = `local:${randomUUID()}`;
    this.#open().prepare('INSERT INTO scheduled (id, room_id, content, due_at) VALUES (?, ?, ?, ?)').run(id, roomId, JSON.stringify(c), at);
    this.#arm({ id, room_id: roomId, content: '', due_at: at });
    return { id, roomId, at, mode: 'local' };
  }

  /** See `Client.cancelScheduled`. */
  async cancel(id: string): Promise<boolean> {
    if (typeof id !== 'string' || !/^(server|local):./.test(id)) {
      throw new HalcyonError('HALCYON_INVALID_ARGUMENT', 'cancelScheduled: the ID must be one client.schedule resolved with');
    }
    const http = this.#host.http(); // throws HALCYON_NOT_RUNNING: the schedule is open while the client runs
    if (id.startsWith('local:')) {
      clearTimeout(this.#timers.get(id));
      this.#timers.delete(id);
      if (!this.#db && !existsSync(join(this.#host.dataDir, FILE))) return false;
      return Number(this.#open().prepare('DELETE FROM scheduled WHERE id = ?').run(id).changes) > 0;
    }
    const delayId = seg(id.slice('server:'.length));
    try {
      await http.json('POST', `${UNSTABLE}/delayed_events/${delayId}/cancel`, { body: {} });
    } catch (err) {
      const e = err as HalcyonError;
      if (e.status === 404 && e.errcode === 'M_NOT_FOUND') return false;
      if (e.status !== 404 && e.status !== 405) throw err;
      // A server of the MSC's first revision: one endpoint with an action.
      await http.json('POST', `${UNSTABLE}/delayed_events/${delayId}`, { body: { action: 'cancel' } }).catch((e2: HalcyonError) => {
        if (e2.status === 404) return false;
        throw e2;
      });
    }
    return true;
  }

  /** Schedules a delayed event on the server; null when it offers none, or not for that long. */
  async #onServer(roomId: string, content: Record<string, unknown>, at: number): Promise<ScheduledMessage | null> {
    const delay = Math.max(0, at - Date.now());
    if (delay > (await this.#maxServerDelay())) return null;
    let res: { delay_id?: unknown };
    try {
      res = await this.#host.http().json('PUT', `/_matrix/client/v3/rooms/${seg(roomId)}/send/m.room.message/${seg(`hs-sched-${randomUUID()}`)}`, {
        query: { 'org.matrix.msc4140.delay': delay },
        body: content,
      });
    } catch (err) {
      if ((err as HalcyonError).errcode === 'M_MAX_DELAY_EXCEEDED') return null;
      throw err;
    }
    if (typeof res.delay_id !== 'string' || res.delay_id === '') {
      throw new HalcyonError('HALCYON_BAD_RESPONSE', 'the homeserver answered a delayed event without a delay_id', { roomId });
    }
    return { id: `server:${res.delay_id}`, roomId, at, mode: 'server' };
  }

  /** The server's longest delay for delayed events, or 0 when it offers none. */
  #maxServerDelay(): Promise<number> {
    const signal = this.#host.stopSignal();
    if (this.#serverMax === null) {
      this.#serverMax = askServerMax(this.#host).catch(() => 0);
      // A new run asks again: the server may have been reconfigured.
      signal.addEventListener('abort', () => (this.#serverMax = null), { once: true });
    }
    return this.#serverMax;
  }

  /** The schedule's database, opened (and its table made) on first use; closed when the run stops. */
  #open(): Database {
    if (this.#db) return this.#db;
    const db = openDatabase(this.#host.dataDir, FILE);
    db.exec('CREATE TABLE IF NOT EXISTS scheduled (id TEXT PRIMARY KEY, room_id TEXT NOT NULL, content TEXT NOT NULL, due_at INTEGER NOT NULL)');
    this.#db = db;
    this.#host.stopSignal().addEventListener(
      'abort',
      () => {
        for (const t of this.#timers.values()) clearTimeout(t);
        this.#timers.clear();
        this.#db = null;
        db.close();
      },
      { once: true },
    );
    return db;
  }

  #armAll(): void {
    const rows = this.#open().prepare('SELECT id, room_id, content, due_at FROM scheduled').all() as unknown as Row[];
    for (const r of rows) this.#arm(r);
  }

  #arm(r: Row): void {
    const wait = Math.min(MAX_TIMER_MS, Math.max(0, r.due_at - Date.now()));
    const timer = setTimeout(() => void this.#fire(r.id), wait);
    timer.unref?.();
    this.#timers.set(r.id, timer);
  }

  /** Sends a due entry (re-arming one whose timer was capped) and removes it once the send settled for good. */
  async #fire(id: string): Promise<void> {
    this.#timers.delete(id);
    const db = this.#db;
    const r = db?.prepare('SELECT id, room_id, content, due_at FROM scheduled WHERE id = ?').get(id) as Row | undefined;
    if (!db || !r) return; // cancelled, or the run stopped
    if (r.due_at > Date.now()) return this.#arm(r);
    const signal = this.#host.stopSignal();
    try {
      await inHandlerRun(`schedule:${id}`, () => this.#client.sendMessage(r.room_id, JSON.parse(r.content) as Record<string, unknown>));
    } catch (err) {
      if (signal.aborted) return; // the client stopped: it goes out on the next run
      this.#host.report(new HalcyonError('HALCYON_SEND_FAILED', `the scheduled message ${id} could not be sent: ${(err as Error).message}`, { roomId: r.room_id, cause: err }));
    }
    if (this.#db === db) db.prepare('DELETE FROM scheduled WHERE id = ?').run(id);
  }
}

/** When a scheduled message is due (ms since the epoch), from exactly one of `at` and `inMs`. */
function dueTime(opts: ScheduleOptions): number {
  const { at, inMs } = opts ?? {};
  if ((at === undefined) === (inMs === undefined)) throw new HalcyonError('HALCYON_INVALID_ARGUMENT', 'schedule: give exactly one of at and inMs');
  const t = at === undefined ? Date.now() + Number(inMs) : at instanceof Date ? at.getTime() : at;
  if (inMs !== undefined && !(typeof inMs === 'number' && inMs >= 0)) throw new HalcyonError('HALCYON_INVALID_ARGUMENT', 'schedule: inMs must be a number of ms >= 0');
  if (typeof t !== 'number' || !Number.isFinite(t)) throw new HalcyonError('HALCYON_INVALID_ARGUMENT', 'schedule: at must be a Date or a number of ms since the epoch');
  return Math.round(t);
}

/** Whether and how far the homeserver offers delayed events: its `max_delay_ms`, 0 for none. */
async function askServerMax(host: ToolkitHost): Promise<number> {
  const http = host.http();
  const caps = await http.json<{ capabilities?: Record<string, { max_delay_ms?: unknown } | undefined> }>('GET', '/_matrix/client/v3/capabilities');
  const max = caps.capabilities?.['org.matrix.msc4140.delayed_events']?.max_delay_ms;
  if (typeof max === 'number' && max > 0) return max;
  const versions = await http.json<{ unstable_features?: Record<string, unknown> }>('GET', '/_matrix/client/versions');
  // Advertised without a limit: the server refuses a delay past its own with M_MAX_DELAY_EXCEEDED.
  return versions.unstable_features?.['org.matrix.msc4140'] === true ? Number.MAX_SAFE_INTEGER : 0;
}
