"""Pictures of what the model sees."""

from __future__ import annotations

import io

import numpy as np

from soundclassifier.features import FeatureSettings


def spectrogram_png(features: np.ndarray, settings: FeatureSettings, title: str = "") -> bytes:
    """PNG of a model input (1, n_mels, frames): time in seconds across, mel band up, as the
    network receives it (after dB scaling and per-clip standardisation)."""
    # matplotlib is imported on the first picture, not with the service: it is 29 MiB of RSS in
    # every process that imports it (the `bentoml serve` parent imports service.py too), for a
    # route many replicas never serve.
    from matplotlib.figure import Figure

    image = features[0]
    seconds = image.shape[1] * settings.hop_length / settings.sample_rate
    fig = Figure(figsize=(8, 3.2), dpi=100)  # no pyplot: thread-safe, no global state
    ax = fig.add_subplot()
    mesh = ax.imshow(
        image, origin="lower", aspect="auto", cmap="magma", extent=(0, seconds, 0, image.shape[0])
    )
    ax.set_xlabel("time (s)")
    ax.set_ylabel(f"mel band ({settings.f_min:g}-{settings.f_max:g} Hz)")
    if title:
        ax.set_title(title)
    fig.colorbar(mesh, ax=ax, label="standardised dB")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
