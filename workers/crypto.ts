/** Worker entry of the crypto actor: serves it to main and, on a handed port, to the sync actor; posts late decryptions to main. */
import { serveActor, serveOnPort, traceStartup, typedPort, workerPorts } from '../src/actors.ts';
import { CryptoActor } from '../src/crypto/actor.ts';
import { trimHeapPeriodically } from '../src/memory.ts';
import type { CryptoToMain, MainToCrypto } from '../src/protocol.ts';

traceStartup('crypto worker loaded');
const ports = workerPorts();
// Keeps this worker's committed heap near its live data under steady traffic (see trimHeapPeriodically).
trimHeapPeriodically();
const actor = new CryptoActor(typedPort<MainToCrypto, CryptoToMain>(ports.events!));
serveActor(actor);
serveOnPort(actor, ports.sync!);
