/**
 * The one-time cost of the bot's cryptographic identity (issue 13), on a real Synapse, for the cold-start workload:
 * a login that creates the identity (cross-signing keys, secret storage, a key backup) against a plain login, the
 * same set-up in matrix-js-sdk (`bootstrapCrossSigning` + `bootstrapSecretStorage` with a new key backup), and the
 * upload of 1,000 room keys to the key backup.
 *
 * Each round uses fresh accounts: a plain `Client.login` (encryption off), a `loginWithDetails` with encryption on
 * (it creates the crypto store, uploads the device keys, then sets up the identity), and a js-sdk session (logged
 * in, crypto started and first sync done before the clock) whose `bootstrapIdentity` (test/harness/js-peer.ts) is
 * timed. The backup upload then runs on the identity's data dir: its crypto actor, opened in this process, imports
 * 1,000 megolm sessions (made once by a scratch OlmMachine) and is timed from its next flush until the backup
 * counts them all. matrix-bot-sdk has no cross-signing, secret storage or key backup (matrix-bot-sdk#145).
 * @module
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as W from '@matrix-org/matrix-sdk-crypto-wasm';
import { localPortPair } from '../src/actors.ts';
import { CryptoActor } from '../src/crypto/actor.ts';
import type { CryptoSyncChanges, CryptoToMain, MainToCrypto } from '../src/protocol.ts';
import { storePassphrase } from '../src/store.ts';
import type { Homeserver } from '../test/harness/synapse.ts';
import { startJsPeer } from '../test/harness/js-peer.ts';
import { sleep, withSynapse } from './workloads/synapse-common.ts';

/** Room keys uploaded to the backup per round. */
export const BACKUP_KEYS = 1000;
/** Longest wait for the backup to count every imported key. */
const BACKUP_TIMEOUT_MS = 120_000;

/** One round's figures, ms (NaN when that part failed; `errors` says why). */
export interface IdentitySample {
  round: number;
  /** `Client.login` with encryption off. */
  plainLoginMs: number;
  /** `loginWithDetails` with encryption on, on an account without an identity (`crossSigning: 'created'`). */
  identityLoginMs: number;
  /** matrix-js-sdk: bootstrapCrossSigning, a recovery key, bootstrapSecretStorage with a new key backup. */
  jsSdkBootstrapMs: number;
  /** Importing {@link BACKUP_KEYS} sessions into the crypto store (not part of the upload). */
  importMs: number;
  /** From the flush after the import until the backup counts every key as backed up. */
  backupUploadMs: number;
  errors: string[];
}

/** Runs `rounds` rounds on a Synapse of its own. */
export async function identityBench(opts: { rounds: number; progress: (line: string) => void; gc: () => void }): Promise<IdentitySample[]> {
  const keys = await exportedRoomKeys(BACKUP_KEYS);
  const { Client, loginWithDetails } = (await import('../dist/index.js' as string)) as typeof import('../src/index.ts');
  const samples: IdentitySample[] = [];
  await withSynapse(undefined, async (hs) => {
    for (let round = 0; round < opts.rounds; round++) {
      const s: IdentitySample = { round, plainLoginMs: NaN, identityLoginMs: NaN, jsSdkBootstrapMs: NaN, importMs: NaN, backupUploadMs: NaN, errors: [] };
      const part = async (name: string, fn: () => Promise<void>) => {
        opts.gc();
        await fn().catch((e: unknown) => void s.errors.push(`${name}: ${e instanceof Error ? e.message : String(e)}`));
      };
      await part('plain login', () => inDataDir(async (dataDir) => {
        const u = await hs.registerUser();
        const t0 = performance.now();
        await Client.login({ homeserver: hs.baseUrl, user: u.localpart, password: u.password, dataDir, encryption: false });
        s.plainLoginMs = performance.now() - t0;
      }));
      await part('identity login and backup', () => inDataDir(async (dataDir) => {
        const u = await hs.registerUser();
        const t0 = performance.now();
        const d = await loginWithDetails({ homeserver: hs.baseUrl, user: u.localpart, password: u.password, dataDir });
        s.identityLoginMs = performance.now() - t0;
        if (d.crossSigning !== 'created' || !d.keyBackup) throw new Error(`the login did not create the identity (${d.crossSigning}, backup ${d.keyBackup ? 'on' : 'off'})`);
        opts.gc();
        Object.assign(s, await backupUpload(hs, d.token, dataDir, keys));
      }));
      await part('matrix-js-sdk bootstrap', async () => {
        const peer = await startJsPeer(hs, { crossSign: false });
        try {
          const t0 = performance.now();
          await peer.bootstrapIdentity();
          s.jsSdkBootstrapMs = performance.now() - t0;
        } finally {
          await peer.stop();
        }
      });
      samples.push(s);
      const f = (x: number) => (Number.isFinite(x) ? `${Math.round(x)} ms` : 'failed');
      opts.progress(
        `identity round ${round + 1}/${opts.rounds}: plain login ${f(s.plainLoginMs)}, identity login ${f(s.identityLoginMs)}, js-sdk bootstrap ${f(s.jsSdkBootstrapMs)}, ` +
          `backup upload of ${BACKUP_KEYS} keys ${f(s.backupUploadMs)} (import ${f(s.importMs)})${s.errors.length ? `; ${s.errors.join('; ')}` : ''}`,
      );
    }
  });
  return samples;
}

