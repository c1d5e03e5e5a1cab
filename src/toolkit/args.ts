/**
 * Command patterns and their arguments, as pure functions: {@link compilePattern} reads a pattern such as
 * `ban <user:userId> [reason...]`, {@link parseArgs} reads what a person typed after the command's name into
 * typed values, and {@link ArgsOf} gives the same reading to the type checker, so `ctx.args.user` is a string and
 * `ctx.args.reason` a string or undefined without a cast.
 *
 * Typed text is the sender's to make as long and as odd as they like: the tokenizer is one pass, every regex is
 * anchored and unambiguous (linear), and every failure is a `HALCYON_INVALID_ARGUMENT` whose message is written
 * for the person who typed the command (the router sends it back as a notice).
 */
import { isUserId } from '../content.ts';
import { HalcyonError } from '../errors.ts';

/**
 * The argument types a pattern may name after a colon (`<user:userId>`). Without a type an argument is a
 * `string`: one word, or a quoted string (`"two words"`, `'it\'s'`). A list of words separated by `|`
 * (`<mode:on|off>`) takes one of them.
 * - `userId`: a user ID (`@alice:example.org`), or a mention: a pill (its display name in the body), resolved to
 *   the user ID the message mentions (`m.mentions`, and the links of its HTML).
 * - `alias`: a room alias (`#room:example.org`); `room`: a room ID or alias.
 * - `number`: a decimal number (`-1.5`, `2e3`); `int`: a safe integer.
 * - `duration`: an amount of time such as `90s`, `5m`, `1h30m`, `2d` (units `ms`, `s`/`sec`, `m`/`min`, `h`,
 *   `d`, `w`), read as milliseconds.
 */
export type ArgType = 'string' | 'userId' | 'alias' | 'room' | 'number' | 'int' | 'duration';

/** The value an argument of type `T` has in `ctx.args`: a number for `number`, `int` and `duration`, one of the words of a `a|b` list, else a string. */
export type ArgValue<T extends string> = T extends ArgType
  ? T extends 'number' | 'int' | 'duration'
    ? number
    : string
  : T extends `${infer A}|${infer B}`
    ? A | ArgValue<B>
    : T;

/**
 * The type of `ctx.args` for a command pattern: one property per argument, optional for `[bracketed]` ones.
 * `<name>` and `[name]` are strings, `<name:type>` is {@link ArgValue} of the type, and `<name...>` / `[name...]`
 * (the rest of the line) a string.
 */
export type ArgsOf<P extends string> = string extends P
  ? Record<string, string | number | undefined>
  : P extends `${infer W} ${infer Rest}`
    ? ArgsOf<W> & ArgsOf<Rest>
    : P extends `<${infer N}...>`
      ? { [K in N]: string }
      : P extends `[${infer N}...]`
        ? { [K in N]?: string }
        : P extends `<${infer N}:${infer T}>`
          ? { [K in N]: ArgValue<T> }
          : P extends `<${infer N}>`
            ? { [K in N]: string }
            : P extends `[${infer N}:${infer T}]`
              ? { [K in N]?: ArgValue<T> }
              : P extends `[${infer N}]`
                ? { [K in N]?: string }
                : unknown;

/** One argument of a compiled pattern. */
export interface Param {
  name: string;
  /** The type; `rest` takes the rest of the line as typed; `choice` one of {@link Param.choices}. */
  type: ArgType | 'rest' | 'choice';
  choices: string[] | null;
  optional: boolean;
  /** As written in the pattern, for usage lines: `<user:userId>`. */
  source: string;
}

/** A command pattern, compiled: the words that name the command, then its arguments. */
export interface Pattern {
  /** The command's name: one or more words (`config set`), lower case. */
  path: string[];
  params: Param[];
  /** The pattern as written, spaces normalised. */
  source: string;
}

/** A user the message mentions and the texts that may stand for them in its body (the pill shows a display name). */
export interface MentionedUser {
  userId: string;
  names: string[];
}

