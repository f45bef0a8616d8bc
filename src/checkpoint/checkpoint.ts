import { createHash } from 'node:crypto';
import { promises as fsp, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { z } from 'zod';
import { DynnError } from '../util/errors.js';
import { writeFileAtomic } from '../util/fs.js';

/** One named array: deterministic dotted names such as "block1.conv.kernel". */
export interface NamedArray {
  name: string;
  shape: number[];
  data: Float32Array;
}

/** Everything a checkpoint directory holds. */
export interface CheckpointContent {
  /** Architecture: { model: string, args: object } — enough to rebuild the network. */
  config: { model: string; args: Record<string, unknown> };
  /** Model weights (trainable and non-trainable, e.g. per-level BatchNorm statistics). */
  weights: NamedArray[];
  /** Optional optimizer state for --resume (e.g. Adam moments), also as named arrays, plus its own small JSON state. */
  optimizer?: { kind: string; state: Record<string, unknown>; arrays: NamedArray[] };
  /** Free-form metadata: training options, history, dataset, seed, dynn version, epoch. */
  meta: Record<string, unknown>;
}

/** A weight name and shape, as listed by a manifest or expected by a model. */
export interface ArraySpec {
  name: string;
  shape: number[];
}

/** What a checkpoint holds, read from checkpoint.json alone. */
export interface CheckpointInfo {
  config: CheckpointContent['config'];
  meta: Record<string, unknown>;
  weights: ArraySpec[];
  hasOptimizer: boolean;
}

/** What the caller requires of a checkpoint it loads; checked before any weights are read. */
export interface CheckpointExpectation {
  model?: string;
  weights?: ArraySpec[];
}

/** The format tag stored in every checkpoint.json. */
export const CHECKPOINT_FORMAT = 'dynn-checkpoint';
/** The checkpoint.json format version this code reads and writes. */
export const CHECKPOINT_FORMAT_VERSION = 1;
/** The manifest file whose presence makes a directory a checkpoint; renaming it into place commits a save. */
export const MANIFEST_FILE = 'checkpoint.json';

const DATA_FILE = /^(weights|optimizer)-[0-9a-f]{16}\.bin$/;
const TEMP_FILE = /^(weights-|optimizer-|checkpoint\.json\.).*\.tmp$/;
const LITTLE_ENDIAN = os.endianness() === 'LE';
const LIST_LIMIT = 5;

const jsonObject = z.record(z.string(), z.unknown());

const arrayEntrySchema = z.object({
  name: z.string().min(1),
  shape: z.array(z.number().int().nonnegative()),
  /** Offset into the file, in float32 elements. */
  offset: z.number().int().nonnegative(),
  /** Number of float32 elements. */
  length: z.number().int().nonnegative(),
});

function dataFileSchema(prefix: 'weights' | 'optimizer') {
  return z.object({
    file: z.string().regex(new RegExp(`^${prefix}-[0-9a-f]{16}\\.bin$`), `expected a file name like ${prefix}-<16 hex>.bin`),
    byteLength: z.number().int().nonnegative(),
    sha256: z.string().regex(/^[0-9a-f]{64}$/, 'expected 64 lowercase hex digits'),
    arrays: z.array(arrayEntrySchema),
  });
}

const manifestSchema = z.object({
  format: z.literal(CHECKPOINT_FORMAT),
  formatVersion: z.literal(CHECKPOINT_FORMAT_VERSION),
  config: z.object({ model: z.string().min(1), args: jsonObject }),
  meta: jsonObject,
  weights: dataFileSchema('weights'),
  optimizer: dataFileSchema('optimizer').extend({ kind: z.string().min(1), state: jsonObject }).optional(),
});

/** The parsed contents of checkpoint.json. */
export type CheckpointManifest = z.infer<typeof manifestSchema>;
type DataFileEntry = CheckpointManifest['weights'];

/** Saves a checkpoint into `dir` (created if needed), atomically replacing any checkpoint already there. */
export async function saveCheckpoint(dir: string, content: CheckpointContent): Promise<void> {
  const manifest = await writeDataFiles(dir, content);
  await commitManifest(dir, manifest);
  await pruneCheckpointDir(dir, manifest);
}

/**
 * Loads and fully validates the checkpoint in `dir`. With `expect`, first checks that it is for the given model
 * and holds exactly the given weight names and shapes. Throws DynnError for anything wrong with the files.
 */
export async function loadCheckpoint(dir: string, expect?: CheckpointExpectation): Promise<CheckpointContent> {
  const manifest = await readManifest(dir);
  if (expect) checkExpectation(dir, manifest, expect);
  const content: CheckpointContent = {
    config: manifest.config,
    weights: await readDataFile(dir, manifest.weights),
    meta: manifest.meta,
  };
  if (manifest.optimizer) {
    const { kind, state } = manifest.optimizer;
    content.optimizer = { kind, state, arrays: await readDataFile(dir, manifest.optimizer) };
  }
  return content;
}

/** Reads config, meta and the weight names and shapes from checkpoint.json, without touching the data files. */
export async function readCheckpointInfo(dir: string): Promise<CheckpointInfo> {
  const manifest = await readManifest(dir);
  return {
    config: manifest.config,
    meta: manifest.meta,
    weights: manifest.weights.arrays.map(({ name, shape }) => ({ name, shape })),
    hasOptimizer: manifest.optimizer !== undefined,
  };
}

/**
 * The model arguments a checkpoint's network was trained with, where a later version added an argument whose
 * default differs from what was in force before: a mixture saved before its priority was recorded served rows
 * in batch order (today's default is score). Loading and the report's reproduce line both read them so.
 */
export function trainedModelArgs<A extends Record<string, unknown>>(args: A): A {
  return args.dynamic === 'moe' && args.priority === undefined ? { ...args, priority: 'batch' } : args;
}

/** The config.model tag of controller checkpoints (`dynn controller train`), saved beside the runs they serve. */
export const CONTROLLER_KIND = 'dynn-controller';
/** The config.model tag of learned-gates checkpoints (`dynn gates train`). */
export const GATES_KIND = 'dynn-gates';

/** What a checkpoint's config.model tag says it holds, for messages: a controller, learned gates, or a training run. */
export function checkpointHolds(tag: string): string {
  return tag === GATES_KIND ? 'learned gates' : tag === CONTROLLER_KIND ? 'a controller' : `a training run (${tag})`;
}

/** Whether `file` is one of a checkpoint's own files (its manifest, or a weights or optimizer file beside one): never a target to write over. */
export function isCheckpointFile(file: string): boolean {
  const name = path.basename(file);
  return name === MANIFEST_FILE || (/^(weights|optimizer)-[0-9a-f]{16}\.bin$/.test(name) && isCheckpointDir(path.dirname(file)));
}

/** Whether `dir` contains a checkpoint.json (its validity is not checked). */
export function isCheckpointDir(dir: string): boolean {
  try {
    return statSync(path.join(dir, MANIFEST_FILE)).isFile();
  } catch {
    return false;
  }
}

/**
 * Save step 1 (internal, exported for crash tests): writes the content-addressed data files and returns the
 * manifest referencing them. Until step 2 runs, the previous checkpoint in `dir` stays the one that loads.
 */
export async function writeDataFiles(dir: string, content: CheckpointContent): Promise<CheckpointManifest> {
  const weights = await writeArrays(dir, 'weights', content.weights);
  const manifest: CheckpointManifest = {
    format: CHECKPOINT_FORMAT,
    formatVersion: CHECKPOINT_FORMAT_VERSION,
    config: content.config,
    meta: content.meta,
    weights,
  };
  if (content.optimizer) {
    const { kind, state, arrays } = content.optimizer;
    manifest.optimizer = { kind, state, ...(await writeArrays(dir, 'optimizer', arrays)) };
  }
  // The data files' directory entries must be durable before checkpoint.json can point at them.
  await syncDir(dir);
  return manifest;
}

/** Save step 2 (internal, exported for crash tests): atomically replaces checkpoint.json; this rename is the commit point. */
export async function commitManifest(dir: string, manifest: CheckpointManifest): Promise<void> {
  const file = path.join(dir, MANIFEST_FILE);
  const text = `${JSON.stringify(manifest, null, 2)}\n`;
  // Validate what will actually be on disk, so a save can never commit a checkpoint that fails to load.
  parseManifest(JSON.parse(text), file);
  await writeFileAtomic(file, text);
  await syncDir(dir);
}

/**
 * Save step 3 (internal, exported for crash tests): removes data files the committed manifest no longer
 * references, and temp files left by interrupted saves.
 */
export async function pruneCheckpointDir(dir: string, manifest: CheckpointManifest): Promise<void> {
  const keep = new Set([manifest.weights.file, manifest.optimizer?.file]);
  const names = await fsp.readdir(dir);
  const stale = names.filter((name) => (DATA_FILE.test(name) && !keep.has(name)) || TEMP_FILE.test(name));
  // The save is already committed; a file that cannot be removed now is garbage the next save retries.
  await Promise.all(stale.map((name) => fsp.rm(path.join(dir, name), { force: true }).catch(() => undefined)));
}

async function writeArrays(dir: string, prefix: 'weights' | 'optimizer', arrays: NamedArray[]): Promise<DataFileEntry> {
  const entries: z.infer<typeof arrayEntrySchema>[] = [];
  const seen = new Set<string>();
  let total = 0;
  for (const { name, shape, data } of arrays) {
    if (seen.has(name)) throw new Error(`saveCheckpoint: duplicate ${prefix} array name "${name}"`);
    seen.add(name);
    if (shape.some((d) => !Number.isInteger(d) || d < 0)) {
      throw new Error(`saveCheckpoint: ${prefix} array "${name}" has an invalid shape ${formatShape(shape)}`);
    }
    if (product(shape) !== data.length) {
      throw new Error(
        `saveCheckpoint: ${prefix} array "${name}" has shape ${formatShape(shape)} (${product(shape)} values) but ${data.length} values`,
      );
    }
    entries.push({ name, shape: [...shape], offset: total, length: data.length });
    total += data.length;
  }
  const packed = new Float32Array(total);
  arrays.forEach(({ data }, i) => packed.set(data, entries[i]!.offset));
  const bytes = Buffer.from(packed.buffer);
  if (!LITTLE_ENDIAN) bytes.swap32();
  const sha256 = createHash('sha256').update(bytes).digest('hex');
  const file = `${prefix}-${sha256.slice(0, 16)}.bin`;
  await writeFileAtomic(path.join(dir, file), bytes);
  return { file, byteLength: bytes.length, sha256, arrays: entries };
}

async function readManifest(dir: string): Promise<CheckpointManifest> {
  const file = path.join(dir, MANIFEST_FILE);
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch (err) {
    const code = errorCode(err);
    if (code === 'ENOENT' || code === 'ENOTDIR') {
      throw new DynnError(`no ${MANIFEST_FILE} in ${dir}${await describeMissingDir(dir)}`, { cause: err });
    }
    throw new DynnError(`cannot read ${file}: ${errorMessage(err)}`, { cause: err });
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new DynnError(`${file} is corrupt: not valid JSON (${errorMessage(err)})`, { cause: err });
  }
  return parseManifest(raw, file);
}

async function describeMissingDir(dir: string): Promise<string> {
  try {
    const stat = await fsp.stat(dir);
    return stat.isDirectory() ? ' (not a checkpoint directory)' : ' (it is not a directory)';
  } catch {
    return ' (the directory does not exist)';
  }
}

function parseManifest(raw: unknown, file: string): CheckpointManifest {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new DynnError(`${file} is not a dynn checkpoint: expected a JSON object`);
  }
  const { format, formatVersion } = raw as Record<string, unknown>;
  if (format !== CHECKPOINT_FORMAT) {
    throw new DynnError(`${file} is not a dynn checkpoint: format tag is ${JSON.stringify(format) ?? 'missing'}, expected "${CHECKPOINT_FORMAT}"`);
  }
  if (formatVersion !== CHECKPOINT_FORMAT_VERSION) {
    const newer = typeof formatVersion === 'number' && formatVersion > CHECKPOINT_FORMAT_VERSION;
    throw new DynnError(
      `${file} has checkpoint format version ${JSON.stringify(formatVersion) ?? '(missing)'}; this dynn reads version ${CHECKPOINT_FORMAT_VERSION}` +
        (newer ? ' (written by a newer dynn?)' : ''),
    );
  }
  const parsed = manifestSchema.safeParse(raw);
  if (!parsed.success) throw new DynnError(`${file} is invalid: ${summarizeIssues(parsed.error.issues)}`);
  const manifest = parsed.data;
  checkDataFileEntry(file, 'weights', manifest.weights);
  if (manifest.optimizer) checkDataFileEntry(file, 'optimizer', manifest.optimizer);
  return manifest;
}

