/**
 * A media bot: tells the size and type of every image or file it is sent (downloading it through authenticated
 * media, decrypted when it came encrypted), and answers `!square N` with an N×N PNG it draws (sent with its
 * dimensions, blurhash and, when it helps, a thumbnail; encrypted in encrypted rooms). Try it:
 * `npm run example -- media`.
 */
import { readFileSync } from 'node:fs';
import { PNG } from 'pngjs';
import { Client } from '../src/index.ts';

/** Registers the media bot's handlers on `client`. */
export function mediaBot(client: Client): void {
  client.on('message', async (message) => {
    if (message.isMedia) {
      // The server's upload limit bounds the download (maxBytes defaults to it).
      const bytes = await message.download();
      const c = message.content as { msgtype: string; info?: { mimetype?: string; w?: number; h?: number } };
      const dims = c.info?.w && c.info.h ? `, ${c.info.w}×${c.info.h}` : '';
      await message.reply(`Got ${message.body}: ${bytes.length} bytes of ${c.info?.mimetype ?? 'unknown type'}${dims}.`);
      return;
    }
    const m = /^!square (\d{1,4})$/.exec(message.body.trim());
    if (m) {
      const n = Math.min(Number(m[1]), 2000);
      await client.sendImage(message.roomId, square(n), { filename: `square-${n}.png`, caption: `a ${n}×${n} square` });
    }
  });
}

/** A PNG of an n×n square with a diagonal gradient. */
function square(n: number): Buffer {
  const png = new PNG({ width: n, height: n });
  for (let y = 0; y < n; y++) {
    for (let x = 0; x < n; x++) {
      const i = (y * n + x) * 4;
      png.data[i] = (x * 255) / n;
      png.data[i + 1] = (y * 255) / n;
      png.data[i + 2] = 160;
      png.data[i + 3] = 255;
    }
  }
  return PNG.sync.write(png);
}

/** Runs the bot standalone: `node --import tsx examples/media-bot.ts bot.token ./bot-data`. */
async function main(tokenFile: string, dataDir: string): Promise<void> {
  const client = new Client({ dataDir });
  mediaBot(client);
  process.once('SIGINT', () => void client.stop());
  await client.run(readFileSync(tokenFile, 'utf8').trim());
  process.stdout.write(`media bot running as ${client.whoami().userId}\n`);
}

if (import.meta.main) await main(process.argv[2] ?? 'bot.token', process.argv[3] ?? './bot-data');
