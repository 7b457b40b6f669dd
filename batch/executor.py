"""What runs inside each Spark Python worker: one model per process, clips through it in batches.

Spark starts one Python worker per concurrently running task and reuses it for later tasks
(`spark.python.worker.reuse`, on by default and set explicitly by batch.classify), so the model is
loaded and its engine chosen once per worker process, kept in `_LOADED`, and every later partition
that worker handles pays nothing for it. The functions here are pickled by reference (this module
ships to the executors in the job's code zip), which is what keeps that cache alive across tasks:
a function defined in `__main__` would be pickled by value, with fresh globals every task.

Decoding, features, the forward pass, the arguments' rules and the results all come from the core's
`Classifier`, opened by `soundclassifier.loading.open_classifier` exactly as the service opens
it; this module only moves rows in and out.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

log = logging.getLogger("batch")

# Kinds of error this job adds to soundclassifier.errors.ErrorKind (empty, not_audio, corrupt, ...).
UNREADABLE = "unreadable"  # Spark listed the file but could not read it (gone, permissions, I/O)
FAILED = "failed"  # anything else that went wrong for this one file (a bug: report it)

CLASSIFY_COLUMNS = ["path", "model", "engine", "duration_s", "sample_rate", "label", "top", "error"]
TIMELINE_COLUMNS = [
    "path", "model", "engine", "duration_s", "sample_rate", "window", "start_s", "end_s", "label", "top", "error",
]  # fmt: skip


@dataclass(frozen=True)
class JobSpec:
    """Everything an executor needs to rebuild the classifier and run one partition.

    tag (str): concrete model tag, resolved on the driver (never "latest": every executor must use
        the same version even if someone saves a new model during the job).
    archive (str | None): file name of a `bentoml models export` archive shipped with
        `SparkContext.addFile`; None reads `tag` from the executor's own $BENTOML_HOME.
    engine (str): choice passed to `soundclassifier.loading.select_engine` (auto, openvino, ...).
    threads (int): engine threads per task (= spark.task.cpus).
    batch_size (int): clips per forward pass.
    options (dict): the request options (top_k, min_confidence, with --timeline hop_s), checked on
        the driver by the core's rules (soundclassifier.options) and again by the classifier here.
    max_bytes (int): largest file decoded (larger ones are refused as too_large).
    max_seconds (float): longest audio decoded (longer ones are refused as too_long).
    timeline (bool): one row per window instead of one row per file.
    """

    tag: str
    archive: str | None
    engine: str
    threads: int
    batch_size: int
    options: dict
    max_bytes: int
    max_seconds: float
    timeline: bool = False


# (tag, archive, engine choice, threads) -> (Classifier, "engine/precision"); one entry per worker.
_LOADED: dict[tuple, tuple] = {}


def open_archive(path: str):
    """Import an exported model archive into a private store; return the bentoml.Model.

    A private `ModelStore` leaves $BENTOML_HOME (and whatever bentoml already read from it in this
    process) untouched. It lives in Spark's per-application files folder, which Spark removes
    when the application ends."""
    import bentoml
    from bentoml._internal.models import ModelStore
    from pyspark import SparkFiles

    store = ModelStore(tempfile.mkdtemp(prefix="sound-model-store-", dir=SparkFiles.getRootDirectory()))
    return bentoml.models.import_model(path, _model_store=store)


def classifier_for(spec: JobSpec):
    """The classifier and engine label of this worker process, built on first use."""
    key = (spec.tag, spec.archive, spec.engine, spec.threads)
    if key not in _LOADED:
        import bentoml

        from soundclassifier.loading import open_classifier

        if spec.archive is not None:
            from pyspark import SparkFiles

            entry = open_archive(SparkFiles.get(spec.archive))
            if str(entry.tag) != spec.tag:
                raise RuntimeError(f"{spec.archive} holds {entry.tag}, the driver expected {spec.tag}")
        else:
            entry = bentoml.models.get(spec.tag)
        classifier, report = open_classifier(entry, spec.engine, spec.threads)
        _LOADED[key] = (classifier, report["chosen"])
        log.info("worker loaded %s on %s (%s)", classifier.tag, report["chosen"], report.get("tried", {}))
    return _LOADED[key]


def _error(kind: str, detail: str) -> dict[str, str]:
    return {"kind": kind, "detail": detail}


def _top(scores) -> list[dict]:
    return [{"label": s.label, "probability": s.probability} for s in scores]


def _file_error(exc: Exception) -> dict[str, str]:
    from soundclassifier.errors import AudioError

    if isinstance(exc, AudioError):
        return _error(exc.kind.value, exc.message)
    return _error(FAILED, f"{type(exc).__name__}: {exc}")


def classify_partition(spec: JobSpec, batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """mapInPandas body: (path, content) rows -> one CLASSIFY_COLUMNS row per file."""
    from soundclassifier.audio import Limits

    clf, engine = classifier_for(spec)
    opts = clf.classify_options(**spec.options)
    limits = Limits(max_bytes=spec.max_bytes, max_seconds=spec.max_seconds)
    for frame in batches:
        rows: list[dict] = []
        ready: list[tuple[int, object, np.ndarray]] = []  # (row index, Audio, model input)
        for path, content in zip(frame["path"], frame["content"], strict=True):
            row = {"path": path, "model": clf.tag, "engine": engine, "duration_s": None,
                   "sample_rate": None, "label": None, "top": None, "error": None}
            try:
                audio, x = clf.prepare(bytes(content), limits)
            except Exception as e:  # noqa: BLE001 - one bad file gets its error row, never fails the job
                row["error"] = _file_error(e)
            else:
                ready.append((len(rows), audio, x))
            rows.append(row)
        for start in range(0, len(ready), spec.batch_size):
            chunk = ready[start : start + spec.batch_size]
            z = clf.forward(np.stack([x for _, _, x in chunk]))
            for (i, audio, _), p in zip(chunk, z, strict=True):
                c = clf.classification(audio, p, opts)
                rows[i].update(duration_s=c.duration_s, sample_rate=c.sample_rate, label=c.label, top=_top(c.top))
        yield pd.DataFrame(rows, columns=CLASSIFY_COLUMNS)


def timeline_partition(spec: JobSpec, batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """mapInPandas body: (path, content) rows -> one TIMELINE_COLUMNS row per window, the windows
    of HTTP /timeline (Classifier.timeline); a file that fails gets one row with its error."""
    from soundclassifier.audio import Limits

    clf, engine = classifier_for(spec)
    limits = Limits(max_bytes=spec.max_bytes, max_seconds=spec.max_seconds)
    for frame in batches:
        rows: list[dict] = []
        for path, content in zip(frame["path"], frame["content"], strict=True):
            base = {"path": path, "model": clf.tag, "engine": engine}
            try:
                t = clf.timeline(bytes(content), limits, **spec.options)
            except Exception as e:  # noqa: BLE001 - as above: the file's row carries the error
                rows.append({**base, "error": _file_error(e)})
                continue
            rows += [
                {**base, "duration_s": t.duration_s, "sample_rate": t.sample_rate, "window": i,
                 "start_s": w.start_s, "end_s": w.end_s, "label": w.label, "top": _top(w.top), "error": None}
                for i, w in enumerate(t.windows)
            ]
        yield pd.DataFrame(rows, columns=TIMELINE_COLUMNS)