/** Checks the array table of one data file for consistency; needs only the manifest. */
function checkDataFileEntry(file: string, what: string, entry: DataFileEntry): void {
  const fail = (msg: string): never => {
    throw new DynnError(`${file} is invalid: ${what}: ${msg}`);
  };
  if (entry.file !== `${what}-${entry.sha256.slice(0, 16)}.bin`) fail(`file name ${entry.file} does not match its sha256`);
  if (entry.byteLength % 4 !== 0) fail(`byteLength ${entry.byteLength} is not a multiple of 4`);
  const capacity = entry.byteLength / 4;
  const names = new Set<string>();
  for (const a of entry.arrays) {
    if (names.has(a.name)) fail(`duplicate array name "${a.name}"`);
    names.add(a.name);
    const size = product(a.shape);
    if (size !== a.length) fail(`array "${a.name}" has shape ${formatShape(a.shape)} with ${size} values but length ${a.length}`);
    if (a.offset + a.length > capacity) {
      fail(`array "${a.name}" (offset ${a.offset}, length ${a.length}) is out of bounds of ${entry.file} (${capacity} values)`);
    }
  }
  const sorted = entry.arrays.filter((a) => a.length > 0).sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1]!;
    const cur = sorted[i]!;
    if (cur.offset < prev.offset + prev.length) fail(`arrays "${prev.name}" and "${cur.name}" overlap in ${entry.file}`);
  }
}

