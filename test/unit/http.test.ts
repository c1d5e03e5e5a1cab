/**
 * The HTTP door against scripted node:http servers (what a real homeserver will not do on demand): hostile
 * Content-Lengths, bodies past their limits, rate-limit answers of every shape, soft logout, base URLs, and the
 * access token kept out of inspection.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { Readable } from 'node:stream';
import { test, type TestContext } from 'node:test';
import { inspect } from 'node:util';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { MatrixHttp, MAX_RETRY_AFTER_MS, parseRetryAfter } from '../../src/http.ts';
import { loadUndici, UNDICI_FILES } from '../../src/undici.ts';
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

test('parseRetryAfter: the Retry-After header first (seconds or an HTTP date), then retry_after_ms; clamped to [0, 10 min]', () => {
  const now = Date.UTC(2025, 0, 1, 12, 0, 0);
  assert.equal(MAX_RETRY_AFTER_MS, 600_000);
  assert.equal(parseRetryAfter('5', undefined, now), 5000);
  assert.equal(parseRetryAfter('0', undefined, now), 0);
  assert.equal(parseRetryAfter(undefined, 1500, now), 1500);
  assert.equal(parseRetryAfter(undefined, undefined, now), undefined);
  // HTTP dates: IMF-fixdate, RFC 850 and asctime (all UTC).
  assert.equal(parseRetryAfter(new Date(now + 30_000).toUTCString(), undefined, now), 30_000);
  assert.equal(parseRetryAfter('Wednesday, 01-Jan-25 12:00:42 GMT', undefined, now), 42_000);
  assert.equal(parseRetryAfter('Wed Jan  1 12:01:00 2025', undefined, now), 60_000);
  assert.equal(parseRetryAfter(new Date(now - 30_000).toUTCString(), 9000, now), 0, 'a date in the past: retry now');
  // Both given: the header wins (spec v1.10).
  assert.equal(parseRetryAfter('2', 9000, now), 2000);
  assert.equal(parseRetryAfter(new Date(now + 7000).toUTCString(), 1, now), 7000);
  // Garbage in the header: the body's value; garbage in both: nothing.
  for (const junk of ['soon', '1e10', '-5', '1.5', '', '10 seconds', 'Wed, 32 Foo 2025 99:99:99 GMT']) {
    assert.equal(parseRetryAfter(junk, 1500, now), 1500, `header ${JSON.stringify(junk)}`);
    assert.equal(parseRetryAfter(junk, undefined, now), undefined, `header ${JSON.stringify(junk)} alone`);
  }
  for (const junk of ['1500', null, NaN, Infinity, -Infinity, {}, true]) assert.equal(parseRetryAfter(undefined, junk, now), junk === Infinity ? 600_000 : undefined, `body ${String(junk)}`);
  // Clamped: a timer never overflows (1e10 ms fired at once) nor stalls a lane for weeks (2e9 ms).
  assert.equal(parseRetryAfter(undefined, 1e10, now), 600_000);
  assert.equal(parseRetryAfter(undefined, 2e9, now), 600_000);
  assert.equal(parseRetryAfter('99999999999999999999', undefined, now), 600_000);
  assert.equal(parseRetryAfter(undefined, -5, now), 0);
  assert.equal(parseRetryAfter(['3', '9'], undefined, now), 3000);
});

/** A server answering 429 (with `retryHeader` and/or `retryMs` in the body) to the first `limited` requests, then 200. */
async function rateLimited(t: TestContext, limited: number, retry: { header?: string; ms?: number }): Promise<Scripted> {
  let n = 0;
  const server = await scripted(t, (_req, res) => {
    if (n++ >= limited) return void res.writeHead(200, { 'content-type': 'application/json' }).end('{"ok":true}');
    res.writeHead(429, { 'content-type': 'application/json', ...(retry.header === undefined ? {} : { 'retry-after': retry.header }) });
    res.end(JSON.stringify({ errcode: 'M_LIMIT_EXCEEDED', error: 'slow down', ...(retry.ms === undefined ? {} : { retry_after_ms: retry.ms }) }));
  });
  return server;
}

test('429: a server time past the wait ceiling gives up at once (never retries before the server said), with retryAfterMs', async (t) => {
  const huge = await rateLimited(t, Infinity, { ms: 1e10 });
  await assert.rejects(client(t, huge.url, 'tok', { maxRetryAfterMs: 50 }).json('GET', '/a'), { code: 'HALCYON_RATE_LIMITED', retryAfterMs: 600_000 });
  assert.equal(huge.requests.length, 1, 'no instant retries');

  const longer = await rateLimited(t, Infinity, { ms: 5000 });
  await assert.rejects(client(t, longer.url, 'tok', { maxRetryAfterMs: 50 }).json('GET', '/a'), { code: 'HALCYON_RATE_LIMITED', retryAfterMs: 5000 });
  assert.equal(longer.requests.length, 1);

  const header = await rateLimited(t, Infinity, { header: '3600' });
  await assert.rejects(client(t, header.url).json('GET', '/a'), { code: 'HALCYON_RATE_LIMITED', retryAfterMs: 600_000 });
  assert.equal(header.requests.length, 1);
});

