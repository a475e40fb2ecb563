# Two commands do all set-up on a fresh machine:
#   make demo   creates .venv, installs perfcallback, trains a small model with the monitor
#   make test   creates .venv, installs the dev extras, runs the whole test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Dev/CI pin: a CPU build of torch that installs from local disk. Users bring their own torch>=2.4.
TORCH_PIN ?= torch==2.13.0

.PHONY: demo demo-lightning test lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# DeepSpeed JIT-compiles its CPU shared-memory comm op at the first init_distributed (~85 s on 2
# cores, then cached in ~/.cache/torch_extensions): built here, not inside a timed test.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH_PIN)"
	$(BIN)/pip install -q -e '.[dev,lightning,tensorboard,nvml,trace,deepspeed,transformers]' "$(TORCH_PIN)"
	DS_ACCELERATOR=cpu $(BIN)/python -c "from deepspeed.comm.torch import build_shm_op; build_shm_op()" \
		|| echo "warning: DeepSpeed's CPU comm op did not build; DeepSpeed tests may be slow" >&2
	touch $@

demo: $(VENV)/.installed
	$(BIN)/python examples/raw_loop.py --logdir runs/demo

test: $(VENV)/.installed
	$(BIN)/pytest

lint: $(VENV)/.installed
	$(BIN)/ruff check perfcallback integrations tests examples benchmarks
	$(BIN)/mypy -p perfcallback && $(BIN)/mypy integrations

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/lightning_overhead.py
	$(BIN)/python benchmarks/analyze_speed.py

demo-lightning: $(VENV)/.installed
	$(BIN)/python examples/lightning_example.py

clean:
	rm -rf $(VENV) build dist *.egg-info runs
