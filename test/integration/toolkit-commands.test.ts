/**
 * The command router (`client.commands`) against Synapse: permissions by power level and allow-list, argument
 * errors and pills, the generated help, cooldowns, mentions of the bot as a trigger, threads, and a failing handler.
 */
import assert from 'node:assert/strict';
import { after, before, test, type TestContext } from 'node:test';
import type { CommandContext } from '../../src/index.ts';
import { testHomeserver, type Homeserver } from '../harness/synapse.ts';
import { type Timeline, threadOf, watch } from './toolkit-util.ts';
import { newBot, newPeer, roomWithBot, WAIT_MS, waitUntil } from './util.ts';

let hs: Homeserver;
before(async () => {
  hs = await testHomeserver();
});
after(async () => {
  await hs?.stop();
});

/** A running bot with a router, a room made by `mod` (power 100) with `user` (power 0) in it, and mod's view. */
async function setUp(t: TestContext, add: (router: ReturnType<import('../../src/index.ts').Client['commands']>) => void) {
  const bot = await newBot(t, hs);
  const router = bot.client.commands({ prefix: '!' });
  add(router);
  await bot.client.run(bot.token);
  const mod = await newPeer(hs);
  const user = await newPeer(hs);
  const roomId = await roomWithBot(mod, bot.user.userId);
  await mod.invite(roomId, user.userId);
  await user.join(roomId);
  // The bot's cache must know user's membership before permission checks name them.
  await waitUntil(async () => (await bot.client.getRoom(roomId))?.member(user.userId)?.membership === 'join', WAIT_MS, 'user joined, as the bot sees it');
  const seen: Timeline = watch(t, mod);
  const botId = bot.user.userId;
  return { bot, router, mod, user, roomId, seen, botId };
}

test('permissions: a power-gated command is refused with a notice below its level and runs at it; help lists only what the sender may run', async (t) => {
  const kicked: string[] = [];
  const vip: string[] = [];
  const { bot, mod, user, roomId, seen, botId } = await setUp(t, (r) =>
    r
      .add('kick <target:userId> [reason...]', { power: 'kick', help: 'kick someone' }, async (ctx) => {
        kicked.push(ctx.args.target);
        await ctx.reply(`would kick ${ctx.args.target} (${ctx.args.reason ?? 'no reason'})`);
      })
      .add('level <n:int>', { power: 50, help: 'moderators only' }, (ctx) => ctx.reply(`level ${ctx.args.n + 1}`))
      .add('vip', { allow: vip }, (ctx) => ctx.reply('welcome, VIP'))
      .add('roll [sides:int]', { help: 'roll a die' }, (ctx) => ctx.reply(`rolled ${ctx.args.sides ?? 6}`)),
  );

  vip.push(user.userId); // the allow-list is read at each command
  const refused = await seen.answer(botId, await user.sendText(roomId, `!kick ${mod.userId} bye`));
  assert.equal(refused.content.msgtype, 'm.notice');
  assert.match(refused.content.body, /You may not run !kick here \(it needs the power to kick\)/);
  const low = await seen.answer(botId, await user.sendText(roomId, '!level 1'));
  assert.match(low.content.body, /it needs power level 50/);
  assert.deepEqual(kicked, [], 'a refused handler never runs');

  const helpUser = await seen.answer(botId, await user.sendText(roomId, '!help'));
  assert.equal(helpUser.content.msgtype, 'm.notice');
  assert.equal(helpUser.content.body, 'Commands you may run here:\n!vip\n!roll [sides:int] — roll a die');
  const helpMod = await seen.answer(botId, await mod.sendText(roomId, '!help'));
  assert.equal(helpMod.content.body, 'Commands you may run here:\n!kick <target:userId> [reason...] — kick someone\n!level <n:int> — moderators only\n!roll [sides:int] — roll a die');
  const vipRefused = await seen.answer(botId, await mod.sendText(roomId, '!vip'));
  assert.match(vipRefused.content.body, /only some users may/);

  const ok = await seen.answer(botId, await mod.sendText(roomId, `!kick ${user.userId} being loud`));
  assert.equal(ok.content.body, `would kick ${user.userId} (being loud)`);
  assert.deepEqual(ok.content['m.mentions'], { user_ids: [mod.userId] });
  // Promoted to 50: level runs, but kicking the room's creator (above every level) is refused: the target counts.
  await mod.request('PUT', `/rooms/${encodeURIComponent(roomId)}/state/m.room.power_levels/`, {
    ...(await mod.request('GET', `/rooms/${encodeURIComponent(roomId)}/state/m.room.power_levels/`)),
    users: { [user.userId]: 50 },
  });
  await waitUntil(async () => (await bot.client.getRoom(roomId))?.powerLevel(user.userId) === 50, WAIT_MS, 'the new power levels, as the bot sees them');
  const promoted = await seen.answer(botId, await user.sendText(roomId, '!level 41'), WAIT_MS);
  assert.equal(promoted.content.body, 'level 42');
  const upward = await seen.answer(botId, await user.sendText(roomId, `!kick ${mod.userId}`));
  assert.match(upward.content.body, /You may not run !kick/);
  assert.deepEqual(kicked, [user.userId]);
});

