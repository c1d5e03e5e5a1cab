/**
 * Edits by the spec's rules against the real Synapse (which stores any `m.replace` relation from anyone): only
 * valid edits reach `edit` handlers; the edits the bot sends mention only the users they newly mention.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { Edit, RoomEvent } from '../../src/index.ts';
import { testHomeserver, type Homeserver } from '../harness/synapse.ts';
import { newBot, newClient, newPeer, roomWithBot, WAIT_MS, waitUntil } from './util.ts';

let hs: Homeserver;
before(async () => {
  hs = await testHomeserver();
});
after(async () => {
  await hs?.stop();
});

const replace = (eventId: string, body: string, extra: Record<string, unknown> = {}) => ({
  msgtype: 'm.text',
  body: `* ${body}`,
  'm.new_content': { msgtype: 'm.text', body },
  'm.relates_to': { rel_type: 'm.replace', event_id: eventId },
  ...extra,
});

test('received edits are validated: another sender, no m.new_content, an edit of an edit and a state event are ignored', async (t) => {
  const bot = await newBot(t, hs, { encryption: false });
  const edits: Edit[] = [];
  const all: RoomEvent[] = [];
  bot.client.on('edit', (e) => void edits.push(e));
  bot.client.on('event', (e) => void all.push(e));
  await bot.client.run(bot.token);
  const alice = await newPeer(hs);
  const mallory = await newPeer(hs);
  const roomId = await roomWithBot(alice, bot.user.userId);
  await alice.invite(roomId, mallory.userId);
  await mallory.join(roomId);
  const original = await alice.sendText(roomId, 'original');

  const forged = await mallory.sendEvent(roomId, 'm.room.message', replace(original, 'forged by mallory'));
  const noNew = await alice.sendEvent(roomId, 'm.room.message', { msgtype: 'm.text', body: '* nothing', 'm.relates_to': { rel_type: 'm.replace', event_id: original } });
  const valid = await alice.edit(roomId, original, 'edited by alice');
  const ofEdit = await alice.sendEvent(roomId, 'm.room.message', replace(valid, 'edit of an edit'));
  const asState = await alice.sendState(roomId, 'm.room.message', '', replace(original, 'a state event'));
  const last = await alice.edit(roomId, original, 'edited again');

  await waitUntil(() => all.some((e) => e.eventId === last), WAIT_MS, 'the last edit handled');
  assert.deepEqual(edits.map((e) => e.eventId), [valid, last], 'only the valid edits');
  assert.deepEqual(edits.map((e) => e.newContent.body), ['edited by alice', 'edited again']);
  for (const id of [forged, noNew, ofEdit, asState]) assert.ok(all.some((e) => e.eventId === id), `${id} still reached event handlers`);
});

test('an edit the bot sends mentions at top level only the users it newly mentions; m.new_content has them all', async (t) => {
  const bot = await newBot(t, hs, { encryption: false });
  await bot.client.run(bot.token);
  const alice = await newPeer(hs);
  const bob = await newPeer(hs);
  const roomId = await roomWithBot(alice, bot.user.userId);
  const sent = await bot.client.sendMessage(roomId, 'hi alice', { mentions: [alice.userId] });
  const first = await bot.client.editMessage(roomId, sent, 'hi alice and bob', { mentions: [alice.userId, bob.userId] });
  const second = await bot.client.editMessage(roomId, sent, 'hi alice and bob!', { mentions: [alice.userId, bob.userId] });
  const e1 = await alice.waitFor((e) => e.event_id === first, WAIT_MS);
  assert.deepEqual(e1.content['m.mentions'], { user_ids: [bob.userId] }, 'only bob is new');
  assert.deepEqual(e1.content['m.new_content']['m.mentions'], { user_ids: [alice.userId, bob.userId] });
  const e2 = await alice.waitFor((e) => e.event_id === second, WAIT_MS);
  assert.deepEqual(e2.content['m.mentions'], {}, 'nobody new');

  // After a restart the bot's memory of it is gone: the server's copy (with its latest edit bundled) tells.
  await bot.client.stop();
  const carol = await newPeer(hs);
  const client = newClient(t, bot.dataDir, { encryption: false });
  await client.run(bot.token);
  const third = await client.editMessage(roomId, sent, 'hi all', { mentions: [alice.userId, bob.userId, carol.userId] });
  const e3 = await alice.waitFor((e) => e.event_id === third, WAIT_MS);
  assert.deepEqual(e3.content['m.mentions'], { user_ids: [carol.userId] }, 'only carol is new since the latest edit');
});
