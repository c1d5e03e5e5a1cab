/** Cooldown windows of commands (src/toolkit/cooldowns.ts), on a clock the test moves. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Cooldowns } from '../../src/toolkit/cooldowns.ts';

test('per user: the same person waits, others do not; one refusal per window is told', () => {
  const c = new Cooldowns();
  const cmd = { opts: { cooldownMs: 1000 } };
  assert.equal(c.take(cmd, 'ping', '@a:x', '!r:x', 0), null);
  assert.deepEqual(c.take(cmd, 'ping', '@a:x', '!other:x', 100), { ms: 900, tell: true }, 'per user means in every room');
  assert.deepEqual(c.take(cmd, 'ping', '@a:x', '!r:x', 200), { ms: 800, tell: false });
  assert.equal(c.take(cmd, 'ping', '@b:x', '!r:x', 200), null);
  assert.equal(c.take(cmd, 'pong', '@a:x', '!r:x', 200), null, 'another command has its own window');
  assert.equal(c.take(cmd, 'ping', '@a:x', '!r:x', 1000), null, 'the window ends');
  assert.deepEqual(c.take(cmd, 'ping', '@a:x', '!r:x', 1001), { ms: 999, tell: true }, 'a new window is told again');
});

test('per room: nobody in the room runs it again within the window; other rooms may', () => {
  const c = new Cooldowns();
  const cmd = { opts: { roomCooldownMs: 500 } };
  assert.equal(c.take(cmd, 'weather', '@a:x', '!r:x', 0), null);
  assert.deepEqual(c.take(cmd, 'weather', '@b:x', '!r:x', 10), { ms: 490, tell: true });
  assert.equal(c.take(cmd, 'weather', '@b:x', '!s:x', 10), null);
  assert.equal(c.take({ opts: {} }, 'free', '@a:x', '!r:x', 10), null);
  assert.equal(c.take({ opts: {} }, 'free', '@a:x', '!r:x', 10), null, 'no cooldown: never refused');
});

test('expired windows are swept once there are many (a bot in many rooms keeps only the running ones)', () => {
  const c = new Cooldowns();
  const cmd = { opts: { cooldownMs: 10 } };
  for (let i = 0; i < 10_001; i++) c.take(cmd, 'ping', `@u${i}:x`, '!r:x', 0);
  assert.equal(c.take(cmd, 'ping', '@late:x', '!r:x', 100), null);
  assert.equal(c.size, 1);
});
