import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { HalcyonError } from '../../src/errors.ts';
import { BatchReader } from '../../src/events.ts';
import { EVENT_FLAGS, OFF, type WireBatch } from '../../src/protocol.ts';
import { processSync as processBytes, type ProcessOptions } from '../../src/sync/process.ts';

/** Processes text (as its UTF-8 bytes) and decodes the columns the way main does, through BatchReader. */
function processSync(text: string, opts: ProcessOptions) {
  const body = Buffer.from(text, 'utf8');
  const p = processBytes(body, opts);
  const reader = new BatchReader({ body, events: p.events } as unknown as WireBatch);
  const n = p.events.count;
  const col = (f: (i: number) => unknown) => Array.from({ length: n }, (_, i) => f(i));
  return {
    ...p,
    cols: {
      type: col((i) => reader.type(i)),
      eventId: col((i) => reader.str(i, OFF.eventId)),
      sender: col((i) => reader.str(i, OFF.sender)),
      stateKey: col((i) => reader.str(i, OFF.stateKey)),
      relType: col((i) => reader.relType(i)),
      relEventId: col((i) => reader.str(i, OFF.relEventId)),
      raw: col((i) => reader.parse(i)),
      own: col((i) => (p.events.flags[i]! & 1) === 1),
    },
  };
}

const dir = join(import.meta.dirname, '..', 'fixtures', 'sync');
const fixtures = readdirSync(dir)
  .filter((f) => f.endsWith('.json'))
  .sort()
  .map((f) => ({ name: f, text: readFileSync(join(dir, f), 'utf8') }));
const ALL = { wantedTypes: null, ownUserId: '@bot:localhost' };

/** The reference: the same extraction done on JSON.parse output. */
function reference(body: any) {
  const events: any[] = [];
  const state: any[] = [];
  for (const section of ['join', 'leave'] as const) {
    for (const [roomId, room] of Object.entries<any>(body.rooms?.[section] ?? {})) {
      const st = [...(room.state?.events ?? [])];
      for (const ev of room.timeline?.events ?? []) {
        events.push({ roomId, ev });
        if (typeof ev.state_key === 'string') st.push(ev);
      }
      state.push({ roomId, membership: section, state: st });
    }
  }
  const invites = Object.keys(body.rooms?.invite ?? {});
  return { events, state, invites };
}

test('recorded Synapse bodies: columns, raw slices and state match a JSON.parse reference', () => {
  assert.ok(fixtures.length >= 5);
  let total = 0;
  for (const { name, text } of fixtures) {
    const body = JSON.parse(text);
    const ref = reference(body);
    const p = processSync(text, ALL);
    assert.equal(p.nextBatch, body.next_batch, name);
    assert.deepEqual(p.errors, [], name);
    assert.equal(p.events.count, ref.events.length, name);
    ref.events.forEach(({ roomId, ev }, i) => {
      assert.equal(p.rooms[p.events.room[i]!], roomId);
      assert.equal(p.cols.type[i], ev.type);
      assert.equal(p.cols.eventId[i], ev.event_id);
      assert.equal(p.cols.sender[i], ev.sender);
      assert.equal(p.events.ts[i], ev.origin_server_ts);
      assert.equal(p.cols.stateKey[i], ev.state_key ?? null);
      assert.equal(p.cols.relType[i], ev.content['m.relates_to']?.rel_type ?? null);
      assert.equal(p.cols.relEventId[i], ev.content['m.relates_to']?.event_id ?? null);
      assert.deepEqual(p.cols.raw[i], ev);
      assert.equal(p.cols.own[i], ev.sender === '@bot:localhost');
    });
    const state = p.state.rooms.filter((r) => r.membership !== 'invite');
    assert.deepEqual(
      state.map((r) => ({ roomId: r.roomId, membership: r.membership, state: r.state })),
      ref.state,
      name,
    );
    assert.deepEqual(p.invites.map((i) => i.roomId), ref.invites, name);
    total += p.events.count;
  }
  assert.ok(total > 10);
});

