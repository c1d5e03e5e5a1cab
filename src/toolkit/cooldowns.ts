/**
 * Cooldowns of commands: per user (`cooldownMs`: the same person may not run the command again before it passed)
 * and per room (`roomCooldownMs`: nobody in that room may). A refused run is told once per cooldown window, so a
 * storm of the same command gets one notice, not one per message. Times are `performance.now()` (monotonic: a
 * clock set back does not stretch a cooldown).
 */
import { performance } from 'node:perf_hooks';

/** What a command needs of its cooldowns. */
interface Cooled {
  opts: { cooldownMs?: number; roomCooldownMs?: number };
}

/** A running cooldown: when it ends, and whether a refusal was told already. */
interface Window {
  until: number;
  told: boolean;
}

/** Past this many windows, expired ones are swept (a bot in many rooms must not keep them all). */
const SWEEP_AT = 10_000;

/** The cooldowns of one router; see the module comment. */
export class Cooldowns {
  readonly #windows = new Map<string, Window>();

  /** How many windows are kept (running, or expired and not swept yet). */
  get size(): number {
    return this.#windows.size;
  }

  /**
   * Whether `user` may run `cmd` (named `name`) in `roomId` now: null, and both cooldowns start; or how long to
   * wait, and whether to tell (the first refusal of a window).
   */
  take(cmd: Cooled, name: string, user: string, roomId: string, now = performance.now()): { ms: number; tell: boolean } | null {
    const keys: Array<[string, number | undefined]> = [
      [`u\0${name}\0${user}`, cmd.opts.cooldownMs],
      [`r\0${name}\0${roomId}`, cmd.opts.roomCooldownMs],
    ];
    for (const [key] of keys) {
      const w = this.#windows.get(key);
      if (w && w.until > now) {
        const tell = !w.told;
        w.told = true;
        return { ms: w.until - now, tell };
      }
    }
    for (const [key, ms] of keys) if (ms) this.#windows.set(key, { until: now + ms, told: false });
    if (this.#windows.size > SWEEP_AT) for (const [k, w] of this.#windows) if (w.until <= now) this.#windows.delete(k);
    return null;
  }
}