function checkExpectation(dir: string, manifest: CheckpointManifest, expect: CheckpointExpectation): void {
  if (expect.model !== undefined && manifest.config.model !== expect.model) {
    throw new DynnError(`${dir}: checkpoint is for model "${manifest.config.model}", not "${expect.model}"`);
  }
  if (!expect.weights) return;
  const have = new Map(manifest.weights.arrays.map((a) => [a.name, a.shape]));
  const want = new Map(expect.weights.map((a) => [a.name, a.shape]));
  const missing = [...want].filter(([name]) => !have.has(name)).map(([name, shape]) => `${name} ${formatShape(shape)}`);
  const unexpected = [...have].filter(([name]) => !want.has(name)).map(([name, shape]) => `${name} ${formatShape(shape)}`);
  const misShaped = [...want]
    .filter(([name, shape]) => have.has(name) && formatShape(have.get(name)!) !== formatShape(shape))
    .map(([name, shape]) => `${name} (checkpoint ${formatShape(have.get(name)!)}, model ${formatShape(shape)})`);
  const parts = [
    listPart('missing', missing),
    listPart('unexpected', unexpected),
    listPart('mis-shaped', misShaped),
  ].filter((p) => p !== '');
  if (parts.length > 0) throw new DynnError(`${dir}: checkpoint weights do not match the model: ${parts.join('; ')}`);
}

