"""Calibration: temperature scaling, expected calibration error, the rule for "unknown"."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax

from soundclassifier.predictions import UnknownRule, familiarity
from training.calibrate import (
    MIN_TEMPERATURE,
    accuracy_with_unknown,
    calibrate,
    choose_threshold,
    ece,
    fit_temperature,
    nll,
    unknown_mask,
)


def sampled(temperature: float, n: int = 4000, classes: int = 5, seed: int = 0):
    """Logits and labels drawn from softmax(logits / temperature): that T is the true calibration."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 4, (n, classes))
    probs = softmax(logits / temperature, axis=1)
    targets = np.array([rng.choice(classes, p=p) for p in probs])
    return logits, targets


@pytest.mark.parametrize("true_t", [0.7, 1.0, 2.5])
def test_fit_temperature_recovers_the_temperature_the_labels_were_drawn_with(true_t):
    logits, targets = sampled(true_t)
    t = fit_temperature(logits, targets)
    assert t == pytest.approx(true_t, rel=0.1)
    assert nll(logits, targets, t) <= min(nll(logits, targets, t * 0.8), nll(logits, targets, t * 1.25))


def test_ece_is_small_for_calibrated_and_large_for_overconfident_probabilities():
    logits, targets = sampled(3.0, n=6000)
    calibrated = softmax(logits / 3.0, axis=1)
    overconfident = softmax(logits, axis=1)
    assert ece(calibrated, targets) < 0.03
    assert ece(overconfident, targets) > 0.15


def test_ece_by_hand():
    # Two clips at confidence 0.9 (one right): gap 0.4 over half the clips; two at 0.6 (both
    # right): gap 0.4 over the other half. ECE = 0.4.
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    targets = np.array([0, 1, 1, 1])
    assert ece(probs, targets) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)
    assert ece(probs, targets, bins=1) == pytest.approx(abs(0.75 - 0.75))


def test_threshold_keeps_the_share_of_correct_answers_it_promises():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, (500, 10))
    targets = np.where(rng.random(500) < 0.8, logits.argmax(axis=1), rng.integers(0, 10, 500))
    correct = logits.argmax(axis=1) == targets
    score = familiarity(logits)
    for keep in (0.5, 0.9, 0.95, 1.0):
        t = choose_threshold(score, correct, keep_correct=keep)
        assert (score >= t)[correct].mean() >= keep
        # the largest such threshold: a little higher and fewer are kept
        assert (score >= t + 2e-4)[correct].mean() < keep
    assert choose_threshold(score, correct, keep_correct=1.0) <= score[correct].min()
    assert choose_threshold(score, np.zeros(500, bool)) == -np.inf  # none right: nothing is "unknown"


def test_familiarity_is_the_log_of_the_summed_exponentials_whatever_their_scale():
    z = np.array([[1000.0, 999.0, -5.0], [-3.0, -3.0, -3.0]])  # no overflow, no -inf
    np.testing.assert_allclose(familiarity(z), [1000 + np.log(1 + np.exp(-1) + np.exp(-1005)), -3 + np.log(3)])
    # a clip that drives every class weakly is less familiar than one that drives one strongly,
    # even where its top probability is higher
    weak, strong = np.array([[2.0, -4.0, -4.0]]), np.array([[6.0, 5.0, 4.0]])
    assert softmax(weak, axis=1).max() > softmax(strong, axis=1).max()
    assert familiarity(weak)[0] < familiarity(strong)[0]


def test_the_stored_rule_decides_unknown_by_its_own_score():
    z = np.array([[2.0, -4.0, -4.0], [6.0, 5.0, 4.0]])
    by_familiarity = UnknownRule.stored({"familiarity_threshold": 4.0})
    by_probability = UnknownRule.stored({"threshold": 0.9})  # a model stored before familiarity
    assert by_familiarity.unknown_mask(z).tolist() == [True, False]
    assert by_probability.unknown_mask(z).tolist() == [False, True]
    assert not UnknownRule.stored({}).unknown_mask(z).any()  # no calibration: never "unknown"
    assert by_familiarity.unknown_mask(np.array([[np.nan, 0.0, 0.0]])).all()  # not a number: "unknown"


