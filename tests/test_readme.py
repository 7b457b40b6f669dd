"""The README against the code: its settings table, its paths, and every command it shows.

    PYTHONPATH=. .venv/bin/python -m pytest tests/test_readme.py

Each command line in the README's shell blocks must be one of:
  (a) run as written against a served model (the `served` fixture: the tiny test model), with only
      the address changed: `curl` (the answer must be JSON holding every key the README shows
      after it, or the file it asks for) and the `classify` command-line client;
  (b) a `make` target, dry-run (`make -n`: the target exists and its recipe expands), or a program
      whose `--help` runs and lists every `--flag` the line uses (`python -m ...`, `bentoml ...`),
      or `kubectl apply -k DIR`, rendered offline with `kustomize build DIR` (kubectl's own engine);
  (c) named in NOT_RUN below, with the reason it cannot run here.
A line that fits none fails `test_every_readme_command_is_covered`. The README's Python blocks run
as written against the same served model (HTTP and gRPC), and no other block language is allowed,
so a command cannot hide in an unchecked block.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from functools import cache
from itertools import takewhile
from pathlib import Path

import numpy as np
import pytest

from soundclassifier.config import settings_table
from testkit import audiofiles as af

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_LINES = 200
HTTP_ADDRESS = "http://localhost:3000"
GRPC_ADDRESS = "localhost:50051"
TABLE_START = "<!-- settings-table:start -->"
TABLE_END = "<!-- settings-table:end -->"
SHELL_LANGS = {"bash", "sh", "shell"}
BLOCK_LANGS = SHELL_LANGS | {"python"}
BIN = Path(sys.executable).parent  # the venv's console scripts: bentoml, classify
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
AUDIO_NAME = re.compile(r"[\w.-]+\.(wav|flac|ogg|mp3)\b")
AUDIO_FORMATS = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", None), "ogg": ("OGG", "VORBIS"), "mp3": ("MP3", "MPEG_LAYER_III")}
AUDIO_SECONDS = 8.0  # longer than the model's 5 s window, so /timeline has several windows

# (c): commands the README shows that this machine cannot run, and why.
NOT_RUN = {
    "docker": "needs a Docker or Podman engine; this machine has only the client. The image's "
    "Dockerfile is generated from the Bento and checked by tests/test_bento.py",
    "arecord": "needs a sound card to record from; the `classify --listen -` it pipes into is run "
    "with PCM piped in by tests/test_listen.py",
}


# --- reading the README -------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    lang: str
    code: str
    line: int  # of the opening fence, 1-based


@dataclass(frozen=True)
class Command:
    text: str  # as written, continuation lines joined, comment kept
    argv: tuple[str, ...]  # shell words, comment dropped
    shown_keys: frozenset[str]  # JSON keys in the answer the README shows after the command
    line: int  # its first line in README.md

    @property
    def id(self) -> str:
        return f"L{self.line}:{' '.join(self.argv)[:60]}"


def readme_text() -> str:
    return README.read_text()


def blocks(text: str) -> list[Block]:
    found, lang, start, body = [], None, 0, []
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            if lang is None:
                lang, start, body = line[3:].strip(), n, []
            else:
                found.append(Block(lang, "\n".join(body), start))
                lang = None
        elif lang is not None:
            body.append(line)
    assert lang is None, f"README.md: the code block opened at line {start} is never closed"
    return found


def commands(block: Block) -> list[Command]:
    """Command lines of a shell block; `# ...` lines right after a command are the answer it shows."""
    found: list[Command] = []
    pending: list[str] = []  # a command continued with a trailing backslash
    answer: list[str] = []

    def close_answer() -> None:
        if found and answer:
            keys = frozenset(re.findall(r'"(\w+)"\s*:', " ".join(answer)))
            found[-1] = replace(found[-1], shown_keys=keys)
        answer.clear()

    for offset, line in enumerate(block.code.splitlines(), 1):
        stripped = line.strip()
        if not pending and stripped.startswith("#"):
            answer.append(stripped)
            continue
        if not stripped:
            continue
        close_answer()
        if not pending:
            first = block.line + offset
        pending.append(stripped.removesuffix("\\").strip())
        if stripped.endswith("\\"):
            continue
        text = " ".join(pending)
        found.append(Command(text, tuple(shlex.split(text, comments=True)), frozenset(), first))
        pending = []
    close_answer()
    assert not pending, f"README.md line {block.line}: a command ends with a backslash"
    return found


def readme_commands() -> list[Command]:
    return [c for b in blocks(readme_text()) if b.lang in SHELL_LANGS for c in commands(b)]


def python_blocks() -> list[Block]:
    return [b for b in blocks(readme_text()) if b.lang == "python"]


def kind(cmd: Command) -> str | None:
    """Which check covers this command: served, make, help, kustomize, not-run; None: none does."""
    program = cmd.argv[0]
    if program in ("curl", "classify"):
        return "served"
    if program == "make" and len(cmd.argv) >= 2:
        return "make"
    if program in ("python", "python3") and cmd.argv[1:2] == ("-m",) and len(cmd.argv) >= 3:
        return "help"
    if program == "bentoml":
        return "help"
    if cmd.argv[:3] == ("kubectl", "apply", "-k") and len(cmd.argv) == 4:
        return "kustomize"
    if program in NOT_RUN:
        return "not-run"
    return None


def of_kind(name: str) -> list[Command]:
    return [c for c in readme_commands() if kind(c) == name]


def flags(cmd: Command) -> set[str]:
    return {word.split("=", 1)[0] for word in cmd.argv if word.startswith("--")}


def run(argv: list[str], timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)


# --- the README as a document -------------------------------------------------------------------


def test_readme_is_short():
    n = len(readme_text().splitlines())
    assert n <= MAX_LINES, f"README.md has {n} lines (limit {MAX_LINES}): move detail to docs/"


def test_settings_table_is_generated_from_the_settings_class():
    text = readme_text()
    assert text.count(TABLE_START) == 1 and text.count(TABLE_END) == 1, "the settings-table markers"
    shown = text.split(TABLE_START)[1].split(TABLE_END)[0].strip()
    assert shown == settings_table(), (
        "README.md's settings table differs from soundclassifier.config.Settings: regenerate it with "
        f"`python -m soundclassifier.config` and paste the output between {TABLE_START} and {TABLE_END}"
    )


def test_only_shell_and_python_blocks():
    """Every block is checked below; a block of another language would escape the checks."""
    for b in blocks(readme_text()):
        assert b.lang in BLOCK_LANGS, f"README.md line {b.line}: block language {b.lang!r} (use one of {sorted(BLOCK_LANGS)})"


def test_every_readme_command_is_covered():
    cmds = readme_commands()
    assert len(cmds) >= 10, "the README's commands were not found"
    uncovered = [f"line {c.line}: {c.text}" for c in cmds if kind(c) is None]
    assert not uncovered, (
        "README commands that no test runs: run them in tests/test_readme.py, or add the program "
        "to NOT_RUN with the reason it cannot run here:\n" + "\n".join(uncovered)
    )
    assert {c.argv[:2] for c in cmds} >= {("make", "serve"), ("make", "test")}, "the two commands"


def test_every_route_in_the_table_has_a_curl_example():
    text = readme_text()
    routes = set(re.findall(r"^\| `POST (/\w+)`", text, flags=re.M))
    curled = {re.sub(r"^https?://[^/]+", "", w) for c in of_kind("served") for w in c.argv if w.startswith(HTTP_ADDRESS)}
    assert routes and routes <= curled, f"routes without a curl example: {sorted(routes - curled)}"


def test_paths_named_in_the_readme_exist():
    """Links, and `backticked` paths under the repository's own folders (git-ignored ones, which
    are made by commands, excepted)."""
    text = readme_text()
    prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    links = re.findall(r"\]\(([^)#\s]+)\)", prose)
    ticked = [p for p in re.findall(r"`([\w.][\w./-]*/[\w./-]*)`", prose) if "://" not in p]
    missing = [p for p in links if not p.startswith("http") and not (ROOT / p).exists()]
    for p in ticked:
        if not (ROOT / p.split("/")[0]).exists() or (ROOT / p).exists():
            continue
        # a trailing slash lets directory patterns (`.bentoml/`) match a folder not made yet
        ignored = any(run(["git", "check-ignore", "-q", q], cwd=ROOT).returncode == 0 for q in (p, p.rstrip("/") + "/"))
        if not ignored:
            missing.append(p)
    assert not missing, f"README.md names paths that do not exist: {missing}"


# --- (b) make targets, --help, kustomize ---------------------------------------------------------


@pytest.mark.parametrize("cmd", of_kind("make"), ids=lambda c: c.id)
def test_make_target_dry_runs(cmd, tmp_path):
    # VENV points nowhere: recipe lines that call $(MAKE) run even under -n, and their
    # `bentoml models get || $(MAKE) train` must not touch a real store or venv.
    done = run(["make", "-n", "--no-print-directory", *cmd.argv[1:], f"VENV={tmp_path / 'no-venv'}"], cwd=ROOT)
    assert done.returncode == 0, f"{cmd.text}\n{done.stdout}\n{done.stderr}"
    assert done.stdout.strip(), f"`{cmd.text}` has an empty recipe"


def help_argv(cmd: Command) -> list[str]:
    if cmd.argv[0] == "bentoml":  # its subcommand words (`models list`), up to the first argument
        sub = takewhile(lambda w: re.fullmatch(r"[a-z][a-z-]*", w), cmd.argv[1:])
        return [str(BIN / "bentoml"), *sub, "--help"]
    return [sys.executable, "-m", cmd.argv[2], "--help"]


@cache  # several README lines share a program; its --help runs once
def help_of(argv: tuple[str, ...]) -> subprocess.CompletedProcess:
    return run(list(argv), cwd=ROOT)


@pytest.mark.parametrize("cmd", of_kind("help"), ids=lambda c: c.id)
def test_program_help_runs_and_lists_the_flags_used(cmd):
    done = help_of(tuple(help_argv(cmd)))
    assert done.returncode == 0, f"{cmd.text}: --help failed\n{done.stderr[-2000:]}"
    listed = set(re.findall(r"(?<![\w-])--[\w-]+", done.stdout))  # whole names: not --epoch for --epochs
    unknown = sorted(flags(cmd) - listed)
    assert not unknown, f"`{cmd.text}` uses flags its --help does not list: {unknown}"


@pytest.mark.parametrize("cmd", of_kind("kustomize"), ids=lambda c: c.id)
def test_kubectl_apply_renders_offline(cmd):
    done = run([str(Path(sys.executable).parent / "kustomize"), "build", cmd.argv[3]], cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "kind: Deployment" in done.stdout


# --- (a) against a served model ------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A folder holding every audio file the README's examples name, each in its own format."""
    folder = tmp_path_factory.mktemp("readme")
    text = "\n".join(b.code for b in blocks(readme_text()))
    for i, match in enumerate(sorted({m.group(0) for m in AUDIO_NAME.finditer(text)})):
        fmt, subtype = AUDIO_FORMATS[match.rsplit(".", 1)[1]]
        x = af.sine(220.0 * (i + 1), AUDIO_SECONDS) + af.noise(AUDIO_SECONDS, amplitude=0.05, seed=i)
        (folder / match).write_bytes(af.encode(np.clip(x, -1, 1), af.RATE, fmt, subtype))
    return folder