/**
 * Checks that the data files checkpoint.json references exist with the sizes it records, without reading them:
 * a caller can then size what it builds by the manifest before committing to the full load.
 */
export async function checkDataFiles(dir: string): Promise<void> {
  const manifest = await readManifest(dir);
  for (const entry of [manifest.weights, manifest.optimizer]) {
    if (!entry) continue;
    const file = path.join(dir, entry.file);
    let size: number;
    try {
      size = (await fsp.stat(file)).size;
    } catch (err) {
      throw readError(file, err);
    }
    checkSize(file, entry, size);
  }
}

function readError(file: string, err: unknown): DynnError {
  if (errorCode(err) === 'ENOENT') return new DynnError(`${file} is missing (referenced by ${MANIFEST_FILE})`, { cause: err });
  return new DynnError(`cannot read ${file}: ${errorMessage(err)}`, { cause: err });
}

function checkSize(file: string, entry: DataFileEntry, size: number): void {
  if (size !== entry.byteLength) {
    const problem = size < entry.byteLength ? 'truncated' : 'wrong size';
    throw new DynnError(`${file} is ${problem}: expected ${entry.byteLength} bytes, found ${size}`);
  }
}

async function readDataFile(dir: string, entry: DataFileEntry): Promise<NamedArray[]> {
  const file = path.join(dir, entry.file);
  let bytes: Buffer;
  try {
    bytes = await fsp.readFile(file);
  } catch (err) {
    throw readError(file, err);
  }
  checkSize(file, entry, bytes.length);
  const sha256 = createHash('sha256').update(bytes).digest('hex');
  if (sha256 !== entry.sha256) {
    throw new DynnError(`${file} is corrupt: checksum mismatch (sha256 ${sha256}, expected ${entry.sha256})`);
  }
  if (!LITTLE_ENDIAN) bytes.swap32();
  return entry.arrays.map(({ name, shape, offset, length }) => {
    // Copy rather than view: the Buffer's byteOffset need not be 4-aligned, and callers may keep arrays long after.
    const data = new Float32Array(length);
    new Uint8Array(data.buffer).set(bytes.subarray(offset * 4, (offset + length) * 4));
    return { name, shape, data };
  });
}

