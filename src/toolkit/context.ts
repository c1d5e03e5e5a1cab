/**
 * What a command handler gets: the command's message and typed arguments, {@link CommandContext.reply} (in the
 * conversation's thread) and {@link CommandContext.ask} (wait for the person's next message or a reaction).
 *
 * A handler holds its room's lane (the next event of the room waits for it, as for any handler) until it settles
 * or asks a question: waiting for a person must not stop the room, or the answer could never arrive. From the
 * first `ask` on, the handler runs beside the room's later events, and the command's event counts as handled.
 */
import type { Client } from '../client.ts';
import { HalcyonError } from '../errors.ts';
import type { ContentInput, Message, MessageOptions, Room } from '../events.ts';
import { userIdArg } from '../ids.ts';
import { type Answer, type AskOptions, MAX_ASK_MS, type Questions } from './conversation.ts';

/** Options of {@link CommandContext.reply}: those of any message, and `thread`. */
export interface CommandReplyOptions extends MessageOptions {
  /**
   * `true`: in the conversation's thread, starting one at the command if there is none (later replies and
   * questions go there too); `false`: in the main timeline. By default: the conversation's thread if there is one
   * (the command came from a thread, or an earlier reply started one), else the main timeline.
   */
  thread?: boolean;
}

/** What a command handler is given; see the module comment. */
export class CommandContext<A = Record<string, string | number | undefined>> {
  /** The conversation's thread root, or null while it is in the main timeline. */
  #thread: string | null;
  readonly #questions: Questions;
  readonly #stopSignal: () => AbortSignal;
  readonly #release: () => void;

  /** @internal */
  constructor(
    /** The client (for everything else: `ctx.client.kickUser(...)`). */
    readonly client: Client,
    /** The message that invoked the command. */
    readonly message: Message,
    /** The command's name as registered (`ban`, `config set`). */
    readonly command: string,
    /** The arguments, typed by the pattern (see `ArgsOf`). */
    readonly args: A,
    internals: { questions: Questions; stopSignal: () => AbortSignal; release: () => void },
  ) {
    this.#thread = message.threadId;
    this.#questions = internals.questions;
    this.#stopSignal = internals.stopSignal;
    this.#release = internals.release;
  }

  /** Who sent the command. */
  get sender(): string {
    return this.message.sender;
  }

  /** The room the command came from. */
  get roomId(): string {
    return this.message.roomId;
  }

  /** The room's handle. */
  get room(): Room {
    return this.message.room;
  }

  /** The thread the conversation is in (the command's, or one a reply started), or null for the main timeline. */
  get threadId(): string | null {
    return this.#thread;
  }

  /**
   * Answers the command: a rich reply to it, mentioning the sender, in the conversation's thread (see
   * {@link CommandReplyOptions.thread}). A string is sent as `m.text`; pass content (`{ msgtype: 'm.notice', body }`)
   * for anything else. Resolves with the event ID.
   */
  reply(content: ContentInput, opts: CommandReplyOptions = {}): Promise<string> {
    const { thread, ...rest } = opts;
    return this.#send(content, this.#where(thread), rest);
  }

  /**
   * Asks a question and resolves with the answer: the next message of `from` (default: the sender) in the
   * question's room and thread, or their reaction to the question with one of `choices`. Rejects with
   * `HALCYON_ASK_TIMEOUT` after `timeoutMs` (default 5 minutes) and `HALCYON_STOPPED` when the client stops.
   * The answering message goes to no command (other `message` handlers still see it). From this call on the
   * handler no longer holds up the room (see the module comment); a question does not survive a restart.
   */
  async ask(question: ContentInput, opts: AskOptions = {}): Promise<Answer> {
    const from = opts.from === undefined ? this.sender : userIdArg(opts.from, 'ask');
    const timeoutMs = opts.timeoutMs ?? 300_000;
    if (!Number.isFinite(timeoutMs) || timeoutMs <= 0 || timeoutMs > MAX_ASK_MS) {
      throw new HalcyonError('HALCYON_INVALID_ARGUMENT', `ask: timeoutMs must be a positive number of ms up to ${MAX_ASK_MS} (24 h)`);
    }
    const choices = opts.choices ?? [];
    if (!Array.isArray(choices) || !choices.every((c) => typeof c === 'string' && c !== '')) {
      throw new HalcyonError('HALCYON_INVALID_ARGUMENT', 'ask: choices must be non-empty strings (reaction keys)');
    }
    const threadId = this.#where(opts.thread);
    // Registered before the room's lane is let go: the answer may be the very next event of the room.
    const q = this.#questions.add({ roomId: this.roomId, threadId, from, choices, timeoutMs }, this.#stopSignal());
    this.#release();
    try {
      const id = await this.#send(question, threadId, { mentions: [from] });
      q.sent(id);
      // Offered as reactions the person can click; the question stands even if one fails to go out.
      for (const key of choices) this.client.react(this.roomId, id, key).catch(() => {});
    } catch (err) {
      q.cancel(err);
    }
    return q.answer;
  }

  /** The thread a reply goes to for `thread` (see {@link CommandReplyOptions.thread}); starts one when asked. */
  #where(thread: boolean | undefined): string | null {
    if (thread === false) return null;
    if (thread === true && this.#thread === null) this.#thread = this.message.eventId;
    return this.#thread;
  }

  #send(content: ContentInput, threadId: string | null, opts: MessageOptions): Promise<string> {
    const where: MessageOptions = { mentions: [this.sender], ...opts, replyTo: this.message.eventId };
    if (threadId !== null) where.threadId = threadId;
    return this.client.sendMessage(this.roomId, content, where);
  }
}
