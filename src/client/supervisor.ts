/**
 * The supervisor of the client's actors (worker threads only): a watchdog checks that the sync actor answers and
 * keeps starting polls, and a dead or stuck set of actors is stopped and started again after 1 s, 2 s, 4 s, ...
 * Handlers and sends go on meanwhile; the restarted sync actor posts the journal's unfinished batches again and
 * main merges them with what it runs. More than {@link MAX_RESTARTS} restarts within 5 minutes stop the client.
 * A cluster ingest that lost its lease has its actors stopped and started the same way ({@link Supervisor.standBy}):
 * one owner of the actor set for both, so a step-down and an actor restart never run side by side. Every start
 * (a restart's and a stand-by's) waits until the role leads, and a set that a step-down overtook while it started
 * is never reported running: the stand-by that step-down queued stops it as soon as its start returns.
 */
import { HalcyonError } from '../errors.ts';
import { delay } from '../abort.ts';
import type { Actors } from './actors.ts';
import type { ResolvedOptions } from './options.ts';

/** Actor restarts allowed within {@link RESTART_WINDOW_MS} before the client gives up. */
const MAX_RESTARTS = 5;
const RESTART_WINDOW_MS = 5 * 60_000;
/** How long the sync actor may take to answer the watchdog. */
const WATCHDOG_ANSWER_MS = 10_000;

/** What the supervisor needs from the client. */
export interface SupervisorDeps {
  opts: ResolvedOptions;
  actors: Actors;
  /** Whether the client is running (restarts happen only then). */
  running(): boolean;
  /** Aborted when the client stops: ends a restart's wait. */
  lifecycle(): AbortSignal;
  /** Resolves once this process may run its actors: at once, except on a cluster ingest that stands by. */
  leading(): Promise<void>;
  /** Starts a new set of actors; its sync actor only if `leads()` still holds once the others are open. */
  start(leads: () => boolean): Promise<void>;
  /** The new set runs, and no step-down came while it started: a cluster ingest serves its workers again. */
  started(): void;
  /** Reports a problem that does not stop the client (the `error` event). */
  report(err: HalcyonError): void;
  /** A problem that stops the client. */
  fail(err: HalcyonError): void;
  warn(obj: unknown, msg: string): void;
}

/** Restarts and the watchdog; see the module comment. */
export class Supervisor {
  /** The restart in progress, or null. */
  restarting: Promise<void> | null = null;
  private times: number[] = [];
  private watchdog: NodeJS.Timeout | null = null;
  /** Step-downs so far ({@link standBy}): a start during which this changed did not lead all along. */
  private standBys = 0;
  /** Ends the back-off of the last restart: a step-down supersedes a restart that has not started its actors. */
  private backOff = new AbortController();

  constructor(private readonly deps: SupervisorDeps) {}

  /** Starts the watchdog (worker threads only: inline actors cannot be restarted alone). */
  watch(): void {
    if (this.deps.opts.threads !== 'worker') return;
    this.watchdog = setInterval(() => void this.check(), this.deps.opts.watchdogMs).unref();
  }

  /** Stops the watchdog and waits for a restart in progress to end (its wait is aborted by the lifecycle). */
  async stop(): Promise<void> {
    if (this.watchdog) clearInterval(this.watchdog);
    this.watchdog = null;
    await this.restarting?.catch(() => {});
  }

  /** An actor died or the sync actor is stuck: report it and restart the set (inline actors: fail). */
  restart(err: HalcyonError): void {
    const d = this.deps;
    if (!d.running() || this.restarting) return;
    if (d.opts.threads === 'inline') return d.fail(err);
    const now = Date.now();
    this.times = this.times.filter((t) => now - t < RESTART_WINDOW_MS);
    if (this.times.length >= MAX_RESTARTS) {
      return d.fail(new HalcyonError('HALCYON_ACTOR_DIED', `the actors failed ${MAX_RESTARTS} times within 5 minutes; giving up: ${err.message}`, { cause: err }));
    }
    this.times.push(now);
    d.report(err);
    const wait = 1000 * 2 ** (this.times.length - 1);
    const backOff = (this.backOff = new AbortController());
    this.cycle(async () => {
      // Cut short by a stop, or by a step-down: the stand-by queued behind this starts the actors once leading.
      const waited = await delay(wait, AbortSignal.any([d.lifecycle(), backOff.signal])).then(
        () => true,
        () => false,
      );
      if (waited && d.running() && (await this.startLeading())) d.warn({ after: err.code }, 'actors restarted');
    });
  }

