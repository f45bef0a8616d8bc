import path from 'node:path';
import { loadDataset } from '../data/datasets.js';
import type { ImageSet } from '../data/types.js';
import { createModel } from '../models/zoo.js';
import type { Network } from '../models/network.js';
import { saveOnnx } from '../export/export.js';
import type { OnnxMetadata } from '../export/metadata.js';
import type { Policy } from '../control/policy.js';
import { TemporalController, temporalPolicy } from '../control/temporal.js';
import { gatherBatch } from '../train/batch.js';

/** Test fixture: a network with an untrained temporal controller, exported together, and stream frames. */
export interface TemporalFixture {
  /** Three sequences of 100 fashion-mnist-stream test frames. */
  set: ImageSet;
  model: Network;
  policy: Policy;
  controller: TemporalController;
  actions: number[];
  /** The exported file and its metadata. */
  file: string;
  meta: OnnxMetadata;
}

/** Builds the fixture and exports it to `dir/stream.onnx` (call after `initEngine`). */
export async function temporalFixture(dir: string): Promise<TemporalFixture> {
  const actions = [0.25, 0.5, 0.75, 1];
  const set = (await loadDataset('fashion-mnist-stream', { trainLimit: 1, testLimit: 300 })).test;
  const model = createModel('mlp-w', { inputShape: [28, 28, 1], numClasses: 10 });
  const policy = temporalPolicy(10, actions, { seed: 5 });
  // Larger weights spread an untrained policy's answers over the actions, so a run mixes operating points.
  policy.net.setWeights(policy.net.getWeights().map((w) => ({ ...w, data: w.data.map((v) => v * 6) })));
  policy.weightsChanged();
  const controller = new TemporalController(policy);
  const file = path.join(dir, 'stream.onnx');
  const meta = await saveOnnx(model, file, { controller: { network: policy.net, actions, temporal: { start: controller.start } } });
  return { set, model, policy, controller, actions, file, meta };
}

/** Frame `f` of a set as the runtime takes it (floats, NHWC), the conversion `runTemporal` uses. */
export function frameOf(set: ImageSet, f: number): Float32Array {
  const frame = new Float32Array(set.height * set.width * set.channels);
  gatherBatch(set, [f], frame, new Int32Array(1));
  return frame;
}
