/**
 * Questions a command asks and waits for ({@link Questions}): each pending question names the room, the thread,
 * the person who may answer and, optionally, reaction choices; the router hands every message and reaction to
 * {@link Questions.takeMessage} / {@link Questions.takeReaction} before treating it as a command, and the first
 * one that answers a question settles it. Pending questions live in memory only: they end (rejecting with
 * `HALCYON_STOPPED`) when the client stops, and a restart does not bring them back — the command that asked
 * is over then (its event was acknowledged when it started waiting).
 */
import { HalcyonError } from '../errors.ts';
import type { Message, Reaction } from '../events.ts';

/** Options of `ctx.ask` (`CommandContext.ask`). */
export interface AskOptions {
  /** Who may answer (default: the command's sender). Messages and reactions of anyone else do not count. */
  from?: string;
  /** How long to wait for the answer, in ms (default 300,000: five minutes; at most 24 h). */
  timeoutMs?: number;
  /**
   * Where the question goes and the answer is expected: `true` in the conversation's thread (starting one at the
   * command if there is none), `false` in the main timeline; by default where the command's replies go (the
   * command's thread when it came from one).
   */
  thread?: boolean;
  /**
   * Reaction keys offered as answers (`['👍', '👎']`): the bot reacts to its question with each, and a reaction
   * of the person with one of them answers. A message whose text is one of them counts as that choice too.
   */
  choices?: string[];
}

/** The answer to a question: a message, or a reaction with one of the offered choices. */
export interface Answer {
  /** The message's text (`body`), or the reaction's key. */
  text: string;
  /** The choice picked (one of {@link AskOptions.choices}, as offered), or null. */
  choice: string | null;
  /** The message that answered, or null when a reaction did. */
  message: Message | null;
  /** The reaction that answered, or null when a message did. */
  reaction: Reaction | null;
}

/** The longest wait of a question: 24 h (a timer beyond 2^31 ms would fire at once). */
export const MAX_ASK_MS = 24 * 3600_000;

/** A question waiting for its answer. */
interface Pending {
  roomId: string;
  /** The thread the answer is expected in, or null for the main timeline. */
  threadId: string | null;
  from: string;
  choices: string[];
  /** The question's event ID once it is sent (reactions answer it; a thread rooted at it counts as its thread). */
  questionId: string | null;
  /** Resolves with the answer, or rejects with `{ error }`; only the first call counts. */
  settle(outcome: Answer | { error: unknown }): void;
}

/** Emoji keys arrive with or without the emoji presentation selector (U+FE0F); the same reaction either way. */
const sameKey = (a: string, b: string) => a.replace(/\uFE0F/g, '') === b.replace(/\uFE0F/g, '');

/** The pending questions of one router; see the module comment. */
export class Questions {
  private readonly pending: Pending[] = [];

  /**
   * Registers a question and returns its answer (a promise) and a setter for the question's event ID. The
   * promise rejects with `HALCYON_ASK_TIMEOUT` after `timeoutMs`, and with `HALCYON_STOPPED` when `stopped`
   * aborts or {@link cancel} is called.
   */
  add(q: { roomId: string; threadId: string | null; from: string; choices: string[]; timeoutMs: number }, stopped: AbortSignal): {
    answer: Promise<Answer>;
    sent(questionId: string): void;
    cancel(err: unknown): void;
  } {
    let resolve!: (a: Answer) => void;
    let reject!: (e: unknown) => void;
    const answer = new Promise<Answer>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    const onStop = () => entry.settle({ error: new HalcyonError('HALCYON_STOPPED', 'the client stopped while a question waited for its answer', { roomId: q.roomId }) });
    const timer = setTimeout(() => {
      const error = new HalcyonError('HALCYON_ASK_TIMEOUT', `no answer from ${q.from} within ${Math.round(q.timeoutMs / 1000)} s`, { roomId: q.roomId });
      entry.settle({ error });
    }, q.timeoutMs);
    const entry: Pending = {
      ...q,
      questionId: null,
      settle: (outcome) => {
        const i = this.pending.indexOf(entry);
        if (i < 0) return; // settled already
        this.pending.splice(i, 1);
        clearTimeout(timer);
        stopped.removeEventListener('abort', onStop);
        if ('error' in outcome) reject(outcome.error);
        else resolve(outcome);
      },
    };
    this.pending.push(entry);
    if (stopped.aborted) onStop();
    else stopped.addEventListener('abort', onStop, { once: true });
    return { answer, sent: (id) => void (entry.questionId = id), cancel: (error) => entry.settle({ error }) };
  }

  /** Whether `m` answers a pending question (the oldest it answers settles); the router then goes no further. */
  takeMessage(m: Message): boolean {
    const thread = m.threadId;
    const p = this.pending.find(
      (q) => q.roomId === m.roomId && q.from === m.sender && (thread === q.threadId || (thread !== null && thread === q.questionId)),
    );
    if (!p) return false;
    const text = m.body;
    const choice = p.choices.find((c) => sameKey(c, text.trim())) ?? null;
    p.settle({ text, choice, message: m, reaction: null });
    return true;
  }

  /** Whether `r` picks a choice of a pending question (a reaction of its person to it, with an offered key). */
  takeReaction(r: Reaction): boolean {
    const p = this.pending.find((q) => q.roomId === r.roomId && q.from === r.sender && q.questionId !== null && q.questionId === r.targetEventId);
    const choice = p?.choices.find((c) => sameKey(c, r.key));
    if (!p || choice === undefined) return false;
    p.settle({ text: r.key, choice, message: null, reaction: r });
    return true;
  }

  /** Ends every pending question with `err` (the router was closed). */
  cancelAll(error: HalcyonError): void {
    for (const p of [...this.pending]) p.settle({ error });
  }
}