  /**
   * Stops the actors and starts them again, after a restart in progress if any: a cluster ingest that lost its
   * lease stands by so (the start waits until it holds the lease again, which may be never). A restart still in its
   * back-off is superseded: it starts nothing. Not a failure: neither counted nor reported. Inline actors cannot be
   * stopped alone: the client fails with `err`.
   */
  standBy(err: HalcyonError): void {
    const d = this.deps;
    this.standBys++;
    this.backOff.abort();
    if (!d.running()) return;
    if (d.opts.threads === 'inline') return d.fail(err);
    this.cycle(async () => {
      if (d.running()) await this.startLeading();
    });
  }

  /**
   * Starts a set once the role leads, and reports it running unless a step-down came meanwhile (resolves false
   * then): that step-down's lease loss may let another ingest lead, so the set is not served from, and the
   * stand-by it queued, next in line behind this cycle, stops it at once.
   */
  private async startLeading(): Promise<boolean> {
    const d = this.deps;
    const downs = this.standBys;
    await d.leading();
    await d.start(() => this.standBys === downs);
    if (this.standBys !== downs) return false;
    d.started();
    return true;
  }

  /**
   * Stops the actors, then runs `then` (which starts them again): the one restart in progress, queued behind the
   * one before it if any (it then stops the actors that one started). A failure of it stops the client.
   */
  private cycle(then: () => Promise<void>): void {
    const d = this.deps;
    const before = this.restarting;
    const run = (async () => {
      await before;
      await d.actors.stop(false, (e, what) => d.warn(e, what));
      await then();
    })()
      .catch((e: HalcyonError) => {
        if (d.running()) d.fail(e);
      })
      .finally(() => {
        if (this.restarting === run) this.restarting = null;
      });
    this.restarting = run;
  }

  /** Checks that the sync actor answers and keeps polling; restarts the actors if not. */
  private async check(): Promise<void> {
    const d = this.deps;
    const sync = d.actors.set?.sync;
    if (!d.running() || this.restarting || !sync) return;
    let timer: NodeJS.Timeout | undefined;
    const silent = new Promise<'silent'>((r) => (timer = setTimeout(() => r('silent'), WATCHDOG_ANSWER_MS)));
    const st = await Promise.race([sync.api.status().catch(() => null), silent]);
    clearTimeout(timer);
    if (d.actors.set?.sync !== sync || !d.running()) return;
    if (st === 'silent') {
      return this.restart(new HalcyonError('HALCYON_ACTOR_TIMEOUT', `the sync actor did not answer the watchdog within ${WATCHDOG_ANSWER_MS} ms; restarting it`));
    }
    // Waiting on purpose (a full journal, a backoff or the server's retry time) is not being stuck.
    if (!st || !st.running || st.waitingForCredit || st.lastPollStartAt === null || (st.nextPollAt !== null && st.nextPollAt > Date.now() - 60_000)) return;
    // A poll starts at least this often: its deadline, the longest backoff, and slack for a slow hand-off.
    const stuckMs = d.opts.pollTimeoutMs + 15_000 + d.opts.backoffMaxMs + 60_000;
    if (Date.now() - st.lastPollStartAt > stuckMs) {
      this.restart(new HalcyonError('HALCYON_ACTOR_TIMEOUT', `the sync actor started no poll for ${Math.round((Date.now() - st.lastPollStartAt) / 1000)} s; restarting it`));
    }
  }
}
