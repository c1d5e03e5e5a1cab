/** Worker entry of the sync actor: serves it to main and reaches the cache actor, the crypto actor and main over handed ports. */
import { remoteOnPort, serveActor, typedPort, workerPorts } from '../src/actors.ts';
import { CACHE_DEADLINES, type CacheActorApi, CRYPTO_DEADLINES, type CryptoActorApi, type MainToSync, type SyncToMain } from '../src/protocol.ts';
import { SyncActor } from '../src/sync/actor.ts';

const ports = workerPorts();
serveActor(
  new SyncActor({
    cache: remoteOnPort<CacheActorApi>('cache', ports.cache!, CACHE_DEADLINES),
    crypto: ports.crypto ? remoteOnPort<CryptoActorApi>('crypto', ports.crypto, CRYPTO_DEADLINES) : undefined,
    events: typedPort<MainToSync, SyncToMain>(ports.events!),
  }),
);
