/**
 * An example bot, the one the demo runs: greets, answers a few commands, reacts to reactions.
 * `createBot(client)` only registers handlers, so the same bot runs against any homeserver.
 */
import type { Client } from '../src/index.ts';

/** Registers the example bot's handlers on `client`. */
export function createBot(client: Client): void {
  client.on('ready', async () => {
    await client.setPresence('online', 'Baking cookies');
  });

  client.on('message', async (message) => {
    const text = message.body.trim();
    if (text === 'hello') {
      await message.room.sendTyping();
      await message.reply('goodbye');
    } else if (text === '!room') {
      const info = await client.getRoom(message.roomId);
      await message.room.sendNotice(
        `This is "${message.room.name ?? message.roomId}" with ${message.room.memberCount} members` +
          `${info ? ` (${info.members.filter((m) => m.membership === 'join').map((m) => m.displayName ?? m.userId).join(', ')})` : ''}.`,
      );
    } else if (text.startsWith('!echo ')) {
      await message.room.sendHtml(`<i>${escapeHtml(text.slice(6))}</i>`);
    } else if (text === '!slow') {
      // Handlers in other rooms keep running meanwhile; this room's next event waits for this one.
      await message.room.sendTyping(5000);
      await new Promise((r) => setTimeout(r, 500));
      await message.reply('that took a while');
    }
  });

  client.on('reaction', async (reaction) => {
    if (reaction.key === '🍪') await client.sendMessage(reaction.roomId, 'Cookie received, thank you!');
  });

  client.on('edit', async (edit) => {
    await client.sendNotice(edit.roomId, `I saw that edit: "${String(edit.newContent.body ?? '')}"`);
  });
}

function escapeHtml(s: string): string {
  return s.replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]!);
}
