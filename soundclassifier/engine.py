"""Inference engines: run the network on a batch of spectrograms and return logits.

Every engine takes float32 (n, 1, n_mels, frames) and returns float32 (n, n_classes); PyTorch eager
fp32 is the reference the others are checked against.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from torch import nn


class Engine(Protocol):
    name: str
    precision: str

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


class TorchEngine:
    """PyTorch eager on the CPU, fp32: the reference engine."""

    name = "torch"
    precision = "fp32"

    def __init__(self, network: nn.Module):
        self.network = network.eval()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.network(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))).numpy()
