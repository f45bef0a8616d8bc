#!/usr/bin/env -S node --max-semi-space-size=64
// A young generation of 64 MB: at the default size, a server answering hundreds of requests a second
// promoted each one's short-lived objects and ran a full GC every 0.2 s (2-16 ms pauses, the most of its p99);
// at 64 MB those fell from 133 to 6 in 45 s (32 MB did not help). Flags set after start do not resize it.
import { installFailureHandlers, runCli } from './cli.js';

installFailureHandlers();
const code = await runCli(process.argv.slice(2));
// Worker threads and wasm keep the event loop alive; a finished command exits.
process.exit(code);
