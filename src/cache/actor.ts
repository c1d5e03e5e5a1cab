/**
 * The cache actor: the one owner of room state. It applies state deltas from the sync actor, keeps the most
 * recently used rooms in memory (lru-cache, the only importer) and every room in `cache.sqlite`, so a restart
 * reads rooms back instead of refetching them from the server.
 */
import { LRUCache } from 'lru-cache';
import type { CacheActorApi, CacheConfig, RoomInfo, RoomSummary, StateChanges } from '../protocol.ts';
import { collectGarbage } from '../actors.ts';
import { type Database, openDatabase } from '../store.ts';
import { HalcyonError } from '../errors.ts';
import { applyChange, emptyRoom, type RoomState, roomInfo, sameSummary, summarize } from './state.ts';

const SCALARS = [
  'membership', 'name', 'topic', 'canonicalAlias', 'avatarUrl', 'encrypted', 'create', 'historyVisibility', 'joinRule', 'powerLevels', 'eventIds',
  'stripped', 'joinedCount', 'invitedCount',
] as const;

/** A batch changing this many rooms' state is followed by a full collection (see {@link collectGarbage}). */
const LARGE_BATCH_ROOMS = 2000;

/** Owns room state; see the module comment. */
export class CacheActor implements CacheActorApi {
  private db: Database | null = null;
  private rooms: LRUCache<string, RoomState> | null = null;
  private sql: ReturnType<typeof prepare> | null = null;
  /** Rooms made encrypted so far, in memory shared with main (see CacheConfig.encryptedRooms); null without it. */
  private encryptedRooms: Int32Array | null = null;
  /** Batches applied in memory and not yet written (`apply(…, true)`), in order; written by {@link writeHeld}. */
  private held: HeldBatch[] = [];

  async open(config: CacheConfig): Promise<void> {
    const db = openDatabase(config.dataDir, 'cache.sqlite');
    db.exec(`CREATE TABLE IF NOT EXISTS rooms (room_id TEXT PRIMARY KEY, data TEXT NOT NULL, summary TEXT NOT NULL);
      CREATE TABLE IF NOT EXISTS members (room_id TEXT NOT NULL, user_id TEXT NOT NULL, display_name TEXT,
        avatar_url TEXT, membership TEXT NOT NULL, PRIMARY KEY (room_id, user_id)) WITHOUT ROWID;
      CREATE TABLE IF NOT EXISTS account_data (room_id TEXT NOT NULL, type TEXT NOT NULL, content TEXT NOT NULL,
        PRIMARY KEY (room_id, type)) WITHOUT ROWID;`);
    // Member event IDs (for redactions) came later: add the column to a database made before.
    const columns = db.prepare('PRAGMA table_info(members)').all() as Array<{ name: string }>;
    if (!columns.some((c) => c.name === 'event_id')) db.exec('ALTER TABLE members ADD COLUMN event_id TEXT');
    this.db = db;
    this.sql = prepare(db);
    this.rooms = new LRUCache({ max: Math.max(1, config.maxRoomsInMemory) });
    this.encryptedRooms = config.encryptedRooms ?? null;
  }

  async apply(changes: StateChanges, deferWrite = false): Promise<RoomSummary[]> {
    const db = this.need();
    // Held rooms must stay in memory until written: a batch the LRU cannot hold whole is written at once.
    const defer = deferWrite && changes.rooms.length <= this.rooms!.max;
    if (!defer) this.writeHeld(); // in order, and never inside this batch's transaction
    const held: HeldBatch = { rooms: [], accountData: changes.accountData ?? [] };
    const changed: RoomSummary[] = [];
    // One transaction per sync batch: the batch's state lands whole or not at all.
    if (!defer) db.exec('BEGIN');
    try {
      for (const change of changes.rooms) {
        const existing = this.load(change.roomId);
        const room = existing ?? emptyRoom(change.roomId);
        const before = existing ? summarize(room) : null;
        const touched = applyChange(room, change);
        const s = change.summary;
        if (s && typeof s['m.joined_member_count'] === 'number') room.joinedCount = s['m.joined_member_count'];
        if (s && typeof s['m.invited_member_count'] === 'number') room.invitedCount = s['m.invited_member_count'];
        const after = summarize(room);
        // Counted before the room can be read as encrypted: main trusts an earlier "not encrypted" while this count stays.
        if (after.encrypted && !before?.encrypted && this.encryptedRooms) Atomics.add(this.encryptedRooms, 0, 1);
        if (defer) held.rooms.push({ room, touched, summary: after });
        else this.save(room, touched, after);
        this.rooms!.set(room.roomId, room);
        if (!before || !sameSummary(before, after)) changed.push(after);
      }
      if (defer) this.held.push(held);
      else {
        this.saveAccountData(held.accountData);
        db.exec('COMMIT');
      }
    } catch (err) {
      if (!defer) db.exec('ROLLBACK');
      // Drop what this batch put in memory, so memory never runs ahead of the database.
      for (const change of changes.rooms) this.rooms!.delete(change.roomId);
      throw storeError(err);
    }
    // A big account's initial sync leaves this worker a heap of garbage it would otherwise keep: collect it once
    // the answer is on its way.
    if (changes.rooms.length >= LARGE_BATCH_ROOMS) setImmediate(collectGarbage);
    return changed;
  }

