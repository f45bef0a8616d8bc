import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';

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
  assert.equal(typeof (await import('dynn/serve')).DynnServer.create, 'function');
});

test('dynn/serve runs on ONNX Runtime alone: importing it does not load TF.js', () => {
  const probe = "await import('dynn/serve'); console.log(typeof globalThis._tfengine)";
  assert.equal(execFileSync(process.execPath, ['--input-type=module', '-e', probe]).toString().trim(), 'undefined');
  // The probe can fail: the root entry does load TF.js.
  const root = "await import('dynn'); console.log(typeof globalThis._tfengine)";
  assert.equal(execFileSync(process.execPath, ['--input-type=module', '-e', root]).toString().trim(), 'object');
});
