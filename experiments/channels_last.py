"""Training steps of the default network in PyTorch's default layout (NCHW) against channels_last.

    python -m experiments.channels_last [--arch resnet14] [--batch 32] [--rounds 8]

One step is what `make train` repeats: forward, cross-entropy, backward and an AdamW update on a
batch of random log-mel-shaped inputs. The two layouts alternate round by round (this machine
drifts by 15-25% within minutes), each round timing 5 steps after 2 warm-up steps on a fresh
network, and it prints the median step of each layout and their ratio. Why: forward and backward
are about three quarters of a training run here (py-spy over `python -m training.train --epochs 3`);
a layout that oneDNN runs faster would shorten `make train` without changing the recipe.

Run on 2 cores, 2026-12-06 10:46 at 08456f4 (load 0.4-1.8): NCHW 1375 ms a step, channels_last 1105 ms,
0.80x, lower in all 8 rounds. Not applied to training/train.py yet (issue 31's note says what is left).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from soundclassifier.features import FeatureSettings
from soundclassifier.network import DEFAULT_ARCH, build_network

STEPS, WARMUP = 5, 2


def seconds_per_step(arch: str, x: torch.Tensor, y: torch.Tensor, channels_last: bool) -> float:
    net = build_network(arch, int(y.max()) + 1)
    optimizer = torch.optim.AdamW(net.parameters())
    if channels_last:
        net, x = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        torch.nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()

    for _ in range(WARMUP):
        step()
    start = time.perf_counter()
    for _ in range(STEPS):
        step()
    return (time.perf_counter() - start) / STEPS


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default=DEFAULT_ARCH)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=8)
    args = p.parse_args()
    torch.manual_seed(0)
    fs = FeatureSettings()
    x, y = torch.randn(args.batch, 1, fs.n_mels, fs.frames), torch.randint(0, 10, (args.batch,))
    times: dict[bool, list[float]] = {False: [], True: []}
    for r in range(args.rounds):
        for channels_last in (False, True) if r % 2 == 0 else (True, False):
            times[channels_last].append(seconds_per_step(args.arch, x, y, channels_last))
    nchw, last = statistics.median(times[False]), statistics.median(times[True])
    lower = sum(b < a for a, b in zip(times[False], times[True], strict=True))
    print(f"{args.arch}, batch {args.batch}: NCHW {nchw * 1e3:.0f} ms a step, channels_last {last * 1e3:.0f} ms, "
          f"{last / nchw:.2f}x, lower in {lower} of {args.rounds} rounds")


if __name__ == "__main__":
    main()
