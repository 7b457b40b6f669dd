"""Where training starts: fresh weights, or a stored model's (`--init-from TAG`).

A stored model gives its architecture, its feature settings (the body learned those spectrograms;
only the window length may change, as the network pools over time) and its weights, read from
the entry's safetensors file (no pickle). The classifier head (the network's last linear layer)
is kept only when the new labels are the stored ones in the same order; otherwise it starts fresh.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from safetensors.torch import load_file

from soundclassifier.features import FeatureSettings
from soundclassifier.network import build_network
from soundclassifier.store import WEIGHTS_FILE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Start:
    arch: str
    state: dict[str, torch.Tensor] = field(default_factory=dict)  # loaded with strict=False
    settings: FeatureSettings | None = None  # None: today's defaults
    tag: str | None = None
    fresh: tuple[str, ...] = ()  # parameters left at their random initial values

    def describe(self) -> dict:
        return {"tag": self.tag, "fresh_parameters": list(self.fresh)}


def head_names(net: torch.nn.Module) -> list[str]:
    """State-dict keys of the network's last linear layer (its classifier head)."""
    last = [name for name, m in net.named_modules() if isinstance(m, torch.nn.Linear)][-1]
    return [f"{last}.{p}" if last else p for p, _ in net.get_submodule(last).named_parameters()]


def start_from(tag: str | None, labels: list[str], arch: str) -> Start:
    """Fresh weights (`tag` None), or the stored model `tag`'s, with a fresh head for new labels."""
    if tag is None:
        return Start(arch=arch)
    import bentoml

    model = bentoml.models.get(tag)
    meta = model.info.metadata
    stored = load_file(model.path_of(WEIGHTS_FILE))
    net = build_network(meta["arch"], len(labels))
    own = net.state_dict()
    keep_head = list(meta["labels"]) == list(labels)
    drop = set() if keep_head else set(head_names(net))
    state = {k: v for k, v in stored.items() if k in own and k not in drop and own[k].shape == v.shape}
    fresh = tuple(sorted(set(own) - set(state)))
    unexpected = sorted(set(stored) - set(own))
    if unexpected:
        raise ValueError(f"{model.tag} has weights the {meta['arch']} network does not: {unexpected[:5]}")
    log.info("starting from %s (%s); fresh: %s", model.tag, meta["arch"], ", ".join(fresh) or "nothing")
    return Start(
        arch=meta["arch"],
        state=state,
        settings=FeatureSettings.from_metadata(meta["feature_settings"]),
        tag=str(model.tag),
        fresh=fresh,
    )
