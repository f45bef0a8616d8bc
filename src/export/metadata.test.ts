// The metadata in a model file is untrusted: wrong types, missing fields and absurd values are DynnErrors
// that name the field, never a crash later inside the runtime.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { initEngine } from '../engine/backend.js';
import { createModel } from '../models/zoo.js';
import { DynnError } from '../util/errors.js';
import { exportOnnx } from './export.js';
import { metadataProps, parseMetadataProps, readOnnxMetadata, type OnnxMetadata } from './metadata.js';

await initEngine('wasm');

const net = createModel('vgg-exits', { inputShape: [12, 12, 1], groups: 4, widths: [8, 8, 16, 16], hidden: 32, exitPool: [2, 2, 2], exitHidden: 16 });
const valid = exportOnnx(net, { exitPolicy: { rule: 'entropy', thresholds: [0.1, 0.2, 0.3] } }).metadata;
net.dispose();

const parse = (meta: unknown) => parseMetadataProps(metadataProps(meta as OnnxMetadata), 'm.onnx');

/** The parse result: 'ok', or the DynnError's message; any other exception fails the test. */
function outcome(props: { key: string; value: string }[]): string {
  try {
    const m = parseMetadataProps(props, 'm.onnx');
    // What validates is consistent: the runtime may rely on it.
    assert.equal(m.classNames.length, m.numClasses);
    for (let i = 1; i < m.levels.length; i++) assert.ok(m.levels[i].level > m.levels[i - 1].level && m.levels[i].minU > m.levels[i - 1].minU);
    return 'ok';
  } catch (err) {
    if (!(err instanceof DynnError)) throw new Error(`not a DynnError: ${(err as Error)?.stack ?? String(err)}`);
    assert.match(err.message, /^m\.onnx: /);
    return err.message;
  }
}