test('429: the header wins over retry_after_ms, an HTTP date in the past means now; within the ceiling the request is retried', async (t) => {
  const both = await rateLimited(t, 1, { header: '0', ms: 1e10 });
  assert.deepEqual(await client(t, both.url).json('GET', '/a'), { ok: true });
  assert.equal(both.requests.length, 2);

  const dated = await rateLimited(t, 2, { header: new Date(Date.now() - 60_000).toUTCString() });
  assert.deepEqual(await client(t, dated.url).json('GET', '/a'), { ok: true });
  assert.equal(dated.requests.length, 3);

  const always = await rateLimited(t, Infinity, { ms: 0 });
  await assert.rejects(client(t, always.url).json('GET', '/a', { maxRateLimitRetries: 3 }), { code: 'HALCYON_RATE_LIMITED', retryAfterMs: 0 });
  assert.equal(always.requests.length, 4, 'the first attempt and 3 retries');
});

test('M_UNKNOWN_TOKEN with soft_logout: true is HALCYON_SOFT_LOGOUT; without it (or false) HALCYON_UNKNOWN_TOKEN', async (t) => {
  let body: Record<string, unknown> = {};
  const server = await scripted(t, (_req, res) => void res.writeHead(401, { 'content-type': 'application/json' }).end(JSON.stringify(body)));
  const http = client(t, server.url);
  body = { errcode: 'M_UNKNOWN_TOKEN', error: 'Token expired', soft_logout: true };
  await assert.rejects(http.json('GET', '/a'), { code: 'HALCYON_SOFT_LOGOUT', status: 401, errcode: 'M_UNKNOWN_TOKEN' });
  await assert.rejects(http.stream('GET', '/a'), { code: 'HALCYON_SOFT_LOGOUT' });
  body = { errcode: 'M_UNKNOWN_TOKEN', error: 'Invalid token', soft_logout: false };
  await assert.rejects(http.json('GET', '/a'), { code: 'HALCYON_UNKNOWN_TOKEN' });
  body = { errcode: 'M_UNKNOWN_TOKEN' };
  await assert.rejects(http.json('GET', '/a'), { code: 'HALCYON_UNKNOWN_TOKEN' });
  body = { errcode: 'M_FORBIDDEN', soft_logout: true };
  await assert.rejects(http.json('GET', '/a'), { code: 'HALCYON_MATRIX', errcode: 'M_FORBIDDEN' });
});

test('the access token never shows in util.inspect or JSON.stringify of the client, idle or with a request in flight', async (t) => {
  const token = 'fake-token-inspect-me-not-0123456789';
  let release!: () => void;
  let arrived!: () => void;
  const held = new Promise<void>((r) => (arrived = r));
  const server = await scripted(t, (_req, res) => {
    release = () => res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    arrived();
  });
  const http = client(t, server.url, token);
  const look = (what: string) => {
    for (const text of [inspect(http, { depth: 10, showHidden: true }), inspect(http, { depth: Infinity }), JSON.stringify(http), String(http)]) {
      assert.ok(!text.includes(token), `${what}: the token shows in ${text.slice(0, 200)}...`);
      assert.ok(!text.includes(token.slice(4, 20)), `${what}: part of the token shows`);
    }
  };
  look('idle');
  const pending = http.json('GET', '/held');
  await withTimeout(held, 10_000, 'the request to arrive');
  look('in flight');
  release();
  await pending;
  look('after a request');
});

test('MatrixHttp refuses a base URL that is not http(s) with HALCYON_INVALID_ARGUMENT', () => {
  for (const bad of ['', 'localhost', 'localhost:8008', 'ftp://example.org', 'mxc://example.org/x', 'https://', 'not a url']) {
    assert.throws(() => new MatrixHttp(bad), { code: 'HALCYON_INVALID_ARGUMENT' }, bad);
  }
  assert.equal(new MatrixHttp('https://matrix.example.org/').baseUrl, 'https://matrix.example.org');
});

