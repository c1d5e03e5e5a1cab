/**
 * Fault injection, kill -9: a bot process (test/fixtures/fault-bot.ts, replying to every message) is killed with
 * SIGKILL at 20 random moments (seeded: HC_FAULT_SEED reproduces a run) while a peer streams messages into its room,
 * and restarted on the same data dir each time. A few restarts wait until more messages than a /sync timeline holds
 * (50) have arrived (long outages). The stream runs until the last run has handled 100 messages more (at most
 * 2,000 in all): its length follows the kill schedule, so every kill lands mid-stream whatever pace Synapse keeps.
 *
 * Checked across all runs: every message handled at least once; within a run, in timeline order; a message
 * handled more than once only if the run that handled it was killed before acknowledging it (the later delivery
 * is flagged `redelivered`, what a killed run leaves to redo is the tail of what it had started, and at most
 * maxQueuedEvents of it); a delivery flagged not-redelivered is a first delivery; and the room holds exactly one
 * reply of the bot per peer message (idempotent sends: no duplicate replies whatever the kill hit).
 *
 * Also: a kill with more events journaled than maxQueuedEvents (the next run must still become ready); kills
 * during an encrypted stream (a matrix-js-sdk peer); and kills while replies wait in the outbox (handlers that
 * do not await them).
 *
 * Knobs (env): HC_FAULT_SEED (every test), HC_KILL_MESSAGES (the most the stream sends, 2000), HC_KILL_RATE (messages/s, 25), HC_KILLS (20),
 * HC_KILL_MAX_QUEUED (the bot's maxQueuedEvents, 64), HC_KILL_DUMP (a file to write every bot line to),
 * HC_KILL_E2EE_MESSAGES (150) and HC_KILLS_E2EE (5) for the encrypted stream.
 */
