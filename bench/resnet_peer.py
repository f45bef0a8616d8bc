"""PyTorch peer of dynn's `resnet-d`: a ResNet whose depth-gated residual blocks are skipped (the identity).

The same network as `dynn train --model resnet-d` with its defaults: a 3x3 stem 16 wide, 3 stages 16/32/64 wide,
a stride-2 block with a 1x1 projection opening stages 2 and 3, two gated basic blocks per stage (conv-BN-ReLU-
conv-BN plus the input, then ReLU), global average pooling and a linear classifier; convolutions without bias,
BatchNorm with batch statistics. dynn passes the blocks each step runs (its own depth rule, step by step), so
both sides run the same blocks; a skipped block is not computed at all.

Imported by torch_peer.py (mode "resnet-train-step").
"""

import torch
import torch.nn.functional as F

WIDTHS = (16, 32, 64)
BLOCKS = 2


class Block(torch.nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(cout, track_running_stats=False)
        self.conv2 = torch.nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(cout, track_running_stats=False)
        projected = stride != 1 or cin != cout
        self.proj = torch.nn.Conv2d(cin, cout, 1, stride=stride, bias=False) if projected else None
        self.projbn = torch.nn.BatchNorm2d(cout, track_running_stats=False) if projected else None

    def forward(self, x):
        h = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        short = self.projbn(self.proj(x)) if self.proj is not None else x
        return F.relu(h + short)


class ResNetD(torch.nn.Module):
    def __init__(self, channels, num_classes):
        super().__init__()
        self.stem = torch.nn.Conv2d(channels, WIDTHS[0], 3, padding=1, bias=False)
        self.stem_bn = torch.nn.BatchNorm2d(WIDTHS[0], track_running_stats=False)
        self.downs = torch.nn.ModuleList()
        self.gated = torch.nn.ModuleList()
        cin = WIDTHS[0]
        for s, w in enumerate(WIDTHS):
            self.downs.append(Block(cin, w, 2) if s > 0 else torch.nn.Identity())
            self.gated.extend(Block(w, w, 1) for _ in range(BLOCKS))
            cin = w
        self.classifier = torch.nn.Linear(WIDTHS[-1], num_classes)

    def forward(self, x, active):
        """`active`: one flag per gated block, in order (stage by stage)."""
        x = F.relu(self.stem_bn(self.stem(x)))
        for s in range(len(WIDTHS)):
            x = self.downs[s](x)
            for i in range(BLOCKS):
                k = s * BLOCKS + i
                if active[k]:
                    x = self.gated[k](x)
        return self.classifier(x.mean((2, 3)))


def train_step(options, opt, OptionError, timed_train_steps):
    batch = opt(options, "batch", 128, int)
    steps = opt(options, "steps", 30, int)
    warmup = opt(options, "warmup", 5, int, minimum=0)
    depth = options.get("depth")
    gated = len(WIDTHS) * BLOCKS
    if (
        not isinstance(depth, list)
        or len(depth) != warmup + steps
        or not all(isinstance(d, list) and len(d) == gated and all(isinstance(b, bool) for b in d) for d in depth)
    ):
        raise OptionError(f"option 'depth' must be {warmup + steps} lists of {gated} booleans (the blocks each step runs)")
    torch.manual_seed(options.get("seed", 0))
    x = torch.randn(batch, 1, 28, 28)
    y = torch.randint(0, 10, (batch,))
    return timed_train_steps(ResNetD(1, 10), x, y, ((active,) for active in depth), warmup)
