/**
 * Smoke benchmark: replay 100 rooms × 100 events × 20 batches through the raw floor three times,
 * then measure single-core JSON.parse throughput of the same bodies.
 * Run: `node_modules/.bin/node --import tsx bench/smoke.ts`
 * @module
 */
import { makeSyncBody } from './fixtures.ts';
import { runFloor } from './floor.ts';
import { startReplayServer } from './replay-server.ts';

const ROOMS = 100;
const EVENTS_PER_ROOM = 100;
const BATCHES = 20;
const RUNS = 3;
const TOTAL = ROOMS * EVENTS_PER_ROOM * BATCHES;

const fmt = (n: number, d = 0) => n.toLocaleString('en-US', { maximumFractionDigits: d, minimumFractionDigits: d });

const bodies = Array.from({ length: BATCHES }, (_, batch) =>
  makeSyncBody({ rooms: ROOMS, eventsPerRoom: EVENTS_PER_ROOM, batch, seed: 42 }),
);
const bytes = bodies.reduce((n, b) => n + Buffer.byteLength(b), 0);
console.log(
  `node ${process.version}; ${BATCHES} bodies × ${ROOMS} rooms × ${EVENTS_PER_ROOM} events = ${fmt(TOTAL)} events, ` +
    `${fmt(bytes / 1e6, 1)} MB (${fmt(bytes / TOTAL)} B/event)`,
);

for (let run = 1; run <= RUNS; run++) {
  const server = await startReplayServer({ bodies, longPollMs: 1000 });
  try {
    let sink = 0;
    const r = await runFloor(server.url, TOTAL, (ev) => (sink += ev.origin_server_ts & 1));
    const s = await server.stats();
    const span = (s.responseTimes.at(-1)! - s.requestTimes[0]!) / 1000;
    console.log(
      `floor run ${run}: ${fmt(r.events)} events in ${fmt(r.seconds, 3)} s = ${fmt(r.events / r.seconds)} events/s; ` +
        `main CPU ${fmt(r.mainCpuMs)} ms = ${fmt((r.mainCpuMs * 1000) / r.events, 2)} µs/event; ` +
        `server saw ${s.syncRequests} /sync over ${fmt(span, 3)} s (sink ${sink})`,
    );
  } finally {
    await server.stop();
  }
}

// Single-core JSON.parse rate over the same bodies (3 passes, first is warm-up).
let parsed = 0;
for (let pass = 0; pass < 3; pass++) {
  const t0 = performance.now();
  for (const b of bodies) parsed += JSON.parse(b).rooms.join ? 1 : 0;
  const sec = (performance.now() - t0) / 1000;
  console.log(
    `JSON.parse pass ${pass + 1}${pass === 0 ? ' (warm-up)' : ''}: ${fmt(TOTAL / sec)} events/s, ` +
      `${fmt(bytes / 1e6 / sec)} MB/s (${fmt((sec * 1e6) / TOTAL, 2)} µs/event)`,
  );
}
if (parsed === 0) throw new Error('unreachable');
