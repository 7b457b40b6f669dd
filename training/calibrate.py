"""Confidence that means something: temperature scaling, calibration error, the rule for "unknown".

All three are fitted on held-out logits (clips the network was not trained on):

    temperature   T minimising the negative log-likelihood of softmax(logits / T) (Guo et al. 2017,
                  "On Calibration of Modern Neural Networks"), at least MIN_TEMPERATURE; one
                  scalar, so the predicted class never changes, only how sure the model says it is.
    ECE           expected calibration error over 15 equal-width confidence bins: the mean gap
                  between confidence and accuracy, weighted by how many clips fall in each bin.
    familiarity_threshold
                  on the clip's familiarity (soundclassifier.predictions.familiarity: log-sum-exp of
                  the calibrated logits): the largest value that still answers at
                  least `KEEP_CORRECT` of the held-out clips the model gets right (the rest of them,
                  and everything below, become "unknown"). The rule looks only at in-set clips, so
                  it carries over to any data set; how often sounds from none of the classes get
                  "unknown" at that threshold is measured separately (training.outofset, and the
                  --outlier-dir recordings held out) and reported, not tuned for. Models stored
                  before it hold `threshold`, on the top probability, which serving still applies
                  (soundclassifier.predictions.UnknownRule).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from soundclassifier.predictions import UnknownRule, familiarity

ECE_BINS = 15
KEEP_CORRECT = 0.95  # share of held-out clips answered correctly that keep their answer at the threshold
MIN_TEMPERATURE = 0.5
"""When every held-out clip is right and well separated, the NLL keeps falling as T -> 0: the fit
would sharpen every answer, unknown sounds included, to certainty (a set of short words gave
T = 0.028 and a top-probability threshold of 1.0). The floor allows at most twice the network's own sharpness;
the networks trained here needed 0.7-0.9 on ESC-10 (mixup leaves them slightly under-confident)."""
LOG_T_BOUNDS = (float(np.log(MIN_TEMPERATURE)), 4.0)  # up to T = 55, far beyond any network here


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


def choose_threshold(scores: np.ndarray, correct: np.ndarray, keep_correct: float = KEEP_CORRECT) -> float:
    """The largest t with at least `keep_correct` of the correctly classified clips at score >= t;
    -inf when none is correct (nothing is "unknown")."""
    right = np.sort(np.asarray(scores)[np.asarray(correct, bool)])
    if len(right) == 0:
        return -math.inf
    # Sorted ascending, dropping the k lowest keeps len - k; the threshold is the lowest one kept.
    k = int(np.floor(len(right) * (1 - keep_correct) + 1e-9))
    return math.floor(float(right[k]) * 1e4) / 1e4  # rounded down: the kept clips stay kept


def unknown_mask(logits: np.ndarray, calibration: dict) -> np.ndarray:
    """True where serving answers "unknown" to these logits with a model's stored calibration."""
    return UnknownRule.stored(calibration).unknown_mask(np.asarray(logits, np.float64) / calibration["temperature"])


def calibrate(logits: np.ndarray, targets: np.ndarray, method: str, groups: np.ndarray | None = None) -> dict:
    """The `calibration` entry of a model's metadata, fitted on held-out logits.

    Serving computes softmax(logits / temperature) and answers "unknown" when the familiarity of
    logits / temperature is below `familiarity_threshold` (or, if the request gives `min_confidence`,
    the top probability below that). `method` says where the held-out logits came from.
    `temperature` and `familiarity_threshold` are fitted on all of them; `ece_after` is measured by cross-fitting
    over `groups` (each group's clips scaled by a temperature fitted on the other groups), so it is
    not flattered by judging the temperature on the clips it was fitted to. Without groups, on halves.
    """
    logits, targets = np.asarray(logits, np.float64), np.asarray(targets)
    groups = np.arange(len(targets)) % 2 if groups is None else np.asarray(groups)
    t = round(fit_temperature(logits, targets), 4)  # as stored, so the threshold is fitted to what serving divides by
    cross_fitted = np.empty_like(logits)
    for g in np.unique(groups):
        inside = groups == g
        t_other = fit_temperature(logits[~inside], targets[~inside]) if (~inside).any() else t
        cross_fitted[inside] = softmax(logits[inside] / t_other, axis=1)
    threshold = choose_threshold(familiarity(logits / t), logits.argmax(axis=1) == targets)
    return {
        "temperature": t,
        "ece_before": round(ece(softmax(logits, axis=1), targets), 4),
        "ece_after": round(ece(cross_fitted, targets), 4),
        # no held-out clip right: no threshold, nothing "unknown" (metadata holds no infinity)
        **({"familiarity_threshold": threshold} if math.isfinite(threshold) else {}),
        "n": int(len(targets)),
        "method": method,
    }


def accuracy_with_unknown(logits: np.ndarray, targets: np.ndarray, calibration: dict) -> float:
    """In-set accuracy when an answer of "unknown" (by the stored rule) counts as wrong."""
    logits = np.asarray(logits)
    return float(((logits.argmax(axis=1) == np.asarray(targets)) & ~unknown_mask(logits, calibration)).mean())
