/**
 * HTML in message bodies (`format: org.matrix.custom.html`): an allowlist sanitiser and a plain-text fallback.
 * The only module that imports `htmlparser2`.
 *
 * Source: Client-Server API, "m.room.message msgtypes" (https://spec.matrix.org/latest/client-server-api/#mroommessage-msgtypes),
 * followed exactly: the "strongly suggested" tags and nothing else (not `font`, deprecated in v1.10 in favour of
 * `span`), only the attributes the spec's table permits per tag, `a href` only an absolute URL of one of its five
 * schemes, `img src` only `mxc://`, `code class` only `language-*` classes, at most 100 levels of nesting, and
 * (since v1.13) `mx-reply` stripped with its content. The spec's `rel="noopener"` is for web clients rendering
 * links, not for what is sent (`rel` is not a permitted attribute), so it is not added.
 */
import type { Parser } from 'htmlparser2';
import { lazyModule } from './lazy-require.ts';

/** htmlparser2's parser, loaded when HTML is first parsed (a bot that never reads or sends HTML never loads it). */
const htmlparser2 = lazyModule<typeof import('htmlparser2')>('htmlparser2');
const parserClass = (): typeof Parser => htmlparser2().Parser;

/** Tags kept by {@link sanitizeHtml}: the spec's suggested set. */
const ALLOWED_TAGS = new Set([
  'del', 'h1', 'h2', 'h3', 'h4', 'h5', 'h6', 'blockquote', 'p', 'a', 'ul', 'ol', 'sup', 'sub', 'li', 'b', 'i',
  'u', 'strong', 'em', 's', 'code', 'hr', 'br', 'div', 'table', 'thead', 'tbody', 'tr', 'th', 'td', 'caption', 'pre',
  'span', 'img', 'details', 'summary',
]);

/** Void elements among the allowed tags: written self-closed, never given a closing tag. */
const VOID_TAGS = new Set(['br', 'hr', 'img']);

/**
 * Dropped together with everything inside them: code, embedded documents, form widgets, foreign content, and the
 * reply fallback (`mx-reply`). Everything else outside the allowlist is unwrapped (its children are kept).
 */
const DROP_WITH_CONTENT = new Set([
  'mx-reply', 'script', 'style', 'template', 'noscript', 'iframe', 'frame', 'frameset', 'noframes', 'object', 'embed',
  'applet', 'noembed', 'head', 'title', 'textarea', 'select', 'option', 'optgroup', 'datalist', 'button', 'svg', 'math',
  'canvas', 'audio', 'video', 'xmp', 'plaintext',
]);

/** `a href` schemes: the spec's list. (`matrix:` URIs are not on it; mentions link `https://matrix.to/#/…`.) */
const LINK_SCHEMES = new Set(['https', 'http', 'ftp', 'mailto', 'magnet']);

/** The deepest nesting of kept elements (spec: "Tags must not be nested more than 100 levels deep"). */
export const MAX_HTML_DEPTH = 100;

const HEX_COLOR = /^#[0-9a-fA-F]{6}$/;

type AttrRule = (value: string) => string | null;
const free: AttrRule = (v) => v;
const color: AttrRule = (v) => (HEX_COLOR.test(v.trim()) ? v.trim() : null);
// Every regex here runs on attacker-controlled values, so each is anchored and unambiguous (no two ways to match
// the same text, nothing a failed match retries at each position): linear time. Values are trimmed before testing.
const integer: AttrRule = (v) => (/^-?\d{1,9}$/.test(v.trim()) ? String(Number(v.trim())) : null);
const size: AttrRule = (v) => (/^\d{1,5}$/.test(v.trim()) ? String(Number(v.trim())) : null);

/**
 * `s` without leading and trailing C0 controls and spaces (U+0000 to U+0020), as the URL parser strips them.
 * A loop, not `/^[\0- ]+|[\0- ]+$/g`: that regex retries the trailing run from each of its characters (quadratic).
 */
function trimC0(s: string): string {
  let start = 0;
  let end = s.length;
  while (start < end && s.charCodeAt(start) <= 0x20) start++;
  while (end > start && s.charCodeAt(end - 1) <= 0x20) end--;
  return s.slice(start, end);
}

function href(v: string): string | null {
  // Browsers drop ASCII tab/newline anywhere in a URL and trim C0 controls and spaces: judge what they would load.
  const url = trimC0(v.replace(/[\t\n\r]/g, ''));
  const m = /^([a-zA-Z][a-zA-Z0-9+.-]*):/.exec(url);
  return m && LINK_SCHEMES.has(m[1]!.toLowerCase()) ? url : null;
}

