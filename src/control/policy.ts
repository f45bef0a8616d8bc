import * as tf from '@tensorflow/tfjs-core';
import { Network, staticPlan } from '../models/network.js';
import { opTensors, type Subnet } from '../models/subnet.js';
import { Conv2D, Dense, Flatten, ReLU, type Layer } from '../layers/index.js';
import { Registry } from '../util/registry.js';
import { DynnError } from '../util/errors.js';
import { checkActions, checkOperatingPoints } from './actions.js';
import { median } from '../eval/latency.js';

/** The architecture of a controller network F_theta. */
export interface PolicyArgs {
  /** Per-sample input shape [H, W, C], the controlled network's. */
  inputShape: number[];
  /** The actions u_k its outputs stand for, ascending. */
  actions: number[];
  /**
   * A temporal controller's input resolution (height) of each action, parallel to `actions` (then sorted by u,
   * then r; a u may repeat); absent, every action runs at the input's resolution.
   */
  resolutions?: number[];
  /** Filters of its two stride-2 convolutions (default [8, 16]). */
  widths?: number[];
  /** Hidden units of its dense layer (default 32). */
  hidden?: number;
  /** Seed of the initial weights (default 0). */
  seed?: number;
  /**
   * The registered architecture (`policyArchitectures`): `cnn` (default), the DTNN's small CNN on the input;
   * `mlp`, two dense layers on a feature vector (`inputShape` [D]: the temporal controller's view of the
   * previous frame).
   */
  architecture?: string;
}

/** The layers of a policy network whose K outputs stand for its actions. */
export const policyArchitectures = new Registry<(args: PolicyArgs, K: number) => Layer[]>('policy architecture');

policyArchitectures.register('cnn', (args, K) => {
  const [w1, w2] = args.widths ?? [8, 16];
  return [
    new Conv2D('policy.conv1', { filters: w1, kernelSize: 3, strides: 2, useBias: true, init: 'he-normal' }),
    new ReLU('policy.relu1', {}),
    new Conv2D('policy.conv2', { filters: w2, kernelSize: 3, strides: 2, useBias: true, init: 'he-normal' }),
    new ReLU('policy.relu2', {}),
    new Flatten('policy.flatten', {}),
    new Dense('policy.fc', { units: args.hidden ?? 32, init: 'he-normal' }),
    new ReLU('policy.fc.relu', {}),
    new Dense('policy.logits', { units: K, init: 'he-normal' }),
  ];
});

policyArchitectures.register('mlp', (args, K) => [
  new Dense('policy.fc', { units: args.hidden ?? 32, init: 'he-normal' }),
  new ReLU('policy.fc.relu', {}),
  new Dense('policy.logits', { units: K, init: 'he-normal' }),
]);


/**
 * The controller network F_theta(x) (DTNN Eq. 13): a small CNN (two stride-2 3x3 convolutions, a dense
 * layer; or, for the temporal controller, an MLP on the previous frame's features) whose K outputs are the
 * logits of pi(u_k | x) or, as a reward model, each action's expected reward. It is a few hundred times cheaper than the network
 * it controls, and its MACs are added to every cost the controller reports.
 */
export class Policy {
  readonly net: Network;
  readonly actions: number[];
  /** Each action's input resolution, when the actions are operating points (u, r). */
  readonly resolutions?: number[];
  private frozen: Subnet | null = null;

  constructor(readonly args: PolicyArgs) {
    if (args.resolutions) {
      checkOperatingPoints(args.actions, args.resolutions);
      this.actions = [...args.actions];
      this.resolutions = [...args.resolutions];
    } else {
      this.actions = checkActions(args.actions);
      if (this.actions.join() !== args.actions.join()) throw new DynnError('policy actions must be given ascending');
    }
    const architecture = args.architecture ?? 'cnn';
    const layers = policyArchitectures.get(architecture)(args, this.actions.length);
    this.net = new Network({ model: `controller-${architecture}`, args: { ...args } }, args.inputShape, layers, args.seed ?? 0);
  }

  /** MACs of one decision. */
  get macs(): number {
    return this.net.cost(staticPlan()).macs;
  }

  /** Logits of pi(u | x) for a batch, differentiable (call inside `tf.tidy` / `variableGrads`). */
  logits(x: tf.Tensor): tf.Tensor2D {
    return this.net.forward(x, staticPlan());
  }

  /** Action probabilities for a batch through the frozen copy (inference), as a new tensor. */
  probabilities(x: tf.Tensor): tf.Tensor2D {
    if (!this.frozen) {
      this.frozen = this.net.subnet(staticPlan());
      // Built on first use, possibly inside a caller's tf.tidy: the copy outlives that scope.
      for (const t of opTensors(this.frozen.ops)) tf.keep(t);
    }
    const sub = this.frozen;
    return tf.tidy(() => tf.softmax(sub.predict(x)));
  }

  /** Drops the frozen copy after the weights changed. */
  weightsChanged(): void {
    this.frozen?.dispose();
    this.frozen = null;
  }

  dispose(): void {
    this.weightsChanged();
    this.net.dispose();
  }
}

/** Median latency (ms) of one policy decision for a batch, on its frozen copy (TF.js). */
export function measurePolicyLatency(policy: Policy, batch: number, options: { reps?: number; warmup?: number } = {}): number {
  const reps = options.reps ?? 10;
  const warmup = options.warmup ?? 3;
  const x = tf.randomUniform([batch, ...policy.args.inputShape], 0, 1, 'float32', 7);
  const times: number[] = [];
  try {
    for (let i = 0; i < warmup + reps; i++) {
      const t0 = performance.now();
      const p = policy.probabilities(x);
      p.dataSync();
      p.dispose();
      if (i >= warmup) times.push(performance.now() - t0);
    }
  } finally {
    x.dispose();
  }
  return median(times);
}
