/**
 * The message objects handlers receive, over real batches (sync bodies through the sync actor's processor and
 * {@link BatchReader}, as main reads them): reply fallbacks stripped from what is read but kept in `content`;
 * fields computed lazily, so an event nobody reads is never parsed.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Membership, MessageContent } from '../../src/index.ts';
import { BatchReader, MemberEvent, Message, Room, type ContentInput, type MessageOptions, type RoomActions } from '../../src/events.ts';
import { OFF, type WireBatch } from '../../src/protocol.ts';
import { processSync } from '../../src/sync/process.ts';
import { MIN_WASM_BODY } from '../../src/sync/scan.ts';

/** A reader that counts how often an event is parsed. */
class CountingReader extends BatchReader {
  parses = 0;
  override parse(i: number) {
    this.parses++;
    return super.parse(i);
  }
}

interface Sent {
  content: ContentInput;
  opts: MessageOptions | undefined;
}

/** The messages of a sync body holding `contents` (one event each, sent by @alice:x), with the sends they make. */
function messages(...contents: object[]): { msgs: Message[]; reader: CountingReader; sent: Sent[] } {
  return batch(contents.map((content, n) => ({ type: 'm.room.message', event_id: `$e${n}`, sender: '@alice:x', origin_server_ts: n, content })));
}

/** A real batch of `events` in room !r:x, read as main reads it, with one Message per event. */
function batch(events: object[]): { msgs: Message[]; reader: CountingReader; sent: Sent[] } {
  const body = Buffer.from(JSON.stringify({ next_batch: 's', rooms: { join: { '!r:x': { timeline: { events } } } } }), 'utf8');
  const p = processSync(body, { wantedTypes: null });
  const reader = new CountingReader({ body, events: p.events } as unknown as WireBatch);
  const sent: Sent[] = [];
  const actions = {
    sendMessage: async (_roomId: string, content: ContentInput, opts?: MessageOptions) => {
      sent.push({ content, opts });
      return '$sent';
    },
  } as unknown as RoomActions;
  const room = new Room('!r:x', new Map(), actions);
  return { msgs: events.map((_, i) => new Message(reader, i, room, actions)), reader, sent };
}

const replyTo = (id = '$orig') => ({ 'm.relates_to': { 'm.in_reply_to': { event_id: id } } });

test('reply fallbacks: body and formattedBody of a reply drop them; content and raw keep them', () => {
  const body = '> <@bob:x> the original\n> second line of it\n\nmy answer\n> a quote of my own';
  const formatted =
    '<mx-reply><blockquote><a href="https://matrix.to/#/!r:x/$orig">In reply to</a> <a href="https://matrix.to/#/@bob:x">@bob:x</a><br>the original</blockquote></mx-reply><b>my</b> answer';
  const [m] = messages({ msgtype: 'm.text', body, format: 'org.matrix.custom.html', formatted_body: formatted, ...replyTo() }).msgs;
  assert.equal(m!.inReplyTo, '$orig');
  assert.equal(m!.body, 'my answer\n> a quote of my own');
  assert.equal(m!.formattedBody, '<b>my</b> answer');
  assert.equal(m!.content.body, body, 'content is what was sent');
  assert.equal(m!.content.formatted_body, formatted);
  assert.equal((m!.raw.content as { body: string }).body, body);
});

test('reply fallbacks: only a leading run of "> " lines ended by a blank line, and only in replies', () => {
  const cases: Array<[object, string]> = [
    [{ body: '> quoted\n\nnot a reply' }, '> quoted\n\nnot a reply'],
    [{ body: 'no fallback', ...replyTo() }, 'no fallback'],
    [{ body: '> my own quote\nmy answer', ...replyTo() }, '> my own quote\nmy answer'],
    [{ body: '> only quote lines', ...replyTo() }, '> only quote lines'],
    [{ body: '>no space\n\nanswer', ...replyTo() }, '>no space\n\nanswer'],
    [{ body: '> a\n> b\n\n', ...replyTo() }, ''],
    [{ body: '> a\r\n\r\nanswer', ...replyTo() }, 'answer'],
    [{ body: 'x', 'm.relates_to': { 'm.in_reply_to': { event_id: 5 } } }, 'x'],
    [{ body: 42, ...replyTo() }, ''],
  ];
  const { msgs } = messages(...cases.map(([c]) => ({ msgtype: 'm.text', ...c })));
  cases.forEach(([c, want], i) => assert.equal(msgs[i]!.body, want, JSON.stringify(c)));
});

