/**
 * resolveHomeserver: URLs checked and normalised without the network, bare server names resolved by client
 * discovery (/.well-known/matrix/client, then /_matrix/client/versions) against scripted servers.
 */
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { test, type TestContext } from 'node:test';
import { resolveHomeserver } from '../../src/discovery.ts';

/** A scripted server answering by path; unknown paths get a Matrix 404. Records the paths asked for. */
async function server(t: TestContext, routes: Record<string, (res: ServerResponse, req: IncomingMessage) => void>): Promise<{ name: string; url: string; asked: string[] }> {
  const asked: string[] = [];
  const s = createServer((req, res) => {
    asked.push(req.url ?? '');
    const route = routes[req.url ?? ''];
    if (route) route(res, req);
    else res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ errcode: 'M_UNRECOGNIZED', error: 'Unrecognized request' }));
  });
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  t.after(async () => {
    s.closeAllConnections();
    await new Promise((r) => s.close(r));
  });
  const name = `127.0.0.1:${(s.address() as { port: number }).port}`;
  return { name, url: `http://${name}`, asked };
}

const json = (body: unknown, status = 200) => (res: ServerResponse) => void res.writeHead(status, { 'content-type': 'application/json' }).end(typeof body === 'string' ? body : JSON.stringify(body));
const VERSIONS = { '/_matrix/client/versions': json({ versions: ['v1.11', 'v1.12'] }) };

test('URLs are validated and normalised without any request; plain http to a host that is not loopback is refused unless allowed', async () => {
  assert.equal(await resolveHomeserver('https://matrix.example.org'), 'https://matrix.example.org');
  assert.equal(await resolveHomeserver('https://Matrix.Example.ORG:443/'), 'https://matrix.example.org');
  assert.equal(await resolveHomeserver('  https://matrix.example.org:8448//  '), 'https://matrix.example.org:8448');
  assert.equal(await resolveHomeserver('https://example.org/matrix/'), 'https://example.org/matrix', 'a path prefix (reverse proxy) is kept');
  for (const local of ['http://localhost:8008', 'http://127.0.0.1:8008/', 'http://127.8.9.10', 'http://[::1]:8008']) {
    assert.equal(await resolveHomeserver(local), local.replace(/\/$/, ''), local);
  }
  for (const remote of ['http://matrix.example.org', 'http://192.168.1.10:8008', 'http://[::2]', 'http://localhost.example.org', 'http://128.0.0.1']) {
    await assert.rejects(resolveHomeserver(remote), { code: 'HALCYON_INSECURE_HOMESERVER' }, remote);
    assert.equal(await resolveHomeserver(remote, { allowInsecureHttp: true }), remote, `${remote} allowed`);
  }
});

test('malformed input is HALCYON_INVALID_ARGUMENT naming it (never an uncoded TypeError); credentials are not echoed', async () => {
  const bad = [
    '', '   ', 'https://', 'https://example.org/?access_token=x', 'https://example.org/#top', 'ftp://example.org', 'mxc://example.org/abc',
    'https://example.org/_matrix/client/v3', 'https://example.org/.well-known/matrix/client', 'exa mple.org', 'example.org/path',
    'example.org:99999', 'example..org', '[::1', 'http:/example.org', '999.1.1.1', 'example.org:', ':8008', 'a'.repeat(300),
  ];
  for (const input of bad) {
    await assert.rejects(resolveHomeserver(input), (e: { code?: string; message: string }) => {
      assert.equal(e.code, 'HALCYON_INVALID_ARGUMENT', `${JSON.stringify(input)}: ${e.message}`);
      if (input.trim()) assert.ok(e.message.includes(JSON.stringify(input.trim().slice(0, 100)).slice(1, -1)), `the message names ${JSON.stringify(input)}: ${e.message}`);
      return true;
    });
  }
  for (const notString of [undefined, null, 42, {}]) await assert.rejects(resolveHomeserver(notString as unknown as string), { code: 'HALCYON_INVALID_ARGUMENT' });
  await assert.rejects(resolveHomeserver('https://bot:hunter2@example.org'), (e: { code?: string; message: string }) => e.code === 'HALCYON_INVALID_ARGUMENT' && !e.message.includes('hunter2'));
});

