"""The popular PyTorch mixture-of-experts layer's behaviour, re-implemented here and run as a classifier head on
Fashion-MNIST, for `bench/moe.ts`'s side-by-side figures (PyTorch at /usr/bin/python3).

What it does, as davidmrau/mixture-of-experts's `moe.py` does it (learned from reading it, not copied):
  - the router: clean logits x Wg, in training plus N(0, 1) (softplus(x Wnoise) + 0.01); a softmax over all
    experts *before* the top-k, the kept values renormalized (so with k = 1 the gate is always 1 and the
    router gets no gradient from the task loss);
  - the load estimate: the normal CDF of (clean logit - threshold) / noise, the thresholds taken from the
    *softmaxed* top values while the comparison uses the raw noisy logits;
  - the loss: 0.01 (CV^2(importance) + CV^2(load));
  - no capacity: an expert takes every row routed to it;
  - experts: MLPs (dense, ReLU, dense, softmax), dispatched by a Python loop over the experts.
Reported per k: accuracy, the most used expert's share at evaluation, the accuracy once a capacity factor of
1.25 is enforced afterwards (overflowing assignments dropped), and the time of the layer against a dense MLP of
the same active FLOPs (hidden k h) at batch 1 and 64: for each thread count of --threads, --rounds rounds of the
two taking turns (the caller takes the fastest thread count; run it under PASSIVE OpenMP waiting).

Usage: /usr/bin/python3 bench/moe_peer.py [--train 6000] [--test 1000] [--epochs 2] [--hidden 64]
       [--top-k 1,2,4] [--data-dir /usr/share/datasets/fashion-mnist] [--threads 1,2] [--rounds 3]
Prints one JSON object.
"""
import argparse
import gzip
import json
import math
import os
import struct
import time

import torch
import torch.nn.functional as F

E = 10


def idx(path):
    with gzip.open(path, 'rb') as f:
        data = f.read()
    dims = data[3]
    shape = struct.unpack('>' + 'I' * dims, data[4:4 + 4 * dims])
    return torch.frombuffer(bytearray(data[4 + 4 * dims:]), dtype=torch.uint8).reshape(shape)


def load_data(data_dir, train, test):
    xs = idx(os.path.join(data_dir, 'train-images-idx3-ubyte.gz'))[:train].float().div(255).reshape(train, -1)
    ys = idx(os.path.join(data_dir, 'train-labels-idx1-ubyte.gz'))[:train].long()
    xt = idx(os.path.join(data_dir, 't10k-images-idx3-ubyte.gz'))[:test].float().div(255).reshape(test, -1)
    yt = idx(os.path.join(data_dir, 't10k-labels-idx1-ubyte.gz'))[:test].long()
    return xs, ys, xt, yt


class Expert(torch.nn.Module):
    def __init__(self, d, h, c):
        super().__init__()
        self.fc1 = torch.nn.Linear(d, h)
        self.fc2 = torch.nn.Linear(h, c)

    def forward(self, x):
        return F.softmax(self.fc2(F.relu(self.fc1(x))), dim=1)


class PopularMoE(torch.nn.Module):
    """The layer's behaviour (see the module doc); `capacity` (a factor) drops overflowing rows at evaluation."""

    def __init__(self, d, c, h, k):
        super().__init__()
        self.k = k
        self.experts = torch.nn.ModuleList([Expert(d, h, c) for _ in range(E)])
        self.w_gate = torch.nn.Parameter(torch.zeros(d, E))
        self.w_noise = torch.nn.Parameter(torch.zeros(d, E))
        self.capacity = None
        self.last_gates = None

    @staticmethod
    def cv2(x):
        return x.float().var() / (x.float().mean() ** 2 + 1e-10) if x.numel() > 1 else x.new_zeros(())

    def gating(self, x):
        clean = x @ self.w_gate
        noisy = None
        if self.training:
            std = F.softplus(x @ self.w_noise) + 1e-2
            noisy = clean + torch.randn_like(clean) * std
            logits = noisy
        else:
            logits = clean
        probs = F.softmax(logits, dim=1)
        m = min(self.k + 1, E)
        top, idx = probs.topk(m, dim=1)
        gates_k = top[:, :self.k] / (top[:, :self.k].sum(1, keepdim=True) + 1e-6)
        gates = torch.zeros_like(probs).scatter(1, idx[:, :self.k], gates_k)
        if self.training and self.k < E:
            # Thresholds from the softmaxed top values, compared with raw noisy logits (the layer's mismatch).
            t_in = top[:, self.k:self.k + 1]
            t_out = top[:, self.k - 1:self.k]
            normal = torch.distributions.Normal(0.0, 1.0)
            p = torch.where(noisy > t_in, normal.cdf((clean - t_in) / std), normal.cdf((clean - t_out) / std))
            load = p.sum(0)
        else:
            load = (gates > 0).sum(0).float()
        return gates, load

    def forward(self, x):
        gates, load = self.gating(x)
        if self.capacity is not None:
            cap = max(1, math.ceil(self.capacity * self.k * x.shape[0] / E))
            # Enforced afterwards: each expert keeps its first `cap` rows in batch order, the rest are dropped.
            keep = (gates > 0).float()
            gates = gates * (keep.cumsum(0) <= cap).float()
        self.last_gates = gates.detach()
        aux = 0.01 * (self.cv2(gates.sum(0)) + self.cv2(load))
        # The layer's dispatcher: rows sorted by expert, then a Python loop over the experts.
        nz = torch.nonzero(gates)
        order = nz[:, 1].argsort(stable=True)
        rows, experts = nz[order, 0], nz[order, 1]
        sizes = torch.bincount(experts, minlength=E).tolist()
        parts = torch.split(x[rows], sizes)
        outs = [self.experts[e](parts[e]) for e in range(E)]
        stitched = torch.cat(outs, 0) * gates[rows, experts].unsqueeze(1)
        y = torch.zeros(x.shape[0], stitched.shape[1]).index_add(0, rows, stitched)
        return y, aux


