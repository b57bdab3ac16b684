# Every target a person, pre-commit or CI needs. `make demo` and `make test` work on a fresh
# Debian/Ubuntu machine as root (or with sudo): they install what they need first.
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
ENGINE ?= espeak
MODEL_DIR ?=
PYTEST_ARGS ?=

.PHONY: help install install-system install-cosyvoice lint format test test-fast demo bench up down clean

help:
	@echo "make demo   - install, start the local stack, synthesize examples/announcements.csv"
	@echo "make test   - install and run the whole suite against real services"
	@echo "make bench  - benchmarks (figures, not tests)"
	@echo "make up / make down - start / stop the local stack"

install-system:
	bash scripts/install-system.sh

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[worker,stack,dashboard,completion,dev]'
	touch $@

install: install-system $(VENV)/.installed

install-cosyvoice: install
	bash scripts/install-cosyvoice.sh $(VENV)

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(VENV)/.installed
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: install install-cosyvoice lint
	TTS_REQUIRE_COSYVOICE=1 $(BIN)/pytest -ra $(PYTEST_ARGS)

# Unit tests only: no services, seconds.
test-fast: $(VENV)/.installed
	$(BIN)/pytest -ra -m "not integration and not soak and not cosyvoice" $(PYTEST_ARGS)

# ENGINE=cosyvoice also installs the CosyVoice runtime.
demo: install $(if $(filter cosyvoice,$(ENGINE)),install-cosyvoice)
	bash scripts/demo.sh "$(ENGINE)" "$(MODEL_DIR)"

bench: install install-cosyvoice
	$(PY) -m benchmarks.run

up: install
	$(BIN)/tts-batch up

down:
	$(BIN)/tts-batch down

clean:
	-$(BIN)/tts-batch down
	rm -rf .tts-stack out .pytest_cache .mypy_cache .ruff_cache
