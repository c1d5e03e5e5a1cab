/**
 * The command bot of examples/command-bot.ts again, built on the toolkit (`client.commands`): typed arguments,
 * permissions from the room's power levels, a generated `!help` that shows each person what they may run,
 * cooldowns, a question answered by a reaction (`ctx.ask`), replies in threads, and reminders sent later
 * (`client.schedule`, kept by the server or in the data dir across restarts). Try it: `npm run example -- toolkit`.
 *
 * To use it for real: copy this file, import from 'halcyon-matrix' instead of '../src/index.ts', and run it with
 * a token from `npx halcyon login --out bot.token` (see `main` at the bottom).
 */
import { readFileSync } from 'node:fs';
import { Client, type CommandRouter } from '../src/index.ts';

/** Registers the bot's commands on `client`; returns the router (to add more, or `close()` it). */
export function toolkitBot(client: Client): CommandRouter {
  return (
    client
      .commands({ prefix: '!' })
      // `[dice]` is optional: ctx.args.dice is a string or undefined. A cooldown per user keeps dice storms down.
      .add('roll [dice]', { help: 'roll dice, e.g. !roll 2d6', cooldownMs: 2_000 }, (ctx) => ctx.reply(roll(ctx.args.dice ?? '1d6')))
      // `userId` takes a user ID or a mention (a pill): ctx.args.user is always a user ID.
      .add('whois <user:userId>', { help: "someone's display name and power level" }, async (ctx) => {
        const profile = await ctx.client.getProfile(ctx.args.user).catch(() => null);
        const level = (await ctx.room.info())?.powerLevel(ctx.args.user) ?? 0;
        await ctx.reply(`${ctx.args.user}: ${profile?.displayName ?? 'no display name'}, ${level === Infinity ? 'a creator of the room' : `power level ${level}`}`);
      })
      // Only senders who may kick that user may ask (checked before the handler runs); the bot must be able to too.
      .add('kick <user:userId> [reason...]', { power: 'kick', help: 'kick someone (moderators)' }, async (ctx) => {
        const room = await ctx.room.info();
        if (!room?.can(ctx.client.whoami().userId, { kind: 'kick', target: ctx.args.user })) return void (await ctx.reply(`I may not kick ${ctx.args.user} here.`));
        await ctx.client.kickUser(ctx.roomId, ctx.args.user, ctx.args.reason ?? `asked by ${ctx.sender}`);
        await ctx.reply(`Kicked ${ctx.args.user}.`);
      })
      // A duration argument arrives in ms. The reminder survives a restart of the bot.
      .add('remind <in:duration> <text...>', { help: 'remind you later, e.g. !remind 10m tea', cooldownMs: 5_000 }, async (ctx) => {
        const content = { msgtype: 'm.text', body: `${ctx.sender}: ${ctx.args.text}`, 'm.mentions': { user_ids: [ctx.sender] } };
        const s = await ctx.client.schedule(ctx.roomId, content, { inMs: ctx.args.in });
        await ctx.reply(`I will remind you at ${new Date(s.at).toISOString()}.`);
      })
      // A question in a thread, answered by reacting with one of the offered keys (or typing it).
      .add('deploy', { power: 50, help: 'deploy, after asking where (power 50)' }, async (ctx) => {
        const answer = await ctx.ask('Where to? React with 🧪 for staging or 🚀 for production.', { choices: ['🧪', '🚀'], thread: true, timeoutMs: 120_000 });
        await ctx.reply(answer.choice === '🚀' ? 'Deploying to production.' : answer.choice === '🧪' ? 'Deploying to staging.' : `"${answer.text}" is not a place I know.`);
      })
  );
}

/** `NdM` dice, e.g. `2d6` → "2d6: 3 + 5 = 8". */
function roll(spec: string): string {
  const m = /^(\d{1,2})d(\d{1,3})$/.exec(spec);
  if (!m) return `I roll dice like 2d6, not "${spec}"`;
  const dice = Array.from({ length: Number(m[1]) }, () => 1 + Math.floor(Math.random() * Number(m[2])));
  return `${spec}: ${dice.join(' + ')} = ${dice.reduce((a, b) => a + b, 0)}`;
}

/** Runs the bot standalone: `node --import tsx examples/toolkit-bot.ts bot.token ./bot-data`. */
async function main(tokenFile: string, dataDir: string): Promise<void> {
  const client = new Client({ dataDir });
  toolkitBot(client);
  process.once('SIGINT', () => void client.stop());
  await client.run(readFileSync(tokenFile, 'utf8').trim());
  process.stdout.write(`toolkit bot running as ${client.whoami().userId}\n`);
}

if (import.meta.main) await main(process.argv[2] ?? 'bot.token', process.argv[3] ?? './bot-data');
