"""Fetch a public data set when the machine is online.

    python -m training.download esc50 data/            # -> data/ESC-50-master/{audio,meta}

Downloads go to a temporary file and are unpacked into a temporary directory next to the target,
which is renamed into place only when complete: an interrupted download leaves nothing half-made.
Tests run this code offline against a local file:// archive in the same layout.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import urllib.request
import zipfile
from pathlib import Path

ESC50_URL = "https://github.com/karolpiczak/ESC-50/archive/master.zip"
ESC50_DIRNAME = "ESC-50-master"

log = logging.getLogger(__name__)


def download_esc50(dest: Path, url: str = ESC50_URL) -> Path:
    """Download and unpack ESC-50 into dest/ESC-50-master (kept if already complete)."""
    target = dest / ESC50_DIRNAME
    if (target / "meta" / "esc50.csv").is_file():
        log.info("%s already present", target)
        return target
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".esc50-") as tmp:
        archive = Path(tmp) / "esc50.zip"
        log.info("downloading %s", url)
        with urllib.request.urlopen(url, timeout=60) as r, archive.open("wb") as out:
            shutil.copyfileobj(r, out, length=1 << 20)
        with zipfile.ZipFile(archive) as z:
            z.extractall(Path(tmp) / "unpacked")
        found = next((Path(tmp) / "unpacked").rglob("esc50.csv"), None)
        if found is None:
            raise ValueError(f"{url} does not contain meta/esc50.csv")
        root = found.parent.parent
        if not (root / "audio").is_dir():
            raise ValueError(f"{url} has meta/esc50.csv but no audio/ folder")
        root.rename(target)
    log.info("ESC-50 is in %s", target)
    return target


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", choices=["esc50"], help="data set to fetch")
    p.add_argument("dest", type=Path, help="directory to unpack into")
    p.add_argument("--url", default=ESC50_URL, help="archive address (default: the official GitHub archive)")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    download_esc50(a.dest, a.url)


if __name__ == "__main__":
    main()
