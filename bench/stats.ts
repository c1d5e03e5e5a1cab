/**
 * Small statistics and timing helpers shared by the benchmark scripts.
 * @module
 */
import { readdirSync, readFileSync } from 'node:fs';
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

/**
 * CPU time (ms) of the whole machine (all cores, busy: not idle or iowait) and of this process with its reaped
 * children (Linux /proc; null elsewhere). Their deltas over a run give what other processes took meanwhile.
 */
export function machineAndOwnCpuMs(): { machineBusyMs: number; ownTreeMs: number } | null {
  try {
    const cpu = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
    const [user = 0, nice = 0, system = 0, , , irq = 0, softirq = 0, steal = 0] = cpu;
    const stat = readFileSync('/proc/self/stat', 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // Fields 14–17 (utime, stime, cutime, cstime) are f[11]..f[14]; USER_HZ is 100 on Linux.
    const own = Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14]);
    return { machineBusyMs: (user + nice + system + irq + softirq + steal) * 10, ownTreeMs: own * 10 };
  } catch {
    return null;
  }
}

/** CPU time (ms) of this process's threads, grouped by thread name (Linux /proc; null elsewhere): {@link groupTotals} of {@link threadsCpuMs}. */
export function threadGroupsCpuMs(): Map<string, number> | null {
  return groupTotals(threadsCpuMs());
}

/** The group a thread's name (`comm`) puts it in: Halcyon's workers (`halcyon-…`) by name, main, V8 helpers, other. */
export function threadGroup(comm: string): string {
  return comm.startsWith('halcyon-') ? comm : comm === 'MainThread' ? 'main' : comm === 'V8Worker' || comm.startsWith('DelayedTask') ? 'v8 helpers' : 'other';
}

/** One thread's CPU time (ms) and its {@link threadGroup}. */
export interface ThreadCpu {
  group: string;
  ms: number;
}

/**
 * CPU time (ms) of each thread of this process (or of process `pid`), by thread ID, with its group (Linux /proc; null elsewhere). From
 * `schedstat` (the scheduler's run time in ns, current to the last tick or switch) where the kernel has it, which
 * is finer than `stat`'s 10 ms ticks; from `stat` otherwise.
 */
export function threadsCpuMs(pid: number | 'self' = 'self'): Map<string, ThreadCpu> | null {
  let tids: string[];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return null;
  }
  const out = new Map<string, ThreadCpu>();
  for (const tid of tids) {
    let stat: string;
    try {
      stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
    } catch {
      continue; // the thread ended meanwhile
    }
    const close = stat.lastIndexOf(')');
    const group = threadGroup(stat.slice(stat.indexOf('(') + 1, close));
    let ms: number;
    try {
      ms = Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[0]) / 1e6;
    } catch {
      const fields = stat.slice(close + 2).split(' ');
      ms = (Number(fields[11]) + Number(fields[12])) * 10; // utime + stime, USER_HZ = 100
    }
    out.set(tid, { group, ms });
  }
  return out;
}

/** Per-group totals of a {@link threadsCpuMs} reading (for {@link perEventDelta}). */
export function groupTotals(threads: Map<string, ThreadCpu> | null): Map<string, number> | null {
  if (!threads) return null;
  const out = new Map<string, number>();
  for (const { group, ms } of threads.values()) out.set(group, (out.get(group) ?? 0) + ms);
  return out;
}

/**
 * The thread that used the most CPU between two {@link threadsCpuMs} readings, per event (µs), with its group: on as
 * many cores as busy threads, the process's throughput is bounded by it. A thread that started in between counts
 * from zero; one that ended in between is not seen (its CPU is gone from /proc).
 */
export function busiestThread(a: Map<string, ThreadCpu> | null, b: Map<string, ThreadCpu> | null, n: number): { group: string; usPerEvent: number } | undefined {
  if (!a || !b) return undefined;
  let best: { group: string; usPerEvent: number } | undefined;
  for (const [tid, { group, ms }] of b) {
    const us = ((ms - (a.get(tid)?.ms ?? 0)) * 1000) / n;
    if (!best || us > best.usPerEvent) best = { group, usPerEvent: us };
  }
  return best;
}

/** Per-event CPU (µs) by thread group between two {@link threadGroupsCpuMs} readings. */
export function perEventDelta(a: Map<string, number> | null, b: Map<string, number> | null, n: number): Record<string, number> | undefined {
  if (!a || !b) return undefined;
  const out: Record<string, number> = {};
  for (const [k, v] of b) out[k] = ((v - (a.get(k) ?? 0)) * 1000) / n;
  return out;
}
