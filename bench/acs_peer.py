"""PyTorch peer of dynn's gated ResNet38 (ACS-GN), written the way the field writes it.

The same network as `dynn train --model resnet38 --dynamic acs-gn` (stem, 3 stages of 6 basic blocks 16/32/64
wide, a gating network per block reading the block's input: 1x1, 3x3 stride 2, 3x3, GAP, one logit per group
of 8), but every inner channel is computed and then multiplied by the gate's mask, as public ACS, SkipNet and
ConvNet-AIG code does. Training uses the same nested decisions, straight-through surrogate and efficiency term,
so a step does the same arithmetic as dynn's except the skipping.

Imported by torch_peer.py (mode "acs-train-step").
"""

import time

import torch
import torch.nn.functional as F

GROUPS = 8
WIDTHS = (16, 32, 64)
BLOCKS = 6


class Gate(torch.nn.Module):
    """ACS-GN's gating network; its last layer starts at zero with an open bias, as dynn's."""

    def __init__(self, cin, width, groups):
        super().__init__()
        self.reduce = torch.nn.Conv2d(cin, width, 1)
        self.conv1 = torch.nn.Conv2d(width, width, 3, stride=2, padding=1)
        self.conv2 = torch.nn.Conv2d(width, width, 3, padding=1)
        self.fc = torch.nn.Linear(width, groups)
        torch.nn.init.zeros_(self.fc.weight)
        torch.nn.init.constant_(self.fc.bias, 5.0)

    def forward(self, x):
        h = F.relu(self.conv2(F.relu(self.conv1(F.relu(self.reduce(x))))))
        return self.fc(h.mean((2, 3)))


class GatedBlock(torch.nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(cout)
        self.conv2 = torch.nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(cout)
        self.proj = None
        if stride != 1 or cin != cout:
            self.proj = torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 1, stride=stride, bias=False), torch.nn.BatchNorm2d(cout))
        self.gate = Gate(cin, max(4, cin // 4), GROUPS)
        self.cout = cout

    def forward(self, x, gen):
        z = self.gate(x)
        q = torch.exp(torch.cumsum(-F.softplus(-z), 1))  # P(at least g+1 groups), nested
        r = torch.rand(x.shape[0], 1, generator=gen)
        hard = (q > r).float()
        mask = hard + q - q.detach()  # straight-through: the probability as the surrogate
        mask = mask.repeat_interleave(self.cout // GROUPS, 1)[:, :, None, None]
        h = F.relu(self.bn1(self.conv1(x))) * mask  # every channel computed, then masked
        y = self.bn2(self.conv2(h))
        short = self.proj(x) if self.proj is not None else x
        return F.relu(y + short), q


class GatedResNet38(torch.nn.Module):
    def __init__(self, channels, num_classes):
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(channels, WIDTHS[0], 3, padding=1, bias=False), torch.nn.BatchNorm2d(WIDTHS[0]), torch.nn.ReLU())
        blocks, cin = [], WIDTHS[0]
        for s, w in enumerate(WIDTHS):
            for i in range(BLOCKS):
                blocks.append(GatedBlock(cin, w, 2 if s > 0 and i == 0 else 1))
                cin = w
        self.blocks = torch.nn.ModuleList(blocks)
        self.fc = torch.nn.Linear(WIDTHS[-1], num_classes)

    def forward(self, x, gen):
        h = self.stem(x)
        probs = []
        for b in self.blocks:
            h, q = b(h, gen)
            probs.append(q.mean(1))
        # The expected share of inner channels run, averaged over blocks: the efficiency term's ratio (a proxy
        # of dynn's FLOPs ratio with the same arithmetic cost).
        return self.fc(h.mean((2, 3))), torch.stack(probs, 1).mean()


def train_step(options, opt):
    """Mean ms per training step (forward, backward, Adam) of the masked gated ResNet38 at a batch size."""
    batch = opt(options, "batch", 128, int)
    steps = opt(options, "steps", 10, int)
    warmup = opt(options, "warmup", 3, int, minimum=0)
    height = opt(options, "height", 28, int)
    channels = opt(options, "channels", 1, int)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = GatedResNet38(channels, 10)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(batch, channels, height, height)
    y = torch.randint(0, 10, (batch,))
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        optimizer.zero_grad()
        logits, ratio = model(x, gen)
        loss = F.cross_entropy(logits, y) + 4.0 * (ratio - 0.5) ** 2
        loss.backward()
        optimizer.step()
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1000)
    return {"meanMs": sum(times) / len(times), "batch": batch, "steps": steps}
