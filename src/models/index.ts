export { Network, planToData, planFromData, type ModelConfig, type NamedArray, type PlanOptions, type CostReport, type PlanData } from './network.js';
export { models, createModel, resolveModelArgs, type ModelArgs, type ModelDef } from './zoo.js';
export { ExitHead, exitSegments, exitCount, exitCosts, forwardExits, withExits, type ExitHeadArgs, type ExitCost, type ExitSegments } from './exits.js';
