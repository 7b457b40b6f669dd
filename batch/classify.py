"""Classify every audio file under a folder (local, file://, hdfs://, s3a://) with Spark; write Parquet.

    python -m batch.classify data/recordings out/labels.parquet                  # local[*], latest model
    python -m batch.classify in/ out/ --model sound-resnet:abc123 --top-k 3
    python -m batch.classify in/ out/ --timeline --hop-s 2.5                     # one row per window
    python -m batch.classify s3a://bucket/audio/ s3a://bucket/labels/ --master spark://host:7077 \\
        --model-archive model.tar           # from: bentoml models export sound-resnet:latest model.tar
    PYSPARK_PYTHON=.venv/bin/python spark-submit --master spark://host:7077 \\
        --conf spark.executor.cores=4 batch/classify.py IN OUT --threads-per-task 2  # code ships itself
    python -m batch.classify --help                                              # every flag

One row per file: path, model, engine, duration_s, sample_rate, label (the top label, or "unknown"
by the model's rule, or with --min-confidence below that top probability), top (array of {label, probability}, best first) and error ({kind, detail}, null when fine). With --timeline: one row per window (window,
start_s, end_s, top), the windows of HTTP /timeline; a failed file gets one row with its error.
A bad file (empty, not audio, truncated, unreadable, too large or long) never fails the job: its
row says why, with the kinds of the HTTP API (empty, not_audio, corrupt, unsupported, too_long,
too_large, non_finite) plus `unreadable` (Spark could not read it) and `failed` (anything else).

How it runs
  * Files are listed and read by Spark's `binaryFile` source (pathGlobFilter on the file name,
    recursiveFileLookup), so INPUT is anything Spark reads. Every listed file gets a row: the
    list comes from the driver's file index (DataFrame.inputFiles, which keeps the 0-byte files
    Spark's scans skip), lengths from a scan that reads no content, and a join attaches the
    results; a file Spark lists but cannot read gets an `unreadable` row (the read skips it,
    ignoreCorruptFiles/ignoreMissingFiles), and a file over the size limit is never read
    (the length filter is pushed into the scan).
  * Rows go to Python through Arrow (`mapInPandas`) in batches of --batch-size records; each
    batch is one forward pass. Each Python worker loads the model once (batch/executor.py) with
    soundclassifier.store.load_model, picks its engine with select_engine(--engine), and runs the
    same Classifier as the HTTP service: no second decoder, feature or top-k implementation.
  * Threads: each task runs --threads-per-task engine threads and Spark runs executor cores /
    spark.task.cpus tasks at once; the job sets spark.task.cpus = --threads-per-task, so
    threads x concurrent tasks = cores. Default 1 thread per task: with many files, one task per
    core beats one task with all cores (decoding and features are single-threaded anyway).
  * The model reaches executors either through $BENTOML_HOME (default: executors read the same
    store path as the driver, i.e. a shared filesystem; the driver's BENTOML_HOME is passed on as
    spark.executorEnv.BENTOML_HOME) or, with --model-archive, as a `bentoml models export`
    archive shipped with SparkContext.addFile and imported into a private store on each worker.
    "latest" is resolved once on the driver, so every executor uses the same version.
  * This code ships itself to the executors (a zip of soundclassifier/ and batch/, addPyFile);
    executors need the Python packages of requirements/serve.txt plus pyspark and pyarrow.
  * Output: written to a staging folder beside OUTPUT (Spark's commit protocol makes that folder
    complete or absent), then OUTPUT is replaced by a rename. Re-running into the same OUTPUT
    replaces it; a failed run leaves the previous OUTPUT as it was. (On object stores a rename is
    a copy: still correct, slower, and not atomic between the delete and the copy.)

Spark settings chosen here (override any with --conf KEY=VALUE):
  SPARK_LOCAL_IP=127.0.0.1          local masters only: bind the loopback, not a network interface
  PYSPARK_PYTHON                    local masters only, when unset: this interpreter (the venv); on a
                                    cluster give the executors' Python with
                                    --conf spark.pyspark.python=/path/to/venv/bin/python
  spark.driver.memory               --driver-memory (2g): local mode runs the executors in the driver
                                    JVM, which holds the content of the Arrow batches in flight
  spark.task.cpus                   --threads-per-task (see Threads)
  spark.python.worker.reuse=true    keeps each worker's loaded model across tasks
  spark.sql.execution.arrow.pyspark.enabled=true
                                    Arrow for every pandas conversion (mapInPandas always uses it)
  spark.sql.execution.arrow.maxRecordsPerBatch
                                    --batch-size (16): files per Arrow batch = clips per forward pass
  spark.sql.execution.arrow.maxBytesPerBatch
                                    64 MB: a batch also closes at this size, so long files do not
                                    pile --batch-size whole files into memory at once
  spark.sql.files.maxPartitionBytes --max-partition-mb (64): upper bound of one binaryFile split
  spark.sql.files.minPartitionNum   --partitions (default 4 x default parallelism): target number
                                    of read partitions (= tasks); more than cores balances uneven
                                    files; the split size is derived from it, no shuffle of content
  spark.sql.shuffle.partitions      = --partitions: the small join with the listing (rows without
                                    content), coalesced further by adaptive execution
  spark.sql.sources.binaryFile.maxLength
                                    the size limit + 1: Spark refuses to load larger files anyway
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import tempfile
import uuid
import zipfile
from pathlib import Path
from urllib.parse import unquote, urlsplit

log = logging.getLogger("batch")

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_PACKAGES = ("soundclassifier", "batch")
DEFAULT_EXTENSIONS = "wav,flac,ogg,mp3"
ENGINES = ("auto", "openvino", "onnxruntime", "torch")
ARROW_MAX_BYTES_PER_BATCH = 64 * 2**20


def build_parser() -> argparse.ArgumentParser:
    from soundclassifier.options import DEFAULT_TIMELINE_TOP_K, DEFAULT_TOP_K, MAX_TOP_K, MIN_HOP_S
    from soundclassifier.store import DEFAULT_TAG

    p = argparse.ArgumentParser(
        prog="python -m batch.classify", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("input", metavar="INPUT", help="folder (or file) Spark can read: path, file://, hdfs://, s3a://")
    p.add_argument("output", metavar="OUTPUT", help="Parquet folder to write; replaced if it exists")
    p.add_argument("--model", default=DEFAULT_TAG, help="model tag in $BENTOML_HOME (default %(default)s)")
    p.add_argument("--model-archive", metavar="PATH",
                   help="a `bentoml models export` archive to ship to the executors instead of reading "
                        "their $BENTOML_HOME (any path Spark's addFile takes); --model is then ignored")
    p.add_argument("--master", default=None,
                   help="Spark master: local[*], local[2], spark://host:7077, yarn, k8s://... "
                        "(default local[*], or what spark-submit was given)")
    p.add_argument("--extensions", default=DEFAULT_EXTENSIONS,
                   help="comma-separated file extensions to classify, matched case-insensitively "
                        "(default %(default)s)")
    p.add_argument("--glob", default=None,
                   help="raw pathGlobFilter on file names (Hadoop glob, e.g. '*.{wav,WAV}'); overrides --extensions")
    p.add_argument("--timeline", action="store_true",
                   help="one row per window (the windows of HTTP /timeline) instead of one row per file")
    p.add_argument("--hop-s", type=float, default=None,
                   help=f"--timeline: seconds between window starts, {MIN_HOP_S:g} s to one window "
                        "(default half a window, as HTTP /timeline)")
    p.add_argument("--top-k", type=int, default=None,
                   help=f"labels kept per file or window, 1-{MAX_TOP_K} (default {DEFAULT_TOP_K}, with --timeline "
                        f"{DEFAULT_TIMELINE_TOP_K}: the HTTP defaults)")
    p.add_argument("--min-confidence", type=float, default=None,
                   help='label "unknown" below this top probability, 0-1 (default: the model\'s own rule)')
    p.add_argument("--engine", choices=ENGINES, default="auto",
                   help="inference engine, chosen per worker by select_engine as in serving (default %(default)s)")
    p.add_argument("--threads-per-task", type=int, default=1,
                   help="engine threads per task, also spark.task.cpus (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=16,
                   help="files per Arrow batch and clips per forward pass (default %(default)s)")
    p.add_argument("--partitions", type=int, default=None,
                   help="target read partitions (tasks) (default 4 x Spark's default parallelism)")
    p.add_argument("--max-partition-mb", type=int, default=64,
                   help="largest binaryFile split, spark.sql.files.maxPartitionBytes (default %(default)s)")
    p.add_argument("--max-file-mb", type=float, default=None,
                   help="larger files get a too_large row without being read "
                        "(default: the service's limits, 50 MB, with --timeline 1024 MB)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="longer audio gets a too_long row (default: the service's limits, 600 s, with --timeline 4 h)")
    p.add_argument("--driver-memory", default="2g",
                   help="spark.driver.memory when this command starts the JVM (default %(default)s)")
    p.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE",
                   help="extra Spark setting, repeatable; applied last")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with every option the service also takes checked by the service's own
    rules (soundclassifier.options) before Spark starts (the hop's upper bound, the model's window,
    too, unless the model comes in an archive: then as soon as it is opened, before any file is
    read)."""
    p = build_parser()
    args = p.parse_args(argv)
    for name in ("threads_per_task", "batch_size", "partitions", "max_partition_mb"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.hop_s is not None and not args.timeline:
        p.error("--hop-s needs --timeline")
    if any("=" not in kv for kv in args.conf):
        p.error("--conf takes KEY=VALUE")
    problem = output_problem(args.input, args.output)
    if problem:
        p.error(problem)
    try:
        job_options(args, None if args.model_archive else stored_window(args.model))
    except ValueError as e:  # InvalidArgumentError
        p.error(str(e))
    return args


def stored_window(tag: str) -> float | None:
    """The window of a model in this machine's store (None if it is not there: the job then
    fails as it starts, saying so), read from its metadata without loading it."""
    import bentoml

    from soundclassifier.features import FeatureSettings

    try:
        meta = bentoml.models.get(tag).info.metadata
    except bentoml.exceptions.NotFound:
        return None
    return FeatureSettings.from_metadata(meta["feature_settings"]).clip_seconds


def job_options(args: argparse.Namespace, window_s: float | None = None):
    """The request options of every file or window, as HTTP would take them (InvalidArgumentError if
    one is out of bounds); `window_s`: the model's window, once known."""
    from soundclassifier.errors import InvalidArgumentError
    from soundclassifier.options import ClassifyOptions, TimelineOptions, validate_options

    values = {"top_k": args.top_k, "min_confidence": args.min_confidence}
    try:
        if args.timeline:
            return validate_options(TimelineOptions, {**values, "hop_s": args.hop_s}, window_s)
        return validate_options(ClassifyOptions, values)
    except InvalidArgumentError as e:  # the same refusal, in the command line's words
        raise InvalidArgumentError(re.sub(r"\b(top_k|hop_s|min_confidence)\b",
                                     lambda m: "--" + m[1].replace("_", "-"), str(e))) from None


def output_problem(input_uri: str, output_uri: str) -> str | None:
    """Why OUTPUT may not be written, or None. The job replaces OUTPUT as a whole, so an OUTPUT
    that is INPUT, holds it or lies inside it would delete the recordings it reads."""
    def parts(uri: str) -> tuple[str, str, tuple[str, ...]]:
        split = urlsplit(uri)
        if split.scheme in ("", "file"):
            return "file", "", Path(unquote(split.path) if split.scheme else uri).resolve().parts
        return split.scheme, split.netloc, tuple(p for p in unquote(split.path).split("/") if p)

    (s_in, host_in, path_in), (s_out, host_out, path_out) = parts(input_uri), parts(output_uri)
    if (s_in, host_in) != (s_out, host_out):
        return None
    shorter = min(len(path_in), len(path_out))
    if path_in[:shorter] == path_out[:shorter]:
        return (f"OUTPUT ({output_uri}) is, holds or lies inside INPUT ({input_uri}); the job replaces "
                "OUTPUT as a whole: choose a folder outside the input")
    return None


def case_insensitive_glob(extensions: str) -> str:
    """'wav,mp3' -> '*.{[wW][aA][vV],[mM][pP][3]}': Hadoop's GlobFilter has no case flag."""
    exts = [e.strip().lstrip(".") for e in extensions.split(",") if e.strip()]
    if not exts:
        raise ValueError("no extensions given")
    classes = ["".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else f"[{c}]" for c in e) for e in exts]
    return "*.{" + ",".join(classes) + "}"


