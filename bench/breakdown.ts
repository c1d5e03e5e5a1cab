/**
 * Stage breakdown, single thread, no HTTP: what each step of Halcyon's pipeline costs per event on the
 * throughput workloads, next to JSON.parse of the same bodies. Run it to see where `bench/run.ts`'s time goes:
 *
 *   node --import tsx bench/breakdown.ts [--batches N] [--passes N]
 *
 * Stages: JSON.parse (the floor's parse); processSync (the sync actor's validating scan, src/sync/process.ts);
 * skip (the scanner's validating skip of a whole body, `new Scanner(body).skipValue()`: the part of processSync's
 * work done in WebAssembly, src/sync/skipper.ts);
 * serialize + deserialize of the WireBatch as a worker postMessage would (v8.serialize / v8.deserialize use the
 * same ValueSerializer); CacheActor.apply of the batch's StateChanges (the sync actor awaits it before posting);
 * JSON.parse of every event's raw slice (what main pays when handlers read content); deliver: main's side of a batch
 * with a handler that reads the sender and event ID (the intake, the dispatcher's room lanes, the event objects, the
 * handler, the acknowledgements), in-process without workers: what main-thread changes are measured with, where the
 * bench's whole-pipeline figures move ±20% with the machine.
 * @module
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { deserialize, serialize } from 'node:v8';
import { CacheActor } from '../src/cache/actor.ts';
import { Client } from '../src/client.ts';
import { cores } from '../src/client/core.ts';
import { processSync } from '../src/sync/process.ts';
import { Scanner } from '../src/sync/scan.ts';
import { BatchReader } from '../src/events.ts';
import type { WireBatch } from '../src/protocol.ts';
import { makeSyncBody } from './fixtures.ts';
import { fmt, percentile } from './stats.ts';

const { values } = parseArgs({ options: { batches: { type: 'string', default: '20' }, passes: { type: 'string', default: '3' } } });
const BATCHES = Number(values.batches);
const PASSES = Number(values.passes);
const WANTED = new Set(['m.room.message', 'm.reaction', 'm.room.member', 'm.room.redaction', 'm.sticker']);

const shapes = [
  { id: '100x100', rooms: 100, perRoom: 100 },
  { id: '1x10k', rooms: 1, perRoom: 10_000 },
  { id: '10kx1', rooms: 10_000, perRoom: 1 },
];

/** Median over passes of the time (ms) `fn` takes over all bodies; the first pass is a warm-up. */
function time(fn: () => void): number {
  fn();
  const t: number[] = [];
  for (let p = 0; p < PASSES; p++) {
    const t0 = performance.now();
    fn();
    t.push(performance.now() - t0);
  }
  return percentile(t, 50);
}

