/**
 * Conversations (`ctx.ask`) against Synapse: an answer by reaction to offered choices, by the next message in
 * the question's thread (others' messages do not count), a coded timeout, and the room going on while a question
 * waits.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { HalcyonError } from '../../src/index.ts';
import { testHomeserver, type Homeserver } from '../harness/synapse.ts';
import { threadOf, watch } from './toolkit-util.ts';
import { newBot, newPeer, roomWithBot, WAIT_MS, waitUntil } from './util.ts';

let hs: Homeserver;
before(async () => {
  hs = await testHomeserver();
});
after(async () => {
  await hs?.stop();
});

test('ask: a reaction with an offered choice answers, in a thread the question started; the room goes on meanwhile', async (t) => {
  const bot = await newBot(t, hs);
  const answers: unknown[] = [];
  bot.client
    .commands()
    .add('deploy', async (ctx) => {
      const a = await ctx.ask('Which environment?', { choices: ['🧪', '🚀'], thread: true, timeoutMs: 60_000 });
      answers.push({ choice: a.choice, text: a.text, byReaction: a.reaction !== null });
      await ctx.reply(`deploying to ${a.choice === '🚀' ? 'production' : 'staging'}`);
    })
    .add('ping', (ctx) => ctx.reply('pong'));
  await bot.client.run(bot.token);
  const peer = await newPeer(hs);
  const roomId = await roomWithBot(peer, bot.user.userId);
  const seen = watch(t, peer);
  const botId = bot.user.userId;

  const cmd = await peer.sendText(roomId, '!deploy');
  const question = await seen.answer(botId, cmd);
  assert.equal(question.content.body, 'Which environment?');
  assert.equal(threadOf(question), cmd, 'thread: true starts a thread at the command');
  assert.deepEqual(question.content['m.mentions'], { user_ids: [peer.userId] });
  // The bot offers the choices as its own reactions.
  for (const key of ['🧪', '🚀']) {
    await seen.waitFor((e) => e.sender === botId && e.type === 'm.reaction' && e.content['m.relates_to']?.event_id === question.event_id && e.content['m.relates_to']?.key === key, `the offered ${key}`);
  }
  // While the question waits, the room's next command runs (the lane was let go).
  assert.equal((await seen.answer(botId, await peer.sendText(roomId, '!ping'))).content.body, 'pong');
  // The asked person's reaction with an offered key answers.
  await peer.react(roomId, question.event_id, '🚀');
  const done = await seen.waitFor((e) => e.sender === botId && e.content.body?.startsWith('deploying'), 'the answer to the choice');
  assert.equal(done.content.body, 'deploying to production');
  assert.equal(threadOf(done), cmd, 'later replies stay in the thread');
  assert.deepEqual(answers, [{ choice: '🚀', text: '🚀', byReaction: true }]);
});

test("ask: the asked person's next message in the thread answers; others' and main-timeline messages do not", async (t) => {
  const bot = await newBot(t, hs);
  bot.client.commands().add('name', async (ctx) => {
    const a = await ctx.ask('What is your name?', { thread: true });
    await ctx.reply(`hello ${a.text}`);
  });
  await bot.client.run(bot.token);
  const peer = await newPeer(hs);
  const other = await newPeer(hs);
  const roomId = await roomWithBot(peer, bot.user.userId);
  await peer.invite(roomId, other.userId);
  await other.join(roomId);
  const seen = watch(t, peer);
  const botId = bot.user.userId;

  const cmd = await peer.sendText(roomId, '!name');
  const question = await seen.answer(botId, cmd);
  const inThread = (body: string) => ({ msgtype: 'm.text', body, 'm.relates_to': { rel_type: 'm.thread', event_id: cmd, is_falling_back: true, 'm.in_reply_to': { event_id: question.event_id } } });
  await other.sendEvent(roomId, 'm.room.message', inThread('Mallory'));
  await peer.sendText(roomId, 'Eve (main timeline)');
  await peer.sendEvent(roomId, 'm.room.message', inThread('Alice'));
  const hello = await seen.waitFor((e) => e.sender === botId && e.content.body?.startsWith('hello'), 'the greeting');
  assert.equal(hello.content.body, 'hello Alice');
  assert.equal(threadOf(hello), cmd);
});

test('ask: no answer within timeoutMs rejects with HALCYON_ASK_TIMEOUT; uncaught, the router says so in a notice', async (t) => {
  const bot = await newBot(t, hs);
  const errors: HalcyonError[] = [];
  bot.client
    .commands()
    .add('quiz', async (ctx) => {
      try {
        await ctx.ask('2 + 2?', { timeoutMs: 500 });
      } catch (err) {
        errors.push(err as HalcyonError);
        await ctx.reply('too slow');
      }
    })
    .add('quiz2', (ctx) => ctx.ask('3 + 3?', { timeoutMs: 500 }));
  await bot.client.run(bot.token);
  const peer = await newPeer(hs);
  const roomId = await roomWithBot(peer, bot.user.userId);
  const seen = watch(t, peer);
  const botId = bot.user.userId;

  const cmd = await peer.sendText(roomId, '!quiz');
  await seen.waitFor((e) => e.sender === botId && e.content.body === 'too slow', 'the timeout reply');
  assert.equal(errors[0]?.code, 'HALCYON_ASK_TIMEOUT');
  assert.equal(errors[0]?.roomId, roomId);
  assert.ok((await seen.answer(botId, cmd)).content.body === '2 + 2?');

  const cmd2 = await peer.sendText(roomId, '!quiz2');
  const notice = await seen.waitFor((e) => e.sender === botId && e.content.msgtype === 'm.notice' && e.content['m.relates_to']?.['m.in_reply_to']?.event_id === cmd2, 'the notice');
  assert.equal(notice.content.body, 'Sorry, !quiz2 did not finish: no answer came in time.');
  await waitUntil(() => bot.errors.find((e) => e.code === 'HALCYON_HANDLER_FAILED' && e.eventId === cmd2), WAIT_MS, 'the handler failure');
});

test('ask: bad options are refused with HALCYON_INVALID_ARGUMENT; stopping the client ends a waiting question with HALCYON_STOPPED', async (t) => {
  const bot = await newBot(t, hs);
  const outcomes: string[] = [];
  bot.client.commands().add('q', async (ctx) => {
    for (const bad of [{ timeoutMs: 0 }, { timeoutMs: 2 * 86_400_000 }, { choices: [''] }, { from: 'nobody' }]) {
      await ctx.ask('?', bad).then(
        () => outcomes.push('answered'),
        (e: HalcyonError) => outcomes.push(e.code),
      );
    }
    await ctx.ask('waiting', { timeoutMs: 600_000 }).catch((e: HalcyonError) => outcomes.push(e.code));
  });
  await bot.client.run(bot.token);
  const peer = await newPeer(hs);
  const roomId = await roomWithBot(peer, bot.user.userId);
  const seen = watch(t, peer);
  await seen.answer(bot.user.userId, await peer.sendText(roomId, '!q'));
  await bot.client.stop();
  await waitUntil(() => outcomes.length === 5, WAIT_MS, 'every outcome');
  assert.deepEqual(outcomes, ['HALCYON_INVALID_ARGUMENT', 'HALCYON_INVALID_ARGUMENT', 'HALCYON_INVALID_ARGUMENT', 'HALCYON_INVALID_ARGUMENT', 'HALCYON_STOPPED']);
});
