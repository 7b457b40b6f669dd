"""Fetch a public data set when the machine is online, checked against a SHA-256.

    python -m training.download esc50 data/                    # -> data/ESC-50-master/{audio,meta}
    python -m training.download esc50 data/ --sha256 <hex>     # refuse any other archive

The archive is fetched by pooch, which downloads to a temporary file and keeps it only if its
SHA-256 matches (a mismatch raises and leaves nothing behind). It is unpacked into a temporary
directory next to the target, which is renamed into place only when complete: an interrupted
download leaves nothing half-made. tests/test_download.py runs this code offline against an
archive in the same layout served from 127.0.0.1.
"""

from __future__ import annotations

import argparse
import logging
import re
import tempfile
import zipfile
from pathlib import Path

import pooch

ESC50_URL = "https://github.com/karolpiczak/ESC-50/archive/master.zip"
ESC50_DIRNAME = "ESC-50-master"
ESC50_SHA256: str | None = None
"""SHA-256 of the archive at ESC50_URL, or None when not pinned.

ESC-50 publishes no checksum, and this project was written on a machine without internet access, so
no hash could be taken from the official archive here. Pin it once you have one you trust: run a
download without `--sha256`, compare the hash it logs with a copy obtained independently (a second
machine, a colleague's download), and put it here or pass it as `--sha256`. With None the download
is unchecked and the log says so, with the hash to pin. GitHub builds `archive/master.zip` on the
fly from the branch: a new commit upstream changes the hash, and the check then refuses it."""

HEX_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
DOWNLOAD_TIMEOUT_S = 60

log = logging.getLogger(__name__)


def download_esc50(dest: Path, url: str = ESC50_URL, sha256: str | None = ESC50_SHA256) -> Path:
    """Download, check and unpack ESC-50 into dest/ESC-50-master (kept if already complete).

    Args:
        dest (Path): directory to unpack into.
        url (str): archive address. (Default: the official GitHub archive)
        sha256 (str | None): expected SHA-256 of the archive (64 hex digits); None downloads
            unchecked and logs the hash to pin. (Default: ESC50_SHA256)

    Raises:
        ValueError: the hash is malformed or does not match, or the archive is not ESC-50's layout.
    """
    if sha256 is not None and not HEX_SHA256.fullmatch(sha256):
        raise ValueError(f"--sha256 must be 64 hex digits, got {sha256!r}")
    target = dest / ESC50_DIRNAME
    if (target / "meta" / "esc50.csv").is_file():
        log.info("%s already present", target)
        return target
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".esc50-") as tmp:
        log.info("downloading %s", url)
        archive = Path(
            pooch.retrieve(
                url,
                known_hash=None if sha256 is None else f"sha256:{sha256}",
                fname="esc50.zip",
                path=tmp,
                downloader=pooch.HTTPDownloader(timeout=DOWNLOAD_TIMEOUT_S),
            )
        )
        if sha256 is None:
            log.warning(
                "%s was not checked against a known hash; its SHA-256 is %s (pass --sha256 to pin it)",
                url, pooch.file_hash(str(archive)),
            )
        with zipfile.ZipFile(archive) as z:
            z.extractall(Path(tmp) / "unpacked")  # zipfile drops absolute paths and ".." parts
        found = next((Path(tmp) / "unpacked").rglob("esc50.csv"), None)
        if found is None:
            raise ValueError(f"{url} does not contain meta/esc50.csv")
        root = found.parent.parent
        if not (root / "audio").is_dir():
            raise ValueError(f"{url} has meta/esc50.csv but no audio/ folder")
        root.rename(target)
    log.info("ESC-50 is in %s", target)
    return target


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m training.download", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("dataset", choices=["esc50"], help="data set to fetch")
    p.add_argument("dest", type=Path, help="directory to unpack into")
    p.add_argument("--url", default=ESC50_URL, help="archive address (default: the official GitHub archive)")
    p.add_argument(
        "--sha256", default=ESC50_SHA256,
        help="expected SHA-256 of the archive; a different download is refused "
        "(default: ESC50_SHA256 in this file, unset: unchecked, the hash is logged)",
    )
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    download_esc50(a.dest, a.url, a.sha256)


if __name__ == "__main__":
    main()
