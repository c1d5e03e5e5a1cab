/**
 * Deterministic, Synapse-shaped `/sync` response bodies for benchmarks.
 * @module
 */

/** Options for {@link makeSyncBody}. */
export interface SyncBodyOptions {
  /** Number of joined rooms in the body. */
  rooms: number;
  /** Timeline events per room. */
  eventsPerRoom: number;
  /** Zero-based batch index; the body's `next_batch` is `s<batch+1>_…`. */
  batch: number;
  /** PRNG seed; the same options always produce the same body. */
  seed?: number;
}

const BASE_TS = 1_700_000_000_000;
const B64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
const ALPHA = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';
const WORDS = (
  'the a to and of in is it you that for on was with he as I his they be at one have this from ' +
  'or had by hot word but what some we can out other were all there when up use your how said an ' +
  'each she which do their time if will way about many then them write would like so these her ' +
  'long make thing see him two has look more day could go come did number sound no most people ' +
  'deploy server matrix room sync bot ping latency release merge review tomorrow lunch meeting ok'
).split(' ');
const SPECIAL_BODIES = [
  'He said "ship it" — naïve café déjà vu 🎉🚀',
  'quote \\"nested\\" and a path C:\\temp\\x 😅',
  '日本語のメッセージ 👍 and "quoted" text',
  'Ünïcödé ✓ ∑ π ≠ ∞ — "tabs"\tand\nnewlines 🔥',
];
const REACTION_KEYS = ['👍', '❤️', '😂', '🎉', '👀', '+1'];

type Rng = () => number;

/** mulberry32: small, fast, deterministic 32-bit PRNG returning [0, 1). */
function rng(seed: number): Rng {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const int = (r: Rng, n: number): number => Math.floor(r() * n);

function chars(r: Rng, alphabet: string, n: number): string {
  let s = '';
  for (let i = 0; i < n; i++) s += alphabet[int(r, alphabet.length)];
  return s;
}

function text(r: Rng): string {
  const target = 20 + int(r, 101);
  let s = WORDS[int(r, WORDS.length)]!;
  while (s.length < target) s += ' ' + WORDS[int(r, WORDS.length)]!;
  return s.slice(0, target).trimEnd().padEnd(20, '.');
}

function roomId(seed: number, index: number): string {
  return `!${chars(rng(seed * 7919 + index + 1), ALPHA, 18)}:localhost`;
}

function buildBody(perRoom: readonly number[], batch: number, seed: number): string {
  const r = rng((seed ^ 0x5bd1e995) + batch * 104729);
  const join: Record<string, unknown> = {};
  let ts = BASE_TS + batch * 60_000;
  const recent: string[] = [];
  for (let room = 0; room < perRoom.length; room++) {
    if (perRoom[room] === 0) continue; // Synapse omits rooms with nothing new
    const events: unknown[] = [];
    for (let e = 0; e < perRoom[room]!; e++) {
      const eventId = `$${chars(r, B64URL, 43)}`;
      const sender = `@user${int(r, 50)}:localhost`;
      ts += 1 + int(r, 40);
      const roll = r();
      let type = 'm.room.message';
      let content: Record<string, unknown>;
      if (roll < 0.02 && recent.length > 0) {
        type = 'm.reaction';
        content = {
          'm.relates_to': {
            rel_type: 'm.annotation',
            event_id: recent[int(r, recent.length)],
            key: REACTION_KEYS[int(r, REACTION_KEYS.length)],
          },
        };
      } else if (roll < 0.03) {
        content = { msgtype: 'm.text', body: SPECIAL_BODIES[int(r, SPECIAL_BODIES.length)] };
      } else {
        content = { msgtype: 'm.text', body: text(r) };
      }
      events.push({
        type,
        sender,
        content,
        origin_server_ts: ts,
        unsigned: { age: 50 + int(r, 5000) },
        event_id: eventId,
      });
      recent.push(eventId);
      if (recent.length > 16) recent.shift();
    }
    join[roomId(seed, room)] = {
      timeline: { events, limited: false, prev_batch: `t${batch * 100 + 1}-${1000 + batch}_0_0_0_0_0_0_0_0` },
      state: { events: [] },
      ephemeral: { events: [] },
      account_data: { events: [] },
      unread_notifications: { highlight_count: 0, notification_count: perRoom[room] },
      summary: {},
    };
  }
  return JSON.stringify({
    next_batch: `s${batch + 1}_${4000 + batch}_0_1_1_1_1_${100 + batch}_0_1`,
    account_data: { events: [] },
    to_device: { events: [] },
    presence: { events: [] },
    device_one_time_keys_count: { signed_curve25519: 50 },
    rooms: { join },
  });
}

/** Builds one deterministic Synapse-shaped `/sync` JSON body with `rooms × eventsPerRoom` timeline events. */
export function makeSyncBody(opts: SyncBodyOptions): string {
  return buildBody(new Array<number>(opts.rooms).fill(opts.eventsPerRoom), opts.batch, opts.seed ?? 1);
}

/** Spreads exactly `totalEvents` events as evenly as possible over `rooms` rooms and `batches` bodies (`next_batch` s1, s2, …). */
export function scaledBodies(rooms: number, totalEvents: number, batches: number, seed = 1): string[] {
  const out: string[] = [];
  for (let b = 0; b < batches; b++) {
    const inBatch = Math.floor(totalEvents / batches) + (b < totalEvents % batches ? 1 : 0);
    const perRoom = Array.from({ length: rooms }, (_, i) => Math.floor(inBatch / rooms) + (i < inBatch % rooms ? 1 : 0));
    out.push(buildBody(perRoom, b, seed));
  }
  return out;
}
