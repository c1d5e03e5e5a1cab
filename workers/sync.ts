/**
 * Worker entry of the sync actor and its guest, the cache actor: the sync actor calls the cache in-thread, main
 * reaches the cache over a handed port (see workerStrategy in src/client/actors.ts); the crypto actor and main are
 * reached over handed ports too.
 */
import { localRemote, remoteOnPort, serveActor, serveOnPort, traceStartup, typedPort, workerPorts } from '../src/actors.ts';
import { CacheActor } from '../src/cache/actor.ts';
import { trimHeapPeriodically } from '../src/memory.ts';
import { CACHE_DEADLINES, type CacheActorApi, CRYPTO_DEADLINES, type CryptoActorApi, type MainToSync, type SyncToMain } from '../src/protocol.ts';
import { SyncActor } from '../src/sync/actor.ts';

traceStartup('sync worker loaded');
const ports = workerPorts();
// Keeps this worker's committed heap near its live data under steady traffic (see trimHeapPeriodically).
trimHeapPeriodically();
const cache = new CacheActor();
serveOnPort(cache, ports.cache!);
serveActor(
  new SyncActor({
    cache: localRemote<CacheActorApi>('cache', cache, CACHE_DEADLINES),
    crypto: ports.crypto ? remoteOnPort<CryptoActorApi>('crypto', ports.crypto, CRYPTO_DEADLINES) : undefined,
    events: typedPort<MainToSync, SyncToMain>(ports.events!),
  }),
);
