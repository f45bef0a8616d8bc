import { z } from 'zod';
import { nhwcToNchw } from '../runtime/core.js';
import { HttpError, invalidInput } from './errors.js';

/** Memory layout of the numbers a request sends: NCHW (the model's own, the default) or NHWC. */
export type Layout = 'NCHW' | 'NHWC';

/** What a request must fit. */
export interface InputSpec {
  /** The model's per-sample shape, NCHW [C, H, W]. */
  shape: readonly number[];
  /** The most samples one request may hold (the server's max batch). */
  maxSamples: number;
  /** Why it is the most, for the message (default "the server's max batch"). */
  maxSamplesWhy?: string;
}

/** A validated prediction request. */
export interface PredictInput {
  /** The samples, NCHW float32. */
  images: Float32Array;
  count: number;
  /** The request's own utilization, when it gave one. */
  u?: number;
  /** The request's own latency budget in ms, when it gave one. */
  budgetMs?: number;
}

/** The largest finite float32. */
const FLOAT32_MAX = 3.4028234663852886e38;

/** The largest latency budget a request may give, ms. */
export const MAX_BUDGET_MS = 600_000;

const uField = z
  .number({ error: 'u must be a number in (0, 1]' })
  .gt(0, 'u must be in (0, 1]')
  .lte(1, 'u must be in (0, 1]');
const budgetField = z
  .number({ error: 'budgetMs must be a number of milliseconds' })
  .gt(0, 'budgetMs must be > 0')
  .lte(MAX_BUDGET_MS, `budgetMs must be <= ${MAX_BUDGET_MS}`);
const layoutField = z.enum(['NCHW', 'NHWC'], { error: 'layout must be NCHW or NHWC' });
const shapeField = z
  .array(z.number().int().positive(), { error: 'shape must be an array of positive integers' })
  .min(3, 'shape must be [C, H, W] or [N, C, H, W] (in the given layout)')
  .max(4, 'shape must be [C, H, W] or [N, C, H, W] (in the given layout)');

/** The JSON body of `POST /v1/predict`. */
export const jsonBodySchema = z
  .object({
    inputs: z.custom<unknown[]>((v) => Array.isArray(v) && v.length > 0, { error: 'inputs must be a non-empty array' }),
    u: uField.optional(),
    budgetMs: budgetField.optional(),
    layout: layoutField.optional(),
    shape: shapeField.optional(),
  })
  .strict();

/** The query string of `POST /v1/predict` (any body type). */
export const querySchema = z
  .object({
    u: z.coerce.number({ error: 'u must be a number in (0, 1]' }).pipe(uField).optional(),
    budgetMs: z.coerce.number({ error: 'budgetMs must be a number of milliseconds' }).pipe(budgetField).optional(),
    layout: layoutField.optional(),
    shape: z
      .string()
      .transform((s) => s.split(',').map((p) => (p.trim() === '' ? NaN : Number(p))))
      .pipe(shapeField)
      .optional(),
  })
  .strict();

type Options = { u?: number; budgetMs?: number; layout?: Layout; shape?: number[] };

/** Validates with a zod schema; the first issue becomes a 400 naming the field. */
function validate<T>(schema: z.ZodType<T>, value: unknown, where: string): T {
  const r = schema.safeParse(value ?? {});
  if (r.success) return r.data;
  const issue = r.error.issues[0];
  const field = issue.path.join('.');
  throw invalidInput(`${where}${field ? ` ${field}` : ''}: ${issue.message}`);
}

/** Per-sample dimensions in the given layout, with their names. */
function sampleDims(spec: InputSpec, layout: Layout): { dims: number[]; names: string[] } {
  const [c, h, w] = spec.shape;
  return layout === 'NCHW' ? { dims: [c, h, w], names: ['C', 'H', 'W'] } : { dims: [h, w, c], names: ['H', 'W', 'C'] };
}