test('a bare server name: well-known base_url, checked with /versions', async (t) => {
  const hs = await server(t, VERSIONS);
  const named = await server(t, { '/.well-known/matrix/client': json({ 'm.homeserver': { base_url: `${hs.url}/` }, 'm.identity_server': { base_url: 'https://id.example.org' } }) });
  assert.equal(await resolveHomeserver(named.name), hs.url);
  assert.deepEqual(named.asked, ['/.well-known/matrix/client']);
  assert.deepEqual(hs.asked, ['/_matrix/client/versions']);
  // localhost with a port: loopback, so plain http is used (the same server).
  assert.equal(await resolveHomeserver(`localhost:${named.name.split(':')[1]}`), hs.url);
});

test('a bare server name without a well-known (404): the name itself is the base, checked with /versions', async (t) => {
  const hs = await server(t, VERSIONS);
  assert.equal(await resolveHomeserver(hs.name), hs.url);
  assert.deepEqual(hs.asked, ['/.well-known/matrix/client', '/_matrix/client/versions']);
});

test('a broken well-known is a coded error naming the server: not JSON, no base_url, base_url not http(s), insecure base_url, redirect', async (t) => {
  const cases: Array<[string, (res: ServerResponse) => void, string]> = [
    ['not JSON', json('{"m.homeserver": {"base_url": '), 'HALCYON_BAD_RESPONSE'],
    ['a JSON array', json([1, 2]), 'HALCYON_BAD_RESPONSE'],
    ['empty', json(''), 'HALCYON_BAD_RESPONSE'],
    ['no m.homeserver', json({ 'm.identity_server': { base_url: 'https://id.example.org' } }), 'HALCYON_BAD_RESPONSE'],
    ['base_url not a string', json({ 'm.homeserver': { base_url: 42 } }), 'HALCYON_BAD_RESPONSE'],
    ['base_url not a URL', json({ 'm.homeserver': { base_url: 'not a url' } }), 'HALCYON_BAD_RESPONSE'],
    ['base_url ftp', json({ 'm.homeserver': { base_url: 'ftp://matrix.example.org' } }), 'HALCYON_BAD_RESPONSE'],
    ['base_url javascript', json({ 'm.homeserver': { base_url: 'javascript:alert(1)' } }), 'HALCYON_BAD_RESPONSE'],
    ['base_url plain http elsewhere', json({ 'm.homeserver': { base_url: 'http://matrix.example.org' } }), 'HALCYON_INSECURE_HOMESERVER'],
    ['a 500', json({ errcode: 'M_UNKNOWN' }, 500), 'HALCYON_MATRIX'],
    ['a redirect', (res) => void res.writeHead(302, { location: 'http://127.0.0.1:1/.well-known/matrix/client' }).end(), 'HALCYON_REDIRECT'],
  ];
  for (const [what, answer, code] of cases) {
    const named = await server(t, { '/.well-known/matrix/client': answer, ...VERSIONS });
    await assert.rejects(resolveHomeserver(named.name), (e: { code?: string; message: string }) => {
      assert.equal(e.code, code, `${what}: ${e.message}`);
      assert.ok(e.message.includes(named.name), `${what}: the message names the server: ${e.message}`);
      return true;
    });
    assert.deepEqual(named.asked, ['/.well-known/matrix/client'], `${what}: nothing else was asked`);
  }
});

test('the /versions check failing is a coded error: 404, not JSON, no versions list, nothing listening', async (t) => {
  const answers: Array<[string, ((res: ServerResponse) => void) | null, string]> = [
    ['404', null, 'HALCYON_MATRIX'],
    ['an HTML page', (res) => void res.writeHead(200, { 'content-type': 'text/html' }).end('<html>hello</html>'), 'HALCYON_BAD_RESPONSE'],
    ['no versions', json({ unstable_features: {} }), 'HALCYON_BAD_RESPONSE'],
    ['versions not strings', json({ versions: [1, 2] }), 'HALCYON_BAD_RESPONSE'],
  ];
  for (const [what, answer, code] of answers) {
    const hs = await server(t, answer ? { '/_matrix/client/versions': answer } : {});
    const named = await server(t, { '/.well-known/matrix/client': json({ 'm.homeserver': { base_url: hs.url } }) });
    await assert.rejects(resolveHomeserver(named.name), (e: { code?: string; message: string }) => {
      assert.equal(e.code, code, `${what}: ${e.message}`);
      assert.ok(e.message.includes(named.name) && e.message.includes(hs.url), `${what}: the message names the server and the base URL: ${e.message}`);
      return true;
    });
  }
  const gone = await server(t, {});
  const named = await server(t, { '/.well-known/matrix/client': json({ 'm.homeserver': { base_url: 'http://127.0.0.1:1' } }) });
  await assert.rejects(resolveHomeserver(named.name), { code: 'HALCYON_HTTP' });
  assert.deepEqual(gone.asked, []);
});
