"""PyTorch reference for fedtail-bench's "pytorch" section: PyTorch's images/s for the same work
as fedtail-bench's "training" and "evaluation" sections (tools/fedtail_bench.cc, run_throughput
and measure), to compare the two as a ratio. Same model definitions as common/learning/models.cc (same
parameter names, shapes and order), same augmentation as common/data/augment.cc with the default
AugmentOptions{}, same step:
  train: augment (random crop, pad 4, + flip, normalise) -> zero_grad -> cross_entropy -> backward
         -> SGD(lr 0.01, momentum 0.9, weight_decay 5e-4) step, model.train()
  eval:  model.eval(), no_grad, model(normalise(images)).argmax(1)
Timing: `warmup` untimed steps, then steps until both min_steps and min_seconds are reached.

Run with a Python that has torch (Debian's /usr/bin/python3 here), e.g.
  OMP_WAIT_POLICY=PASSIVE /usr/bin/python3 tools/bench/pytorch_reference.py \
      --arch resnet8 --channels 3 --size 32 --batch 8,32 --mode train,eval --threads 1
Prints one JSON object per (mode, batch) measurement per line on stdout. Errors: one line on
stderr, exit 1.
"""
import argparse
import json
import math
import random
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv3x3(cin, cout, stride):
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def global_average_pool(x):
    return F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)


