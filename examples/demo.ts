/**
 * `npm start`: the main job. Sets up a local Synapse (installed into ~/.cache/halcyon on first use), logs the
 * example bot in, has a scripted peer chat with it, prints the conversation, then has a real matrix-js-sdk client
 * (with its Rust crypto) talk to the same bot in an end-to-end encrypted room, and shuts everything down.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client } from '../src/index.ts';
import { startJsPeer } from '../test/harness/js-peer.ts';
import { Peer } from '../test/harness/peer.ts';
import { startSynapse } from '../test/harness/synapse.ts';
import { createBot } from './bot.ts';

const say = (s: string) => process.stdout.write(s + '\n');
say('Halcyon demo: starting a local Synapse (the first run installs it, which takes a minute)...');
const hs = await startSynapse({ log: (s) => say(`  [synapse] ${s}`) });
const dataDir = mkdtempSync(join(tmpdir(), 'halcyon-demo-'));
let client: Client | null = null;
try {
  await hs.registerUser('cookiebot', 'demo-password');
  const alice = new Peer(hs.baseUrl, await hs.registerUser('alice'));
  say(`Synapse is up at ${hs.baseUrl}.`);

  const token = await Client.login({ homeserver: hs.baseUrl, user: 'cookiebot', password: 'demo-password', dataDir, deviceName: 'demo' });
  client = new Client({ dataDir, pollTimeoutMs: 5000 });
  createBot(client);
  client.on('error', (e) => say(`  [bot error] ${e.code}: ${e.message}`));
  client.on('invite', (inv) => say(`  (bot was invited to ${inv.name ?? inv.roomId} by ${inv.inviter}; joining)`));
  await client.run(token);
  const me = client.whoami();
  say(`Bot ${me.userId} (device ${me.deviceId}) is ready.\n`);

  const roomId = await alice.createRoom({ name: 'Cookie corner', topic: 'A demo room', invite: [me.userId] });
  await alice.waitForJoined(roomId, me.userId);

  const names = new Map([[alice.userId, 'alice'], [me.userId, 'bot']]);
  const show = (ev: { sender: string; type: string; content: Record<string, any> }) => {
    const who = (names.get(ev.sender) ?? ev.sender).padEnd(5);
    if (ev.type === 'm.reaction') return say(`  ${who} reacts ${ev.content['m.relates_to']?.key}`);
    const kind = ev.content.msgtype === 'm.notice' ? ' (notice)' : ev.content['m.relates_to']?.['m.in_reply_to'] ? ' (reply)' : '';
    say(`  ${who} ${ev.content.body}${kind}`);
  };
  const fromBot = (ev: { type: string; sender: string }) => ev.type === 'm.room.message' && ev.sender === me.userId;
  const exchange = async (send: () => Promise<unknown>, echo: { sender: string; type: string; content: Record<string, any> }) => {
    show(echo);
    await send();
    show(await alice.waitFor((ev, rid) => rid === roomId && fromBot(ev), 30_000));
  };

  say('Conversation:');
  const hello = { sender: alice.userId, type: 'm.room.message', content: { body: 'hello' } };
  let helloId = '';
  await exchange(async () => (helloId = await alice.sendText(roomId, 'hello')), hello);
  await exchange(() => alice.sendText(roomId, '!room'), { sender: alice.userId, type: 'm.room.message', content: { body: '!room' } });
  await exchange(() => alice.sendText(roomId, '!echo cookies & milk'), { sender: alice.userId, type: 'm.room.message', content: { body: '!echo cookies & milk' } });
  await exchange(() => alice.react(roomId, helloId, '🍪'), { sender: alice.userId, type: 'm.reaction', content: { 'm.relates_to': { key: '🍪' } } });
  await exchange(() => alice.edit(roomId, helloId, 'hello there'), { sender: alice.userId, type: 'm.room.message', content: { body: '* hello there' } });
  const presence = await alice.getPresence(me.userId);
  say(`\nThe bot's presence as alice sees it: ${presence.presence}, "${presence.status_msg ?? ''}"`);

  // The same bot, unchanged, in an encrypted room with an independent client (matrix-js-sdk + Rust crypto).
  const bob = await startJsPeer(hs, { localpart: 'bob' });
  try {
    say(`\nEncrypted room (bob uses matrix-js-sdk; the bot's device key is ${me.identityKeys?.curve25519.slice(0, 12)}...):`);
    const secretRoom = await bob.createEncryptedRoom({ invite: [me.userId], name: 'Secret bakery' });
    await bob.waitForMember(secretRoom, me.userId, 'join');
    say('  bob   hello (encrypted)');
    await bob.sendText(secretRoom, 'hello');
    const answer = await bob.waitForMessage(secretRoom, (m) => m.sender === me.userId, 30_000);
    say(`  bot   ${answer.body || '(could not decrypt)'} (${answer.encrypted ? 'encrypted' : 'NOT encrypted'}; decrypted by bob's client)`);
  } finally {
    await bob.stop();
  }
  say('Demo finished: stopping the bot and Synapse.');
} finally {
  await client?.stop();
  await hs.stop();
  rmSync(dataDir, { recursive: true, force: true });
}
