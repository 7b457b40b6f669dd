"""The pipeline in process, on the tiny trained model: arguments, admission, calibration, labels."""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np
import pytest

from soundclassifier.classifier import Classifier
from soundclassifier.config import Settings
from soundclassifier.engine import TorchEngine
from soundclassifier.errors import InvalidArgumentError, LimitExceededError, OverloadedError
from soundclassifier.pipeline import Pipeline
from soundclassifier.predictions import UNKNOWN, familiarity, softmax
from testkit import audiofiles as af

REPORT = {"chosen": "torch/fp32", "clips_per_second": 100.0, "tried": {}}


class Gate:
    """A batcher that holds every forward pass until `open` is set (the engine made slow at will)."""

    def __init__(self, forward, **_):
        self.forward, self.open, self.waiting = forward, asyncio.Event(), 0

    async def __call__(self, inputs):
        self.waiting += 1
        await self.open.wait()
        return self.forward(inputs, True)

    def close(self) -> None:
        pass


def pipeline(model, settings: Settings | None = None, **metadata) -> Pipeline:
    if metadata:
        model = dataclasses.replace(model, metadata={**model.metadata, **metadata})
    return Pipeline(Classifier(model, TorchEngine(model.network)), settings or Settings(), REPORT, make_batcher=Gate)


def test_requests_beyond_the_in_flight_budget_are_refused_at_once(loaded_model):
    async def scenario():
        p = pipeline(loaded_model, Settings(max_requests_in_flight=2))
        held = [asyncio.create_task(p.classify(af.wav_sine(seconds=1.0))) for _ in range(2)]
        while p.batcher.waiting < 2:
            await asyncio.sleep(0.01)
        with pytest.raises(OverloadedError):
            await p.classify(af.wav_sine(seconds=1.0))
        with pytest.raises(OverloadedError):
            await p.spectrogram(af.wav_sine(seconds=1.0))
        p.batcher.open.set()
        done = await asyncio.gather(*held)
        assert p.in_flight == 0
        again = await p.classify(af.wav_sine(seconds=1.0))
        return done, again

    done, again = asyncio.run(scenario())
    assert [d.model for d in done] == [again.model] * 2


def test_arguments_are_checked_before_any_work(loaded_model):
    p = pipeline(loaded_model)
    p.batcher.open.set()
    window = loaded_model.features.settings.clip_seconds
    for call, said in [
        (p.classify(b"not even audio", top_k=0), "top_k"),
        (p.classify(b"not even audio", min_confidence=1.5), "min_confidence"),
        (p.timeline(b"not even audio", hop_s=window + 0.5), "hop_s"),
        (p.timeline(b"not even audio", hop_s=0.1), "hop_s"),
        (p.classify_files([("a", b"x")] * (Settings().max_batch_files + 1)), "files"),
    ]:
        with pytest.raises(InvalidArgumentError, match=said):
            asyncio.run(call)
    with pytest.raises(LimitExceededError):
        asyncio.run(p.classify_files([("a", b"x")] * (Settings().max_batch_files + 1)))


def test_min_confidence_turns_a_weak_answer_into_unknown(loaded_model):
    p = pipeline(loaded_model)
    p.batcher.open.set()
    clip = af.wav_noise(seconds=2.0, seed=4)
    sure = asyncio.run(p.classify(clip, min_confidence=0.0))
    assert sure.label == sure.top[0].label
    unsure = asyncio.run(p.classify(clip, min_confidence=1.0))
    assert unsure.label == UNKNOWN and unsure.top == sure.top


def test_the_stored_calibration_sets_the_temperature_and_the_default_threshold(loaded_model):
    clip = af.wav_sine(freq=700.0, seconds=2.0)
    plain = pipeline(loaded_model, calibration={})
    calibrated = pipeline(loaded_model, calibration={"temperature": 3.0, "threshold": 0.99})  # stored before familiarity
    for p in (plain, calibrated):
        p.batcher.open.set()
    _, x = plain.classifier.prepare(clip)
    logits = plain.classifier.engine(x[None])
    np.testing.assert_allclose(calibrated.classifier.forward(x[None]), logits / 3.0, rtol=1e-5)
    answer = asyncio.run(calibrated.classify(clip, top_k=50))
    np.testing.assert_allclose([s.probability for s in answer.top], np.sort(softmax(logits, 3.0)[0])[::-1], rtol=1e-5)
    assert max(s.probability for s in answer.top) < 0.99 and answer.label == UNKNOWN  # the stored threshold
    assert calibrated.describe().min_confidence == 0.99 and plain.describe().min_confidence == 0.0
    assert calibrated.describe().unknown_rule.score == "probability"
    assert asyncio.run(calibrated.classify(clip, min_confidence=0.0)).label == answer.top[0].label


def test_the_stored_familiarity_rule_decides_unknown_unless_the_request_sets_min_confidence(loaded_model):
    clip = af.wav_sine(freq=700.0, seconds=2.0)
    plain = pipeline(loaded_model, calibration={"temperature": 2.0})
    plain.batcher.open.set()
    _, x = plain.classifier.prepare(clip)
    known = float(familiarity(plain.classifier.forward(x[None]))[0])
    for threshold, label_is_unknown in ((known + 0.01, True), (known - 0.01, False)):
        p = pipeline(loaded_model, calibration={"temperature": 2.0, "familiarity_threshold": threshold})
        p.batcher.open.set()
        answer = asyncio.run(p.classify(clip))
        assert (answer.label == UNKNOWN) == label_is_unknown, (threshold, known, answer)
        assert p.describe().min_confidence == 0.0  # no probability threshold unless a request gives one
        assert p.describe().unknown_rule.score == "familiarity" and p.describe().unknown_rule.threshold == threshold
        # a request's min_confidence replaces the model's rule with one on the top probability
        assert asyncio.run(p.classify(clip, min_confidence=0.0)).label == answer.top[0].label
        assert asyncio.run(p.classify(clip, min_confidence=1.0)).label == UNKNOWN


def test_a_pipeline_warms_its_engine_for_the_largest_batch_beside_serving(loaded_model):
    """The engine meets every batch shape up to SOUND_MAX_BATCH_SIZE on a thread of its own, so the
    pipeline answers before the warm-up ends (tests/test_engines.py checks what warming does)."""
    import threading

    release, asked = threading.Event(), []

    class Engine(TorchEngine):
        def warm(self, sample, max_batch):
            asked.append((sample.shape, max_batch))
            release.wait(60)
            return 0

    p = Pipeline(Classifier(loaded_model, Engine(loaded_model.network)), Settings(max_batch_size=12), REPORT)
    answer = asyncio.run(p.classify(af.wav_sine(seconds=1.0)))  # while the warm-up is held
    assert answer.model == loaded_model.tag and not p.warmed(timeout_s=0)
    release.set()
    assert p.warmed(timeout_s=60)
    assert asked == [((len(loaded_model.samples), *loaded_model.samples.shape[1:]), 12)]
