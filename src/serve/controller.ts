import * as tf from '@tensorflow/tfjs-core';
import { initEngine } from '../engine/backend.js';
import { BanditController } from '../control/bandit.js';
import { loadController } from '../control/store.js';
import type { OnnxMetadata } from '../export/metadata.js';
import { loadRun } from '../train/run.js';
import { DynnError } from '../util/errors.js';
import type { SampleController } from './policy.js';

/** A loaded per-input controller and how to free it. */
export interface LoadedController {
  controller: SampleController;
  dispose(): void;
}

/**
 * Loads a bandit controller trained by `dynn controller train` for the `controller` policy. The controller
 * checkpoint names the trained network it was made for, so the run the model was exported from is read to
 * check it (then freed); the controller's small CNN runs with TF.js in the server's thread.
 */
export async function loadServeController(dir: string, runDir: string, meta: OnnxMetadata): Promise<LoadedController> {
  await initEngine('auto');
  const { model } = await loadRun(runDir);
  let loaded: Awaited<ReturnType<typeof loadController>>;
  try {
    if (model.config.model !== meta.model.model || JSON.stringify(model.config.args) !== JSON.stringify(meta.model.args)) {
      throw new DynnError(`${runDir} holds a ${model.config.model} network with other settings than the served model (${meta.model.model}); give the run the model was exported from`);
    }
    loaded = await loadController(dir, model, runDir);
  } finally {
    model.dispose();
  }
  const policy = loaded.policy;
  const bandit = new BanditController(policy);
  const [c, h, w] = meta.input.shape;
  const controller: SampleController = (images, count) => {
    const x = tf.tidy(() => tf.transpose(tf.tensor4d(images, [count, c, h, w]), [0, 2, 3, 1]));
    try {
      return bandit.decide(x).u;
    } finally {
      x.dispose();
    }
  };
  return { controller, dispose: () => policy.dispose() };
}
