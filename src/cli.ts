/**
 * The `halcyon` command: `halcyon login` gets a long-lived token (printed, or written to a 0600 file);
 * `halcyon whoami` shows whom a token belongs to. Neither ever prints a password or a token it was given. With a
 * data dir, login also cross-signs the device; the recovery key of a new identity is written to a 0600 file and only
 * its path is printed (the key itself only with --show-recovery-key).
 * Secrets come from stdin, a file or the environment; one given literally in argv still works, with a warning
 * (argv is visible to every user in `ps` and stays in shell history). Prompts are only shown on a terminal,
 * and a password typed there is never echoed.
 */
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline/promises';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { Client } from './client.ts';
import { type LoginDetails, loginWithDetails } from './client/login.ts';
import { HalcyonError, toWireError } from './errors.ts';
import { MatrixHttp } from './http.ts';
import { writeSecretFile } from './store.ts';
import { decodeToken } from './token.ts';

const LOGIN_USAGE = `  halcyon login [--homeserver URL|SERVER] [--user USER] [--device-name NAME] [--data-dir DIR] [--out FILE]
                [--password-stdin | --password-file FILE | --password @FILE] [--allow-insecure-http]
                [--recovery-key @FILE | --recovery-key -] [--reset-cross-signing] [--show-recovery-key]
                [--store-passphrase-file FILE] [--no-encryption]
      Logs in and prints the token (or writes it to FILE with mode 0600). The password comes from stdin
      (--password-stdin), a file, the HALCYON_PASSWORD environment variable, or else is asked for on the
      terminal without echo. Missing --homeserver and --user are asked for on a terminal too; when stdin is not a
      terminal they must be given. --password PASS still works but warns: argv shows in ps and shell history.
      A bare server name (example.org) is resolved through its .well-known; plain http:// to another machine
      is refused unless --allow-insecure-http.
      With --data-dir, the device is also cross-signed (--no-encryption skips it). An account without a
      cross-signing identity gets one, with secret storage and a key backup: its recovery key is written to
      DIR/recovery-key.txt (mode 0600) and only the path is printed (the key too with --show-recovery-key, on
      stderr). An account that has one needs its recovery key to sign the device: --recovery-key @FILE, - (stdin),
      or the HALCYON_RECOVERY_KEY environment variable (--recovery-key KEY warns, as a password in argv does);
      without it the device stays unsigned, with a warning. --reset-cross-signing replaces the identity. The
      crypto store's passphrase, if the bot gives its own, comes from --store-passphrase-file or
      HALCYON_STORE_PASSPHRASE.`;
const WHOAMI_USAGE = `  halcyon whoami [@FILE | -]
      Asks the homeserver whom the token belongs to. The token comes from FILE, from stdin (-), or from the
      HALCYON_TOKEN environment variable (whoami TOKEN still works but warns: argv shows in ps and shell history).`;
const TOKEN_USAGE = `  halcyon token import --homeserver URL|SERVER [--access-token-stdin | --access-token-file FILE] [--data-dir DIR]
                       [--out FILE] [--allow-insecure-http]
      Wraps an access token you already have (another client's, an admin tool's) into a Halcyon token: asks the
      homeserver whose device it is and prints the token (or writes it to FILE with mode 0600). The access token
      comes from stdin, a file, or the HALCYON_ACCESS_TOKEN environment variable.`;
const USAGE = `usage:\n${LOGIN_USAGE}\n${WHOAMI_USAGE}\n${TOKEN_USAGE}\n  halcyon [COMMAND] --help\n      Shows this.`;

/** The largest secret read from stdin or a file: anything longer is not a password or a token. */
const MAX_SECRET_BYTES = 64 * 1024;

const PASSWORD_SOURCES = 'pass --password-stdin (and pipe it in), --password-file FILE, or set HALCYON_PASSWORD';

/** Warns that a secret sat in argv, naming what to use instead (never the secret). */
function warnArgv(what: string, instead: string): void {
  process.stderr.write(`halcyon: warning: a ${what} given on the command line is visible to other users in ps and is kept in shell history; ${instead} instead\n`);
}

/** `text` without one trailing line ending (what `echo` and editors add after a secret). */
function chompLine(text: string): string {
  return text.endsWith('\r\n') ? text.slice(0, -2) : text.endsWith('\n') ? text.slice(0, -1) : text;
}

