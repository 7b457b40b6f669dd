"""Session fixtures: a private BentoML store, a tiny synthetic data set, and one tiny trained model.

BentoML reads BENTOML_HOME once, when it is first imported, so the store is redirected here, at
import time of this conftest and before any test module (or soundclassifier.store) imports bentoml.
Whatever the user's environment says is ignored: the tests never touch the user's model store.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

_BENTOML_HOME = Path(tempfile.mkdtemp(prefix="sound-tests-bentoml-"))
os.environ["BENTOML_HOME"] = str(_BENTOML_HOME)
assert "bentoml" not in sys.modules, "bentoml was imported before tests/conftest.py could set BENTOML_HOME"

import pytest  # noqa: E402

MODEL_NAME = "sound-resnet"


def model_tags() -> set[str]:
    """Tags of every `sound-resnet` entry in the (test) store."""
    import bentoml

    try:
        return {str(m.tag) for m in bentoml.models.list(MODEL_NAME)}
    except bentoml.exceptions.NotFound:  # the store has never held a model of that name
        return set()


def train_and_get_tag(argv: list[str]) -> str:
    """Run `training.train.main(argv)` and return the tag of the one model it saved."""
    from training.train import main

    before = model_tags()
    assert main(argv) == 0
    new = model_tags() - before
    assert len(new) == 1, f"expected exactly one new model, got {new}"
    return new.pop()


@pytest.fixture(scope="session")
def store_tags():
    """`store_tags()` -> the set of `sound-resnet` tags now in the test store."""
    return model_tags


@pytest.fixture(scope="session")
def train_model(bentoml_home):
    """`train_model(argv)` runs `training.train.main(argv)` and returns the tag it saved."""
    return train_and_get_tag


@pytest.fixture(scope="session")
def bentoml_home() -> Path:
    """The throw-away BentoML home every test shares (removed when pytest exits)."""
    import bentoml  # noqa: F401  (imported here so the store is known to live in BENTOML_HOME)
    from bentoml._internal.configuration.containers import BentoMLContainer

    assert Path(BentoMLContainer.bentoml_home.get()).resolve() == _BENTOML_HOME.resolve()
    return _BENTOML_HOME


def pytest_unconfigure(config) -> None:
    """Remove the throw-away store whether or not any test used it."""
    shutil.rmtree(_BENTOML_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    """The synthetic data set (10 classes x 6 clips, 5 folds, seed 0) in the ESC-50 layout."""
    from training.synthetic import generate

    return generate(tmp_path_factory.mktemp("synthetic"), clips_per_class=6, seed=0)


@pytest.fixture(scope="session")
def tiny_model_tag(bentoml_home, synthetic_dir) -> str:
    """Train the default network (ResNet-14) for 5 epochs on the tiny synthetic set; return its store tag.

    Enough steps for calibrated, unsaturated probabilities (with 2 epochs the logits reached
    +-400 and every probability was 0 or 1, which made equality checks between paths weak)."""
    return train_and_get_tag(
        [
            "--dataset", "synthetic",
            "--data-dir", str(synthetic_dir),
            "--epochs", "5",
            "--batch-size", "8",
            "--no-refit",  # ship the network measured on fold 1: tests compare with what training measured
        ]
    )  # fmt: skip


@pytest.fixture(scope="session")
def loaded_model(tiny_model_tag):
    """The tiny model rebuilt from the store by `soundclassifier.store.load_model`."""
    from soundclassifier.store import load_model

    return load_model(tiny_model_tag)


# --- data sets in the official layouts, built on disk from short generated clips ----------------


def _clip_bytes(index: int, seconds: float) -> bytes:
    """A short WAV that differs per class index (sine pitch) and per call (noise seed)."""
    import numpy as np

    from testkit import audiofiles as af

    x = af.sine(freq=300.0 * (index % 7 + 1), seconds=seconds) + af.noise(seconds, amplitude=0.05, seed=index)
    return af.encode(np.clip(x, -1, 1), af.RATE, "WAV", "PCM_16")


def build_esc50(
    root: Path, classes: list[str], clips_per_fold: int = 1, folds: int = 5, seconds: float = 0.5
) -> Path:
    """ROOT/meta/esc50.csv (ESC-50's seven columns) and ROOT/audio/<fold>-<src>-<take>-<target>.wav."""
    import csv

    (root / "audio").mkdir(parents=True)
    (root / "meta").mkdir()
    rows = []
    for target, label in enumerate(classes):
        for fold in range(1, folds + 1):
            for k in range(clips_per_fold):
                src = f"{100000 + 1000 * target + 10 * fold + k}"
                name = f"{fold}-{src}-A-{target}.wav"
                (root / "audio" / name).write_bytes(_clip_bytes(target * 100 + fold * 10 + k, seconds))
                rows.append([name, fold, target, label, "False", src, "A"])
    with (root / "meta" / "esc50.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        w.writerows(rows)
    return root


def build_urbansound8k(
    root: Path, classes: dict[int, str], clips_per_fold: int = 1, folds: int = 3, seconds: float = 0.5
) -> Path:
    """ROOT/metadata/UrbanSound8K.csv (its eight columns) and ROOT/audio/fold<N>/<fsID>-<classID>-0-<k>.wav."""
    import csv

    (root / "metadata").mkdir(parents=True)
    rows = []
    for class_id, label in classes.items():
        for fold in range(1, folds + 1):
            (root / "audio" / f"fold{fold}").mkdir(parents=True, exist_ok=True)
            for k in range(clips_per_fold):
                fs_id = 50000 + 100 * class_id + fold
                name = f"{fs_id}-{class_id}-0-{k}.wav"
                path = root / "audio" / f"fold{fold}" / name
                path.write_bytes(_clip_bytes(class_id * 100 + fold * 10 + k, seconds))
                rows.append([name, fs_id, 0.0, seconds, 1, fold, class_id, label])
    with (root / "metadata" / "UrbanSound8K.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"])
        w.writerows(rows)
    return root


def build_folder(root: Path, counts: dict[str, int], seconds: float = 0.5) -> Path:
    """ROOT/<label>/<label>_<k>.wav with counts[label] files per class."""
    for i, (label, n) in enumerate(counts.items()):
        (root / label).mkdir(parents=True)
        for k in range(n):
            (root / label / f"{label}_{k:02d}.wav").write_bytes(_clip_bytes(i * 100 + k, seconds))
    return root


def build_takes(root: Path, takes: dict[str, int], cuts: int = 3, seconds: float = 0.5, subfolders: bool = False) -> Path:
    """A folder made to leak: takes[label] recordings per class, each one generated take (its own
    pitch and noise) cut into `cuts` files of `seconds`: ROOT/<label>/<label>_take<k>_<NN>.wav, or
    with `subfolders` ROOT/<label>/take<k>/<NN>.wav."""
    import numpy as np

    from testkit import audiofiles as af

    for i, (label, n) in enumerate(takes.items()):
        for k in range(n):
            x = af.sine(freq=200.0 * (i + 1) + 15.0 * k, seconds=cuts * seconds) + af.noise(
                cuts * seconds, amplitude=0.05, seed=1000 * i + k
            )
            piece = round(seconds * af.RATE)
            for j in range(cuts):
                path = root / label / (f"take{k}/{j:02d}.wav" if subfolders else f"{label}_take{k}_{j:02d}.wav")
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(af.encode(np.clip(x[j * piece : (j + 1) * piece], -1, 1), af.RATE, "WAV", "PCM_16"))
    return root


def hide_names(root: Path, dest: Path) -> dict[str, str]:
    """A copy of build_takes' folder at `dest` under names no grouping rule reads, as a user's might be:
    a folder made to leak. Returns {new file name: the take it was cut from}."""
    take_of = {}
    for i, path in enumerate(sorted(root.rglob("*.wav"))):
        label, take = path.parent.name, path.stem.rsplit("_", 1)[0]
        (dest / label).mkdir(parents=True, exist_ok=True)
        new = dest / label / f"clip{(i * 7919) % 1000:03d}.wav"  # scrambled: neither take nor order shows
        new.write_bytes(path.read_bytes())
        take_of[new.name] = take
    return take_of


def sounds_of_no_class() -> list[tuple[str, bytes]]:
    """Generated sounds of none of the synthetic classes (silence, noise, tones, clicks), as WAV:
    candidates for a test that needs the served model to answer "unknown"; it asks the service which."""
    import numpy as np

    from testkit import audiofiles as af

    clicks = np.zeros(af.RATE * 2, np.float32)
    clicks[:: af.RATE // 7] = 0.9
    mixes = [af.sine(f, 2.0) + af.sine(1.5 * f, 2.0) for f in (97.0, 3100.0, 7000.0)]
    return [
        ("silence.wav", af.wav_silence(2.0)),
        ("noise.wav", af.wav_noise(2.0, seed=3)),
        ("clicks.wav", af.encode(clicks)),
        *[(f"chord{i}.wav", af.encode(np.clip(0.5 * x, -1, 1))) for i, x in enumerate(mixes)],
        *[(f"tone{f}.wav", af.wav_sine(f, 2.0)) for f in (50, 440, 2500, 9000)],
    ]


@pytest.fixture(scope="session")
def unknown_sound(served) -> tuple[str, bytes, dict]:
    """(name, WAV, its /classify answer): a generated sound the served model answers "unknown" to."""
    import httpx

    for name, data in sounds_of_no_class():
        answer = httpx.post(f"{served.base_url}/classify", files={"audio": (name, data)}, timeout=120).json()
        if answer["label"] == "unknown":
            return name, data, answer
    pytest.fail("none of the generated sounds of no class is 'unknown' to the served model")


@pytest.fixture
def layouts():
    """The builders above, for tests that need a data set in an official layout (or one made to leak)."""
    return {"esc50": build_esc50, "urbansound8k": build_urbansound8k, "folder": build_folder, "takes": build_takes, "hide_names": hide_names}


# --- a real server ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def served(tiny_model_tag):
    """`bentoml serve service:SoundClassifier` on the tiny model, HTTP and gRPC, with small limits (60 s, 5 MB)
    so the too-long and too-large answers can be tested with small files."""
    from soundclassifier.config import Settings
    from testkit.server import ServedService, free_port

    with ServedService(
        tiny_model_tag,
        grpc_port=free_port(),
        # glibc returns freed memory at once (no trim threshold, large blocks mmapped), so the
        # memory tests in test_hostile.py see each request's own peak, not the allocator's leftovers.
        env={"SOUND_MAX_CLIP_SECONDS": "60", "SOUND_MAX_UPLOAD_MB": "5",
             "MALLOC_TRIM_THRESHOLD_": "0", "MALLOC_MMAP_THRESHOLD_": "131072"},
    ) as server:
        # Every worker warmed: a worker measures its engine's batch shapes after /readyz answers, so
        # a baseline taken before then (test_hostile.py's RSS) grew 25-35% with no request's help.
        server.wait_for_log("engine warmed for", count=Settings().layout()[0])
        yield server


# --- test tiers -----------------------------------------------------------------------------------
# A test's tier follows from the fixtures it uses (directly or through other fixtures), so no
# marker is forgotten; pyproject.toml describes the markers, `make test-fast` leaves these out.
# A test outside `served` that starts a server anyway (testkit's ServedService or Background)
# fails, naming the marker: the fast tier cannot slow down unnoticed.
SERVER_FIXTURES = {"served", "served_real", "small", "plain_server", "edge"}  # each starts a server process
TIER_FIXTURES = {
    "slow": {"tiny_model_tag", "train_model"},  # trains a model (the session's tiny one: ~30 s, once)
    "served": SERVER_FIXTURES,
    "browser": {"browser", "playwright"},  # headless Chromium (tests/test_page.py)
    "spark": {"spark"},  # a local Spark session (tests/test_batch.py)
}


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        for marker, fixtures in TIER_FIXTURES.items():
            if used & fixtures:
                item.add_marker(marker)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item) -> None:
    from testkit import server

    server.servers_allowed = item.get_closest_marker("served") is not None
