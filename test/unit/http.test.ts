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

test('a huge Content-Length with a short deadline: the process lives on after that deadline has passed', async (t) => {
  const server = await scripted(t, (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': '999999999999' });
    res.write('{"a":');
  });
  const http = client(t, server.url);
  await assert.rejects(http.json('GET', '/a', { timeoutMs: 1000 }), { code: 'HALCYON_RESPONSE_TOO_LARGE' });
  // Read with the same deadline: once this body's timeout has fired, so would the first request's have.
  await assert.rejects(http.stream('GET', '/b', { timeoutMs: 1000 }).then((r) => r.body.toArray()), { code: 'HALCYON_TIMEOUT' });
  await server.socketsClosed();
  await settle();
});

/** `total` bytes of JSON (a string of x's). */
function jsonOf(total: number): Buffer {
  return Buffer.from(JSON.stringify({ pad: 'x'.repeat(total - 10) }));
}

test('maxBytes: a Content-Length over it is refused unread; without one the body is counted as it streams; exactly the limit is fine', async (t) => {
  let withLength = true;
  const body = jsonOf(2000);
  const server = await scripted(t, (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json', ...(withLength ? { 'content-length': body.length } : {}) });
    for (let i = 0; i < body.length; i += 100) res.write(body.subarray(i, i + 100));
    res.end();
  });
  const http = client(t, server.url);
  await assert.rejects(http.json('GET', '/a', { maxBytes: body.length - 1 }), { code: 'HALCYON_RESPONSE_TOO_LARGE' });
  assert.equal((await http.json<{ pad: string }>('GET', '/a', { maxBytes: body.length })).pad.length, 1990);
  withLength = false;
  await assert.rejects(http.bytes('GET', '/a', { maxBytes: body.length - 1 }), { code: 'HALCYON_RESPONSE_TOO_LARGE' });
  await assert.rejects(http.upload('/u', new Uint8Array(1), { contentType: 'text/plain', contentLength: 1, maxBytes: 1000 }), { code: 'HALCYON_RESPONSE_TOO_LARGE' });
  assert.equal((await http.bytes('GET', '/a', { maxBytes: body.length })).length, body.length);
  assert.equal((await http.bytes('GET', '/a')).length, body.length, 'the default limit is far above 2 kB');
});

test('the default limit of an ordinary answer is 16 MiB: an endless 200 is cut there, not read to the end', async (t) => {
  let written = 0;
  const server = await scripted(t, (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    const chunk = Buffer.alloc(64 * 1024, 0x20); // whitespace: valid JSON padding, forever
    const pump = () => {
      while (!res.destroyed && res.write(chunk)) written += chunk.length;
      if (!res.destroyed) res.once('drain', pump);
    };
    pump();
  });
  const http = client(t, server.url);
  await assert.rejects(http.json('GET', '/endless'), { code: 'HALCYON_RESPONSE_TOO_LARGE', message: /16777216/ });
  await server.socketsClosed();
  assert.ok(written < 64 * 1024 * 1024, `the server got to write ${written} bytes`);
});

test('an error body is read up to 64 KiB, then let go: the coded error is built from what was read', async (t) => {
  let status = 403;
  const server = await scripted(t, (_req, res) => {
    // A JSON error, then endless padding (a hostile or broken server): never ends on its own.
    res.writeHead(status, { 'content-type': 'application/json', 'retry-after': '0' });
    res.write(JSON.stringify({ errcode: 'M_FORBIDDEN', error: 'no' }).slice(0, -1));
    const chunk = Buffer.alloc(16 * 1024, 0x20);
    const pump = () => {
      while (!res.destroyed && res.write(chunk));
      if (!res.destroyed) res.once('drain', pump);
    };
    pump();
  });
  const http = client(t, server.url);
  await assert.rejects(http.json('GET', '/a'), { code: 'HALCYON_MATRIX', status: 403 });
  await assert.rejects(http.stream('GET', '/b'), { code: 'HALCYON_MATRIX', status: 403 });
  await assert.rejects(http.upload('/c', new Uint8Array(1), { contentType: 'text/plain', contentLength: 1 }), { code: 'HALCYON_MATRIX', status: 403 });
  status = 429;
  await assert.rejects(http.json('GET', '/d', { maxRateLimitRetries: 0 }), { code: 'HALCYON_RATE_LIMITED', status: 429 });
  await server.socketsClosed();
});

test('an ordinary error body keeps its errcode and message', async (t) => {
  const server = await scripted(t, (_req, res) => void res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ errcode: 'M_NOT_FOUND', error: 'nothing here' })));
  const http = client(t, server.url);
  await assert.rejects(http.json('GET', '/a'), { code: 'HALCYON_MATRIX', status: 404, errcode: 'M_NOT_FOUND', message: /nothing here/ });
  await assert.rejects(http.stream('GET', '/a'), { code: 'HALCYON_MATRIX', status: 404, errcode: 'M_NOT_FOUND' });
});
