# foveal: `make demo` runs the main job on the embedded stack, `make test` runs the suite.
# Everything installs into .venv from requirements.lock (exact pins); nothing global.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTOS := $(wildcard proto/foveal/v1/*.proto)
STUBS := foveal/v1/__init__.py

.PHONY: all venv proto lint test test-fast demo stack-up stack-down stack-status clean

all: venv proto

venv: $(STAMP)
$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip==26.3"
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# Python stubs are generated from proto/ by the build, never edited by hand.
proto: $(STUBS)
$(STUBS): $(PROTOS) $(STAMP)
	rm -rf foveal/v1
	$(PY) -m grpc_tools.protoc -I proto --python_out=. --pyi_out=. --grpc_python_out=. $(PROTOS)
	touch $@

lint: venv proto
	$(VENV)/bin/ruff check foveal tests
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest

test-fast: venv proto
	$(PY) -m pytest -m "not slow"

demo: venv proto
	$(VENV)/bin/foveal demo

stack-up: venv proto
	$(VENV)/bin/foveal stack up
stack-status: venv proto
	$(VENV)/bin/foveal stack status
stack-down: venv proto
	$(VENV)/bin/foveal stack down

clean:
	-$(VENV)/bin/foveal stack down
	rm -rf $(VENV) foveal/v1 .foveal .pytest_cache
