/**
 * The command argument parser (src/toolkit/args.ts): patterns, tokens, typed values, mentions, and properties
 * checked with fast-check on generated input (quoting round-trips, durations add up, any text either parses or
 * fails with HALCYON_INVALID_ARGUMENT, never anything else).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { type ArgsOf, compilePattern, parseArgs, parseDuration, quoteArg, tokenize } from '../../src/toolkit/args.ts';

const parse = (pattern: string, text: string, mentions: Array<{ userId: string; names: string[] }> = []) => parseArgs(compilePattern(pattern), text, mentions);
const invalid = { code: 'HALCYON_INVALID_ARGUMENT' };

test('patterns: command words, then required, optional, typed, choice and rest arguments', () => {
  const p = compilePattern('  Config   set <key> [value:int] ');
  assert.deepEqual(p.path, ['config', 'set']);
  assert.deepEqual(
    p.params.map((x) => [x.name, x.type, x.optional]),
    [
      ['key', 'string', false],
      ['value', 'int', true],
    ],
  );
  assert.equal(p.source, 'Config set <key> [value:int]');
  assert.deepEqual(compilePattern('mode <m:on|off>').params[0]!.choices, ['on', 'off']);
  assert.equal(compilePattern('say <text...>').params[0]!.type, 'rest');
});

test('bad patterns are refused with a message naming the problem', () => {
  for (const [pattern, why] of [
    ['', /command name/],
    ['<user>', /command name/],
    ['ban <user> extra', /comes after an argument/],
    ['ban [a] <b>', /required <b> comes after an optional/],
    ['ban <rest...> <b>', /must come last/],
    ['ban <a> <a>', /two arguments are named a/],
    ['ban <a:colour>', /not an argument type/],
    ['ban <a]', /mixes/],
    ['ban <1a>', /not an argument name/],
  ] as const) {
    assert.throws(() => compilePattern(pattern), (e: Error & { code?: string }) => e.code === 'HALCYON_INVALID_ARGUMENT' && why.test(e.message), pattern);
  }
});

test('typed arguments: user IDs, aliases, rooms, numbers, whole numbers, durations, choices', () => {
  assert.deepEqual(parse('ban <user:userId> [reason...]', '@bob:example.org  being   rude '), { user: '@bob:example.org', reason: 'being   rude' });
  assert.deepEqual(parse('ban <user:userId> [reason...]', '@bob:example.org'), { user: '@bob:example.org' });
  assert.deepEqual(parse('go <r:alias>', '#ops:example.org'), { r: '#ops:example.org' });
  assert.deepEqual(parse('go <r:room>', '!abc:example.org'), { r: '!abc:example.org' });
  assert.deepEqual(parse('n <a:number> <b:int>', '-1.5e2 +7'), { a: -150, b: 7 });
  assert.deepEqual(parse('wait <d:duration>', '1H30m'), { d: 5_400_000 });
  assert.deepEqual(parse('mode <m:on|off>', 'OFF'), { m: 'off' });
  assert.throws(() => parse('ban <user:userId>', 'bob'), invalid);
  assert.throws(() => parse('go <r:alias>', '!abc:example.org'), invalid);
  assert.throws(() => parse('n <b:int>', '1.5'), invalid);
  assert.throws(() => parse('n <b:int>', '99999999999999999999'), /whole number/);
  assert.throws(() => parse('n <a:number>', 'Infinity'), /a number/);
  assert.throws(() => parse('wait <d:duration>', '5mx'), /duration/);
  assert.throws(() => parse('mode <m:on|off>', 'maybe'), /one of on, off/);
});

test('quoted strings, missing and extra arguments, unclosed quotes', () => {
  assert.deepEqual(parse('say <a> <b>', `"two words" 'it\\'s'`), { a: 'two words', b: "it's" });
  assert.deepEqual(parse('say <a>', 'don"t'), { a: 'don"t' }, 'a quote inside a word is literal');
  assert.deepEqual(parse('say <a>', '""'), { a: '' });
  assert.throws(() => parse('say <a> <b>', 'one'), /missing <b>/);
  assert.throws(() => parse('say <a>', 'one two'), /unexpected "two"/);
  assert.throws(() => parse('say <a>', '"open'), /not closed/);
  assert.throws(() => parse('say <a>', '"a"b'), /followed by a space/);
});

test('mentions: a pill shows a display name (spaces too), resolved to the user ID the message mentions', () => {
  const mentions = [
    { userId: '@bob:example.org', names: ['Bob the Builder', 'bob'] },
    { userId: '@carol:example.org', names: ['Carol'] },
  ];
  assert.deepEqual(parse('ban <user:userId> [reason...]', 'Bob the Builder: spam', mentions), { user: '@bob:example.org', reason: 'spam' });
  assert.deepEqual(parse('swap <a:userId> <b:userId>', '@Carol Bob the Builder', mentions), { a: '@carol:example.org', b: '@bob:example.org' });
  assert.throws(() => parse('ban <user:userId>', 'Dave', mentions), /user ID/, 'a name nobody mentioned is not a user');
});

test('the argument types reach the type checker', () => {
  type A = ArgsOf<'ban <user:userId> [reason...] [n:int] [m:on|off]'>;
  const a: A = { user: '@x:y', reason: undefined, n: 3, m: 'on' };
  // @ts-expect-error: n is a number
  const b: A = { user: '@x:y', n: '3' };
  void a;
  void b;
});

const word = fc.string({ minLength: 1, maxLength: 12 }).filter((s) => !/\s/.test(s) && !/^["']/.test(s));

test('property: quoteArg(s) reads back as exactly s, between any other words', () => {
  fc.assert(
    fc.property(fc.array(word, { maxLength: 3 }), fc.string({ maxLength: 40 }), fc.array(word, { maxLength: 3 }), (before, s, after) => {
      assert.deepEqual(tokenize([...before, quoteArg(s), ...after].join(' ')), [...before, s, ...after]);
    }),
  );
});

test('property: words separated by any white space tokenize to themselves', () => {
  fc.assert(
    fc.property(fc.array(word, { maxLength: 8 }), fc.constantFrom(' ', '  ', '\t', '\n', ' \u00a0 '), (words, sep) => {
      assert.deepEqual(tokenize(sep + words.join(sep) + sep), words);
    }),
  );
});

test('property: a duration written as parts is the sum of its parts', () => {
  const units = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 } as const;
  fc.assert(
    fc.property(fc.array(fc.tuple(fc.nat(1000), fc.constantFrom(...(Object.keys(units) as Array<keyof typeof units>))), { minLength: 1, maxLength: 5 }), (parts) => {
      const text = parts.map(([n, u]) => `${n}${u}`).join('');
      assert.equal(parseDuration(text), parts.reduce((sum, [n, u]) => sum + n * units[u], 0));
    }),
  );
});

test('property: an int or number written out parses back to itself', () => {
  fc.assert(fc.property(fc.maxSafeInteger(), (n) => assert.deepEqual(parse('n <a:int>', String(n)), { a: n })));
  fc.assert(fc.property(fc.double({ noNaN: true, noDefaultInfinity: true }), (n) => assert.equal(parse('n <a:number>', String(n)).a, n === 0 ? 0 : n)));
});

test('property: any text parses, or fails with HALCYON_INVALID_ARGUMENT and a message', () => {
  const patterns = ['x <a> [b:int] [c...]', 'x <u:userId> <d:duration>', 'x <m:on|off> [r:room]', 'x [a:number] [b:alias]'].map(compilePattern);
  const mentions = [{ userId: '@m:example.org', names: ['M M', 'm'] }];
  fc.assert(
    fc.property(fc.constantFrom(...patterns), fc.string({ maxLength: 80, unit: fc.constantFrom('a', ' ', '"', "'", '\\', '@', ':', '#', '!', '1', '.', 'm', 's', 'M', 'o', 'n', 'f', '\n') }), (p, text) => {
      try {
        const args = parseArgs(p, text, mentions);
        for (const q of p.params) if (!q.optional) assert.ok(q.name in args);
      } catch (err) {
        assert.equal((err as { code?: string }).code, 'HALCYON_INVALID_ARGUMENT');
        assert.ok((err as Error).message.length > 0);
      }
    }),
    { numRuns: 2000 },
  );
});
