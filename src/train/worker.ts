import { parentPort, workerData } from 'node:worker_threads';
import { initEngine, type EngineName } from '../engine/backend.js';
import { createModel } from '../models/zoo.js';
import { planFromData, type PlanData } from '../models/network.js';
import { gatherBatch } from './batch.js';
import { flatLayout, gradientStep, writeFlat } from './step.js';
import type { WorkerInit } from './executor.js';

// A gradient worker: see ThreadExecutor. Messages: {type:'step', indices, plan, version} -> {type:'done', result}.
const init = workerData as WorkerInit;
const port = parentPort!;

try {
  await initEngine(init.engine as EngineName);
  const model = createModel(init.config.model, init.config.args);
  const layout = flatLayout(model);
  const weights = new Float32Array(init.weights);
  const grads = new Float32Array(init.grads);
  const per = init.data.height * init.data.width * init.data.channels;
  const images = new Float32Array(init.maxBatch * per);
  const labels = new Int32Array(init.maxBatch);
  let version = -1;
  port.on('message', (m: { type: string; indices: Int32Array; plan: PlanData; version: number }) => {
    try {
      if (m.version !== version) {
        writeFlat(model, layout, weights);
        version = m.version;
      }
      const n = gatherBatch(init.data, m.indices, images, labels);
      const result = gradientStep(model, layout, images, labels.subarray(0, n), planFromData(m.plan), grads);
      port.postMessage({ type: 'done', result });
    } catch (err) {
      port.postMessage({ type: 'error', message: err instanceof Error ? err.message : String(err) });
    }
  });
  port.postMessage({ type: 'ready' });
} catch (err) {
  port.postMessage({ type: 'error', message: err instanceof Error ? err.message : String(err) });
}
