"""Held-out evaluation: accuracy, macro-F1, per-class precision/recall, confusion matrix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support


@torch.inference_mode()
def predict_logits(network: torch.nn.Module, dataset, batch_size: int = 32) -> np.ndarray:
    """Raw class scores (n, classes) for every item of a (features, target) dataset, in order."""
    network.eval()
    out = []
    for start in range(0, len(dataset), batch_size):
        batch = torch.stack([dataset[i][0] for i in range(start, min(start + batch_size, len(dataset)))])
        out.append(network(batch).float().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def report(targets: list[int] | np.ndarray, preds: np.ndarray, labels: list[str]) -> dict:
    """Metrics as a JSON-ready dict (all floats rounded to 4 places)."""
    y, p = np.asarray(targets), np.asarray(preds)
    idx = list(range(len(labels)))
    prec, rec, f1, support = precision_recall_fscore_support(y, p, labels=idx, zero_division=0)
    return {
        "accuracy": round(float(accuracy_score(y, p)), 4),
        "macro_f1": round(float(f1_score(y, p, labels=idx, average="macro", zero_division=0)), 4),
        "n_valid": int(len(y)),
        "per_class": {
            lab: {
                "precision": round(float(prec[i]), 4),
                "recall": round(float(rec[i]), 4),
                "f1": round(float(f1[i]), 4),
                "support": int(support[i]),
            }
            for i, lab in enumerate(labels)
        },
        "confusion_matrix": confusion_matrix(y, p, labels=idx).tolist(),
    }


def format_report(metrics: dict) -> str:
    lines = [
        f"accuracy {metrics['accuracy']:.4f}   macro-F1 {metrics['macro_f1']:.4f}   "
        f"({metrics['n_valid']} held-out clips)",
        f"{'class':<24}{'precision':>10}{'recall':>10}{'f1':>8}{'n':>6}",
    ]
    for lab, m in metrics["per_class"].items():
        lines.append(
            f"{lab[:23]:<24}{m['precision']:>10.3f}{m['recall']:>10.3f}{m['f1']:>8.3f}{m['support']:>6}"
        )
    return "\n".join(lines)


def plot_confusion(metrics: dict, labels: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    size = max(5.0, 0.45 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay(np.array(metrics["confusion_matrix"]), display_labels=labels).plot(
        ax=ax, xticks_rotation="vertical", colorbar=False, cmap="Blues"
    )
    ax.set_title(f"held-out accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
