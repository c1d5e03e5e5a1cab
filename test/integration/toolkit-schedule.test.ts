/**
 * Scheduled messages (`client.schedule`) against Synapse, in both modes: the local schedule (the shared test
 * homeserver offers no delayed events) surviving a restart of the bot, and MSC4140 delayed events on a Synapse
 * started with `max_event_delay_duration`, sent by the server while the bot is down. Cancelling, bad input, and
 * encrypted rooms (always local).
 */
import assert from 'node:assert/strict';
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { after, before, test } from 'node:test';
import type { HalcyonError } from '../../src/index.ts';
import { startSynapse, testHomeserver, type Homeserver } from '../harness/synapse.ts';
import { newJsPeer } from '../harness/js-peer.ts';
import { watch } from './toolkit-util.ts';
import { defer, newBot, newClient, newPeer, roomWithBot, WAIT_MS, waitUntil } from './util.ts';

let hs: Homeserver;
before(async () => {
  hs = await testHomeserver();
});
after(async () => {
  await hs?.stop();
});

test('local schedule: an entry outlives the client that made it and goes out once, from the next run; a cancelled one never does', async (t) => {
  const bot = await newBot(t, hs);
  await bot.client.run(bot.token);
  const peer = await newPeer(hs);
  const roomId = await roomWithBot(peer, bot.user.userId);
  const seen = watch(t, peer);

  const cancelled = await bot.client.schedule(roomId, 'never sent', { inMs: 1_000 });
  const kept = await bot.client.schedule(roomId, { msgtype: 'm.notice', body: 'after the restart' }, { at: new Date(Date.now() + 4_000) });
  assert.equal(kept.mode, 'local');
  assert.equal(kept.roomId, roomId);
  assert.match(kept.id, /^local:/);
  assert.equal(statSync(join(bot.dataDir, 'schedule.sqlite')).mode & 0o777, 0o600);
  assert.equal(await bot.client.cancelScheduled(cancelled.id), true);
  assert.equal(await bot.client.cancelScheduled(cancelled.id), false, 'a second cancel finds nothing');
  await bot.client.stop();
  // Still due when the first client stopped: the next run must send it.
  const db = new DatabaseSync(join(bot.dataDir, 'schedule.sqlite'), { readOnly: true });
  assert.deepEqual(db.prepare('SELECT id FROM scheduled').all().map((r) => r.id), [kept.id]);
  db.close();

  // A new process on the same data dir: nothing but the file knows the entry.
  const again = newClient(t, bot.dataDir);
  await again.run(bot.token);
  const sent = await seen.waitFor((e) => e.sender === bot.user.userId && e.content.body === 'after the restart', 'the scheduled message');
  assert.equal(sent.content.msgtype, 'm.notice');
  // Sent once, and the entry is gone: cancelling it now finds nothing.
  await waitUntil(async () => (await again.cancelScheduled(kept.id)) === false, WAIT_MS, 'the entry removed after its send');
  await again.sendMessage(roomId, 'marker');
  await seen.waitFor((e) => e.sender === bot.user.userId && e.content.body === 'marker', 'the marker');
  assert.deepEqual(
    seen.events.filter((e) => e.sender === bot.user.userId && e.type === 'm.room.message').map((e) => e.content.body),
    ['after the restart', 'marker'],
  );
});

test('schedule: bad input is refused with HALCYON_INVALID_ARGUMENT, and a stopped client with HALCYON_NOT_RUNNING', async (t) => {
  const bot = await newBot(t, hs);
  const peer = await newPeer(hs);
  await assert.rejects(bot.client.schedule('!r:localhost', 'x', { inMs: 10 }), { code: 'HALCYON_NOT_RUNNING' });
  await assert.rejects(bot.client.cancelScheduled('local:x'), { code: 'HALCYON_NOT_RUNNING' });
  await bot.client.run(bot.token);
  const roomId = await roomWithBot(peer, bot.user.userId);
  for (const opts of [{}, { inMs: 1, at: Date.now() }, { inMs: -1 }, { at: Number.NaN }, { at: new Date('nonsense') }] as const) {
    await assert.rejects(bot.client.schedule(roomId, 'x', opts), { code: 'HALCYON_INVALID_ARGUMENT' }, JSON.stringify(opts));
  }
  await assert.rejects(bot.client.schedule('not a room', 'x', { inMs: 10 }), { code: 'HALCYON_INVALID_ARGUMENT' });
  await assert.rejects(bot.client.schedule(roomId, { body: 'no msgtype' }, { inMs: 10 }), { code: 'HALCYON_INVALID_ARGUMENT' });
  await assert.rejects(bot.client.cancelScheduled('whatever'), { code: 'HALCYON_INVALID_ARGUMENT' });
  assert.equal(existsSync(join(bot.dataDir, 'schedule.sqlite')), false, 'nothing was stored');
});

