export { train, type TrainOptions, type TrainResult, type StepProgress } from './trainer.js';
export { saveRun, loadRun, validationSplit, type EpochRecord, type TrainMeta, type LoadedRun } from './run.js';
export { calibrateBatchNorm, batchNorms, type CalibrateOptions } from './calibrate.js';
export { sampleU, learningRate, U_SCHEDULES, LR_SCHEDULES, type USchedule, type LrSchedule } from './schedule.js';
export { Optimizer, OPTIMIZERS, type OptimizerName } from './optimizer.js';
export { gradientStep, flatLayout, type StepResult, type FlatLayout } from './step.js';
export { LocalExecutor, ThreadExecutor, meanGradient, type GradientExecutor } from './executor.js';
