/**
 * Helpers of the fault-injection tests: the fault-bot fixture in a child process (kill -9 and restart), a peer
 * stream sender that survives a homeserver restart without duplicating anything (one transaction ID per
 * message, retried), and a reader of the bot's replies in a room's timeline.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { withTimeout } from '../harness/synapse.ts';

const repoRoot = join(import.meta.dirname, '..', '..');
const BOT_SCRIPT = join(repoRoot, 'test', 'fixtures', 'fault-bot.ts');

/** A JSON line of the fault-bot fixture (see its header). */
export type BotLine = { kind: string; run: string; [k: string]: any };

/** One fault-bot process. */
export interface BotProcess {
  readonly run: string;
  readonly child: ChildProcessWithoutNullStreams;
  /** Its lines so far (every run's lines also go to the shared sink given to {@link startFaultBot}). */
  readonly lines: BotLine[];
  /** Whether it has exited (and its stdout is fully read). */
  readonly exited: boolean;
  /** Resolves with the first line matching `pred`; rejects early if the process exits, or after `timeoutMs`. */
  waitFor(pred: (l: BotLine) => boolean, what: string, timeoutMs: number): Promise<BotLine>;
  /** SIGKILL, then waits until it is gone and its stdout is drained. */
  kill9(): Promise<void>;
  /** SIGTERM (the fixture stops the client cleanly), then waits for it to exit. */
  stop(timeoutMs?: number): Promise<void>;
  /** Exit status and the tail of stderr, for failure messages. */
  describe(): string;
}

/**
 * Starts the fault-bot fixture (or another bot `script` that prints the same JSON lines, e.g. cluster-bot.ts) with
 * `env` (HC_TOKEN, HC_DIR, ...); every line is also pushed to `sink`.
 */
