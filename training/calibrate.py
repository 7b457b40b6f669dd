"""Confidence that means something: temperature scaling, calibration error, a threshold for "unknown".

All three are fitted on held-out logits (clips the network was not trained on):

    temperature   T minimising the negative log-likelihood of softmax(logits / T) (Guo et al. 2017,
                  "On Calibration of Modern Neural Networks"), at least MIN_TEMPERATURE; one
                  scalar, so the predicted class never changes, only how sure the model says it is.
    ECE           expected calibration error over 15 equal-width confidence bins: the mean gap
                  between confidence and accuracy, weighted by how many clips fall in each bin.
    threshold     the recommended `min_confidence`: the largest calibrated top probability that
                  still answers at least `KEEP_CORRECT` of the held-out clips the model gets right
                  (the rest of them, and everything below, become "unknown"), at most 0.999. The rule looks only
                  at in-set clips, so it carries over to any data set; how often sounds from none of
                  the classes get "unknown" at that threshold is measured separately
                  (training.outofset) and reported, not tuned for.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

ECE_BINS = 15
KEEP_CORRECT = 0.95  # share of held-out clips answered correctly that keep their answer at the threshold
MIN_TEMPERATURE = 0.5
"""When every held-out clip is right and well separated, the NLL keeps falling as T -> 0: the fit
would sharpen every answer, unknown sounds included, to certainty (a set of short words gave
T = 0.028 and a threshold of 1.0). The floor allows at most twice the network's own sharpness;
the networks trained here needed 0.7-0.9 on ESC-10 (mixup leaves them slightly under-confident)."""
LOG_T_BOUNDS = (float(np.log(MIN_TEMPERATURE)), 4.0)  # up to T = 55, far beyond any network here
MAX_THRESHOLD = 0.999  # above it, whether an answer stands depends on float rounding (softmax saturates)


def nll(logits: np.ndarray, targets: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the targets under softmax(logits / temperature)."""
    logp = log_softmax(np.asarray(logits, np.float64) / temperature, axis=1)
    return float(-logp[np.arange(len(targets)), targets].mean())


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """The T in [MIN_TEMPERATURE, 55] that minimises nll(logits, targets, T), searched over log T."""
    targets = np.asarray(targets)
    res = minimize_scalar(
        lambda log_t: nll(logits, targets, float(np.exp(log_t))), bounds=LOG_T_BOUNDS, method="bounded",
        options={"xatol": 1e-5},
    )  # fmt: skip
    return float(np.exp(res.x))


def ece(probs: np.ndarray, targets: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error: sum over confidence bins of |accuracy - confidence| * share of clips."""
    probs, targets = np.asarray(probs), np.asarray(targets)
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == targets
    # Bins are (lo, hi]; a confidence of exactly 0 cannot occur for a softmax over finite logits.
    idx = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        members = idx == b
        if members.any():
            total += abs(correct[members].mean() - conf[members].mean()) * members.mean()
    return float(total)


def choose_threshold(probs: np.ndarray, targets: np.ndarray, keep_correct: float = KEEP_CORRECT) -> float:
    """The largest t with at least `keep_correct` of the correctly classified clips at top probability >= t."""
    probs, targets = np.asarray(probs), np.asarray(targets)
    conf = probs.max(axis=1)
    right = np.sort(conf[probs.argmax(axis=1) == targets])
    if len(right) == 0:
        return 0.0
    # Sorted ascending, dropping the k lowest keeps len - k; the threshold is the lowest one kept.
    k = int(np.floor(len(right) * (1 - keep_correct) + 1e-9))
    return min(MAX_THRESHOLD, math.floor(float(right[k]) * 1e4) / 1e4)  # rounded down: the kept clips stay kept


def answered(probs: np.ndarray, threshold: float) -> np.ndarray:
    """True where the top probability reaches the threshold (serving answers a label, not "unknown")."""
    return np.asarray(probs).max(axis=1) >= threshold


def unknown_mask(logits: np.ndarray, temperature: float, threshold: float) -> np.ndarray:
    """True where serving answers "unknown": the top of softmax(logits / temperature) is below the threshold."""
    return ~answered(softmax(np.asarray(logits) / temperature, axis=1), threshold)


def calibrate(logits: np.ndarray, targets: np.ndarray, method: str, groups: np.ndarray | None = None) -> dict:
    """The `calibration` entry of a model's metadata, fitted on held-out logits.

    Serving computes softmax(logits / temperature) and answers "unknown" when the top probability is
    below `min_confidence` (default: `threshold`). `method` says where the held-out logits came from.
    `temperature` and `threshold` are fitted on all of them; `ece_after` is measured by cross-fitting
    over `groups` (each group's clips scaled by a temperature fitted on the other groups), so it is
    not flattered by judging the temperature on the clips it was fitted to. Without groups, on halves.
    """
    logits, targets = np.asarray(logits, np.float64), np.asarray(targets)
    groups = np.arange(len(targets)) % 2 if groups is None else np.asarray(groups)
    t = fit_temperature(logits, targets)
    cross_fitted = np.empty_like(logits)
    for g in np.unique(groups):
        inside = groups == g
        t_other = fit_temperature(logits[~inside], targets[~inside]) if (~inside).any() else t
        cross_fitted[inside] = softmax(logits[inside] / t_other, axis=1)
    return {
        "temperature": round(t, 4),
        "ece_before": round(ece(softmax(logits, axis=1), targets), 4),
        "ece_after": round(ece(cross_fitted, targets), 4),
        "threshold": choose_threshold(softmax(logits / t, axis=1), targets),
        "n": int(len(targets)),
        "method": method,
    }


def accuracy_with_unknown(probs: np.ndarray, targets: np.ndarray, threshold: float) -> float:
    """In-set accuracy when an answer below the threshold ("unknown") counts as wrong."""
    probs = np.asarray(probs)
    return float(((probs.argmax(axis=1) == np.asarray(targets)) & answered(probs, threshold)).mean())
