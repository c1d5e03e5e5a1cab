/**
 * The `halcyon` command: `halcyon login` gets a long-lived token (printed, or written to a 0600 file);
 * `halcyon whoami <token>` shows whom a token belongs to. Neither ever prints a password.
 */
import { createInterface } from 'node:readline/promises';
import { parseArgs } from 'node:util';
import { Client } from './client.ts';
import { HalcyonError } from './errors.ts';
import { MatrixHttp } from './http.ts';
import { writeSecretFile } from './store.ts';
import { decodeToken } from './token.ts';

const USAGE = `usage:
  halcyon login [--homeserver URL] [--user USER] [--password PASS] [--device-name NAME] [--data-dir DIR] [--out FILE]
      Logs in and prints the token (or writes it to FILE with mode 0600). Missing values are asked for.
      The password may also come from the HALCYON_PASSWORD environment variable.
  halcyon whoami <token|@file>
      Asks the homeserver whom the token belongs to.`;

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
 * whole line, Ctrl-C aborts, Ctrl-D ends the input (an empty one is an abort); escape sequences (arrow keys, the
 * markers of a bracketed paste) and other control characters are ignored. A multi-byte character split across
 * reads is joined by the stream's UTF-8 decoder. The terminal's mode is restored however it ends.
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
        else if (ch >= ' ') line += ch;
      }
    };
    stdin.on('data', onData).on('end', onEnd).on('error', done);
    stdin.resume();
  });
}

async function readToken(arg: string | undefined): Promise<string> {
  if (!arg) throw new Error('whoami needs a token (or @file)');
  if (arg.startsWith('@')) {
    const { readFileSync } = await import('node:fs');
    return readFileSync(arg.slice(1), 'utf8').trim();
  }
  return arg;
}

/**
 * Writes `text` to `path` with mode 0600, even when `path` already exists with a looser mode: a fresh file is
 * created exclusively beside it and renamed over it (atomic, and never follows a link planted at `path`).
 */

/** Runs the CLI with `argv` (without node and script); resolves with the exit code. */
export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === 'login') {
    const { values } = parseArgs({
      args: rest,
      options: {
        homeserver: { type: 'string' },
        user: { type: 'string' },
        password: { type: 'string' },
        'device-name': { type: 'string' },
        'data-dir': { type: 'string' },
        out: { type: 'string' },
      },
    });
    const homeserver = values.homeserver ?? (await ask('Homeserver URL: '));
    const user = values.user ?? (await ask('User: '));
    let password = values.password ?? process.env.HALCYON_PASSWORD;
    if (password === undefined) {
      const typed = await readHidden('Password: ');
      if (typed === 'interrupt') {
        process.stderr.write('halcyon: aborted\n');
        return 130; // as if killed by SIGINT, which raw mode turned into a keystroke
      }
      if (typed === 'eof' || typed.line === '') throw new HalcyonError('HALCYON_INVALID_ARGUMENT', 'no password given');
      password = typed.line;
    }
    const token = await Client.login({
      homeserver,
      user,
      password,
      ...(values['device-name'] ? { deviceName: values['device-name'] } : {}),
      ...(values['data-dir'] ? { dataDir: values['data-dir'] } : {}),
    });
    if (values.out) {
      writeSecretFile(values.out, token + '\n');
      process.stderr.write(`token written to ${values.out} (mode 0600)\n`);
    } else process.stdout.write(token + '\n');
    return 0;
  }
  if (command === 'whoami') {
    const session = decodeToken(await readToken(rest[0]));
    const http = new MatrixHttp(session.homeserver, session.accessToken);
    try {
      const who = await http.json<{ user_id?: string; device_id?: string }>('GET', '/_matrix/client/v3/account/whoami');
      process.stdout.write(JSON.stringify({ userId: who.user_id, deviceId: who.device_id ?? session.deviceId, homeserver: session.homeserver }, null, 2) + '\n');
      return 0;
    } finally {
      await http.close();
    }
  }
  process.stderr.write(USAGE + '\n');
  return command === undefined || command === 'help' || command === '--help' ? 0 : 2;
}

/** Entry point of the bin: runs {@link main} and reports coded errors without a stack. */
export function cli(): void {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err: { code?: string; message?: string }) => {
      process.stderr.write(`halcyon: ${err.code ? `${err.code}: ` : ''}${err.message ?? String(err)}\n`);
      process.exit(1);
    },
  );
}