test('recorded bodies: invite carries the inviter and room name; a kick shows up as a left room', () => {
  const invite = processSync(fixtures.find((f) => f.name.includes('invite'))!.text, ALL);
  assert.equal(invite.invites.length, 2);
  assert.ok(invite.invites.every((i) => i.inviter === '@alice:localhost'));
  assert.deepEqual(invite.invites.map((i) => i.name).sort(), ['Fixture room', 'Second room']);
  const kicked = processSync(fixtures.find((f) => f.name.includes('kicked'))!.text, ALL);
  assert.equal(kicked.left.length, 1);
  assert.equal(kicked.cols.type[0], 'm.room.member');
});

test('wantedTypes keeps only the listed timeline types, but state still reaches the cache', () => {
  const text = fixtures.find((f) => f.name.includes('activity'))!.text;
  const p = processSync(text, { wantedTypes: new Set(['m.reaction']) });
  assert.deepEqual(p.events.strings, ['m.reaction', 'm.annotation']); // types and relation types share one table
  assert.equal(p.events.count, 1);
  assert.equal(p.cols.type[0], 'm.reaction');
  const names = p.state.rooms.flatMap((r) => r.state.map((e) => e.type));
  assert.ok(names.includes('m.room.name') && names.includes('m.room.topic'));
});

const good = (n: number) => ({ type: 'm.room.message', event_id: `$good${n}`, sender: '@a:x', origin_server_ts: n, content: { msgtype: 'm.text', body: `good ${n}` } });
const bodyWith = (events: unknown[], extra: object = {}) =>
  JSON.stringify({ next_batch: 's2', rooms: { join: { '!r:x': { timeline: { events }, state: { events: [] } } } }, ...extra });

test('malformed events are reported with HALCYON_BAD_EVENT and skipped; the good ones around them are kept', () => {
  const bad = [
    42,
    'a string',
    null,
    [],
    { event_id: '$1', sender: '@a:x', origin_server_ts: 1, content: {} }, // no type
    { type: 5, event_id: '$2', sender: '@a:x', origin_server_ts: 1, content: {} },
    { type: 'm.room.message', event_id: '$3', origin_server_ts: 1, content: {} }, // no sender
    { type: 'm.room.message', event_id: '$4', sender: '@a:x', origin_server_ts: 1 }, // no content
    { type: 'm.room.message', event_id: '$5', sender: '@a:x', origin_server_ts: 1, content: 'x' },
    { type: 'm.room.message', event_id: '$6', sender: '@a:x', origin_server_ts: '1', content: {} },
    { type: 'm.room.member', event_id: '$7', sender: '@a:x', origin_server_ts: 1, content: {}, state_key: 7 },
    { type: 'm.room.message', sender: '@a:x', origin_server_ts: 1, content: {} }, // no event_id
    { type: 'm.room.message', event_id: { x: 1 }, sender: ['@a:x'], origin_server_ts: 1, content: {} },
  ];
  const p = processSync(bodyWith([good(1), ...bad, good(2)]), ALL);
  assert.deepEqual(p.cols.eventId, ['$good1', '$good2']);
  assert.equal(p.errors.length, bad.length);
  for (const e of p.errors) {
    assert.equal(e.code, 'HALCYON_BAD_EVENT');
    assert.equal(e.roomId, '!r:x');
    assert.match(e.message, /skipped|not an object/);
  }
  assert.deepEqual(
    p.errors.filter((e) => e.eventId).map((e) => e.eventId),
    ['$1', '$2', '$3', '$4', '$5', '$6', '$7'],
  );
});

test('malformed state events and room entries are reported and skipped', () => {
  const text = JSON.stringify({
    next_batch: 's2',
    rooms: {
      join: {
        '!r:x': { state: { events: [{ type: 'm.room.name', state_key: '', content: { name: 'ok' } }, { type: 'm.room.topic' }, 'junk'] }, timeline: { events: [good(1)] } },
        '!bad:x': 'not a room',
      },
      invite: { '!i:x': { invite_state: { events: [{ type: 'm.room.name' }, { type: 'm.room.name', state_key: '', content: { name: 'N' }, sender: '@a:x' }] } } },
    },
  });
  const p = processSync(text, ALL);
  assert.equal(p.events.count, 1);
  assert.deepEqual(p.state.rooms.find((r) => r.roomId === '!r:x')!.state.map((e) => e.content.name), ['ok']);
  assert.equal(p.invites[0]!.name, 'N');
  assert.equal(p.errors.length, 4);
});

