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

# The venv's programs put themselves in the project's environment (tasks/environment.py, a
# start-up hook `make venv` installs): its bin first on PATH, PREFECT_HOME=.prefect, telemetry
# off. So every target calls $(BIN)/... and behaves as the same command typed in a plain shell.
export PREFECT_HOME ?= $(CURDIR)/.prefect
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

# exactly the locked wheels, hashes checked, then the project itself (editable, no deps) and
# the start-up hook. The stamp is named by the content of what it installed: a checkout or
# clone with the same lock and project finds its venv up to date, whatever the files' times.
INSTALL_ID := $(shell cat pylock.toml pyproject.toml tasks/environment.py 2>/dev/null | cksum | cut -d' ' -f1)
$(BIN)/.installed-$(INSTALL_ID): | $(BIN)/.pip
	rm -f $(BIN)/.installed*
	$(BIN)/pip install -q --require-hashes -r pylock.toml
	$(BIN)/pip install -q --no-deps -e .
	$(BIN)/python -m tasks.environment install
	touch $@

# re-resolve pyproject.toml (dev extra included) into pylock.toml. Wheels from PyPI, torch the
# CPU build from TORCH_SOURCE (a GPU box installs its own torch build on top: see README).
# What the lock already pins stays pinned (a new dependency adds packages, it upgrades none);
# `make lock UPGRADE=1` resolves everything anew.
LOCK_PINS = $(if $(UPGRADE),,$(BIN)/python -c 'import tomllib; [print(p["name"] + "==" + p["version"]) for p in tomllib.load(open("pylock.toml", "rb"))["packages"]]' 2>/dev/null;)
lock: | $(BIN)/.pip
	$(BIN)/pip lock -q --isolated --index-url $(LOCK_INDEX) $(TORCH_SOURCE) \
	  -c <(echo torch==$(TORCH_VERSION); $(LOCK_PINS)) --only-deps '.[dev]' -o pylock.toml
	$(PYTHON) -m tasks.lockfile stamp pylock.toml

venv: $(BIN)/.installed-$(INSTALL_ID)

demo: venv
	$(BIN)/python -m flows.demo

test: venv
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check flows tasks models tests benchmarks

bench: venv
	$(BIN)/python -m benchmarks.crypto_ingest

# a Prefect server on 127.0.0.1 and a process worker, each in its own session (PID files,
# logs in .prefect/run); `make stop` ends them, the worker first. The servers are
# tasks/services.py's (`python -m tasks.services --help`): DB=sqlite (the default) the Prefect
# server alone on its SQLite database in PREFECT_HOME (MLFLOW=1 adds an MLflow server on
# mlflow.db); DB=postgres the Prefect server and an MLflow tracking server (MLFLOW_PORT) on
# PostgreSQL: the project's own cluster in .prefect/run/postgres (on PG_PORT, else a free port),
# or DATABASE_URL's server, which reaches tasks/services.py through its environment, never a
# command line that `ps` shows. MLflow keeps artifacts in MLFLOW_ARTIFACTS (a folder or
# s3://bucket/prefix; default .prefect/run/mlflow-artifacts, credentials from the environment).
# HOST=0.0.0.0 lets a team's other machines reach the two servers (default 127.0.0.1).
# The port is given as settings, not `--port`: the UI finds its API through PREFECT_UI_API_URL,
# which otherwise defaults to PREFECT_API_URL or PREFECT_SERVER_API_PORT (4200), whatever
# `--port` says. The server's URL goes into the project's Prefect profile
# (.prefect/profiles.toml), so the CLI and every flow run of this checkout use it from any
# shell; `make stop` takes it out again.
DB ?= sqlite
MLFLOW_PORT ?= 5000
server: venv
	@$(if $(filter postgres,$(DB)),REPROLAB_DATABASE_URL="$$DATABASE_URL") \
	  $(BIN)/python -m tasks.services start --db $(DB) --prefect-port $(PREFECT_PORT) \
	  --mlflow-port $(MLFLOW_PORT) $(if $(MLFLOW),--mlflow) $(if $(HOST),--host $(HOST)) \
	  $(if $(MLFLOW_ARTIFACTS),--artifacts-destination '$(MLFLOW_ARTIFACTS)')
	@$(MAKE) --no-print-directory worker PREFECT_API_URL=$(SERVER_URL)

