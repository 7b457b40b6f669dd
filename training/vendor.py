"""Re-encode a data set in the ESC-50 layout into the small copy the project ships (data/esc10/).

    python -m training.vendor ../shared/data/esc10-dev data/esc10

Every clip becomes mono Ogg/Vorbis at 22.05 kHz (the rate the model resamples to anyway, with the
same libsoxr filter), so the shipped set is about a third of the originals' size. `meta/esc50.csv`
and `ATTRIBUTION.csv` are copied unchanged (the file names keep their `.ogg` suffix) and a README
naming the licence is written beside them. Rerunning gives the same audio; the Ogg container's
stream serial numbers are random (libsndfile), so the bytes differ.
"""

from __future__ import annotations

import argparse
import csv
import logging
import shutil
import textwrap
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 22050  # FeatureSettings().sample_rate: nothing above 11 kHz reaches the model
VORBIS_COMPRESSION = 0.5  # libsndfile's compression level (Vorbis quality 1 - level): ~32 kB per 5 s clip
MAX_FILE_BYTES = 5 * 2**20

log = logging.getLogger(__name__)

README = """\
# ESC-10, folds {folds} (real field recordings)

{n} clips of {n_classes} classes, from ESC-10, the ten-class subset of ESC-50:
{classes}.

> K. J. Piczak. ESC: Dataset for Environmental Sound Classification. Proceedings of the 23rd
> Annual ACM Conference on Multimedia, Brisbane, Australia, 2015. doi:10.1145/2733373.2806390

Licence: Creative Commons Attribution (CC BY 3.0), as its author distributes ESC-10.
Each clip is cut from a Freesound recording under its own licence (CC0, CC BY or CC Sampling+);
`ATTRIBUTION.csv` credits every clip (source recording, address, author, licence) and must travel
with the clips.

Changes from the original: each clip was re-encoded to mono Ogg/Vorbis at {rate} Hz (Vorbis
quality {quality:g}) by `python -m training.vendor {source} {dest}` ({size_mb:.1f} MB for {n}
clips). Layout is ESC-50's (`audio/*.ogg`, `meta/esc50.csv`), so `--dataset esc50` reads it too;
`python -m training.train` trains on it by default. Clips cut from one source recording share a
fold: validate by fold, never by a random split of clips. Folds missing here (fold 1 of ESC-10)
are withheld on purpose: they are the project's held-out test, so tune on these folds only.
"""


def reencode(src: Path, dest: Path) -> int:
    """One clip -> mono Vorbis at SAMPLE_RATE; returns the bytes written."""
    samples, rate = sf.read(src, dtype="float32", always_2d=True)
    wave = samples.mean(axis=1)
    if rate != SAMPLE_RATE:
        wave = soxr.resample(wave, rate, SAMPLE_RATE, quality="HQ")
    # Vorbis clips at full scale; the resampler may overshoot a clip that touched it.
    wave = np.clip(wave, -1.0, 1.0)
    sf.write(dest, wave, SAMPLE_RATE, format="OGG", subtype="VORBIS", compression_level=VORBIS_COMPRESSION)
    size = dest.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ValueError(f"{dest} is {size} bytes, over {MAX_FILE_BYTES}")
    return size


def vendor(source: Path, dest: Path) -> int:
    """Write the small copy of `source` into `dest` (replaced whole); returns its total size in bytes."""
    rows = list(csv.DictReader((source / "meta" / "esc50.csv").open(newline="")))
    tmp = dest.with_name(f".{dest.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "audio").mkdir(parents=True)
    (tmp / "meta").mkdir()
    total = 0
    for r in rows:
        total += reencode(source / "audio" / r["filename"], tmp / "audio" / r["filename"])
    shutil.copyfile(source / "meta" / "esc50.csv", tmp / "meta" / "esc50.csv")
    shutil.copyfile(source / "ATTRIBUTION.csv", tmp / "ATTRIBUTION.csv")
    classes = sorted({(int(r["target"]), r["category"]) for r in rows})
    (tmp / "README.md").write_text(
        README.format(
            folds=_fold_range(rows),
            n=len(rows),
            n_classes=len(classes),
            classes=textwrap.fill(", ".join(c.replace("_", " ") for _, c in classes), 100),
            rate=SAMPLE_RATE,
            quality=1 - VORBIS_COMPRESSION,
            source=source.name,
            dest=dest.as_posix(),
            size_mb=total / 1e6,
        )
    )
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    log.info("%d clips, %.1f MB in %s", len(rows), total / 1e6, dest)
    return total


def _fold_range(rows: list[dict[str, str]]) -> str:
    folds = sorted({int(r["fold"]) for r in rows})
    contiguous = folds == list(range(folds[0], folds[-1] + 1))
    return f"{folds[0]}-{folds[-1]}" if contiguous and len(folds) > 1 else ", ".join(map(str, folds))


def main() -> None:
    p = argparse.ArgumentParser(
        prog="python -m training.vendor", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("source", type=Path, help="data set in the ESC-50 layout, with ATTRIBUTION.csv")
    p.add_argument("dest", type=Path, help="directory to write (replaced whole)")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    vendor(a.source, a.dest)


if __name__ == "__main__":
    main()
