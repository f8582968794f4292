# Two commands are the whole set-up: `make test` and `make train`. Each creates .venv,
# installs the package (torch pinned to the CPU build 2.13.0 that lies on this machine's disk;
# the package itself only asks for torch>=2.4) and Debian's Fashion-MNIST, then does its job.
# A second run skips what is already done.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TORCH_PIN ?= torch==2.13.0
CHAPTER_LANG ?= en

.PHONY: setup data test test-quick train notebook clean

setup: $(STAMP)

# Re-install only when the package's metadata changed.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$(TORCH_PIN)" -e '.[dev,onnx,tensorboard]'
	@touch $@

data:
	@bash scripts/ensure-data.sh

# Everything (about 17 minutes on 2 cores, set-up included; about 24 on one core); CI runs this.
test: setup
	@bash scripts/ensure-data.sh --optional
	$(BIN)/python -m pytest -q

# Under a minute on 2 cores: every module, none of the tests that train for long or start processes.
test-quick: setup
	$(BIN)/python -m pytest -q -m "not slow"

# The default run: preset `cpu` without a GPU (a 10-minute budget, start to end, on any CPU), `fast` with one.
train: setup data
	$(BIN)/resnetlab train

# The chapter in JupyterLab with .venv's kernel: `make notebook`, or `make notebook CHAPTER_LANG=zh-CN`
# for the Chinese edition. Installs JupyterLab into .venv on first use. NOTEBOOK_ARGS go to `jupyter lab`.
notebook: setup data
	@CHAPTER_LANG=$(CHAPTER_LANG) bash scripts/notebook.sh $(NOTEBOOK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache src/*.egg-info
