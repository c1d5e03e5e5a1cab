/**
 * A command bot: `!help`, `!roll 2d6`, `!whois @user:server` (or a pill), and `!kick @user:server reason`, which
 * only works for senders whose power level allows kicking (checked from the bot's cached room state, not by
 * trying). Notices from other bots never reach it. Try it: `npm run example -- command`.
 *
 * To use it for real: copy this file, import from 'halcyon-matrix' instead of '../src/index.ts', and run it with
 * a token from `npx halcyon login --out bot.token` (see `main` at the bottom).
 */
import { readFileSync } from 'node:fs';
import { Client, type Message } from '../src/index.ts';

/** Registers the command bot's handlers on `client`. */
export function commandBot(client: Client): void {
  client.on('message', async (message) => {
    const [command, ...args] = message.body.trim().split(/\s+/);
    switch (command) {
      case '!help':
        return void (await message.reply('Commands: !roll NdM, !whois USER, !kick USER [reason]'));
      case '!roll':
        return void (await message.reply(roll(args[0] ?? '1d6')));
      case '!whois':
        return whois(client, message, args[0]);
      case '!kick':
        return kick(client, message, args[0], args.slice(1).join(' '));
    }
  });
}

/** `NdM` dice, e.g. `2d6` → "2d6: 3 + 5 = 8". */
function roll(spec: string): string {
  const m = /^(\d{1,2})d(\d{1,3})$/.exec(spec);
  if (!m) return `I roll dice like 2d6, not "${spec}"`;
  const dice = Array.from({ length: Number(m[1]) }, () => 1 + Math.floor(Math.random() * Number(m[2])));
  return `${spec}: ${dice.join(' + ')} = ${dice.reduce((a, b) => a + b, 0)}`;
}

/** The user a command names: a user ID typed out, else the first user the message mentions (an Element pill). */
function target(message: Message, arg: string | undefined): string | null {
  if (arg?.startsWith('@') && arg.includes(':')) return arg;
  return message.mentionedUserIds[0] ?? null;
}

async function whois(client: Client, message: Message, arg: string | undefined): Promise<void> {
  const userId = target(message, arg);
  if (!userId) return void (await message.reply('Whom? Give a user ID or mention someone.'));
  const profile = await client.getProfile(userId).catch(() => null);
  const level = (await message.room.info())?.powerLevel(userId) ?? 0;
  // In room versions 12 and later the room's creators stand above every power level.
  await message.reply(`${userId}: ${profile?.displayName ?? 'no display name'}, ${level === Infinity ? 'a creator of the room' : `power level ${level}`}`);
}

async function kick(client: Client, message: Message, arg: string | undefined, reason: string): Promise<void> {
  const userId = target(message, arg);
  if (!userId) return void (await message.reply('Whom? Give a user ID or mention someone.'));
  const room = await message.room.info();
  // Both must be allowed: the sender to ask for it, and the bot to do it.
  if (!room?.can(message.sender, { kind: 'kick', target: userId })) return void (await message.reply(`You may not kick ${userId} here.`));
  if (!room.can(client.whoami().userId, { kind: 'kick', target: userId })) return void (await message.reply(`I may not kick ${userId} here.`));
  await client.kickUser(message.roomId, userId, reason || `asked by ${message.sender}`);
  await message.reply(`Kicked ${userId}.`);
}

/** Runs the bot standalone: `node --import tsx examples/command-bot.ts bot.token ./bot-data`. */
async function main(tokenFile: string, dataDir: string): Promise<void> {
  const client = new Client({ dataDir });
  commandBot(client);
  process.once('SIGINT', () => void client.stop());
  await client.run(readFileSync(tokenFile, 'utf8').trim());
  process.stdout.write(`command bot running as ${client.whoami().userId}\n`);
}

if (import.meta.main) await main(process.argv[2] ?? 'bot.token', process.argv[3] ?? './bot-data');
