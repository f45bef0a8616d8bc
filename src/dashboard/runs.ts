import { constants, promises as fsp, type Stats } from 'node:fs';
import path from 'node:path';
import { CONTROLLER_KIND, GATES_KIND, MANIFEST_FILE, readCheckpointInfo } from '../checkpoint/checkpoint.js';
import { parseTrainMeta } from '../train/meta.js';
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
/** Checkpoints beside runs that are not runs themselves (a controller, learned gates). */
const COMPANIONS = new Set<string>([CONTROLLER_KIND, GATES_KIND]);

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

/** Where a path leads: its real path and stat when inside `root` (a real path), 'outside', or null when it does not exist. */
async function resolve(root: string, file: string): Promise<{ real: string; stat: Stats } | 'outside' | null> {
  let real: string;
  try {
    real = await fsp.realpath(file);
  } catch {
    return null;
  }
  if (!within(root, real)) return 'outside';
  try {
    // lstat: `real` holds no link, unless one was swapped in since; then it is no file or folder and is refused.
    return { real, stat: await fsp.lstat(real) };
  } catch {
    return null;
  }
}

/** A run's file as the dashboard serves it. */
export interface InsideFile {
  /** Its real path. */
  real: string;
  bytes: Buffer;
  mtimeMs: number;
}

/**
 * Reads `file` when it is a regular file inside `runsDir` (after following every link), else null. The file
 * is opened first and served from that handle only if the handle is the file whose real path passed the check
 * (same device and inode), so swapping a link or file between the check and the read serves nothing.
 */
export async function readInside(runsDir: string, file: string): Promise<InsideFile | null> {
  let handle;
  try {
    // Non-blocking: opening a FIFO planted in a run must not hang the request.
    handle = await fsp.open(file, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch {
    return null;
  }
  try {
    const root = await fsp.realpath(runsDir);
    const r = await resolve(root, file);
    if (!r || r === 'outside' || !r.stat.isFile()) return null;
    const opened = await handle.stat();
    if (!opened.isFile() || opened.dev !== r.stat.dev || opened.ino !== r.stat.ino) return null;
    // Where the kernel says the handle is (Linux): closes the race of a parent folder swapped for a link.
    const fdPath = await fsp.readlink(`/proc/self/fd/${handle.fd}`).catch(() => null);
    if (fdPath !== null && !within(root, fdPath)) return null;
    return { real: r.real, bytes: await handle.readFile(), mtimeMs: opened.mtimeMs };
  } catch {
    return null;
  } finally {
    await handle.close();
  }
}

/** Folder depth of a run's own files searched for links that leave the runs folder. */
const LINK_DEPTH = 3;

/**
 * The first symbolic link below `dir` (to LINK_DEPTH levels) that resolves outside `root`, relative to `dir`,
 * or null. Linked folders that stay inside `root` are walked too (each real folder once), since the report
 * reads a run's files through them.
 */
async function linkOutside(root: string, dir: string, depth = 0, seen = new Set<string>()): Promise<string | null> {
  let entries;
  try {
    seen.add(await fsp.realpath(dir));
    entries = await fsp.readdir(dir, { withFileTypes: true });
  } catch {
    return null;
  }
  for (const e of entries) {
    const file = path.join(dir, e.name);
    let folder = e.isDirectory();
    if (e.isSymbolicLink()) {
      const r = await resolve(root, file);
      if (r === 'outside') return e.name;
      // A dangling link serves nothing; the check before serving a file catches one that is later made to resolve.
      folder = r !== null && r.stat.isDirectory() && !seen.has(r.real);
    }
    if (folder && depth + 1 < LINK_DEPTH) {
      const below = await linkOutside(root, file, depth + 1, seen);
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
        if (d.isDirectory()) names.push(d.name);
        else if (d.isSymbolicLink()) {
          const r = await resolve(root, path.join(dir, d.name));
          if (r && r !== 'outside' && r.stat.isDirectory()) names.push(d.name);
        }
      }
    } catch {
      return;
    }
    for (const n of names.sort()) await visit(path.join(dir, n), depth + 1);
  };
  await visit(runsDir, 0);
  return found.sort((a, b) => a.name.localeCompare(b.name));
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
      // Validated: the values go into pages and are formatted as numbers there.
      const meta = parseTrainMeta(info.meta, path.join(dir, MANIFEST_FILE));
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
