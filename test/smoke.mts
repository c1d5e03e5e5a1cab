import { startSynapse } from './harness/synapse.ts';
import { Peer } from './harness/peer.ts';
import { Client } from '../src/index.ts';
import { mkdtempSync } from 'node:fs';
const hs = await startSynapse();
try {
  const bot = await hs.registerUser('bot', 'botpass');
  const alice = await hs.registerUser();
  const peer = new Peer(hs.baseUrl, alice);
  const token = await Client.login({ homeserver: hs.baseUrl, user: 'bot', password: 'botpass' });
  console.log('token ok', token.slice(0, 12));
  const client = new Client({ dataDir: mkdtempSync('/tmp/smoke/d'), pollTimeoutMs: 2000, threads: (process.env.THREADS as any) ?? 'worker' });
  client.on('error', (e) => console.log('ERROR', e.code, e.message));
  client.on('syncError', (e) => console.log('SYNCERR', e.code, e.message));
  client.on('invite', (i) => console.log('invite', i.roomId, i.inviter));
  client.on('member', (m) => console.log('member', m.userId, m.membership));
  let got: (v: string) => void; const gotP = new Promise<string>((r) => (got = r));
  client.on('message', async (m) => { console.log('message', m.sender, m.body, m.room.name, m.room.memberCount); await m.room.sendTyping(); await m.reply('goodbye'); got(m.body); });
  await client.run(token);
  console.log('ready', client.whoami());
  const roomId = await peer.createRoom({ invite: [bot.userId], name: 'Smoke room' });
  await peer.waitForJoined(roomId, bot.userId);
  await peer.sendText(roomId, 'hello');
  await gotP;
  const reply = await peer.waitFor((ev) => ev.type === 'm.room.message' && ev.sender === bot.userId);
  console.log('peer saw reply', reply.content);
  console.log('rooms', await client.listRooms(), await client.getRoom(roomId).then(r => r?.members.length));
  await client.stop();
} finally { await hs.stop(); }