/** Reads the secret in `path` as one coded error that names the file on failure (not Node's `ENOENT: ENOENT: …`). */
function readSecretFromFile(path: string, what: string): string {
  let bytes: Buffer;
  try {
    bytes = readFileSync(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : code === 'EISDIR' ? 'it is a directory' : (code ?? String(err));
    throw new HalcyonError('HALCYON_INVALID_ARGUMENT', `cannot read the ${what} file ${path}: ${why}`);
  }
  if (bytes.length > MAX_SECRET_BYTES) throw new HalcyonError('HALCYON_INVALID_ARGUMENT', `the ${what} file ${path} is larger than ${MAX_SECRET_BYTES} bytes`);
  return chompLine(bytes.toString('utf8'));
}

/** Reads the secret piped into stdin (all of it, up to {@link MAX_SECRET_BYTES}); on a terminal, asks without echo. */
async function readSecretFromStdin(what: string): Promise<string> {
  if (process.stdin.isTTY) return typedSecret(`${what[0]!.toUpperCase()}${what.slice(1)}: `);
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of process.stdin as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_SECRET_BYTES) throw new HalcyonError('HALCYON_INVALID_ARGUMENT', `stdin holds more than ${MAX_SECRET_BYTES} bytes: not a ${what}`);
    chunks.push(chunk);
  }
  return chompLine(Buffer.concat(chunks).toString('utf8'));
}

/** Asks for a value that may be shown (a URL, a user name): a plain line read from the terminal. */
async function ask(question: string): Promise<string> {
  const rl = createInterface({ input: process.stdin, output: process.stderr, terminal: process.stdin.isTTY });
  try {
    return (await rl.question(question)).trim();
  } finally {
    rl.close();
  }
}

/** What {@link readHidden} read: the line, or that the user pressed Ctrl-C, or Ctrl-D on an empty line. */
type HiddenInput = { line: string } | 'interrupt' | 'eof';

/**
 * Reads a secret from the terminal without echoing it. Raw mode turns off the terminal's own echo and line
 * editing, so this does the editing: Enter ends the line, Backspace/DEL erases the last character, Ctrl-U the
 * whole line, Ctrl-C aborts, Ctrl-D ends the input; escape sequences (arrow keys, the markers of a bracketed
 * paste) and other control characters are ignored, and so is input past {@link MAX_SECRET_BYTES}. A multi-byte
 * character split across reads is joined by the stream's UTF-8 decoder. The terminal's mode is restored however
 * it ends.
 * (readline cannot do this: the prompt interface of `readline/promises` echoes through internals no longer
 * overridable, so a password showed as it was typed.)
 */
function readHidden(prompt: string): Promise<HiddenInput> {
  const stdin = process.stdin;
  const wasRaw = stdin.isRaw;
  // Raw mode before the prompt: what is typed once the prompt shows must never meet the terminal's echo.
  stdin.setRawMode(true);
  process.stderr.write(prompt);
  stdin.setEncoding('utf8');
  let line = '';
  let escape: 'none' | 'start' | 'sequence' = 'none';
  return new Promise((resolve, reject) => {
    const done = (err: Error | null, result?: HiddenInput) => {
      stdin.off('data', onData).off('end', onEnd).off('error', done);
      stdin.setRawMode(wasRaw);
      stdin.pause();
      process.stderr.write('\n');
      if (err) reject(err);
      else resolve(result!);
    };
    const onEnd = () => done(null, line === '' ? 'eof' : { line });
    const onData = (chunk: string) => {
      for (const ch of chunk) {
        if (escape === 'start') escape = ch === '[' || ch === 'O' ? 'sequence' : 'none';
        else if (escape === 'sequence') escape = ch >= '@' && ch <= '~' ? 'none' : 'sequence'; // a CSI ends at its final byte
        else if (ch === '\r' || ch === '\n') return done(null, { line });
        else if (ch === '\x03') return done(null, 'interrupt');
        else if (ch === '\x04') return done(null, line === '' ? 'eof' : { line });
        else if (ch === '\x7f' || ch === '\b') line = [...line].slice(0, -1).join('');
        else if (ch === '\x15') line = '';
        else if (ch === '\x1b') escape = 'start';
        else if (ch >= ' ' && line.length < MAX_SECRET_BYTES) line += ch;
      }
    };
    stdin.on('data', onData).on('end', onEnd).on('error', done);
    stdin.resume();
  });
}

