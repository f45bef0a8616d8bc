export * from './types.js';
export { Layer, InputTooSmallError, layerClasses, layerFromConfig, type LayerConfig, type KernelInit } from './layer.js';
export { fullSel, groupSel, flattenSel, take } from './select.js';
export { Conv2D, Dense, planGroups, type Conv2DArgs, type DenseArgs } from './conv.js';
export { BatchNorm, type BatchNormArgs } from './norm.js';
export { ReLU, MaxPool, GlobalAvgPool, Flatten, type MaxPoolArgs } from './basic.js';
export {
  Composite,
  ResidualBlock,
  GroupedConv2D,
  ResNeXtBlock,
  type ResidualBlockArgs,
  type GroupedConv2DArgs,
  type ResNeXtBlockArgs,
} from './blocks.js';
export {
  DenseUnit,
  DenseTransition,
  DenseHead,
  AvgPool,
  concatSel,
  type DenseUnitArgs,
  type DenseTransitionArgs,
  type DenseHeadArgs,
  type AvgPoolArgs,
} from './dense.js';
export { SqueezeExcite, se, type SqueezeExciteArgs } from './se.js';
export { DGConv2D, dgconv2d, binaryGate, relationMatrix, type DGConv2DArgs, type GateEstimator } from './dgconv.js';
export { CondConv2D, annealTemperatures, condconv2d, checkCondArgs, type CondConv2DArgs } from './condconv.js';
export { condConv, condRouteWeights, condRoutings, im2col, type CondConvParams } from './condconv-ops.js';