def test_accuracy_with_unknown_counts_unknown_as_wrong():
    logits = np.array([[3.0, 0.0], [0.2, 0.0], [0.0, 3.0], [3.0, 0.0]])
    targets = np.array([0, 0, 1, 1])  # the last one is answered wrongly
    cal = {"temperature": 1.0}
    assert accuracy_with_unknown(logits, targets, {**cal, "familiarity_threshold": -10.0}) == 0.75
    assert accuracy_with_unknown(logits, targets, {**cal, "familiarity_threshold": 1.0}) == 0.5  # [0.2, 0] is "unknown"
    assert accuracy_with_unknown(logits, targets, {**cal, "familiarity_threshold": 10.0}) == 0.0
    assert accuracy_with_unknown(logits * 4, targets, {"temperature": 4.0, "familiarity_threshold": 1.0}) == 0.5


def test_calibrate_writes_the_shape_serving_reads():
    logits, targets = sampled(2.0, n=800)
    logits = logits * 3  # an overconfident network: true temperature 6
    cal = calibrate(logits, targets, "temperature scaling on held-out fold 1")
    assert set(cal) == {"temperature", "ece_before", "ece_after", "familiarity_threshold", "n", "method"}
    assert isinstance(cal["n"], int) and cal["n"] == 800
    assert all(isinstance(cal[k], float) for k in ("temperature", "ece_before", "ece_after", "familiarity_threshold"))
    assert cal["method"] == "temperature scaling on held-out fold 1"
    assert cal["temperature"] == pytest.approx(6.0, rel=0.15)
    assert cal["ece_after"] < cal["ece_before"] / 3
    # the threshold is the rule applied to the familiarity of the temperature-scaled logits it will meet
    correct = logits.argmax(axis=1) == targets
    assert cal["familiarity_threshold"] == choose_threshold(familiarity(logits / cal["temperature"]), correct)
    assert unknown_mask(logits, cal)[correct].mean() <= 0.05


def test_ece_after_is_measured_on_clips_the_temperature_was_not_fitted_on():
    logits, targets = sampled(1.0, n=60, seed=3)
    by_group = calibrate(logits, targets, "m", groups=np.arange(60) % 3)
    t = fit_temperature(logits, targets)
    in_sample = ece(softmax(logits / t, axis=1), targets)
    assert by_group["ece_after"] != pytest.approx(in_sample, abs=1e-6)
    # groups change only ece_after: the temperature and the threshold are fitted on every clip
    halves = calibrate(logits, targets, "m")
    assert (halves["temperature"], halves["familiarity_threshold"]) == (by_group["temperature"], by_group["familiarity_threshold"])


# --- outlier exposure: the loss that teaches "none of these" --------------------------------------


def test_outlier_exposure_loss():
    import torch

    from training.train import OUTLIER, OUTLIER_WEIGHT, OutlierExposureLoss

    loss = OutlierExposureLoss()
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0], [3.0, -3.0, 0.0]], requires_grad=True)
    target = torch.tensor([0, OUTLIER, OUTLIER])
    per_clip = OutlierExposureLoss(reduction="none")(logits, target).detach()
    assert per_clip[0].item() == pytest.approx(torch.nn.functional.cross_entropy(logits[:1], target[:1]).item())
    assert per_clip[1].item() == pytest.approx(OUTLIER_WEIGHT * np.log(3))  # uniform: the least it can be
    assert per_clip[2] > per_clip[1]  # a confident answer to an outlier costs more
    loss(logits, target).backward()
    # the gradient pushes an outlier's logits towards equal: down where high, up where low
    g = logits.grad[2]
    assert g[0] > 0 and g[1] < 0
    assert logits.grad[1].abs().max() < 1e-6  # already uniform: nothing to push
    assert OutlierExposureLoss.y_int  # fastai's MixUp then mixes losses, not integer targets


def test_held_out_clips_all_right_do_not_sharpen_to_certainty():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 0.3, (100, 10))
    targets = rng.integers(0, 10, 100)
    logits[np.arange(100), targets] += 3 + 3 * rng.random(100)  # every clip right, by a clear margin
    assert nll(logits, targets, 0.1) < nll(logits, targets, 0.5)  # the NLL alone wants T -> 0
    cal = calibrate(logits, targets, "m")
    assert cal["temperature"] == pytest.approx(MIN_TEMPERATURE, rel=1e-3)
    # an answer with a clear but not overwhelming margin can still be "unknown"
    doubtful = np.zeros((1, 10))
    doubtful[0, 0] = 2.0
    assert unknown_mask(doubtful, cal)[0]