/** Thrown by {@link typedSecret} on Ctrl-C: the CLI exits 130, as a SIGINT would have (raw mode made it a key). */
class Interrupted extends Error {}

/** Asks for a secret on the terminal without echo; Ctrl-C interrupts, Ctrl-D on an empty line gives ''. */
async function typedSecret(prompt: string): Promise<string> {
  const typed = await readHidden(prompt);
  if (typed === 'interrupt') throw new Interrupted();
  return typed === 'eof' ? '' : typed.line;
}

/**
 * Where the password will come from: exactly one of the flags, else HALCYON_PASSWORD, else the terminal. Decided
 * (and refused, with stdin not a terminal and no source) before anything is asked; the result reads it.
 */
function passwordSource(values: { password?: string; 'password-file'?: string; 'password-stdin'?: boolean }): () => Promise<string> {
  const { password, 'password-file': file, 'password-stdin': stdin } = values;
  if ([password !== undefined, file !== undefined, stdin === true].filter(Boolean).length > 1) {
    throw new HalcyonError('HALCYON_INVALID_ARGUMENT', 'give one of --password, --password-file and --password-stdin');
  }
  const env = process.env.HALCYON_PASSWORD;
  if (!stdin && file === undefined && password === undefined && env === undefined && !process.stdin.isTTY) {
    throw new HalcyonError('HALCYON_INVALID_ARGUMENT', `no password: stdin is not a terminal to ask on; ${PASSWORD_SOURCES}`);
  }
  if (password !== undefined && !password.startsWith('@')) warnArgv('password', 'use --password-stdin, --password-file FILE or HALCYON_PASSWORD');
  return async () => {
    const pw = stdin ? await readSecretFromStdin('password')
      : file !== undefined ? readSecretFromFile(file, 'password')
      : password?.startsWith('@') ? readSecretFromFile(password.slice(1), 'password')
      : (password ?? env ?? (await typedSecret('Password: ')));
    if (pw === '') throw new HalcyonError('HALCYON_INVALID_ARGUMENT', 'the password is empty');
    return pw;
  };
}

/** A value given as a flag, else asked for on the terminal; with stdin not a terminal, a coded error at once. */
async function flagOrAsk(value: string | undefined, flag: string, question: string): Promise<string> {
  if (value !== undefined) return value;
  if (!process.stdin.isTTY) throw new HalcyonError('HALCYON_INVALID_ARGUMENT', `no ${flag}: stdin is not a terminal to ask on; pass ${flag}`);
  return ask(question);
}

/** The token for `whoami`: `@FILE`, `-` (stdin), HALCYON_TOKEN, or (with a warning) the token itself. */
async function token(arg: string | undefined): Promise<string> {
  if (arg === undefined) {
    const env = process.env.HALCYON_TOKEN;
    if (env === undefined || env.trim() === '') throw new HalcyonError('HALCYON_INVALID_ARGUMENT', 'no token: give @FILE, pipe it in with -, or set HALCYON_TOKEN');
    return env.trim();
  }
  if (arg === '-') return (await readSecretFromStdin('token')).trim();
  if (arg.startsWith('@')) return readSecretFromFile(arg.slice(1), 'token').trim();
  warnArgv('token', 'use whoami @FILE, whoami - (stdin) or HALCYON_TOKEN');
  return arg;
}

/** parseArgs, with `--help`/`-h`, whose errors are coded (and never echo a value: they name the option only). */
function parse<O extends NonNullable<ParseArgsConfig['options']>>(args: string[], options: O) {
  try {
    return parseArgs({ args, options: { ...options, help: { type: 'boolean', short: 'h' } }, allowPositionals: true, strict: true });
  } catch (err) {
    throw new HalcyonError('HALCYON_INVALID_ARGUMENT', `${(err as Error).message.split('. ')[0]} (see halcyon --help)`);
  }
}

