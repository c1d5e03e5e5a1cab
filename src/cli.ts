/**
 * The `halcyon` command: `halcyon login` gets a long-lived token (printed, or written to a 0600 file);
 * `halcyon whoami <token>` shows whom a token belongs to. Neither ever prints a password.
 */
import { createInterface } from 'node:readline/promises';
import { parseArgs } from 'node:util';
import { Client } from './client.ts';
import { MatrixHttp } from './http.ts';
import { writeSecretFile } from './store.ts';
import { decodeToken } from './token.ts';

const USAGE = `usage:
  halcyon login [--homeserver URL] [--user USER] [--password PASS] [--device-name NAME] [--data-dir DIR] [--out FILE]
      Logs in and prints the token (or writes it to FILE with mode 0600). Missing values are asked for.
      The password may also come from the HALCYON_PASSWORD environment variable.
  halcyon whoami <token|@file>
      Asks the homeserver whom the token belongs to.`;

async function ask(question: string, secret = false): Promise<string> {
  const rl = createInterface({ input: process.stdin, output: process.stderr, terminal: process.stdin.isTTY });
  if (secret && process.stdin.isTTY) {
    // Echo nothing while the password is typed.
    (rl as unknown as { _writeToOutput: (s: string) => void })._writeToOutput = (s: string) => {
      if (s.startsWith(question)) process.stderr.write(question);
    };
  }
  try {
    const answer = await rl.question(question);
    if (secret && process.stdin.isTTY) process.stderr.write('\n');
    return answer.trim();
  } finally {
    rl.close();
  }
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
    const password = values.password ?? process.env.HALCYON_PASSWORD ?? (await ask('Password: ', true));
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