test('bodies that are not a sync response throw HALCYON_BAD_SYNC', () => {
  for (const text of ['', '<html>502 Bad Gateway</html>', 'null', '[]', '"s1"', '{"rooms":{}}', '{"next_batch":5}', '{"next_batch":"s1"} trailing', '{"next_batch":"s1",}']) {
    assert.throws(() => processSync(text, ALL), (e: HalcyonError) => e.code === 'HALCYON_BAD_SYNC', `for ${JSON.stringify(text)}`);
  }
});

test('every truncation of a recorded body throws HALCYON_BAD_SYNC and nothing else', () => {
  const { text } = fixtures.find((f) => f.name.includes('activity'))!;
  const trimmed = text.trimEnd();
  for (let n = 0; n < trimmed.length; n++) {
    assert.throws(() => processSync(trimmed.slice(0, n), ALL), (e: HalcyonError) => e.code === 'HALCYON_BAD_SYNC', `prefix ${n}`);
  }
});

test('10 MB bodies: one huge event and many events are processed, and the events after them delivered', () => {
  const huge = { ...good(2), content: { msgtype: 'm.text', body: 'x'.repeat(10 * 1024 * 1024) } };
  const p = processSync(bodyWith([good(1), huge, good(3)]), ALL);
  assert.deepEqual(p.cols.eventId, ['$good1', '$good2', '$good3']);
  assert.equal((p.cols.raw[1] as { content: { body: string } }).content.body.length, 10 * 1024 * 1024);
  const many = Array.from({ length: 60_000 }, (_, i) => good(i));
  const text = bodyWith(many);
  assert.ok(text.length > 8_000_000);
  assert.equal(processSync(text, ALL).events.count, 60_000);
});

test('escaped and non-ASCII IDs and senders decode exactly as JSON.parse reads them', () => {
  const odd = { type: 'm.room.message', event_id: '$\u0041b\"c', sender: '@ünï:x', origin_server_ts: 1, content: { body: 'é', 'm.relates_to': { rel_type: 'm.th\u0072ead', event_id: '$r\\oot' } } };
  const text = JSON.stringify({ next_batch: 's2', rooms: { join: { '!r:x': { timeline: { events: [odd] } } } } }).replace('$Ab', '$\\u0041b');
  const ref = JSON.parse(text).rooms.join['!r:x'].timeline.events[0];
  const p = processSync(text, ALL);
  assert.equal(p.cols.eventId[0], ref.event_id);
  assert.equal(p.cols.sender[0], '@ünï:x');
  assert.equal(p.cols.relType[0], 'm.thread');
  assert.equal(p.cols.relEventId[0], '$r\\oot');
  assert.deepEqual(p.cols.raw[0], ref);
});

test('account data (global and per room) and read receipts are extracted; malformed ones are reported, not thrown', () => {
  const body = {
    next_batch: 's2',
    account_data: { events: [{ type: 'm.direct', content: { '@a:x': ['!r:x'] } }, { type: 'bad', content: 'not an object' }, 7] },
    rooms: {
      join: {
        '!r:x': {
          account_data: { events: [{ type: 'm.tag', content: { tags: { u1: {} } } }] },
          ephemeral: {
            events: [
              { type: 'm.typing', content: { user_ids: ['@a:x'] } },
              {
                type: 'm.receipt',
                content: {
                  $e1: { 'm.read': { '@a:x': { ts: 1000 }, '@b:x': { ts: 2000, thread_id: '$root' } }, 'm.read.private': { '@bot:localhost': { ts: 3 } } },
                  $e2: { 'm.read': { '@c:x': 'garbage' } },
                },
              },
              { type: 'm.receipt', content: [] },
            ],
          },
          timeline: { events: [] },
        },
      },
    },
  };
  const p = processSync(JSON.stringify(body), ALL);
  assert.deepEqual(p.accountData, [
    { roomId: null, type: 'm.direct', content: { '@a:x': ['!r:x'] } },
    { roomId: '!r:x', type: 'm.tag', content: { tags: { u1: {} } } },
  ]);
  assert.deepEqual(p.state.accountData, p.accountData, 'account data goes to the cache with the state');
  assert.deepEqual(p.receipts, [
    { roomId: '!r:x', eventId: '$e1', userId: '@a:x', receiptType: 'm.read', ts: 1000, threadId: null },
    { roomId: '!r:x', eventId: '$e1', userId: '@b:x', receiptType: 'm.read', ts: 2000, threadId: '$root' },
    { roomId: '!r:x', eventId: '$e1', userId: '@bot:localhost', receiptType: 'm.read.private', ts: 3, threadId: null },
    { roomId: '!r:x', eventId: '$e2', userId: '@c:x', receiptType: 'm.read', ts: null, threadId: null },
  ]);
  assert.equal(p.errors.filter((e) => /account data/.test(e.message)).length, 2, 'two malformed account data events reported');
  assert.equal(p.errors.filter((e) => /receipt/.test(e.message)).length, 1, 'the malformed receipt event reported');
});