function mxc(v: string): string | null {
  const url = v.trim();
  return /^mxc:\/\/[^\s/?#]+\/[A-Za-z0-9_-]+$/.test(url) ? url : null;
}

function codeClass(v: string): string | null {
  // The spec: "only classes which start with `language-`" (the prefix alone names nothing).
  const kept = v.split(/\s+/).filter((c) => c.length > 'language-'.length && c.startsWith('language-'));
  return kept.length ? kept.join(' ') : null;
}

/**
 * Per tag, the attributes the spec permits and how each value is checked (a `null` result drops the attribute):
 * the spec gives colours as `#rrggbb`; sizes and `ol start` must be integers here so that no value is passed on
 * that a client could misread.
 */
const ALLOWED_ATTRS: Record<string, Record<string, AttrRule>> = {
  span: { 'data-mx-bg-color': color, 'data-mx-color': color, 'data-mx-spoiler': free, 'data-mx-maths': free },
  a: { target: free, href },
  img: { width: size, height: size, alt: free, title: free, src: mxc },
  ol: { start: integer },
  code: { class: codeClass },
  div: { 'data-mx-maths': free },
};

function escapeText(s: string): string {
  return s.replace(/[&<>]/g, (c) => (c === '&' ? '&amp;' : c === '<' ? '&lt;' : '&gt;'));
}

function escapeAttr(s: string): string {
  return s.replace(/[&<>"]/g, (c) => (c === '&' ? '&amp;' : c === '<' ? '&lt;' : c === '>' ? '&gt;' : '&quot;'));
}

function attributes(tag: string, attribs: Record<string, string>): string | null {
  const rules = ALLOWED_ATTRS[tag];
  let out = '';
  if (rules) {
    for (const [name, rule] of Object.entries(rules)) {
      if (!Object.hasOwn(attribs, name)) continue;
      const value = rule(attribs[name]!);
      if (value !== null) out += ` ${name}="${escapeAttr(value)}"`;
    }
  }
  if (tag === 'img' && !out.includes(' src="')) return null; // an image that is not mxc:// shows nothing: drop it
  return out;
}

/** One element the parser has opened: whether it was written out, and whether its content is being dropped. */
interface Open {
  name: string;
  emitted: boolean;
  dropping: boolean;
}

/**
 * Reduces untrusted HTML to the Matrix spec's suggested subset, for sending or for display.
 * - Kept: the spec's suggested tags, with only the attributes it permits on each; `a href` only absolute
 *   `https`/`http`/`ftp`/`mailto`/`magnet` URLs; `img` only with an `mxc://` `src` (otherwise dropped);
 *   `code class` only `language-*` classes; colours only `#rrggbb`; sizes and `ol start` only integers.
 * - Dropped with their content: `mx-reply`, `script`, `style`, `iframe`, `object`, `svg`, form widgets and the like;
 *   comments, doctypes and processing instructions.
 * - Unwrapped (tag gone, children kept): every other tag (`font` among them: the spec deprecated it for `span`),
 *   and allowed tags nested deeper than 100 levels.
 * Invariants: the output is well-formed — every written tag is closed in order, `br`/`hr`/`img` are written
 * self-closed, text and attribute values are escaped — and no event-handler attribute, `style`, or script URL survives.
 */
export function sanitizeHtml(html: string): string {
  let out = '';
  const stack: Open[] = [];
  let depth = 0; // emitted, non-void elements currently open
  const dropping = () => stack.length > 0 && stack[stack.length - 1]!.dropping;
  const parser = new (parserClass())(
    {
      onopentag(name, attribs) {
        if (dropping() || DROP_WITH_CONTENT.has(name)) {
          stack.push({ name, emitted: false, dropping: true });
          return;
        }
        const isVoid = VOID_TAGS.has(name);
        let emitted = false;
        if (ALLOWED_TAGS.has(name) && depth < MAX_HTML_DEPTH) {
          const attrs = attributes(name, attribs);
          if (attrs !== null) {
            out += isVoid ? `<${name}${attrs}/>` : `<${name}${attrs}>`;
            emitted = !isVoid;
            if (emitted) depth++;
          }
        }
        stack.push({ name, emitted, dropping: false });
      },
      ontext(text) {
        if (!dropping()) out += escapeText(text);
      },
      onclosetag(name) {
        // The parser can close a tag it never reported open (an unterminated `<a` at the end): ignore those.
        if (stack.length === 0 || stack[stack.length - 1]!.name !== name) return;
        const top = stack.pop()!;
        if (top.emitted) {
          out += `</${name}>`;
          depth--;
        }
      },
    },
    { decodeEntities: true, lowerCaseTags: true, lowerCaseAttributeNames: true },
  );
  parser.write(html);
  parser.end();
  for (let i = stack.length - 1; i >= 0; i--) if (stack[i]!.emitted) out += `</${stack[i]!.name}>`;
  return out;
}

/**
 * The `href` of every `a` element of `html` that a reader would see: links inside content {@link sanitizeHtml}
 * drops (the `mx-reply` fallback, scripts and the like) are left out. Entities are decoded; the values are
 * otherwise as written (not checked against the allowed schemes). For finding mentions (`matrix.to` pills).
 */
export function linkHrefs(html: string): string[] {
  const hrefs: string[] = [];
  const stack: { name: string; dropping: boolean }[] = [];
  const dropping = () => stack.length > 0 && stack[stack.length - 1]!.dropping;
  const parser = new (parserClass())(
    {
      onopentag(name, attribs) {
        const drop = dropping() || DROP_WITH_CONTENT.has(name);
        stack.push({ name, dropping: drop });
        if (!drop && name === 'a' && typeof attribs.href === 'string') hrefs.push(attribs.href);
      },
      onclosetag(name) {
        // The parser can close a tag it never reported open: only a close matching the innermost open counts.
        if (stack.length > 0 && stack[stack.length - 1]!.name === name) stack.pop();
      },
    },
    { decodeEntities: true, lowerCaseTags: true, lowerCaseAttributeNames: true },
  );
  parser.write(html);
  parser.end();
  return hrefs;
}

const ENTITIES: Record<string, string> = { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'", nbsp: ' ' };

function decodeEntities(s: string): string {
  return s.replace(/&(#x[0-9a-f]+|#\d+|[a-z]+);/gi, (m, e: string) => {
    if (e[0] === '#') {
      const cp = e[1] === 'x' || e[1] === 'X' ? parseInt(e.slice(2), 16) : parseInt(e.slice(1), 10);
      return cp > 0 && cp <= 0x10ffff ? String.fromCodePoint(cp) : m;
    }
    return ENTITIES[e.toLowerCase()] ?? m;
  });
}

const BLOCK_END = new Set(['p', 'div', 'h1', 'h2', 'h3', 'h4', 'h5', 'h6', 'blockquote', 'pre', 'ul', 'ol', 'tr', 'caption', 'summary', 'details']);
const TEXT_DROP = new Set(['script', 'style', 'mx-reply']);

/**
 * Turns an HTML fragment into readable plain text: block ends (paragraphs, headings, quotes, lists, table rows,
 * `summary`/`details`) become newlines, `<br>`/`<hr>` a newline, list items `- ` lines, table cells tab-separated
 * (the spec's suggested fallback), other tags go, entities decode. Script, style and reply-fallback (`mx-reply`)
 * content is dropped.
 * Invariants: tags are found by a real HTML tokenizer (a `>` inside an attribute or a comment does not leak text);
 * no more than one blank line in a row; trimmed; unknown entities are left as written.
 */
export function htmlToText(html: string): string {
  let out = '';
  let pending = ''; // raw text since the last tag: entities are decoded once it is whole
  const stack: { name: string; dropping: boolean }[] = [];
  let cells = 0; // cells seen in the current table row: the second and later are tab-separated
  const dropping = () => stack.length > 0 && stack[stack.length - 1]!.dropping;
  const flush = () => {
    out += decodeEntities(pending);
    pending = '';
  };
  const parser = new (parserClass())(
    {
      onopentag(name) {
        flush();
        const drop = dropping() || TEXT_DROP.has(name);
        stack.push({ name, dropping: drop });
        if (drop) return;
        if (name === 'br' || name === 'hr') out += '\n';
        else if (name === 'li') out += '\n- ';
        else if (name === 'tr') cells = 0;
        else if ((name === 'td' || name === 'th') && cells++ > 0) out += '\t';
      },
      ontext(text) {
        if (!dropping()) pending += text;
      },
      onclosetag(name) {
        flush();
        if (stack.length === 0 || stack[stack.length - 1]!.name !== name) return; // closed but never reported open
        if (!stack.pop()!.dropping && BLOCK_END.has(name)) out += '\n';
      },
    },
    { decodeEntities: false, lowerCaseTags: true },
  );
  parser.write(html);
  parser.end();
  flush();
  return out.replace(/\n{3,}/g, '\n\n').trim();
}
