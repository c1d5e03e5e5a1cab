/**
 * `npm run example -- <command|encrypted|media|toolkit>`: runs one of the example bots against a local Synapse (installed
 * into ~/.cache/halcyon on first use) and has a scripted user talk to it, printing the conversation. The same
 * scenarios run in the test suite (test/integration/examples.test.ts, toolkit-example.test.ts) against the shared
 * test homeserver.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PNG } from 'pngjs';
import { Client } from '../src/index.ts';
import { startJsPeer } from '../test/harness/js-peer.ts';
import { Peer } from '../test/harness/peer.ts';
import { type Homeserver, startSynapse } from '../test/harness/synapse.ts';
import { commandBot } from './command-bot.ts';
import { encryptedBot } from './encrypted-bot.ts';
import { mediaBot } from './media-bot.ts';
import { toolkitBot } from './toolkit-bot.ts';

/** Prints a line of the conversation. */
export type Say = (line: string) => void;

/** A bot on a fresh user and data dir, running; stopped and removed by `close`. */
async function startBot(hs: Homeserver, setup: (client: Client) => void): Promise<{ client: Client; userId: string; close: () => Promise<void> }> {
  const user = await hs.registerUser();
  const dataDir = mkdtempSync(join(tmpdir(), 'halcyon-example-'));
  const token = await Client.login({ homeserver: hs.baseUrl, user: user.localpart, password: user.password, dataDir });
  const client = new Client({ dataDir, pollTimeoutMs: 5000, rateLimit: false });
  setup(client);
  await client.run(token);
  return {
    client,
    userId: user.userId,
    close: async () => {
      await client.stop();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** Sends `text` as `peer` and waits for the bot's reply to it; returns its body. */
async function ask(peer: Peer, roomId: string, botId: string, text: string, say: Say): Promise<string> {
  say(`  user  ${text}`);
  const sent = await peer.sendText(roomId, text);
  const ev = await peer.waitFor((e, r) => r === roomId && e.sender === botId && e.content?.['m.relates_to']?.['m.in_reply_to']?.event_id === sent, 30_000);
  say(`  bot   ${ev.content.body}`);
  return ev.content.body as string;
}

/** The command bot: help, dice, whois, and a kick the asker may not make. Returns the bot's answers. */
export async function commandScenario(hs: Homeserver, say: Say): Promise<string[]> {
  const bot = await startBot(hs, commandBot);
  try {
    const alice = new Peer(hs.baseUrl, await hs.registerUser());
    const carol = new Peer(hs.baseUrl, await hs.registerUser());
    const roomId = await alice.createRoom({ name: 'Commands', invite: [bot.userId, carol.userId] });
    await alice.waitForJoined(roomId, bot.userId);
    await carol.join(roomId);
    const answers = [];
    for (const text of ['!help', '!roll 2d6', `!whois ${alice.userId}`]) answers.push(await ask(alice, roomId, bot.userId, text, say));
    answers.push(await ask(carol, roomId, bot.userId, `!kick ${alice.userId}`, say));
    return answers;
  } finally {
    await bot.close();
  }
}

/** The encrypted bot with a matrix-js-sdk user in an encrypted room. Returns the reply and whether it was encrypted. */
export async function encryptedScenario(hs: Homeserver, say: Say): Promise<{ body: string; encrypted: boolean }> {
  const bot = await startBot(hs, encryptedBot);
  const bob = await startJsPeer(hs);
  try {
    const roomId = await bob.createEncryptedRoom({ invite: [bot.userId], name: 'Secret' });
    await bob.waitForMember(roomId, bot.userId, 'join');
    say('  bob   hello in secret (encrypted by matrix-js-sdk)');
    await bob.sendText(roomId, 'hello in secret');
    const reply = await bob.waitForMessage(roomId, (m) => m.sender === bot.userId, 30_000);
    say(`  bot   ${reply.body} (${reply.encrypted ? 'encrypted' : 'NOT encrypted'}; decrypted by bob's client)`);
    return { body: reply.body, encrypted: reply.encrypted };
  } finally {
    await bob.stop();
    await bot.close();
  }
}

/** The media bot: a user sends an image, then asks for one. Returns the bot's two messages' content. */
export async function mediaScenario(hs: Homeserver, say: Say): Promise<Array<Record<string, any>>> {
  const bot = await startBot(hs, mediaBot);
  try {
    const alice = new Peer(hs.baseUrl, await hs.registerUser());
    const roomId = await alice.createRoom({ name: 'Pictures', invite: [bot.userId] });
    await alice.waitForJoined(roomId, bot.userId);
    const png = new PNG({ width: 40, height: 30 });
    png.data.fill(200);
    const bytes = PNG.sync.write(png);
    const upload = await fetch(`${hs.baseUrl}/_matrix/media/v3/upload?filename=grey.png`, {
      method: 'POST',
      headers: { authorization: `Bearer ${alice.user.accessToken}`, 'content-type': 'image/png' },
      body: new Uint8Array(bytes),
    });
    const { content_uri: url } = (await upload.json()) as { content_uri: string };
    say('  user  (an image: grey.png, 40×30)');
    await alice.sendEvent(roomId, 'm.room.message', { msgtype: 'm.image', body: 'grey.png', url, info: { mimetype: 'image/png', size: bytes.length, w: 40, h: 30 } });
    const fromBot = (e: any, r: string) => r === roomId && e.sender === bot.userId && e.type === 'm.room.message';
    const first = await alice.waitFor(fromBot, 30_000);
    say(`  bot   ${first.content.body}`);
    say('  user  !square 64');
    await alice.sendText(roomId, '!square 64');
    const second = await alice.waitFor(fromBot, 30_000);
    say(`  bot   (an image: ${second.content.body}, ${second.content.info?.w}×${second.content.info?.h}, ${second.content.info?.mimetype})`);
    return [first.content, second.content];
  } finally {
    await bot.close();
  }
}

/**
 * The toolkit bot: generated help, dice, a kick refused by power level, a reminder sent later, and a question
 * answered by a reaction. Returns the bot's messages, in order.
 */
export async function toolkitScenario(hs: Homeserver, say: Say): Promise<string[]> {
  const bot = await startBot(hs, (c) => void toolkitBot(c));
  try {
    const alice = new Peer(hs.baseUrl, await hs.registerUser());
    const carol = new Peer(hs.baseUrl, await hs.registerUser());
    const roomId = await alice.createRoom({ name: 'Toolkit', invite: [bot.userId, carol.userId] });
    await alice.waitForJoined(roomId, bot.userId);
    await carol.join(roomId);
    const answers = [await ask(carol, roomId, bot.userId, '!help', say), await ask(carol, roomId, bot.userId, `!kick ${alice.userId}`, say)];
    for (const text of ['!help', '!roll 2d6', '!remind 1s tea']) answers.push(await ask(alice, roomId, bot.userId, text, say));
    const reminder = await alice.waitFor((e, r) => r === roomId && e.sender === bot.userId && e.content?.body?.endsWith(': tea'), 30_000);
    say(`  bot   ${reminder.content.body}`);
    answers.push(reminder.content.body);
    say('  user  !deploy');
    const cmd = await alice.sendText(roomId, '!deploy');
    const question = await alice.waitFor((e, r) => r === roomId && e.sender === bot.userId && e.content?.['m.relates_to']?.['m.in_reply_to']?.event_id === cmd, 30_000);
    say(`  bot   ${question.content.body} (in a thread)`);
    say('  user  (reacts 🚀)');
    await alice.react(roomId, question.event_id, '🚀');
    const done = await alice.waitFor((e, r) => r === roomId && e.sender === bot.userId && e.type === 'm.room.message' && e.content?.body?.startsWith('Deploying'), 30_000);
    say(`  bot   ${done.content.body}`);
    answers.push(question.content.body, done.content.body);
    return answers;
  } finally {
    await bot.close();
  }
}

const scenarios: Record<string, (hs: Homeserver, say: Say) => Promise<unknown>> = { command: commandScenario, encrypted: encryptedScenario, media: mediaScenario, toolkit: toolkitScenario };

if (import.meta.main) {
  const name = process.argv[2] ?? '';
  const scenario = scenarios[name];
  if (!scenario) {
    process.stderr.write(`usage: npm run example -- <${Object.keys(scenarios).join('|')}>\n`);
    process.exit(2);
  }
  const say: Say = (line) => process.stdout.write(`${line}\n`);
  say(`Starting a local Synapse for the ${name} bot (the first run installs it, which takes a minute)...`);
  const hs = await startSynapse({ log: (s) => say(`  [synapse] ${s}`) });
  try {
    await scenario(hs, say);
  } finally {
    await hs.stop();
  }
}
