PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
demo dev: export DAGSTER_HOME ?= $(CURDIR)/data/dagster_home
SIMULATOR_PORT ?= 8765

.PHONY: install demo test sql bench dev engine engine-stop clean

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
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

sql: $(STAMP)
	$(BIN)/alloy-pipeline sql "$(q)"

bench: $(STAMP)
	$(BIN)/python bench/run.py --items 100000 1000000 3000000 --write docs/benchmarks.md

engine: $(STAMP)
	$(BIN)/alloy-pipeline engine start

engine-stop: $(STAMP)
	$(BIN)/alloy-pipeline engine stop

dev: $(STAMP)
	mkdir -p $(DAGSTER_HOME)
	[ -f $(DAGSTER_HOME)/dagster.yaml ] || cp deploy/dagster.yaml $(DAGSTER_HOME)/dagster.yaml
	remote=$$($(BIN)/alloy-pipeline engine start) || exit 1; \
	echo "dagster dev steps are clients of the Spark engine at $${remote%%/;*}; it stays running afterwards (make engine-stop)"; \
	$(BIN)/python -m alloy_pipeline.alloy.simulator --port $(SIMULATOR_PORT) --api-key demo-key --aqs-dir "$${ALLOY_AQS_DIR:-aqs_queries}" & sim=$$!; \
	trap "kill $$sim" EXIT INT TERM; \
	SPARK_REMOTE=$$remote ALLOY_API_URL=http://127.0.0.1:$(SIMULATOR_PORT) ALLOY_API_KEY=demo-key $(BIN)/dagster dev

clean:
	if [ -x $(BIN)/alloy-pipeline ]; then $(BIN)/alloy-pipeline engine stop; fi
	rm -rf data .pytest_cache
