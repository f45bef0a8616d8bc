import { DynnError } from './errors.js';

/**
 * A name-keyed registry: `register` throws on a duplicate name, `get` on an unknown one with the list of
 * known names, so a typo reads `unknown model "vgg"; expected one of mlp-w, resnet-d, vgg-w`.
 */
export class Registry<T> {
  private readonly items = new Map<string, T>();

  /** @param kind what the entries are, used in error messages ("model", "dataset", ...). */
  constructor(readonly kind: string) {}

  register(name: string, item: T): void {
    if (this.items.has(name)) throw new DynnError(`${this.kind} "${name}" is already registered`);
    this.items.set(name, item);
  }

  has(name: string): boolean {
    return this.items.has(name);
  }

  get(name: string): T {
    const item = this.items.get(name);
    if (item === undefined) {
      throw new DynnError(`unknown ${this.kind} "${name}"; expected one of ${this.list().join(', ')}`);
    }
    return item;
  }

  /** Registered names, sorted. */
  list(): string[] {
    return [...this.items.keys()].sort();
  }
}