const TYPES: ReadonlySet<string> = new Set<ArgType>(['string', 'userId', 'alias', 'room', 'number', 'int', 'duration']);
const NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const WORD = /^[^\s<>[\]|"']+$/;
const CHOICE = /^[^\s<>[\]|:]+$/;
const PARAM = /^(<|\[)([^<>[\]\s]+)(>|\])$/;

function badPattern(pattern: string, why: string): HalcyonError {
  return new HalcyonError('HALCYON_INVALID_ARGUMENT', `commands.add: bad pattern ${JSON.stringify(pattern)}: ${why}`);
}

/**
 * Compiles a command pattern: literal words (the command's name, at least one), then arguments — `<required>`,
 * `[optional]`, with a `:type` ({@link ArgType}, or `a|b|c`), or `...` for the rest of the line (last only). Required
 * arguments come before optional ones; names are unique. Throws `HALCYON_INVALID_ARGUMENT` saying what is wrong.
 */
export function compilePattern(pattern: string): Pattern {
  if (typeof pattern !== 'string') throw badPattern(String(pattern), 'it must be a string');
  const words = pattern.trim().split(/\s+/).filter((w) => w !== '');
  const path: string[] = [];
  const params: Param[] = [];
  for (const w of words) {
    const m = PARAM.exec(w);
    if (!m) {
      if (params.length > 0) throw badPattern(pattern, `the word "${w}" comes after an argument (command words come first)`);
      if (!WORD.test(w)) throw badPattern(pattern, `"${w}" is neither a command word nor an argument like <name> or [name]`);
      path.push(w.toLowerCase());
      continue;
    }
    if ((m[1] === '<') !== (m[3] === '>')) throw badPattern(pattern, `"${w}" mixes <> and []`);
    params.push(compileParam(pattern, w, m[2]!, m[1] === '['));
  }
  if (path.length === 0) throw badPattern(pattern, 'it needs a command name before its arguments');
  params.forEach((p, i) => {
    if (p.type === 'rest' && i !== params.length - 1) throw badPattern(pattern, `${p.source} takes the rest of the line, so it must come last`);
    if (!p.optional && i > 0 && params[i - 1]!.optional) throw badPattern(pattern, `the required ${p.source} comes after an optional argument`);
    if (params.findIndex((q) => q.name === p.name) !== i) throw badPattern(pattern, `two arguments are named ${p.name}`);
  });
  return { path, params, source: words.join(' ') };
}

function compileParam(pattern: string, source: string, inner: string, optional: boolean): Param {
  if (inner.endsWith('...')) {
    const name = inner.slice(0, -3);
    if (!NAME.test(name)) throw badPattern(pattern, `"${name}" is not an argument name (letters, digits, _)`);
    return { name, type: 'rest', choices: null, optional, source };
  }
  const colon = inner.indexOf(':');
  const name = colon < 0 ? inner : inner.slice(0, colon);
  const type = colon < 0 ? 'string' : inner.slice(colon + 1);
  if (!NAME.test(name)) throw badPattern(pattern, `"${name}" is not an argument name (letters, digits, _)`);
  if (TYPES.has(type)) return { name, type: type as ArgType, choices: null, optional, source };
  const choices = type.split('|');
  if (choices.length < 2 || !choices.every((c) => CHOICE.test(c))) {
    throw badPattern(pattern, `"${type}" is not an argument type (${[...TYPES].join(', ')}) nor a list of words like on|off`);
  }
  return { name, type: 'choice', choices, optional, source };
}

/** The arguments read from a command line, by name; optional ones not given are absent. */
export type ParsedArgs = Record<string, string | number>;

/** Quoted for showing in a message, and cut short: what a person typed may be long. */
function shown(s: string): string {
  return JSON.stringify(s.length > 60 ? `${s.slice(0, 60)}…` : s);
}

function invalid(message: string): HalcyonError {
  return new HalcyonError('HALCYON_INVALID_ARGUMENT', message);
}

const isSpace = (c: string | undefined): boolean => c !== undefined && /\s/.test(c);

/** Index of the first character at or after `i` that is not white space. */
function skipSpace(text: string, i: number): number {
  while (i < text.length && isSpace(text[i])) i++;
  return i;
}

/**
 * Reads one token at `i` (no white space there): a quoted string (`"…"` or `'…'`, a backslash escapes the next
 * character, the closing quote must end the word) or a bare word (up to white space; quotes and backslashes in it
 * are literal). Returns the value and the index after it.
 */
export function readToken(text: string, i: number): { value: string; end: number } {
  const q = text[i];
  if (q !== '"' && q !== "'") {
    let end = i;
    while (end < text.length && !isSpace(text[end])) end++;
    return { value: text.slice(i, end), end };
  }
  let value = '';
  for (let j = i + 1; j < text.length; j++) {
    const c = text[j]!;
    if (c === '\\' && j + 1 < text.length) {
      value += text[++j];
    } else if (c === q) {
      if (j + 1 < text.length && !isSpace(text[j + 1])) throw invalid(`a quoted argument must be followed by a space: ${shown(text.slice(i, j + 10))}`);
      return { value, end: j + 1 };
    } else value += c;
  }
  throw invalid(`a quote is not closed: ${shown(text.slice(i))}`);
}

/** Every token of `text` (see {@link readToken}). */
export function tokenize(text: string): string[] {
  const out: string[] = [];
  for (let i = skipSpace(text, 0); i < text.length; i = skipSpace(text, i)) {
    const t = readToken(text, i);
    out.push(t.value);
    i = t.end;
  }
  return out;
}

/** `s` quoted so that {@link readToken} reads it back exactly. */
export function quoteArg(s: string): string {
  return `"${s.replace(/[\\"]/g, '\\$&')}"`;
}

const NUMBER = /^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$/;
const INT = /^[+-]?\d+$/;
const ALIAS = /^#[^\s:]+:\S+$/;
const ROOM_ID = /^![^\s:]+(?::\S+)?$/;
const DURATION_PART = /(\d+(?:\.\d+)?)(ms|sec|s|min|m|h|d|w)/y;
const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, sec: 1000, m: 60_000, min: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 };

