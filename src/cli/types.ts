import type { CAC } from 'cac';
import type { Io } from './io.js';

/** A group of commands: registers them on the CLI; actions import their heavy modules lazily. */
export type CommandModule = (cli: CAC, io: Io) => void;
