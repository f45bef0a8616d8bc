import { Registry } from '../util/registry.js';
import { DynnError } from '../util/errors.js';
import { BanditController } from './bandit.js';
import { CascadeController } from './cascade.js';
import { FixedController } from './fixed.js';
import { OracleController } from './oracle.js';
import { ResourceController } from './resource.js';
import type { ControlEnv, Controller, ControllerOptions } from './types.js';

/** A registered controller: how to create it, and what it is for. */
export interface ControllerDef {
  /** One line for help and docs. */
  description: string;
  /** True for controllers that read labels (the oracle): evaluation only, never deployable. */
  evaluationOnly?: boolean;
  create(env: ControlEnv, options: ControllerOptions): Controller;
}

/** Controllers by name; a new controller is one `register` call. */
export const controllers = new Registry<ControllerDef>('controller');

controllers.register('fixed', {
  description: 'one utilization u for every input',
  create: (_env, o) => new FixedController(o.u ?? 1),
});
controllers.register('resource', {
  description: 'u from the context: a battery level, or a latency budget through a measured latency table',
  create: (env, o) => new ResourceController(env.runner, o.latencyTable, o.actions),
});
controllers.register('cascade', {
  description: 'run at a low u, re-run at the next stage while the top softmax probability is below a threshold',
  create: (env, o) => new CascadeController(env.runner, o.stages, o.threshold),
});
controllers.register('bandit', {
  description: 'a small CNN trained as a contextual bandit picks u per input (dynn controller train)',
  create: (_env, o) => {
    if (!o.policy) throw new DynnError('the bandit controller needs a trained policy: pass a controller checkpoint directory (dynn controller train)');
    return new BanditController(o.policy, o.allowed);
  },
});
controllers.register('oracle', {
  description: 'the lowest u at which the network is right (reads labels: evaluation only)',
  evaluationOnly: true,
  create: (env, o) => new OracleController(env.runner, o.actions),
});

/** Creates a registered controller; an unknown name fails with the list of known ones. */
export function createController(name: string, env: ControlEnv, options: ControllerOptions = {}): Controller {
  return controllers.get(name).create(env, options);
}
