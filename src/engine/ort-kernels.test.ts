import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { ortKernelsAvailable } from './ort-kernels.js';

const glibc = process.platform === 'linux' && Boolean((process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined)?.header?.glibcVersionRuntime);

/** This environment without what would keep the raise from running or working (glibc's own settings). */
function cleanEnv(): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('MALLOC_') && !['GLIBC_TUNABLES', 'DYNN_ORT_KERNELS', 'DYNN_MALLOC_RAISED'].includes(k)));
}

/**
 * Allocates a 24 MiB ArrayBuffer (calloc) in a fresh process, after `raiseMallocThresholds()` or not, and
 * says whether it got a mapping of its own (glibc's mmap region) rather than heap that free() keeps.
 */
function ownMapping(raise: boolean): boolean {
  const script = `
    import fs from 'node:fs';
    const { raiseMallocThresholds } = await import(${JSON.stringify(new URL('./ort-kernels.js', import.meta.url).href)});
    if (${raise}) raiseMallocThresholds();
    // Anonymous read-write mappings of the block's size (up to 1 MiB over), the heap left out (brk moves its end).
    const big = () => new Set(fs.readFileSync('/proc/self/maps', 'utf8').split('\\n').filter((line) => {
      const [range, perms, , , , name] = line.trim().split(/\\s+/);
      if (!range || perms !== 'rw-p' || (name ?? '') !== '') return false;
      const [a, b] = range.split('-').map((h) => parseInt(h, 16));
      return b - a >= 24 * 2 ** 20 && b - a <= 25 * 2 ** 20;
    }).map((line) => line.split(' ')[0]));
    const before = big();
    const block = new ArrayBuffer(24 * 2 ** 20);
    new Uint8Array(block)[0] = 1;
    console.log([...big()].some((r) => !before.has(r)));
  `;
  return execFileSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', env: cleanEnv() }).trim() === 'true';
}

describe('raiseMallocThresholds', () => {
  test('a block under 30 MiB then comes from the heap glibc reuses, not a fresh mapping of its own', { skip: (!glibc && 'glibc only') || (!ortKernelsAvailable() && 'no onnxruntime-node binding') }, () => {
    // The control: in a fresh process glibc's threshold is 128 KiB and the block gets a mapping of its own (its
    // pages fresh, and handed back when freed); after the raise it comes from the heap.
    assert.equal(ownMapping(false), true);
    assert.equal(ownMapping(true), false);
  });
});
