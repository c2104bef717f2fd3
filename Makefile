# Two commands do all the set-up: `make demo` (the main job) and `make test` (the whole suite).
# Both create .venv on first use and reinstall when pyproject.toml changes. `make check` is the
# development loop: the same lint and types, and every test that needs no Ray runtime, no
# service and no outside tool (the markers in pyproject.toml).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
# The CPU build of torch, pinned here: an unpinned torch pulls several GB of CUDA packages.
TORCH  := torch==2.13.0
export DS_ACCELERATOR ?= cpu
# Tools with pins of their own (checkov pins old packaging, networkx, ...): a venv apart.
TOOLS  := .venv-tools
CHECKOV := checkov==3.3.30
# The benchmarks' sentence-transformers comparison: `datasets` beside .venv (see its rule).
ST     := .venv-st

.PHONY: demo test check bench clean tools

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

$(TOOLS)/bin/checkov:
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --upgrade pip
	$(TOOLS)/bin/python -m pip install --quiet $(CHECKOV)

tools: $(TOOLS)/bin/checkov

demo: $(VENV)/.installed
	$(BIN)/dist-contrast train configs/synthetic.yaml

# The whole suite in one run on three pytest-xdist processes: a Ray test spends most of its time
# waiting on processes it started, so the CPU-bound Ray-free tests fill the gaps. A module
# whose tests share a trained run or the session's services is one xdist group (loadgroup).
# make check: one OpenMP thread per process; several test processes share few cores, and
# threads that spin-wait for each other's cores slowed it (5 min 17 s -> 4 min 43 s). Not in
# make test: two fresh-clone runs with it took 19-21 min against 17.5 without (noisy; the Ray
# runs' own processes are not helped by it).
SUITE_ENV := OMP_NUM_THREADS=1
test: $(VENV)/.installed-test $(TOOLS)/bin/checkov $(ST)/.installed
	$(BIN)/ruff check --no-cache dist_contrast tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -ra --durations=15 -n 3 --dist loadgroup

check: $(VENV)/.installed-test
	$(BIN)/ruff check --no-cache dist_contrast tests benchmarks
	$(BIN)/mypy
	$(SUITE_ENV) $(BIN)/python -m pytest -q -ra --durations=10 -n auto --maxprocesses=4 \
	  --dist loadgroup -m "not ray and not cluster and not tools"

# lightly (the benchmarks' comparison) imports torchvision, which has no CPU build for this torch:
# it gets a tool venv with PyPI's torch and torchvision (several GB) that reads the rest from .venv.
LIGHTLY := .venv-lightly
$(LIGHTLY)/.installed: | $(BIN)/python
	$(PYTHON) -m venv $(LIGHTLY)
	$(LIGHTLY)/bin/python -m pip install --quiet --isolated torch==2.13.0 torchvision==0.28.0
	$(LIGHTLY)/bin/python -m pip install --quiet --isolated --no-deps lightly==1.6.0
	$(BIN)/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" \
	  > "$$($(LIGHTLY)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/project-venv.pth"
	touch $@

# sentence-transformers' mine_hard_negatives (the benchmarks' comparison) takes a `datasets`
# Dataset, which the project does not need: a tool venv ($(ST), named at the top) with
# datasets that reads the rest (sentence-transformers, torch) from .venv.
$(ST)/.installed: | $(BIN)/python
	$(PYTHON) -m venv $(ST)
	$(BIN)/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" \
	  > "$$($(ST)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/project-venv.pth"
	$(ST)/bin/python -m pip install --quiet --isolated datasets==5.2.0
	touch $@

bench: $(VENV)/.installed-test $(LIGHTLY)/.installed $(ST)/.installed
	$(BIN)/python benchmarks/bench.py
	$(BIN)/python benchmarks/report.py --write
	$(BIN)/python benchmarks/miner_share.py
	$(BIN)/python benchmarks/determinism.py
	$(BIN)/python benchmarks/grad_cache.py
	$(BIN)/python benchmarks/st_compare.py

clean:
	rm -rf $(VENV) $(TOOLS) $(LIGHTLY) $(ST) results mlruns mlartifacts mlflow.db .pytest_cache .mypy_cache .ruff_cache