async function syncDir(dir: string): Promise<void> {
  try {
    const handle = await fsp.open(dir, 'r');
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
  } catch {
    // Some platforms (Windows) cannot open or fsync a directory; the renames are still atomic there.
  }
}

/** Zod issues as one line, each with its field path (under `prefix`): `weights.arrays[1].shape[0]: ...`. */
export function summarizeIssues(issues: z.ZodError['issues'], prefix: readonly PropertyKey[] = []): string {
  const shown = issues.slice(0, 3).map((issue) => `${formatPath([...prefix, ...issue.path]) || '(root)'}: ${issue.message}`);
  const more = issues.length > shown.length ? ` (and ${issues.length - shown.length} more)` : '';
  return shown.join('; ') + more;
}

function formatPath(keys: readonly PropertyKey[]): string {
  return keys.map((k, i) => (typeof k === 'number' ? `[${k}]` : `${i === 0 ? '' : '.'}${String(k)}`)).join('');
}

function listPart(label: string, items: string[]): string {
  if (items.length === 0) return '';
  const more = items.length > LIST_LIMIT ? ` (and ${items.length - LIST_LIMIT} more)` : '';
  return `${label} ${items.length}: ${items.slice(0, LIST_LIMIT).join(', ')}${more}`;
}

function formatShape(shape: readonly number[]): string {
  return `[${shape.join(',')}]`;
}

function product(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

function errorCode(err: unknown): string | undefined {
  return typeof err === 'object' && err !== null && 'code' in err ? String(err.code) : undefined;
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
