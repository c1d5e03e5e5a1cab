/**
 * HTML sanitising against the spec's "m.room.message msgtypes" section
 * (https://spec.matrix.org/latest/client-server-api/#mroommessage-msgtypes): suggested tags (without `font`,
 * deprecated in v1.10), per-tag attributes, `a href` schemes (exactly https, http, ftp, mailto, magnet), `img src`
 * mxc-only, `code class` only `language-*`, 100-level nesting limit, `mx-reply` stripped (changed in v1.13).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { spawn } from 'node:child_process';
import { MAX_HTML_DEPTH, htmlToText, sanitizeHtml } from '../../src/html.ts';

const VOID = new Set(['br', 'hr', 'img']);
const TAGS = new Set([
  'del', 'h1', 'h2', 'h3', 'h4', 'h5', 'h6', 'blockquote', 'p', 'a', 'ul', 'ol', 'sup', 'sub', 'li', 'b', 'i',
  'u', 'strong', 'em', 's', 'code', 'hr', 'br', 'div', 'table', 'thead', 'tbody', 'tr', 'th', 'td', 'caption', 'pre',
  'span', 'img', 'details', 'summary',
]);
const ATTRS: Record<string, string[]> = {
  span: ['data-mx-bg-color', 'data-mx-color', 'data-mx-spoiler', 'data-mx-maths'],
  a: ['target', 'href'],
  img: ['width', 'height', 'alt', 'title', 'src'],
  ol: ['start'],
  code: ['class'],
  div: ['data-mx-maths'],
};

/**
 * Checks the sanitiser's output contract with a strict tokenizer of its own: every `<` starts an allowlisted tag whose
 * attributes are allowlisted and double-quoted with no raw `<`/`>`/`"` inside, tags nest and close in order, void
 * tags are self-closed and never closed, no `>` or bare `&` in text. Returns the maximum nesting depth.
 */
function assertWellFormed(html: string): number {
  const stack: string[] = [];
  let max = 0;
  const re = /<(\/?)([a-z0-9-]+)((?: [a-z-]+="[^"<>]*")*)(\/?)>|([^<]+)|(<)/g;
  for (const m of html.matchAll(re)) {
    const [, close, name, attrs, selfClose, text, bare] = m;
    if (bare) assert.fail(`bare "<" at ${m.index} in ${html}`);
    if (text !== undefined) {
      assert.doesNotMatch(text, />/, `raw ">" in text: ${html}`);
      assert.doesNotMatch(text, /&(?!(amp|lt|gt|quot);)/, `bare "&" in text: ${html}`);
      continue;
    }
    assert.ok(TAGS.has(name!), `tag <${name}> is not allowlisted: ${html}`);
    for (const a of attrs!.matchAll(/ ([a-z-]+)="([^"]*)"/g)) {
      assert.ok((ATTRS[name!] ?? []).includes(a[1]!), `attribute ${a[1]} on <${name}>: ${html}`);
      assert.doesNotMatch(a[2]!, /&(?!(amp|lt|gt|quot);)/, `bare "&" in attribute: ${html}`);
    }
    if (VOID.has(name!)) {
      assert.ok(!close && selfClose, `void <${name}> must be written self-closed: ${html}`);
      max = Math.max(max, stack.length + 1);
    } else if (close) {
      assert.equal(stack.pop(), name, `</${name}> out of order: ${html}`);
    } else {
      assert.ok(!selfClose, `non-void <${name}/>: ${html}`);
      stack.push(name!);
      max = Math.max(max, stack.length);
    }
  }
  assert.deepEqual(stack, [], `unclosed tags: ${html}`);
  return max;
}

function clean(html: string): string {
  const out = sanitizeHtml(html);
  assertWellFormed(out);
  return out;
}