test('https:// to a plain-HTTP port says the server does not speak TLS there', async (t) => {
  const server = await scripted(t, (_req, res) => void res.end('{}'));
  const http = client(t, server.url.replace('http:', 'https:'));
  await assert.rejects(http.json('GET', '/_matrix/client/versions'), { code: 'HALCYON_HTTP', message: /does not speak TLS on that port: use http:\/\/ for a local homeserver/ });
  await assert.rejects(http.stream('GET', '/x'), { code: 'HALCYON_HTTP', message: /does not speak TLS/ });
  await assert.rejects(http.upload('/u', new Uint8Array(1), { contentType: 'text/plain', contentLength: 1 }), { code: 'HALCYON_HTTP', message: /does not speak TLS/ });
});

test('a finished request lets go of its deadline at once: 10,000 sends leave nothing behind for the 30 s the deadline would run', async (t) => {
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  setFlagsFromString('--no-expose-gc');
  // A bare server, not scripted(): that one keeps a line per request, which is what this test measures.
  const server = createServer((req, res) => req.resume().on('end', () => res.end('{"event_id":"$e"}')));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.after(async () => {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  });
  const http = client(t, `http://127.0.0.1:${(server.address() as { port: number }).port}`);
  const send = async (n: number) => {
    for (let i = 0; i < n; i += 50) {
      await Promise.all(Array.from({ length: 50 }, (_, j) => http.text('PUT', `/_matrix/client/v3/rooms/!r:s/send/m.room.message/t${i + j}`, { body: { msgtype: 'm.text', body: `${'x'.repeat(2000)}${i + j}` } })));
    }
  };
  await send(200); // warm-up: connections, compiled code
  gc();
  const before = process.memoryUsage().heapUsed;
  await send(10_000);
  await settle();
  gc();
  const kept = process.memoryUsage().heapUsed - before;
  // Each request's deadline signal with what listens to it is ~0.6 KB: ~6 MiB for 10,000 when they were kept.
  assert.ok(kept < 3 * 2 ** 20, `${(kept / 2 ** 20).toFixed(2)} MiB still on the heap after 10,000 finished requests`);
});

test('undici is loaded from the files Halcyon uses; an undici whose files moved is loaded whole, and both answer alike', async (t) => {
  const server = await scripted(t, (req, res) => res.end(JSON.stringify({ path: req.url })));
  const indexLoaded = () => Object.keys(createRequire(import.meta.url).cache).some((f) => /undici[\\/]index\.js$/.test(f));
  const parts = loadUndici();
  assert.equal(indexLoaded(), false, "undici's index (fetch, WebSocket, mocks …) is not loaded");
  const moved = loadUndici({ ...UNDICI_FILES, agent: './lib/no-such-file.js' });
  assert.equal(indexLoaded(), true);
  const whole = (await import('undici')) as typeof import('undici');
  assert.equal(moved.Agent, whole.Agent);
  assert.equal(moved.errors.HeadersTimeoutError, whole.errors.HeadersTimeoutError);
  const { origin } = new URL(server.url);
  for (const p of [parts, moved]) {
    const agent = new p.Agent();
    t.after(() => agent.close());
    const res = await p.request({ dispatcher: agent, origin, path: '/x?y=1', method: 'GET' });
    assert.equal(res.statusCode, 200);
    assert.deepEqual(await res.body.json(), { path: '/x?y=1' });
  }
});

test("importing Halcyon loads neither node:http2 nor Node's own undici; undici's HTTP/2 connector loads at its first call", async () => {
  // A fresh process: this one has loaded both long ago. Per thread that imports the package (main and each worker)
  // node:http2 with tls cost ~5 MB of RSS, Node's own undici (an ES import of node:http runs its getters) ~13 MB.
  const src = `const before = new Set(process.moduleLoadList);
    await import(${JSON.stringify(new URL('../../src/index.ts', import.meta.url).href)});
    const loaded = () => process.moduleLoadList.filter((m) => !before.has(m) && /^NativeModule (http2|internal\\/deps\\/undici\\/undici)$/.test(m));
    const { createRequire } = await import('node:module');
    const from = createRequire(${JSON.stringify(new URL('../../src/lazy-require.ts', import.meta.url).href)});
    const h2 = createRequire(from.resolve('undici')).resolve('./lib/dispatcher/client-h2.js');
    const atImport = loaded();
    const stub = from.cache[h2].exports;
    let threw = '';
    try { stub({}, {}); } catch (err) { threw = err.code ?? err.message; }
    process.stdout.write(JSON.stringify({ atImport, threw, afterCall: loaded(), real: from.cache[h2].exports !== stub && from.cache[h2].exports.name }));`;
  const r = JSON.parse(await probe(src)) as { atImport: string[]; threw: string; afterCall: string[]; real: string | false };
  assert.deepEqual(r.atImport, []);
  // The first call is the real connector's: it loaded node:http2 and refused the empty client as undici would.
  assert.deepEqual(r.afterCall, ['NativeModule http2']);
  assert.equal(r.real, 'connectH2');
  assert.notEqual(r.threw, '');
});

