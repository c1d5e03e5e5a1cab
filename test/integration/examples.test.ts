/** The example bots a newcomer copies work, against the real Synapse: the same scenarios `npm run example` runs. */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { commandScenario, encryptedScenario, mediaScenario } from '../../examples/try.ts';
import { testHomeserver, type Homeserver } from '../harness/synapse.ts';

let hs: Homeserver;
before(async () => {
  hs = await testHomeserver();
});
after(async () => {
  await hs?.stop();
});

const quiet = () => {};

test('examples/command-bot: help, dice, whois, and a kick the asker may not make', async () => {
  const [help, roll, whois, kick] = await commandScenario(hs, quiet);
  assert.match(help!, /^Commands: /);
  assert.match(roll!, /^2d6: \d \+ \d = \d+$/);
  assert.match(whois!, /(power level 100|a creator of the room)$/);
  assert.match(kick!, /^You may not kick /);
});

test('examples/encrypted-bot: answers a matrix-js-sdk user in an encrypted room, encrypted', async () => {
  const reply = await encryptedScenario(hs, quiet);
  assert.equal(reply.encrypted, true);
  assert.equal(reply.body, 'You said "hello in secret" (encrypted).');
});

test('examples/media-bot: sizes an image it is sent, and draws one', async () => {
  const [sized, drawn] = await mediaScenario(hs, quiet);
  assert.match(sized!.body, /^Got grey\.png: \d+ bytes of image\/png, 40×30\.$/);
  assert.equal(drawn!.msgtype, 'm.image');
  assert.deepEqual([drawn!.info.w, drawn!.info.h, drawn!.info.mimetype], [64, 64, 'image/png']);
});