/** `halcyon login`. */
async function login(args: string[]): Promise<number> {
  const { values, positionals } = parse(args, {
    homeserver: { type: 'string' },
    user: { type: 'string' },
    password: { type: 'string' },
    'password-file': { type: 'string' },
    'password-stdin': { type: 'boolean' },
    'device-name': { type: 'string' },
    'data-dir': { type: 'string' },
    out: { type: 'string' },
    'allow-insecure-http': { type: 'boolean' },
    'recovery-key': { type: 'string' },
    'reset-cross-signing': { type: 'boolean' },
    'show-recovery-key': { type: 'boolean' },
    'store-passphrase-file': { type: 'string' },
    'no-encryption': { type: 'boolean' },
  });
  if (values.help) return help(`usage:\n${LOGIN_USAGE}`);
  // Not echoed: a stray positional may well be the password.
  if (positionals.length > 0) throw new HalcyonError('HALCYON_INVALID_ARGUMENT', 'login takes no positional arguments (see halcyon login --help)');
  // Everything is checked before anything is asked: a script without a password fails before any prompt.
  const readPassword = passwordSource(values);
  const readRecoveryKey = recoveryKeySource(values);
  if (values['password-stdin'] && !process.stdin.isTTY && (values.homeserver === undefined || values.user === undefined)) {
    throw new HalcyonError('HALCYON_INVALID_ARGUMENT', 'with --password-stdin, give --homeserver and --user too (stdin holds the password)');
  }
  const homeserver = await flagOrAsk(values.homeserver, '--homeserver', 'Homeserver URL: ');
  const user = await flagOrAsk(values.user, '--user', 'User: ');
  const password = await readPassword();
  const recoveryKey = await readRecoveryKey();
  const passphraseFile = values['store-passphrase-file'];
  const passphrase = passphraseFile !== undefined ? readSecretFromFile(passphraseFile, 'store passphrase') : process.env.HALCYON_STORE_PASSPHRASE;
  const details = await loginWithDetails({
    homeserver,
    user,
    password,
    ...(values['device-name'] ? { deviceName: values['device-name'] } : {}),
    ...(values['data-dir'] ? { dataDir: values['data-dir'] } : {}),
    ...(values['allow-insecure-http'] ? { allowInsecureHttp: true } : {}),
    ...(recoveryKey !== undefined ? { recoveryKey } : {}),
    ...(values['reset-cross-signing'] ? { resetCrossSigning: true } : {}),
    encryption: values['no-encryption'] ? false : passphrase ? { passphrase } : true,
    // Warnings are printed below, one line each, after what login did.
    logger: { debug() {}, info() {}, warn() {}, error() {} },
  });
  writeToken(details.token, values.out);
  reportIdentity(details, values['show-recovery-key'] === true);
  return 0;
}

/**
 * Where the recovery key comes from: `--recovery-key @FILE`, `-` (stdin), the key itself (with a warning), or
 * HALCYON_RECOVERY_KEY; none is fine (an account without an identity needs none). Stdin cannot hold both it and
 * the password.
 */
function recoveryKeySource(values: { 'recovery-key'?: string; 'password-stdin'?: boolean }): () => Promise<string | undefined> {
  const flag = values['recovery-key'];
  if (flag === '-' && values['password-stdin']) throw new HalcyonError('HALCYON_INVALID_ARGUMENT', 'stdin cannot hold both the password and the recovery key: give the recovery key as @FILE or HALCYON_RECOVERY_KEY');
  if (flag !== undefined && flag !== '-' && !flag.startsWith('@')) warnArgv('recovery key', 'use --recovery-key @FILE, --recovery-key - (stdin) or HALCYON_RECOVERY_KEY');
  return async () => {
    if (flag === '-') return readSecretFromStdin('recovery key');
    if (flag?.startsWith('@')) return readSecretFromFile(flag.slice(1), 'recovery key');
    return flag ?? process.env.HALCYON_RECOVERY_KEY;
  };
}

/** Says on stderr what login did about the device's identity: never the recovery key unless asked. */
function reportIdentity(d: LoginDetails, showRecoveryKey: boolean): void {
  const say = (line: string) => process.stderr.write(`halcyon: ${line}\n`);
  if (d.crossSigning === 'created' || d.crossSigning === 'reset') say(`${d.crossSigning === 'reset' ? 'replaced the account\'s cross-signing identity' : 'set up cross-signing'} (master key ${d.masterKey}); the device is signed; key backup version ${d.keyBackup?.version ?? '-'}`);
  if (d.crossSigning === 'imported') say(`cross-signing keys taken from secret storage; the device is signed; ${d.keyBackup ? `${d.keyBackup.importedKeys} room keys restored from key backup version ${d.keyBackup.version}` : 'no key backup restored'}`);
  if (d.recoveryKeyFile) say(`the recovery key was written to ${d.recoveryKeyFile} (mode 0600): keep it somewhere safe, away from the bot; a new data dir logs in with it (--recovery-key @FILE)`);
  if (showRecoveryKey && d.recoveryKey) say(`recovery key: ${d.recoveryKey}`);
  for (const w of d.warnings) say(`warning: ${w.code}: ${w.message.split('\n')[0]}`);
}