test('server schedule (MSC4140): a delayed event goes out while the bot is down; cancel works; encrypted rooms stay local', async (t) => {
  const own = await startSynapse({ config: { max_event_delay_duration: '1h' } });
  defer(t, () => own.stop());
  const bot = await newBot(t, own);
  await bot.client.run(bot.token);
  const peer = await newPeer(own);
  const roomId = await roomWithBot(peer, bot.user.userId);
  const seen = watch(t, peer);

  const cancelled = await bot.client.schedule(roomId, 'never sent', { inMs: 1_500 });
  const kept = await bot.client.schedule(roomId, 'from the server', { inMs: 2_000 });
  assert.equal(kept.mode, 'server');
  assert.match(kept.id, /^server:./);
  assert.equal(await bot.client.cancelScheduled(cancelled.id), true);
  assert.equal(await bot.client.cancelScheduled(cancelled.id), false);
  const local = await bot.client.schedule(roomId, 'kept here', { inMs: 3_600_000, mode: 'local' });
  assert.equal(local.mode, 'local');
  assert.equal(await bot.client.cancelScheduled(local.id), true);
  // Longer than the server allows: local.
  const tooLong = await bot.client.schedule(roomId, 'too far', { inMs: 2 * 3_600_000 });
  assert.equal(tooLong.mode, 'local');
  assert.equal(await bot.client.cancelScheduled(tooLong.id), true);

  const encRoom = await peer.createRoom({ invite: [bot.user.userId], encrypted: true });
  await bot.client.waitForRoom(encRoom);
  const enc = await bot.client.schedule(encRoom, 'secret', { inMs: 3_600_000 });
  assert.equal(enc.mode, 'local', 'an encrypted room is encrypted at send time');
  assert.equal(await bot.client.cancelScheduled(enc.id), true);

  const later = await bot.client.schedule(roomId, 'cancelled by the next run', { inMs: 600_000 });
  assert.equal(later.mode, 'server');

  await bot.client.stop();
  const sent = await seen.waitFor((e) => e.sender === bot.user.userId && e.content.body === 'from the server', 'the delayed event');
  assert.equal(sent.room_id, roomId);
  assert.equal(seen.events.some((e) => e.content?.body === 'never sent'), false);
  assert.deepEqual(bot.errors as HalcyonError[], []);

  // The ID outlives the client that made it: the next run cancels the server's entry by it.
  const again = newClient(t, bot.dataDir);
  await again.run(bot.token);
  assert.equal(await again.cancelScheduled(later.id), true);
  assert.equal(await again.cancelScheduled(later.id), false);
});

test('local schedule in an encrypted room: the message is encrypted when it is sent, and a matrix-js-sdk member reads it', async (t) => {
  const bot = await newBot(t, hs);
  await bot.client.run(bot.token);
  const alice = await newJsPeer(t, hs);
  const roomId = await alice.createEncryptedRoom({ invite: [bot.user.userId] });
  await alice.waitForMember(roomId, bot.user.userId, 'join');
  await bot.client.waitForRoom(roomId);
  const s = await bot.client.schedule(roomId, 'a secret, later', { inMs: 500 });
  assert.equal(s.mode, 'local');
  const m = await alice.waitForMessage(roomId, (x) => x.sender === bot.user.userId && x.body === 'a secret, later', WAIT_MS);
  assert.equal(m.encrypted, true);
});