console.log(`stage breakdown, µs per event (median of ${PASSES} passes after a warm-up), ${BATCHES} bodies per shape, Node ${process.version}`);
console.log('shape    JSON.parse  processSync       skip  serialize  deserialize  cache.apply(fresh)  cache.apply(steady)  raw JSON.parse      deliver');
for (const s of shapes) {
  const bodies = Array.from({ length: BATCHES }, (_, batch) => makeSyncBody({ rooms: s.rooms, eventsPerRoom: s.perRoom, batch, seed: 42 }));
  const events = s.rooms * s.perRoom * BATCHES;
  const per = (ms: number) => fmt((ms * 1000) / events, 2).padStart(11);

  const parse = time(() => {
    for (const b of bodies) JSON.parse(b);
  });
  const bytes = bodies.map((b) => Buffer.from(b, 'utf8'));
  const scan = time(() => {
    for (const b of bytes) processSync(b, { wantedTypes: WANTED });
  });
  const skip = time(() => {
    for (const b of bytes) new Scanner(b).skipValue();
  });
  const processed = bytes.map((b) => processSync(b, { wantedTypes: WANTED }));
  const batches = processed.map((p, i) => ({
    seq: i + 1,
    nextBatch: p.nextBatch,
    first: i === 0,
    deliver: true,
    rooms: p.rooms,
    body: bytes[i]!,
    events: p.events,
    invites: p.invites,
    left: p.left,
    summaries: [],
    errors: p.errors,
  }));
  const ser = time(() => {
    for (const b of batches) serialize(b);
  });
  const wire = batches.map((b) => serialize(b));
  const de = time(() => {
    for (const w of wire) deserialize(w);
  });
  const rawParse = time(() => {
    processed.forEach((p, k) => {
      const reader = new BatchReader(batches[k] as unknown as WireBatch);
      for (let i = 0; i < p.events.count; i++) reader.parse(i);
    });
  });

  // The cache actor as the sync actor drives it: one apply per body, in order, default maxRoomsInMemory (1,000).
  const cacheRun = async (): Promise<{ fresh: number; steady: number }> => {
    const dir = mkdtempSync(join(tmpdir(), 'halcyon-breakdown-'));
    const cache = new CacheActor();
    try {
      await cache.open({ dataDir: dir, maxRoomsInMemory: 1_000 });
      const t0 = performance.now();
      await cache.apply(processed[0]!.state); // every room is new
      const fresh = performance.now() - t0;
      const t1 = performance.now();
      for (let i = 1; i < processed.length; i++) await cache.apply(processed[i]!.state);
      const steady = (performance.now() - t1) / Math.max(1, processed.length - 1);
      return { fresh, steady };
    } finally {
      await cache.close();
      rmSync(dir, { recursive: true, force: true });
    }
  };
  const c = await cacheRun();
  const deliver = await deliverRun(batches);
  const perBody = events / BATCHES;
  console.log(
    `${s.id.padEnd(8)}${per(parse)}  ${per(scan)}  ${per(skip)}  ${per(ser)}  ${per(de)}  ` +
      `${fmt((c.fresh * 1000) / perBody, 2).padStart(18)}  ${fmt((c.steady * 1000) / perBody, 2).padStart(19)}  ${per(rawParse)}  ${per(deliver)}` +
      `   (cache.apply per body: first ${fmt(c.fresh)} ms, then ${fmt(c.steady)} ms)`,
  );
}

/**
 * Median ms (over passes, after a warm-up) that main takes to hand every batch to a handler reading each event's
 * sender and event ID, until its dispatcher is idle: a client that never runs, fed the batches as its sync port
 * would (a first one fires `ready`), each pass under new batch numbers.
 */
async function deliverRun(batches: Array<Record<string, unknown> & { events: WireBatch['events'] }>): Promise<number> {
  const dir = mkdtempSync(join(tmpdir(), 'halcyon-breakdown-'));
  try {
    const client = new Client({ dataDir: dir, encryption: false });
    let read = 0;
    const handler = (m: { sender: string; eventId: string }): void => {
      read += m.sender.length + m.eventId.length;
    };
    client.on('message', handler);
    client.on('reaction', handler);
    const core = cores.get(client)!;
    let seq = 0;
    const wire = (b: (typeof batches)[number], first: boolean): WireBatch =>
      ({ ...b, seq: ++seq, first, deliver: !first, events: first ? { ...b.events, count: 0 } : b.events, knocks: [], accountData: [], receipts: [], redelivered: false, done: null }) as unknown as WireBatch;
    core.intake.receive({ kind: 'batch', batch: wire(batches[0]!, true) });
    await new Promise((resolve) => setImmediate(resolve)); // `ready` fired: batches go to the dispatcher from now on
    const pass = async (): Promise<number> => {
      const t0 = performance.now();
      for (const b of batches) {
        core.intake.receive({ kind: 'batch', batch: wire(b, false) });
        await core.dispatcher.idle();
      }
      return performance.now() - t0;
    };
    await pass();
    const t: number[] = [];
    for (let p = 0; p < PASSES; p++) t.push(await pass());
    if (read === 0) throw new Error('deliver: no handler ran');
    return percentile(t, 50);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
