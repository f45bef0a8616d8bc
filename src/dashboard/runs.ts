import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { MANIFEST_FILE, readCheckpointInfo } from '../checkpoint/checkpoint.js';
import type { TrainMeta } from '../train/run.js';
import { DynnError } from '../util/errors.js';
import { RUN_FILES } from '../report/sources.js';
import { readProgress, type Progress } from './progress.js';

/** A run the dashboard lists: a training checkpoint, or a folder whose training has started (progress file only). */
export interface RunEntry {
  /** Path relative to the runs folder, with '/' separators: the run's name in URLs. */
  name: string;
  dir: string;
  model: string | null;
  dataset: string | null;
  schedule: string | null;
  gating: string | null;
  /** Epochs in the checkpoint. */
  epochs: number;
  /** Epochs asked for, when known. */
  plannedEpochs: number | null;
  lastLoss: number | null;
  /** Test accuracy at u = 1 after the last epoch. */
  lastAccuracy: number | null;
  /** Last change of the checkpoint or progress file (ISO time). */
  updatedAt: string | null;
  /** Live progress state, when the run writes a progress file. */
  live: Progress['state'] | null;
  hasOnnx: boolean;
  /** A report saved as RUN/report.html. */
  hasSavedReport: boolean;
  /** Why the checkpoint could not be read, when it could not. */
  error?: string;
  /** Why the dashboard serves none of the run's files (a link that leaves the runs folder), when it does not. */
  refused?: string;
}

/** The saved report's file name inside a run. */
export const SAVED_REPORT = 'report.html';
/** Folder depth searched below the runs folder. */
const MAX_DEPTH = 2;
const COMPANIONS = new Set(['dynn-controller', 'dynn-gates']);

async function exists(file: string): Promise<boolean> {
  try {
    await fsp.access(file);
    return true;
  } catch {
    return false;
  }
}

/** Whether a directory entry exists, without following it when it is a link. */
async function lexists(file: string): Promise<boolean> {
  try {
    await fsp.lstat(file);
    return true;
  } catch {
    return false;
  }
}

async function mtime(file: string): Promise<number | null> {
  try {
    return (await fsp.stat(file)).mtimeMs;
  } catch {
    return null;
  }
}

/** Whether `file` (a real path) is `root` or inside it. */
function within(root: string, file: string): boolean {
  const rel = path.relative(root, file);
  return rel === '' || (rel !== '..' && !rel.startsWith(`..${path.sep}`) && !path.isAbsolute(rel));
}

/**
 * The real path of `file` when it is a regular file inside `runsDir` (after following every link), else null:
 * what the dashboard checks right before it serves a run's file.
 */
export async function fileInside(runsDir: string, file: string): Promise<string | null> {
  try {
    const [root, real] = await Promise.all([fsp.realpath(runsDir), fsp.realpath(file)]);
    return within(root, real) && (await fsp.stat(real)).isFile() ? real : null;
  } catch {
    return null;
  }
}

/** Folder depth of a run's own files searched for links that leave the runs folder. */
const LINK_DEPTH = 3;

/** The first symbolic link below `dir` (to LINK_DEPTH levels) that resolves outside `root`, relative to `dir`, or null. */
async function linkOutside(root: string, dir: string, depth = 0): Promise<string | null> {
  let entries;
  try {
    entries = await fsp.readdir(dir, { withFileTypes: true });
  } catch {
    return null;
  }
  for (const e of entries) {
    const file = path.join(dir, e.name);
    if (e.isSymbolicLink()) {
      let real: string;
      try {
        real = await fsp.realpath(file);
      } catch {
        // A dangling link serves nothing; the check before serving a file catches one that is later made to resolve.
        continue;
      }
      if (!within(root, real)) return e.name;
    } else if (e.isDirectory() && depth + 1 < LINK_DEPTH) {
      const below = await linkOutside(root, file, depth + 1);
      if (below) return `${e.name}/${below}`;
    }
  }
  return null;
}

/**
 * The runs below `runsDir` (itself and up to two levels of folders), sorted by name. Symbolic links are
 * followed only while they stay inside `runsDir`: a run holding a link that leaves it is listed with an error
 * and none of its files are read.
 */