test('formattedBody: sanitised HTML of org.matrix.custom.html messages, mx-reply removed; null otherwise', () => {
  const { msgs } = messages(
    { msgtype: 'm.text', body: 'x', format: 'org.matrix.custom.html', formatted_body: '<p onclick="x()">hi<script>evil()</script></p>' },
    { msgtype: 'm.text', body: 'x', format: 'org.matrix.custom.html', formatted_body: '<mx-reply>old</mx-reply>not a reply' },
    { msgtype: 'm.text', body: 'x', formatted_body: '<b>no format</b>' },
    { msgtype: 'm.text', body: 'x', format: 'org.matrix.custom.html', formatted_body: 7 },
    { msgtype: 'm.text', body: 'x' },
  );
  assert.deepEqual(msgs.map((m) => m.formattedBody), ['<p>hi</p>', 'not a reply', null, null, null]);
});

test('lazy: an event nobody reads is never parsed; reading fields parses it once', () => {
  const { msgs, reader } = messages({ msgtype: 'm.text', body: '> q\n\nanswer', format: 'org.matrix.custom.html', formatted_body: '<b>b</b>', ...replyTo() }, { msgtype: 'm.text', body: 'other' });
  assert.equal(reader.parses, 0);
  const m = msgs[0]!;
  assert.equal(m.eventId, '$e0');
  assert.equal(m.sender, '@alice:x');
  assert.equal(reader.parses, 0, 'event ID and sender come from the columns');
  for (let k = 0; k < 3; k++) {
    assert.equal(m.body, 'answer');
    assert.equal(m.formattedBody, '<b>b</b>');
  }
  assert.equal(reader.parses, 1);
});

test('event IDs and senders: from the ID columns when the sync actor saw them all ASCII (escaped ones from the body), else and without the columns from the body as UTF-8', () => {
  const cases: Array<{ ids: string[]; senders: string[]; ascii: boolean; escape?: Record<string, string> }> = [
    { ids: ['$a', '$b'], senders: ['@alice:x', '@bob:x'], ascii: true },
    { ids: ['$a', '$b'], senders: ['@alice:x', '@zoë:x'], ascii: false },
    { ids: ['$a', '$é'], senders: ['@alice:x', '@bob:x'], ascii: false },
    // Escaped tokens (ASCII bytes, one of them standing for a non-ASCII character): their raw bytes are gathered
    // too, and the reader decodes them from the body with their escapes.
    { ids: ['$ab', '$c"d'], senders: ['@zoë:x', '@bob:x'], ascii: true, escape: { '"$ab"': '"$\\u0061b"', '"@zoë:x"': '"@zo\\u00eb:x"' } },
    { ids: ['$a'.repeat(30), '$b'], senders: ['@alice:x', '@bob:x'], ascii: true },
  ];
  // Below MIN_WASM_BODY bytes the JS reader reads the events; padded past it, the WebAssembly one.
  for (const pad of [0, MIN_WASM_BODY]) {
    for (const { ids, senders, ascii, escape } of cases) {
      const events = ids.map((id, n) => ({ type: 'm.room.message', event_id: id, sender: senders[n], origin_server_ts: n, content: { msgtype: 'm.text', body: 'ü' } }));
      let json = JSON.stringify({ next_batch: 's', rooms: { join: { '!r:x': { timeline: { events } } } } });
      for (const [plain, escaped] of Object.entries(escape ?? {})) json = json.replace(plain, escaped);
      const body = Buffer.from(' '.repeat(pad) + json, 'utf8');
      const p = processSync(body, { wantedTypes: null });
      assert.equal(p.events.ids !== undefined && p.events.idAt !== undefined, ascii, `${pad}: ${senders} ${ids}`);
      // A batch journaled by a version without ID columns has none (and the journal gathers them again on load).
      for (const columns of [p.events, { ...p.events, ids: undefined, idAt: undefined }]) {
        const reader = new BatchReader({ body, events: columns } as unknown as WireBatch);
        assert.deepEqual([0, 1].map((i) => reader.str(i, OFF.sender)), senders);
        assert.deepEqual([0, 1].map((i) => reader.str(i, OFF.eventId)), ids);
        assert.equal(reader.str(0, OFF.stateKey), null);
      }
    }
  }
});

