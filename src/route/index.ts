/**
 * Routing: the one place where a batch is split by per-sample decisions, each part run as a smaller batch,
 * and the outputs put back in input order (see `dispatch.ts`). Every per-sample mechanism stands on it.
 */
export { partition, assemble, dispatch, dispatchAsync, dispatchFrom, dispatchFromAsync, dispatchPadded, dispatchPaddedAsync, padByRoute, arrayRows, rowsOf, type Partition, type PaddedLayout, type RowOps } from './dispatch.js';
export { tensorRows, dispatchTensor, dispatchTensorFrom, dispatchTensorPadded } from './tensor.js';
export { nestedCounts } from './count.js';
export { routeSwitch, routeLoss, routeProbability, smallestRight, type Switch, type SwitchOptions } from './switch.js';
export { decideRoutes, runRoutes, type RouteRun } from './routes.js';
