import { createHash } from 'node:crypto';
import { CONTROLLER_KIND, GATES_KIND, checkpointHolds, loadCheckpoint, readCheckpointInfo, saveCheckpoint } from '../checkpoint/checkpoint.js';
import type { Network } from '../models/network.js';
import { DynnError } from '../util/errors.js';
import { GateSet, type GateArgs } from './gates.js';
import { Policy, type PolicyArgs } from './policy.js';

/** Which trained network a controller or gates checkpoint was made for. */
export interface RunRef {
  /** Where the run was loaded from when the checkpoint was made (informative). */
  path: string;
  model: string;
  /** sha256 (first 16 hex digits) over the network's weight names, shapes and values. */
  fingerprint: string;
}

export { CONTROLLER_KIND, GATES_KIND } from '../checkpoint/checkpoint.js';

/** A fingerprint of a network's weights: equal for the same trained network, different for any other. */
export function networkFingerprint(model: Network): string {
  const h = createHash('sha256');
  for (const w of model.getWeights()) {
    h.update(`${w.name}[${w.shape.join(',')}]`);
    h.update(new Uint8Array(w.data.buffer, w.data.byteOffset, w.data.byteLength));
  }
  return h.digest('hex').slice(0, 16);
}

/** The reference a checkpoint stores to the network it was trained for. */
export function runRef(model: Network, path: string): RunRef {
  return { path, model: model.config.model, fingerprint: networkFingerprint(model) };
}

async function readKind(dir: string, kind: string, what: string): Promise<RunRef> {
  const info = await readCheckpointInfo(dir);
  if (info.config.model !== kind) {
    throw new DynnError(`${dir} is not a ${what} checkpoint (it holds ${checkpointHolds(info.config.model)})`);
  }
  const ref = info.meta.run as RunRef | undefined;
  if (!ref || typeof ref.fingerprint !== 'string') throw new DynnError(`${dir}: the ${what} checkpoint does not say which network it was made for`);
  return ref;
}

function checkRef(dir: string, what: string, ref: RunRef, model: Network, runPath: string): void {
  const fp = networkFingerprint(model);
  if (ref.fingerprint !== fp || ref.model !== model.config.model) {
    throw new DynnError(
      `${dir}: this ${what} was made for another network (${ref.model} from ${ref.path}, weights ${ref.fingerprint}), ` +
        `not ${runPath} (${model.config.model}, weights ${fp}); train one for this run`,
    );
  }
}

/**
 * Refuses a folder to save a controller or gates checkpoint (`kind`) in, before any training: one that holds
 * another kind of checkpoint (a training run, the run being read) or other files always, an earlier checkpoint
 * of the same kind unless `force`. Saving prunes the folder's old weight files, so anything else would be lost.
 */
export async function checkCompanionTarget(dir: string, kind: typeof CONTROLLER_KIND | typeof GATES_KIND, force = false): Promise<void> {
  const { promises: fsp } = await import('node:fs');
  let entries: string[];
  try {
    entries = await fsp.readdir(dir);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return;
    if (code === 'ENOTDIR') throw new DynnError(`--out ${dir} is a file; give the folder to save in`);
    throw err;
  }
  if (entries.length === 0) return;
  const what = kind === GATES_KIND ? 'gates' : 'a controller';
  let tag: string | null = null;
  try {
    tag = (await readCheckpointInfo(dir)).config.model;
  } catch {
    throw new DynnError(`--out ${dir} is a folder with other files in it (no checkpoint of ${what}); give a new or empty folder`);
  }
  if (tag !== kind) throw new DynnError(`--out ${dir} holds ${checkpointHolds(tag)}; save ${what} in a folder of its own`);
  if (!force) throw new DynnError(`--out ${dir} holds ${checkpointHolds(tag)} already; give another --out, or --force to replace it`);
}

/** Saves a trained controller policy with a reference to its network (atomic). */
export async function saveController(dir: string, policy: Policy, ref: RunRef, meta: Record<string, unknown> = {}): Promise<void> {
  // Replacing an earlier controller is the caller's decision (the CLI asks for --force); anything else never.
  await checkCompanionTarget(dir, CONTROLLER_KIND, true);
  await saveCheckpoint(dir, { config: { model: CONTROLLER_KIND, args: { ...policy.args } }, weights: policy.net.getWeights(), meta: { ...meta, run: ref } });
}

/** Loads a controller checkpoint for `model` (loaded from `runPath`); fails clearly if made for another network. */
export async function loadController(dir: string, model: Network, runPath: string): Promise<{ policy: Policy; meta: Record<string, unknown> }> {
  const ref = await readKind(dir, CONTROLLER_KIND, 'controller');
  checkRef(dir, 'controller', ref, model, runPath);
  const info = await readCheckpointInfo(dir);
  const policy = new Policy(info.config.args as unknown as PolicyArgs);
  try {
    const ckpt = await loadCheckpoint(dir, { weights: policy.net.weights().map((w) => ({ name: w.name, shape: w.variable.shape })) });
    policy.net.setWeights(ckpt.weights);
    return { policy, meta: ckpt.meta };
  } catch (err) {
    policy.dispose();
    throw err;
  }
}

/** Saves learned gates with a reference to their network (atomic). */
export async function saveGates(dir: string, gates: GateSet, ref: RunRef, meta: Record<string, unknown> = {}): Promise<void> {
  await checkCompanionTarget(dir, GATES_KIND, true);
  await saveCheckpoint(dir, { config: { model: GATES_KIND, args: { ...gates.args } }, weights: gates.getWeights(), meta: { ...meta, run: ref } });
}

/** Loads learned gates for `model` (loaded from `runPath`); fails clearly if made for another network. */
export async function loadGates(dir: string, model: Network, runPath: string): Promise<{ gates: GateSet; meta: Record<string, unknown> }> {
  const ref = await readKind(dir, GATES_KIND, 'gates');
  checkRef(dir, 'gates', ref, model, runPath);
  const info = await readCheckpointInfo(dir);
  const gates = new GateSet(info.config.args as unknown as GateArgs);
  try {
    const ckpt = await loadCheckpoint(dir, { weights: gates.weights().map((w) => ({ name: w.name, shape: w.variable.shape })) });
    gates.setWeights(ckpt.weights);
    return { gates, meta: ckpt.meta };
  } catch (err) {
    gates.dispose();
    throw err;
  }
}
