import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';

const glibc = process.platform === 'linux' && Boolean((process.report?.getReport() as { header?: { glibcVersionRuntime?: string } }).header?.glibcVersionRuntime);

/**
 * Allocates a 24 MiB ArrayBuffer (calloc) in a fresh process, after `raiseMallocThresholds()` or not, and
 * says whether it got a mapping of its own (glibc's mmap region) rather than heap that free() keeps.
 */
function ownMapping(raise: boolean): boolean {
  const script = `
    import fs from 'node:fs';
    const { raiseMallocThresholds } = await import(${JSON.stringify(new URL('./ort-kernels.js', import.meta.url).href)});
    if (${raise}) raiseMallocThresholds();
    // Anonymous mappings of 20 MiB or more, the heap left out (brk moves its end).
    const big = () => new Set(fs.readFileSync('/proc/self/maps', 'utf8').split('\\n').filter((line) => {
      const [range, , , , , name] = line.trim().split(/\\s+/);
      if (!range || (name ?? '') !== '') return false;
      const [a, b] = range.split('-').map((h) => parseInt(h, 16));
      return b - a >= 20 * 2 ** 20;
    }).map((line) => line.split(' ')[0]));
    const before = big();
    const block = new ArrayBuffer(24 * 2 ** 20);
    new Uint8Array(block)[0] = 1;
    console.log([...big()].some((r) => !before.has(r)));
  `;
  return execFileSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' }).trim() === 'true';
}

describe('raiseMallocThresholds', () => {
  test('a block under 30 MiB then comes from the heap glibc reuses, not a fresh mapping of its own', { skip: !glibc && 'glibc only' }, () => {
    // The control: with glibc's default threshold (128 KiB) the block is mapped on its own, and its pages are
    // fresh each time; that is what the raise removes.
    assert.equal(ownMapping(false), true);
    assert.equal(ownMapping(true), false);
  });
});
