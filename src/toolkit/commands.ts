/**
 * The command router of `client.commands(...)`: it reads every message, recognises commands (the prefix, or a
 * mention of the bot at the start of the message), checks where and by whom a command may run (rooms, direct
 * chats, power levels through `RoomDetails.can()`, an allow-list), its cooldowns, and its arguments (args.ts),
 * then runs its handler with a {@link CommandContext}. Every refusal and failure is answered as an `m.notice`
 * replying to the command, in its thread: a person who typed a command always hears why nothing happened. A
 * generated help command lists what the sender may run in that room.
 *
 * Built on the public client API only (`on('message')`, `getRoom`, `sendMessage`), plus the few internals of
 * host.ts. Replies go through the outbox like any send, so they share its pacing: a storm of commands queues
 * replies at the rate limit instead of getting the bot 429'd, and cooldowns keep the storm from being run at all.
 */
import type { Client } from '../client.ts';
import { HalcyonError } from '../errors.ts';
import type { Message, Reaction } from '../events.ts';
import type { Action } from '../power.ts';
import type { RoomDetails } from '../rooms.ts';
import { type ArgsOf, compilePattern, type MentionedUser, parseArgs, type Pattern } from './args.ts';
import { CommandContext } from './context.ts';
import { Questions } from './conversation.ts';
import { Cooldowns } from './cooldowns.ts';
import { type ToolkitHost, inHandlerRun } from './host.ts';
import { helpText, usage } from './help.ts';

/** Options of `client.commands(...)`: how commands are recognised. */
export interface CommandsOptions {
  /** What a command starts with (default `!`): `!ban @bob:example.org`. Must not be empty or contain white space. */
  prefix?: string;
  /**
   * Whether a message that starts by mentioning the bot (its user ID, or a pill: `m.mentions`, the links of its
   * HTML) is a command without the prefix: `Halcyon: ban @bob:example.org` (default true). When addressed this way
   * an unknown command is answered; with the prefix alone it is ignored (other bots may share the prefix).
   */
  mentions?: boolean;
  /** The name of the generated help command, or false for none (default `help`). */
  help?: string | false;
  /** Users who may run every command, whatever its `power` and `allow` (the bot's owners). */
  admins?: string[];
}

/** Options of one command (`router.add(pattern, options, handler)`). */
export interface CommandOptions {
  /** One line for the help command. */
  help?: string;
  /**
   * Who may run it, by the room's power levels: a level (`50`: the sender's must be at least that), or an action
   * whose rule the sender must pass (`'ban'`, `'kick'`, `'redact'`, `'invite'`, `'state'`, ...; see `Action`). For
   * `kick`, `ban` and `unban` the target is the command's first `userId` argument: the sender must also outrank
   * them, as the server would require. Checked with `RoomDetails.can()` on the bot's cached room state.
   */
  power?: number | Action['kind'];
  /** Users who may run it whatever their power level; with `allow` and no `power`, only they may. */
  allow?: string[];
  /** Per user: after a run, the same user must wait this long (ms) before running it again. */
  cooldownMs?: number;
  /** Per room: after a run, nobody in that room may run it again for this long (ms). */
  roomCooldownMs?: number;
  /** Only in these rooms (IDs). */
  rooms?: string[];
  /** `true`: only in direct chats (rooms of two members); `false`: never there. Default: anywhere. */
  dm?: boolean;
}

/** A command's handler; its `ctx.args` are typed by the pattern. */
export type CommandHandler<A> = (ctx: CommandContext<A>) => unknown;

/** A registered command. */
export interface Command {
  pattern: Pattern;
  opts: CommandOptions;
  handler: CommandHandler<never>;
}

const POWER_KINDS: ReadonlySet<string> = new Set(['send', 'state', 'invite', 'kick', 'ban', 'unban', 'redact', 'notify']);
const TARGETED: ReadonlySet<string> = new Set(['kick', 'ban', 'unban']);

