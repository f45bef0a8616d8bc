export { sandwichPlans, narrowestU, type SandwichOptions } from './sandwich.js';
export { distillationLoss, softTargetKl, checkDistill, type DistillSettings } from './distill.js';
export { exitRules, leaves, neverLeaves, softmaxRow, settleExit, exitScores, exitDecisions, perExitThresholds, type ExitRule } from './rules.js';
export { EarlyExitRunner, argmaxRows, type ExitRun } from './runner.js';
export { exitTable, simulateExits, fitThresholds, exitCandidates, type ExitTable, type ExitOutcome, type FittedPolicy, type ExitCandidate } from './budget.js';
export { sweepExits, type ExitSweep, type ExitSweepPoint, type ExitSweepOptions } from './exit-sweep.js';
export { calibrateRun, type CalibrateRunOptions, type CalibrateRunResult } from './calibrate.js';
