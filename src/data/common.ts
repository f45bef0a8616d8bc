import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { DynnError } from '../util/errors.js';
import { head } from './imageset.js';
import type { Dataset, LoadOptions } from './types.js';

/** Checks a user-given limit or size: undefined, or a positive integer. `what` names it in the error. */
export function checkLimit(value: number | undefined, what: string): number | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'number' || !Number.isInteger(value) || value <= 0) {
    throw new DynnError(`${what} must be a positive integer, got ${String(value)}`);
  }
  return value;
}

/** Validates `trainLimit` and `testLimit` of `opts`; loaders call it before any expensive work. */
export function checkLimits(opts: LoadOptions): void {
  checkLimit(opts.trainLimit, 'trainLimit');
  checkLimit(opts.testLimit, 'testLimit');
}

/** Keeps the first `trainLimit` / `testLimit` samples of each split (views, no copy). */
export function applyLimits(ds: Dataset, opts: LoadOptions): Dataset {
  const trainLimit = checkLimit(opts.trainLimit, 'trainLimit');
  const testLimit = checkLimit(opts.testLimit, 'testLimit');
  return {
    ...ds,
    train: trainLimit === undefined ? ds.train : head(ds.train, trainLimit),
    test: testLimit === undefined ? ds.test : head(ds.test, testLimit),
  };
}

/**
 * The directories a file-backed loader searches, in order: the folder the user named (`opts.dataDir`, else
 * `DYNN_DATA`), as is and with `subdir` appended; only when neither is set, `fallbacks`. A named folder is
 * never passed over for the system's copy: that would train on other data than the user asked for.
 */
export function searchDirs(opts: LoadOptions, subdir: string, fallbacks: string[] = []): string[] {
  const root = opts.dataDir ?? (process.env.DYNN_DATA || undefined);
  return root === undefined ? [...fallbacks] : [path.resolve(root), path.resolve(root, subdir)];
}

/** Where the searched folder came from, for error messages: `--data-dir`, `DYNN_DATA=...`, or nothing. */
export function dataDirSource(opts: LoadOptions): string | undefined {
  if (opts.dataDir !== undefined) return '--data-dir';
  return process.env.DYNN_DATA ? `DYNN_DATA=${process.env.DYNN_DATA}` : undefined;
}

/** Whether `file` exists and is a regular file (or a symlink to one). */
export async function isFile(file: string): Promise<boolean> {
  try {
    return (await fsp.stat(file)).isFile();
  } catch {
    return false;
  }
}

/** Whether `dir` exists and is a directory. */
export async function isDir(dir: string): Promise<boolean> {
  try {
    return (await fsp.stat(dir)).isDirectory();
  } catch {
    return false;
  }
}

/**
 * Finds the first directory of `dirs` holding every required file, where each required file may go by any
 * of its accepted names. Returns the resolved paths, or a line per directory saying what it lacked.
 */
export async function findFiles(
  dirs: string[],
  required: string[][],
): Promise<{ files: string[] } | { report: string[] }> {
  const report: string[] = [];
  for (const dir of dirs) {
    if (!(await isDir(dir))) {
      report.push(`${dir} (no such directory)`);
      continue;
    }
    const files: string[] = [];
    const missing: string[] = [];
    for (const names of required) {
      let found: string | undefined;
      for (const name of names) {
        if (await isFile(path.join(dir, name))) {
          found = path.join(dir, name);
          break;
        }
      }
      if (found === undefined) missing.push(names[0]);
      else files.push(found);
    }
    if (missing.length === 0) return { files };
    report.push(`${dir} (missing ${missing.join(', ')})`);
  }
  return { report };
}