# --- the session ----------------------------------------------------------------------------------


def under_spark_submit() -> bool:
    return "PYSPARK_GATEWAY_PORT" in os.environ  # spark-submit started the JVM and owns its settings


def build_session(args: argparse.Namespace):
    from pyspark.sql import SparkSession

    master = args.master or (None if under_spark_submit() else "local[*]")
    builder = SparkSession.builder.appName("sound-classifier-batch")
    if master is not None:
        builder = builder.master(master)
    if master is not None and master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        builder = builder.config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
        # Workers are this interpreter (and its venv) unless PYSPARK_PYTHON says otherwise.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    conf = {
        "spark.driver.memory": args.driver_memory,
        "spark.task.cpus": str(args.threads_per_task),
        "spark.executorEnv.OMP_NUM_THREADS": str(args.threads_per_task),
        "spark.python.worker.reuse": "true",
        "spark.ui.showConsoleProgress": str(sys.stderr.isatty()).lower(),  # no progress bars in log files
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(args.batch_size),
        "spark.sql.execution.arrow.maxBytesPerBatch": str(ARROW_MAX_BYTES_PER_BATCH),
        "spark.sql.files.maxPartitionBytes": str(args.max_partition_mb * 2**20),
    }
    if os.environ.get("BENTOML_HOME"):
        conf["spark.executorEnv.BENTOML_HOME"] = os.environ["BENTOML_HOME"]
    conf.update(kv.split("=", 1) for kv in args.conf)
    if "spark.pyspark.python" in conf:  # spark-submit turns it into PYSPARK_PYTHON; so does this command
        os.environ["PYSPARK_PYTHON"] = conf["spark.pyspark.python"]
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    partitions = args.partitions or 4 * spark.sparkContext.defaultParallelism
    spark.conf.set("spark.sql.files.minPartitionNum", str(partitions))
    spark.conf.set("spark.sql.shuffle.partitions", str(partitions))
    return spark


