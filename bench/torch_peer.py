"""PyTorch peer for dynn's side-by-side benchmarks.

Runs the same throttleable `vgg-w` network as dynn, sliced the same way (nested groups, sliced weights,
no masks), so dynn's timings can be reported as ratios against PyTorch measured in the same run; and, in
mode "acs-train-step", the gated ResNet38 of acs_peer.py, masked as the field writes it; in mode
"resnet-train-step", resnet-d of resnet_peer.py, running the blocks dynn's plan runs.

Usage: /usr/bin/python3 bench/torch_peer.py '<json options>'
Prints exactly one JSON object on stdout; logs go to stderr. Exit codes: 0 ok, 2 bad options,
3 PyTorch (or numpy) not installed, 1 anything else.
"""

import gzip
import itertools
import json
import math
import os
import statistics
import struct
import sys
import time

try:
    import numpy as np
    import torch
    import torch.nn.functional as F
except ImportError as err:
    print(f"torch_peer: {err}", file=sys.stderr)
    sys.exit(3)

GROUPS = 8
STEM = 32
CONV_WIDTHS = (32, 64, 64)
FC_WIDTH = 256
EVAL_US = (0.125, 0.25, 0.5, 0.75, 1.0)


class OptionError(Exception):
    pass


def log(*args):
    print("torch_peer:", *args, file=sys.stderr, flush=True)


def level(u):
    """Active groups for utilization u, the same rule as dynn's throttle."""
    return max(1, min(GROUPS, math.floor(u * (GROUPS + 1))))


def key(x):
    """A number formatted like JavaScript's String(x), so JSON keys match dynn's."""
    x = float(x)
    return str(int(x)) if x.is_integer() else repr(x)


