import { test } from 'node:test';
import assert from 'node:assert/strict';

test('the package entry points load and offer their API', async () => {
  const dynn = await import('dynn');
  for (const name of ['initEngine', 'createModel', 'train', 'loadRun', 'sweep', 'evaluate', 'calibrateBatchNorm', 'activeGroupCount', 'DynnError']) {
    assert.equal(typeof (dynn as Record<string, unknown>)[name], 'function', name);
  }
  for (const m of ['mlp-w', 'resnet-d', 'resnext-w', 'vgg-w']) assert.ok(dynn.models.has(m), m);
  assert.match(dynn.VERSION, /^\d+\.\d+\.\d+/);
  const { onnx, runtime } = await import('dynn/onnx');
  assert.equal(typeof onnx.exportOnnx, 'function');
  assert.equal(typeof runtime.OnnxModel.load, 'function');
  assert.equal(typeof (await import('dynn/report')).writeReport, 'function');
  assert.equal(typeof (await import('dynn/dashboard')).startDashboard, 'function');
  assert.equal(typeof (await import('dynn/web')).loadWebModel, 'function');
});
