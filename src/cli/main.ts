#!/usr/bin/env node
import { commandOf, installFailureHandlers, runCli } from './cli.js';
import { relaunchWithServeFlags } from '../serve/node-flags.js';

installFailureHandlers();
const argv = process.argv.slice(2);
// A server sizes V8's heap for load: node restarts with SERVE_NODE_FLAGS unless it already has them.
// Only a line with the word `serve` can be one: every other command starts without parsing twice.
const relaunchCode = argv.includes('serve') && commandOf(argv) === 'serve' ? await relaunchWithServeFlags() : null;
// Worker threads and wasm keep the event loop alive; a finished command exits.
process.exit(relaunchCode ?? (await runCli(argv)));
