/** examples/toolkit-bot.ts works against the real Synapse: the scenario `npm run example -- toolkit` runs. */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { toolkitScenario } from '../../examples/try.ts';
import { testHomeserver, type Homeserver } from '../harness/synapse.ts';

let hs: Homeserver;
before(async () => {
  hs = await testHomeserver();
});
after(async () => {
  await hs?.stop();
});

test('examples/toolkit-bot: help per sender, a kick refused by power, dice, a reminder, and a question answered by a reaction', async () => {
  const [helpCarol, kick, helpAlice, roll, remind, reminder, question, deployed] = await toolkitScenario(hs, () => {});
  assert.equal(helpCarol, 'Commands you may run here:\n!roll [dice] — roll dice, e.g. !roll 2d6\n!whois <user:userId> — someone\'s display name and power level\n!remind <in:duration> <text...> — remind you later, e.g. !remind 10m tea');
  assert.match(kick!, /^You may not run !kick here/);
  assert.match(helpAlice!, /!kick <user:userId> \[reason\.\.\.\] — kick someone \(moderators\)\n.*\n!deploy — deploy/);
  assert.match(roll!, /^2d6: \d \+ \d = \d+$/);
  assert.match(remind!, /^I will remind you at \d{4}-/);
  assert.match(reminder!, /^@.*: tea$/);
  assert.match(question!, /^Where to\?/);
  assert.equal(deployed, 'Deploying to production.');
});
