import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { BackendWasm } from '@tensorflow/tfjs-backend-wasm';
// tfjs-core's Node bundle registers no gradients; the union package's bundle registers them on the shared core.
import '@tensorflow/tfjs';
import { DynnError } from '../util/errors.js';
import { registerWasmTrainingKernels } from './wasm-kernels.js';

// PROD silences TF.js's console hints (e.g. "install tfjs-node"): dynn chooses the engine itself.
tf.env().set('PROD', true);

/** A TF.js backend dynn can train on, fastest first. */
export type EngineName = 'tensorflow' | 'wasm' | 'cpu';

const ENGINES: readonly EngineName[] = ['tensorflow', 'wasm', 'cpu'];
const CHOICES = ['auto', ...ENGINES] as const;

/** Held in a variable so TypeScript does not try to resolve an optional package that is usually absent. */
const TFJS_NODE = '@tensorflow/tfjs-node';

let active: EngineName | undefined;
let queue: Promise<unknown> = Promise.resolve();

function isEngineName(name: string): name is EngineName {
  return (ENGINES as readonly string[]).includes(name);
}

function parseChoice(name: string): EngineName | 'auto' {
  if (name === 'auto' || isEngineName(name)) return name;
  throw new DynnError(`unknown backend "${name}"; expected one of ${CHOICES.join(', ')}`);
}

async function tryTensorflow(): Promise<boolean> {
  try {
    await import(TFJS_NODE);
  } catch {
    return false;
  }
  return tf.findBackendFactory('tensorflow') != null && (await tf.setBackend('tensorflow'));
}

async function activate(name: EngineName): Promise<boolean> {
  switch (name) {
    case 'tensorflow':
      return tryTensorflow();
    case 'wasm':
      registerWasmTrainingKernels();
      return tf.setBackend('wasm');
    case 'cpu':
      return tf.setBackend('cpu');
  }
}

async function start(choice: EngineName | 'auto'): Promise<EngineName> {
  if (choice !== 'auto') {
    if (await activate(choice)) return choice;
    const hint = choice === 'tensorflow' ? ' (is @tensorflow/tfjs-node installed?)' : '';
    throw new DynnError(`backend "${choice}" could not be started${hint}`);
  }
  for (const name of ENGINES) {
    if (await activate(name)) return name;
  }
  throw new DynnError('no TF.js backend could be started (tried tensorflow, wasm, cpu)');
}

/**
 * Chooses and starts the TF.js backend. 'auto' (the default; the DYNN_BACKEND environment variable overrides
 * it when set) tries @tensorflow/tfjs-node, then wasm with dynn's training kernels, then cpu. Idempotent:
 * once an engine runs, 'auto' or that engine's name returns it; an explicit other name switches to it.
 * Calls are serialised. Rejects with a DynnError for an unknown name or an engine that cannot start.
 */
export async function initEngine(preferred: EngineName | 'auto' = 'auto'): Promise<EngineName> {
  const fromEnv = process.env.DYNN_BACKEND?.trim();
  const asked = parseChoice(preferred);
  const choice = asked === 'auto' && fromEnv ? parseChoice(fromEnv) : asked;
  const run = queue.then(async () => {
    if (active != null) {
      // Someone may have switched with tf.setBackend since; report what actually runs.
      const current = engineName();
      if (choice === 'auto' && isEngineName(current)) return (active = current);
      if (choice !== 'auto' && choice === current) return (active = choice);
    }
    active = await start(choice);
    return active;
  });
  queue = run.catch(() => undefined);
  return run;
}

/** The name of the active TF.js backend, even if set outside initEngine, or 'none' before any is set. */
export function engineName(): string {
  // tf.getBackend() would start a backend as a side effect; the engine's field only reports.
  return tf.engine().backendName ?? 'none';
}

/**
 * A float32 tensor's values without a copy where the backend allows it: on wasm a view into the wasm heap (valid
 * until the next TF.js op, which may grow and detach the heap), elsewhere `dataSync()`. Reading gradients with
 * `dataSync()` allocated a fresh copy of each, each step, in each worker, and that garbage kept V8's concurrent
 * GC busy on the cores the optimizer and the next step need (it doubled the optimizer's time).
 */
export function floatView(t: tf.Tensor): Float32Array {
  const backend = tf.backend();
  if (t.dtype !== 'float32') throw new DynnError(`internal: floatView of a ${t.dtype} tensor`);
  return backend instanceof BackendWasm ? (backend.typedArrayFromHeap(t) as Float32Array) : (t.dataSync() as Float32Array);
}
