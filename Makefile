# The two commands: `make demo` (set up + run the main job end to end) and `make test`.
# Both create .venv if missing and reuse it (and what it installed) on later runs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test install install-dev down clean-demo

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Stamps make a second run skip pip entirely unless pyproject.toml changed.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/demo.sh

test: $(VENV)/.installed-dev
	$(BIN)/ruff check prodray jobs tests benchmarks
	$(BIN)/python -m pytest -q

down:
	$(BIN)/prodray down