def ship_code(spark, folder: str) -> None:
    """Zip this project's core and batch packages into `folder` and add them to every executor's
    sys.path (the driver serves the file from there until the session stops)."""
    path = Path(folder) / "sound_batch_code.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for package in SHIPPED_PACKAGES:
            for f in sorted((REPO_ROOT / package).glob("*.py")):
                zf.write(f, f"{package}/{f.name}")
    spark.sparkContext.addPyFile(str(path))


# --- the job --------------------------------------------------------------------------------------


def resolve_model(spark, args: argparse.Namespace):
    """(concrete tag, archive file name or None, FeatureSettings) of the model the job will use."""
    from soundclassifier.features import FeatureSettings

    if args.model_archive:
        from pyspark import SparkFiles

        from batch.executor import open_archive

        spark.sparkContext.addFile(args.model_archive)
        name = os.path.basename(args.model_archive.rstrip("/"))
        entry = open_archive(SparkFiles.get(name))
    else:
        import bentoml

        entry, name = bentoml.models.get(args.model), None
    return str(entry.tag), name, FeatureSettings.from_metadata(entry.info.metadata["feature_settings"])


def job_spec(args: argparse.Namespace, tag: str, archive: str | None, window_s: float):
    from batch.executor import JobSpec
    from soundclassifier.config import Settings

    limits = Settings().timeline_limits if args.timeline else Settings().clip_limits  # service defaults
    max_bytes = int(args.max_file_mb * 2**20) if args.max_file_mb is not None else limits.max_bytes
    return JobSpec(
        tag=tag,
        archive=archive,
        engine=args.engine,
        threads=args.threads_per_task,
        batch_size=args.batch_size,
        options=job_options(args, window_s).model_dump(exclude_none=True),
        max_bytes=max_bytes,
        max_seconds=args.max_seconds if args.max_seconds is not None else limits.max_seconds,
        timeline=args.timeline,
    )