test('allowlist: every suggested tag survives with its permitted attributes', () => {
  const html =
    '<h1>a</h1><h2>b</h2><h3>c</h3><h4>d</h4><h5>e</h5><h6>f</h6>' +
    '<p><b>b</b><i>i</i><u>u</u><strong>s</strong><em>e</em><s>s</s><del>d</del><sup>1</sup><sub>2</sub><code class="language-ts">x</code></p>' +
    '<blockquote><p>q</p></blockquote><ul><li>one</li></ul><ol start="4"><li>four</li></ol>' +
    '<pre><code>pre</code></pre><hr/><br/><div data-mx-maths="x^2">x²</div>' +
    '<table><caption>cap</caption><thead><tr><th>h</th></tr></thead><tbody><tr><td>d</td></tr></tbody></table>' +
    '<details><summary>more</summary>hidden</details>' +
    '<span data-mx-bg-color="#000000" data-mx-color="#FFffFF" data-mx-spoiler="why" data-mx-maths="\\pi">s</span>' +
    '<a target="_blank" href="https://example.org/x?y=1&amp;z=2">link</a>' +
    '<img width="32" height="16" alt="alt" title="title" src="mxc://example.org/AbC_-09"/>';
  assert.equal(clean(html), html);
});

test('allowlist: attributes outside the per-tag list go, including on allowed tags', () => {
  assert.equal(clean('<p class="x" id="y" style="color:red" align="center">t</p>'), '<p>t</p>');
  assert.equal(clean('<span title="t" data-x="1" data-mx-color="#010203">s</span>'), '<span data-mx-color="#010203">s</span>');
  assert.equal(clean('<ol type="a" reversed start="2"><li value="9">x</li></ol>'), '<ol start="2"><li>x</li></ol>');
  assert.equal(clean('<a href="https://a.example" rel="opener" download ping="https://t">a</a>'), '<a href="https://a.example">a</a>');
  assert.equal(clean('<td colspan="9">c</td>'), '<td>c</td>');
});

test('attribute values are checked: colours #rrggbb, integer sizes and start, language-* classes', () => {
  assert.equal(clean('<span data-mx-color="red" data-mx-bg-color="#12345">x</span>'), '<span>x</span>');
  assert.equal(clean('<span data-mx-color="#12345g">x</span>'), '<span>x</span>');
  assert.equal(clean('<ol start="-2"><li>x</li></ol>'), '<ol start="-2"><li>x</li></ol>');
  assert.equal(clean('<ol start="2x"><li>x</li></ol>'), '<ol><li>x</li></ol>');
  assert.equal(clean('<img src="mxc://s/m" width="100%" height=" 20 ">'), '<img height="20" src="mxc://s/m"/>');
  assert.equal(clean('<code class="language-js hljs evil language-c++">x</code>'), '<code class="language-js language-c++">x</code>');
  assert.equal(clean('<code class="hljs">x</code>'), '<code>x</code>');
  assert.equal(clean('<code class="language-">x</code>'), '<code>x</code>', 'a bare prefix names no language');
  assert.equal(clean('<code class="language-объект language-a&quot;b">x</code>'), '<code class="language-объект language-a&quot;b">x</code>', 'any class starting with language-, escaped');
});

test('font (deprecated since spec v1.10 in favour of span) is unwrapped with its attributes; span takes the colours', () => {
  assert.equal(clean('<font data-mx-bg-color="#123456" data-mx-color="#abcdef" color="#ff0000">f</font>'), 'f');
  assert.equal(clean('<p><font color="blue"><b>x</b></font></p>'), '<p><b>x</b></p>');
  assert.equal(clean('<span data-mx-bg-color="#123456" data-mx-color="#abcdef" color="#ff0000">s</span>'), '<span data-mx-bg-color="#123456" data-mx-color="#abcdef">s</span>');
});

test('disallowed tags are unwrapped: children kept, text escaped', () => {
  assert.equal(clean('<article><b>bold</b> &amp; <marquee>moving</marquee></article>'), '<b>bold</b> &amp; moving');
  assert.equal(clean('<strike>old</strike> <ins>new</ins> <center>c</center>'), 'old new c');
  assert.equal(clean('<custom-el x="1"><i>i</i></custom-el>'), '<i>i</i>');
  assert.equal(clean('<html><body><p>x</p></body></html>'), '<p>x</p>');
  assert.equal(clean('<form action="https://evil"><input value="v">t</form>'), 't');
});

