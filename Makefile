# cme-ser: the README's two commands are `make run` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
DATA_DIR ?=
OUTPUT ?= output

.PHONY: run test lint install embeddings preprocess benchmark reproduce clean

# TFX 1.16 resolves only on Python 3.10: find one (pyenv's, then any python3.10 on PATH).
$(PY):
	@py=$$(scripts/find-python310) || exit 1; \
	echo "creating $(VENV) with $$py"; \
	$$py -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip<25" >/dev/null

# Every installed module is byte-compiled here, once: this environment sets
# PYTHONDONTWRITEBYTECODE, so a module left uncompiled would be compiled again at every import.
# pip compiles file by file on one core; compileall -j 0 does the same work on every core (the
# same .pyc files; -qq: a package's stray non-Python-3 file fails to compile, as under pip).
$(VENV)/.installed: $(PY) pyproject.toml constraints.txt
	$(PY) -m pip install -q --no-compile -c constraints.txt -e ".[test,benchmarks]" 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -m compileall -qq -j 0 "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" || true
	TF_CPP_MIN_LOG_LEVEL=3 PYTHONWARNINGS=ignore::FutureWarning $(PY) -c "import tfx, tensorflow, apache_beam, pocketsphinx, soundfile"
	touch $@

install: $(VENV)/.installed

embeddings: install
	$(VENV)/bin/cme-ser embeddings fetch

# The 15 slowest tests are listed after every run (PYTEST_ADDOPTS keeps the command the README shows).
# Two pytest-xdist workers, one per core: most of the suite's time is single-threaded (process
# start-up, TFX, Beam, small models); tests/conftest.py schedules them file by file.
TEST_WORKERS ?= 2
test: export PYTEST_ADDOPTS += --durations=15
test: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) tests

# ruff with pyproject.toml's rules (make test runs it too: tests/test_lint.py).
lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

run: embeddings
	$(VENV)/bin/cme-ser run $(foreach d,$(DATA_DIR),--data-dir $(d)) --output $(OUTPUT)

# Table 1 of the paper: every variant, 5 folds, 3 seeds (resumable; hours on 2 cores).
reproduce: embeddings
	$(VENV)/bin/cme-ser reproduce --dataset ravdess $(if $(DATA_DIR),--data-dir $(DATA_DIR)) --seeds 3 --jobs 2 --threads 1

benchmark: install
	$(PY) benchmarks/train_throughput.py --shape ravdess --batch 32 --steps 10
	$(PY) benchmarks/train_throughput.py --shape iemocap --batch 32 --steps 10

clean:
	rm -rf $(VENV) $(OUTPUT) .pytest_cache