test('metadata round-trips, and absurd values are refused naming the field', () => {
  assert.deepEqual(parse(valid), valid);
  const lv = valid.levels;
  const cases: [unknown, RegExp][] = [
    [{ ...valid, numClasses: -3 }, /invalid dynn metadata at numClasses: .*>=2/],
    [{ ...valid, numClasses: true }, /at numClasses: .*expected number/],
    [{ ...valid, classNames: ['a'] }, /at classNames: 1 class names for numClasses 10/],
    [{ ...valid, levels: [lv[1], lv[0], ...lv.slice(2)] }, /at levels\.1: levels must be strictly increasing/],
    [{ ...valid, levels: [lv[0], lv[0]] }, /at levels\.1: levels must be strictly increasing/],
    [{ ...valid, levels: [{ ...lv[0], minU: 1, u: 0.5 }] }, /at levels\.0\.minU: minU 1 is above the level's u 0\.5/],
    [{ ...valid, levels: [{ ...lv[0], flops: 'NaN' }] }, /at levels\.0\.flops: .*expected number/],
    [{ ...valid, levels: [{ ...lv[0], flops: null }] }, /at levels\.0\.flops/],
    [{ ...valid, levels: [{ ...lv[0], exitFlops: [1] }] }, /at levels\.0\.exitFlops: needs one value per exit \(4\)/],
    [{ ...valid, levels: [] }, /at levels: .*>=1/],
    [{ ...valid, input: { ...valid.input, shape: [3, 1e5, 1e5] } }, /at input\.shape\.1/],
    [{ ...valid, input: { ...valid.input, shape: [4096, 4096, 4096] } }, /at input\.shape: \[4096,4096,4096\] is 68719476736 values per sample; at most 67108864/],
    [{ ...valid, input: { ...valid.input, name: 'pixels' } }, /at input\.name/],
    [{ ...valid, exits: { count: 4, policy: { rule: 'entropy', thresholds: [1] } } }, /at exits\.policy\.thresholds: 1 thresholds for 3 intermediate exits/],
    [{ ...valid, exits: { ...valid.exits, inGraph: { rule: 'confidence' } } }, /at exits\.inGraph\.rule: the graph's exit rule confidence is not the stored policy's \(entropy\)/],
    [{ ...valid, exits: { count: 4, inGraph: { rule: 'entropy' } } }, /at exits\.inGraph\.rule: the graph's exit rule entropy is not the stored policy's \(none\)/],
    [{ ...valid, controller: { actions: [1, 0.5], flops: 1, macs: 1, flopsRatio: 0.1 } }, /at controller\.actions: actions must be strictly increasing/],
    [{ ...valid, weightsSha256: 'abc' }, /at weightsSha256: expected 64 lowercase hex digits/],
    [{ ...valid, model: undefined }, /at model: .*expected object/],
  ];
  for (const [meta, pattern] of cases) assert.throws(() => parse(meta), (err: Error) => err instanceof DynnError && pattern.test(err.message), pattern.source);
  // Non-JSON and non-finite numbers (JSON has no NaN; 1e999 parses as Infinity).
  const props = metadataProps(valid);
  const withLevels = (value: string) => props.map((p) => (p.key === 'dynn.levels' ? { key: p.key, value } : p));
  assert.throws(() => parseMetadataProps(withLevels('[{"flops": NaN}]'), 'm.onnx'), /metadata entry dynn\.levels is not valid JSON/);
  assert.throws(() => parseMetadataProps(withLevels(JSON.stringify(valid.levels).replace(/"flops":\d+/, '"flops":1e999')), 'm.onnx'), /at levels\.0\.flops/);
  assert.throws(() => parseMetadataProps([{ key: 'dynn.__proto__', value: '{"format":"dynn-onnx/1"}' }], 'm.onnx'), /no dynn metadata/);
  assert.throws(() => readOnnxMetadata(new Uint8Array([0x0a, 0xff]), 'm.onnx'), /not a valid ONNX model/);
});

test('property: any JSON in any dynn metadata entry gives metadata or a DynnError', () => {
  const keys = [...Object.keys(valid), '__proto__', 'constructor', 'extra'];
  const entry = fc.record({ key: fc.constantFrom(...keys).map((k) => `dynn.${k}`), value: fc.oneof(fc.json(), fc.string()) });
  fc.assert(
    fc.property(fc.array(entry, { maxLength: 12 }), fc.boolean(), (entries, withValid) => {
      // Over the valid entries (later entries win), or alone.
      outcome([...(withValid ? metadataProps(valid) : []), ...entries]);
    }),
    { numRuns: 300, seed: 3 },
  );
});

test('property: mutations of a valid metadata object (any field set to any JSON, or removed) give metadata or a DynnError', () => {
  const paths: string[][] = [];
  const collect = (v: unknown, p: string[]) => {
    if (p.length) paths.push(p);
    if (v && typeof v === 'object') for (const [k, c] of Object.entries(v)) collect(c, [...p, k]);
  };
  collect(valid, []);
  const value = fc.oneof(fc.jsonValue(), fc.constant(undefined), fc.constantFrom(-1, 0, 1, 2, 1e308, 2 ** 53, -0.5, 'NaN', [], {}), fc.double({ noNaN: true }));
  let refused = 0;
  fc.assert(
    fc.property(fc.array(fc.record({ path: fc.constantFrom(...paths), value }), { minLength: 1, maxLength: 4 }), (edits) => {
      const meta = structuredClone(valid) as unknown as Record<string, unknown>;
      for (const { path, value: v } of edits) {
        let o = meta;
        for (const k of path.slice(0, -1)) o = (o[k] !== null && typeof o[k] === 'object' ? o[k] : (o[k] = {})) as Record<string, unknown>;
        if (v === undefined) delete o[path[path.length - 1]];
        else o[path[path.length - 1]] = v;
      }
      if (outcome(metadataProps(meta as unknown as OnnxMetadata)) !== 'ok') refused++;
    }),
    { numRuns: 300, seed: 5 },
  );
  assert.ok(refused > 100, `most random mutations are refused (${refused} of 300)`);
});
