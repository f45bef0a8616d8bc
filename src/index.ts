/**
 * dynn: adaptive dynamic neural networks. One set of trained weights runs at many operating points
 * (utilization u in (0, 1]); skipped work is really not done.
 *
 * Heavier parts load from their own entry points: `dynn/onnx` (ONNX export and the ONNX Runtime engine),
 * `dynn/web` (onnxruntime-web in a browser), `dynn/report` and `dynn/dashboard`.
 */
export * as engine from './engine/index.js';
export * as data from './data/index.js';
export * as layers from './layers/index.js';
export * as gating from './gating/index.js';
export * as checkpoint from './checkpoint/index.js';
export * as evaluation from './eval/index.js';
export * as training from './train/index.js';
export { initEngine } from './engine/index.js';
export { createModel, models, Network, type ModelArgs, type ModelConfig, type CostReport } from './models/index.js';
export { loadDataset, datasets } from './data/index.js';
export { train, loadRun, saveRun, calibrateBatchNorm } from './train/index.js';
export { evaluate, sweep, measureLatency } from './eval/index.js';
export { activeGroupCount, checkUtilization } from './gating/index.js';
export { DynnError } from './util/errors.js';
export { VERSION } from './version.js';