/** A duration like `90s`, `1h30m` or `1.5d` in milliseconds (rounded), or null. */
export function parseDuration(s: string): number | null {
  if (s === '') return null;
  let total = 0;
  DURATION_PART.lastIndex = 0;
  while (DURATION_PART.lastIndex < s.length) {
    const at = DURATION_PART.lastIndex;
    const m = DURATION_PART.exec(s);
    // A unit must not run into more letters: `5ms` is 5 ms, `5mx` is nothing.
    if (!m || m.index !== at) return null;
    total += Number(m[1]) * UNIT_MS[m[2]!]!;
  }
  const ms = Math.round(total);
  return Number.isSafeInteger(ms) ? ms : null;
}

/** One token read as a value of `p`'s type, or an error in the words of the person who typed it. */
function typed(p: Param, token: string): string | number {
  const fail = (what: string) => invalid(`${p.source} must be ${what}, not ${shown(token)}`);
  switch (p.type) {
    case 'string':
    case 'rest':
      return token;
    case 'userId':
      if (isUserId(token)) return token;
      throw fail('a user ID (@name:server) or a mention');
    case 'alias':
      if (token.length <= 255 && ALIAS.test(token)) return token;
      throw fail('a room alias (#room:server)');
    case 'room':
      if (token.length <= 255 && (ALIAS.test(token) || ROOM_ID.test(token))) return token;
      throw fail('a room ID or alias (#room:server)');
    case 'number': {
      const n = NUMBER.test(token) ? Number(token) : NaN;
      if (Number.isFinite(n)) return n;
      throw fail('a number');
    }
    case 'int': {
      const n = INT.test(token) ? Number(token) : NaN;
      if (Number.isSafeInteger(n)) return n;
      throw fail('a whole number');
    }
    case 'duration': {
      const ms = parseDuration(token.toLowerCase());
      if (ms !== null) return ms;
      throw fail('a duration like 90s, 5m or 1h30m');
    }
    case 'choice': {
      const c = p.choices!.find((x) => x.toLowerCase() === token.toLowerCase());
      if (c !== undefined) return c;
      throw invalid(`${p.source} must be one of ${p.choices!.join(', ')}, not ${shown(token)}`);
    }
  }
}

/**
 * A mention at `i` of `text`: the longest display name (or other name) of a mentioned user, with or without a
 * leading `@`, ending at white space, `:` or `,` or the end. Mentioned users are taken in order, each once, so two
 * pills with the same display name are the two users.
 */
function mentionAt(text: string, i: number, mentions: readonly MentionedUser[], used: Set<string>): { userId: string; end: number } | null {
  let best: { userId: string; end: number } | null = null;
  for (const m of mentions) {
    if (used.has(m.userId)) continue;
    for (const name of m.names) {
      for (const n of name.startsWith('@') ? [name] : [name, `@${name}`]) {
        if (n === '' || !text.startsWith(n, i)) continue;
        const after = i + n.length;
        const next = text[after];
        if (next !== undefined && !isSpace(next) && next !== ':' && next !== ',') continue;
        const end = next === ':' || next === ',' ? after + 1 : after;
        if (!best || end > best.end) best = { userId: m.userId, end };
      }
    }
  }
  return best;
}

/**
 * Reads the arguments of `pattern` from `text` (what follows the command's name). `mentions` resolves pills for
 * `userId` arguments. Throws `HALCYON_INVALID_ARGUMENT` with a message for the person: a missing argument, a
 * value of the wrong type, an unclosed quote, or words left over.
 */
export function parseArgs(pattern: Pattern, text: string, mentions: readonly MentionedUser[] = []): ParsedArgs {
  const args: ParsedArgs = {};
  const used = new Set<string>();
  let i = skipSpace(text, 0);
  for (const p of pattern.params) {
    if (i >= text.length) {
      if (!p.optional) throw invalid(`missing ${p.source}`);
      continue;
    }
    if (p.type === 'rest') {
      args[p.name] = text.slice(i).trim();
      i = text.length;
      continue;
    }
    const t = readToken(text, i);
    if (p.type === 'userId' && !isUserId(t.value)) {
      const m = mentionAt(text, i, mentions, used);
      if (m) {
        used.add(m.userId);
        args[p.name] = m.userId;
        i = skipSpace(text, m.end);
        continue;
      }
    }
    args[p.name] = typed(p, t.value);
    if (p.type === 'userId') used.add(t.value);
    i = skipSpace(text, t.end);
  }
  if (i < text.length) throw invalid(`unexpected ${shown(text.slice(i))} after the arguments`);
  return args;
}
