"""The built artefact: build the Bento, export it, import it into an empty BentoML home, serve it.

Tier three of the tests (as BentoML tests itself): what ships must answer exactly like the source.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import httpx
import pytest

from testkit import audiofiles as af
from testkit.server import ServedService

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
BENTOML = str(Path(sys.executable).with_name("bentoml"))


def bentoml_cli(*args: str, env: dict[str, str]) -> str:
    done = subprocess.run([BENTOML, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def exported(tiny_model_tag, tmp_path_factory) -> tuple[str, Path]:
    """(bento tag, exported archive) built from the test store with the tiny model."""
    env = {**os.environ, "SOUND_MODEL_TAG": tiny_model_tag, "BENTOML_DO_NOT_TRACK": "True"}
    out = bentoml_cli("build", ".", "--output", "tag", env=env)
    tag = out.strip().splitlines()[-1].removeprefix("__tag__:")
    assert tag.startswith("sound_classifier:")
    target = tmp_path_factory.mktemp("bentos")
    bentoml_cli("export", tag, str(target / "sound_classifier.bento"), env=env)
    return tag, target / "sound_classifier.bento"


def test_bento_carries_model_code_and_dockerfile(exported, tiny_model_tag):
    _, archive = exported
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        dockerfile = tar.extractfile(next(n for n in names if n.endswith("env/docker/Dockerfile"))).read().decode()
    version = tiny_model_tag.split(":")[1]
    assert any(f"models/sound-resnet/{version}/weights.safetensors" in n for n in names)
    assert any(f"models/sound-resnet/{version}/model.onnx" in n for n in names)
    assert any(n.endswith("src/service.py") for n in names)
    assert any(n.endswith("src/serving/grpc_stubs/soundclassifier/v1/sound_classifier_pb2.py") for n in names)
    assert not any("/training/" in n or n.endswith(".pt") for n in names)  # serving only
    assert "EXPOSE 3000" in dockerfile and "EXPOSE 50051" in dockerfile
    assert "--timeout-keep-alive" not in dockerfile  # the service sets it (SOUND_KEEP_ALIVE_S)
    assert "requirements.txt" in dockerfile


def test_imported_bento_serves_the_same_answers(exported, tiny_model_tag, served, tmp_path):
    tag, archive = exported
    fresh_home = tmp_path / "fresh-bentoml-home"
    env = {**os.environ, "BENTOML_HOME": str(fresh_home), "BENTOML_DO_NOT_TRACK": "True"}
    bentoml_cli("import", str(archive), env=env)
    assert tiny_model_tag in bentoml_cli("models", "list", env=env)

    clips = [af.wav_sine(440, 2.0), af.wav_noise(3.0), af.flac_sine(2000, 1.0)]
    with ServedService(tiny_model_tag, target=tag, bentoml_home=fresh_home) as bento:
        for data in clips:
            files = {"audio": ("clip.wav", data)}
            shipped = httpx.post(f"{bento.base_url}/classify", files=files, data={"top_k": "3"}, timeout=60)
            source = httpx.post(f"{served.base_url}/classify", files=files, data={"top_k": "3"}, timeout=60)
            assert shipped.status_code == source.status_code == 200
            a, b = shipped.json(), source.json()
            assert a["model"] == b["model"] == tiny_model_tag
            assert [t["label"] for t in a["top"]] == [t["label"] for t in b["top"]]
            for x, y in zip(a["top"], b["top"], strict=True):
                assert x["probability"] == pytest.approx(y["probability"], abs=1e-3)
