# eventrouter: make demo | make test | make bench | make lint
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench lint fmt clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -U pip
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]' -e ./examples/eventrouter-sink-jsonfile
	touch $(STAMP)

## demo: replay the recorded real events through the router with the console sink
demo: $(STAMP)
	$(BIN)/python -m eventrouter.demo

## test: install the test servers and packages, run the whole suite (servers start and stop in fixtures)
test: $(STAMP)
	./scripts/install-test-deps.sh
	$(BIN)/ruff check .
	$(BIN)/pytest -q

## bench: throughput and memory benchmarks (prints a table and one JSON line per benchmark)
bench: $(STAMP)
	./scripts/install-test-deps.sh
	$(BIN)/python -m benchmarks

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