export async function listRuns(runsDir: string): Promise<RunEntry[]> {
  let stat;
  try {
    stat = await fsp.stat(runsDir);
  } catch {
    throw new DynnError(`runs folder ${runsDir} does not exist`);
  }
  if (!stat.isDirectory()) throw new DynnError(`${runsDir} is not a folder`);
  const root = await fsp.realpath(runsDir);
  const found: RunEntry[] = [];
  const visit = async (dir: string, depth: number) => {
    const entry = await readEntry(runsDir, root, dir);
    if (entry) {
      found.push(entry);
      return;
    }
    if (depth >= MAX_DEPTH) return;
    let names: string[] = [];
    try {
      for (const d of await fsp.readdir(dir, { withFileTypes: true })) {
        if (d.name.startsWith('.')) continue;
        if (d.isDirectory() || (d.isSymbolicLink() && (await dirInside(root, path.join(dir, d.name))))) names.push(d.name);
      }
    } catch {
      return;
    }
    for (const n of names.sort()) await visit(path.join(dir, n), depth + 1);
  };
  await visit(runsDir, 0);
  return found.sort((a, b) => a.name.localeCompare(b.name));
}

/** Whether a linked folder resolves inside `root`. */
async function dirInside(root: string, link: string): Promise<boolean> {
  try {
    const real = await fsp.realpath(link);
    return within(root, real) && (await fsp.stat(real)).isDirectory();
  } catch {
    return false;
  }
}

/** A run folder's entry, or null when the folder is neither a training run nor a run in progress. */
async function readEntry(runsDir: string, root: string, dir: string): Promise<RunEntry | null> {
  const [hasManifest, hasProgress] = await Promise.all([lexists(path.join(dir, MANIFEST_FILE)), lexists(path.join(dir, RUN_FILES.progress))]);
  if (!hasManifest && !hasProgress) return null;
  const name = path.relative(runsDir, dir).split(path.sep).join('/') || path.basename(path.resolve(dir));
  const outside = await linkOutside(root, dir);
  const entry: RunEntry = {
    name,
    dir,
    model: null,
    dataset: null,
    schedule: null,
    gating: null,
    epochs: 0,
    plannedEpochs: null,
    lastLoss: null,
    lastAccuracy: null,
    updatedAt: null,
    live: null,
    hasOnnx: false,
    hasSavedReport: false,
  };
  if (outside) {
    entry.refused = entry.error = `${name}/${outside} links outside the runs folder, so the dashboard serves nothing of this run`;
    return entry;
  }
  entry.hasOnnx = await exists(path.join(dir, RUN_FILES.onnx));
  entry.hasSavedReport = await exists(path.join(dir, SAVED_REPORT));
  if (hasManifest) {
    try {
      const info = await readCheckpointInfo(dir);
      if (COMPANIONS.has(info.config.model)) return null;
      const meta = info.meta as unknown as TrainMeta;
      const last = meta.history?.[meta.history.length - 1];
      Object.assign(entry, {
        model: info.config.model,
        dataset: meta.dataset ?? null,
        schedule: String(meta.options?.schedule ?? 'uniform'),
        gating: String(meta.options?.gating ?? 'nested'),
        epochs: meta.epoch ?? 0,
        plannedEpochs: typeof meta.options?.epochs === 'number' ? meta.options.epochs : null,
        lastLoss: last?.loss ?? null,
        lastAccuracy: last?.testAccuracy?.['1'] ?? null,
      });
    } catch (err) {
      entry.error = (err as Error).message;
    }
  }
  if (hasProgress) {
    try {
      const p = await readProgress(dir);
      entry.live = p?.state ?? null;
      if (p && entry.plannedEpochs === null) entry.plannedEpochs = p.epochs;
    } catch (err) {
      entry.error ??= (err as Error).message;
    }
  }
  const times = [await mtime(path.join(dir, MANIFEST_FILE)), await mtime(path.join(dir, RUN_FILES.progress))].filter((t): t is number => t !== null);
  entry.updatedAt = times.length ? new Date(Math.max(...times)).toISOString() : null;
  return entry;
}

/** The run called `name` below `runsDir`, or null; only listed runs resolve, so a name cannot reach outside the folder. */
export async function findRun(runsDir: string, name: string): Promise<RunEntry | null> {
  return (await listRuns(runsDir)).find((r) => r.name === name) ?? null;
}
