import { BatchNorm, Conv2D, Dense, DenseHead, GlobalAvgPool, ReLU } from '../layers/index.js';
import { Network } from '../models/network.js';
import { GatedResidualBlock } from './residual.js';
import { GatedDenseUnit } from './dense.js';

/** Inner groups of the test networks' gated units. */
export const TEST_GROUPS = 4;

/**
 * A small network for the routing tests: a stem and two gated blocks (the second with a stride and a
 * projection) whose gates are `mechanism`'s, deciding in `decisions` form, on 8x8x2 inputs in 3 classes.
 */
export function gatedTestNet(mechanism = 'acs-gn', gateWidth = 4, decisions?: string): Network {
  const L = TEST_GROUPS + 1;
  const gate = { groups: TEST_GROUPS, mechanism, gateWidth, levels: L, decisions };
  const layers = [
    new Conv2D('stem.conv', { filters: 8, kernelSize: 3 }),
    new BatchNorm('stem.bn', { levels: L }),
    new ReLU('stem.relu', {}),
    new GatedResidualBlock('b1', { filters: 8, ...gate }),
    new GatedResidualBlock('b2', { filters: 16, strides: 2, ...gate }),
    new GlobalAvgPool('gap', {}),
    new Dense('classifier', { units: 3 }),
  ];
  return new Network({ model: 'test', args: { dynamic: mechanism } }, [8, 8, 2], layers, 0);
}

/** The dense counterpart of `gatedTestNet`: a stem and two gated dense units (growth 4, bottleneck 8), BN-ReLU-GAP-classifier. */
export function gatedDenseTestNet(mechanism = 'acs-gn', gateWidth = 4, decisions?: string): Network {
  const L = TEST_GROUPS + 1;
  const gate = { growth: 4, bottleneck: 8, groups: TEST_GROUPS, mechanism, gateWidth, levels: L, decisions };
  const layers = [
    new Conv2D('stem.conv', { filters: 8, kernelSize: 3 }),
    new GatedDenseUnit('u1', gate),
    new GatedDenseUnit('u2', gate),
    new DenseHead('final', { units: 3, levels: L }),
  ];
  return new Network({ model: 'test', args: { dynamic: mechanism } }, [8, 8, 2], layers, 0);
}

/** A deterministic batch of `n` inputs and labels for the test networks, as a training step takes them. */
export function testBatch(n = 8): { images: Float32Array; labels: Int32Array } {
  return { images: Float32Array.from({ length: n * 128 }, (_, i) => Math.sin(i * 0.37)), labels: Int32Array.from({ length: n }, (_, i) => i % 3) };
}
