import { DynnError } from '../util/errors.js';
import { Registry } from '../util/registry.js';
import { kebab } from '../util/format.js';
import { gatesShapeKeeping, mechanismModels, mechanisms } from '../route/mechanisms.js';
import { decisionForms } from '../route/unit.js';
import { checkCondArgs } from '../layers/condconv.js';
import type { ModelArgs, ModelDef } from './types.js';
import { checkMixture } from '../route/experts.js';

// The registry and the argument rules apart from the registrations (./zoo.ts), so that layers which build
// registered models by name (a multi-branch network's branches, adaptive resolution's backbone) import them
// without importing the zoo that registers those layers.

/** Registered models, by name. */
export const models = new Registry<ModelDef>('model');

/** `a`, `a or b`, `a, b or c`. */
const orList = (xs: readonly string[]) => (xs.length < 2 ? xs.join('') : `${xs.slice(0, -1).join(', ')} or ${xs[xs.length - 1]}`);

/** A mixture of experts' arguments (`MoeArgs`), which only its models take. */
const MOE_ARGS = ['experts', 'topK', 'capacityFactor', 'evalCapacityFactor', 'overflow', 'priority', 'importanceWeight', 'loadWeight', 'switchWeight'] as const;

const COMMON: ModelArgs = { inputShape: [28, 28, 1], numClasses: 10, groups: 8, batchNorm: true, seed: 0 };

/** A model argument as the API and the CLI name it: `topK (--top-k)`. */
const named = (key: string) => `${key} (--${kebab(key)})`;

