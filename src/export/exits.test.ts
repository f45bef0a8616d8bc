// Every exit rule that lowers into a graph scores rows as the runtime's JavaScript rule does.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import ort from 'onnxruntime-node';
import { exitRules } from '../scaling/rules.js';
import { Rng } from '../util/rng.js';
import { exitRuleLowerings } from './exits.js';
import { GraphBuilder, NameScope, valueInfo } from './graph.js';
import { DataType, encodeModel, IR_VERSION, OPSET_VERSION } from './onnx-proto.js';

const C = 10;

/** Probability rows: random, one-hot, with exact zeros, uniform. */
function rows(): Float64Array {
  const rng = new Rng(3);
  const out: number[][] = [];
  for (let r = 0; r < 12; r++) {
    const logits = Array.from({ length: C }, () => 6 * rng.next());
    const m = Math.max(...logits);
    const e = logits.map((v) => Math.exp(v - m));
    const s = e.reduce((a, b) => a + b, 0);
    out.push(e.map((v) => v / s));
  }
  out.push(Array.from({ length: C }, (_, j) => (j === 3 ? 1 : 0)));
  out.push(Array.from({ length: C }, (_, j) => (j < 2 ? 0.5 : 0)));
  out.push(new Array<number>(C).fill(1 / C));
  return Float64Array.from(out.flat());
}

test('every lowered exit rule scores like its JavaScript rule (random rows, one-hot, exact zeros, uniform)', async () => {
  assert.deepEqual(exitRuleLowerings.list(), exitRules.list().filter((n) => exitRuleLowerings.has(n)));
  assert.ok(exitRuleLowerings.list().length >= 2);
  const p = rows();
  const n = p.length / C;
  for (const name of exitRuleLowerings.list()) {
    const g = new GraphBuilder(name, new NameScope());
    g.input(valueInfo('p', DataType.DOUBLE, ['n', C]));
    g.nodeTo('Identity', [exitRuleLowerings.get(name)(g, 'p', name)], 'score');
    g.output(valueInfo('score', DataType.DOUBLE, ['n']));
    const bytes = encodeModel({ ir_version: IR_VERSION, opset_import: [{ domain: '', version: OPSET_VERSION }], producer_name: 'test', producer_version: '0', doc_string: '', graph: g.build(), metadata_props: [] });
    const s = await ort.InferenceSession.create(bytes);
    try {
      const got = (await s.run({ p: new ort.Tensor('float64', p, [n, C]) })).score.data as Float64Array;
      const rule = exitRules.get(name);
      for (let r = 0; r < n; r++) {
        const want = rule.score(p.subarray(r * C, (r + 1) * C));
        assert.ok(Math.abs(got[r] - want) <= 1e-12 * Math.max(1, Math.abs(want)), `${name}, row ${r}: ${got[r]} against ${want}`);
      }
    } finally {
      await s.release();
    }
  }
});
