/**
 * Small statistics and timing helpers shared by the benchmark scripts.
 * @module
 */
import type { ReplayServer } from './replay-server.ts';

/** min / median / max of repeated measurements. */
export interface Summary {
  min: number;
  median: number;
  max: number;
  n: number;
}

/** Percentile by linear interpolation between closest ranks (`p` in 0..100); NaN for an empty list. */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return NaN;
  const s = [...values].sort((a, b) => a - b);
  const rank = (p / 100) * (s.length - 1);
  const lo = Math.floor(rank);
  const hi = Math.ceil(rank);
  return s[lo]! + (s[hi]! - s[lo]!) * (rank - lo);
}

/** min / median / max of `values`. */
export function summarize(values: readonly number[]): Summary {
  return {
    min: values.length ? Math.min(...values) : NaN,
    median: percentile(values, 50),
    max: values.length ? Math.max(...values) : NaN,
    n: values.length,
  };
}

/** Epoch ms on this process's high-resolution clock (the replay server records on the same kind of clock). */
export const now = (): number => performance.timeOrigin + performance.now();

/** This thread's CPU time (user + system), ms. */
export const threadCpuMs = (): number => {
  const u = process.threadCpuUsage();
  return (u.user + u.system) / 1000;
};

/** The whole process's CPU time (all threads), ms. */
export const processCpuMs = (): number => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
};

/** Spins until this thread has used `ms` more CPU time (not wall time). */
export function burnCpu(ms: number): void {
  const end = threadCpuMs() + ms;
  let x = 0;
  while (threadCpuMs() < end) for (let i = 0; i < 2000; i++) x = (x * 31 + i) | 0;
  if (x === 0.5) console.log(x); // keep the loop observable
}

/**
 * Offset of the replay server's clock from ours (server − local, ms): the ping with the smallest round trip
 * of `pings` wins, its reading compared with the midpoint of the round trip.
 */
export async function clockOffset(server: ReplayServer, pings = 7): Promise<{ offsetMs: number; rttMs: number }> {
  let best = { offsetMs: 0, rttMs: Infinity };
  for (let i = 0; i < pings; i++) {
    const t0 = now();
    const remote = await server.clock();
    const t1 = now();
    if (t1 - t0 < best.rttMs) best = { offsetMs: remote - (t0 + t1) / 2, rttMs: t1 - t0 };
  }
  return best;
}

/** Formats a number with thousands separators and `d` decimals. */
export const fmt = (n: number, d = 0): string =>
  Number.isFinite(n) ? n.toLocaleString('en-US', { maximumFractionDigits: d, minimumFractionDigits: d }) : String(n);