test('arguments: type errors and missing arguments answer with the usage; pills and quoted strings are read', async (t) => {
  const got: unknown[] = [];
  const { bot, mod, user, roomId, seen, botId } = await setUp(t, (r) =>
    r.add('greet <who:userId> <times:int> [words...]', (ctx) => void got.push(ctx.args)).add('say <a> <b>', (ctx) => ctx.reply(`${ctx.args.a}|${ctx.args.b}`)),
  );
  const bad = await seen.answer(botId, await mod.sendText(roomId, '!greet bob 2'));
  assert.equal(bad.content.msgtype, 'm.notice');
  assert.equal(bad.content.body, '<who:userId> must be a user ID (@name:server) or a mention, not "bob". Usage: !greet <who:userId> <times:int> [words...]');
  const missing = await seen.answer(botId, await mod.sendText(roomId, `!greet ${user.userId}`));
  assert.match(missing.content.body, /^missing <times:int>\. Usage: /);
  const unclosed = await seen.answer(botId, await mod.sendText(roomId, '!say "a b'));
  assert.match(unclosed.content.body, /a quote is not closed/);

  // A pill as Element sends it: the display name in the body, the user in m.mentions and the HTML link.
  await user.request('PUT', `/rooms/${encodeURIComponent(roomId)}/state/m.room.member/${encodeURIComponent(user.userId)}`, { membership: 'join', displayname: 'Bob Builder' });
  await waitUntil(async () => (await bot.client.getRoom(roomId))?.member(user.userId)?.displayName === 'Bob Builder', WAIT_MS, "user's display name, as the bot sees it");
  const quoted = await seen.answer(botId, await mod.sendText(roomId, `!say "two words" 'it\\'s'`));
  assert.equal(quoted.content.body, "two words|it's");
  await mod.sendEvent(roomId, 'm.room.message', {
    msgtype: 'm.text',
    body: '!greet Bob Builder 3 hello there',
    format: 'org.matrix.custom.html',
    formatted_body: `!greet <a href="https://matrix.to/#/${user.userId}">Bob Builder</a> 3 hello there`,
    'm.mentions': { user_ids: [user.userId] },
  });
  await waitUntil(() => got.length === 1, WAIT_MS, 'greet ran');
  assert.deepEqual(got[0], { who: user.userId, times: 3, words: 'hello there' });
});