/** Runs `fn` with a fresh data dir (0700), removed after. */
async function inDataDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'halcyon-bench-identity-'));
  try {
    await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** `n` megolm sessions (one per room) as a room-key export, made by a scratch machine in memory. */
async function exportedRoomKeys(n: number): Promise<string> {
  const m = await W.OlmMachine.initialize(new W.UserId('@keys:bench'), new W.DeviceId('KEYS'));
  try {
    for (let i = 0; i < n; i++) await m.shareRoomKey(new W.RoomId(`!r${i}:bench`), [], new W.EncryptionSettings());
    return await m.exportRoomKeys(() => true);
  } finally {
    m.close();
  }
}

/** A batch with nothing in it: applying one makes the actor flush, which starts a backup pass. */
const EMPTY_CHANGES: CryptoSyncChanges = {
  batchToken: 'bench', toDevice: '[]', toDeviceCount: 0, deviceListsChanged: [], deviceListsLeft: [], otkCounts: null, fallbackKeyTypes: null,
  encryption: [], members: [], historyVisibility: [], left: [],
};

/**
 * Opens the data dir's crypto actor here, imports the sessions into its machine and times the key backup's upload
 * of them (the actor's backup code, as a bot runs it, on this thread instead of a worker).
 */
async function backupUpload(hs: Homeserver, token: string, dataDir: string, keys: string): Promise<{ importMs: number; backupUploadMs: number }> {
  const { decodeToken } = (await import('../dist/index.js' as string)) as typeof import('../src/index.ts');
  const session = decodeToken(token);
  const actor = new CryptoActor(localPortPair<CryptoToMain, MainToCrypto>()[1]);
  await actor.open({
    homeserver: hs.baseUrl, userId: session.userId, deviceId: session.deviceId, accessToken: session.accessToken, dataDir,
    passphrase: storePassphrase(dataDir), wantedTypes: null, maxPendingUndecryptable: 1000, pendingUndecryptableMaxAgeMs: 3_600_000,
  });
  try {
    // The machine is the actor's own (not part of its API): reached here, in the bench, as the test helpers do.
    const machine = (actor as unknown as { machine: W.OlmMachine }).machine;
    const t0 = performance.now();
    const imported = await machine.importExportedRoomKeys(keys, () => {});
    const importMs = performance.now() - t0;
    if (imported.importedCount !== BACKUP_KEYS) throw new Error(`imported ${imported.importedCount} of ${BACKUP_KEYS} room keys`);
    const t1 = performance.now();
    await actor.receiveSyncChanges(EMPTY_CHANGES);
    for (;;) {
      const b = (await actor.status()).keyBackup;
      if (!b) throw new Error('the key backup is off');
      if (b.backedUpKeys >= BACKUP_KEYS) break;
      if (performance.now() - t1 > BACKUP_TIMEOUT_MS) throw new Error(`${b.backedUpKeys} of ${b.totalKeys} keys backed up after ${BACKUP_TIMEOUT_MS} ms`);
      await sleep(10);
    }
    return { importMs, backupUploadMs: performance.now() - t1 };
  } finally {
    await actor.close();
  }
}