test('script, style, iframe, object, svg, form widgets: removed with their content', () => {
  assert.equal(clean('a<script>alert("<b>x</b>")</script>b'), 'ab');
  assert.equal(clean('a<style>b { color: red }</style>b'), 'ab');
  assert.equal(clean('a<iframe src="https://e">fallback</iframe>b'), 'ab');
  assert.equal(clean('a<object data="x"><embed src="y">fb</object>b'), 'ab');
  assert.equal(clean('a<svg><script>x</script><text>t</text></svg>b<math><mi>x</mi></math>c'), 'abc');
  assert.equal(clean('a<textarea><b>t</b></textarea><select><option>o</option></select>b'), 'ab');
  assert.equal(clean('a<noscript><b>n</b></noscript><template><b>t</b></template>b'), 'ab');
  assert.equal(clean('<SCRIPT>x</SCRIPT>y<b>z<script>unclosed'), 'y<b>z</b>');
});

test('event-handler attributes and script URLs are removed', () => {
  assert.equal(clean('<b onclick="alert(1)" onmouseover=alert(2)>x</b>'), '<b>x</b>');
  assert.equal(clean('<img src="mxc://s/m" onerror="alert(1)">'), '<img src="mxc://s/m"/>');
  for (const href of [
    'javascript:alert(1)', 'JaVaScRiPt:alert(1)', ' javascript:alert(1)', 'java\tscript:alert(1)', 'java&#x0A;script:x',
    '&#106;avascript:x', '&#x6A;avascript:x', 'jav&Tab;ascript:x', '\u0001javascript:x', 'vbscript:x', 'data:text/html,<script>x</script>',
    'file:///etc/passwd', '/relative', '//evil.example', 'relative/path', '#frag', 'https//missing-colon',
    'matrix:u/alice:example.org', 'MATRIX:r/room:example.org', 'sms:+123', 'tel:+123', 'irc://irc.example/x', 'xmpp:a@b.example',
  ]) {
    assert.equal(clean(`<a href="${href.replace(/"/g, '&quot;')}">x</a>`), '<a>x</a>', href);
  }
  for (const href of ['https://e.example/', 'HTTP://e.example/', 'ftp://f.example/x', 'mailto:a@b.example', 'magnet:?xt=urn:btih:abc', 'https://matrix.to/#/@alice:example.org']) {
    assert.equal(clean(`<a href="${href}">x</a>`), `<a href="${href}">x</a>`, href);
  }
  assert.equal(clean('<a href=" https://e.example/a\tb ">x</a>'), '<a href="https://e.example/ab">x</a>', 'normalised as a browser would read it');
});

test('img: only mxc:// sources; any other image is dropped entirely', () => {
  assert.equal(clean('a<img src="http://e.example/i.png" alt="pic">b'), 'ab');
  assert.equal(clean('a<img src="https://e.example/i.png">b'), 'ab');
  assert.equal(clean('a<img alt="no src">b'), 'ab');
  assert.equal(clean('a<img src="data:image/png;base64,AAAA">b'), 'ab');
  assert.equal(clean('a<img src="mxc://e.example/../x">b'), 'ab');
  assert.equal(clean('a<img src="mxc://example.org:8448/media_ID-1" alt="ok">b'), 'a<img alt="ok" src="mxc://example.org:8448/media_ID-1"/>b');
});

test('mx-reply (the retired reply fallback) is removed with its content, wherever it is', () => {
  const reply = '<mx-reply><blockquote><a href="https://matrix.to/#/!r:e/$ev">In reply to</a> <a href="https://matrix.to/#/@u:e">@u:e</a><br>original</blockquote></mx-reply>';
  assert.equal(clean(`${reply}the answer`), 'the answer');
  assert.equal(clean('<p><MX-REPLY>x<b>y</b></MX-REPLY>z</p>'), '<p>z</p>');
  assert.equal(htmlToText(`${reply}the answer`), 'the answer');
});

test('escaping: text and attribute values are re-escaped, entities round-trip', () => {
  assert.equal(clean('a < b > c & d "q" \'s\''), 'a &lt; b &gt; c &amp; d "q" \'s\'');
  assert.equal(clean('&lt;script&gt;alert(1)&lt;/script&gt;'), '&lt;script&gt;alert(1)&lt;/script&gt;');
  assert.equal(clean('&amp;lt; &eacute; &#233; &#x1F600; &nbsp;'), '&amp;lt; é é 😀 \u00a0');
  assert.equal(clean('<span data-mx-spoiler="say &quot;hi&quot; <b> & bye">s</span>'), '<span data-mx-spoiler="say &quot;hi&quot; &lt;b&gt; &amp; bye">s</span>');
  assert.equal(clean('<img src="mxc://s/m" alt=\'"><script>alert(1)</script>\'>'), '<img alt="&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;" src="mxc://s/m"/>');
  for (const text of ['1 < 2 && 3 > 2', 'a &amp; b', '<b>not markup</b>', 'x\ny', '&bogus;']) {
    const escaped = text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
    assert.equal(clean(escaped), escaped, 'already-escaped text is a fixed point');
    assert.equal(htmlToText(clean(escaped)), text, 'and htmlToText recovers the text');
  }
});