import assert from 'node:assert/strict';
import { randomInt } from 'node:crypto';
import { mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { Client } from '../../src/index.ts';
import { seededRandom } from '../harness/fault-proxy.ts';
import { startJsPeer } from '../harness/js-peer.ts';
import { Peer } from '../harness/peer.ts';
import { testHomeserver, type Homeserver } from '../harness/synapse.ts';
import { type BotLine, type BotProcess, countBy, repliesInRoom, type RoomReply, startFaultBot, startStream } from '../helpers/fault-stream.ts';
import { defer, waitUntil } from './util.ts';

let hs: Homeserver;
before(async () => {
  hs = await testHomeserver();
});
after(async () => {
  await hs?.stop();
});

const MESSAGES = Number(process.env.HC_KILL_MESSAGES ?? 2000);
const RATE = Number(process.env.HC_KILL_RATE ?? 25);
const KILLS = Number(process.env.HC_KILLS ?? 20);
// Small, so a kill often leaves more journaled events than main may hold: the restart must still become ready.
const MAX_QUEUED = Number(process.env.HC_KILL_MAX_QUEUED ?? 64);
const LONG_OUTAGE_MESSAGES = 120; // more than the filter's timeline limit (50): the next sync comes back limited
// Sent after the last kill's restart before the stream ends. A fixed 2,000 took Synapse 270 s on a busy machine
// (7 messages/s: the peer's and the bot's sends share one room), 170 s of it after the last kill.
const TAIL_MESSAGES = 100;

// The stream's pace is the peer's and Synapse's (7-25 messages/s). The test judges what was lost or repeated, never
// the time taken, so its bound is only there to end a hung run.
test(`kill -9 at ${KILLS} random moments during a message stream: each handled at least once, duplicates only for what was in flight, one reply per message`, { timeout: 1_200_000 }, async (t) => {
  const seed = Number(process.env.HC_FAULT_SEED ?? randomInt(2 ** 31));
  t.diagnostic(`seed ${seed} (HC_FAULT_SEED=${seed} reproduces the kill schedule)`);
  const rnd = seededRandom(seed);
  const t0 = Date.now();

  const user = await hs.registerUser();
  const dataDir = mkdtempSync(join(tmpdir(), 'halcyon-kill-'));
  defer(t, () => rmSync(dataDir, { recursive: true, force: true }));
  const token = await Client.login({ homeserver: hs.baseUrl, user: user.localpart, password: user.password, dataDir });
  const env = { HC_TOKEN: token, HC_DIR: dataDir, HC_MAX_QUEUED: String(MAX_QUEUED) };
  const peer = new Peer(hs.baseUrl, await hs.registerUser());

  const lines: BotLine[] = [];
  const runs: BotProcess[] = [];
  // HC_KILL_DUMP=<file>: every bot line, for a look after the run.
  if (process.env.HC_KILL_DUMP) defer(t, () => writeFileSync(process.env.HC_KILL_DUMP!, lines.map((l) => JSON.stringify(l)).join('\n')));
  const start = async (run: number) => {
    const b = startFaultBot(String(run), env, lines);
    runs.push(b);
    defer(t, () => b.kill9());
    const began = Date.now();
    await b.waitFor((l) => l.kind === 'ready', `run ${run} to be ready`, 60_000);
    return { b, readyMs: Date.now() - began };
  };

  let { b: bot } = await start(0);
  const roomId = await peer.createRoom({ invite: [user.userId] });
  await peer.waitForJoined(roomId, user.userId, 30_000);

  const stream = startStream({ baseUrl: hs.baseUrl, accessToken: peer.user.accessToken, roomId, count: MESSAGES, perSecond: RATE, prefix: 'm' });
  defer(t, () => stream.stop());

  // The kill schedule: a quarter of the kills come right after `ready` (the journal's redelivery is running), the
  // rest 0.3-3 s in; three restarts wait for a long outage.
  const longOutages = new Set<number>();
  while (longOutages.size < Math.min(3, KILLS)) longOutages.add(Math.floor(rnd() * KILLS));
  const kills: Array<{ run: number; afterReadyMs: number; sentAtKill: number; startedInRun: number; repliedInRun: number; outage: number; readyMs: number }> = [];
  // (The `redelivered` flag is set per journaled batch that an earlier run had posted to main, so it also marks
  // events that run never started: only repeats are held to it below, and first deliveries flagged are counted.)
  for (let k = 0; k < KILLS; k++) {
    const afterReadyMs = Math.round(rnd() < 0.25 ? rnd() * 150 : 300 + rnd() * 2700);
    // The moment of the fault (not a wait for a condition).
    await new Promise((r) => setTimeout(r, afterReadyMs));
    await bot.kill9();
    const sentAtKill = stream.sent.length;
    const mine = lines.filter((l) => l.run === String(k));
    const kill = { run: k, afterReadyMs, sentAtKill, startedInRun: mine.filter((l) => l.kind === 'message').length, repliedInRun: mine.filter((l) => l.kind === 'replied').length, outage: 0, readyMs: 0 };
    kills.push(kill);
    if (longOutages.has(k)) {
      const target = Math.min(MESSAGES, sentAtKill + LONG_OUTAGE_MESSAGES);
      await waitUntil(() => stream.sent.length >= target, 60_000, `the peer to send ${LONG_OUTAGE_MESSAGES} messages while the bot is down`);
    }
    const started = await start(k + 1);
    bot = started.b;
    kill.readyMs = started.readyMs;
    kill.outage = stream.sent.length - sentAtKill; // messages sent between the kill and the next run's ready
  }
  // The last run takes TAIL_MESSAGES more in its steady state, then the stream ends (the end marker follows).
  const tail = Math.min(MESSAGES, stream.sent.length + TAIL_MESSAGES);
  await waitUntil(() => stream.sent.length >= tail, 120_000, `the peer to send ${TAIL_MESSAGES} messages after the last restart`);
  stream.stop();
  const sent = await stream.done;
  t.diagnostic(`stream: ${sent.length} messages in ${((sent.at(-1)!.at - sent[0]!.at) / 1000).toFixed(1)} s; kills done at ${((Date.now() - t0) / 1000).toFixed(1)} s`);

  // Quiet period: an end marker after the stream; once the last run handled it, everything before it was seen.
  const endId = await peer.sendText(roomId, 'END');
  await bot.waitFor((l) => l.kind === 'replied' && l.eventId === endId, 'the last run to handle and answer the end marker', 120_000).catch((e: Error) => {
    const got = new Set(lines.filter((l) => l.kind === 'message').map((l) => l.eventId));
    throw new Error(`${e.message}\n(${sent.filter((s) => !got.has(s.eventId)).length} of ${sent.length} messages never handled so far)`);
  });
  const expected = sent.length + 1;
  // Each handler awaited its reply before the end marker's; this only lets the server's timeline settle. The
  // last read is kept (each one pages through all 2,000+ replies: seconds of Synapse's time on a busy machine).
  let replies: RoomReply[] = [];
  await waitUntil(async () => (replies = await repliesInRoom(hs.baseUrl, peer.user.accessToken, roomId, user.userId)).length >= expected, 30_000, `${expected} replies in the room`).catch(() => {});
  await bot.stop();

  // ---- analysis ----
  const deliveries = lines.filter((l) => l.kind === 'message');
  const byEvent = new Map<string, BotLine[]>();
  for (const d of deliveries) {
    let l = byEvent.get(d.eventId);
    if (!l) byEvent.set(d.eventId, (l = []));
    l.push(d);
  }
  const problems: string[] = [];
  const missing = sent.filter((s) => !byEvent.has(s.eventId));
  if (missing.length) problems.push(`${missing.length} of ${sent.length} messages were never handled: ${missing.slice(0, 15).map((s) => s.body).join(', ')}${missing.length > 15 ? ', ...' : ''}`);

  const indexOf = new Map(sent.map((s) => [s.eventId, s.index]));
  indexOf.set(endId, sent.length);
  // Within a run, one room's events come in timeline order.
  for (const run of runs) {
    const seq = deliveries.filter((d) => d.run === run.run).map((d) => indexOf.get(d.eventId) ?? -1);
    const bad = seq.findIndex((x, i) => i > 0 && x <= seq[i - 1]!);
    if (bad > 0) problems.push(`run ${run.run} delivered out of order or twice: ...${seq.slice(Math.max(0, bad - 3), bad + 3).join(', ')}...`);
  }
  // Flags: a not-redelivered delivery is the first one; a repeat is flagged, and follows a killed run.
  const dupPerKill = new Map<number, string[]>();
  for (const [eventId, ds] of byEvent) {
    ds.forEach((d, i) => {
      if (i === 0) return;
      const prev = ds[i - 1]!;
      if (d.redelivered !== true) problems.push(`${d.body} was handled again in run ${d.run} without redelivered: true (earlier in run ${prev.run})`);
      if (Number(d.run) <= Number(prev.run)) problems.push(`${d.body} was handled twice in run ${d.run}`);
      const list = dupPerKill.get(Number(prev.run)) ?? [];
      list.push(eventId);
      dupPerKill.set(Number(prev.run), list);
    });
  }
  // What a killed run left to redo is the tail of what it had started (acknowledgements go in order).
  for (const [run, ids] of dupPerKill) {
    const started = deliveries.filter((d) => d.run === String(run)).map((d) => d.eventId);
    const tail = started.slice(started.length - ids.length);
    if (JSON.stringify([...ids].sort()) !== JSON.stringify([...tail].sort())) {
      problems.push(`run ${run}: the events handled again later (${ids.map((id) => indexOf.get(id)).join(',')}) are not the tail of what it started (...${tail.map((id) => indexOf.get(id)).join(',')})`);
    }
    if (ids.length > MAX_QUEUED) problems.push(`run ${run}: ${ids.length} events handled again, more than maxQueuedEvents (${MAX_QUEUED})`);
  }
  const replyCounts = countBy(replies, (r) => r.inReplyTo ?? '(none)');
  const wanted = [...sent.map((s) => s.eventId), endId];
  const noReply = wanted.filter((id) => !replyCounts.has(id));
  const dupReplies = wanted.filter((id) => (replyCounts.get(id) ?? 0) > 1);
  const stray = [...replyCounts.keys()].filter((k) => !indexOf.has(k));
  if (noReply.length) problems.push(`${noReply.length} messages have no reply in the room: ${noReply.slice(0, 10).map((id) => indexOf.get(id)).join(', ')}`);
  if (dupReplies.length) problems.push(`${dupReplies.length} messages have more than one reply in the room: ${dupReplies.slice(0, 10).map((id) => `m${indexOf.get(id)} x${replyCounts.get(id)}`).join(', ')}`);
  if (stray.length) problems.push(`replies to something else: ${stray.slice(0, 5).join(', ')}`);
  const badLines = lines.filter((l) => ['error', 'sendFailed', 'runFailed'].includes(l.kind));
  if (badLines.length) problems.push(`error lines: ${JSON.stringify(badLines.slice(0, 5))}`);

  // Twenty kill -9s later, the data dir is still private.
  const modes = [dataDir, ...readdirSync(dataDir).map((f) => join(dataDir, f))].map((p) => ({ p, st: statSync(p) }));
  const wrong = modes.filter(({ st }) => (st.mode & 0o777) !== (st.isDirectory() ? 0o700 : 0o600)).map(({ p, st }) => `${p}: ${(st.mode & 0o777).toString(8)}`);
  if (wrong.length) problems.push(`data dir modes after the kills: ${wrong.join(', ')}`);

  const syncErrors = lines.filter((l) => l.kind === 'syncError');
  const dupCounts = kills.map((k) => dupPerKill.get(k.run)?.length ?? 0);
  t.diagnostic(`runs: ${runs.length}; deliveries: ${deliveries.length} for ${byEvent.size} events; duplicates per kill: [${dupCounts.join(', ')}] (max ${Math.max(...dupCounts)}, total ${dupCounts.reduce((a, b) => a + b, 0)})`);
  t.diagnostic(`duplicates per kill without a 'replied' line in the killed run (handler still running) vs after it (ack not yet committed): ${kills
    .map((k) => {
      const ids = dupPerKill.get(k.run) ?? [];
      const replied = new Set(lines.filter((l) => l.run === String(k.run) && l.kind === 'replied').map((l) => l.eventId));
      return `${ids.filter((id) => !replied.has(id)).length}/${ids.filter((id) => replied.has(id)).length}`;
    })
    .join(' ')}`);
  t.diagnostic(`kills: ${kills.map((k) => `#${k.run} +${k.afterReadyMs}ms started=${k.startedInRun} replied=${k.repliedInRun} outage=${k.outage}msgs ready=${k.readyMs}ms`).join('; ')}`);
  const firstFlagged = [...byEvent.values()].filter((ds) => ds[0]!.redelivered).length;
  t.diagnostic(`redelivered-flagged deliveries: ${deliveries.filter((d) => d.redelivered).length} (of which first deliveries, never started before: ${firstFlagged}); syncErrors: ${syncErrors.length}; peer send retries: ${stream.failures()}; replies in room: ${replies.length} (expected ${expected}); total ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  assert.deepEqual(problems, []);
});

test('kill -9 with more events journaled than maxQueuedEvents: the next run becomes ready and delivers the backlog in order', { timeout: 180_000 }, async (t) => {
  const user = await hs.registerUser();
  const dataDir = mkdtempSync(join(tmpdir(), 'halcyon-kill-'));
  defer(t, () => rmSync(dataDir, { recursive: true, force: true }));
  const token = await Client.login({ homeserver: hs.baseUrl, user: user.localpart, password: user.password, dataDir });
  const peer = new Peer(hs.baseUrl, await hs.registerUser());
  const lines: BotLine[] = [];
  const env = { HC_TOKEN: token, HC_DIR: dataDir, HC_MAX_QUEUED: '20', HC_HEALTH_MS: '100' };

  // Run 0: the first handler never returns, so the stream piles up in the journal (3x maxQueuedEvents).
  const run0 = startFaultBot('0', { ...env, HC_HOLD: '1' }, lines);
  defer(t, () => run0.kill9());
  await run0.waitFor((l) => l.kind === 'ready', 'run 0 to be ready', 60_000);
  const roomId = await peer.createRoom({ invite: [user.userId] });
  await peer.waitForJoined(roomId, user.userId, 30_000);
  const sent = await startStream({ baseUrl: hs.baseUrl, accessToken: peer.user.accessToken, roomId, count: 60, perSecond: 200, prefix: 'b' }).done;
  const h = await run0.waitFor((l) => l.kind === 'health' && l.backlogEvents >= 60, 'run 0 to journal all 60 messages', 60_000);
  t.diagnostic(`run 0 before the kill: ${JSON.stringify(h)}`);
  await run0.kill9();

  const run1 = startFaultBot('1', env, lines);
  defer(t, () => run1.kill9());
  const began = Date.now();
  const ready = await run1.waitFor((l) => l.kind === 'ready', 'run 1 (60 journaled events, maxQueuedEvents 20) to be ready', 30_000).catch((e: Error) => e);
  const lastHealth = run1.lines.filter((l) => l.kind === 'health').at(-1);
  t.diagnostic(`run 1: ${ready instanceof Error ? 'never ready' : `ready after ${Date.now() - began} ms`}; last health ${JSON.stringify(lastHealth)}; lines: ${run1.lines.filter((l) => l.kind !== 'health').map((l) => l.kind).join(',')}`);
  assert.ok(!(ready instanceof Error), `run 1 never became ready: with more journaled events than maxQueuedEvents, run() hangs\n${ready instanceof Error ? ready.message : ''}`);
  const endId = await peer.sendText(roomId, 'END');
  await run1.waitFor((l) => l.kind === 'replied' && l.eventId === endId, 'run 1 to answer the end marker', 60_000);
  const got = run1.lines.filter((l) => l.kind === 'message').map((l) => l.body);
  assert.deepEqual(got, [...sent.map((s) => s.body), 'END'], 'the whole backlog, in order, then the end marker');
  await run1.stop();
});

const E2EE_MESSAGES = Number(process.env.HC_KILL_E2EE_MESSAGES ?? 150);
const E2EE_KILLS = Number(process.env.HC_KILLS_E2EE ?? 5);

test(`E2EE: kill -9 at ${E2EE_KILLS} random moments during ${E2EE_MESSAGES} encrypted messages: each decrypted and handled at least once, one encrypted reply per message`, { timeout: 300_000 }, async (t) => {
  const seed = Number(process.env.HC_FAULT_SEED ?? randomInt(2 ** 31));
  t.diagnostic(`seed ${seed}`);
  const rnd = seededRandom(seed ^ 0x5eed);
  const user = await hs.registerUser();
  const dataDir = mkdtempSync(join(tmpdir(), 'halcyon-kill-e2ee-'));
  defer(t, () => rmSync(dataDir, { recursive: true, force: true }));
  const token = await Client.login({ homeserver: hs.baseUrl, user: user.localpart, password: user.password, dataDir });
  const env = { HC_TOKEN: token, HC_DIR: dataDir, HC_ENCRYPTION: '1' };
  const lines: BotLine[] = [];
  const runs: BotProcess[] = [];
  const start = async (run: number) => {
    const b = startFaultBot(String(run), env, lines);
    runs.push(b);
    defer(t, () => b.kill9());
    await b.waitFor((l) => l.kind === 'ready', `run ${run} to be ready`, 60_000);
    return b;
  };
  let bot = await start(0);
  const peer = await startJsPeer(hs);
  defer(t, () => peer.stop());
  const roomId = await peer.createEncryptedRoom({ invite: [user.userId] });
  await peer.waitForMember(roomId, user.userId, 'join', 30_000);

  // The peer's stream, paced (js-sdk encrypts and sends one at a time).
  const sent: Array<{ body: string; eventId: string }> = [];
  const t0 = Date.now();
  const sending = (async () => {
    for (let i = 0; i < E2EE_MESSAGES; i++) {
      const due = t0 + i * 125;
      if (due > Date.now()) await new Promise((r) => setTimeout(r, due - Date.now()));
      sent.push({ body: `e${i}`, eventId: await peer.sendText(roomId, `e${i}`) });
    }
  })();
  sending.catch(() => {});
  for (let k = 0; k < E2EE_KILLS; k++) {
    const afterReadyMs = Math.round(rnd() < 0.25 ? rnd() * 150 : 300 + rnd() * 2700);
    await new Promise((r) => setTimeout(r, afterReadyMs));
    await bot.kill9();
    bot = await start(k + 1);
  }
  await sending;
  const endId = await peer.sendText(roomId, 'END');
  await bot.waitFor((l) => l.kind === 'replied' && l.eventId === endId, 'the last run to answer the end marker', 120_000);
  const wanted = [...sent.map((s) => s.eventId), endId];
  // The bot's replies as the peer decrypted them (the relation is in the clear part of an encrypted event too).
  const replies = await waitUntil(() => {
    const r = peer.messages(roomId).filter((m) => m.sender === user.userId);
    return r.length >= wanted.length ? r : undefined;
  }, 60_000, `${wanted.length} replies seen by the peer`).catch(() => peer.messages(roomId).filter((m) => m.sender === user.userId));
  await bot.stop();

  const deliveries = lines.filter((l) => l.kind === 'message');
  const problems: string[] = [];
  const seen = countBy(deliveries, (d) => d.eventId);
  const missing = sent.filter((s) => !seen.has(s.eventId));
  if (missing.length) problems.push(`${missing.length} messages never handled: ${missing.slice(0, 10).map((m) => m.body).join(', ')}`);
  if (deliveries.some((d) => !d.isEncrypted)) problems.push('a delivery was not flagged isEncrypted');
  const byEvent = new Map<string, BotLine[]>();
  for (const d of deliveries) byEvent.set(d.eventId, [...(byEvent.get(d.eventId) ?? []), d]);
  const repeats = [...byEvent.values()].filter((ds) => ds.length > 1);
  for (const ds of repeats) for (const d of ds.slice(1)) if (!d.redelivered) problems.push(`${d.body} handled again in run ${d.run} without redelivered: true`);
  const counts = countBy(replies, (r) => ((r.content['m.relates_to'] as any)?.['m.in_reply_to']?.event_id as string | undefined) ?? '(none)');
  const noReply = wanted.filter((id) => !counts.has(id));
  const dupReplies = wanted.filter((id) => (counts.get(id) ?? 0) > 1);
  if (noReply.length) problems.push(`${noReply.length} messages without a reply: ${noReply.slice(0, 5).join(', ')}`);
  if (dupReplies.length) problems.push(`${dupReplies.length} messages with more than one reply`);
  if (replies.some((r) => !r.encrypted || r.decryptionFailure)) problems.push(`replies not encrypted or not decryptable by the peer: ${replies.filter((r) => !r.encrypted || r.decryptionFailure).length}`);
  const bad = lines.filter((l) => ['error', 'sendFailed', 'runFailed'].includes(l.kind));
  if (bad.length) problems.push(`error lines: ${JSON.stringify(bad.slice(0, 5))}`);
  t.diagnostic(`runs ${runs.length}; deliveries ${deliveries.length} for ${byEvent.size} events; repeats ${repeats.length}; replies ${replies.length}/${wanted.length}`);
  assert.deepEqual(problems, []);
});

test('kill -9 x5 while replies wait in the outbox (handlers do not await them): every reply reaches the room exactly once', { timeout: 240_000 }, async (t) => {
  const seed = Number(process.env.HC_FAULT_SEED ?? randomInt(2 ** 31));
  t.diagnostic(`seed ${seed}`);
  const rnd = seededRandom(seed ^ 0x0b0c);
  const user = await hs.registerUser();
  const dataDir = mkdtempSync(join(tmpdir(), 'halcyon-kill-outbox-'));
  defer(t, () => rmSync(dataDir, { recursive: true, force: true }));
  const token = await Client.login({ homeserver: hs.baseUrl, user: user.localpart, password: user.password, dataDir });
  const env = { HC_TOKEN: token, HC_DIR: dataDir, HC_REPLY: 'nowait' };
  const peer = new Peer(hs.baseUrl, await hs.registerUser());
  const lines: BotLine[] = [];
  const start = async (run: number) => {
    const b = startFaultBot(String(run), env, lines);
    defer(t, () => b.kill9());
    await b.waitFor((l) => l.kind === 'ready', `run ${run} to be ready`, 60_000);
    return b;
  };
  let bot = await start(0);
  const roomId = await peer.createRoom({ invite: [user.userId] });
  await peer.waitForJoined(roomId, user.userId, 30_000);
  // Faster than the bot's replies go out one by one: the outbox holds a queue when the kills come.
  const stream = startStream({ baseUrl: hs.baseUrl, accessToken: peer.user.accessToken, roomId, count: 400, perSecond: 40, prefix: 'o' });
  defer(t, () => stream.stop());
  const pendingAtKill: number[] = [];
  for (let k = 0; k < 5; k++) {
    await new Promise((r) => setTimeout(r, 500 + rnd() * 2500));
    await bot.kill9();
    const mine = lines.filter((l) => l.run === String(k));
    pendingAtKill.push(mine.filter((l) => l.kind === 'message').length - mine.filter((l) => l.kind === 'replied').length);
    bot = await start(k + 1);
  }
  const sent = await stream.done;
  const endId = await peer.sendText(roomId, 'END');
  await bot.waitFor((l) => l.kind === 'replied' && l.eventId === endId, 'the last run to answer the end marker', 120_000);
  const wanted = [...sent.map((s) => s.eventId), endId];
  const replies = await waitUntil(async () => {
    const r = await repliesInRoom(hs.baseUrl, peer.user.accessToken, roomId, user.userId);
    return r.length >= wanted.length ? r : undefined;
  }, 60_000, `${wanted.length} replies in the room`).catch(() => repliesInRoom(hs.baseUrl, peer.user.accessToken, roomId, user.userId));
  await bot.stop();
  const counts = countBy(replies, (r) => r.inReplyTo ?? '(none)');
  const handled = new Set(lines.filter((l) => l.kind === 'message').map((l) => l.eventId));
  t.diagnostic(`replies started but not acknowledged at each kill: [${pendingAtKill.join(', ')}]; replies in room ${replies.length}/${wanted.length}`);
  const problems: string[] = [];
  const missing = sent.filter((s) => !handled.has(s.eventId));
  if (missing.length) problems.push(`${missing.length} messages never handled`);
  const noReply = wanted.filter((id) => !counts.has(id));
  const dupReplies = wanted.filter((id) => (counts.get(id) ?? 0) > 1);
  if (noReply.length) problems.push(`${noReply.length} messages without a reply: ${noReply.slice(0, 10).map((id) => sent.find((s) => s.eventId === id)?.body).join(', ')}`);
  if (dupReplies.length) problems.push(`${dupReplies.length} messages with more than one reply`);
  const bad = lines.filter((l) => ['error', 'sendFailed', 'runFailed', 'replyFailed'].includes(l.kind) && !(l.kind === 'replyFailed' && l.code === 'HALCYON_STOPPED'));
  if (bad.length) problems.push(`error lines: ${JSON.stringify(bad.slice(0, 5))}`);
  assert.deepEqual(problems, []);
});