test("an invite marked is_direct on the bot's own member event is a direct invite", () => {
  const invite = (isDirect: boolean, stateKey = '@bot:localhost') => ({
    next_batch: 's1',
    rooms: {
      invite: {
        '!dm:x': {
          invite_state: {
            events: [{ type: 'm.room.member', state_key: stateKey, sender: '@a:x', content: { membership: 'invite', is_direct: isDirect } }],
          },
        },
      },
    },
  });
  assert.equal(processSync(JSON.stringify(invite(true)), ALL).invites[0]!.isDirect, true);
  assert.equal(processSync(JSON.stringify(invite(false)), ALL).invites[0]!.isDirect, false);
  assert.equal(processSync(JSON.stringify(invite(true, '@someone:x')), ALL).invites[0]!.isDirect, false, "someone else's is_direct does not count");
});

test('limited timelines of joined rooms are reported as gaps with their prev_batch', () => {
  const room = (limited: boolean) => ({ timeline: { events: [], limited, prev_batch: 'p1' } });
  const p = processSync(JSON.stringify({ next_batch: 's', rooms: { join: { '!busy:x': room(true), '!calm:x': room(false) }, leave: { '!gone:x': room(true) } } }), ALL);
  assert.deepEqual(p.gaps, [{ roomId: '!busy:x', prevBatch: 'p1' }]);
});