/** Checks a command's options; throws `HALCYON_INVALID_ARGUMENT` saying which is wrong. */
function checkOptions(o: CommandOptions, pattern: string): void {
  const bad = (why: string) => new HalcyonError('HALCYON_INVALID_ARGUMENT', `commands.add(${JSON.stringify(pattern)}): ${why}`);
  if (o.power !== undefined && !(typeof o.power === 'number' && Number.isFinite(o.power)) && !POWER_KINDS.has(o.power as string)) {
    throw bad(`power must be a level or one of ${[...POWER_KINDS].join(', ')}`);
  }
  for (const k of ['cooldownMs', 'roomCooldownMs'] as const) {
    const v = o[k];
    if (v !== undefined && !(typeof v === 'number' && v >= 0 && Number.isFinite(v))) throw bad(`${k} must be a number of ms >= 0`);
  }
  for (const k of ['allow', 'rooms'] as const) {
    const v = o[k];
    if (v !== undefined && !(Array.isArray(v) && v.every((x) => typeof x === 'string'))) throw bad(`${k} must be an array of strings`);
  }
}

/** The router; see the module comment. Made by `client.commands(...)`. */
export class CommandRouter {
  readonly #client: Client;
  readonly #host: ToolkitHost;
  readonly #prefix: string;
  readonly #mentions: boolean;
  readonly #help: string | null;
  readonly #admins: ReadonlySet<string>;
  readonly #commands: Command[] = [];
  readonly #questions = new Questions();
  readonly #cooldowns = new Cooldowns();
  readonly #onMessage = (m: Message): Promise<void> | undefined => this.#handle(m);
  readonly #onReaction = (r: Reaction): void => void this.#questions.takeReaction(r);

