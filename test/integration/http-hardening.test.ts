/**
 * The HTTP door's limits and session handling against the real Synapse: /sync answers far above the ordinary
 * body limit, the server's 413 for an upload over its limit and the media download limit from that limit (an
 * own Synapse, restarted with a lower max_upload_size), and soft logout (a proxy in front of Synapse scripts what Synapse will not do on demand).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { createServer, request as httpRequest } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, test, type TestContext } from 'node:test';
import { resolveHomeserver } from '../../src/discovery.ts';
import { MatrixHttp } from '../../src/http.ts';
import { Client, type HalcyonError } from '../../src/index.ts';
import { startSynapse, testHomeserver, withTimeout, type Homeserver } from '../harness/synapse.ts';
import { defer, newBot, newClient, newPeer, tempDataDir, WAIT_MS } from './util.ts';

let hs: Homeserver;
before(async () => {
  hs = await testHomeserver();
});
after(async () => {
  await hs?.stop();
});

/** An upstream answer, as a rewrite sees it and returns it. */
interface Answer {
  status: number;
  headers: Record<string, string>;
  body: Buffer;
}

/**
 * A proxy in front of `target`: requests for which `rewrite(method, url)` returns a function have their upstream
 * answer read whole and replaced by what it returns; the rest pass through untouched.
 */