def output_schema(timeline: bool):
    from pyspark.sql.types import (
        ArrayType,
        DoubleType,
        FloatType,
        IntegerType,
        StringType,
        StructField,
        StructType,
    )  # fmt: skip

    top = ArrayType(StructType([StructField("label", StringType()), StructField("probability", FloatType())]))
    error = StructType([StructField("kind", StringType()), StructField("detail", StringType())])
    fields = [
        StructField("path", StringType(), False),
        StructField("model", StringType()),
        StructField("engine", StringType()),
        StructField("duration_s", DoubleType()),
        StructField("sample_rate", IntegerType()),
    ]
    if timeline:
        fields += [StructField("window", IntegerType()), StructField("start_s", DoubleType()),
                   StructField("end_s", DoubleType())]
    return StructType([*fields, StructField("label", StringType()), StructField("top", top),
                       StructField("error", error)])


def classified(spark, args: argparse.Namespace, spec):
    """The result DataFrame: every listed file, with its rows from the workers or its error."""
    import functools

    from pyspark.sql import functions as fn

    from batch.executor import UNREADABLE, classify_partition, timeline_partition

    glob = args.glob or case_insensitive_glob(args.extensions)
    files = (
        spark.read.format("binaryFile")
        .option("pathGlobFilter", glob)
        .option("recursiveFileLookup", "true")
        .option("ignoreCorruptFiles", "true")  # an unreadable file is skipped here, reported below
        .option("ignoreMissingFiles", "true")
        .load(args.input)
    )
    # Spark's file scans drop zero-length files, so the full list comes from the file index the
    # driver already holds; the scan of (path, length) reads no content.
    every = spark.createDataFrame([(hadoop_path(p),) for p in files.inputFiles()], "path string")
    listing = files.select("path", "length")
    schema = output_schema(spec.timeline)
    body = timeline_partition if spec.timeline else classify_partition
    rows = (
        files.where(fn.col("length") <= spec.max_bytes)  # pushed into the scan: big files are never read
        .select("path", "content")
        .mapInPandas(functools.partial(body, spec), schema)
        .withColumn("_seen", fn.lit(True))
    )
    missing = (
        fn.when(fn.col("length").isNull(), error_struct(*empty_file_error()))
        .when(fn.col("length") > spec.max_bytes, error_struct(
            "too_large", fn.format_string("The file is %,d bytes; the limit is %,d bytes.",
                                         fn.col("length"), fn.lit(spec.max_bytes))))
        .otherwise(error_struct(UNREADABLE, "Spark listed this file but could not read it."))
    )
    joined = every.join(listing, on="path", how="left").join(rows, on="path", how="left")
    columns = [
        fn.coalesce(fn.col("model"), fn.lit(spec.tag)).alias("model") if f.name == "model"
        else fn.when(fn.col("_seen").isNull(), missing).otherwise(fn.col("error")).alias("error") if f.name == "error"
        else fn.col(f.name)
        for f in schema.fields
    ]
    return joined.select(*columns)


