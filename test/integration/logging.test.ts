/**
 * What the default logger prints (real Synapse): a handler's failure with the handler's own stack (its file and
 * line), not only the message.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { Client } from '../../src/index.ts';
import { testHomeserver, type Homeserver } from '../harness/synapse.ts';
import { newClient, newPeer, roomWithBot, tempDataDir, WAIT_MS, waitUntil } from './util.ts';

let hs: Homeserver;
before(async () => {
  hs = await testHomeserver();
});
after(async () => {
  await hs?.stop();
});

function throwsFromHere(): never {
  throw new Error('sync boom from handler');
}

test('with no error listener, a failing handler is logged with its cause\'s stack (file and line)', async (t) => {
  const lines: string[] = [];
  const write = process.stderr.write;
  process.stderr.write = function (this: NodeJS.WriteStream, chunk: string | Uint8Array, ...rest: unknown[]) {
    lines.push(String(chunk));
    return (write as (...a: unknown[]) => boolean).call(this, chunk, ...rest);
  } as typeof process.stderr.write;
  t.after(() => void (process.stderr.write = write));
  const user = await hs.registerUser();
  const dataDir = tempDataDir(t);
  const token = await Client.login({ homeserver: hs.baseUrl, user: user.localpart, password: user.password, dataDir });
  const client = newClient(t, dataDir, { encryption: false }); // the default logger, and no 'error' listener
  client.on('message', () => throwsFromHere());
  await client.run(token);
  const peer = await newPeer(hs);
  const roomId = await roomWithBot(peer, user.userId);
  await peer.sendText(roomId, 'hi');
  const line = await waitUntil(() => lines.find((l) => l.includes('HALCYON_HANDLER_FAILED')), WAIT_MS, 'the failure logged');
  assert.match(line, /sync boom from handler/);
  assert.match(line, /caused by: Error: sync boom from handler\n\s+at throwsFromHere \(.*logging\.test\.ts:\d+:\d+\)/);
});