  /** @internal */
  constructor(client: Client, host: ToolkitHost, opts: CommandsOptions = {}) {
    const prefix = opts.prefix ?? '!';
    if (typeof prefix !== 'string' || prefix === '' || /\s/.test(prefix)) {
      throw new HalcyonError('HALCYON_INVALID_ARGUMENT', 'commands: prefix must be a non-empty string without white space');
    }
    if (opts.help !== undefined && opts.help !== false && !(typeof opts.help === 'string' && /^\S+$/.test(opts.help))) {
      throw new HalcyonError('HALCYON_INVALID_ARGUMENT', 'commands: help must be one word (the help command\'s name) or false');
    }
    if (opts.admins !== undefined && !(Array.isArray(opts.admins) && opts.admins.every((u) => typeof u === 'string'))) {
      throw new HalcyonError('HALCYON_INVALID_ARGUMENT', 'commands: admins must be an array of user IDs');
    }
    this.#client = client;
    this.#host = host;
    this.#prefix = prefix;
    this.#mentions = opts.mentions ?? true;
    this.#help = opts.help === false ? null : (opts.help ?? 'help').toLowerCase();
    this.#admins = new Set(opts.admins ?? []);
    client.on('message', this.#onMessage);
    client.on('reaction', this.#onReaction);
  }

  /**
   * Adds a command: `pattern` names it and its arguments (`ban <user:userId> [reason...]`; see the README's
   * "Commands" section for the types), `opts` says who may run it and how often. Throws `HALCYON_INVALID_ARGUMENT`
   * for a bad pattern or option, or a name already taken. Returns the router, for chaining.
   */
  add<P extends string>(pattern: P, opts: CommandOptions, handler: CommandHandler<ArgsOf<P>>): this;
  add<P extends string>(pattern: P, handler: CommandHandler<ArgsOf<P>>): this;
  add<P extends string>(pattern: P, a: CommandOptions | CommandHandler<ArgsOf<P>>, b?: CommandHandler<ArgsOf<P>>): this {
    const opts = typeof a === 'function' ? {} : (a ?? {});
    const handler = typeof a === 'function' ? a : b;
    if (typeof handler !== 'function') throw new HalcyonError('HALCYON_INVALID_ARGUMENT', `commands.add(${JSON.stringify(pattern)}): a handler function is needed`);
    const compiled = compilePattern(pattern);
    checkOptions(opts, pattern);
    const name = compiled.path.join(' ');
    if (name === this.#help || this.#commands.some((c) => c.pattern.path.join(' ') === name)) {
      throw new HalcyonError('HALCYON_INVALID_ARGUMENT', `commands.add: a command named "${name}" exists already`);
    }
    this.#commands.push({ pattern: compiled, opts: { ...opts }, handler: handler as CommandHandler<never> });
    return this;
  }

  /** The registered commands, in the order they were added. */
  get commands(): readonly Command[] {
    return this.#commands;
  }

  /** Stops routing: removes the router's handlers and ends its pending questions (`HALCYON_STOPPED`). */
  close(): void {
    this.#client.off('message', this.#onMessage);
    this.#client.off('reaction', this.#onReaction);
    this.#questions.cancelAll(new HalcyonError('HALCYON_STOPPED', 'the command router was closed while a question waited for its answer'));
  }

  /**
   * One message: an answer to a question, a command, or nothing for the router. A command is handled in a handler
   * run of its own, keyed by its event: every answer (refusals and the handler's sends alike) gets a transaction ID
   * derived from it, the same again if a crash makes the command run again, so nothing is sent twice.
   */
  #handle(m: Message): Promise<void> | undefined {
    if (this.#questions.takeMessage(m)) return undefined;
    const me = this.#client.whoami().userId;
    if (m.sender === me) return undefined;
    const mentioned = this.#mentions && m.mentionedUserIds.includes(me);
    if (!mentioned && !m.body.startsWith(this.#prefix)) return undefined;
    return inHandlerRun(`command:${m.eventId}`, () => this.#command(m, me, mentioned));
  }

  /** A message that may be a command: the help command, an unknown command, or one to check and run. */
  async #command(m: Message, me: string, mentioned: boolean): Promise<void> {
    const room = await this.#client.getRoom(m.roomId);
    const addressed = mentioned ? this.#addressed(m.body, me, room?.member(me)?.displayName ?? null) : null;
    const text = addressed ?? (m.body.startsWith(this.#prefix) ? m.body.slice(this.#prefix.length) : null);
    if (text === null) return;
    const words = text.trimStart();
    if (this.#help !== null && firstWord(words) === this.#help) {
      return void (await this.#notice(m, helpText(this.#prefix, this.#visible(m, room), skipWords(words, 1).trim())));
    }
    const cmd = this.#match(words);
    if (!cmd) {
      if (addressed !== null) await this.#notice(m, `I know no command "${firstWord(words)}".${this.#help === null ? '' : ` Try ${this.#prefix}${this.#help}.`}`);
      return;
    }
    await this.#run(m, room, cmd, words, mentionedUsers(m, room));
  }

  /** Checks and runs a matched command; see the module comment for the order of the checks. */
  async #run(m: Message, room: RoomDetails | undefined, cmd: Command, words: string, mentions: MentionedUser[]): Promise<void> {
    const name = cmd.pattern.path.join(' ');
    const where = this.#whereRefusal(cmd, room, m.roomId);
    if (where) return void (await this.#notice(m, `${this.#prefix}${name} ${where}.`));
    let args: Record<string, string | number>;
    try {
      args = parseArgs(cmd.pattern, skipWords(words, cmd.pattern.path.length), mentions);
    } catch (err) {
      return void (await this.#notice(m, `${(err as Error).message}. Usage: ${usage(this.#prefix, cmd)}`));
    }
    if (!this.#allowed(cmd, m.sender, room, args)) {
      return void (await this.#notice(m, `You may not run ${this.#prefix}${name} here${describePower(cmd.opts)}.`));
    }
    const wait = this.#cooldowns.take(cmd, name, m.sender, m.roomId);
    if (wait) {
      if (wait.tell) await this.#notice(m, `${this.#prefix}${name} is cooling down: try again in ${Math.ceil(wait.ms / 1000)} s.`);
      return;
    }
    await this.#call(m, cmd, name, args);
  }

  /**
   * Runs the handler (in the command's handler run: see {@link #handle}). Resolves when the handler settles or
   * first asks a question: see context.ts for why the room's lane is let go then.
   */
  #call(m: Message, cmd: Command, name: string, args: Record<string, string | number>): Promise<void> {
    let release!: () => void;
    const released = new Promise<void>((r) => (release = r));
    const ctx = new CommandContext(this.#client, m, name, args, { questions: this.#questions, stopSignal: () => this.#host.stopSignal(), release: () => release() });
    const run = (async () => {
      try {
        await cmd.handler(ctx as CommandContext<never>);
      } catch (err) {
        this.#host.commandFailed(err, m);
        const why = (err as HalcyonError | null)?.code === 'HALCYON_ASK_TIMEOUT' ? 'no answer came in time' : `it failed (${(err as HalcyonError | null)?.code ?? 'an error'})`;
        await this.#notice(m, `Sorry, ${this.#prefix}${name} did not finish: ${why}.`).catch(() => {});
      }
    })();
    return Promise.race([run, released]);
  }

  /**
   * The command text of a message that starts by mentioning the bot (its display name as a pill shows it, its user
   * ID or its localpart, with or without `@`, then `:`, `,` or white space), or null. The prefix is optional then.
   */
  #addressed(body: string, me: string, displayName: string | null): string | null {
    const names = [me, me.slice(1, me.indexOf(':'))];
    if (displayName) names.unshift(displayName);
    for (const n of names) {
      for (const cand of n.startsWith('@') ? [n] : [n, `@${n}`]) {
        if (body.slice(0, cand.length).toLowerCase() !== cand.toLowerCase()) continue;
        const rest = body.slice(cand.length);
        if (rest !== '' && !/^[\s:,]/.test(rest)) continue;
        const text = rest.replace(/^[:,]?\s*/, '');
        return text.startsWith(this.#prefix) ? text.slice(this.#prefix.length) : text;
      }
    }
    return null;
  }

  /** The command whose name (one or more words) starts `words`, the longest name first. */
  #match(words: string): Command | undefined {
    const typed = words.split(/\s+/, 8).map((w) => w.toLowerCase());
    let best: Command | undefined;
    for (const c of this.#commands) {
      const p = c.pattern.path;
      if (p.every((w, i) => typed[i] === w) && (!best || p.length > best.pattern.path.length)) best = c;
    }
    return best;
  }

  /** Why a command may not run in this room at all (its `rooms` and `dm` options), or null. */
  #whereRefusal(cmd: Command, room: RoomDetails | undefined, roomId: string): string | null {
    const { rooms, dm } = cmd.opts;
    if (rooms && !rooms.includes(roomId)) return 'is not available in this room';
    if (dm !== undefined) {
      const isDm = room !== undefined && room.joinedMemberCount + room.invitedMemberCount <= 2;
      if (dm && !isDm) return 'works only in a direct chat with me';
      if (!dm && isDm) return 'does not work in a direct chat';
    }
    return null;
  }

  /** Whether `sender` may run `cmd` in `room` (args given: the target of kick/ban/unban is checked too). */
  #allowed(cmd: Command, sender: string, room: RoomDetails | undefined, args: Record<string, string | number> | null): boolean {
    const { power, allow } = cmd.opts;
    if (this.#admins.has(sender) || allow?.includes(sender)) return true;
    if (power === undefined) return allow === undefined;
    if (!room) return false;
    if (typeof power === 'number') return room.powerLevel(sender) >= power;
    if (TARGETED.has(power) && args) {
      const p = cmd.pattern.params.find((x) => x.type === 'userId');
      const target = p ? args[p.name] : undefined;
      if (typeof target === 'string') return room.can(sender, { kind: power as 'kick', target });
    }
    return room.can(sender, power);
  }

  /** The commands `m`'s sender may run in its room, for the help command. */
  #visible(m: Message, room: RoomDetails | undefined): Command[] {
    return this.#commands.filter((c) => this.#whereRefusal(c, room, m.roomId) === null && this.#allowed(c, m.sender, room, null));
  }

  /** A notice replying to `m`, in its thread when it came from one, mentioning its sender. */
  #notice(m: Message, body: string): Promise<string> {
    const opts: { replyTo: string; mentions: string[]; threadId?: string } = { replyTo: m.eventId, mentions: [m.sender] };
    if (m.threadId !== null) opts.threadId = m.threadId;
    return this.#client.sendMessage(m.roomId, { msgtype: 'm.notice', body }, opts);
  }
}

/** The first word of `s`, lower case. */
function firstWord(s: string): string {
  return (s.split(/\s/, 1)[0] ?? '').toLowerCase();
}

/** `s` without its first `n` words (and the white space after them). */
function skipWords(s: string, n: number): string {
  let i = 0;
  for (let k = 0; k < n; k++) {
    while (i < s.length && /\s/.test(s[i]!)) i++;
    while (i < s.length && !/\s/.test(s[i]!)) i++;
  }
  return s.slice(i);
}

/** The users `m` mentions, with the names a pill may show for them (display name, localpart, ID). */
function mentionedUsers(m: Message, room: RoomDetails | undefined): MentionedUser[] {
  return m.mentionedUserIds.map((userId) => {
    const names = [userId, userId.slice(1, userId.indexOf(':'))];
    const dn = room?.member(userId)?.displayName;
    if (dn) names.unshift(dn);
    return { userId, names };
  });
}

/** What a refusal says the command needs. */
function describePower(o: CommandOptions): string {
  if (typeof o.power === 'number') return ` (it needs power level ${o.power})`;
  if (typeof o.power === 'string') return ` (it needs the power to ${o.power})`;
  return o.allow ? ' (only some users may)' : '';
}