test('malformed HTML: unclosed tags are closed, stray "<" and end tags handled, output stays well-formed', () => {
  assert.equal(clean('<p>unclosed <b>bold <i>both'), '<p>unclosed <b>bold <i>both</i></b></p>');
  assert.equal(clean('<b>x</i>y</b></b></em>'), '<b>xy</b>');
  assert.equal(clean('a < b <3 <<>> c'), 'a &lt; b &lt;3 &lt;&lt;&gt;&gt; c');
  assert.equal(clean('x <a href="https://e.example'), 'x ');
  assert.equal(clean('<b>x<b'), '<b>x</b>');
  assert.equal(clean('<ul><li>a<li>b</ul>'), '<ul><li>a</li><li>b</li></ul>');
  assert.equal(clean('<table><tr><td>a<td>b</table>'), '<table><tr><td>a</td><td>b</td></tr></table>');
  assert.equal(clean('<!-- <b>comment</b> --><!doctype html><?xml x?><![CDATA[<i>]]>t'), 't');
  assert.equal(clean('<b/>self-closed non-void'), '<b>self-closed non-void</b>');
  assert.equal(clean('</br></p>'), '<br/><p></p>');
  assert.equal(clean(''), '');
});

test(`nesting deeper than ${MAX_HTML_DEPTH} levels is unwrapped, text kept`, () => {
  const deep = (n: number, tag = 'b') => `${`<${tag}>`.repeat(n)}x${`</${tag}>`.repeat(n)}`;
  assert.equal(assertWellFormed(clean(deep(MAX_HTML_DEPTH))), MAX_HTML_DEPTH);
  const out = clean(deep(150));
  assert.equal(assertWellFormed(out), MAX_HTML_DEPTH);
  assert.equal(out, deep(MAX_HTML_DEPTH));
  assert.equal(assertWellFormed(clean(`${'<div>'.repeat(MAX_HTML_DEPTH)}<br><img src="mxc://s/m">y`)), MAX_HTML_DEPTH, 'void tags count too');
  const huge = clean(`${'<span>'.repeat(10_000)}deep${'<i>'.repeat(10_000)}`);
  assert.equal(htmlToText(huge), 'deep', 'no recursion: very deep input neither throws nor loses the text');
});

test('fuzz: random tag soup always comes out well-formed, allowlisted and free of handlers and script URLs', () => {
  let seed = 0x5eed;
  const rnd = (n: number) => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed % n;
  };
  const pieces = [
    '<b>', '</b>', '<p>', '</p>', '<div>', '</div>', '<a href="javascript:x">', '<a href="https://e">', '</a>', '<li>', '<ul>', '</ul>',
    '<script>', '</script>', '<style>', '</style>', '<mx-reply>', '</mx-reply>', '<img src="http://x" onerror=x>', '<img src="mxc://s/m">',
    '<table>', '<tr>', '<td>', '</table>', '<br>', '<hr/>', '<', '>', '&', '&amp;', '&#0;', '"', "'", '<!--', '-->', 'text', ' ', '\n',
    '<span style="x" onclick="y" data-mx-color="#ffffff">', '</span>', '<svg>', '</svg>', '<x-y z="<b>">', '<code class="language-x y">',
    '</code>', '<pre>', '<textarea>', '</textarea>', '<font color="red" onload=x>', '<ol start=3>', '</ol>', '</', '<a', ' href=', '=',
  ];
  for (let i = 0; i < 2000; i++) {
    let html = '';
    for (let j = rnd(40); j >= 0; j--) html += pieces[rnd(pieces.length)];
    const out = sanitizeHtml(html);
    assertWellFormed(out);
    assert.doesNotMatch(out, /\son[a-z]+=|style=|javascript:|http:\/\/x/i, html);
    assert.doesNotMatch(out, /mx-reply|script|svg|textarea/i, html);
  }
});

