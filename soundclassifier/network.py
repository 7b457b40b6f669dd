"""The ResNet that turns a (1, n_mels, frames) spectrogram into class logits.

One function, `build_network`, builds every architecture from its name and class count; the model
store keeps only that name, the count and a state_dict, never a pickled object. `DEFAULT_ARCH` is
what training builds unless told otherwise.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

TORCHVISION_ARCHS = ("resnet18", "resnet34", "resnet50")
SHORT_ARCH = "resnet14"  # ResNet-18 without its last stage: conv1, 3 stages of 2 blocks, fc (2.8 M parameters, not 11.2 M)
FASTAI_ARCHS = ("xresnet18", "xresnet34", "xresnet50")
ARCHS = TORCHVISION_ARCHS + (SHORT_ARCH,) + FASTAI_ARCHS

DEFAULT_ARCH = SHORT_ARCH
"""The network training builds unless told otherwise. ResNet-14 rather than ResNet-18: on the
shipped ESC-10 folds it cross-validated at 0.891 and 0.875 (two seeds) against 0.850-0.863 for
ResNet-18 in four runs, for 0.7x the CPU; with a quarter of the weights it fits a few hundred clips
with less to overfit. On short windows ResNet-18's last stage is also degenerate (maps under 3
frames wide for windows of 1.25 s or less, every 3x3 kernel half padding), and there ResNet-14
matched it at 2x less CPU. Defaults are for a few hundred to a few thousand clips; a larger set
may repay --arch resnet18, not measured here (docs/training-recipe.md)."""


def build_network(arch: str, n_classes: int) -> nn.Module:
    """A fresh one-channel ResNet with `n_classes` outputs (random weights)."""
    if arch == SHORT_ARCH:
        net = build_network("resnet18", n_classes)
        net.layer4 = nn.Identity()  # the state_dict then has no layer4 keys: what is stored rebuilds it
        net.fc = nn.Linear(net.layer3[-1].bn2.num_features, n_classes)
        return net
    if arch in TORCHVISION_ARCHS:
        import torchvision

        net = getattr(torchvision.models, arch)(weights=None, num_classes=n_classes)
        net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        return net
    if arch in FASTAI_ARCHS:
        from fastai.vision.models import xresnet

        return getattr(xresnet, arch)(c_in=1, n_out=n_classes)
    raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")


def load_pretrained(net: nn.Module, arch: str, path: Path) -> list[str]:
    """Load ImageNet weights for a torchvision ResNet from a local file, adapted to one channel.

    The first convolution's RGB kernels are summed into one grey kernel (the usual adaptation:
    a grey image fed as R=G=B gives the same activations), and the classifier head is left fresh.
    Returns the names of the parameters that were not taken from the file. Nothing is downloaded.
    """
    if arch not in TORCHVISION_ARCHS + (SHORT_ARCH,):
        raise ValueError(f"--pretrained needs a torchvision ResNet ({', '.join(TORCHVISION_ARCHS + (SHORT_ARCH,))})")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if "conv1.weight" in state and state["conv1.weight"].shape[1] == 3:
        state["conv1.weight"] = state["conv1.weight"].sum(dim=1, keepdim=True)
    own = net.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    net.load_state_dict(usable, strict=False)
    return sorted(set(own) - set(usable))