async function rewritingProxy(t: TestContext, target: string, rewrite: (method: string, url: string) => ((a: Answer) => Answer) | null): Promise<string> {
  const up = new URL(target);
  const server = createServer((req, res) => {
    const change = rewrite(req.method ?? 'GET', req.url ?? '/');
    const fwd = httpRequest({ host: up.hostname, port: up.port, method: req.method, path: req.url, headers: { ...req.headers, host: up.host }, agent: false }, async (answer) => {
      if (!change) {
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(res);
        return;
      }
      const chunks: Buffer[] = [];
      for await (const c of answer) chunks.push(c as Buffer);
      const out = change({ status: answer.statusCode ?? 502, headers: { 'content-type': String(answer.headers['content-type'] ?? 'application/json') }, body: Buffer.concat(chunks) });
      if (!res.destroyed) res.writeHead(out.status, { ...out.headers, 'content-length': String(out.body.length) }).end(out.body);
    });
    fwd.on('error', () => res.destroy());
    res.on('close', () => fwd.destroy());
    req.pipe(fwd);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  defer(t, async () => {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  });
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

test('a /sync answer far above the 16 MiB default body limit is read (the sync actor passes its own limit)', async (t) => {
  // 20 MiB of whitespace after the JSON: still the same JSON, but over the ordinary limit.
  const pad = Buffer.alloc(20 * 1024 * 1024, 0x20);
  const proxy = await rewritingProxy(t, hs.baseUrl, (method, url) => (method === 'GET' && url.startsWith('/_matrix/client/v3/sync') ? (a) => ({ ...a, body: Buffer.concat([a.body, pad]) }) : null));
  const bot = await newBot(t, { ...hs, baseUrl: proxy }, { encryption: false });
  const syncErrors: string[] = [];
  bot.client.on('syncError', (e) => void syncErrors.push(e.code));
  await withTimeout(bot.client.run(bot.token), WAIT_MS, 'run() through the padding proxy');
  assert.deepEqual(syncErrors, []);
});

test("the admin lowers the upload limit: an upload over it is Synapse's 413 (HALCYON_MEDIA_TOO_LARGE) for a bot that knew the old limit; downloads default to the new limit unless maxBytes says otherwise", async (t) => {
  const own = await startSynapse();
  defer(t, () => own.stop());
  const peer = await newPeer(own);
  const bytes = randomBytes(300_000);
  const res = await fetch(`${own.baseUrl}/_matrix/media/v3/upload`, { method: 'POST', headers: { authorization: `Bearer ${peer.user.accessToken}`, 'content-type': 'application/octet-stream' }, body: bytes });
  assert.equal(res.status, 200);
  const mxc = ((await res.json()) as { content_uri: string }).content_uri;
  // A bot running before the change has the old limit (50M) cached: its own check lets 300K through.
  const before = await newBot(t, own, { encryption: false });
  await before.client.run(before.token);
  const roomId = await before.client.createRoom({ invite: [peer.userId] });
  await peer.join(roomId);
  assert.deepEqual(await before.client.mediaConfig(), { uploadSize: 50 * 1024 * 1024 });
  // The admin lowers max_upload_size to 100K (homeserver.yaml is JSON, which is YAML) and restarts Synapse.
  await own.restart({
    down: () => {
      const cfg = join(own.dataDir, 'homeserver.yaml');
      writeFileSync(cfg, JSON.stringify({ ...JSON.parse(readFileSync(cfg, 'utf8')), max_upload_size: '100K' }));
    },
  });
  const tooLarge = (e: HalcyonError) => e.code === 'HALCYON_MEDIA_TOO_LARGE' && e.status === 413 && e.errcode === 'M_TOO_LARGE';
  await assert.rejects(before.client.uploadMedia(bytes), tooLarge, "Synapse's 413, coded");
  await assert.rejects(before.client.sendFile(roomId, bytes, { filename: 'big.bin' }), tooLarge);
  const { chunk } = await peer.request('GET', `/rooms/${encodeURIComponent(roomId)}/messages`, undefined, { dir: 'b', limit: '50' });
  assert.deepEqual((chunk as Array<{ type: string }>).filter((e) => e.type === 'm.room.message'), [], 'no message for the refused file');

  const bot = await newBot(t, own, { encryption: false });
  await bot.client.run(bot.token);
  assert.deepEqual(await bot.client.mediaConfig(), { uploadSize: 100 * 1024 });
  await assert.rejects(bot.client.downloadMedia(mxc), { code: 'HALCYON_MEDIA_TOO_LARGE' });
  await assert.rejects(bot.client.downloadMediaStream(mxc), { code: 'HALCYON_MEDIA_TOO_LARGE' });
  await assert.rejects(bot.client.downloadContent({ msgtype: 'm.file', body: 'f', url: mxc }), { code: 'HALCYON_MEDIA_TOO_LARGE' });
  assert.deepEqual(await bot.client.downloadMedia(mxc, { maxBytes: 300_000 }), bytes);
  assert.deepEqual(await bot.client.downloadContent({ msgtype: 'm.file', body: 'f', url: mxc }, { maxBytes: Infinity }), bytes);
});

test('soft logout on /sync: run() fails with HALCYON_SOFT_LOGOUT without a retry loop, the data dir is kept, and a re-login restores the same device and keys', async (t) => {
  let softLogout = false;
  let syncs = 0;
  const proxy = await rewritingProxy(t, hs.baseUrl, (method, url) => {
    if (method !== 'GET' || !url.startsWith('/_matrix/client/v3/sync')) return null;
    syncs++;
    if (!softLogout) return null;
    return () => ({ status: 401, headers: { 'content-type': 'application/json' }, body: Buffer.from(JSON.stringify({ errcode: 'M_UNKNOWN_TOKEN', error: 'Token expired', soft_logout: true })) });
  });
  const bot = await newBot(t, { ...hs, baseUrl: proxy });
  await bot.client.run(bot.token);
  const who = bot.client.whoami();
  assert.ok(who.identityKeys, 'encryption is on');
  await bot.client.stop();
  // The account record, the crypto store and its passphrase, the sync token.
  const kept = ['account.sqlite', 'crypto.sqlite', 'crypto.key', 'sync.sqlite'];
  const sizes = (): Record<string, number> => Object.fromEntries(kept.map((f) => [f, statSync(join(bot.dataDir, f)).size]));
  const before = sizes();

  softLogout = true;
  syncs = 0;
  const again = newClient(t, bot.dataDir);
  const errors: string[] = [];
  again.on('error', (e) => void errors.push(e.code));
  await assert.rejects(withTimeout(again.run(bot.token), WAIT_MS, 'run() against a soft logout'), { code: 'HALCYON_SOFT_LOGOUT', errcode: 'M_UNKNOWN_TOKEN' });
  assert.equal(syncs, 1, 'no retry loop against a logged-out session');
  assert.deepEqual(errors, ['HALCYON_SOFT_LOGOUT']);
  const after = sizes();
  for (const f of kept) assert.ok(after[f]! >= before[f]! && after[f]! > 0, `${f} was not wiped or truncated (${before[f]} -> ${after[f]} bytes)`);

  // What the error tells the user to do: log in again with the same data dir; the device and its keys come back.
  softLogout = false;
  const token = await Client.login({ homeserver: proxy, user: bot.user.localpart, password: bot.user.password, dataDir: bot.dataDir });
  const back = newClient(t, bot.dataDir);
  await back.run(token);
  assert.equal(back.whoami().deviceId, who.deviceId);
  assert.deepEqual(back.whoami().identityKeys, who.identityKeys);
});

test('homeserver URLs against Synapse: its URL and its bare server name (well-known) both resolve to the base URL a bot logs in with', async (t) => {
  assert.equal(await resolveHomeserver(`${hs.baseUrl}/`), hs.baseUrl);
  assert.equal(await resolveHomeserver(`127.0.0.1:${hs.port}`), hs.baseUrl);
  assert.equal(await resolveHomeserver(`localhost:${hs.port}`), hs.baseUrl);
  const user = await hs.registerUser();
  const dataDir = tempDataDir(t);
  const token = await Client.login({ homeserver: await resolveHomeserver(`localhost:${hs.port}`), user: user.localpart, password: user.password, dataDir });
  assert.ok(token);
});

test('https:// to Synapse\'s plain-HTTP port: an error saying so, not a bare timeout', async (t) => {
  const http = new MatrixHttp(hs.baseUrl.replace('http:', 'https:'));
  defer(t, () => http.close());
  await assert.rejects(http.json('GET', '/_matrix/client/versions', { anonymous: true }), { code: 'HALCYON_HTTP', message: /does not speak TLS on that port: use http:\/\/ for a local homeserver/ });
});
