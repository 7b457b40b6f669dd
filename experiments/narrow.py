"""ResNet-14 at another width (docs/training-recipe.md, CV table).

    WIDTH=32 OMP_NUM_THREADS=1 python -m experiments.narrow --cv --no-save [--seed 1]

ResNet-14 is ResNet-18's stem and first three stages, 64-128-256 channels. This builds the same
network with WIDTH-2*WIDTH-4*WIDTH channels (WIDTH=64 is ResNet-14 itself) and runs training.train's
cross-validation with it (its CV line on stdout; docs/training-recipe.md's CV table records it).
Only for measuring: soundclassifier.network does not build it.
"""

from __future__ import annotations

import os
import sys

from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

import training.train as train

WIDTH = int(os.environ.get("WIDTH", "32"))


class ResNet14(ResNet):
    def __init__(self, n_classes: int, width: int):
        nn.Module.__init__(self)
        self._norm_layer, self.dilation, self.groups, self.base_width = nn.BatchNorm2d, 1, 1, 64
        self.inplanes = width
        self.conv1 = nn.Conv2d(1, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(BasicBlock, width, 2)
        self.layer2 = self._make_layer(BasicBlock, 2 * width, 2, stride=2)
        self.layer3 = self._make_layer(BasicBlock, 4 * width, 2, stride=2)
        self.layer4 = nn.Identity()
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(4 * width, n_classes)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)


def build(arch: str, n_classes: int) -> nn.Module:
    net = ResNet14(n_classes, WIDTH)
    print(f"ResNet-14, width {WIDTH}: {sum(p.numel() for p in net.parameters())} parameters", flush=True)
    return net


if __name__ == "__main__":
    train.build_network = build
    sys.exit(train.main(sys.argv[1:]))
