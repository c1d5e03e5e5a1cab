/**
 * The E2EE workload's raw loop in a process of its own: a crypto-wasm `OlmMachine` on the same store type as
 * Halcyon's crypto actor (fake-indexeddb written through to a SQLite journal, `IdbJournal`, passphrase-encrypted),
 * decrypting event texts with `decryptRoomEvent` one after another on the process's main thread, with nothing else
 * in the process: no other client, no fixtures, no replay bookkeeping on that thread or heap. It is the least work
 * decryption takes, so Halcyon's crypto actor (also a thread of its own) can be held against it.
 *
 * The parent (bench/crypto.ts) keeps the fake key server: the machine's outgoing requests (key upload, …) go to it
 * over IPC and come back answered. Messages: parent → child `toDevice` (a key share to take in), `loop` (texts to
 * decrypt, timed in the child), `close`, and `answer` (to a request); child → parent `ready`, `request`, `done`.
 *
 * Usage (by {@link startRawProcess} only): `node --expose-gc --import tsx bench/crypto-raw.ts '<{userId, deviceId}>'`.
 * @module
 */
import * as W from '@matrix-org/matrix-sdk-crypto-wasm';
import { type ChildProcess, fork } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { IdbJournal } from '../src/crypto/idb-journal.ts';
import { perEventDelta, processCpuMs, threadCpuMs, threadGroupsCpuMs } from './stats.ts';

/** An outgoing request of the machine, as the fake key server answers it. */
export interface RawRequest {
  type: W.RequestType;
  body: string;
  event_type?: string;
}

/** What one timed loop measured (in the child). */
export interface RawLoopResult {
  events: number;
  seconds: number;
  eventsPerSec: number;
  /** The loop thread's CPU per event, µs. */
  mainCpuUsPerEvent: number;
  /** The whole child process's CPU per event (loop thread, V8 helper threads), µs. */
  allThreadsCpuUsPerEvent: number;
  /** Per thread group (/proc, Linux), µs per event. */
  threadsCpuUsPerEvent?: Record<string, number>;
}

/** The raw machine's process, from the parent's side. */
export interface RawProcess {
  /** Takes in to-device events (the key share) and answers what that makes the machine ask. */
  receiveToDevice(events: unknown[]): Promise<void>;
  /** Decrypts `texts` in one loop, timed in the child, which does nothing else meanwhile. */
  loop(texts: string[], room: string): Promise<RawLoopResult>;
  close(): Promise<void>;
}

type ToChild =
  | { op: 'toDevice'; id: number; events: unknown[] }
  | { op: 'loop'; id: number; texts: string[]; room: string }
  | { op: 'close'; id: number }
  | { op: 'answer'; reqId: number; body: string };
type FromChild =
  | { op: 'ready' }
  | { op: 'request'; reqId: number; req: RawRequest }
  | { op: 'done'; id: number; result?: unknown; error?: string };

const CHILD = fileURLToPath(import.meta.url);
const OTK_COUNTS = { signed_curve25519: 50 };
const untrusted = (): W.DecryptionSettings => new W.DecryptionSettings(W.TrustRequirement.Untrusted);

/**
 * Starts the raw machine's process for `who`; `answer` is the fake key server's answer to one of its requests.
 * Resolves once the machine is open and its keys are uploaded.
 */