class CnnBackbone(nn.Module):
    """conv3x3 32/64/128 + BN + ReLU, 2x2 max-pool after the first two, GAP, fc 128 + ReLU."""

    def __init__(self, in_channels):
        super().__init__()
        self.conv1, self.bn1 = conv3x3(in_channels, 32, 1), nn.BatchNorm2d(32)
        self.conv2, self.bn2 = conv3x3(32, 64, 1), nn.BatchNorm2d(64)
        self.conv3, self.bn3 = conv3x3(64, 128, 1), nn.BatchNorm2d(128)
        self.fc = nn.Linear(128, 128)
        self.feature_dim = 128

    def forward(self, x):
        h = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        h = F.max_pool2d(F.relu(self.bn2(self.conv2(h))), 2)
        h = F.relu(self.bn3(self.conv3(h)))
        return F.relu(self.fc(global_average_pool(h)))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1, self.bn1 = conv3x3(cin, cout, stride), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = conv3x3(cout, cout, 1), nn.BatchNorm2d(cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return F.relu(h + (x if self.shortcut is None else self.shortcut(x)))


class ResNetBackbone(nn.Module):
    """CIFAR ResNet: 3x3 stride-1 stem, no max-pool, stages layer1..layerK, GAP."""

    def __init__(self, in_channels, blocks, widths):
        super().__init__()
        self.conv1, self.bn1 = conv3x3(in_channels, widths[0], 1), nn.BatchNorm2d(widths[0])
        cin = widths[0]
        self.stages = []
        for s, (n, width) in enumerate(zip(blocks, widths)):
            stage = nn.Sequential()
            for b in range(n):
                stage.append(BasicBlock(cin, width, 2 if (s > 0 and b == 0) else 1))
                cin = width
            setattr(self, "layer%d" % (s + 1), stage)
            self.stages.append(stage)
        self.feature_dim = cin

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        for stage in self.stages:
            h = stage(h)
        return global_average_pool(h)


class Model(nn.Module):
    """backbone.* + heads.classifier, as fedtail's ModelImpl (feature_dim 0: no projection)."""

    def __init__(self, backbone, num_classes):
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict({"classifier": nn.Linear(backbone.feature_dim, num_classes)})

    def forward(self, x):
        return self.heads["classifier"](self.backbone(x))


def initialize(module, generator):
    """Kaiming-normal (fan_out, ReLU) convs, uniform(+-1/sqrt(fan_in)) linears, as models.cc."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.weight.size(0) * m.weight.size(2) * m.weight.size(3)
                m.weight.normal_(0.0, math.sqrt(2.0 / fan_out), generator=generator)  # no bias
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.weight.size(1))
                m.weight.uniform_(-bound, bound, generator=generator)
                if m.bias is not None:
                    m.bias.uniform_(-bound, bound, generator=generator)


WIDE = [64, 128, 256, 512]
ARCHS = {
    "cnn": lambda c: CnnBackbone(c),
    "resnet8": lambda c: ResNetBackbone(c, [1, 1, 1], [16, 32, 64]),
    "resnet18": lambda c: ResNetBackbone(c, [2, 2, 2, 2], WIDE),
    "resnet34": lambda c: ResNetBackbone(c, [3, 4, 6, 3], WIDE),
}


def make_model(arch, channels, classes, seed):
    model = Model(ARCHS[arch](channels), classes)
    initialize(model.backbone, torch.Generator().manual_seed(seed))
    initialize(model.heads, torch.Generator().manual_seed(seed + 1))
    return model


class Augmenter:
    """common/data/augment.cc with AugmentOptions{}: crop_padding 4, horizontal_flip, mean = std = 0.5."""

    def __init__(self, channels, seed, pad=4, mean=0.5, std=0.5):
        self.pad = pad
        self.rng = random.Random(seed)
        self.offset = torch.full((1, channels, 1, 1), 255.0 * mean, dtype=torch.float32)
        self.scale = torch.full((1, channels, 1, 1), 1.0 / (255.0 * std), dtype=torch.float32)

    def eval_batch(self, images):  # also fedtail's normalize()
        return (images.to(torch.float32) - self.offset) * self.scale

    def train_batch(self, images):
        b, c, h, w = images.shape
        pad = self.pad
        # Per-sample choices drawn on the host, 3 draws per sample, like fedtail's Rng loop.
        draw = self.rng.randrange
        dy, dx, flip = zip(*[(draw(2 * pad + 1), draw(2 * pad + 1), draw(2)) for _ in range(b)])
        # One gather over rows (crop) and one over columns (crop + mirror), on the padded batch.
        rows = torch.tensor(dy, dtype=torch.int64).view(b, 1) + torch.arange(h).view(1, h)
        ramp = torch.arange(w).view(1, w)
        cols = torch.where(torch.tensor(flip, dtype=torch.int64).view(b, 1).to(torch.bool),
                           (w - 1) - ramp, ramp) + torch.tensor(dx, dtype=torch.int64).view(b, 1)
        x = torch.constant_pad_nd(images, [pad, pad, pad, pad], 0)
        x = torch.gather(x, 2, rows.view(b, 1, h, 1).expand(b, c, h, w + 2 * pad))
        x = torch.gather(x, 3, cols.view(b, 1, 1, w).expand(b, c, h, w))
        return self.eval_batch(x)


def measure(step, warmup, min_steps, min_seconds):
    """fedtail-bench's measure(): untimed warm-up, then until both minimums are reached."""
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    steps = 0
    while True:
        step()
        steps += 1
        if steps < min_steps:
            continue
        seconds = time.perf_counter() - start
        if seconds >= min_seconds:
            return steps, seconds


def run_one(args, mode, batch):
    torch.set_num_threads(args.threads)
    model = make_model(args.arch, args.channels, args.classes, args.seed)
    augmenter = Augmenter(args.channels, args.seed + batch)
    gen = torch.Generator().manual_seed(args.seed + batch)
    images = torch.randint(0, 256, (batch, args.channels, args.size, args.size),
                           dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, args.classes, (batch,), dtype=torch.int64, generator=gen)
    if mode == "train":
        model.train()
        sgd = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

        def step():
            x = augmenter.train_batch(images)
            sgd.zero_grad()
            loss = F.cross_entropy(model(x), labels)
            loss.backward()
            sgd.step()

        steps, seconds = measure(step, args.warmup, args.min_steps, args.min_seconds)
    else:
        model.eval()
        with torch.no_grad():
            steps, seconds = measure(lambda: model(augmenter.eval_batch(images)).argmax(1),
                                     args.warmup, args.min_steps, args.min_seconds)
    return {"arch": args.arch, "input": "%dx%dx%d" % (args.channels, args.size, args.size),
            "mode": mode, "batch": batch, "threads": args.threads,
            "images_per_s": steps * batch / seconds, "steps": steps, "seconds": seconds,
            "parameters": sum(p.numel() for p in model.parameters()),
            "torch_version": torch.__version__}


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line on stderr and exit 1 (main), not argparse's exit 2
        raise ValueError(message)


def csv(kind, choices=None):
    def comma_separated(text):
        values = [kind(v) for v in text.split(",") if v]
        if not values or (choices and any(v not in choices for v in values)):
            raise ValueError(text)
        return values
    return comma_separated


def parse_args(argv):
    p = Parser(description="PyTorch reference for fedtail-bench (images/s of the same step)")
    p.add_argument("--arch", choices=sorted(ARCHS), default="cnn")
    p.add_argument("--channels", type=int, choices=[1, 3], default=3)
    p.add_argument("--size", type=int, choices=[28, 32], default=32)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--batch", type=csv(int), default=[8, 32], help="comma-separated, e.g. 8,32")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--mode", type=csv(str, {"train", "eval"}), default=["train", "eval"],
                   help="comma-separated: train, eval")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--min-steps", type=int, default=20)
    p.add_argument("--min-seconds", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    if args.threads < 1 or args.classes < 1 or min(args.batch) < 1:
        raise ValueError("--threads, --classes and --batch must be >= 1")
    return args


def main(argv):
    try:
        args = parse_args(argv)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass  # only settable before the first inter-op parallel work
        for mode in args.mode:
            for batch in args.batch:
                print(json.dumps(run_one(args, mode, batch)), flush=True)
    except Exception as e:  # one line on stderr, exit 1
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        print("pytorch_reference: %s" % message, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
