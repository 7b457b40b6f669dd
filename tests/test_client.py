"""The command-line client's table against a real `bentoml serve` (session fixture `served`): what
an "unknown" answer's line says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from serving.client import verdict

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def test_verdict_names_the_best_guess_and_why_it_was_not_taken():
    top = [{"label": "clock_tick", "probability": 0.6234}, {"label": "rain", "probability": 0.2}]
    assert verdict({"label": "clock_tick", "top": top}, ("familiarity", 3.2)) == "clock_tick"
    assert verdict({"label": "unknown", "top": top}, ("familiarity", 3.2)) == (
        "unknown (best guess clock_tick 62.3%, unlike the sounds the model was trained on)")  # fmt: skip
    # models stored before the familiarity rule: a threshold on the top probability
    assert verdict({"label": "unknown", "top": top}, ("probability", 0.63)) == (
        "unknown (best guess clock_tick 62.3%, below the 63% threshold)")  # fmt: skip
    assert verdict({"label": "unknown", "top": top}, ("probability", 0.6341)) == (
        "unknown (best guess clock_tick 62.3%, below the 63.4% threshold)")  # fmt: skip
    assert verdict({"label": "unknown", "top": top}, None).endswith("below the model's threshold)")


def test_table_line_of_an_unknown_sound_says_why(served, unknown_sound, tmp_path):
    name, data, answer = unknown_sound
    path = tmp_path / name
    path.write_bytes(data)
    info = httpx.post(f"{served.base_url}/info", timeout=30).json()
    assert info["unknown_rule"]["score"] == "familiarity"  # what training stores now
    best = answer["top"][0]
    run = subprocess.run([sys.executable, "-m", "serving.client", "--url", served.base_url, "--top-k", "2", str(path)],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr
    want = f"unknown (best guess {best['label']} {best['probability']:.1%}, unlike the sounds the model was trained on)"
    line = run.stdout.strip()
    assert line.startswith(str(path)) and want in line, (line, want)
    assert f"{best['label']} {best['probability']:6.1%}" in line.split(want)[1]  # then the top labels