export async function startRawProcess(who: { userId: string; deviceId: string }, answer: (req: RawRequest) => string): Promise<RawProcess> {
  const child: ChildProcess = fork(CHILD, [JSON.stringify(who)], {
    execArgv: ['--expose-gc', '--no-deprecation', '--import', 'tsx'],
    serialization: 'advanced',
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  let nextId = 0;
  const pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  let failure: Error | null = null;
  let readyResolve!: () => void;
  let readyReject!: (e: Error) => void;
  const ready = new Promise<void>((res, rej) => ((readyResolve = res), (readyReject = rej)));
  const fail = (err: Error): void => {
    failure ??= err;
    readyReject(err);
    for (const p of pending.values()) p.reject(err);
    pending.clear();
  };
  child.on('message', (m: FromChild) => {
    if (m.op === 'ready') readyResolve();
    else if (m.op === 'request') {
      let body: string;
      try {
        body = answer(m.req);
      } catch (err) {
        fail(err as Error);
        return;
      }
      child.send({ op: 'answer', reqId: m.reqId, body } satisfies ToChild);
    } else {
      const p = pending.get(m.id);
      pending.delete(m.id);
      if (m.error !== undefined) p?.reject(new Error(`raw loop process: ${m.error}`));
      else p?.resolve(m.result);
    }
  });
  child.once('exit', (code, signal) => fail(new Error(`raw loop process exited (code ${code}, signal ${signal})`)));
  type Call = Extract<ToChild, { id: number }>;
  type WithoutId<T> = T extends unknown ? Omit<T, 'id'> : never;
  const call = <T>(msg: WithoutId<Call>): Promise<T> => {
    if (failure) return Promise.reject(failure);
    const id = nextId++;
    return new Promise<T>((resolve, reject) => {
      pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      child.send({ ...msg, id } as ToChild);
    });
  };
  const kill = async (): Promise<void> => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGKILL');
    await exited;
  };
  try {
    await ready;
  } catch (err) {
    await kill();
    throw err;
  }
  return {
    receiveToDevice: (events) => call({ op: 'toDevice', events }),
    loop: (texts, room) => call({ op: 'loop', texts, room }),
    async close() {
      let timer: NodeJS.Timeout | undefined;
      try {
        // Bounded: a child that hangs in its clean-up is killed all the same.
        if (!failure) await Promise.race([call({ op: 'close' }), new Promise((r) => (timer = setTimeout(r, 10_000)))]);
      } finally {
        clearTimeout(timer);
        await kill();
      }
    },
  };
}

// ---------------------------------------------------------------- the child

async function child(who: { userId: string; deviceId: string }): Promise<void> {
  const send = (m: FromChild): void => void process.send!(m);
  const answers = new Map<number, (body: string) => void>();
  let reqId = 0;
  const ask = (req: RawRequest): Promise<string> => new Promise((resolve) => (answers.set(reqId, resolve), send({ op: 'request', reqId: reqId++, req })));
  const gc = (globalThis as { gc?: () => void }).gc ?? (() => {});

  // As the crypto actor opens its store: a journal prefix `<storeName>::`, a passphrase-encrypted IndexedDB store.
  const dir = await mkdtemp(join(tmpdir(), 'halcyon-bench-raw-'));
  const storeName = `bench-raw-${process.pid}`;
  let journalFailure: Error | null = null;
  const journal = await IdbJournal.open(dir, 'crypto.sqlite', `${storeName}::`, (err) => (journalFailure = err));
  const machine = await W.OlmMachine.initialize(new W.UserId(who.userId), new W.DeviceId(who.deviceId), storeName, randomBytes(32).toString('base64url'));
  const pump = async (): Promise<void> => {
    for (let round = 0; round < 20; round++) {
      const reqs = (await machine.outgoingRequests()) as Array<{ id: string; type: W.RequestType; body: string; event_type?: string }>;
      if (reqs.length === 0) return;
      for (const r of reqs) await machine.markRequestAsSent(r.id, r.type, await ask({ type: r.type, body: r.body, ...(r.event_type ? { event_type: r.event_type } : {}) }));
    }
    throw new Error(`${who.userId} keeps making requests`);
  };

  const ops: Record<string, (m: Extract<ToChild, { id: number }>) => Promise<unknown>> = {
    async toDevice(m) {
      const { events } = m as Extract<ToChild, { op: 'toDevice' }>;
      const processed = await machine.receiveSyncChanges(JSON.stringify(events), new W.DeviceLists(), new Map(Object.entries(OTK_COUNTS)), new Set(), untrusted());
      for (const p of processed) if (p.type !== W.ProcessedToDeviceEventType.Decrypted) throw new Error(`could not decrypt a to-device event (type ${p.type})`);
      await pump();
      return null;
    },
    async loop(m) {
      const { texts, room } = m as Extract<ToChild, { op: 'loop' }>;
      gc(); // as the parent does before every measurement
      return decryptLoop(machine, texts, room);
    },
    async close() {
      machine.close();
      await journal.close();
      await rm(dir, { recursive: true, force: true });
      if (journalFailure) throw journalFailure;
      return null;
    },
  };
  process.on('message', (m: ToChild) => {
    if (m.op === 'answer') {
      answers.get(m.reqId)?.(m.body);
      answers.delete(m.reqId);
      return;
    }
    ops[m.op]!(m).then(
      (result) => {
        send({ op: 'done', id: m.id, result });
        if (m.op === 'close') process.disconnect();
      },
      (err: unknown) => send({ op: 'done', id: m.id, error: (err as Error).stack ?? String(err) }),
    );
  });
  await pump(); // device keys and one-time keys
  send({ op: 'ready' });
}

/** The timed loop: each text through `decryptRoomEvent`, reading `.event` and freeing the result. */
async function decryptLoop(machine: W.OlmMachine, texts: string[], room: string): Promise<RawLoopResult> {
  let sink = 0;
  const n = texts.length;
  const roomId = new W.RoomId(room);
  const th0 = threadGroupsCpuMs();
  const p0 = processCpuMs();
  const c0 = threadCpuMs();
  const t0 = performance.now();
  for (const text of texts) {
    const d = await machine.decryptRoomEvent(text, roomId, untrusted());
    sink += d.event.length;
    d.free();
  }
  const seconds = (performance.now() - t0) / 1000;
  const cpu = threadCpuMs() - c0;
  const proc = processCpuMs() - p0;
  const th = perEventDelta(th0, threadGroupsCpuMs(), n);
  if (sink === 0) throw new Error('unreachable');
  return { events: n, seconds, eventsPerSec: n / seconds, mainCpuUsPerEvent: (cpu * 1000) / n, allThreadsCpuUsPerEvent: (proc * 1000) / n, ...(th ? { threadsCpuUsPerEvent: th } : {}) };
}

if (process.argv[1] === CHILD && process.send) {
  child(JSON.parse(process.argv[2] ?? '{}') as { userId: string; deviceId: string }).catch((err: unknown) => {
    process.stderr.write(`[raw loop process] ${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  });
}
