#!/usr/bin/env python3
"""Exports a PyTorch model as a TorchScript file that fedtail can train (config.model.arch "torchscript").

fedtail's convention for a module saved with torch.jit.save:
  * a method features(x): float N x C x H x W -> float N x D (mark it @torch.jit.export), and
  * a submodule `head`: the classifier, an nn.Linear(D, num_classes).
fedtail calls head(features(x)); strategies that split body and head (FedLoGe, FedSA, FedProto, FedRep,
FedBABU, ...) train or replace `head` and keep the rest as the backbone. forward() is not used by fedtail.

Copy `ExampleNet` below, change its layers, keep `features` and `head`, and run:
    python3 tools/export_model.py --out model.pt --in-channels 1 --classes 10
then point a run config at it: "model": {"arch": "torchscript", "path": "model.pt"}.
The weights in the file are the run's initial model (the coordinator ships them; every client needs the
same file, checked by its SHA-256).
"""

import argparse
import sys

try:
    import torch
    from torch import nn
except ImportError:  # pragma: no cover - depends on the machine
    sys.exit("export_model.py: PyTorch is not installed (Debian: apt-get install python3-torch)")


class ExampleNet(nn.Module):
    """A small CNN: two conv blocks with BatchNorm, global average pooling, a 64-wide feature layer."""

    def __init__(self, in_channels: int, classes: int, width: int = 32, feature_dim: int = 64):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(2 * width, feature_dim),
            nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, classes)

    @torch.jit.export
    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="where to write the TorchScript file")
    parser.add_argument("--in-channels", type=int, default=1, help="image channels (1 Fashion-MNIST, 3 CIFAR)")
    parser.add_argument("--classes", type=int, default=10, help="number of classes")
    parser.add_argument("--width", type=int, default=32, help="channels of the first conv block")
    parser.add_argument("--feature-dim", type=int, default=64, help="width D of features(x)")
    parser.add_argument("--image-size", type=int, default=28, help="input height = width, for the check")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial weights")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    model = ExampleNet(args.in_channels, args.classes, args.width, args.feature_dim)
    scripted = torch.jit.script(model)
    # Check the convention before writing: features() gives N x D, head maps D to the classes.
    x = torch.zeros(2, args.in_channels, args.image_size, args.image_size)
    scripted.eval()
    with torch.no_grad():
        f = scripted.features(x)
        logits = scripted.head(f)
    if f.shape != (2, args.feature_dim) or logits.shape != (2, args.classes):
        sys.exit(f"export_model.py: features(x) gave {tuple(f.shape)}, head {tuple(logits.shape)}")
    scripted.train()
    scripted.save(args.out)
    params = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out}: {params} parameters, features(x) -> N x {args.feature_dim}, "
          f"head -> {args.classes} classes (torch {torch.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
