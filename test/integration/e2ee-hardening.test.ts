/**
 * Hardening of the crypto actor over a real Synapse: what a room member can make the bot believe with what it
 * encrypts (event types that are never encrypted, relations hidden in the ciphertext), one-time key counts a
 * server leaves out (through a proxy rewriting /sync), who gets the bot's room keys (history visibility), and
 * how withheld keys are reported. The senders are an OlmPeer (a raw OlmMachine that encrypts any type and
 * content) and matrix-js-sdk peers.
 */
import assert from 'node:assert/strict';
import { createServer, request as httpRequest } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, test, type TestContext } from 'node:test';
import * as W from '@matrix-org/matrix-sdk-crypto-wasm';
import { Client, type DecryptionErrorInfo, type Edit, type HalcyonError, type Message } from '../../src/index.ts';
import { startJsPeer } from '../harness/js-peer.ts';
import { OlmPeer } from '../harness/olm-peer.ts';
import type { Peer } from '../harness/peer.ts';
import { testHomeserver, type Homeserver } from '../harness/synapse.ts';
import { defer, newBot, newClient, newPeer, tempDataDir, WAIT_MS, waitUntil, type Bot } from './util.ts';

let hs: Homeserver;
before(async () => {
  hs = await testHomeserver();
});
after(async () => {
  await hs?.stop();
});

type DecErr = { code: string; message: string } & DecryptionErrorInfo;

/** Everything the bot's handlers see: messages, edits, and the IDs reaching `member`, `redaction` and `event`. */
function record(bot: Bot) {
  const messages: Message[] = [];
  const edits: Edit[] = [];
  const members: string[] = [];
  const redactions: string[] = [];
  const events: Array<{ eventId: string; type: string; stateKey: string | null }> = [];
  const decryptionErrors: DecErr[] = [];
  bot.client.on('message', (m) => void messages.push(m));
  bot.client.on('edit', (e) => void edits.push(e));
  bot.client.on('member', (m) => void members.push(m.eventId));
  bot.client.on('redaction', (r) => void redactions.push(r.eventId));
  bot.client.on('event', (e) => void events.push({ eventId: e.eventId, type: e.type, stateKey: e.stateKey }));
  bot.client.on('decryptionError', (e: HalcyonError, info) => void decryptionErrors.push({ code: e.code, message: e.message, ...info }));
  return { messages, edits, members, redactions, events, decryptionErrors };
}

/** A running bot in an encrypted room created by an OlmPeer, whose room key the bot already has. */
async function setup(t: TestContext) {
  const bot = await newBot(t, hs);
  const rec = record(bot);
  await bot.client.run(bot.token);
  const peer = await OlmPeer.start(hs);
  defer(t, () => peer.stop());
  const roomId = await peer.createEncryptedRoom([bot.user.userId]);
  await peer.http.waitForJoined(roomId, bot.user.userId, WAIT_MS);
  await peer.releaseKeys(await peer.prepareRoomKey(roomId));
  return { bot, rec, peer, roomId };
}

/** Waits until the bot's `message` handler got `eventId`; dumps what the bot saw on timeout. */
async function botGot(rec: ReturnType<typeof record>, eventId: string, what: string): Promise<Message> {
  return waitUntil(() => rec.messages.find((m) => m.eventId === eventId), WAIT_MS, what).catch((e: Error) => {
    throw new Error(`${e.message}; decryptionErrors: ${JSON.stringify(rec.decryptionErrors)}`);
  });
}

