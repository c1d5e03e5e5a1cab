/**
 * The public API does not change by accident: every export of the published declarations (dist/types/index.d.ts,
 * as `npm test` builds them), with the type of each class and interface member, and the members of
 * `Client.prototype`, must equal the snapshot in test/fixtures/api-surface.txt. Moving code between files keeps
 * the snapshot; changing what users can call changes it, on purpose: `HALCYON_UPDATE_API=1 npm test --
 * api-surface` rewrites it, and the diff shows in review.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import ts from 'typescript';
import { Client } from '../../src/index.ts';

const root = join(import.meta.dirname, '..', '..');
const SNAPSHOT = join(root, 'test', 'fixtures', 'api-surface.txt');
const FLAGS = ts.TypeFormatFlags.NoTruncation | ts.TypeFormatFlags.UseAliasDefinedOutsideCurrentScope | ts.TypeFormatFlags.WriteArrowStyleSignature;

/** Private and protected members (and `#private` fields) are the implementation's, not the API. */
function isHidden(m: ts.Symbol): boolean {
  // #private fields, and symbol-keyed members (util.inspect.custom: its internal name carries a counter).
  if (m.name.startsWith('#') || m.name.startsWith('__#') || m.name.startsWith('__@')) return true;
  return (m.declarations ?? []).some((d) => (ts.getCombinedModifierFlags(d) & (ts.ModifierFlags.Private | ts.ModifierFlags.Protected)) !== 0);
}

/** One line per export, then one per public member (properties and methods with their types). */
function surface(): string[] {
  const entry = join(root, 'dist', 'types', 'index.d.ts');
  assert.ok(existsSync(entry), `${entry} is missing: npm test builds it`);
  const program = ts.createProgram([entry], { strict: true, skipLibCheck: true, noEmit: true });
  const checker = program.getTypeChecker();
  const module = checker.getSymbolAtLocation(program.getSourceFile(entry)!)!;
  const lines: string[] = [];
  for (const exp of checker.getExportsOfModule(module).sort((a, b) => a.name.localeCompare(b.name))) {
    const sym = exp.flags & ts.SymbolFlags.Alias ? checker.getAliasedSymbol(exp) : exp;
    const decl = sym.declarations?.[0];
    if (!decl) continue;
    const kind = ts.SyntaxKind[decl.kind];
    if (ts.isClassDeclaration(decl) || ts.isInterfaceDeclaration(decl)) {
      lines.push(`${kind} ${exp.name}`);
      // A class: its static side, then its instances; an interface: its members.
      const statics = ts.isClassDeclaration(decl) ? checker.getTypeOfSymbol(sym) : null;
      const instance = checker.getDeclaredTypeOfSymbol(sym);
      for (const [label, t] of [['static', statics], ['', instance]] as const) {
        if (!t) continue;
        for (const m of checker.getPropertiesOfType(t).sort((a, b) => a.name.localeCompare(b.name))) {
          if (m.name === 'prototype' || isHidden(m)) continue;
          const mt = checker.getTypeOfSymbolAtLocation(m, decl);
          lines.push(`  ${label ? 'static ' : ''}${m.name}${m.flags & ts.SymbolFlags.Optional ? '?' : ''}: ${checker.typeToString(mt, decl, FLAGS)}`);
        }
      }
      if (ts.isInterfaceDeclaration(decl) || ts.isClassDeclaration(decl)) {
        const t = checker.getDeclaredTypeOfSymbol(sym);
        for (const sig of checker.getSignaturesOfType(t, ts.SignatureKind.Call)) lines.push(`  (call): ${checker.signatureToString(sig, decl, FLAGS)}`);
      }
      continue;
    }
    if (ts.isTypeAliasDeclaration(decl)) {
      // The alias's definition as written (printing the type would only give its name back).
      lines.push(`${kind} ${exp.name}: ${decl.type.getText().replace(/\s+/g, ' ')}`);
      continue;
    }
    const t = checker.getTypeOfSymbolAtLocation(sym, decl);
    lines.push(`${kind} ${exp.name}: ${checker.typeToString(t, decl, FLAGS)}`);
  }
  // At run time, the public members only: private ones are the implementation's to move.
  const publicNames = new Set(lines.filter((l) => l.startsWith('  ')).map((l) => l.trim().replace(/^static /, '').split(/[?:]/)[0]!));
  const proto = Object.getOwnPropertyNames(Client.prototype).filter((n) => n !== 'constructor' && publicNames.has(n)).sort();
  lines.push(`Client.prototype (public, at run time): ${proto.join(', ')}`);
  return lines;
}

test('the public API (declarations of every export, Client.prototype) equals the snapshot', () => {
  const now = surface().join('\n') + '\n';
  if (process.env.HALCYON_UPDATE_API === '1') writeFileSync(SNAPSHOT, now);
  assert.ok(existsSync(SNAPSHOT), 'no snapshot: run HALCYON_UPDATE_API=1 npm test -- api-surface');
  assert.equal(now, readFileSync(SNAPSHOT, 'utf8'), 'the public API changed (if on purpose: HALCYON_UPDATE_API=1 npm test -- api-surface)');
});
