"""Batch classification on Spark (batch/classify.py) on local[2], checked against the HTTP service.

    PYTHONPATH=. .venv/bin/python -m pytest tests/test_batch.py

The first run is what a user types, `python -m batch.classify IN OUT` in a subprocess; later runs
(re-run into the same output, --timeline, size limit with --model-archive) share one in-process
SparkSession built by the job's own `build_session`, so its Python workers load the model once.
Nothing is mocked: real Spark, real Parquet, a real `bentoml serve` (fixture `served`) for the
answers to compare with. The server chose its engine with select_engine("auto"); the job is given
that engine's name so both run the same network code (OpenVINO bf16 here, whose answers do not
depend on batch size or threads: checked before writing this test), and the test checks the
job's `engine` column names the same engine and precision.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest

from testkit import audiofiles as af

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning"),
]

REPO_ROOT = Path(__file__).resolve().parent.parent
TOLERANCE = 1e-3
SPARK_ARGS = ["--master", "local[2]", "--conf", "spark.ui.enabled=false"]
# Bad files and the kind of error both front doors must name for them.
BROKEN = {
    "broken/empty.wav": (af.empty, "empty"),
    "broken/shopping-list.wav": (af.text, "not_audio"),
    "broken/truncated.wav": (af.truncated_wav, "corrupt"),
    "broken/random.mp3": (af.random_bytes, "not_audio"),
    "broken/nan.wav": (af.nan_float_wav, "non_finite"),
}
# Files the default extensions (wav, flac, ogg, mp3, any case) must leave out.
IGNORED = {"notes.txt": b"not a sound\n", "sub/cover.png": b"\x89PNG\r\n\x1a\n", "sub/clip.wav.bak": b"RIFF"}


def clip(i: int) -> tuple[str, bytes]:
    """Clip number i: its own pitch, noise seed, length (0.4-6.4 s) and format; some nested."""
    seconds = 0.4 + (i * 0.37) % 6.0
    x = np.clip(af.sine(freq=150.0 + 97.0 * i, seconds=seconds) + af.noise(seconds, amplitude=0.05, seed=i), -1, 1)
    fmt, subtype, ext = [("WAV", "PCM_16", "wav"), ("FLAC", "PCM_16", "flac"), ("OGG", "VORBIS", "ogg"),
                         ("MP3", "MPEG_LAYER_III", "mp3"), ("WAV", "PCM_16", "WAV")][i % 5]
    folder = ["", "a/", "a/b/"][i % 3]
    name = f"{folder}clip {i:02d}.{ext}" if i != 7 else "a/b/odd name %20 é#7.wav"
    return name, af.encode(x, af.RATE, fmt, subtype)


def read_rows(folder: Path) -> list[dict]:
    return pq.read_table(folder).to_pylist()


def relative(path: str, root: Path) -> str:
    prefix = f"file:{root.resolve()}/"
    assert path.startswith(prefix), (path, prefix)
    return path[len(prefix):]


def by_file(rows: list[dict], root: Path) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for row in rows:
        name = relative(row["path"], root)
        assert name not in out, f"two rows for {name}"
        out[name] = row
    return out


def labels(top: list[dict]) -> list[str]:
    return [s["label"] for s in top]


def assert_same_top(batch_top: list[dict], http_top: list[dict], what: str) -> None:
    assert labels(batch_top) == labels(http_top), (what, batch_top, http_top)
    for b, h in zip(batch_top, http_top, strict=True):
        assert abs(b["probability"] - h["probability"]) <= TOLERANCE, (what, b, h)


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory) -> tuple[Path, dict[str, bytes], dict[str, str]]:
    """55 good clips in four formats and three folder levels, 5 broken files, 3 to be ignored."""
    root = tmp_path_factory.mktemp("recordings")
    good = dict(clip(i) for i in range(55))
    broken = {name: make() for name, (make, _) in BROKEN.items()}
    for name, data in {**good, **broken, **IGNORED}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root, {**good, **broken}, {name: kind for name, (_, kind) in BROKEN.items()}


@pytest.fixture(scope="module")
def http(served):
    with httpx.Client(base_url=served.base_url, timeout=120.0) as client:
        yield client


@pytest.fixture(scope="module")
def server_engine(http) -> tuple[str, str]:
    info = http.post("/info").json()
    return info["engine"], info["precision"]


@pytest.fixture(scope="module")
def first_run(audio_dir, tiny_model_tag, server_engine, tmp_path_factory):
    """`python -m batch.classify` in a subprocess, as a user runs it."""
    root, _, _ = audio_dir
    out = tmp_path_factory.mktemp("batch-out") / "labels.parquet"
    out.mkdir()
    (out / "stale.parquet").write_bytes(b"from an older run")  # must be replaced, not merged
    command = [sys.executable, "-m", "batch.classify", str(root), str(out), "--model", tiny_model_tag,
               "--engine", server_engine[0], *SPARK_ARGS]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}  # BENTOML_HOME: the test store (conftest)
    start = time.monotonic()
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    return done, out, time.monotonic() - start


@pytest.fixture(scope="module")
def rows(first_run, audio_dir) -> dict[str, dict]:
    done, out, _ = first_run
    assert done.returncode == 0, done.stderr[-6000:]
    return by_file(read_rows(out), audio_dir[0])


@pytest.fixture(scope="module")
def spark(first_run, tiny_model_tag, server_engine, tmp_path_factory):
    """One in-process session for the later runs, built by the job's own code (after the
    subprocess run, so two JVMs never compete for the two cores)."""
    from batch.classify import build_session, parse_args, ship_code

    args = parse_args(["in", "out", "--model", tiny_model_tag, "--engine", server_engine[0], *SPARK_ARGS])
    session = build_session(args)
    ship_code(session, str(tmp_path_factory.mktemp("code")))
    yield session
    session.stop()


def run_job(spark, *argv: str) -> dict:
    from batch.classify import parse_args, run

    return run(spark, parse_args([*argv, *SPARK_ARGS]))


# --- the command ----------------------------------------------------------------------------------


def test_help_documents_every_flag():
    from batch.classify import build_parser

    done = subprocess.run([sys.executable, "-m", "batch.classify", "--help"], cwd=REPO_ROOT,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    flags = [a for a in build_parser()._actions if a.option_strings]
    assert len(flags) >= 18
    for action in flags:
        assert action.help, action.option_strings
        assert action.option_strings[-1] in done.stdout, action.option_strings
    for setting in ("SPARK_LOCAL_IP", "maxRecordsPerBatch", "arrow.pyspark.enabled", "spark.driver.memory",
                    "maxPartitionBytes", "spark.task.cpus"):
        assert setting in done.stdout, setting


def test_job_exits_zero_and_reports(first_run, audio_dir, tiny_model_tag):
    done, out, elapsed = first_run
    assert done.returncode == 0, done.stderr[-6000:]
    n = len(audio_dir[1])
    assert f"wrote {n} rows for {n} files" in done.stdout, done.stdout
    assert tiny_model_tag in done.stdout
    assert elapsed < 120, f"the job took {elapsed:.0f} s"
    assert not (out / "stale.parquet").exists(), "the old output was merged, not replaced"


def test_every_file_has_exactly_one_row(rows, audio_dir):
    _, files, _ = audio_dir
    assert sorted(rows) == sorted(files)  # nothing missing, nothing twice, no .txt/.png/.bak
    assert len(files) == 60


def test_broken_files_carry_a_named_error(rows, audio_dir):
    _, files, broken = audio_dir
    for name in files:
        row = rows[name]
        if name in broken:
            assert row["error"]["kind"] == broken[name], (name, row["error"])
            assert row["error"]["detail"], name
            assert row["top"] is None and row["duration_s"] is None
        else:
            assert row["error"] is None, (name, row["error"])
            assert len(row["top"]) == 5


def test_answers_equal_the_http_service(rows, audio_dir, http, tiny_model_tag, server_engine):
    _, files, broken = audio_dir
    engines = {row["engine"] for row in rows.values() if row["engine"]}
    assert engines == {"/".join(server_engine)}, (engines, server_engine)
    for name, data in files.items():
        row = rows[name]
        # No file-name suffix: the service opens the saved upload by path, and libsndfile takes an
        # ".mp3" suffix as a hint (random bytes named *.mp3 come back "corrupt", not "not_audio");
        # the job decodes bytes from Spark, which have no name.
        r = http.post("/classify", files={"audio": ("upload", data)}, data={"top_k": "5"})
        answer = r.json()
        assert row["model"] == tiny_model_tag
        if name in broken:
            assert r.status_code >= 400 and answer["error"] == row["error"]["kind"], (name, answer)
            continue
        assert r.status_code == 200, (name, r.text)
        assert row["duration_s"] == answer["duration_s"] and row["sample_rate"] == answer["sample_rate"], name
        assert_same_top(row["top"], answer["top"], name)


# --- in-process runs ------------------------------------------------------------------------------


def test_rerun_replaces_the_output(spark, rows, first_run, audio_dir, tiny_model_tag, server_engine):
    _, out, _ = first_run
    root, files, _ = audio_dir
    parts_before = {p.name for p in out.glob("part-*")}
    summary = run_job(spark, str(root), str(out), "--model", tiny_model_tag, "--engine", server_engine[0])
    assert summary["rows"] == summary["files"] == len(files)
    again = by_file(read_rows(out), root)  # by_file fails on a second row for any file
    assert sorted(again) == sorted(files)
    assert parts_before and parts_before.isdisjoint(p.name for p in out.glob("part-*")), "output not replaced"
    assert [p.name for p in out.parent.iterdir()] == [out.name], "staging folder left behind"
    for name in files:
        assert again[name]["error"] == rows[name]["error"], name
        if rows[name]["top"]:
            assert_same_top(again[name]["top"], rows[name]["top"], name)


@pytest.fixture(scope="module")
def long_recording(tmp_path_factory) -> tuple[Path, bytes]:
    """~23 s: synthetic siren, dog bark, rain, siren, dog bark (seed 0), as FLAC, and an empty file."""
    from training.synthetic import SAMPLE_RATE, make_clip

    rng = np.random.default_rng(0)
    samples = np.concatenate([make_clip(label, rng) for label in ["siren", "dog_bark", "rain", "siren", "dog_bark"]])
    data = af.encode(samples[: 23 * SAMPLE_RATE], SAMPLE_RATE, "FLAC", "PCM_16")
    root = tmp_path_factory.mktemp("long")
    (root / "street.flac").write_bytes(data)
    (root / "empty.ogg").write_bytes(b"")
    return root, data


@pytest.mark.parametrize("hop", [None, 2.0])
def test_timeline_rows_match_http_timeline(spark, http, long_recording, tiny_model_tag, server_engine, tmp_path, hop):
    root, data = long_recording
    out = tmp_path / "timeline"
    hop_args = [] if hop is None else ["--hop-s", str(hop)]
    run_job(spark, str(root), str(out), "--timeline", *hop_args, "--model", tiny_model_tag, "--engine", server_engine[0])
    result = read_rows(out)
    failed = [r for r in result if r["path"].endswith("empty.ogg")]
    assert len(failed) == 1 and failed[0]["error"]["kind"] == "empty" and failed[0]["window"] is None
    windows = sorted((r for r in result if r["path"].endswith("street.flac")), key=lambda r: r["window"])

    r = http.post("/timeline", files={"audio": ("street.flac", data)}, data={} if hop is None else {"hop_s": str(hop)})
    assert r.status_code == 200, r.text
    expected = r.json()["windows"]
    assert [w["window"] for w in windows] == list(range(len(expected)))
    assert len(expected) == (9 if hop is None else 10)
    for row, w in zip(windows, expected, strict=True):
        assert row["error"] is None
        assert (row["start_s"], row["end_s"]) == (w["start_s"], w["end_s"])
        assert row["duration_s"] == pytest.approx(23.0)
        assert_same_top(row["top"], w["top"], f"window {row['window']}")


def test_size_limit_and_model_archive(spark, audio_dir, tiny_model_tag, tmp_path):
    """Files over --max-file-mb get too_large without being read; the model travels as an archive."""
    import bentoml

    archive = tmp_path / "model.tar"  # plain tar: 0.4 s to write here, the default gzip took 53 s
    bentoml.models.export_model(tiny_model_tag, str(archive), output_format="tar")
    src = tmp_path / "in"
    src.mkdir()
    small, big = af.wav_sine(seconds=0.5), af.wav_noise(seconds=3.0)
    (src / "small.wav").write_bytes(small)
    (src / "big.wav").write_bytes(big)
    limit_mb = (len(small) + len(big)) / 2 / 2**20
    out = tmp_path / "out"
    summary = run_job(spark, str(src), str(out), "--model-archive", str(archive), "--max-file-mb", f"{limit_mb:.6f}")
    assert summary["model"] == tiny_model_tag
    result = by_file(read_rows(out), src)
    assert result["big.wav"]["error"]["kind"] == "too_large"
    assert f"{len(big):,} bytes" in result["big.wav"]["error"]["detail"]
    assert result["small.wav"]["error"] is None and len(result["small.wav"]["top"]) == 5
    assert result["small.wav"]["model"] == tiny_model_tag


def test_bad_hop_is_refused_before_any_work(spark, long_recording, tiny_model_tag, tmp_path, capsys):
    root, _ = long_recording
    with pytest.raises(SystemExit) as e:  # the command line's own refusal, before Spark is asked for anything
        run_job(spark, str(root), str(tmp_path / "out"), "--timeline", "--hop-s", "5.5", "--model", tiny_model_tag)
    assert e.value.code == 2 and "--hop-s" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("output", ["data/audio", "data/audio/labels", "data", "file://{tmp}/data/audio/"],
                         ids=["same", "inside", "holds", "same-as-uri"])
def test_an_output_that_would_replace_the_input_is_refused(long_recording, tiny_model_tag, tmp_path, output):
    """The job replaces OUTPUT as a whole: an OUTPUT that is, holds or lies in INPUT would delete
    the recordings (it did, before this check)."""
    _, data = long_recording
    audio = tmp_path / "data" / "audio"
    audio.mkdir(parents=True)
    (audio / "street.flac").write_bytes(data)
    out = output.format(tmp=tmp_path) if "://" in output else str(tmp_path / output)
    done = subprocess.run([sys.executable, "-m", "batch.classify", str(audio), out, "--model", tiny_model_tag],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "OUTPUT" in done.stderr, done.stderr
    assert (audio / "street.flac").read_bytes() == data
