import { parentPort, workerData } from 'node:worker_threads';
import { initEngine, type EngineName } from '../engine/backend.js';
import { createModel } from '../models/zoo.js';
import { planFromData } from '../models/network.js';
import { gatherBatch } from './batch.js';
import { flatLayout, gradientStep, loadStatistics, stepContext, writeFlat } from './step.js';
import { applyUpdate } from './optimizer.js';
import type { StepMessage, UpdateMessage, WorkerInit } from './executor.js';

// A gradient worker: see ThreadExecutor. Messages: StepMessage -> {type:'done', result}; UpdateMessage -> {type:'updated'}.
const init = workerData as WorkerInit;
const port = parentPort!;

try {
  await initEngine(init.engine as EngineName);
  const model = createModel(init.config.model, init.config.args);
  const layout = flatLayout(model);
  const weights = new Float32Array(init.weights);
  const parts = init.grads.map((g) => new Float32Array(g));
  const grads = parts[init.index];
  const per = init.data.height * init.data.width * init.data.channels;
  const images = new Float32Array(init.maxBatch * per);
  const labels = new Int32Array(init.maxBatch);
  // The teacher runs frozen (a sliced copy, BatchNorm folded): inference only, no gradient tape.
  const teacher = init.teacher ? createModel(init.teacher.config.model, init.teacher.config.args) : null;
  teacher?.setWeights(init.teacher!.weights);
  const context = stepContext({ teacher: teacher ? { model: teacher, settings: init.teacher!.settings } : undefined, exitWeights: init.exitWeights });
  teacher?.dispose();
  let version = -1;
  port.on('message', (m: StepMessage | UpdateMessage) => {
    try {
      if (m.type === 'update') {
        applyUpdate(m.spec, weights, parts, m.lo, m.hi);
        port.postMessage({ type: 'updated' });
        return;
      }
      if (m.version !== version) {
        writeFlat(model, layout, weights);
        version = m.version;
      }
      if (m.statistics) loadStatistics(model, m.statistics);
      const n = gatherBatch(init.data, m.indices, images, labels);
      const work = { plans: m.plans.map(planFromData), inplaceDistill: m.inplaceDistill, inplaceAlpha: m.inplaceAlpha, routing: m.routing, gatesOnly: m.gatesOnly };
      const result = gradientStep(model, layout, images, labels.subarray(0, n), work, grads, context, m.offset);
      port.postMessage({ type: 'done', result });
    } catch (err) {
      port.postMessage({ type: 'error', message: err instanceof Error ? err.message : String(err) });
    }
  });
  port.postMessage({ type: 'ready' });
} catch (err) {
  port.postMessage({ type: 'error', message: err instanceof Error ? err.message : String(err) });
}
