/**
 * Adaptive control: how much of a throttleable network runs, per input and per moment. Controllers behind one
 * interface (fixed, resource, confidence cascade, learned bandit, oracle), per-sample utilization run in
 * batches, learned gate functions g(u), and the choice of operating points on a validation split.
 */
export { actionSet, checkActions, checkOperatingPoints, operatingPoints, uKey, DEFAULT_ACTIONS } from './actions.js';
export type { Controller, ControlEnv, ControllerOptions, DecideContext, Decision } from './types.js';
export { controllers, createController, type ControllerDef } from './registry.js';
export { MixedRunner, planKey, type RunnerOptions } from './runner.js';
export { levelTable, fixedCurve, scoreSet, type LevelTable } from './table.js';
export { FixedController } from './fixed.js';
export { ResourceController } from './resource.js';
export { CascadeController, cascadeFromTable, CASCADE_DEFAULTS } from './cascade.js';
export { OracleController, oracleFromTable, oracleCurve, type OracleSummary } from './oracle.js';
export { runStages, type StageTest } from './staged.js';
export { Policy, measurePolicyLatency, type PolicyArgs } from './policy.js';
export { staticPlan } from '../models/network.js';
export { BanditController, trainBandit, reward, policyProbabilities, greedyActions, BANDIT_COSTS, BANDIT_FEEDBACKS, BANDIT_OBJECTIVES, BANDIT_DEFAULTS, resolveBanditOptions, type BanditCost, type BanditFeedback, type BanditObjective, type BanditOptions, type BanditEpoch } from './bandit.js';
export { GateSet, gatedBlocks, planFromGroups, complexity, calibratedSubnet, gatedRunner, type GateArgs, type GatedBlock } from './gates.js';
export { trainGates, maskedForward, complexityPenalty, GATE_METHODS, GATE_PENALTIES, type GateMethod, type GatePenalty, type GateTrainOptions, type GateStep } from './gate-training.js';
export { loadLatencyTable, parseLatencyTable, latencyOf, latencyAtBatch, type LatencyTable } from './latency-table.js';
export { measureLatencyTable } from './measure-latency.js';
export { saveController, loadController, saveGates, loadGates, runRef, networkFingerprint, checkCompanionTarget, CONTROLLER_KIND, GATES_KIND, type RunRef } from './store.js';
export { TemporalController, temporalPolicy, trainTemporal, trainTemporalSequences, SEQUENCE_DEFAULTS, runTemporal, isTemporal, sequencesOf, temporalFeatureSize, type TemporalEpoch, type TemporalOptions, type SequenceObjective, type SequenceOptions } from './temporal.js';
export { runController, evaluateController, reportRun, type ControlledRun, type ControllerReport } from './evaluate.js';
export { interpolateAccuracy, againstCurve, describeGap, type CurvePoint, type CurveGap } from './curve.js';
export { candidatesFromTable, CASCADE_THRESHOLDS, type CandidateOptions } from './candidates.js';
export { selectOperatingPoint, paretoFront, costOf, type Candidate, type Objective, type Selection, type CostUnit } from './select.js';
