/** Worker entry of the cache actor: serves it to main and, on a handed port, to the sync actor. */
import { serveActor, serveOnPort, workerPorts } from '../src/actors.ts';
import { CacheActor } from '../src/cache/actor.ts';

const actor = new CacheActor();
serveActor(actor);
serveOnPort(actor, workerPorts().sync!);
