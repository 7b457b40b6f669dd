"""training.download, offline: an archive in ESC-50's layout served over HTTP from 127.0.0.1.

The real code path runs (pooch's HTTP downloader, its SHA-256 check, the unpack and the rename);
only the address differs from the official archive's.
"""

from __future__ import annotations

import hashlib
import threading
import zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from training.datasets import load_dataset
from training.download import ESC50_DIRNAME, download_esc50

CLASSES = ["dog", "rooster", "rain"]


class _Handler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep pytest's output clean
        pass


@pytest.fixture
def http_dir(tmp_path):
    """(directory served at http://127.0.0.1:PORT/, base URL, list of requested paths)."""
    root = tmp_path / "www"
    root.mkdir()
    requests: list[str] = []

    class Handler(_Handler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            requests.append(self.path)
            super().do_GET()

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()


def zip_tree(tree: Path, archive: Path) -> str:
    """Zip TREE as GitHub does (one top folder) into ARCHIVE; return its SHA-256."""
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(tree.rglob("*")):
            z.write(path, path.relative_to(tree.parent))
    return hashlib.sha256(archive.read_bytes()).hexdigest()


@pytest.fixture
def esc50_archive(tmp_path, http_dir, layouts):
    """(URL, SHA-256) of a zip holding ESC-50-master/{meta,audio} with three classes."""
    www, base, _ = http_dir
    tree = layouts["esc50"](tmp_path / "src" / "ESC-50-master", CLASSES)
    digest = zip_tree(tree, www / "master.zip")
    return f"{base}/master.zip", digest


def leftovers(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.iterdir() if p.name != ESC50_DIRNAME)


def test_download_checks_the_hash_and_unpacks_a_loadable_data_set(tmp_path, esc50_archive):
    url, digest = esc50_archive
    dest = tmp_path / "data"
    root = download_esc50(dest, url, sha256=digest.upper())  # hex case does not matter
    assert root == dest / ESC50_DIRNAME
    ds = load_dataset("esc50", root)
    assert ds.labels == CLASSES and len(ds.clips) == 3 * 5
    assert leftovers(dest) == []  # the archive and the temporary folder are gone


def test_a_different_archive_is_refused_and_leaves_nothing(tmp_path, esc50_archive):
    url, digest = esc50_archive
    dest = tmp_path / "data"
    wrong = ("0" if digest[0] != "0" else "1") + digest[1:]
    with pytest.raises(ValueError, match="(?i)hash"):
        download_esc50(dest, url, sha256=wrong)
    assert not (dest / ESC50_DIRNAME).exists()
    assert leftovers(dest) == []


def test_unpinned_download_logs_the_hash_to_pin(tmp_path, esc50_archive, caplog):
    url, digest = esc50_archive
    with caplog.at_level("WARNING", logger="training.download"):
        download_esc50(tmp_path / "data", url, sha256=None)
    assert digest in caplog.text and "--sha256" in caplog.text


def test_malformed_hash_is_refused_before_any_request(tmp_path, esc50_archive, http_dir):
    url, _ = esc50_archive
    with pytest.raises(ValueError, match="64 hex digits"):
        download_esc50(tmp_path / "data", url, sha256="abc123")
    assert http_dir[2] == []


def test_a_complete_data_set_is_not_downloaded_again(tmp_path, esc50_archive, http_dir):
    url, digest = esc50_archive
    dest = tmp_path / "data"
    download_esc50(dest, url, sha256=digest)
    requests_after_first = len(http_dir[2])
    assert requests_after_first >= 1
    assert download_esc50(dest, url, sha256=digest) == dest / ESC50_DIRNAME
    assert len(http_dir[2]) == requests_after_first


def test_an_archive_without_esc50_layout_is_refused(tmp_path, http_dir):
    www, base, _ = http_dir
    tree = tmp_path / "src" / "something-else"
    tree.mkdir(parents=True)
    (tree / "README.md").write_text("not a data set")
    digest = zip_tree(tree, www / "other.zip")
    dest = tmp_path / "data"
    with pytest.raises(ValueError, match="esc50.csv"):
        download_esc50(dest, f"{base}/other.zip", sha256=digest)
    assert not (dest / ESC50_DIRNAME).exists() and leftovers(dest) == []