def json_keys(value) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in json_keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in json_keys(v)}
    return set()


def test_curl_is_installed():
    assert shutil.which("curl"), "the README's examples use curl: apt-get install curl"


@pytest.mark.slow
@pytest.mark.parametrize("cmd", of_kind("served"), ids=lambda c: c.id)
def test_command_against_the_served_model(cmd, served, workdir):
    assert any(w.startswith(HTTP_ADDRESS) for w in cmd.argv), f"`{cmd.text}` must address {HTTP_ADDRESS}"
    argv = [w.replace(HTTP_ADDRESS, served.base_url) for w in cmd.argv]
    if argv[0] == "classify":
        done = run([str(BIN / "classify"), *argv[1:]], cwd=workdir)
        assert done.returncode == 0, f"{cmd.text}\n{done.stdout}\n{done.stderr}"
        for name in (w for w in argv[1:] if AUDIO_NAME.fullmatch(w)):
            assert name in done.stdout
        return
    done = run(["curl", "--fail-with-body", "--silent", "--show-error", *argv[1:]], cwd=workdir)
    assert done.returncode == 0, f"{cmd.text}\n{done.stdout[:2000]}\n{done.stderr}"
    if "-o" in argv:  # the answer went to a file
        out = workdir / argv[argv.index("-o") + 1]
        assert out.read_bytes().startswith(PNG_SIGNATURE if out.suffix == ".png" else b""), out
        assert out.stat().st_size > 0, out
        return
    answer = json.loads(done.stdout)
    missing = sorted(cmd.shown_keys - json_keys(answer))
    assert not missing, f"README shows keys the answer to `{cmd.text}` lacks: {missing}\n{done.stdout[:2000]}"


@pytest.mark.slow
@pytest.mark.parametrize("block", python_blocks(), ids=lambda b: f"L{b.line}")
def test_python_example_against_the_served_model(block, served, workdir):
    assert HTTP_ADDRESS in block.code or GRPC_ADDRESS in block.code, "a README Python example talks to the service"
    code = block.code.replace(HTTP_ADDRESS, served.base_url).replace(GRPC_ADDRESS, f"127.0.0.1:{served.grpc_port}")
    done = run([sys.executable, "-c", code], cwd=workdir, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, f"README.md line {block.line}:\n{done.stderr[-3000:]}"
    assert done.stdout.strip()
