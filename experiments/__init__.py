"""Experiments: scripts that measured something once, kept beside the product so it can be measured again.

Nothing here is imported by the service, training, `make bench` or the Bento (tests import a few
to check they still run). Each script's docstring says what it measured and how to run it; every
one prints its figures to stdout, and the docs record them with the command and the commit. Run
from the repository root:

    python -m experiments.class_holdout [--refit]        # real sounds of no class: each class held out
    python -m experiments.kind_holdout                    # kinds data/other-sounds lacks: each kind held out
    python -m experiments.crops_tta --cv --no-save --clip-seconds 2.5   # random crops + test-time averaging
    python -m experiments.narrow --cv --no-save           # ResNet-14 at half width (WIDTH=32)
    python -m experiments.ensemble_cv a.npz b.npz         # seed ensembles from saved CV predictions
    python -m experiments.distill --cv --no-save --outlier-dir data/other-sounds   # a student of two seeds
    python -m experiments.background_mix --cv --no-save --outlier-dir data/other-sounds   # other sounds as background
    python -m experiments.specaugment_strength --cv --no-save --outlier-dir data/other-sounds   # wider masks
    FOLDS=4,5 python -m experiments.folds --cv --no-save  # one CV split across processes (--merge joins them)
    python -m experiments.unknown_rules cv.npz            # which score decides "unknown", from saved predictions
    python -m experiments.refit_check cv.npz              # the refit against the measured network
    python -m experiments.floor                           # a request's CPU: the HTTP floor vs the service
    python -m experiments.ab before@HEAD~1 after          # paired A/B of served revisions or settings
    python -m experiments.memory_return MODEL_TAG         # RSS after a hostile burst: does it come back?
    python -m experiments.listen_memory MODEL_TAG 64 --rounds 14   # live streams: does RSS stop growing?
    python -m experiments.profile_request MODEL_TAG       # where a request's CPU goes at 32 clients (py-spy)
    python -m experiments.worker_memory MODEL_TAG         # each worker's memory over repeated loads
    python -m experiments.image_start --starts 5          # the image's cold start paired with the source tree's
    python -m experiments.edge.race PORT 64 60            # and the rest of experiments/edge/

The training ones are recorded in docs/training-recipe.md, the floor, the A/Bs, the live streams' and the workers' memory in
docs/performance.md, the memory return in docs/design.md, the image's starts in docs/container.md,
the edge ones (experiments/edge/) in docs/edge.md. They may import bench's load generators,
bench/container.py's ImageContainer and testkit.
"""