test('notices: isNotice, and reply()/replyInThread() on one reject (the spec: never answer m.notice automatically) unless forced', async () => {
  const { msgs, sent } = messages({ msgtype: 'm.notice', body: 'build passed' }, { msgtype: 'm.text', body: 'hello' }, { body: 'no msgtype' });
  const [notice, text, bare] = msgs as [Message, Message, Message];
  assert.deepEqual([notice.isNotice, text.isNotice, bare.isNotice], [true, false, false]);

  for (const call of [() => notice.reply('thanks'), () => notice.replyInThread('thanks', { mentions: [] })]) {
    const p = call(); // a rejection, not a throw: handlers await it like any other send
    await assert.rejects(p, (e: { code?: string; message: string; eventId?: string }) => {
      assert.equal(e.code, 'HALCYON_INVALID_ARGUMENT');
      assert.match(e.message, /m\.notice/);
      assert.match(e.message, /force: true/);
      assert.equal(e.eventId, '$e0');
      return true;
    });
  }
  assert.equal(sent.length, 0, 'nothing was sent');

  assert.equal(await notice.reply('on purpose', { force: true }), '$sent');
  assert.equal(await notice.replyInThread('on purpose too', { force: true }), '$sent');
  assert.equal(await text.reply('hi'), '$sent');
  assert.deepEqual(sent.map((s) => s.content), ['on purpose', 'on purpose too', 'hi']);
  assert.deepEqual(sent[0]!.opts, { mentions: ['@alice:x'], threadId: undefined, replyTo: '$e0' }, 'force is not passed on to the send');
  assert.deepEqual(sent[1]!.opts, { mentions: ['@alice:x'], threadId: '$e0', replyTo: '$e0' });
});

test('mentionedUserIds: m.mentions merged with the users linked in the HTML (matrix.to and matrix: links), validated, deduplicated', () => {
  const pill = (href: string, text = 'x') => `<a href="${href}">${text}</a>`;
  const formatted = [
    '<mx-reply><blockquote>', pill('https://matrix.to/#/@quoted:x'), '</blockquote></mx-reply>',
    pill('https://matrix.to/#/@carol:example.org', 'Carol'),
    pill('https://matrix.to/#/%40dave%3Aexample.org?via=example.org', 'Dave'),
    pill('HTTPS://MATRIX.TO/#/@gina:[::1]:8448'),
    pill('matrix:u/erin:example.org?action=chat', 'Erin'),
    pill('matrix://example.org/u/frank%2Fx:example.org'),
    pill('https://matrix.to/#/@bob:x'),
    // Not users, not matrix.to, malformed, or not valid user IDs: ignored.
    pill('https://matrix.to/#/#room:example.org'), pill('https://matrix.to/#/!room:x/$ev'), pill('matrix:r/room:example.org'),
    pill('https://example.org/#/@evil:x'), pill('https://matrix.to.evil.example/#/@evil:x'), pill('https://matrix.to/#/@nosever'),
    pill('https://matrix.to/#/%E0%A4%A'), pill('https://matrix.to/#/@sp ace:x'), pill('matrix:u/'), pill('https://matrix.to/#/@a:b:c:d'),
    pill(`https://matrix.to/#/@${'a'.repeat(300)}:x`), '<a>no href</a>', '<script><a href="https://matrix.to/#/@hidden:x">h</a></script>',
  ].join(' ');
  const { msgs, reader } = messages(
    { msgtype: 'm.text', body: 'Carol Dave Erin', format: 'org.matrix.custom.html', formatted_body: formatted, 'm.mentions': { user_ids: ['@bob:x', 'not-a-user', 5, '@bob:x', '@henry:example.org'] } },
    { msgtype: 'm.text', body: 'plain', formatted_body: pill('https://matrix.to/#/@nope:x'), 'm.mentions': { user_ids: ['@bob:x'] } },
    { msgtype: 'm.text', body: 'no mentions at all' },
  );
  const m = msgs[0]!;
  assert.deepEqual(m.mentionedUserIds, ['@bob:x', '@henry:example.org', '@carol:example.org', '@dave:example.org', '@gina:[::1]:8448', '@erin:example.org', '@frank/x:example.org']);
  assert.deepEqual(m.mentions, ['@bob:x', 'not-a-user', '@bob:x', '@henry:example.org'], 'mentions stays m.mentions as sent');
  assert.equal(m.mentionedUserIds, m.mentionedUserIds, 'computed once');
  assert.deepEqual(msgs[1]!.mentionedUserIds, ['@bob:x'], 'links count only in org.matrix.custom.html');
  assert.deepEqual(msgs[2]!.mentionedUserIds, []);
  assert.equal(reader.parses, 3);
});

