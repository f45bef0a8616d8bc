import { test } from 'node:test';
import assert from 'node:assert/strict';
import { accessSync, constants, readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

// Tests run from dist/src; the sources and README.md are two levels up.
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const SRC = path.join(ROOT, 'src');

/** Every non-test TypeScript file under src/, relative to it. */
function sources(dir = SRC): string[] {
  return readdirSync(dir).flatMap((name) => {
    const full = path.join(dir, name);
    if (statSync(full).isDirectory()) return sources(full);
    return name.endsWith('.ts') && !/\.test\.ts$/.test(name) ? [path.relative(SRC, full)] : [];
  });
}

/** The relative imports of a file: static, type-only and dynamic, as src/-relative .ts paths. */
function importsOf(file: string): string[] {
  const text = readFileSync(path.join(SRC, file), 'utf8');
  const specs = [...text.matchAll(/(?:from\s+|import\s*\(\s*)['"](\.{1,2}\/[^'"]+)['"]/g)].map((m) => m[1]);
  return specs.map((s) => path.relative(SRC, path.resolve(path.dirname(path.join(SRC, file)), s)).replace(/\.js$/, '.ts'));
}

test('the bin is runnable after a build (npm test rebuilds dist/ before it runs)', () => {
  const bin = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')).bin.dynn as string;
  assert.doesNotThrow(() => accessSync(path.join(ROOT, bin), constants.X_OK), `${bin} has no run bit: npx dynn fails with Permission denied`);
});

test('no import cycles in src/ (type-only and lazy imports count: a reader follows them too)', () => {
  const files = sources();
  const graph = new Map(files.map((f) => [f, importsOf(f).filter((g) => files.includes(g))]));
  const state = new Map<string, 'open' | 'done'>();
  const cycles: string[] = [];
  const visit = (f: string, trail: string[]) => {
    if (state.get(f) === 'done') return;
    if (state.get(f) === 'open') {
      cycles.push([...trail.slice(trail.indexOf(f)), f].join(' > '));
      return;
    }
    state.set(f, 'open');
    for (const g of graph.get(f) ?? []) visit(g, [...trail, f]);
    state.set(f, 'done');
  };
  for (const f of files) visit(f, []);
  assert.ok(files.length > 50, 'the walk found the sources');
  assert.deepEqual(cycles, []);
});

test('README.md lists every folder under src/ in its layout table', () => {
  const readme = readFileSync(path.join(ROOT, 'README.md'), 'utf8');
  const layout = readme.slice(readme.indexOf('## Layout'));
  const folders = readdirSync(SRC).filter((n) => statSync(path.join(SRC, n)).isDirectory());
  const missing = folders.filter((f) => !layout.includes(`| \`src/${f}\` |`));
  assert.deepEqual(missing, []);
});