  /** Writes what `apply(…, true)` holds in memory to SQLite, in one transaction (nothing when nothing is held). */
  async commit(): Promise<void> {
    this.need();
    this.writeHeld();
  }

  /**
   * Writes the held batches in one transaction. On failure their rooms are dropped from memory, so memory never
   * runs ahead of a database that refused them (reads then load them from SQLite).
   */
  private writeHeld(): void {
    const batches = this.held;
    if (batches.length === 0) return;
    this.held = [];
    const db = this.db!;
    db.exec('BEGIN');
    try {
      for (const b of batches) {
        for (const { room, touched, summary } of b.rooms) this.save(room, touched, summary);
        this.saveAccountData(b.accountData);
      }
      db.exec('COMMIT');
    } catch (err) {
      db.exec('ROLLBACK');
      for (const b of batches) for (const { room } of b.rooms) this.rooms!.delete(room.roomId);
      throw storeError(err);
    }
  }

  /** A room's row and its touched members' rows (inside the caller's transaction). */
  private save(room: RoomState, touched: Iterable<string>, summary: RoomSummary): void {
    const { saveRoom, saveMember } = this.sql!;
    saveRoom.run(room.roomId, JSON.stringify(Object.fromEntries(SCALARS.map((k) => [k, room[k]]))), JSON.stringify(summary));
    for (const uid of touched) {
      const m = room.members.get(uid)!;
      saveMember.run(room.roomId, uid, m.displayName, m.avatarUrl, m.membership, m.eventId);
    }
  }

  /** Account data rows (inside the caller's transaction); global account data is stored under the room ID ''. */
  private saveAccountData(entries: NonNullable<StateChanges['accountData']>): void {
    // SQLite primary keys cannot be null, hence '' for global account data.
    for (const a of entries) this.sql!.saveAccountData.run(a.roomId ?? '', a.type, JSON.stringify(a.content));
  }

  async getRoom(roomId: string): Promise<RoomInfo | undefined> {
    const room = this.load(roomId);
    return room ? roomInfo(room) : undefined;
  }

  async accountData(roomId: string | null, type: string): Promise<Record<string, unknown> | undefined> {
    this.need();
    this.writeHeld(); // read from SQLite: what is held goes there first
    const row = this.sql!.loadAccountData.get(roomId ?? '', type) as { content: string } | undefined;
    return row ? (JSON.parse(row.content) as Record<string, unknown>) : undefined;
  }

  async summaries(): Promise<RoomSummary[]> {
    this.need();
    this.writeHeld(); // read from SQLite: what is held goes there first
    const rows = this.sql!.allSummaries.all() as Array<{ summary: string }>;
    return rows.map((r) => JSON.parse(r.summary) as RoomSummary);
  }

  async close(): Promise<void> {
    try {
      if (this.db) this.writeHeld();
    } finally {
      this.db?.close();
      this.db = null;
      this.sql = null;
      this.rooms = null;
    }
  }

  private need(): Database {
    if (!this.db) throw new HalcyonError('HALCYON_NOT_RUNNING', 'the cache actor is not open');
    return this.db;
  }

