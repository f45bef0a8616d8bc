/**
 * Node's flags for a server under load, on node's command line (`node FLAGS node_modules/.bin/dynn serve ...`):
 * Node refuses `--initial-old-space-size` in `NODE_OPTIONS`. V8 starts an old-generation collection whenever the
 * old generation's headroom is smaller than the young generation, since one scavenge could promote all of it.
 * A server answering hundreds of requests a second has a small old generation (about 20 MB), so with large
 * semi-spaces (32-64 MB: V8's default on a machine with some GB of memory, or the 64 MB used before) it fell
 * into full GCs every 0.2 s: each promoted the requests in flight, which filled the headroom for the next (2-20
 * ms pauses on the core the model runs on, most of the p99 under load). An old-generation limit of at least
 * 256 MB keeps the headroom above a young generation of 16 MB semi-spaces: no full GC but the memory reducer's,
 * at the cost of up to that much garbage held. V8 sizes both at start, so the server cannot set them itself.
 * (Its own module: the CLI's help and the load bench read it without loading the server.)
 */
export const SERVE_NODE_FLAGS = '--max-semi-space-size=16 --initial-old-space-size=256';