class VggW(torch.nn.Module):
    """`vgg-w`: stem conv, three throttled convs, throttled fc1, unthrottled classifier."""

    def __init__(self, channels, height, width, num_classes):
        super().__init__()
        c2, c3, c4 = CONV_WIDTHS
        self.convs = torch.nn.ModuleList(
            torch.nn.Conv2d(i, o, 3, padding=1, bias=False)
            for i, o in ((channels, STEM), (STEM, c2), (c2, c3), (c3, c4))
        )
        self.bn_w = torch.nn.ParameterList(torch.nn.Parameter(torch.ones(c)) for c in (STEM, c2, c3, c4))
        self.bn_b = torch.nn.ParameterList(torch.nn.Parameter(torch.zeros(c)) for c in (STEM, c2, c3, c4))
        self.pooled = (height // 2 // 2) * (width // 2 // 2)
        self.fc1 = torch.nn.Linear(c4 * self.pooled, FC_WIDTH)
        self.fc2 = torch.nn.Linear(FC_WIDTH, num_classes)

    def widths(self, d):
        """Active output channels of stem, c2, c3, c4 and active fc1 units at level d."""
        return (STEM,) + tuple(c // GROUPS * d for c in CONV_WIDTHS) + (FC_WIDTH // GROUPS * d,)

    def stats(self, d):
        """Fresh BatchNorm running stats sized for level d (what dynn keeps per level)."""
        return [(torch.zeros(c), torch.ones(c)) for c in self.widths(d)[:4]]

    def forward(self, x, d, stats=None, momentum=None):
        """stats None: batch statistics (training). With stats: inference with them, or, with a
        momentum, batch statistics that also update them (BatchNorm recalibration)."""
        widths = self.widths(d)
        ci = x.shape[1]
        for i, conv in enumerate(self.convs):
            co = widths[i]
            x = F.conv2d(x, conv.weight[:co, :ci], padding=1)
            w, b = self.bn_w[i][:co], self.bn_b[i][:co]
            if stats is None:
                x = F.batch_norm(x, None, None, w, b, training=True)
            else:
                mean, var = stats[i]
                x = F.batch_norm(x, mean, var, w, b, training=momentum is not None, momentum=momentum or 0.0)
            x = F.relu(x)
            if i == 1 or i == 3:
                x = F.max_pool2d(x, 2)
            ci = co
        n = widths[4]
        x = F.relu(F.linear(x.flatten(1), self.fc1.weight[:n, : ci * self.pooled], self.fc1.bias[:n]))
        return F.linear(x, self.fc2.weight[:, :n], self.fc2.bias)


def opt(options, name, default, kind, minimum=1):
    value = options.get(name, default)
    if kind is int and (not isinstance(value, int) or isinstance(value, bool) or value < minimum):
        raise OptionError(f"option {name!r} must be an integer >= {minimum}, got {value!r}")
    if kind is float and (not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0):
        raise OptionError(f"option {name!r} must be a positive number, got {value!r}")
    return value


def utilization(value):
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value <= 1:
        raise OptionError(f"utilization must be a number in (0, 1], got {value!r}")
    return float(value)


def shape_options(options):
    return (
        opt(options, "channels", 1, int),
        opt(options, "height", 28, int),
        opt(options, "width", 28, int),
        opt(options, "numClasses", 10, int),
    )


def u_sampler(spec, rng):
    """Draws u per step: Uniform(0, 1] from the seeded generator, a fixed u, or cycles through a given
    list (so a caller can replay the exact sequence its own generator drew)."""
    if spec == "uniform":
        return lambda: 1.0 - rng.random()
    if isinstance(spec, list) and spec:
        sequence = itertools.cycle([utilization(u) for u in spec])
        return lambda: next(sequence)
    fixed = utilization(spec)
    return lambda: fixed


def train_step(options):
    channels, height, width, num_classes = shape_options(options)
    batch = opt(options, "batch", 128, int)
    steps = opt(options, "steps", 30, int)
    warmup = opt(options, "warmup", 5, int, minimum=0)
    seed = options.get("seed", 0)
    torch.manual_seed(seed)
    draw = u_sampler(options.get("u", "uniform"), np.random.default_rng(seed))
    model = VggW(channels, height, width, num_classes)
    x = torch.randn(batch, channels, height, width)
    y = torch.randint(0, num_classes, (batch,))
    return timed_train_steps(model, x, y, ((level(draw()),) for _ in range(warmup + steps)), warmup)


def timed_train_steps(model, x, y, step_args, warmup):
    """Adam steps on model(x, *args), one per entry of `step_args` (drawn before its step's clock starts);
    the milliseconds of the steps after the first `warmup`."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    times = []
    for step, args in enumerate(step_args):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x, *args), y)
        loss.backward()
        optimizer.step()
        if step >= warmup:
            times.append((time.perf_counter() - start) * 1000)
    return {"msPerStep": statistics.median(times), "meanMs": statistics.fmean(times), "steps": len(times)}


def latency(options):
    channels, height, width, num_classes = shape_options(options)
    us = [utilization(u) for u in options.get("us", [0.25, 0.5, 0.75, 1])]
    batches = [opt({"batch": b}, "batch", None, int) for b in options.get("batches", [1, 64, 128])]
    reps = opt(options, "reps", 20, int)
    warmup = opt(options, "warmup", 3, int, minimum=0)
    torch.manual_seed(options.get("seed", 0))
    model = VggW(channels, height, width, num_classes).eval()
    result = {}
    with torch.no_grad():
        for u in us:
            d = level(u)
            stats = model.stats(d)
            result[key(u)] = {}
            for batch in batches:
                x = torch.randn(batch, channels, height, width)
                times = []
                for rep in range(warmup + reps):
                    start = time.perf_counter()
                    model(x, d, stats)
                    if rep >= warmup:
                        times.append((time.perf_counter() - start) * 1000)
                result[key(u)][str(batch)] = statistics.median(times)
    return {"latencyMs": result}


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    ndim = magic & 0xFF
    if magic >> 8 != 0x08 or ndim < 1:
        raise OptionError(f"{path} is not an unsigned-byte IDX file")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_split(data_dir, split):
    images = read_idx(os.path.join(data_dir, f"{split}-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(data_dir, f"{split}-labels-idx1-ubyte.gz"))
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return x, torch.from_numpy(labels.astype(np.int64))


def train_full(options):
    data_dir = options.get("dataDir", "/usr/share/datasets/fashion-mnist")
    epochs = opt(options, "epochs", 3, int)
    batch = opt(options, "batch", 128, int)
    lr = opt(options, "lr", 1e-3, float)
    calib_samples = opt(options, "calibSamples", 2000, int)
    seed = options.get("seed", 0)
    gating = options.get("gating", "uniform")
    if gating not in ("uniform", "vanilla"):
        raise OptionError(f"option 'gating' must be 'uniform' or 'vanilla', got {gating!r}")
    began = time.perf_counter()
    x_train, y_train = load_split(data_dir, "train")
    x_test, y_test = load_split(data_dir, "t10k")
    if "trainSamples" in options:
        limit = opt(options, "trainSamples", None, int)
        x_train, y_train = x_train[:limit], y_train[:limit]
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    draw = u_sampler("uniform" if gating == "uniform" else 1, rng)
    model = VggW(1, x_train.shape[2], x_train.shape[3], 10)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    times = []
    for epoch in range(epochs):
        order = torch.from_numpy(rng.permutation(len(x_train)))
        total, count = 0.0, 0
        for first in range(0, len(order), batch):
            idx = order[first : first + batch]
            d = level(draw())
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x_train[idx], d), y_train[idx])
            loss.backward()
            optimizer.step()
            times.append((time.perf_counter() - start) * 1000)
            total, count = total + loss.item(), count + 1
        log(f"epoch {epoch + 1}/{epochs}: loss {total / count:.4f}, {statistics.median(times):.1f} ms/step")

    # Each level sees a different mix of channels upstream, so it needs its own BatchNorm statistics;
    # the cumulative average (momentum 1/k) gives the plain mean over the calibration batches.
    calib = torch.from_numpy(rng.permutation(len(x_train))[:calib_samples])
    per_level = {}
    with torch.no_grad():
        for d in range(1, GROUPS + 1):
            stats = model.stats(d)
            for k, first in enumerate(range(0, len(calib), 200)):
                model(x_train[calib[first : first + 200]], d, stats, momentum=1.0 / (k + 1))
            per_level[d] = stats
        accuracy = {}
        for u in EVAL_US:
            d = level(u)
            correct = sum(
                int((model(x_test[i : i + 1000], d, per_level[d]).argmax(1) == y_test[i : i + 1000]).sum())
                for i in range(0, len(x_test), 1000)
            )
            accuracy[key(u)] = correct / len(x_test)
            log(f"u={key(u)} (d={d}): accuracy {accuracy[key(u)]:.4f}")
    return {
        "gating": gating,
        "epochs": epochs,
        "accuracy": accuracy,
        "msPerStep": statistics.median(times),
        "seconds": time.perf_counter() - began,
    }


def acs_train_step(options):
    import acs_peer  # beside this script: the masked gated ResNet38

    return acs_peer.train_step(options, opt)


def resnet_train_step(options):
    import resnet_peer  # beside this script: resnet-d with its blocks skipped as dynn's plan says

    return resnet_peer.train_step(options, opt, OptionError, timed_train_steps)


MODES = {
    "train-step": train_step,
    "latency": latency,
    "train-full": train_full,
    "acs-train-step": acs_train_step,
    "resnet-train-step": resnet_train_step,
}


def main():
    try:
        options = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
        if not isinstance(options, dict):
            raise OptionError("options must be a JSON object")
        mode = options.get("mode")
        if mode not in MODES:
            raise OptionError(f"option 'mode' must be one of {', '.join(MODES)}, got {mode!r}")
        threads = opt(options, "threads", 2, int)
        torch.set_num_threads(threads)
        result = MODES[mode](options)
    except (OptionError, json.JSONDecodeError, FileNotFoundError) as err:
        print(f"torch_peer: {err}", file=sys.stderr)
        sys.exit(2)
    out = {"mode": mode, **result, "threads": torch.get_num_threads(), "torch": torch.__version__}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
