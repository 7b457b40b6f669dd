# Two commands for a newcomer: `make serve` and `make test` (see README.md).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# The model store lives inside the project unless you point BENTOML_HOME elsewhere.
export BENTOML_HOME ?= $(CURDIR)/.bentoml
export PYTHONPATH := $(CURDIR)
export PIP_DISABLE_PIP_VERSION_CHECK := 1
MODEL ?= sound-resnet:latest
PORT ?= 3000
STAMP := $(VENV)/.installed

.PHONY: install train serve test lint bench bento containerize proto clean

install: $(STAMP)

# Re-installs only when a requirements file changed; pip takes torch from this machine's disk.
# pip's warnings about local package indexes are noise: they go to a log shown only on failure.
$(STAMP): requirements/serve.txt requirements/torch.txt requirements/train.txt requirements/dev.txt pyproject.toml
	test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements/dev.txt > $(VENV)/pip.log 2>&1 || { grep -v "is ignored" $(VENV)/pip.log; exit 1; }
	$(PY) -m pip install -q --no-deps -e . > $(VENV)/pip.log 2>&1 || { grep -v "is ignored" $(VENV)/pip.log; exit 1; }
	$(PY) -m pip check
	touch $(STAMP)

# The default model: the real recordings shipped in data/esc10 with the CLI defaults (trained on
# folds 3-5, scored and calibrated on fold 2; see python -m training.train --help).
train: $(STAMP)
	$(PY) -m training.train

serve: $(STAMP)
	@$(VENV)/bin/bentoml models get $(MODEL) >/dev/null 2>&1 || $(MAKE) train
	SOUND_MODEL_TAG=$(MODEL) $(VENV)/bin/bentoml serve service:SoundClassifier --port $(PORT)

test: $(STAMP)
	$(PY) -m pytest

# gRPC stubs are committed; tests/test_grpc.py checks they match this command's output.
proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -Iserving/grpc_stubs=proto --python_out=. --grpc_python_out=. --pyi_out=. \
		proto/soundclassifier/v1/sound_classifier.proto

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# A versioned Bento (the model is packed in through the service's model reference), exported.
bento: $(STAMP)
	@$(VENV)/bin/bentoml models get $(MODEL) >/dev/null 2>&1 || $(MAKE) train
	SOUND_MODEL_TAG=$(MODEL) $(VENV)/bin/bentoml build . --output tag | tail -1 > bentos/.last-tag
	$(VENV)/bin/bentoml export "$$(sed 's/^__tag__://' bentos/.last-tag)" bentos/
	@ls -1t bentos/*.bento | head -1

# Needs a Docker or Podman engine; the development machine has only the docker client.
containerize: bento
	$(VENV)/bin/bentoml containerize "$$(sed 's/^__tag__://' bentos/.last-tag)"

# Benchmark report (bench/results/latest.{md,json,png}) + a 64-client 60-s soak: ~25 min on a
# quiet machine; the HTTP load client is wrk (apt-get install wrk).
bench: $(STAMP)
	@command -v wrk >/dev/null || { apt-get update && apt-get install -y --no-install-recommends wrk; }
	@$(VENV)/bin/bentoml models get $(MODEL) >/dev/null 2>&1 || $(MAKE) train
	$(PY) -m bench.run --model $(MODEL)

clean:
	rm -rf $(VENV) .pytest_cache
