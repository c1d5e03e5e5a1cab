/**
 * The raw single-thread floor: the least work any client must do to consume `/sync`.
 * @module
 */
import { request } from 'undici';

/** Result of {@link runFloor}. */
export interface FloorResult {
  /** Timeline events delivered to the handler. */
  events: number;
  /** Wall-clock duration of the loop. */
  seconds: number;
  /** Main-thread CPU time (user + system) spent during the loop, in ms. */
  mainCpuMs: number;
}

const cpu = (): NodeJS.CpuUsage => (process.threadCpuUsage ? process.threadCpuUsage() : process.cpuUsage());

/**
 * Long-polls `url`'s `/sync` with undici, `JSON.parse`s each body and hands every timeline event (with its room's
 * ID) to `handler` until `expectedEvents` have been seen.
 */
export async function runFloor(
  url: string,
  expectedEvents: number,
  handler: (ev: any, roomId: string) => void = () => {},
): Promise<FloorResult> {
  let since: string | undefined;
  let events = 0;
  const cpu0 = cpu();
  const t0 = performance.now();
  while (events < expectedEvents) {
    const qs = new URLSearchParams({ timeout: '30000' });
    if (since !== undefined) qs.set('since', since);
    const { statusCode, body } = await request(`${url}/_matrix/client/v3/sync?${qs}`);
    const text = await body.text();
    if (statusCode !== 200) throw new Error(`/sync returned ${statusCode}: ${text.slice(0, 200)}`);
    const sync = JSON.parse(text);
    const join = sync.rooms?.join;
    let got = 0;
    if (join) {
      for (const roomId in join) {
        const timeline = join[roomId].timeline?.events;
        if (!timeline) continue;
        for (let i = 0; i < timeline.length; i++) handler(timeline[i], roomId);
        got += timeline.length;
      }
    }
    events += got;
    if (got === 0 && sync.next_batch === since) {
      throw new Error(`replay exhausted after ${events} of ${expectedEvents} expected events`);
    }
    since = sync.next_batch;
  }
  const seconds = (performance.now() - t0) / 1000;
  const used = cpu();
  const mainCpuMs = (used.user - cpu0.user + used.system - cpu0.system) / 1000;
  return { events, seconds, mainCpuMs };
}
