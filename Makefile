PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
demo dev: export DAGSTER_HOME ?= $(CURDIR)/data/dagster_home
SIMULATOR_PORT ?= 8765

.PHONY: install demo test sql bench dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	mkdir -p $(DAGSTER_HOME)
	$(BIN)/alloy-pipeline demo

test: $(STAMP)
	$(BIN)/python -m pytest

sql: $(STAMP)
	$(BIN)/alloy-pipeline sql "$(q)"

bench: $(STAMP)
	$(BIN)/python bench/run.py --items 100000 1000000 3000000 --write docs/benchmarks.md

dev: $(STAMP)
	mkdir -p $(DAGSTER_HOME)
	$(BIN)/python -m alloy_pipeline.alloy.simulator --port $(SIMULATOR_PORT) --api-key demo-key & sim=$$!; \
	trap "kill $$sim" EXIT INT TERM; \
	ALLOY_API_URL=http://127.0.0.1:$(SIMULATOR_PORT) ALLOY_API_KEY=demo-key $(BIN)/dagster dev

clean:
	rm -rf data .pytest_cache
