"""The docs against the tree: what README.md and docs/*.md name exists, and no file holds a path of
the machine it was written on.

    .venv/bin/python -m pytest tests/test_docs.py

Names checked in every doc: each `SOUND_*` setting (it must be a field of
soundclassifier.config.Settings), each path under one of the repository's own top-level folders,
and each relative link. A path may be a glob (`soundclassifier/*.py`: something must match) or end
in a placeholder (`bentos/sound_classifier-<version>.bento`: its folder must exist); git-ignored
paths (`bench/results/latest.md`) are made by commands and are not checked.

Machine paths: an absolute path of a development machine (under /work, /var/tmp, /root or a
/home/<user>) is refused in every file git tracks or would track. Two places legitimately name
another machine's paths and are left out: `deploy/` (the image, a Kubernetes pod, a systemd host)
and the BentoML image's own user, /home/bentoml, wherever a test or doc names a path inside the image.
"""

from __future__ import annotations

import re
import subprocess
from glob import glob
from pathlib import Path

import pytest

from soundclassifier.config import Settings, env_name

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SETTING = re.compile(r"\bSOUND_[A-Z0-9_]*[A-Z0-9]\b")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
MACHINE_PATH = re.compile(r"(?<![\w.:/-])/(?:work|var/tmp|root)/|(?<![\w.:/-])/home/(?!bentoml\b)[a-z_][\w-]*")
ELSEWHERE = ("deploy/",)  # files that describe another machine: the image, a pod, a host


def _git(*args: str) -> list[str]:
    out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line]


def _top_folders() -> list[str]:
    return sorted({p.split("/")[0] for p in _git("ls-files") if "/" in p})


def _ignored(path: str) -> bool:
    probes = (path, path.rstrip("/") + "/")
    return any(subprocess.run(["git", "check-ignore", "-q", p], cwd=ROOT).returncode == 0 for p in probes)


def _missing_paths(doc: Path, text: str) -> list[str]:
    tops = "|".join(re.escape(t) for t in _top_folders())
    named = re.finditer(rf"(?<![\w./$~-])((?:{tops})/[\w./*-]*)(.?)", text)
    missing = []
    for match in named:
        path, after = match.group(1).rstrip("."), match.group(2)
        if after in "<{":  # a placeholder follows: the folder it goes in must exist
            path = path.rsplit("/", 1)[0]
        if glob(str(ROOT / path)) or _ignored(path):
            continue
        missing.append(path)
    for link in LINK.findall(text):
        if "://" not in link and not link.startswith("mailto:") and not (doc.parent / link).exists():
            missing.append(link)
    return missing


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_setting_a_doc_names_exists(doc):
    known = {env_name(field) for field in Settings.model_fields}
    unknown = sorted(set(SETTING.findall(doc.read_text())) - known)
    assert not unknown, f"{doc.relative_to(ROOT)} names settings soundclassifier/config.py does not have: {unknown}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_path_a_doc_names_exists(doc):
    missing = _missing_paths(doc, doc.read_text())
    assert not missing, f"{doc.relative_to(ROOT)} names paths that do not exist: {sorted(set(missing))}"


def _missing_modules(text: str) -> list[str]:
    """Modules of `python -m MODULE` commands that are not in the tree; a command followed by
    "at <commit>" names one that was there then (git show <commit>:path)."""
    missing = []
    for match in re.finditer(r"python -m ([a-z_]+(?:\.[a-z_0-9]+)+)[^`]*`(\s+at [0-9a-f]{7,40}\b)?", text):
        module, then = match.group(1), match.group(2)
        top = module.split(".")[0]
        if then or not (ROOT / top).is_dir():  # another project's module (grpc_tools, timeit ...)
            continue
        path = ROOT / module.replace(".", "/")
        if not (path.with_suffix(".py").exists() or (path / "__init__.py").exists()):
            missing.append(module)
    return missing


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_module_a_doc_runs_exists(doc):
    missing = _missing_modules(doc.read_text())
    assert not missing, f"{doc.relative_to(ROOT)} runs modules that do not exist: {sorted(set(missing))}"


def test_the_module_check_sees_what_is_missing():
    text = "`python -m bench.run`, `python -m bench.gone PORT`, `python -m bench.old PORT` at 5665c58"
    assert _missing_modules(text) == ["bench.gone"]


def test_the_path_check_sees_what_is_missing():
    text = "`serving/nowhere.py`, [gone](nowhere.md), `soundclassifier/*.py`, `bentos/x-<version>.bento`"
    assert _missing_paths(ROOT / "docs" / "x.md", text) == ["serving/nowhere.py", "nowhere.md"]


def test_no_file_holds_a_machine_path():
    files = _git("ls-files", "--cached", "--others", "--exclude-standard")
    found = []
    for name in files:
        path = ROOT / name
        if name.startswith(ELSEWHERE) or not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:  # binary: an archive, an image
            continue
        found += [f"{name}:{n}: {line.strip()[:100]}" for n, line in enumerate(text.splitlines(), 1)
                  if MACHINE_PATH.search(line)]
    assert not found, "paths of a development machine (use a path relative to the project, or $HOME):\n" + "\n".join(found)


def test_the_machine_path_rule():
    assert MACHINE_PATH.search("cd " + "/wo" + "rk/main")
    assert MACHINE_PATH.search("/ro" + "ot/.cache/x") and MACHINE_PATH.search("/ho" + "me/alice/x")
    assert not MACHINE_PATH.search("/home/bentoml/bento/models")  # the image's own user
    assert not MACHINE_PATH.search("https://example.com/work/x") and not MACHINE_PATH.search("src/work/x")


def test_the_readme_says_what_every_top_level_folder_is_for():
    """Its "Where things are" table: a row for each folder git tracks at the top (hidden ones, such
    as .ci/, may be named in another folder's row)."""
    text = (ROOT / "README.md").read_text().split("## Where things are", 1)
    assert len(text) == 2, "README.md has no 'Where things are' section"
    rows = [line for line in text[1].split("\n## ", 1)[0].splitlines() if line.startswith("| `")]
    described = {name for row in rows for name in re.findall(r"`([\w.-]+)/`", row.split(" | ")[0])}
    folders = {top for top in _top_folders() if not top.startswith(".")}
    assert folders <= described, f"README.md's folder table misses: {sorted(folders - described)}"
    assert described <= folders, f"README.md's folder table names folders git does not track: {sorted(described - folders)}"
