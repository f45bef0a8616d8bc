import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { parseBinaryRequest, parseJsonRequest, type InputSpec, type PredictInput } from './input.js';
import { HttpError } from './errors.js';

// A small sample ([C, H, W] = [2, 2, 3]) so that generated arrays often have the right length.
const spec: InputSpec = { shape: [2, 2, 3], maxSamples: 4 };
const PER = 12;
const RUNS = { numRuns: 200, seed: 7 };

/** What every parse must give: a well-formed input, or an HttpError with a 4xx status and a message. */
function outcome(parse: () => PredictInput): 'ok' | 'refused' {
  let r: PredictInput;
  try {
    r = parse();
  } catch (err) {
    assert.ok(err instanceof HttpError, `not an HttpError: ${(err as Error)?.stack ?? String(err)}`);
    assert.ok(err.statusCode >= 400 && err.statusCode < 500, `status ${err.statusCode}`);
    assert.ok(err.message.length > 0 && err.message.length < 1000, `message of ${err.message.length} characters`);
    return 'refused';
  }
  assert.ok(Number.isInteger(r.count) && r.count >= 1 && r.count <= spec.maxSamples, `count ${r.count}`);
  assert.equal(r.images.length, r.count * PER);
  assert.ok(r.images.every(Number.isFinite), 'every value is a finite float32');
  if (r.u !== undefined) assert.ok(r.u > 0 && r.u <= 1);
  if (r.budgetMs !== undefined) assert.ok(r.budgetMs > 0);
  return 'ok';
}

/** Numbers a client may send, including ones float32 cannot hold and what 1e999 parses to. */
const number = fc.oneof(
  { weight: 40, arbitrary: fc.double({ min: -1e3, max: 1e3, noNaN: true }) },
  fc.double(),
  fc.constantFrom(3.5e38, -3.5e38, 3.4e38, 1e-46, Infinity, -Infinity, NaN, -0),
);
const leaf = fc.oneof({ weight: 6, arbitrary: number }, fc.string({ maxLength: 5 }), fc.boolean(), fc.constant(null), fc.object({ maxDepth: 1 }));
/** Nested arrays of up to five levels: sometimes the model's [N][C][H][W], usually not quite. */
const nested: fc.Arbitrary<unknown> = fc.letrec<{ node: unknown }>((tie) => ({
  node: fc.oneof({ depthSize: 'small', withCrossShrink: true }, leaf, fc.array(tie('node'), { minLength: 1, maxLength: 4 })),
})).node;
const shaped = (dims: number[]): fc.Arbitrary<unknown> => (dims.length ? fc.array(shaped(dims.slice(1)), { minLength: dims[0], maxLength: dims[0] }) : number);
const inputs = fc.oneof(
  nested,
  fc.array(number, { minLength: PER - 1, maxLength: 5 * PER + 1 }),
  fc.integer({ min: 1, max: 5 }).chain((n) => fc.array(number, { minLength: n * PER, maxLength: n * PER })),
  shaped([2, 2, 3]),
  fc.integer({ min: 1, max: 5 }).chain((n) => shaped([n, 2, 2, 3])),
  fc.integer({ min: 1, max: 5 }).chain((n) => shaped([n, 2, 3, 2])),
);
/** Absent three times in four: each optional field is often wrong when present. */
const option = (values: fc.Arbitrary<unknown>) => fc.oneof({ weight: 3, arbitrary: fc.constant(undefined) }, values);
const body = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.record(
      {
        inputs,
        u: option(fc.oneof(number, fc.double({ min: 0, max: 1 }), fc.string())),
        budgetMs: option(number),
        layout: option(fc.constantFrom('NCHW', 'NHWC', 'nchw', 1)),
        shape: option(fc.oneof(fc.constantFrom([2, 2, 3], [1, 2, 2, 3], [2, 3, 2]), fc.array(fc.integer({ min: -1, max: 13 }), { maxLength: 5 }), fc.string())),
      },
      { requiredKeys: ['inputs'] },
    ),
  },
  fc.jsonValue({ maxDepth: 4 }),
  fc.anything({ maxDepth: 3 }),
);
const query = fc.oneof(
  { weight: 6, arbitrary: fc.constant({}) },
  fc.record({ u: option(fc.oneof(fc.string(), fc.constantFrom('0.5', '1', '0', '1e999', 'NaN'))), budgetMs: option(fc.constantFrom('10', '-1', 'x', '1e9')), layout: option(fc.constantFrom('NHWC', 'NCHW', 'x')), shape: option(fc.constantFrom('1,2,2,3', '2,2,3', '2,3,2', ',', '1,2,2,3,4', 'a,b,c')) }, { requiredKeys: [] }),
  fc.dictionary(fc.string({ maxLength: 8 }), fc.oneof(fc.string(), fc.array(fc.string(), { maxLength: 3 }))),
);