test('decrypted events claiming a redaction, a state event type, or a state_key are refused (decryptionError), never delivered', async (t) => {
  const { bot, rec, peer, roomId } = await setup(t);
  const target = await peer.sendText(roomId, 'a message to pretend to redact');
  await botGot(rec, target, 'the first real message');

  const claims: Array<{ what: string; eventId: string; names: RegExp }> = [];
  const send = async (what: string, type: string, content: Record<string, unknown>, names: RegExp) =>
    claims.push({ what, eventId: (await peer.sendEncrypted(roomId, type, content)).eventId, names });
  await send('an encrypted m.room.member', 'm.room.member', { membership: 'join', displayname: 'not really' }, /m\.room\.member/);
  await send('an encrypted m.room.redaction', 'm.room.redaction', { redacts: target, reason: 'forged' }, /m\.room\.redaction/);
  await send('an encrypted m.room.power_levels', 'm.room.power_levels', { users: { [peer.userId]: 100 } }, /m\.room\.power_levels/);
  // An encrypted state event (MSC4362: the state key is inside the ciphertext and, as `type:state_key`, in the
  // envelope): a custom type, so only the state_key gives it away.
  const stateContent = JSON.parse(await peer.machine.encryptStateEvent(new W.RoomId(roomId), 'org.example.setting', 'k', JSON.stringify({ value: 1 }))) as object;
  claims.push({ what: 'an encrypted state event', eventId: await peer.http.sendState(roomId, 'm.room.encrypted', 'org.example.setting:k', stateContent), names: /state_key/ });

  const after = await peer.sendText(roomId, 'a real message after the claims');
  await botGot(rec, after, 'the real message after the refused events');
  await waitUntil(() => claims.every((c) => rec.decryptionErrors.some((d) => d.eventId === c.eventId)), WAIT_MS,
    `a decryptionError for each refused event (got ${JSON.stringify(rec.decryptionErrors)})`);

  for (const c of claims) {
    const errs = rec.decryptionErrors.filter((d) => d.eventId === c.eventId);
    assert.equal(errs.length, 1, `${c.what}: one decryptionError`);
    const d = errs[0]!;
    assert.equal(d.code, 'HALCYON_DECRYPT_FAILED', `${c.what}: ${d.message}`);
    assert.equal(d.willRetry, false, `${c.what}: not kept`);
    assert.match(d.message, c.names, `${c.what}: the message says what it claimed`);
    assert.equal(d.sender, peer.userId);
    assert.ok(!rec.members.includes(c.eventId), `${c.what}: not seen by the member handler`);
    assert.ok(!rec.redactions.includes(c.eventId), `${c.what}: not seen by the redaction handler`);
    assert.ok(!rec.events.some((e) => e.eventId === c.eventId), `${c.what}: not seen by the event handler`);
    assert.ok(!rec.messages.some((m) => m.eventId === c.eventId), `${c.what}: not a message`);
  }
  assert.deepEqual(rec.messages.map((m) => m.body), ['a message to pretend to redact', 'a real message after the claims']);
  assert.equal((await bot.client.cryptoStatus())!.pendingUndecryptable, 0);
  assert.deepEqual(bot.errors, []);
});

/**
 * Encrypts `content` as `type` with the peer's current outbound session and sends it; `clearRelation` is what the
 * clear part of the encrypted content carries as `m.relates_to` (the engine copies the plaintext's relation
 * there; `undefined` removes it), so the ciphertext and the clear part can disagree.
 */
async function sendWithClearRelation(peer: OlmPeer, roomId: string, content: Record<string, unknown>, clearRelation: Record<string, unknown> | undefined): Promise<string> {
  const enc = JSON.parse(await peer.machine.encryptRoomEvent(new W.RoomId(roomId), 'm.room.message', JSON.stringify(content))) as Record<string, unknown>;
  if (clearRelation === undefined) delete enc['m.relates_to'];
  else enc['m.relates_to'] = clearRelation;
  return peer.http.sendEvent(roomId, 'm.room.encrypted', enc);
}

test('m.relates_to: only the clear part of an encrypted event counts; a relation inside the ciphertext is ignored', async (t) => {
  const { bot, rec, peer, roomId } = await setup(t);
  const original = await peer.sendText(roomId, 'the original');
  const other = await peer.sendText(roomId, 'another message');
  await botGot(rec, other, 'the first two messages');

  const hiddenEdit = { 'm.relates_to': { rel_type: 'm.replace', event_id: original }, 'm.new_content': { msgtype: 'm.text', body: 'edited in secret' } };
  const onlyInside = await sendWithClearRelation(peer, roomId, { msgtype: 'm.text', body: 'relation only inside', ...hiddenEdit }, undefined);
  const clear = { rel_type: 'm.thread', event_id: other, is_falling_back: true, 'm.in_reply_to': { event_id: other } };
  const both = await sendWithClearRelation(peer, roomId, { msgtype: 'm.text', body: 'relations disagree', ...hiddenEdit }, clear);

  const plain = await botGot(rec, onlyInside, 'the message whose relation is only inside the ciphertext');
  assert.equal(plain.content['m.relates_to'], undefined, 'the relation inside the ciphertext is dropped');
  assert.equal(plain.body, 'relation only inside');
  const threaded = await botGot(rec, both, 'the message with a clear relation');
  assert.deepEqual(threaded.content['m.relates_to'], clear, 'exactly the clear relation');
  assert.equal(threaded.threadId, other);
  assert.deepEqual(rec.edits.map((e) => e.eventId), [], 'neither is an edit');
  assert.deepEqual(rec.decryptionErrors, []);
  assert.deepEqual(bot.errors, []);
});

