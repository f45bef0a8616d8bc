export { initEngine, engineName } from './backend.js';
export type { EngineName } from './backend.js';
export { registerWasmTrainingKernels } from './wasm-kernels.js';