# the API this checkout's Prefect uses: PREFECT_API_URL, else the one in its profile
API_URL_SH = url=$${PREFECT_API_URL:-$$($(BIN)/prefect config view 2>/dev/null | sed -n "s/^PREFECT_API_URL='\(.*\)'.*/\1/p")}

# one worker per checkout: a running one with other settings is replaced, and it says so
WORKER_SETTINGS = pool $(REPROLAB_POOL), at most $(WORKER_FLOWS) flow runs at once, $$threads threads each, API $$url
worker: venv
	@mkdir -p $(RUN_DIR)
	@threads=$$($(BIN)/python -m tasks.threads $(WORKER_FLOWS)) || exit 1; \
	  $(API_URL_SH); url=$${url:-$(SERVER_URL)}; wanted="$(WORKER_SETTINGS)"; f=$(RUN_DIR)/worker.pid; \
	  if [ -f $$f ] && kill -0 $$(cat $$f) 2>/dev/null; then \
	    if [ "$$(cat $(RUN_DIR)/worker.settings 2>/dev/null)" = "$$wanted" ]; then \
	      echo "worker already running (PID $$(cat $$f)): $$wanted; log $(RUN_DIR)/worker.log"; exit 0; fi; \
	    kill -TERM -- -$$(cat $$f) 2>/dev/null; sleep 2; kill -KILL -- -$$(cat $$f) 2>/dev/null; \
	    echo "stopped worker (PID $$(cat $$f)): it ran with $$(cat $(RUN_DIR)/worker.settings 2>/dev/null)"; fi; \
	  REPROLAB_THREADS=$$threads PREFECT_API_URL=$$url setsid \
	    $(BIN)/prefect worker start --pool $(REPROLAB_POOL) --type process --limit $(WORKER_FLOWS) \
	    >$(RUN_DIR)/worker.log 2>&1 & \
	  echo $$! >$$f; echo "$$wanted" >$(RUN_DIR)/worker.settings; \
	  echo "started worker (PID $$(cat $$f)): $$wanted; log $(RUN_DIR)/worker.log"

# prefect.yaml: flow runs in this checkout; prefect.team.yaml: in a clone of REPROLAB_GIT_URL at
# REPROLAB_GIT_REF on any worker, results published on REPROLAB_RESULTS_BRANCH (README, Running
# it for a team)
# (given to `prefect deploy` alone: REPROLAB_RESULTS_BRANCH in a run's environment makes it a
# team's run, tasks/workspace.py)
PREFECT_FILE ?= prefect.yaml
REPROLAB_GIT_REF ?= main
REPROLAB_RESULTS_BRANCH ?= nightly
REPROLAB_GPU_POOL ?= gpu
TEAM_VARS = REPROLAB_GIT_REF=$(REPROLAB_GIT_REF) REPROLAB_RESULTS_BRANCH=$(REPROLAB_RESULTS_BRANCH) \
  REPROLAB_GPU_POOL=$(REPROLAB_GPU_POOL)
deploy: venv
	@$(API_URL_SH); [ -n "$$url" ] || { echo "no Prefect server to deploy to: make server first," \
	  "or export PREFECT_API_URL"; exit 1; }; export PREFECT_API_URL=$$url; \
	  if grep -q git_clone $(PREFECT_FILE) && [ -z "$$REPROLAB_GIT_URL" ]; then \
	    echo "$(PREFECT_FILE) clones the project: give its repository, REPROLAB_GIT_URL=..."; exit 1; fi; \
	  for pool in $(REPROLAB_POOL) $$(grep -q REPROLAB_GPU_POOL $(PREFECT_FILE) && echo $(REPROLAB_GPU_POOL)); do \
	    $(BIN)/prefect work-pool inspect $$pool >/dev/null 2>&1 || \
	      $(BIN)/prefect work-pool create $$pool --type process; done; \
	  $(TEAM_VARS) $(BIN)/prefect --no-prompt deploy --all --prefect-file $(PREFECT_FILE)

# the worker, the Prefect and MLflow servers, then the project's PostgreSQL (pg_ctl stop -m fast);
# the profile goes back to an ephemeral server. Stopping what is not running is no error.
stop:
	@$(BIN)/python -m tasks.services stop

clean:
	rm -rf data artifacts metrics plots reports mlflow.db mlartifacts mlruns .prefect