/** The full argument set a model is built with: common defaults, the model's, then the caller's set fields. */
export function resolveModelArgs(name: string, args: ModelArgs = {}): ModelArgs {
  const def = models.get(name);
  const set = Object.fromEntries(Object.entries(args).filter(([, v]) => v !== undefined));
  const resolved = { ...COMMON, ...def.defaults, ...set };
  const shape = resolved.inputShape;
  if (!Array.isArray(shape) || shape.length !== 3 || shape.some((n) => !Number.isInteger(n) || n < 1)) {
    throw new DynnError(`inputShape must be [height, width, channels] of positive integers, got ${JSON.stringify(shape)}`);
  }
  if (!Number.isInteger(resolved.numClasses) || (resolved.numClasses as number) < 2) {
    throw new DynnError(`numClasses must be an integer >= 2, got ${resolved.numClasses}`);
  }
  if (resolved.widthRoutes !== undefined && !mechanisms.get(String(resolved.dynamic ?? 'acs-gn')).widthSwitch) {
    throw new DynnError(`widthRoutes (--width-routes) needs --dynamic width`);
  }
  if (resolved.dynamic !== undefined) {
    const m = mechanisms.get(String(resolved.dynamic));
    const needs = mechanismModels(m);
    if (needs.length && !needs.includes(name)) throw new DynnError(`--dynamic ${resolved.dynamic} needs --model ${orList(needs)}`);
    const own = mechanisms.list().find((k) => mechanismModels(mechanisms.get(k)).includes(name));
    if (own !== undefined && own !== resolved.dynamic) throw new DynnError(`${name} takes --dynamic ${own}, not ${resolved.dynamic}`);
    if (m.widthSwitch && !def.switchAfter) {
      const able = models.list().filter((k) => models.get(k).switchAfter);
      throw new DynnError(`--dynamic ${resolved.dynamic} chooses a width per sample; ${name} is not throttleable after its first stage (expected one of ${able.join(', ')})`);
    }
    if (gatesShapeKeeping(m) && !def.skippable) {
      const able = models.list().filter((k) => models.get(k).skippable);
      throw new DynnError(`--dynamic ${resolved.dynamic} ${m.spatial ? 'gates the positions of' : 'skips'} residual blocks; ${name} has no blocks to ${m.spatial ? 'gate' : 'skip'} (expected one of ${able.join(', ')})`);
    }
    if (!m.widthSwitch && !def.dynamic && !m.wrapsModel) {
      // Models with gated forms, less those built for one mechanism of their own (multi-branch).
      const able = models.list().filter((k) => models.get(k).dynamic && !mechanisms.list().some((n) => mechanismModels(mechanisms.get(n)).includes(k)));
      throw new DynnError(`--dynamic ${resolved.dynamic} needs a model with a gated form; ${name} has none (expected one of ${able.join(', ')})`);
    }
  }
  if (resolved.channelMultiple !== undefined) {
    const m = resolved.channelMultiple;
    if (!Number.isInteger(m) || (m as number) < 1) throw new DynnError(`channelMultiple must be a positive integer, got ${m}`);
    if (!def.channelMultiple) {
      throw new DynnError(`channelMultiple (--channel-multiple) needs a model whose widthwise layers round their channels (expected one of ${models.list().filter((k) => models.get(k).channelMultiple).join(', ')}), not ${name}`);
    }
    if (resolved.dynamic !== undefined) throw new DynnError(`channelMultiple (--channel-multiple) rounds the levels of a static model; --dynamic ${resolved.dynamic} does not take it`);
  }
  for (const [key, flag] of [['throttleStem', '--throttle-stem'], ['throttleBoth', '--throttle-both']] as const) {
    if (resolved[key] !== undefined && typeof resolved[key] !== 'boolean') throw new DynnError(`${key} must be true or false, got ${resolved[key]}`);
    if (resolved[key] !== true) continue;
    if (!def.throttleStem) throw new DynnError(`${key} (${flag}) needs a model with a throttleable stem (expected one of ${models.list().filter((k) => models.get(k).throttleStem).join(', ')}), not ${name}`);
    if (resolved.dynamic !== undefined) throw new DynnError(`${key} (${flag}) changes the levels of a static model; --dynamic ${resolved.dynamic} does not take it`);
  }
  if (resolved.throttleStem === true && resolved.throttleBoth === true) throw new DynnError('give one of throttleStem (--throttle-stem: the stem in place of c2) and throttleBoth (--throttle-both: the stem and c2), not both');
  if (resolved.resolutions !== undefined && resolved.dynamic !== 'resolution') throw new DynnError('--resolutions needs --dynamic resolution');
  if (resolved.branches !== undefined && name !== 'multi-branch') throw new DynnError('--branches needs --model multi-branch');
  if (resolved.decisions !== undefined) {
    if (resolved.dynamic === undefined) throw new DynnError(`decisions (--decisions ${resolved.decisions}) needs a dynamic model (--dynamic NAME)`);
    decisionForms.get(String(resolved.decisions));
    // A block skipped whole is one group: per-channel decisions would record no execution rate to hold.
    const m = mechanisms.has(String(resolved.dynamic)) ? mechanisms.get(String(resolved.dynamic)) : undefined;
    if (resolved.decisions !== 'nested' && m && gatesShapeKeeping(m)) {
      throw new DynnError(`--dynamic ${resolved.dynamic} decides ${m.spatial ? 'positions' : 'whole blocks'}: it takes --decisions nested only, got ${resolved.decisions}`);
    }
  }
  if (resolved.gateWidth !== undefined && (!Number.isInteger(resolved.gateWidth) || (resolved.gateWidth as number) < 1)) {
    throw new DynnError(`gateWidth must be a positive integer, got ${resolved.gateWidth}`);
  }
  for (const key of ['gateWidth', 'gateScale'] as const) {
    if (resolved[key] !== undefined && resolved.dynamic === undefined) throw new DynnError(`${named(key)} needs a dynamic model (--dynamic NAME)`);
  }
  if (resolved.gateScale !== undefined && !((resolved.gateScale as number) > 0 && Number.isFinite(resolved.gateScale))) {
    throw new DynnError(`gateScale must be a positive number, got ${resolved.gateScale}`);
  }
  // `experts` is shared: a mixture's experts, or a conditional convolution's kernels.
  const moe = MOE_ARGS.filter((k) => resolved[k] !== undefined && !(k === 'experts' && def.condconv));
  if (moe.length && resolved.dynamic !== 'moe') {
    const kernels = moe.includes('experts') ? `; --experts also sets the kernels of --model ${orList(models.list().filter((k) => models.get(k).condconv))}` : '';
    throw new DynnError(`${moe.map(named).join(', ')} ${moe.length > 1 ? 'need' : 'needs'} a mixture of experts (--model ${orList(mechanismModels(mechanisms.get('moe')))})${kernels}`);
  }
  if (resolved.dynamic === 'moe') {
    checkMixture(resolved.experts as number, resolved.topK as number, [resolved.capacityFactor as number, ...(resolved.evalCapacityFactor === undefined ? [] : [resolved.evalCapacityFactor as number])], String(resolved.overflow), String(resolved.priority ?? 'score'));
  }
  for (const key of ['routing', 'temperature', 'annealEpochs'] as const) {
    if (set[key] !== undefined && !def.condconv) {
      const able = models.list().filter((k) => models.get(k).condconv);
      throw new DynnError(`${named(key)} needs a model with conditional convolutions (expected one of ${able.join(', ')}), not ${name}`);
    }
  }
  if (def.condconv) checkCondArgs(resolved, name);
  if (!Number.isInteger(resolved.groups) || (resolved.groups as number) < 1) {
    throw new DynnError(`groups must be a positive integer, got ${resolved.groups}`);
  }
  return resolved;
}