test('cooldowns: per user and per room; a storm gets one notice per window, not one per message', async (t) => {
  let pings = 0;
  let rooms = 0;
  const { mod, user, roomId, seen, botId } = await setUp(t, (r) =>
    r
      .add('ping', { cooldownMs: 600_000 }, (ctx) => ctx.reply(`pong ${++pings}`))
      .add('weather', { roomCooldownMs: 600_000 }, (ctx) => ctx.reply(`sunny ${++rooms}`))
      .add('echo <text...>', (ctx) => ctx.reply(ctx.args.text)),
  );
  assert.equal((await seen.answer(botId, await mod.sendText(roomId, '!ping'))).content.body, 'pong 1');
  const cooling = await seen.answer(botId, await mod.sendText(roomId, '!ping'));
  assert.match(cooling.content.body, /^!ping is cooling down: try again in \d+ s\.$/);
  const third = await mod.sendText(roomId, '!ping');
  // Per user: another user's ping runs.
  assert.equal((await seen.answer(botId, await user.sendText(roomId, '!ping'))).content.body, 'pong 2');
  // Per room: the second weather, from anyone, is refused.
  assert.equal((await seen.answer(botId, await mod.sendText(roomId, '!weather'))).content.body, 'sunny 1');
  assert.match((await seen.answer(botId, await user.sendText(roomId, '!weather'))).content.body, /cooling down/);
  // Answers go out in command order: once this one is there, none for the third ping will follow.
  await seen.answer(botId, await mod.sendText(roomId, '!echo done'));
  assert.equal(seen.events.filter((e) => e.content?.['m.relates_to']?.['m.in_reply_to']?.event_id === third).length, 0);
  assert.equal(pings, 2);
});

test('a message starting with a mention of the bot is a command without the prefix; an unknown one is answered then', async (t) => {
  const { bot, mod, roomId, seen, botId } = await setUp(t, (r) => r.add('ping', (ctx) => ctx.reply('pong')));
  await bot.client.setDisplayName('Halcyon Bot');
  await waitUntil(async () => (await bot.client.getRoom(roomId))?.member(botId)?.displayName === 'Halcyon Bot', WAIT_MS, "the bot's display name in the room");
  const pill = (body: string, html: string) =>
    mod.sendEvent(roomId, 'm.room.message', { msgtype: 'm.text', body, format: 'org.matrix.custom.html', formatted_body: html, 'm.mentions': { user_ids: [botId] } });
  const a = await seen.answer(botId, await pill('Halcyon Bot: ping', `<a href="https://matrix.to/#/${botId}">Halcyon Bot</a>: ping`));
  assert.equal(a.content.body, 'pong');
  const b = await seen.answer(botId, await pill(`${botId} !ping`, `${botId} !ping`));
  assert.equal(b.content.body, 'pong');
  const unknown = await seen.answer(botId, await pill('Halcyon Bot, dance', 'Halcyon Bot, dance'));
  assert.equal(unknown.content.body, 'I know no command "dance". Try !help.');
  // Mentioned, but not at the start: not a command (the echo below is answered; "ping" in the middle is not).
  const mid = await pill('ask Halcyon Bot: ping', 'ask Halcyon Bot: ping');
  await seen.answer(botId, await mod.sendText(roomId, '!ping'));
  assert.equal(seen.events.filter((e) => e.content?.['m.relates_to']?.['m.in_reply_to']?.event_id === mid).length, 0);
});

