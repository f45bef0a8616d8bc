#!/usr/bin/env node
import { installFailureHandlers, runCli } from './cli.js';

installFailureHandlers();
const code = await runCli(process.argv.slice(2));
// Worker threads and wasm keep the event loop alive; a finished command exits.
process.exit(code);