/** `halcyon whoami`. */
async function whoami(args: string[]): Promise<number> {
  const { values, positionals } = parse(args, {});
  if (values.help) return help(`usage:\n${WHOAMI_USAGE}`);
  if (positionals.length > 1) throw new HalcyonError('HALCYON_INVALID_ARGUMENT', 'whoami takes one token source (see halcyon whoami --help)');
  const session = decodeToken(await token(positionals[0]));
  const http = new MatrixHttp(session.homeserver, session.accessToken);
  try {
    const who = await http.json<{ user_id?: string; device_id?: string }>('GET', '/_matrix/client/v3/account/whoami');
    process.stdout.write(JSON.stringify({ userId: who.user_id, deviceId: who.device_id ?? session.deviceId, homeserver: session.homeserver }, null, 2) + '\n');
    return 0;
  } finally {
    await http.close();
  }
}

/** `halcyon token import`. */
async function tokenCommand(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  const { values, positionals } = parse(rest, {
    homeserver: { type: 'string' },
    'access-token-stdin': { type: 'boolean' },
    'access-token-file': { type: 'string' },
    'data-dir': { type: 'string' },
    out: { type: 'string' },
    'allow-insecure-http': { type: 'boolean' },
  });
  if (values.help || sub === '--help' || sub === '-h') return help(`usage:\n${TOKEN_USAGE}`);
  if (sub !== 'import' || positionals.length > 0) throw new HalcyonError('HALCYON_INVALID_ARGUMENT', 'usage: halcyon token import --homeserver URL ... (see halcyon token --help)');
  if (values.homeserver === undefined) throw new HalcyonError('HALCYON_INVALID_ARGUMENT', 'token import needs --homeserver');
  const env = process.env.HALCYON_ACCESS_TOKEN;
  const accessToken = values['access-token-stdin'] ? (await readSecretFromStdin('access token')).trim()
    : values['access-token-file'] !== undefined ? readSecretFromFile(values['access-token-file'], 'access token').trim()
    : env?.trim();
  if (!accessToken) throw new HalcyonError('HALCYON_INVALID_ARGUMENT', 'no access token: pass --access-token-stdin (and pipe it in), --access-token-file FILE, or set HALCYON_ACCESS_TOKEN');
  const token = await Client.importToken({
    homeserver: values.homeserver,
    accessToken,
    ...(values['data-dir'] ? { dataDir: values['data-dir'] } : {}),
    ...(values['allow-insecure-http'] ? { allowInsecureHttp: true } : {}),
  });
  writeToken(token, values.out);
  return 0;
}

/** Prints the token, or writes it to `out` with mode 0600. */
function writeToken(token: string, out: string | undefined): void {
  if (out) {
    writeSecretFile(out, token + '\n');
    process.stderr.write(`token written to ${out} (mode 0600)\n`);
  } else process.stdout.write(token + '\n');
}

function help(text: string): number {
  process.stdout.write(text + '\n');
  return 0;
}

/** Runs the CLI with `argv` (without node and script); resolves with the exit code. */
export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  try {
    if (command === 'login') return await login(rest);
    if (command === 'whoami') return await whoami(rest);
    if (command === 'token') return await tokenCommand(rest);
  } catch (err) {
    if (!(err instanceof Interrupted)) throw err;
    process.stderr.write('halcyon: aborted\n');
    return 130;
  }
  if (command === undefined || command === 'help' || command === '--help' || command === '-h') return help(USAGE);
  process.stderr.write(`halcyon: unknown command (see below)\n${USAGE}\n`);
  return 2;
}

/** Entry point of the bin: runs {@link main} and reports errors as one coded line, without a stack. */
export function cli(): void {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err: unknown) => {
      const { code, message } = toWireError(err, 'HALCYON_INTERNAL');
      process.stderr.write(`halcyon: ${code}: ${message.split('\n')[0]}\n`);
      process.exit(1);
    },
  );
}
