/**
 * The adaptive pacer against a simulated homeserver limiter (a token bucket like Synapse's rc_message), on a
 * simulated clock: full speed while the server allows it, then the server's pace after its first 429, at most one
 * more 429 per probe; never a wait against a server without limits; what it learned survives a restart.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { AdaptivePacer, FixedPacer, type LearnedPacing } from '../../src/pacing.ts';

/** Synapse's rc_message: `rate` actions per second, `burst` at once; answers the ms until the next one on refusal. */
function serverLimiter(rate: number, burst: number) {
  let tokens = burst;
  let last = 0;
  return (now: number): number | null => {
    tokens = Math.min(burst, tokens + ((now - last) / 1000) * rate);
    last = now;
    if (tokens >= 1) {
      tokens -= 1;
      return null;
    }
    return Math.ceil(((1 - tokens) / rate) * 1000);
  };
}

/**
 * Sends `n` messages back to back through `pacer` to `server` (each taking `roundTripMs`); returns the 429s and the
 * simulated time taken.
 */
function run(pacer: AdaptivePacer | FixedPacer, server: (now: number) => number | null, n: number, start = 0, roundTripMs = 20): { refusals: number; ms: number; now: number } {
  let now = start;
  let refusals = 0;
  for (let i = 0; i < n; ) {
    const wait = pacer.next(now);
    if (wait > 0) {
      now += wait;
      continue;
    }
    const retry = server(now);
    if (retry === null) {
      pacer.sent();
      i++;
      now += roundTripMs; // the request's round trip
      continue;
    }
    refusals++;
    pacer.rateLimited(retry, now);
    now += retry; // the outbox waits as the server said, then retries without a token
    pacer.drained(now);
    if (server(now) === null) {
      pacer.sent();
      i++;
    }
  }
  return { refusals, ms: now - start, now };
}

test('adaptive: under Synapse\'s default rc_message (0.2/s, bursts of 10), 40 sends draw one 429 for the burst and at most one per probe', () => {
  const kept: LearnedPacing[] = [];
  const pacer = new AdaptivePacer(null, (l) => void (l && kept.push(l)), 0);
  const r = run(pacer, serverLimiter(0.2, 10), 40);
  // 10 at once, then one every 5 s: 30 × 5 s at least; a probe every 20 sends may cost one 429 each.
  assert.ok(r.refusals >= 1 && r.refusals <= 3, `${r.refusals} refusals`);
  const last = kept.at(-1);
  assert.ok(last, 'what it learned is kept');
  assert.equal(last.burst, 10, 'the burst the server took');
  assert.ok(Math.abs(last.rate - 0.2) < 0.02, `the server's rate: ${last.rate}`);
});

test('adaptive: a burst that took the server a while (its bucket refilled meanwhile) still teaches its rate: one 429, not one per few sends', () => {
  // A real Synapse took 11 sends in 1.2 s: its retry time after the burst is then a refill less the burst's span.
  const kept: LearnedPacing[] = [];
  const pacer = new AdaptivePacer(null, (l) => void (l && kept.push(l)), 0);
  const r = run(pacer, serverLimiter(0.2, 10), 19, 0, 110); // under 20 sends after the 429: no probe yet
  assert.equal(r.refusals, 1, `${r.refusals} refusals`);
  assert.ok(Math.abs(kept[0]!.rate - 0.2) < 0.01, `the server's rate: ${kept[0]!.rate}`);
});

test('adaptive: a server without limits is never waited on', () => {
  const pacer = new AdaptivePacer(null, () => {}, 0);
  const r = run(pacer, () => null, 500);
  assert.equal(r.refusals, 0);
  assert.equal(r.ms, 500 * 20, 'only the round trips');
});

test('adaptive: a restart starts from what was learned (no 429 to learn it again) and forgets it after a week', () => {
  const learned: LearnedPacing = { rate: 0.2, burst: 10, at: 0 };
  const fresh = new AdaptivePacer(learned, () => {}, 1000);
  assert.equal(run(fresh, serverLimiter(0.2, 10), 15, 1000).refusals, 0);
  const stale = new AdaptivePacer(learned, () => {}, 8 * 24 * 3600_000);
  assert.equal(stale.next(8 * 24 * 3600_000 + 1), 0, 'unpaced again');
});

test('adaptive: probes climb back to full speed once the server stops refusing (its limit was lifted)', () => {
  const pacer = new AdaptivePacer({ rate: 1, burst: 1, at: 0 }, () => {}, 0);
  const r = run(pacer, () => null, 400);
  // From 1/s, ×1.25 every 20 sends: past 50/s after ~18 probes (360 sends), then unpaced.
  assert.equal(pacer.next(r.now), 0);
  assert.equal(r.refusals, 0);
});

test('fixed: the bucket as configured, whatever the server says', () => {
  const pacer = new FixedPacer({ perSecond: 2, burst: 3 }, 0);
  const r = run(pacer, () => null, 9);
  assert.ok(r.ms >= ((9 - 3) / (2 * 0.95)) * 1000, `${r.ms} ms`);
});