/**
 * A proxy in front of Synapse whose /sync answers look like those of a server without fallback keys that leaves
 * out `device_one_time_keys_count` when the count is zero (the spec allows it; Synapse always sends both).
 * Records how many one-time keys each successful /keys/upload carried, once the server has answered it.
 */
async function omittingProxy(t: TestContext): Promise<{ url: string; uploads: number[] }> {
  const up = new URL(hs.baseUrl);
  const uploads: number[] = [];
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0]!;
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const keys = path.endsWith('/keys/upload') ? Object.keys((JSON.parse(body.toString('utf8')) as { one_time_keys?: object }).one_time_keys ?? {}).length : -1;
      const headers = { ...req.headers, host: up.host };
      delete headers['accept-encoding']; // the /sync body is rewritten: plain JSON
      const fwd = httpRequest({ host: up.hostname, port: up.port, method: req.method, path: req.url, headers, agent: false }, (answer) => {
        if (keys >= 0 && answer.statusCode === 200) uploads.push(keys); // answered: the server holds the keys
        if (!path.endsWith('/sync') || answer.statusCode !== 200) {
          res.writeHead(answer.statusCode ?? 502, answer.headers);
          answer.pipe(res);
          return;
        }
        const parts: Buffer[] = [];
        answer.on('data', (c: Buffer) => parts.push(c));
        answer.on('end', () => {
          const sync = JSON.parse(Buffer.concat(parts).toString('utf8')) as Record<string, any>;
          delete sync.device_unused_fallback_key_types;
          if (!sync.device_one_time_keys_count?.signed_curve25519) delete sync.device_one_time_keys_count;
          const out = Buffer.from(JSON.stringify(sync), 'utf8');
          const h = { ...answer.headers, 'content-length': String(out.length) };
          delete h['transfer-encoding'];
          res.writeHead(200, h);
          res.end(out);
        });
      });
      fwd.on('error', () => res.destroy());
      res.on('close', () => fwd.destroy());
      fwd.end(body);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  defer(t, async () => {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, uploads };
}

test('a server that leaves out zero one-time key counts: after every key is claimed, the bot uploads new ones', async (t) => {
  const proxy = await omittingProxy(t);
  const user = await hs.registerUser();
  const dataDir = tempDataDir(t);
  const token = await Client.login({ homeserver: proxy.url, user: user.localpart, password: user.password, dataDir });
  const first = newClient(t, dataDir);
  await first.run(token);
  const { deviceId } = first.whoami();
  await first.stop();

  // While the bot is stopped, senders claim every one-time key; then only the fallback key is left.
  const claimer = await newPeer(hs);
  const claim = async () => {
    const res = await claimer.request('POST', '/keys/claim', { one_time_keys: { [user.userId]: { [deviceId]: 'signed_curve25519' } } });
    const keys = Object.values((res.one_time_keys?.[user.userId]?.[deviceId] ?? {}) as Record<string, { fallback?: boolean }>);
    return keys.length === 0 ? 'none' : keys[0]!.fallback ? 'fallback' : 'one-time';
  };
  let claimed = 0;
  while ((await claim()) === 'one-time') claimed++;
  assert.ok(claimed > 0, 'the bot had uploaded one-time keys');
  const uploadsBefore = proxy.uploads.length;

  const second = newClient(t, dataDir);
  const errors: string[] = [];
  second.on('error', (e) => void errors.push(`${e.code}: ${e.message}`));
  await second.run(token);
  await waitUntil(() => proxy.uploads.slice(uploadsBefore).some((n) => n > 0), WAIT_MS, 'an upload of new one-time keys after a sync without a count');
  assert.equal(await claim(), 'one-time', 'a sender gets a one-time key again');
  assert.deepEqual(errors, []);
});

