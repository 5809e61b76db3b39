# Set-up and the two everyday jobs. `make demo` and `make test` each build what they need on a fresh machine.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test bench gpu-check clean

setup: $(VENV)/.installed

# torch/torchvision first and pinned to the releases this project is tested with; then the package itself.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/pip install -q -e ".[test]"
	touch $@

# The main job at CPU size: the quick study, then its report.
demo: setup
	$(BIN)/stn-ablate run --study quick
	$(BIN)/stn-ablate report --study quick

test: setup
	$(BIN)/python -m pytest -q --durations=15

# On a CUDA machine: tests, bench and a 50-epoch pair on the GPU (scripts/gpu_check.sh); elsewhere a one-line no-op.
gpu-check: setup
	scripts/gpu_check.sh

clean:
	rm -rf $(VENV) .stn-ablate
