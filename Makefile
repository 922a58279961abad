# The venv is (re)built only when pyproject.toml is newer than the last install.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# One test process per core (pytest-xdist); each runs torch on one thread (tests/conftest.py).
WORKERS ?= auto
# The files that hold `alone` tests: collecting only them saves the whole suite's collection.
ALONE_FILES = $(shell grep -l "mark.alone" tests/test_*.py)

.PHONY: train test test-fast clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

train: $(STAMP)
	$(VENV)/bin/fmb train

# The full suite, every tier (what CI runs): the tests side by side, then the speed
# comparisons (marked `alone`) with the machine to themselves.
test: $(STAMP)
	$(VENV)/bin/ruff check fmb tests benchmarks cli.py
	$(PY) -m pytest -q -n $(WORKERS) --dist worksteal -m "not alone" $(PYTEST_ARGS)
	$(PY) -m pytest -q -m alone $(or $(PYTEST_ARGS),$(ALONE_FILES)) || test $$? -eq 5  # 5: PYTEST_ARGS selected none

# The inner loop: no slow end-to-end runs, no fresh interpreters, no multi-process training.
test-fast: $(STAMP)
	$(PY) -m pytest -q -n $(WORKERS) --dist worksteal -m "not slow and not subprocess and not ddp and not alone" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