def hadoop_path(uri: str) -> str:
    """A URI from DataFrame.inputFiles() ('file:///a%20b.wav') as binaryFile's path column writes it
    (Hadoop Path.toString: 'file:/a b.wav'), so the two can be joined."""
    parts = urlsplit(uri)
    return f"{parts.scheme}:" + (f"//{parts.netloc}" if parts.netloc else "") + unquote(parts.path)


def empty_file_error() -> tuple[str, str]:
    """The core's own kind and message for a 0-byte file."""
    from soundclassifier.audio import decode
    from soundclassifier.errors import AudioError

    try:
        decode(b"")
    except AudioError as e:
        return e.kind.value, e.message
    raise AssertionError("decode accepted an empty file")


def error_struct(kind, detail):
    from pyspark.sql import Column
    from pyspark.sql import functions as fn

    as_col = lambda v: v if isinstance(v, Column) else fn.lit(v)  # noqa: E731
    return fn.struct(as_col(kind).alias("kind"), as_col(detail).alias("detail"))


def write_replacing(spark, df, output: str) -> None:
    """Write to a staging folder beside OUTPUT, then swap it in (see the module docstring)."""
    jvm = spark.sparkContext._jvm
    hadoop_conf = spark.sparkContext._jsc.hadoopConfiguration()
    target = jvm.org.apache.hadoop.fs.Path(output)
    fs = target.getFileSystem(hadoop_conf)
    qualified = fs.makeQualified(target)
    staging = jvm.org.apache.hadoop.fs.Path(qualified.getParent(), f".{qualified.getName()}.staging-{uuid.uuid4().hex}")
    try:
        df.write.mode("errorifexists").parquet(staging.toString())
        if fs.exists(qualified) and not fs.delete(qualified, True):
            raise RuntimeError(f"could not remove the previous {output}")
        if not fs.rename(staging, qualified):
            raise RuntimeError(f"could not rename {staging.toString()} to {output}")
    finally:
        if fs.exists(staging):
            fs.delete(staging, True)