test("a worker thread loads undici at its first request, not when it imports the transport; main loads it with the package", async () => {
  // ~10 ms of CPU per thread. The crypto worker's first request comes after the first sync's changes are applied,
  // so its loading leaves the start-up window where three threads share two cores; main's first request (login,
  // whoami) follows its import at once, and its loading stays with the import, where a bot pays it before starting.
  const http = JSON.stringify(new URL('../../src/http.ts', import.meta.url).href);
  const src = `const { Worker } = await import('node:worker_threads');
    const undiciFiles = ${UNDICI_FILES_SRC};
    const worker = await new Promise((resolve, reject) => {
      const w = new Worker(\`(async () => {
        const { parentPort } = process.getBuiltinModule('node:worker_threads');
        const undiciFiles = ${UNDICI_FILES_SRC};
        const { MatrixHttp } = await import(${http});
        const afterImport = undiciFiles();
        const server = process.getBuiltinModule('node:http').createServer((req, res) => res.writeHead(200, { 'content-type': 'application/json' }).end('{"ok":true}'));
        await new Promise((r) => server.listen(0, '127.0.0.1', r));
        const t = new MatrixHttp('http://127.0.0.1:' + server.address().port);
        const afterTransport = undiciFiles();
        const answer = await t.json('GET', '/x');
        await t.close();
        server.close();
        parentPort.postMessage({ afterImport, afterTransport, afterRequest: undiciFiles(), answer });
      })()\`, { eval: true });
      w.once('message', (m) => (resolve(m), w.terminate()));
      w.once('error', reject);
    });
    await import(${JSON.stringify(new URL('../../src/index.ts', import.meta.url).href)});
    process.stdout.write(JSON.stringify({ worker, mainAfterImport: undiciFiles() }));`;
  const r = JSON.parse(await probe(src)) as { worker: { afterImport: number; afterTransport: number; afterRequest: number; answer: unknown }; mainAfterImport: number };
  assert.equal(r.worker.afterImport, 0, 'no file of undici is loaded by a worker importing the transport');
  assert.equal(r.worker.afterTransport, 0, 'nor by making a transport');
  assert.ok(r.worker.afterRequest > 0, 'its first request loads it');
  assert.deepEqual(r.worker.answer, { ok: true });
  assert.ok(r.mainAfterImport > 0, "main's import of the package loads it");
});

/** Source of a function counting the files of undici in the calling thread's CommonJS cache. */
const UNDICI_FILES_SRC = `(() => { const { createRequire } = process.getBuiltinModule('node:module'); const from = createRequire(${JSON.stringify(new URL('../../src/lazy-require.ts', import.meta.url).href)}); const dir = from.resolve('undici').replace(/index\\.js$/, ''); return () => Object.keys(from.cache).filter((f) => f.startsWith(dir)).length; })()`;

/** Runs `src` as an ES module in a fresh Node process (with tsx) and resolves with what it wrote to stdout. */
function probe(src: string): Promise<string> {
  return new Promise<string>((resolve, reject) => {
    const p = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', src], { stdio: ['ignore', 'pipe', 'inherit'] });
    let text = '';
    p.stdout.setEncoding('utf8').on('data', (d: string) => (text += d));
    p.on('error', reject);
    p.on('close', (code) => (code === 0 ? resolve(text) : reject(new Error(`probe exited ${code}`))));
  });
}

test('held requests are not sent until released; dropped, they fail as HALCYON_NOT_RUNNING and none is sent', async (t) => {
  const server = await scripted(t, (_req, res) => res.writeHead(200, { 'content-type': 'application/json' }).end('{"ok":true}'));
  const http = client(t, server.url);
  http.hold();
  const first = http.json('GET', '/first');
  await settle();
  // A whole round trip of another client, begun after it: a request that wrongly went would be in by then.
  await client(t, server.url).json('GET', '/other');
  assert.deepEqual(server.requests, ['GET /other']);
  http.release();
  assert.deepEqual(await first, { ok: true });
  assert.deepEqual(server.requests, ['GET /other', 'GET /first']);
  http.hold();
  const second = http.json('GET', '/second');
  http.dropHeld();
  await assert.rejects(second, { code: 'HALCYON_NOT_RUNNING' });
  assert.deepEqual(await http.json('GET', '/third'), { ok: true }, 'later requests go');
  assert.deepEqual(server.requests, ['GET /other', 'GET /first', 'GET /third']);
});
