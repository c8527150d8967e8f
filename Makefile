# The two set-up commands of the README: `make demo` and `make test`. Each creates (or reuses)
# the virtual environment in .venv, installs moeforge into it with what it needs, then runs.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check

.PHONY: install demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# moeforge itself, with the extras the demo's deployment and the Centre use (what `make demo` runs)
$(VENV)/.installed-stamp: pyproject.toml | $(BIN)/python
	$(PIP) -e '.[service]'
	@touch $@

# plus the test tools and the extras the tests exercise (s3, bench)
$(VENV)/.installed-test-stamp: pyproject.toml | $(BIN)/python
	$(PIP) -e '.[test]'
	@touch $@ $(VENV)/.installed-stamp

install: $(VENV)/.installed-stamp

demo: $(VENV)/.installed-stamp
	$(BIN)/moeforge demo

test: $(VENV)/.installed-test-stamp
	$(BIN)/python -m pytest

bench: $(VENV)/.installed-test-stamp
	$(BIN)/python bench/testbed.py

clean:
	rm -rf $(VENV) build *.egg-info