test('escaped or repeated member names the scanner routes on: the event is skipped and reported, its neighbours kept', () => {
  const ev = (id: string, extra = '', contentExtra = '', relExtra = '') =>
    `{"type":"m.room.message","event_id":"${id}","sender":"@a:x","origin_server_ts":1,"content":{"body":"b","m.relates_to":{"rel_type":"m.thread","event_id":"$root"${relExtra}}${contentExtra}}${extra}}`;
  const tainted = [
    ev('$t1', ',"cont\\u0065nt":null'), // an escaped name decoding to a routed one, after the valid one
    ev('$t2', ',"content":null'), // a plain repeat
    ev('$t3', ',"typ\\u0065":"m.room.name"'),
    ev('$t4', ',"type":5'),
    ev('$t5', ',"sender":"@b:x"'),
    ev('$t6', ',"st\\u0061te_key":""'), // would turn a message into a state event for JSON.parse alone
    ev('$t7', ',"state_key":"","state_key":"x"'),
    ev('$t8', ',"origin_server_ts":2'),
    ev('$t9', ',"event_id":"$other"'),
    ev('$t10', ',"\\u0075nsigned":{}'), // any escaped top-level name
    ev('$t11', '', ',"m.rel\\u0061tes_to":{"rel_type":"m.annotation"}'),
    ev('$t12', '', ',"m.relates_to":null'),
    ev('$t13', '', '', ',"rel_typ\\u0065":"m.annotation"'),
    ev('$t14', '', '', ',"rel_type":"m.replace"'),
    ev('$t15', '', '', ',"event_id":"$elsewhere"'),
    ev('$t16', '', '', ',"ev\\u0065nt_id":"$elsewhere"'),
    // Found bad before its content: the content object must still be read through.
    ev('$t17', ',"content":{"m.relates_to":{"rel_type":"x"}}'),
    `{"\\u0074ype":"m.room.message","type":"m.room.message","event_id":"$t18","sender":"@a:x","origin_server_ts":1,"content":{"body":"b"}}`,
  ];
  // Escapes in names nobody routes on are ordinary JSON: those events are kept.
  const fine = [ev('$ok1', '', ',"b\\u006fdy2":"x"'), ev('$ok2', '', '', ',"k\\u0065y":1'), ev('$ok3', '', ',"x\\u0022":{"m.rel\\u0061tes_to":1}')];
  const text = `{"next_batch":"s2","rooms":{"join":{"!r:x":{"timeline":{"events":[${JSON.stringify(good(1))},${tainted.join(',')},${fine.join(',')},${JSON.stringify(good(2))}]}}}}}`;
  const p = processSync(text, ALL);
  assert.deepEqual(p.cols.eventId, ['$good1', '$ok1', '$ok2', '$ok3', '$good2']);
  assert.equal(p.errors.length, tainted.length, p.errors.map((e) => e.message).join('\n'));
  for (const e of p.errors) {
    assert.equal(e.code, 'HALCYON_BAD_EVENT');
    assert.match(e.message, /^timeline event skipped: .*(escape|twice)/);
  }
  // What is delivered reads the same through the columns and through JSON.parse of its span.
  p.cols.raw.forEach((raw, i) => {
    const r = raw as { event_id: string; type: string; content: { 'm.relates_to'?: { rel_type?: string; event_id?: string } } };
    assert.equal(r.event_id, p.cols.eventId[i]);
    assert.equal(r.type, p.cols.type[i]);
    assert.equal(r.content['m.relates_to']?.rel_type ?? null, p.cols.relType[i]);
    assert.equal(r.content['m.relates_to']?.event_id ?? null, p.cols.relEventId[i]);
  });
});

test("an invite carries the event ID of the bot's own invite event when the server appends it in full to invite_state; null without one", () => {
  const stripped = [
    { type: 'm.room.create', state_key: '', sender: '@a:x', content: { room_version: '12' } },
    { type: 'm.room.name', state_key: '', sender: '@a:x', content: { name: 'N' } },
    // Another user's invite, even with an event ID, is not the bot's.
    { type: 'm.room.member', state_key: '@other:x', sender: '@a:x', event_id: '$notmine', content: { membership: 'invite' } },
  ];
  const own = { type: 'm.room.member', state_key: '@bot:localhost', sender: '@a:x', event_id: '$invite', origin_server_ts: 5, unsigned: { age: 1 }, content: { membership: 'invite' } };
  const body = (events: unknown[]) => JSON.stringify({ next_batch: 's1', rooms: { invite: { '!r:x': { invite_state: { events } } } } });
  assert.equal(processSync(body([...stripped, own]), ALL).invites[0]!.eventId, '$invite');
  assert.equal(processSync(body([...stripped, { ...own, event_id: undefined }]), ALL).invites[0]!.eventId, null, 'a stripped invite has no event ID');
  assert.equal(processSync(body([...stripped, { ...own, content: { membership: 'join' } }]), ALL).invites[0]!.eventId, null, 'not an invite');
  assert.equal(processSync(body([...stripped, { ...own, event_id: 7 }]), ALL).invites[0]!.eventId, null, 'not a string');
  assert.equal(processSync(body([...stripped, own]), { wantedTypes: null }).invites[0]!.eventId, null, 'without the bot user ID nothing is its own');
});

