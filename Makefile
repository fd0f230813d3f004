# eventrouter: make demo | make test | make bench | make lint
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench lint fmt clean constraints

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -U pip
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]' -e ./examples/eventrouter-sink-jsonfile
	touch $(STAMP)

## demo: the built-in cluster simulator serves the recorded real events; the router prints them (console sink)
demo: $(STAMP)
	$(BIN)/python -m eventrouter.demo

## test: install the test servers and packages, run the whole suite (servers start and stop in fixtures)
test: $(STAMP)
	./scripts/install-test-deps.sh
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest -q

## bench: throughput and memory benchmarks (prints a table and one JSON line per benchmark)
bench: $(STAMP)
	./scripts/install-test-deps.sh
	$(BIN)/python -m benchmarks

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/ruff format --check .

fmt: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## constraints: re-pin constraints.txt to what a fresh install resolves today
constraints:
	rm -rf /tmp/eventrouter-constraints && $(PYTHON) -m venv /tmp/eventrouter-constraints
	/tmp/eventrouter-constraints/bin/pip install -q -e '.[test]'
	{ sed -n '1,3p' constraints.txt; /tmp/eventrouter-constraints/bin/pip freeze --exclude-editable | grep -v '^-e'; } > constraints.txt.new && mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
