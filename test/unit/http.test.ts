/**
 * The HTTP door against scripted node:http servers (what a real homeserver will not do on demand): hostile
 * Content-Lengths, bodies past their limits, rate-limit answers of every shape, soft logout, base URLs, and the
 * access token kept out of inspection.
 */
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { Readable } from 'node:stream';
import { test, type TestContext } from 'node:test';
import { MatrixHttp } from '../../src/http.ts';
import { withTimeout } from '../harness/synapse.ts';

/** A scripted server: `handle` answers every request; it counts them and keeps its sockets' close events. */
interface Scripted {
  url: string;
  /** Requests received, in order (method and URL). */
  requests: string[];
  /** Resolves when every socket the server has accepted so far is closed. */
  socketsClosed(): Promise<void>;
}

async function scripted(t: TestContext, handle: (req: IncomingMessage, res: ServerResponse) => void): Promise<Scripted> {
  const requests: string[] = [];
  const closed: Promise<void>[] = [];
  const server = createServer((req, res) => {
    requests.push(`${req.method} ${req.url}`);
    req.resume(); // the request body is never of interest
    handle(req, res);
  });
  server.on('connection', (s: Socket) => closed.push(new Promise((r) => s.once('close', () => r()))));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.after(async () => {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  });
  return {
    url: `http://127.0.0.1:${(server.address() as { port: number }).port}`,
    requests,
    socketsClosed: () => withTimeout(Promise.all(closed).then(() => {}), 10_000, 'the server side of every connection to close'),
  };
}

/** A client, closed when the test ends. */
function client(t: TestContext, url: string, token = 'syt_secret_token', opts: ConstructorParameters<typeof MatrixHttp>[2] = {}): MatrixHttp {
  const http = new MatrixHttp(url, token, opts);
  t.after(() => http.close());
  return http;
}

/** Lets pending I/O callbacks and error events run (an unhandled 'error' would crash the process here). */
const settle = () => new Promise<void>((r) => setImmediate(() => setImmediate(r)));

test('a huge Content-Length is refused before reading in every request kind, and the body is let go at once', async (t) => {
  const server = await scripted(t, (_req, res) => {
    // A few bytes, then nothing: the connection stays open with 999,999,999,999 bytes promised.
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': '999999999999' });
    res.write('{"a":');
  });
  const http = client(t, server.url);
  // A deadline far away: only letting the body go can close these connections within the wait below.
  const timeoutMs = 600_000;
  await assert.rejects(http.json('GET', '/a', { timeoutMs }), { code: 'HALCYON_RESPONSE_TOO_LARGE' });
  await assert.rejects(http.bytes('GET', '/b', { timeoutMs }), { code: 'HALCYON_RESPONSE_TOO_LARGE' });
  await assert.rejects(http.upload('/c', new Uint8Array(10), { contentType: 'application/octet-stream', contentLength: 10, timeoutMs }), { code: 'HALCYON_RESPONSE_TOO_LARGE' });
  const file = () => Readable.from([Buffer.alloc(10)]);
  await assert.rejects(http.upload('/d', file, { contentType: 'application/octet-stream', contentLength: 10, timeoutMs }), { code: 'HALCYON_RESPONSE_TOO_LARGE' });
  await server.socketsClosed();
  await settle();
  assert.equal(server.requests.length, 4);
});

test('a huge Content-Length with a short deadline: the process lives on after the server side closes', async (t) => {
  const server = await scripted(t, (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': '999999999999' });
    res.write('{"a":');
  });
  const http = client(t, server.url);
  await assert.rejects(http.json('GET', '/a', { timeoutMs: 50 }), { code: 'HALCYON_RESPONSE_TOO_LARGE' });
  await assert.rejects(http.stream('GET', '/b', { timeoutMs: 50 }).then((r) => r.body.toArray()), { code: 'HALCYON_TIMEOUT' });
  await server.socketsClosed();
  await settle();
});
