export { evaluate, type EvalResult, type EvalOptions } from './evaluate.js';
export { measureLatency, median, type LatencyOptions } from './latency.js';
export { sweep, type SweepPoint, type SweepOptions } from './sweep.js';
export { mixtureStats, hasMixtures, type MixtureStats, type MixtureLayerStats } from './mixtures.js';
