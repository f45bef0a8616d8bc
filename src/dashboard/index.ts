/**
 * Dashboard: a local web app (fastify) over a folder of runs: each run's report, its training followed live,
 * and a demo page running its exported ONNX model in the browser with onnxruntime-web, throttled by a u slider
 * or a confidence cascade.
 */
export { createDashboard, startDashboard, type DashboardOptions, type RunningDashboard } from './server.js';
export { listRuns, findRun, SAVED_REPORT, type RunEntry } from './runs.js';
export { progressRecorder, readProgress, PROGRESS_FORMAT, MAX_STEPS, type Progress, type ProgressStep, type ProgressRecorder, type RecorderOptions } from './progress.js';
export { liveFragment } from './live.js';