const enc = encodeURIComponent;

/** Whether `peer`'s machine can decrypt `eventId` (fetched by `reader`, a member who can see it): 'decrypted' or the engine's error code. */
async function canDecrypt(peer: OlmPeer, reader: Peer, roomId: string, eventId: string): Promise<string> {
  const raw = (await reader.request('GET', `/rooms/${enc(roomId)}/event/${enc(eventId)}`)) as object;
  try {
    const d = await peer.machine.decryptRoomEvent(JSON.stringify(raw), new W.RoomId(roomId), new W.DecryptionSettings(W.TrustRequirement.Untrusted));
    d.free();
    return 'decrypted';
  } catch (err) {
    return W.DecryptionErrorCode[(err as { code: W.DecryptionErrorCode }).code] ?? String(err);
  }
}

/** The Megolm session ID of an encrypted event, as a member who can see it reads it. */
async function sessionOf(reader: Peer, roomId: string, eventId: string): Promise<string> {
  const raw = (await reader.request('GET', `/rooms/${enc(roomId)}/event/${enc(eventId)}`)) as { type: string; content: { session_id?: string } };
  assert.equal(raw.type, 'm.room.encrypted');
  return raw.content.session_id!;
}

/** An encrypted room created by a plain peer with `history_visibility` set from the start, inviting `invite`. */
async function roomWithVisibility(creator: Peer, visibility: string, invite: string[]): Promise<string> {
  const res = await creator.request('POST', '/createRoom', {
    preset: 'private_chat',
    invite,
    initial_state: [
      { type: 'm.room.encryption', state_key: '', content: { algorithm: 'm.megolm.v1.aes-sha2' } },
      { type: 'm.room.history_visibility', state_key: '', content: { history_visibility: visibility } },
    ],
  });
  return res.room_id as string;
}

/** Resolves when the bot's `member` handler has seen `userId` become `membership` in the room. */
function memberSeen(bot: Bot, roomId: string, userId: string, membership: string): Promise<void> {
  return new Promise((resolve) => {
    bot.client.on('member', (m) => {
      if (m.roomId === roomId && m.userId === userId && m.membership === membership) resolve();
    });
  });
}

for (const [visibility, invitedGetsKey] of [['joined', false], ['shared', true], ['invited', true]] as const) {
  for (const learnt of ['sync', 'server'] as const) {
    test(`history_visibility ${visibility} (learnt from the ${learnt}): a user invited but not joined ${invitedGetsKey ? 'gets the' : 'gets no'} room key for the bot's message`, async (t) => {
      const creator = await newPeer(hs);
      const user = await hs.registerUser();
      const dataDir = tempDataDir(t);
      const token = await Client.login({ homeserver: hs.baseUrl, user: user.localpart, password: user.password, dataDir });
      const botUser = user.userId;
      let roomId: string;
      if (learnt === 'server') {
        // The bot joins with encryption off: its crypto store, made later, never sees the room's state in a sync.
        const plain = newClient(t, dataDir, { encryption: false });
        await plain.run(token);
        roomId = await roomWithVisibility(creator, visibility, [botUser]);
        await creator.waitForJoined(roomId, botUser, WAIT_MS);
        await plain.stop();
      }
      const client = newClient(t, dataDir);
      const bot: Bot = { user, token, dataDir, client, errors: [] };
      client.on('error', (e) => void bot.errors.push(e));
      await client.run(token);
      if (learnt === 'sync') {
        roomId = await roomWithVisibility(creator, visibility, [botUser]);
        await creator.waitForJoined(roomId, botUser, WAIT_MS);
      }
      const x = await OlmPeer.start(hs);
      defer(t, () => x.stop());
      const invited = memberSeen(bot, roomId!, x.userId, 'invite');
      await creator.invite(roomId!, x.userId);
      await invited;
      const early = await client.sendMessage(roomId!, 'sent while x is invited');

      const joined = memberSeen(bot, roomId!, x.userId, 'join');
      await x.http.join(roomId!);
      await joined;
      const later = await client.sendMessage(roomId!, 'sent after x joined');
      assert.equal((await x.waitForMessage(roomId!, (m) => m.eventId === later, WAIT_MS)).body, 'sent after x joined');
      const outcome = await canDecrypt(x, creator, roomId!, early);
      if (invitedGetsKey) assert.equal(outcome, 'decrypted', 'the invited user got the key of the earlier message');
      else assert.ok(['MissingRoomKey', 'UnknownMessageIndex'].includes(outcome), `the invited user must not get the key of the earlier message (${outcome})`);
      assert.deepEqual(bot.errors, []);
    });
  }
}

