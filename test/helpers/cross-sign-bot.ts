/**
 * Cross-signs a bot's device in a test, until login does it (issue 13, part 1: Client.login sets up the bot's
 * identity). Tests of what needs a cross-signed bot use it: sharing room keys by identity (`trust: 'signed'`), and
 * in-room verification (a client requests one only of a user with a cross-signing identity).
 */
import type * as W from '@matrix-org/matrix-sdk-crypto-wasm';
import { localPortPair } from '../../src/actors.ts';
import { CryptoActor } from '../../src/crypto/actor.ts';
import type { CryptoToMain, MainToCrypto } from '../../src/protocol.ts';
import { storePassphrase } from '../../src/store.ts';
import { decodeToken } from '../../src/token.ts';
import { crossSignDevice } from '../harness/olm-peer.ts';
import { Peer } from '../harness/peer.ts';
import type { Homeserver } from '../harness/synapse.ts';
import type { Bot } from '../integration/util.ts';

/**
 * Cross-signs a bot's device before its first run (the client must not be running: the store is opened here):
 * opens the bot's crypto store with a crypto actor of this process (default passphrase), gives the account a new
 * cross-signing identity (its upload authorised with the password) and signs the device with it. The store then
 * holds the bot's own trusted identity, as after a login that set it up.
 */
export async function crossSignBot(hs: Homeserver, bot: Bot): Promise<void> {
  const s = decodeToken(bot.token);
  const actor = new CryptoActor(localPortPair<CryptoToMain, MainToCrypto>()[1]);
  await actor.open({
    homeserver: s.homeserver, userId: s.userId, deviceId: s.deviceId, accessToken: s.accessToken, dataDir: bot.dataDir,
    passphrase: storePassphrase(bot.dataDir), wantedTypes: null, maxPendingUndecryptable: 1000, pendingUndecryptableMaxAgeMs: 3_600_000,
  });
  try {
    // The machine is the actor's own (not part of its API): reached here, in a test, and nowhere else.
    const machine = (actor as unknown as { machine: W.OlmMachine }).machine;
    const http = new Peer(hs.baseUrl, bot.user);
    await crossSignDevice(machine, (method, path, body) => http.request(method, path, body), bot.user.userId, bot.user.password);
  } finally {
    await actor.close();
  }
}