def train(model, xs, ys, epochs, batch, moe):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(xs.shape[0], generator=g)
        for i in range(0, xs.shape[0], batch):
            j = perm[i:i + batch]
            if moe:
                y, aux = model(xs[j])
                # As the layer's example trains it: cross-entropy on the combined (softmaxed) outputs.
                loss = F.cross_entropy(y, ys[j]) + aux
            else:
                loss = F.cross_entropy(model(xs[j]), ys[j])
            opt.zero_grad()
            loss.backward()
            opt.step()


def evaluate(model, xt, yt, moe, batch=64):
    model.eval()
    right = 0
    counts = torch.zeros(E)
    with torch.no_grad():
        for i in range(0, xt.shape[0], batch):
            out = model(xt[i:i + batch])
            y = out[0] if moe else out
            right += int((y.argmax(1) == yt[i:i + batch]).sum())
            if moe:
                counts += (model.last_gates > 0).sum(0).float()
    return right / xt.shape[0], (counts / counts.sum()).tolist() if moe else None


def timed(f, reps=30):
    for _ in range(3):
        f()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        ts.append((time.perf_counter() - t0) * 1000)
    ts.sort()
    return ts[len(ts) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--train', type=int, default=6000)
    ap.add_argument('--test', type=int, default=1000)
    ap.add_argument('--epochs', type=int, default=2)
    ap.add_argument('--hidden', type=int, default=64)
    ap.add_argument('--top-k', default='1,2,4')
    ap.add_argument('--data-dir', default='/usr/share/datasets/fashion-mnist')
    ap.add_argument('--threads', default='2')
    ap.add_argument('--rounds', type=int, default=3)
    a = ap.parse_args()
    threads = [int(v) for v in a.threads.split(',')]
    torch.set_num_threads(max(threads))
    torch.manual_seed(0)
    xs, ys, xt, yt = load_data(a.data_dir, a.train, a.test)
    out = {'peer': 'popular PyTorch MoE layer (re-implemented)', 'torch': torch.__version__, 'threads': threads, 'train': a.train, 'test': a.test, 'epochs': a.epochs, 'hidden': a.hidden, 'heads': []}
    for k in [int(v) for v in a.top_k.split(',')]:
        moe = PopularMoE(784, 10, a.hidden, k)
        train(moe, xs, ys, a.epochs, 64, True)
        acc, load = evaluate(moe, xt, yt, True)
        moe.capacity = 1.25
        acc_cap, _ = evaluate(moe, xt, yt, True)
        moe.capacity = None
        dense = torch.nn.Sequential(torch.nn.Linear(784, k * a.hidden), torch.nn.ReLU(), torch.nn.Linear(k * a.hidden, 10))
        train(dense, xs, ys, a.epochs, 64, False)
        dacc, _ = evaluate(dense, xt, yt, False)
        times = {}
        with torch.no_grad():
            moe.eval()
            dense.eval()
            for th in threads:
                torch.set_num_threads(th)
                for n in (1, 64):
                    x = xt[:n]
                    # Rounds of the two taking turns, so the machine's drift enters both alike.
                    times[f'{th}@{n}'] = [{'moe': timed(lambda: moe(x)), 'dense': timed(lambda: dense(x))} for _ in range(a.rounds)]
            torch.set_num_threads(max(threads))
        out['heads'].append({'topK': k, 'accuracy': acc, 'accuracyCapacity125': acc_cap, 'denseAccuracy': dacc, 'maxShare': max(load), 'load': load, 'ms': times})
    print(json.dumps(out, indent=2))


if __name__ == '__main__':
    main()
