# ReproLab: `make demo` (everything offline on embedded defaults) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
PIP_VERSION ?= 26.3
# where `make lock` looks: PyPI, and a directory or index that holds the CPU torch wheel
# (this machine's /opt/wheels; elsewhere TORCH_SOURCE='--extra-index-url https://download.pytorch.org/whl/cpu')
LOCK_INDEX ?= https://pypi.org/simple
TORCH_SOURCE ?= --find-links /opt/wheels

export PATH := $(CURDIR)/$(BIN):$(PATH)
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 90
export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export PYTHONUNBUFFERED := 1

# deployments (prefect.yaml): a local server and worker, or any server via PREFECT_API_URL
PREFECT_PORT ?= 4200
SERVER_URL ?= http://127.0.0.1:$(PREFECT_PORT)/api
export REPROLAB_HOME ?= $(CURDIR)
export REPROLAB_POOL ?= reprolab
export REPROLAB_NIGHTLY_CRON ?= 0 2 * * *
export REPROLAB_TIMEZONE ?= UTC
# flow runs one worker runs at once; each gets that share of the cores (REPROLAB_THREADS)
WORKER_FLOWS ?= 2
RUN_DIR := $(PREFECT_HOME)/run

.PHONY: venv lock demo test lint bench clean server worker deploy stop

# pip itself is pinned: `pip install -r pylock.toml` (PEP 751) is new and still experimental
$(BIN)/.pip:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q pip==$(PIP_VERSION)
	touch $@

# exactly the locked wheels, hashes checked, then the project itself (editable, no deps)
$(BIN)/.installed: pylock.toml pyproject.toml | $(BIN)/.pip
	$(BIN)/pip install -q --require-hashes -r pylock.toml
	$(BIN)/pip install -q --no-deps -e .
	touch $@

# re-resolve pyproject.toml (dev extra included) into pylock.toml. Wheels from PyPI, torch the
# CPU build from TORCH_SOURCE (a GPU box installs its own torch build on top: see README).
lock: | $(BIN)/.pip
	$(BIN)/pip lock -q --isolated --index-url $(LOCK_INDEX) $(TORCH_SOURCE) \
	  -c <(echo torch==$(TORCH_VERSION)) --only-deps '.[dev]' -o pylock.toml
	$(PYTHON) -m tasks.lockfile stamp pylock.toml

venv: $(BIN)/.installed

demo: venv
	$(BIN)/python -m flows.demo

test: venv
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check flows tasks models tests benchmarks

bench: venv
	$(BIN)/python -m benchmarks.crypto_ingest

# a Prefect server on 127.0.0.1 and a process worker, each in its own session (PID files,
# logs in .prefect/run); `make stop` ends both, the worker first. The port is given as
# settings, not `--port`: the UI finds its API through PREFECT_UI_API_URL, which otherwise
# defaults to PREFECT_API_URL or PREFECT_SERVER_API_PORT (4200), whatever `--port` says.
server: venv
	@mkdir -p $(RUN_DIR)
	@if [ -f $(RUN_DIR)/server.pid ] && kill -0 $$(cat $(RUN_DIR)/server.pid) 2>/dev/null; then \
	  echo "server already running (PID $$(cat $(RUN_DIR)/server.pid))"; else \
	  PREFECT_SERVER_API_HOST=127.0.0.1 PREFECT_SERVER_API_PORT=$(PREFECT_PORT) \
	  PREFECT_UI_API_URL=$(SERVER_URL) setsid $(BIN)/prefect server start \
	    >$(RUN_DIR)/server.log 2>&1 & echo $$! >$(RUN_DIR)/server.pid; fi
	@for i in $$(seq 60); do curl -sf $(SERVER_URL)/health >/dev/null && break; sleep 1; done; \
	  curl -sf $(SERVER_URL)/health >/dev/null || { echo "server did not start: see $(RUN_DIR)/server.log"; exit 1; }
	@echo "Prefect server: $(SERVER_URL:/api=) (UI), log $(RUN_DIR)/server.log"
	@$(MAKE) --no-print-directory worker PREFECT_API_URL=$(SERVER_URL)

worker: venv
	@mkdir -p $(RUN_DIR)
	@if [ -f $(RUN_DIR)/worker.pid ] && kill -0 $$(cat $(RUN_DIR)/worker.pid) 2>/dev/null; then \
	  echo "worker already running (PID $$(cat $(RUN_DIR)/worker.pid))"; else \
	  threads=$$($(BIN)/python -m tasks.threads $(WORKER_FLOWS)) || exit 1; \
	  REPROLAB_THREADS=$$threads PREFECT_API_URL=$${PREFECT_API_URL:-$(SERVER_URL)} setsid \
	    $(BIN)/prefect worker start --pool $(REPROLAB_POOL) --type process --limit $(WORKER_FLOWS) \
	    >$(RUN_DIR)/worker.log 2>&1 & \
	  echo $$! >$(RUN_DIR)/worker.pid; echo "worker for pool $(REPROLAB_POOL): at most" \
	    "$(WORKER_FLOWS) flow runs at once, $$threads threads each; log $(RUN_DIR)/worker.log"; fi

deploy: venv
	@export PREFECT_API_URL=$${PREFECT_API_URL:-$(SERVER_URL)}; \
	  $(BIN)/prefect work-pool inspect $(REPROLAB_POOL) >/dev/null 2>&1 || \
	    $(BIN)/prefect work-pool create $(REPROLAB_POOL) --type process; \
	  $(BIN)/prefect --no-prompt deploy --all

stop:
	@for name in worker server; do f=$(RUN_DIR)/$$name.pid; \
	  if [ -f $$f ]; then kill -TERM -- -$$(cat $$f) 2>/dev/null; sleep 2; \
	    kill -KILL -- -$$(cat $$f) 2>/dev/null; rm -f $$f; echo "stopped $$name"; fi; done

clean:
	rm -rf data artifacts metrics plots reports mlflow.db mlartifacts mlruns .prefect
