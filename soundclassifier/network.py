"""The ResNet that turns a (1, n_mels, frames) spectrogram into class logits.

One function, `build_network`, builds every architecture from its name and class count; the model
store keeps only that name, the count and a state_dict, never a pickled object. `choose_arch` says
which one a window of a given width gets by default.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

TORCHVISION_ARCHS = ("resnet18", "resnet34", "resnet50")
SHORT_ARCH = "resnet14"  # ResNet-18 without its last stage: conv1, 3 stages of 2 blocks, fc (2.8 M parameters, not 11.2 M)
FASTAI_ARCHS = ("xresnet18", "xresnet34", "xresnet50")
ARCHS = TORCHVISION_ARCHS + (SHORT_ARCH,) + FASTAI_ARCHS

MIN_LAST_STAGE_FRAMES = 3
"""The last stage of ResNet-18 stays when its maps are at least this many frames wide. Narrower,
its 3x3 convolutions see a frame of zero padding for every frame or two of signal, so there is
little time pattern left for it to learn, while it holds three quarters of the weights: at small
inputs the weight work (backward pass, optimizer step) is most of the training time, and does not
shrink with the input (docs/training-recipe.md, short clips)."""


def stage_frames(frames: int) -> list[int]:
    """Time width of the maps the four stages of a torchvision ResNet put out for an input `frames`
    wide: the stem halves it twice (7x7 convolution and max-pool, both stride 2), stages 2-4 once
    each (3x3, stride 2, padding 1); every halving rounds up."""
    widths = [math.ceil(math.ceil(frames / 2) / 2)]
    for _ in range(3):
        widths.append(math.ceil(widths[-1] / 2))
    return widths


def choose_arch(frames: int) -> str:
    """The default network for inputs `frames` wide: ResNet-18, or ResNet-14 (the same without the
    last stage) where that stage's maps would be narrower than MIN_LAST_STAGE_FRAMES. At the
    default hop: windows up to 1.25 s (54 frames) get ResNet-14, 1.5 s (65 frames) and longer ResNet-18."""
    return "resnet18" if stage_frames(frames)[-1] >= MIN_LAST_STAGE_FRAMES else SHORT_ARCH


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
