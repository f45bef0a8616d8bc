// The bench scripts' command line, apart from what loads TF.js (bench/load.ts runs ONNX Runtime only).

/**
 * The bench scripts' command line, one reader for all: `--name value` options, read as text, as a positive
 * number or as a comma-separated list.
 */
export function benchArgs(argv: string[] = process.argv.slice(2)) {
  const value = (name: string): string | undefined => {
    const i = argv.indexOf(`--${name}`);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const num = (name: string, dflt: number): number => {
    const v = Number(value(name) ?? dflt);
    if (!(v > 0 && Number.isFinite(v))) throw new Error(`--${name} must be a positive number, got ${value(name)}`);
    return v;
  };
  const int = (name: string, dflt: number): number => {
    const v = num(name, dflt);
    if (!Number.isInteger(v)) throw new Error(`--${name} must be a positive integer, got ${value(name)}`);
    return v;
  };
  const list = (name: string, dflt: string): string[] => (value(name) ?? dflt).split(',').filter(Boolean);
  return { value, num, int, list };
}