test('a history_visibility change makes the bot\'s next message use a new Megolm session', async (t) => {
  const bot = await newBot(t, hs);
  const changes: string[] = [];
  bot.client.on('event', (e) => {
    if (e.type === 'm.room.history_visibility') changes.push(String(e.content.history_visibility));
  });
  await bot.client.run(bot.token);
  const creator = await newPeer(hs);
  const roomId = await roomWithVisibility(creator, 'shared', [bot.user.userId]);
  await creator.waitForJoined(roomId, bot.user.userId, WAIT_MS);
  const first = await sessionOf(creator, roomId, await bot.client.sendMessage(roomId, 'one'));
  assert.equal(await sessionOf(creator, roomId, await bot.client.sendMessage(roomId, 'two')), first, 'the same session while nothing changes');

  await creator.sendState(roomId, 'm.room.history_visibility', '', { history_visibility: 'joined' });
  await waitUntil(() => changes.includes('joined'), WAIT_MS, 'the bot to see the history_visibility change');
  const second = await sessionOf(creator, roomId, await bot.client.sendMessage(roomId, 'three'));
  assert.notEqual(second, first, 'a new session after the change');
  assert.equal(await sessionOf(creator, roomId, await bot.client.sendMessage(roomId, 'four')), second);
  assert.deepEqual(bot.errors, []);
});

test('a room key withheld by its sender (matrix-js-sdk sharing with verified devices only): decryptionError names m.unverified, willRetry false, nothing kept', async (t) => {
  const bot = await newBot(t, hs);
  const rec = record(bot);
  await bot.client.run(bot.token);
  const a = await startJsPeer(hs);
  defer(t, () => a.stop());
  // Keys for verified devices only: the bot's device is not verified, so matrix-js-sdk withholds its room keys
  // from it with m.unverified. (OnlySignedDevicesIsolationMode would need cross-signing on the peer's account.)
  a.client.getCrypto()!.globalBlacklistUnverifiedDevices = true;
  const roomId = await a.createEncryptedRoom({ invite: [bot.user.userId] });
  await a.waitForMember(roomId, bot.user.userId, 'join');
  const withheld = await a.sendText(roomId, 'not for unverified devices');
  const d = await waitUntil(() => rec.decryptionErrors.find((e) => e.eventId === withheld), WAIT_MS, 'the decryptionError of the withheld message').catch((e: Error) => {
    throw new Error(`${e.message}; messages: ${JSON.stringify(rec.messages.map((m) => m.body))}`);
  });
  t.diagnostic(`withheld: ${d.code} willRetry=${d.willRetry} (${d.message})`);
  assert.equal(d.code, 'HALCYON_DECRYPT_MISSING_KEY');
  assert.equal(d.willRetry, false, 'the sender decided: the key will not come');
  assert.match(d.message, /withheld.*m\.unverified/);
  assert.doesNotMatch(d.message, /Some\(/);
  assert.equal((await bot.client.cryptoStatus())!.pendingUndecryptable, 0, 'not kept');

  a.client.getCrypto()!.globalBlacklistUnverifiedDevices = false;
  const shared = await a.sendText(roomId, 'for every device');
  assert.equal((await botGot(rec, shared, 'the message sent once the peer shares with unverified devices')).body, 'for every device');
  assert.deepEqual(bot.errors, []);
});
