# Quick start: `make demo` builds a corpus from the bundled sample, trains the tiny Flamingo on it
# and captions an image; `make test` runs the suite.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-engines bench lock clean

$(STAMP): setup.py requirements.lock pipeline/_textchain.c
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c requirements.lock -e '.[train,test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m pipeline.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

# The engine tests alone (`make test` runs them too): the local engine, EXTERNAL worker pools, and
# Flink and Spark clusters on 127.0.0.1; the first run fills ~/.cache/m3w-engines.
test-engines: $(STAMP)
	$(BIN)/python -m pytest -q tests/engines

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run_all

# Re-pin the tested set after changing setup.py's requirements.
lock: $(STAMP)
	{ sed -n '1,3p' requirements.lock; $(BIN)/python -m pip freeze --exclude-editable | sed 's/+cpu$$//'; } > requirements.lock.new
	mv requirements.lock.new requirements.lock

clean:
	rm -rf $(VENV) build *.egg-info demo-output