test('knocked rooms: knock_state goes to knocks and, as stripped state, to the cache with membership knock; malformed entries are reported', () => {
  const stripped = [
    { type: 'm.room.create', state_key: '', sender: '@a:x', content: { room_version: '10' } },
    { type: 'm.room.name', state_key: '', sender: '@a:x', content: { name: 'Door' } },
    { type: 'm.room.join_rules', state_key: '', sender: '@a:x', content: { join_rule: 'knock' } },
  ];
  const own = { type: 'm.room.member', state_key: '@bot:localhost', sender: '@bot:localhost', event_id: '$knock', origin_server_ts: 3, content: { membership: 'knock' } };
  const text = JSON.stringify({
    next_batch: 's1',
    rooms: { knock: { '!k:x': { knock_state: { events: [...stripped, { type: 'm.room.topic' }, 'junk', own] } }, '!bad:x': 'not a room' }, join: { '!r:x': { timeline: { events: [good(1)] } } } },
  });
  const p = processSync(text, ALL);
  assert.deepEqual(p.knocks, [{ roomId: '!k:x', state: [...stripped, own] }]);
  assert.deepEqual(p.state.rooms.filter((r) => r.membership === 'knock'), [{ roomId: '!k:x', membership: 'knock', state: [...stripped, own] }]);
  assert.deepEqual(p.cols.eventId, ['$good1'], 'knock state is not timeline');
  assert.deepEqual(p.left, []);
  assert.deepEqual(p.errors.map((e) => [e.code, e.roomId]), [['HALCYON_BAD_EVENT', '!k:x'], ['HALCYON_BAD_EVENT', '!k:x'], ['HALCYON_BAD_EVENT', '!bad:x']]);
  assert.deepEqual(processSync(JSON.stringify({ next_batch: 's2' }), ALL).knocks, []);
});

test("the timeline's redactions of joined rooms go to the cache (top-level redacts before v11, content.redacts from v11)", () => {
  const redaction = (id: string, target: Record<string, unknown>) => ({ type: 'm.room.redaction', event_id: id, sender: '@a:x', origin_server_ts: 1, ...target });
  const text = JSON.stringify({
    next_batch: 's2',
    rooms: {
      join: {
        '!r:x': {
          timeline: {
            events: [
              { type: 'm.room.name', state_key: '', event_id: '$n', sender: '@a:x', origin_server_ts: 1, content: { name: 'N' } },
              redaction('$r1', { redacts: '$n', content: {} }),
              redaction('$r2', { content: { redacts: '$v11' } }),
              redaction('$r3', { content: {} }), // redacts nothing
              good(1),
            ],
          },
        },
        '!quiet:x': { timeline: { events: [redaction('$r4', { redacts: '$m', content: { redacts: '$forged' } })] } },
      },
      leave: { '!gone:x': { timeline: { events: [redaction('$r5', { redacts: '$old', content: {} })] } } },
    },
  });
  const p = processSync(text, { wantedTypes: new Set(['m.room.message']) });
  const byRoom = Object.fromEntries(p.state.rooms.map((r) => [r.roomId, r]));
  assert.deepEqual(byRoom['!r:x']!.redactions, ['$n', '$v11']);
  assert.deepEqual(byRoom['!r:x']!.state.map((e) => e.event_id), ['$n']);
  assert.deepEqual(byRoom['!quiet:x'], { roomId: '!quiet:x', membership: 'join', state: [], redactions: ['$m'] }, 'a joined room with only a redaction reaches the cache');
  assert.equal(byRoom['!gone:x']!.redactions, undefined, 'only joined rooms');
  assert.deepEqual(p.cols.eventId, ['$good1'], 'wantedTypes still decides what handlers get');
});

test('notices are flagged from the raw msgtype token (the last one counts, as for JSON.parse); the rest of content is still read', () => {
  const ev = (n: number, content: string) => `{"type":"m.room.message","event_id":"$n${n}","sender":"@a:x","origin_server_ts":${n},"content":${content}}`;
  const text = `{"next_batch":"s2","rooms":{"join":{"!r:x":{"timeline":{"events":[${[
    ev(0, '{"msgtype":"m.notice","body":"n"}'),
    ev(1, '{"msgtype":"m.text","body":"t","m.relates_to":{"rel_type":"m.replace","event_id":"$x"}}'),
    ev(2, '{"msgtype":"m.notice","msgtype":"m.text","body":"last wins"}'),
    ev(3, '{"body":"no msgtype first","msgtype":"m.notice","m.relates_to":{"rel_type":"m.thread","event_id":"$root"}}'),
    ev(4, '{"msgtype":7,"body":"mistyped"}'),
  ].join(',')}]}}}}}`;
  const p = processSync(text, ALL);
  const notice = Array.from({ length: p.events.count }, (_, i) => (p.events.flags[i]! & EVENT_FLAGS.notice) !== 0);
  assert.deepEqual(notice, [true, false, false, true, false]);
  assert.deepEqual(p.cols.relType, [null, 'm.replace', null, 'm.thread', null]);
  assert.deepEqual(p.cols.relEventId, [null, '$x', null, '$root', null]);
  assert.deepEqual(p.errors, []);
});