test('typed content: MessageContent narrows on msgtype (image info, location, text), extra keys stay readable', () => {
  const { msgs } = messages(
    { msgtype: 'm.image', body: 'cat.jpg', url: 'mxc://x/cat', info: { w: 640, h: 480, mimetype: 'image/jpeg', size: 1234 }, 'org.example': 1 },
    { msgtype: 'm.location', body: 'here', geo_uri: 'geo:51.5,-0.1' },
    { msgtype: 'm.text', body: 'hi', format: 'org.matrix.custom.html', formatted_body: '<b>hi</b>' },
  );
  const seen: string[] = [];
  for (const m of msgs) {
    const c: MessageContent = m.content;
    switch (c.msgtype) {
      case 'm.image': {
        const size: [number | undefined, number | undefined, string | undefined, number | undefined] = [c.info?.w, c.info?.h, c.info?.mimetype, c.info?.size];
        seen.push(`image ${size.join(' ')} ${c.url} ${String(c['org.example'])}`);
        break;
      }
      case 'm.location':
        seen.push(`location ${c.geo_uri}`);
        break;
      case 'm.text':
        seen.push(`text ${c.body} ${c.formatted_body}`);
        break;
    }
  }
  assert.deepEqual(seen, ['image 640 480 image/jpeg 1234 mxc://x/cat 1', 'location geo:51.5,-0.1', 'text hi <b>hi</b>']);
  const record: Record<string, unknown> = msgs[0]!.content; // still assignable where a plain record is expected
  assert.equal(record.body, 'cat.jpg');
});

test('MemberEvent.membership and previousMembership are the spec\'s five values, or ""/null when the event says something else', () => {
  const member = (membership: unknown, prev?: unknown) => ({
    type: 'm.room.member', event_id: `$m${String(membership)}`, sender: '@alice:x', origin_server_ts: 1, state_key: '@alice:x',
    content: { membership }, ...(prev === undefined ? {} : { unsigned: { prev_content: { membership: prev } } }),
  });
  const { reader } = batch([member('join', 'invite'), member('knock'), member('joined', 'bogus'), member(5)]);
  const room = new Room('!r:x', new Map(), {} as RoomActions);
  const evs = [0, 1, 2, 3].map((i) => new MemberEvent(reader, i, room, {} as RoomActions));
  const ms: Array<Membership | ''> = evs.map((e) => e.membership);
  const prev: Array<Membership | null> = evs.map((e) => e.previousMembership);
  assert.deepEqual(ms, ['join', 'knock', '', '']);
  assert.deepEqual(prev, ['invite', null, null, null]);
});
