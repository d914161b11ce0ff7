PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The demo's and dev's data folder: lake, engine, catalog and the Dagster instance (DATA/dagster_home,
# whatever DAGSTER_HOME says). Ports of the Dagster UI, the Alloy simulator and the Spark engine.
DATA ?= data
DAGSTER_PORT ?= 3000
SIMULATOR_PORT ?= 8765
ENGINE_PORT ?= 15002
# The engine's Spark master: empty for local Spark (or the engine already running), or a standalone
# cluster's spark://host:port, whose driver the engine becomes (docs/production.md, "A Spark cluster").
SPARK_MASTER ?=
# `make test`'s pytest workers (pytest-xdist), sharing the one test engine. Three on 2 cores: two
# often both waited on the engine (288 s against 236 s with three, same code and machine).
TEST_WORKERS ?= 3
MASTER_OPTION := $(if $(SPARK_MASTER),--master '$(SPARK_MASTER)')

.PHONY: install demo test system sql bench dev engine engine-stop clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/alloy-pipeline demo --data $(DATA) --engine-port $(ENGINE_PORT)

test: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/python -m pytest --numprocesses $(TEST_WORKERS) --dist worksteal

# The slow tests: `make demo` and `make dev` as a user runs them (setup.cfg keeps them out of `make test`).
system: $(STAMP)
	$(BIN)/python -m pytest -m system

sql: $(STAMP)
	$(BIN)/alloy-pipeline sql "$(q)" --data $(DATA)

bench: $(STAMP)
	$(BIN)/python bench/run.py --items 100000 1000000 3000000 --rebuild-days 365 --rebuild-raw direct --write docs/benchmarks.md
	$(BIN)/python bench/night.py --queries 11 30 --write docs/benchmarks.md

engine: $(STAMP)
	$(BIN)/alloy-pipeline engine start --data $(DATA) --port $(ENGINE_PORT) $(MASTER_OPTION)

engine-stop: $(STAMP)
	$(BIN)/alloy-pipeline engine stop --data $(DATA)

# One command, no shell around it: make runs it directly, so Ctrl-C or SIGTERM reaches it, and it
# stops dagster dev in order (see `dev` in alloy_pipeline/cli.py).
dev: $(STAMP)
	$(BIN)/alloy-pipeline dev --data $(DATA) --port $(DAGSTER_PORT) --simulator-port $(SIMULATOR_PORT) --engine-port $(ENGINE_PORT) $(MASTER_OPTION)

clean:
	if [ -x $(BIN)/alloy-pipeline ]; then $(BIN)/alloy-pipeline engine stop; fi
	rm -rf data .pytest_cache