test('JSON bodies: whatever arrives, the parser gives a well-formed input or a 4xx HttpError', { timeout: 60_000 }, () => {
  const seen = { ok: 0, refused: 0 };
  fc.assert(
    fc.property(body, query, (b, q) => {
      seen[outcome(() => parseJsonRequest(b, q, spec))]++;
    }),
    RUNS,
  );
  // The generators reach both outcomes, so the property is not vacuous.
  assert.ok(seen.ok > 5 && seen.refused > 5, JSON.stringify(seen));
});

test('binary bodies: any bytes give a well-formed input or a 4xx HttpError', { timeout: 60_000 }, () => {
  const length = fc.oneof(fc.integer({ min: 0, max: 5 * PER + 1 }), fc.integer({ min: 1, max: 5 }).map((n) => n * PER));
  const floats = length.chain((n) => fc.oneof(fc.float32Array({ minLength: n, maxLength: n }), fc.float32Array({ minLength: n, maxLength: n, noNaN: true, noDefaultInfinity: true })));
  const bytes = fc.oneof(fc.uint8Array({ maxLength: 4 * 5 * PER + 3 }), floats.map((f) => new Uint8Array(f.buffer)));
  const seen = { ok: 0, refused: 0 };
  fc.assert(
    fc.property(bytes, query, (b, q) => {
      seen[outcome(() => parseBinaryRequest(b, q, spec))]++;
    }),
    RUNS,
  );
  assert.ok(seen.ok > 5 && seen.refused > 5, JSON.stringify(seen));
});

test('valid flat inputs are read exactly, as float32', () => {
  const finite32 = fc.float({ noNaN: true, noDefaultInfinity: true });
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 4 }).chain((n) => fc.array(finite32, { minLength: n * PER, maxLength: n * PER })), (values) => {
      const r = parseJsonRequest({ inputs: values }, {}, spec);
      assert.equal(r.count, values.length / PER);
      assert.deepEqual(Array.from(r.images), values.map((v) => (Object.is(v, -0) ? -0 : v)));
      const bytes = new Uint8Array(Float32Array.from(values).buffer);
      const b = parseBinaryRequest(bytes, {}, spec);
      assert.deepEqual(b.images, r.images);
      // A body that does not start on a 4-byte boundary is copied, not viewed.
      const unaligned = new Uint8Array(bytes.length + 1).subarray(1);
      unaligned.set(bytes);
      assert.deepEqual(parseBinaryRequest(unaligned, {}, spec).images, r.images);
    }),
    RUNS,
  );
});

test('values float32 cannot hold, and deep or huge values, are refused with a short message naming them', () => {
  const flat = (v: unknown, at = 0) => Array.from({ length: PER }, (_, i) => (i === at ? v : 0));
  assert.throws(() => parseJsonRequest({ inputs: flat(3.5e38, 5) }, {}, spec), /^HttpError: inputs\[5\] is 3\.5e\+38, outside the float32 range \(magnitude at most 3\.4028234663852886e\+38\)$/);
  assert.throws(() => parseJsonRequest({ inputs: [[[0, 0, 0], [0, -1e39, 0]], [[0, 0, 0], [0, 0, 0]]] }, {}, spec), /inputs\[0\]\[1\]\[1\] is -1e\+39, outside the float32 range/);
  let deep: unknown = 0;
  for (let i = 0; i < 100_000; i++) deep = [deep];
  assert.throws(() => parseJsonRequest({ inputs: flat(deep, 11) }, {}, spec), /^HttpError: inputs\[11\] is an array of 1, not a finite number$/);
  assert.throws(() => parseJsonRequest({ inputs: deep }, {}, spec), /got arrays nested 100000 deep/);
  assert.throws(() => parseJsonRequest({ inputs: flat('x'.repeat(100_000)) }, {}, spec), /^HttpError: inputs\[0\] is "x{40}\.\.\.", not a finite number$/);
  assert.throws(() => parseJsonRequest({ inputs: [[[0, 0, 0], [0, 0, 0]], [[0, 0, 0], { a: deep }]] }, {}, spec), /inputs\[1\]\[1\] must be an array of 3 \(W\), got an object/);
});
