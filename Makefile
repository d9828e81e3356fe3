# The whole set-up is these two commands:
#   make book   create .venv, install, execute every notebook (quick profile, CPU), build _build/html
#   make test   same set-up, then the test suite (also what .ci/run calls)
#
# torch is installed FIRST and pinned, so pip never resolves a CUDA build for it. On a machine whose
# pip cannot see a local CPU wheel, pass the CPU index:
#   make book TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
# With models trained elsewhere (`spatialkit store pack models.tar` there), the first build only executes:
#   make book STORE=models.tar

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH := torch==2.13.0
TORCH_PIP_ARGS ?=
PYTEST_ARGS ?=
# Tests run in 2 processes (pytest-xdist): most of the suite's time is notebooks and tiny models on one torch
# thread each, so 2 workers use both cores of a 2-core machine (TEST_JOBS=0: one process). `--dist worksteal`: a
# worker that runs out of tests takes half of the other's queue (tests/conftest.py puts the long ones first).
TEST_JOBS ?= 2
# Re-running pip is skipped until pyproject.toml changes.
# Left out of the set-up's bytecode: the test suites packages ship (never imported) and transformers' model
# families other than those spatialkit loads (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, LLaVA with its CLIP and Llama,
# and the auto classes): 5,900 of the venv's 17,700 files, 10 s of a cold set-up's 30 s of compiling. A module
# left out still imports (Python compiles it in memory).
PYC_SKIP := /tests/|/transformers/models/(?!(auto|clip|encoder_decoder|llama|llava|qwen2_5_vl|qwen2_vl|qwen3_vl)/)
STAMP := $(VENV)/.spatialkit-installed

.PHONY: setup book run test clean browser-deps

setup: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --no-compile $(TORCH_PIP_ARGS) "$(TORCH)"
	$(PY) -m pip install --no-compile -e ".[test,cluster]"  # cluster: Dask (tests/test_sweep.py starts a LocalCluster)
	# Bytecode once, on every core (pip compiles one file at a time): no process then compiles an import itself,
	# which matters where PYTHONDONTWRITEBYTECODE is set. A file that does not compile (a package's Python-2
	# example) is skipped, as pip skips it. PYC_SKIP: files no run imports (see there).
	$(PY) -m compileall -q -j 0 -x '$(PYC_SKIP)' $$($(PY) -c "import sysconfig; print(sysconfig.get_path('purelib'))") > /dev/null || true
	# papermill runs kernel "python3": register this venv's one, inside the venv (works in CI too)
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (spatialkit)"
	touch $(STAMP)

# STORE: a file of `spatialkit store pack`, unpacked into the checkpoint store first (a refused checkpoint stops here)
STORE ?=

book: $(STAMP)
	$(if $(STORE),$(VENV)/bin/spatialkit store unpack "$(STORE)")
	$(VENV)/bin/spatialkit book

run: $(STAMP)
	$(VENV)/bin/spatialkit run

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -n $(TEST_JOBS) --dist worksteal $(PYTEST_ARGS)

clean:
	rm -rf _build book/executed

# tests/test_browser.py drives Debian's chromium through Playwright (Playwright's own browser
# download does not work here); without chromium that test is skipped. Needs root (CI runs as root).
browser-deps:
	command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)
