/**
 * An end-to-end encrypted bot: it answers in encrypted rooms exactly as in plain ones (`reply()` encrypts), says
 * when it could not decrypt something and why (a withheld key usually means the sender's client trusts only
 * verified devices), and opens an encrypted direct chat with whoever says `!dm`. Try it: `npm run example --
 * encrypted` (a matrix-js-sdk client with Rust crypto talks to it).
 *
 * The crypto store lives in the data dir: keep the directory (and `crypto.key` in it) with the token. A new data
 * dir with an old token is refused (HALCYON_STORE_MISMATCH) rather than silently becoming a new, unknown device.
 */
import { readFileSync } from 'node:fs';
import { Client } from '../src/index.ts';

/** Registers the encrypted bot's handlers on `client`. */
export function encryptedBot(client: Client): void {
  client.on('message', async (message) => {
    const text = message.body.trim();
    if (text === '!dm') {
      const dm = await client.getOrCreateDm(message.sender, { encrypted: true });
      await client.sendMessage(dm, 'Hello in private (and encrypted).');
      return;
    }
    if (text.startsWith('!')) return;
    const how = message.isEncrypted ? 'encrypted' : 'in the clear';
    await message.reply(`You said "${text}" (${how}${message.decryptedLate ? ', its key came late' : ''}).`);
  });
  client.on('decryptionError', async (err, info) => {
    // willRetry: the event is kept and delivered if its key arrives; otherwise it is gone for good.
    const why = info.withheldCode ? `the sender's client withheld the key (${info.withheldCode})` : err.code;
    if (!info.willRetry) await client.sendNotice(info.roomId, `I could not decrypt a message from ${info.sender}: ${why}.`);
  });
}

/** Runs the bot standalone: `node --import tsx examples/encrypted-bot.ts bot.token ./bot-data`. */
async function main(tokenFile: string, dataDir: string): Promise<void> {
  const client = new Client({ dataDir });
  encryptedBot(client);
  process.once('SIGINT', () => void client.stop());
  await client.run(readFileSync(tokenFile, 'utf8').trim());
  const keys = client.whoami().identityKeys;
  process.stdout.write(`encrypted bot running as ${client.whoami().userId}; device key ${keys?.ed25519}\n`);
}

if (import.meta.main) await main(process.argv[2] ?? 'bot.token', process.argv[3] ?? './bot-data');