export function startFaultBot(run: string, env: Record<string, string>, sink: BotLine[], script = BOT_SCRIPT): BotProcess {
  const child = spawn(process.execPath, ['--import', 'tsx', script], {
    cwd: repoRoot,
    env: { ...process.env, ...env, HC_RUN: run },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const lines: BotLine[] = [];
  let stderr = '';
  let exit: string | undefined;
  const waiters = new Set<() => void>();
  const wake = () => {
    for (const w of [...waiters]) w();
  };
  // 'close' (not 'exit'): every line the process wrote has been read.
  const closed = new Promise<void>((resolve) =>
    child.on('close', (code, signal) => {
      exit = `${code ?? ''}${signal ?? ''}`;
      resolve();
      wake();
    }),
  );
  child.stderr.on('data', (d) => {
    stderr += d;
    if (stderr.length > 200_000) stderr = stderr.slice(-100_000);
  });
  createInterface({ input: child.stdout }).on('line', (text) => {
    let l: BotLine;
    try {
      l = JSON.parse(text) as BotLine;
    } catch {
      stderr += `(stdout, not JSON) ${text}\n`;
      return;
    }
    lines.push(l);
    sink.push(l);
    wake();
  });
  const describe = () => `run ${run}: exit=${exit ?? 'running'}; last lines=${JSON.stringify(lines.slice(-5))}; stderr tail:\n${stderr.split('\n').slice(-25).join('\n')}`;
  return {
    run,
    child,
    lines,
    get exited() {
      return exit !== undefined;
    },
    waitFor(pred, what, timeoutMs) {
      return new Promise<BotLine>((resolve, reject) => {
        let from = 0;
        const check = () => {
          for (; from < lines.length; from++) {
            if (pred(lines[from]!)) {
              done();
              return resolve(lines[from]!);
            }
          }
          if (exit !== undefined) {
            done();
            reject(new Error(`the bot exited while waiting for ${what}\n${describe()}`));
          }
        };
        const timer = setTimeout(() => {
          done();
          reject(new Error(`Timed out after ${timeoutMs} ms waiting for ${what}\n${describe()}`));
        }, timeoutMs);
        const done = () => {
          clearTimeout(timer);
          waiters.delete(check);
        };
        waiters.add(check);
        check();
      });
    },
    async kill9() {
      if (exit === undefined) child.kill('SIGKILL');
      await withTimeout(closed, 10_000, `bot run ${run} to die after SIGKILL`);
    },
    async stop(timeoutMs = 20_000) {
      if (exit !== undefined) return;
      child.kill('SIGTERM');
      await withTimeout(closed, timeoutMs, `bot run ${run} to exit after SIGTERM`).catch(async (e) => {
        child.kill('SIGKILL');
        await closed;
        throw e;
      });
    },
    describe,
  };
}

/** A message of a peer stream. */
export interface Sent {
  index: number;
  body: string;
  eventId: string;
  /** Date.now() when the server acknowledged it. */
  at: number;
  /** Attempts it took (a homeserver down or restarting makes it more than 1). */
  attempts: number;
}

/**
 * Sends `count` numbered m.text messages (`${prefix}${i}`) into a room as a peer, straight to the homeserver, at
 * `perSecond` (paced against the start time: a slow answer is caught up, never bunched beyond the rate). Each
 * message has its own transaction ID, retried with it until the server acknowledges, so a homeserver restart
 * neither loses nor duplicates a message. `stop()` ends it early.
 */
export function startStream(opts: {
  baseUrl: string;
  accessToken: string;
  roomId: string;
  count: number;
  perSecond: number;
  prefix: string;
  /** Gives up on one message after this long of failures (default 60 s). */
  maxRetryMs?: number;
}): { sent: Sent[]; done: Promise<Sent[]>; stop(): void; failures: () => number } {
  const sent: Sent[] = [];
  let stopped = false;
  let failures = 0;
  const txnBase = `st${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`;
  const t0 = Date.now();
  const pause = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
  const one = async (i: number): Promise<Sent> => {
    const body = `${opts.prefix}${i}`;
    const url = `${opts.baseUrl}/_matrix/client/v3/rooms/${encodeURIComponent(opts.roomId)}/send/m.room.message/${txnBase}.${i}`;
    const giveUp = Date.now() + (opts.maxRetryMs ?? 60_000);
    for (let attempt = 1; ; attempt++) {
      try {
        const res = await fetch(url, {
          method: 'PUT',
          headers: { authorization: `Bearer ${opts.accessToken}`, 'content-type': 'application/json' },
          body: JSON.stringify({ msgtype: 'm.text', body }),
          signal: AbortSignal.timeout(15_000),
        });
        const data = (await res.json().catch(() => ({}))) as { event_id?: unknown };
        if (res.ok && typeof data.event_id === 'string') return { index: i, body, eventId: data.event_id, at: Date.now(), attempts: attempt };
        if (res.status < 500 && res.status !== 429) throw Object.assign(new Error(`send ${body}: ${res.status} ${JSON.stringify(data)}`), { permanent: true });
      } catch (err) {
        if ((err as { permanent?: boolean }).permanent) throw err;
      }
      failures++;
      if (Date.now() > giveUp) throw new Error(`send ${body}: still failing after ${opts.maxRetryMs ?? 60_000} ms`);
      // Retry pacing while the homeserver is away (a rate, not a wait for a condition).
      await pause(Math.min(50 * attempt, 500));
    }
  };
  const done = (async () => {
    for (let i = 0; i < opts.count && !stopped; i++) {
      const due = t0 + (i * 1000) / opts.perSecond;
      if (due > Date.now()) await pause(due - Date.now());
      sent.push(await one(i));
    }
    return sent;
  })();
  done.catch(() => {});
  return {
    sent,
    done,
    stop: () => {
      stopped = true;
    },
    failures: () => failures,
  };
}

/** A reply of the bot found in the room's timeline. */
export interface RoomReply {
  eventId: string;
  /** The event it answers (`m.in_reply_to`). */
  inReplyTo: string | null;
  body: string;
}

/** Every m.room.message of `sender` in the room (via /messages, newest page first, all pages), as replies. */
export async function repliesInRoom(baseUrl: string, accessToken: string, roomId: string, sender: string): Promise<RoomReply[]> {
  const out: RoomReply[] = [];
  const filter = JSON.stringify({ types: ['m.room.message'], senders: [sender] });
  let from: string | undefined;
  for (let page = 0; page < 1000; page++) {
    const url = new URL(`/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/messages`, baseUrl);
    url.searchParams.set('dir', 'b');
    url.searchParams.set('limit', '1000');
    url.searchParams.set('filter', filter);
    if (from) url.searchParams.set('from', from);
    const res = await fetch(url, { headers: { authorization: `Bearer ${accessToken}` }, signal: AbortSignal.timeout(30_000) });
    if (!res.ok) throw new Error(`GET /messages -> ${res.status}: ${await res.text()}`);
    const data = (await res.json()) as { chunk?: Array<{ event_id: string; sender: string; content: Record<string, any> }>; end?: string };
    for (const ev of data.chunk ?? []) {
      if (ev.sender !== sender) continue;
      const rel = ev.content?.['m.relates_to'];
      out.push({ eventId: ev.event_id, inReplyTo: typeof rel?.['m.in_reply_to']?.event_id === 'string' ? rel['m.in_reply_to'].event_id : null, body: String(ev.content?.body ?? '') });
    }
    if (!data.end || (data.chunk ?? []).length === 0) break;
    from = data.end;
  }
  return out.reverse();
}

/** Counts of `key(x)` over `xs`. */
export function countBy<T>(xs: T[], key: (x: T) => string): Map<string, number> {
  const m = new Map<string, number>();
  for (const x of xs) m.set(key(x), (m.get(key(x)) ?? 0) + 1);
  return m;
}

/**
 * A logger for an in-process cluster client (an ingest) that records its `cluster:` lines in `sink` as the
 * fixtures' `cluster` lines (labelled `run`), for {@link describeCluster}; warnings and errors also go to stderr.
 */
export function clusterLogger(run: string, sink: BotLine[]): { debug(): void; info: Log; warn: Log; error: Log } {
  const make = (level: string): Log => (obj, msg) => {
    const fields = obj instanceof Error ? { err: obj.message } : typeof obj === 'object' && obj !== null ? obj : { text: String(obj) };
    if (msg?.startsWith('cluster:')) sink.push({ kind: 'cluster', run, level, msg, ...fields, t: Date.now() });
    if (level !== 'info') process.stderr.write(`[${run} ${level}] ${msg ?? ''} ${JSON.stringify(fields)}\n`);
  };
  return { debug() {}, info: make('info'), warn: make('warn'), error: make('error') };
}
type Log = (obj: unknown, msg?: string) => void;

/**
 * What a cluster test prints when it times out: every process's `cluster` lines in time order (partitions taken,
 * waited for, handed over, lost; NATS lost and back), the messages still missing by partition, and `extra` (the
 * ingest's health, its errors).
 */
export function describeCluster(lines: BotLine[], missing: { body: string; partition: number }[], extra: Record<string, unknown>): string {
  const t0 = lines[0]?.t ?? 0;
  const log = lines
    .filter((l) => l.kind === 'cluster')
    .sort((a, b) => a.t - b.t)
    .map(({ kind: _k, t, run, level, msg, ...rest }) => `  +${t - t0} ms ${run} ${level ?? ''} ${msg} ${JSON.stringify(rest)}`);
  const byPartition = new Map<number, string[]>();
  for (const m of missing) byPartition.set(m.partition, [...(byPartition.get(m.partition) ?? []), m.body]);
  const last = new Map<string, number>();
  for (const l of lines) if (l.kind === 'message') last.set(l.run, l.t - t0);
  return [
    `missing ${missing.length}: ${[...byPartition].map(([p, b]) => `p${p}: ${b.length} (${b.slice(0, 3).join(', ')}…)`).join('; ')}`,
    `last message handled per process (ms from the first line): ${JSON.stringify(Object.fromEntries(last))}`,
    ...Object.entries(extra).map(([k, v]) => `${k}: ${JSON.stringify(v)}`),
    'cluster log:',
    ...log,
  ].join('\n');
}
