# Two commands for a newcomer: `make serve` and `make test` (see README.md).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# The model store lives inside the project unless you point BENTOML_HOME elsewhere.
export BENTOML_HOME ?= $(CURDIR)/.bentoml
export PYTHONPATH := $(CURDIR)
export PIP_DISABLE_PIP_VERSION_CHECK := 1
MODEL ?= sound-resnet:latest
# The default model, shipped in BentoML's export format: what serving needs, no PyTorch weights
# (python -m training.ship). `make train` reproduces it from data/. Absolute: `bentoml models
# import` reads a relative path from the file system's root.
SHIPPED_MODEL := $(CURDIR)/bentos/sound-resnet.bentomodel
PORT ?= 3000
BENTOML := $(VENV)/bin/bentoml

.PHONY: install install-serve install-train model train serve test test-fast lint bench bento image containerize test-image proto clean

# Three nested package sets, each installed once and again only when its requirements change:
# serving (requirements/serve.txt: no PyTorch), training (+ PyTorch, fastai), development (+ tests).
# pip's warnings about local package indexes are noise: they go to a log shown only on failure.
define pip_install
	test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -r $(1) > $(VENV)/pip.log 2>&1 || { grep -v "is ignored" $(VENV)/pip.log; exit 1; }
	$(PY) -m pip install -q --no-deps -e . > $(VENV)/pip.log 2>&1 || { grep -v "is ignored" $(VENV)/pip.log; exit 1; }
	$(PY) -m pip check
	touch $@
endef

$(VENV)/.serve-installed: requirements/serve.txt pyproject.toml
	$(call pip_install,requirements/serve.txt)
$(VENV)/.train-installed: $(VENV)/.serve-installed requirements/torch.txt requirements/train.txt
	$(call pip_install,requirements/train.txt)
$(VENV)/.installed: $(VENV)/.train-installed requirements/dev.txt
	$(call pip_install,requirements/dev.txt)

install-serve: $(VENV)/.serve-installed
install-train: $(VENV)/.train-installed
install: $(VENV)/.installed

# The model to serve: the store's, or the shipped one imported into the store on first use.
model: $(VENV)/.serve-installed
	@$(BENTOML) models get $(MODEL) >/dev/null 2>&1 || $(BENTOML) models import $(SHIPPED_MODEL)

# The default model: the real recordings shipped in data/esc10, with data/other-sounds as sounds of
# none of the classes (trained on folds 3-5, scored and calibrated on fold 2, then trained again on
# all four folds; see python -m training.train --help).
train: $(VENV)/.train-installed
	$(PY) -m training.train --outlier-dir data/other-sounds

# Serves in the foreground (Ctrl+C stops it) and says where once every worker is ready.
serve: model
	@SOUND_MODEL_TAG=$(MODEL) $(BENTOML) serve service:SoundClassifier --port $(PORT) & server=$$!; \
	$(PY) -m serving.ready --port $(PORT) --pid $$server; wait $$server

# Every tier but the image's, which needs an image built first (`make test-image` builds it, then runs it).
test: $(VENV)/.installed
	@tests/system-tools.sh $(VENV)/bin
	$(PY) -m pytest -m "not image"

# The fast tier, for the edit-test loop: tests that run in process (no server, browser, Spark job,
# image or model training of their own; tests/conftest.py marks those); `make test` runs them all.
# The deployment files' tests in it render them with kustomize, which system-tools.sh installs.
test-fast: $(VENV)/.installed
	@tests/system-tools.sh $(VENV)/bin
	$(PY) -m pytest -m "not slow and not served and not browser and not spark and not image"

# gRPC stubs are committed; tests/test_grpc.py checks they match this command's output.
proto: $(VENV)/.installed
	$(PY) -m grpc_tools.protoc -Iserving/grpc_stubs=proto --python_out=. --grpc_python_out=. --pyi_out=. \
		proto/soundclassifier/v1/sound_classifier.proto

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

# A versioned Bento (the model is packed in through the service's model reference), exported.
bento: model
	SOUND_MODEL_TAG=$(MODEL) $(VENV)/bin/bentoml build . --output tag | tail -1 > bentos/.last-tag
	$(VENV)/bin/bentoml export "$$(sed 's/^__tag__://' bentos/.last-tag)" $(CURDIR)/bentos/
	@ls -1t bentos/*.bento | head -1

# The Bento's OCI image, sound_classifier:<version> and :latest, with docker, podman or buildah
# (installed with apt-get when none is); where no registry serves python:3.11-slim, from a base made
# of Debian's packages first (cached). deploy/image/build.sh says where each piece comes from.
image: bento
	deploy/image/build.sh "$$(sed 's/^__tag__://' bentos/.last-tag)"

containerize: image

# The tests that run the image (tests/test_image.py), on a freshly built one (`make test` leaves
# them out: they need an image).
test-image: image $(VENV)/.installed
	$(PY) -m pytest -m image tests/test_image.py

# Benchmark report (bench/results/latest.{md,json,png}) + a 64-client 60-s soak: ~25 min on a
# quiet machine; the HTTP load client is wrk (apt-get install wrk).
bench: $(VENV)/.installed model
	@command -v wrk >/dev/null || { apt-get update && apt-get install -y --no-install-recommends wrk; }
	$(PY) -m bench.run --model $(MODEL)

clean:
	rm -rf $(VENV) .pytest_cache
