"""The shipped default model (bentos/sound-resnet.bentomodel) against the code and data it claims to come from.

    PYTHONPATH=. .venv/bin/python -m pytest tests/test_shipped_model.py

`make serve` imports the archive into an empty store, so it must be what `make train` would make from
today's repository in everything serving depends on. The rule, checked here:
  - its labels are the shipped data set's labels, in order;
  - its feature settings are today's defaults with the window `make train` would choose;
  - its data fingerprints are those of data/esc10 and data/other-sounds as they are now (contents,
    labels and folds: a changed clip or a changed split changes them);
  - it names the commit that trained it, a commit of this repository with no uncommitted changes;
  - it holds what serving reads and nothing it does not (no PyTorch weights), in a few MB;
  - imported into a store, it serves: the engine the service would choose labels the data set's clips.
The network's weights are not compared: training is deterministic only on the same machine and
thread count. When a rule fails, retrain and ship: `make train && python -m training.ship`.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from training.ship import SHIPPED

ROOT = Path(__file__).resolve().parent.parent
MAX_MB = 20


@pytest.fixture(scope="module")
def shipped(bentoml_home):
    import bentoml

    return bentoml.models.import_model(str(SHIPPED))


@pytest.fixture(scope="module")
def esc10():
    from soundclassifier.features import Features, FeatureSettings
    from training.datasets import SHIPPED_ESC10, decode_clips, load_dataset

    ds = load_dataset("esc10", SHIPPED_ESC10)
    return ds, decode_clips(ds.clips, ds.labels, Features(FeatureSettings()))


def test_the_archive_is_small_and_holds_what_serving_reads(shipped):
    from soundclassifier.store import INT8_FILE, ONNX_FILE, SAMPLES_FILE, WEIGHTS_FILE

    assert SHIPPED.stat().st_size < MAX_MB * 1e6
    files = {p.name for p in Path(shipped.path).iterdir()}
    assert {ONNX_FILE, INT8_FILE, Path(INT8_FILE).with_suffix(".bin").name, SAMPLES_FILE} <= files
    assert WEIGHTS_FILE not in files


def test_labels_and_feature_settings_are_what_training_would_choose_today(shipped, esc10):
    from soundclassifier.features import FeatureSettings
    from training.datasets import choose_clip_seconds

    ds, data = esc10
    meta = shipped.info.metadata
    assert meta["labels"] == ds.labels
    window = choose_clip_seconds([len(w) / FeatureSettings().sample_rate for w in data.waves])
    assert FeatureSettings.from_metadata(meta["feature_settings"]) == FeatureSettings(clip_seconds=window)


def test_data_fingerprints_are_the_shipped_data_as_it_is(shipped, esc10):
    from training.datasets import Dataset, outliers

    ds, _ = esc10
    meta = shipped.info.metadata
    assert meta["dataset_fingerprint"] == ds.fingerprint()
    other_sounds = ROOT / "data" / "other-sounds"  # make train's --outlier-dir
    clips = outliers(other_sounds, ds.folds, seed=meta["train_args"]["seed"])
    assert meta["outlier_dir_fingerprint"] == Dataset("outliers", other_sounds, clips, []).fingerprint()


def test_it_names_a_clean_commit_of_this_repository(shipped):
    revision = shipped.info.metadata["code_revision"]
    assert not revision.endswith("-dirty"), f"trained from uncommitted code: {revision}"
    done = subprocess.run(["git", "merge-base", "--is-ancestor", revision, "HEAD"], cwd=ROOT, capture_output=True)
    assert done.returncode == 0, f"{revision} is not a commit of this repository's history"


def test_imported_it_serves_the_data_sets_clips(shipped, esc10):
    from soundclassifier.loading import open_classifier

    ds, _ = esc10
    classifier, report = open_classifier(shipped)
    assert report["chosen"] == "openvino/int8", report
    first = {}  # one clip of each class; the shipped network trained on all of them
    for clip in ds.clips:
        first.setdefault(clip.label, clip.path)
    assert {label: classifier.classify(path).top[0].label for label, path in first.items()} == {
        label: label for label in first
    }