test('threads: a command from a thread is answered there, { thread: true } starts one; a failing handler gets a notice and an error event', async (t) => {
  const { bot, mod, roomId, seen, botId } = await setUp(t, (r) =>
    r
      .add('here', (ctx: CommandContext<unknown>) => ctx.reply('here'))
      .add('start', async (ctx) => {
        await ctx.reply('in a new thread', { thread: true });
        await ctx.reply('still there');
        await ctx.reply('main timeline', { thread: false });
      })
      .add('boom', () => {
        throw new Error('kaboom');
      }),
  );
  const root = await mod.sendText(roomId, 'a thread root');
  const inThread = await mod.sendEvent(roomId, 'm.room.message', { msgtype: 'm.text', body: '!here', 'm.relates_to': { rel_type: 'm.thread', event_id: root, is_falling_back: true, 'm.in_reply_to': { event_id: root } } });
  assert.equal(threadOf(await seen.answer(botId, inThread)), root);

  const start = await mod.sendText(roomId, '!start');
  const first = await seen.answer(botId, start);
  assert.equal(first.content.body, 'in a new thread');
  assert.equal(threadOf(first), start);
  const second = await seen.waitFor((e) => e.sender === botId && e.content.body === 'still there', 'the second reply');
  assert.equal(threadOf(second), start);
  const third = await seen.waitFor((e) => e.sender === botId && e.content.body === 'main timeline', 'the third reply');
  assert.equal(threadOf(third), undefined);

  const boom = await mod.sendEvent(roomId, 'm.room.message', { msgtype: 'm.text', body: '!boom', 'm.relates_to': { rel_type: 'm.thread', event_id: root, is_falling_back: true, 'm.in_reply_to': { event_id: root } } });
  const sorry = await seen.answer(botId, boom);
  assert.equal(sorry.content.msgtype, 'm.notice');
  assert.equal(sorry.content.body, 'Sorry, !boom did not finish: it failed (an error).');
  assert.equal(threadOf(sorry), root);
  const failed = await waitUntil(() => bot.errors.find((e) => e.code === 'HALCYON_HANDLER_FAILED'), WAIT_MS, 'the error event');
  assert.equal(failed.eventId, boom);
  assert.match(failed.message, /kaboom/);
});

test('where and who: dm-only and never-in-dm commands, a rooms list, admins above every level, a custom prefix without help', async (t) => {
  const bot = await newBot(t, hs);
  const admin = await newPeer(hs);
  const only: string[] = [];
  bot.client
    .commands({ prefix: '?', help: false, admins: [admin.userId] })
    .add('secret', { dm: true }, (ctx) => ctx.reply('psst'))
    .add('announce', { dm: false, power: 100 }, (ctx) => ctx.reply('hear ye'))
    .add('local', { rooms: only }, (ctx) => ctx.reply('here I am'));
  await bot.client.run(bot.token);
  const botId = bot.user.userId;
  const peer = await newPeer(hs);
  const dm = await roomWithBot(peer, botId);
  const group = await roomWithBot(peer, botId);
  await peer.invite(group, admin.userId);
  await admin.join(group);
  await waitUntil(async () => (await bot.client.getRoom(group))?.joinedMemberCount === 3, WAIT_MS, 'three members in the group, as the bot sees it');
  only.push(group);
  const seen = watch(t, peer);

  assert.equal((await seen.answer(botId, await peer.sendText(dm, '?secret'))).content.body, 'psst');
  assert.equal((await seen.answer(botId, await peer.sendText(group, '?secret'))).content.body, '?secret works only in a direct chat with me.');
  assert.equal((await seen.answer(botId, await peer.sendText(dm, '?announce'))).content.body, '?announce does not work in a direct chat.');
  assert.equal((await seen.answer(botId, await peer.sendText(dm, '?local'))).content.body, '?local is not available in this room.');
  assert.equal((await seen.answer(botId, await peer.sendText(group, '?local'))).content.body, 'here I am');
  // The room's creator has every level; the admin has power 0 here but is an admin of the bot.
  assert.equal((await seen.answer(botId, await admin.sendText(group, '?announce'))).content.body, 'hear ye');
  // No help command, and the prefix is "?": "!help" and "?help" are nobody's business (the echo shows the order).
  const helps = [await peer.sendText(group, '?help'), await peer.sendText(group, '!local')];
  assert.equal((await seen.answer(botId, await peer.sendText(group, '?local'))).content.body, 'here I am');
  assert.equal(seen.events.filter((e) => helps.includes(e.content?.['m.relates_to']?.['m.in_reply_to']?.event_id)).length, 0);
});
