# Two commands on a fresh machine (Debian 12, Python 3.11):
#   make demo   -- the main job on the built-in data (Fashion-MNIST), 2 CPU processes
#   make test   -- the whole test suite
# Both create the virtual environment and install into it when it is missing or stale.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.cvdist-installed
NPROC ?= 2
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: venv data demo test test-fast bench clean

venv: $(STAMP)

# libjpeg's headers: cvdist's JPEG region decoder (cvdist/data/_jpeg_region.c, setup.py) builds against them;
# the other C extension (cvdist/data/_normalise.c) needs only the compiler.
JPEG_HEADER := /usr/include/jpeglib.h

$(STAMP): setup.cfg pyproject.toml setup.py cvdist/data/_jpeg_region.c cvdist/data/_normalise.c | $(JPEG_HEADER)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

$(JPEG_HEADER):
	$(SUDO) apt-get install -y -q libjpeg62-turbo-dev || \
	  { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q libjpeg62-turbo-dev; }

# Fashion-MNIST from Debian's package (30 MB, works offline through the package mirror).
data: $(FASHION_MNIST)

$(FASHION_MNIST):
	$(SUDO) apt-get install -y -q dataset-fashion-mnist || \
	  { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q dataset-fashion-mnist; }

# The README's main job: shards, a long-tailed subset, contrastive pretraining, long-tail
# fine-tuning (three losses from scratch, one from the pretrained backbone), distillation, and
# `cvdist compare` over the runs; 2 CPU processes per run (cvdist/commands/demo.py). Re-running skips
# finished steps. `make demo ARGS=--quick` is the few-minute form CI runs.
demo: venv data
	$(BIN)/cvdist demo --nproc $(NPROC) $(ARGS)

# The tests read the real Fashion-MNIST files once (Debian's dataset-fashion-mnist package) and
# start a real two-node SLURM cluster (tests/helpers/slurm_cluster.py; Debian's slurm-wlm and munge).
test: venv data
	bash .ci/install-slurm.sh
	$(BIN)/python -m pytest -q --durations=30

test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow"

bench: venv
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	$(BIN)/python bench/engine_overhead.py
	$(BIN)/python bench/data_throughput.py

clean:
	rm -rf runs wandb .pytest_cache data/fashion-mnist data/fmnist-lt100 data/quick