function checkCount(count: number, spec: InputSpec): void {
  if (count > spec.maxSamples) {
    throw new HttpError(413, 'payload_too_large', `a request holds at most ${spec.maxSamples} samples (${spec.maxSamplesWhy ?? "the server's max batch"}); got ${count}`);
  }
}

/** Checks a declared shape against the model and the number of values; returns the sample count. */
function countFromShape(shape: number[] | undefined, length: number, spec: InputSpec, layout: Layout): number {
  const { dims, names } = sampleDims(spec, layout);
  const per = dims.reduce((a, b) => a * b, 1);
  if (shape === undefined) {
    if (length % per !== 0) {
      throw invalidInput(`inputs hold ${length} values, not a whole number of samples of ${names.join('x')} = [${dims}] (${per} values each)`);
    }
    return length / per;
  }
  const sample = shape.length === 4 ? shape.slice(1) : shape;
  if (sample.join() !== dims.join()) {
    throw invalidInput(`shape [${shape}] does not fit the model: a sample is ${names.join('x')} = [${dims}] in ${layout}`);
  }
  const count = shape.length === 4 ? shape[0] : 1;
  if (count * per !== length) throw invalidInput(`shape [${shape}] holds ${count * per} values, but ${length} were sent`);
  return count;
}

/** A short description of a JSON value for an error message: never the whole of a large or deep value. */
function describe(v: unknown): string {
  if (Array.isArray(v)) return `an array of ${v.length}`;
  if (v === null) return 'null';
  if (typeof v === 'object') return 'an object';
  if (typeof v === 'string') return JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}...` : v);
  return String(v);
}

/** The value as float32, or a 400 naming it when it is not a number or float32 cannot hold it. */
function float32OrThrow(v: unknown, where: () => string): number {
  if (typeof v !== 'number' || !Number.isFinite(v)) throw invalidInput(`${where()} is ${describe(v)}, not a finite number`);
  // Beyond float32's largest value (about 3.4e38) the value would become Infinity in the tensor.
  if (!Number.isFinite(Math.fround(v))) throw invalidInput(`${where()} is ${v}, outside the float32 range (magnitude at most ${FLOAT32_MAX})`);
  return v;
}

/** Reads nested arrays (one sample, or a batch of samples) of exactly `expected` extents into `out`. */
function readNested(inputs: unknown[], expected: number[], names: string[], out: Float32Array): void {
  let pos = 0;
  const walk = (a: unknown, k: number, path: string): void => {
    if (k === expected.length) {
      out[pos++] = float32OrThrow(a, () => `inputs${path}`);
      return;
    }
    if (!Array.isArray(a) || a.length !== expected[k]) {
      const got = Array.isArray(a) ? `${a.length} entries` : describe(a);
      throw invalidInput(`inputs${path} must be an array of ${expected[k]} (${names[k]}), got ${got}`);
    }
    for (let i = 0; i < a.length; i++) walk(a[i], k + 1, `${path}[${i}]`);
  };
  walk(inputs, 0, '');
}

function toNchw(data: Float32Array, spec: InputSpec, layout: Layout): Float32Array {
  return layout === 'NHWC' ? nhwcToNchw(data, spec.shape) : data;
}

/** Merges the query's options with the body's; a field given in both is an error. */
function mergeOptions(query: Options, body: Options): Options {
  for (const k of Object.keys(body) as (keyof Options)[]) {
    if (body[k] !== undefined && query[k] !== undefined) throw invalidInput(`${k} is given both in the query string and in the body; give it once`);
  }
  return { ...query, ...body };
}

function done(images: Float32Array, count: number, o: Options): PredictInput {
  return { images, count, ...(o.u !== undefined ? { u: o.u } : {}), ...(o.budgetMs !== undefined ? { budgetMs: o.budgetMs } : {}) };
}

/**
 * A JSON request: `inputs` is one sample nested as [C][H][W], a batch [N][C][H][W] (NHWC: [H][W][C] and
 * [N][H][W][C] with `layout: "NHWC"`), or a flat array of numbers holding whole samples, optionally with
 * its `shape` ([C, H, W] or [N, C, H, W] in the layout). Every value must be a finite number.
 */
export function parseJsonRequest(body: unknown, query: unknown, spec: InputSpec): PredictInput {
  const q = validate(querySchema, query, 'query');
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw invalidInput('the JSON body must be an object: {"inputs": [...], "u"?: number, "budgetMs"?: number}');
  const { inputs, ...rest } = validate(jsonBodySchema, body, 'body');
  const o = mergeOptions(q, rest);
  const layout = o.layout ?? 'NCHW';
  const { dims, names } = sampleDims(spec, layout);
  let depth = 0;
  for (let x: unknown = inputs; Array.isArray(x); x = x[0]) depth++;
  if (depth === 1) {
    const count = countFromShape(o.shape, inputs.length, spec, layout);
    checkCount(count, spec);
    const data = new Float32Array(inputs.length);
    for (let i = 0; i < inputs.length; i++) data[i] = float32OrThrow(inputs[i], () => `inputs[${i}]`);
    return done(toNchw(data, spec, layout), count, o);
  }
  if (o.shape !== undefined) throw invalidInput('shape is only for a flat inputs array; nested arrays carry their own shape');
  let expected: number[];
  let expectedNames: string[];
  if (depth === dims.length) {
    expected = dims;
    expectedNames = names;
  } else if (depth === dims.length + 1) {
    expected = [inputs.length, ...dims];
    expectedNames = ['N', ...names];
  } else {
    throw invalidInput(
      `inputs must be one sample ${names.map((n) => `[${n}]`).join('')}, a batch [N]${names.map((n) => `[${n}]`).join('')} ` +
        `or a flat array of numbers (${layout}; model sample ${names.join('x')} = [${dims}]); got arrays nested ${depth} deep`,
    );
  }
  const count = depth === dims.length ? 1 : inputs.length;
  checkCount(count, spec);
  const data = new Float32Array(count * dims.reduce((a, b) => a * b, 1));
  readNested(inputs, expected, expectedNames, data);
  return done(toNchw(data, spec, layout), count, o);
}

/**
 * The body's bytes as float32 values: a view of them when they start on a 4-byte boundary, a copy otherwise.
 * Copying 50 KB per request and freeing it again cost the server's event loop more than the check of the
 * values. A small body may be a slice of Node's shared buffer pool: the view is read and copied into batches,
 * never transferred.
 */
function float32View(body: Uint8Array): Float32Array {
  if (body.byteOffset % 4 === 0) return new Float32Array(body.buffer, body.byteOffset, body.byteLength / 4);
  const data = new Float32Array(body.byteLength / 4);
  new Uint8Array(data.buffer).set(body);
  return data;
}

/**
 * A binary request: the body is little-endian float32 values holding whole samples (NCHW unless the query
 * says `layout=NHWC`); the count is implied by the length, or checked against `shape=N,C,H,W` in the query.
 * `u` and `budgetMs` come from the query string. NCHW images may share the body's memory: do not reuse it.
 */
export function parseBinaryRequest(body: Uint8Array, query: unknown, spec: InputSpec): PredictInput {
  const o = validate(querySchema, query, 'query');
  if (body.byteLength === 0) throw invalidInput('the body is empty: send float32 values holding whole samples');
  if (body.byteLength % 4 !== 0) throw invalidInput(`the body has ${body.byteLength} bytes, not a whole number of float32 values`);
  const data = float32View(body);
  const layout = o.layout ?? 'NCHW';
  const count = countFromShape(o.shape, data.length, spec, layout);
  checkCount(count, spec);
  for (let i = 0; i < data.length; i++) {
    if (!Number.isFinite(data[i])) throw invalidInput(`value ${i} of the body is ${data[i]}, not a finite number`);
  }
  return done(toNchw(data, spec, layout), count, o);
}
