# Two commands are the whole set-up: `make test` and `make train`. Each creates .venv,
# installs the package (torch pinned to the CPU build 2.13.0 that lies on this machine's disk;
# the package itself only asks for torch>=2.4) and Debian's Fashion-MNIST, then does its job.
# A second run skips what is already done.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TORCH_PIN ?= torch==2.13.0

.PHONY: setup data test train clean

setup: $(STAMP)

# Re-install only when the package's metadata changed.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$(TORCH_PIN)" -e '.[dev,onnx]'
	@touch $@

data:
	@bash scripts/ensure-data.sh

test: setup
	@bash scripts/ensure-data.sh --optional
	$(BIN)/python -m pytest -q

# The default run: preset `cpu` without a GPU (8.5 to 9 minutes on 2 cores), `fast` with one.
train: setup data
	$(BIN)/resnetlab train

clean:
	rm -rf $(VENV) .pytest_cache src/*.egg-info