test('htmlToText of sanitised output reads naturally', () => {
  const html =
    '<mx-reply><blockquote>quoted</blockquote></mx-reply><h1>Title</h1><p>Hello <b>world</b> &amp; <a href="https://e.example">friends</a>!</p>' +
    '<ul><li>one</li><li>two</li></ul><blockquote>quote</blockquote><pre><code class="language-sh">ls -l &gt; out</code></pre>' +
    '<table><tr><th>k</th><th>v</th></tr><tr><td>a</td><td>1</td></tr></table><details><summary>Spoiler</summary>hidden</details>' +
    '<span data-mx-spoiler>secret</span><script>evil()</script><hr>end';
  assert.equal(
    htmlToText(sanitizeHtml(html)),
    'Title\nHello world & friends!\n\n- one\n- two\nquote\nls -l > out\nk\tv\na\t1\nSpoiler\nhidden\nsecret\nend',
  );
});

test('htmlToText: a real tokenizer, so ">" in attributes or comments does not leak, and unclosed scripts stay hidden', () => {
  assert.equal(htmlToText('<a title="1 > 0" href="x">link</a>'), 'link');
  assert.equal(htmlToText('a<!-- <b> > --> b'), 'a b');
  assert.equal(htmlToText('ok<script>alert(1)'), 'ok');
  assert.equal(htmlToText('a < b > c'), 'a < b > c');
  assert.equal(htmlToText('<p>one<p>two'), 'one\ntwo');
  assert.equal(htmlToText('<p>a</p>\n\n\n\n<p>b</p>'), 'a\n\nb', 'at most one blank line');
  assert.equal(htmlToText('<table><tr><td>a</td><td>b</td></tr><tr><td>c</td></tr></table>after'), 'a\tb\nc\nafter');
});

/**
 * Runs the sanitiser on `html` in a child process. A super-linear regex blocks its thread for minutes, a test's
 * timeout can only fire while the test's own thread is free, and a worker stuck in a regex holds the process open
 * at exit: a child is killed outright when the test times out (`signal`).
 */
function sanitizeInChild(html: string, signal: AbortSignal): Promise<{ out: string; text: string }> {
  const src = `import { sanitizeHtml, htmlToText } from ${JSON.stringify(new URL('../../src/html.ts', import.meta.url).href)};
    let html = ''; process.stdin.setEncoding('utf8').on('data', (d) => (html += d)).on('end', () => {
      const out = sanitizeHtml(html);
      process.stdout.write(JSON.stringify({ out, text: htmlToText(out) }));
    });`;
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', src], { signal, killSignal: 'SIGKILL', stdio: ['pipe', 'pipe', 'inherit'] });
    let out = '';
    p.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    p.on('error', reject);
    p.on('close', (code) => (code === 0 ? resolve(JSON.parse(out) as { out: string; text: string }) : reject(new Error(`sanitiser child exited ${code}`))));
    p.stdin.end(html);
  });
}

test('linear on hostile input: 1 MB of whitespace inside attribute values and text', { timeout: 60_000 }, async (t) => {
  const mb = ' '.repeat(1 << 20);
  // The trailing-trim of href once backtracked over every space at every position: 64 KB took over a second.
  const r = await sanitizeInChild(`<a href="https://e.example/${mb}x">a</a><a href="${mb}https://e.example/${mb}">b</a>`, t.signal);
  assert.equal(r.out, `<a href="https://e.example/${mb}x">a</a><a href="https://e.example/">b</a>`);
  const ws = '\t\n\r'.repeat(1 << 18);
  const others = await sanitizeInChild(
    `<ol start="${mb}1${mb}x"><li>o</li></ol><img src="mxc://s/m" width="${mb}2${mb}x"><code class="${mb}language-x${ws}y${mb}">c</code>` +
      `<span data-mx-color="${mb}#000000${mb}x">s</span>&#x${'0'.repeat(1 << 20)}&${'a'.repeat(1 << 20)}${'\n'.repeat(1 << 20)}end`,
    t.signal,
  );
  assert.equal(others.out.slice(0, 40), '<ol><li>o</li></ol><img src="mxc://s/m"/');
  assert.ok(others.text.endsWith('\n\nend'), 'htmlToText collapses the newlines');
});