  /** The room from memory, else from SQLite (then kept in memory), else undefined. */
  private load(roomId: string): RoomState | undefined {
    const hit = this.rooms!.get(roomId);
    if (hit) return hit;
    this.need();
    // Read from SQLite: what is held goes there first (held rooms are in memory, but not every room in memory is held).
    this.writeHeld();
    const row = this.sql!.loadRoom.get(roomId) as { data: string } | undefined;
    if (!row) return undefined;
    const data = JSON.parse(row.data) as Partial<RoomState> & LegacyFields;
    if (data.stripped === undefined && (data.membership === 'invite' || data.membership === 'knock')) {
      const pending = legacyPending(roomId, data);
      this.sql!.deleteMembers.run(roomId);
      this.rooms!.set(roomId, pending);
      return pending;
    }
    const room = Object.assign(emptyRoom(roomId), data);
    if (data.create === undefined) room.create = legacyCreate(data);
    room.members = new Map();
    const members = this.sql!.loadMembers.all(roomId) as Array<{
      user_id: string;
      display_name: string | null;
      avatar_url: string | null;
      membership: string;
      event_id: string | null;
    }>;
    for (const m of members) room.members.set(m.user_id, { displayName: m.display_name, avatarUrl: m.avatar_url, membership: m.membership, eventId: m.event_id });
    this.rooms!.set(roomId, room);
    return room;
  }
}

/** A batch applied in memory and not yet written: its rooms with the members it touched, and its account data. */
interface HeldBatch {
  /** Each room with the members the batch touched and its summary as applied (not computed twice). */
  rooms: Array<{ room: RoomState; touched: Iterable<string>; summary: RoomSummary }>;
  accountData: NonNullable<StateChanges['accountData']>;
}

function storeError(err: unknown): HalcyonError {
  return err instanceof HalcyonError ? err : new HalcyonError('HALCYON_STORE', `cache: cannot save room state: ${(err as Error).message}`, { cause: err });
}

/** What rows saved by earlier versions hold instead of `create`. */
interface LegacyFields {
  creator?: string | null;
  additionalCreators?: string[];
  roomVersion?: string | null;
}

/**
 * The create event as far as a row saved by an earlier version tells it (they kept the creator, the additional
 * creators and the room version): enough for src/power.ts's rules, so a restart does not lose the creators.
 */
function legacyCreate(data: LegacyFields): RoomState['create'] {
  if (typeof data.roomVersion !== 'string') return null;
  const content: Record<string, unknown> = { room_version: data.roomVersion };
  if (data.creator) content.creator = data.creator;
  if (data.additionalCreators?.length) content.additional_creators = data.additionalCreators;
  return { sender: data.creator ?? '', content };
}

/**
 * An invited or knocked room saved by an earlier version, which applied stripped state as room state: what it
 * showed becomes stripped state, the rest (power levels, creators, members) is forgotten, so nothing of those
 * claims outlives the join.
 */
function legacyPending(roomId: string, data: Partial<RoomState>): RoomState {
  const room = emptyRoom(roomId);
  room.membership = data.membership!;
  const claims: Array<[string, string, unknown]> = [
    ['m.room.name', 'name', data.name],
    ['m.room.topic', 'topic', data.topic],
    ['m.room.avatar', 'url', data.avatarUrl],
    ['m.room.canonical_alias', 'alias', data.canonicalAlias],
    ['m.room.encryption', 'algorithm', data.encrypted ? 'm.megolm.v1.aes-sha2' : null],
  ];
  room.stripped = claims.filter(([, , v]) => typeof v === 'string').map(([type, key, v]) => ({ type, state_key: '', content: { [key]: v } }));
  return room;
}

/** The statements the actor runs, prepared once per open database. */
function prepare(db: Database) {
  return {
    saveRoom: db.prepare('INSERT INTO rooms (room_id, data, summary) VALUES (?, ?, ?) ON CONFLICT(room_id) DO UPDATE SET data = excluded.data, summary = excluded.summary'),
    saveMember: db.prepare(
      'INSERT INTO members (room_id, user_id, display_name, avatar_url, membership, event_id) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(room_id, user_id) DO UPDATE SET display_name = excluded.display_name, avatar_url = excluded.avatar_url, membership = excluded.membership, event_id = excluded.event_id',
    ),
    loadRoom: db.prepare('SELECT data FROM rooms WHERE room_id = ?'),
    loadMembers: db.prepare('SELECT user_id, display_name, avatar_url, membership, event_id FROM members WHERE room_id = ?'),
    deleteMembers: db.prepare('DELETE FROM members WHERE room_id = ?'),
    allSummaries: db.prepare('SELECT summary FROM rooms'),
    saveAccountData: db.prepare('INSERT INTO account_data (room_id, type, content) VALUES (?, ?, ?) ON CONFLICT(room_id, type) DO UPDATE SET content = excluded.content'),
    loadAccountData: db.prepare('SELECT content FROM account_data WHERE room_id = ? AND type = ?'),
  };
}