test('clear in-room verification events (m.key.verification.*, and requests sent as messages) go to the crypto fields whatever the wanted types', () => {
  const ev = (n: number, type: string, content: string) => `{"type":"${type}","event_id":"$n${n}","sender":"@a:x","origin_server_ts":${n},"content":${content}}`;
  const text = `{"next_batch":"s2","rooms":{"join":{"!r:x":{"timeline":{"events":[${[
    ev(0, 'm.room.message', '{"msgtype":"m.key.verification.request","to":"@bot:localhost","from_device":"D","methods":["m.sas.v1"],"body":"b"}'),
    ev(1, 'm.room.message', '{"msgtype":"m.text","body":"m.key.verification.request"}'),
    ev(2, 'm.key.verification.ready', '{"from_device":"D","methods":["m.sas.v1"],"m.relates_to":{"rel_type":"m.reference","event_id":"$n0"}}'),
    ev(3, 'm.room.message', '{"msgtype":"m.key.verification.request","msgtype":"m.text","body":"last wins"}'),
    ev(4, 'm.room.encrypted', '{"algorithm":"m.megolm.v1.aes-sha2","ciphertext":"x"}'),
  ].join(',')}]}}}}}`;
  const p = processSync(text, { wantedTypes: new Set(['m.room.message']), ownUserId: '@bot:localhost' });
  assert.deepEqual(p.crypto.verification.map((v) => [v.roomId, v.event.event_id, v.event.type]), [
    ['!r:x', '$n0', 'm.room.message'],
    ['!r:x', '$n2', 'm.key.verification.ready'],
  ]);
  assert.deepEqual(p.cols.eventId, ['$n0', '$n1', '$n3'], 'handlers still get the messages they want, and only those');
  assert.deepEqual(p.errors, []);
});

test('structural names read as JSON.parse reads them, escaped or not; empty parts, compact or spaced, read as empty; a full part is still read', () => {
  const msg = { type: 'm.room.message', event_id: '$m', sender: '@a:x', origin_server_ts: 1, content: { body: 'hi' } };
  const receipt = { type: 'm.receipt', content: { $m: { 'm.read': { '@b:x': { ts: 2 } } } } };
  const plain = JSON.stringify({
    next_batch: 's1',
    rooms: {
      join: {
        '!a:x': { timeline: { events: [msg] }, state: { events: [] }, account_data: { events: [] }, ephemeral: { events: [] }, summary: {} },
        '!b:x': { timeline: { events: [{ ...msg, event_id: '$n' }] }, ephemeral: { events: [receipt] }, summary: { 'm.joined_member_count': 2 } },
      },
    },
  });
  // The same body with escaped structural names and spaced empty parts.
  const odd = plain
    .replace('"join"', '"j\\u006fin"')
    .replace('"timeline"', '"timelin\\u0065"')
    .replace('"events":[]},"account_data"', '"events" : [ ] },"account_data"')
    .replace('"summary":{}', '"summary": { }');
  assert.notEqual(odd, plain);
  for (const text of [plain, odd]) {
    const p = processSync(text, { wantedTypes: null });
    assert.deepEqual(p.cols.eventId, ['$m', '$n'], text);
    assert.deepEqual(p.rooms, ['!a:x', '!b:x']);
    assert.deepEqual(p.receipts.map((r) => [r.roomId, r.eventId, r.userId]), [['!b:x', '$m', '@b:x']]);
    assert.deepEqual(p.state.rooms.map((r) => [r.roomId, r.summary]), [['!b:x', { 'm.joined_member_count': 2 }]]);
    assert.deepEqual(p.errors, []);
  }
});