def summarize(spark, output: str) -> dict:
    from pyspark.sql import functions as fn

    df = spark.read.parquet(output)
    errors = {r["kind"]: r["count"] for r in df.where("error IS NOT NULL").groupBy("error.kind").count().collect()}
    engines = sorted(r["engine"] for r in df.select("engine").distinct().collect() if r["engine"])
    return {"rows": df.count(), "files": df.select(fn.countDistinct("path")).first()[0], "errors": errors,
            "engines": engines}


def run(spark, args: argparse.Namespace) -> dict:
    tag, archive, settings = resolve_model(spark, args)
    spec = job_spec(args, tag, archive, settings.clip_seconds)
    log.info("classifying %s with %s -> %s", args.input, tag, args.output)
    write_replacing(spark, classified(spark, args, spec), args.output)
    return {"model": tag, **summarize(spark, args.output)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spark = build_session(args)
    with tempfile.TemporaryDirectory(prefix="sound-batch-code-") as code:
        try:
            ship_code(spark, code)
            summary = run(spark, args)
        except Exception as e:  # noqa: BLE001 - logged with its trace; the exit code says it failed
            log.exception("batch classification failed: %s: %s", type(e).__name__, e)
            return 1
        finally:
            spark.stop()
    print(f"wrote {summary['rows']} rows for {summary['files']} files to {args.output} "
          f"(model {summary['model']}, engines {summary['engines']}, errors {summary['errors']})")
    return 0


if __name__ == "__main__":
    if str(REPO_ROOT) not in sys.path:  # spark-submit batch/classify.py runs this file as a script
        sys.path.insert(0, str(REPO_ROOT))
    sys.exit(main())
