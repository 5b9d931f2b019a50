"""The thread budget: the share arithmetic, REPROLAB_THREADS, and each concurrent path that
gives its processes (or threads) their share: a stage process, the mapped task runners."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import threads
from tasks.config import CommonSettings
from tasks.errors import ConfigError
from tasks.parallel import map_batches
from tasks.threads import BUDGET_VAR, THREAD_VARS, budget, share, thread_share

ROOT = Path(__file__).resolve().parents[2]
ALL_VARS = (BUDGET_VAR, *THREAD_VARS)


@pytest.fixture
def no_budget(monkeypatch):
    for name in ALL_VARS:
        monkeypatch.delenv(name, raising=False)


def test_share_divides_the_budget_evenly_and_never_below_one(no_budget, monkeypatch):
    assert [share(n, total=8) for n in (1, 2, 3, 8, 9)] == [8, 4, 2, 1, 1]
    assert share(2) == max(1, len(os.sched_getaffinity(0)) // 2)  # no budget: the cores
    monkeypatch.setattr(threads, "cores", lambda: 16)
    assert share(4) == 4
    monkeypatch.setenv(BUDGET_VAR, "6")  # a budget, by hand or from a parent, wins
    assert share(4) == 1 and share(2) == 3
    with pytest.raises(ValueError):
        share(0)


@pytest.mark.parametrize("value, expected", [("", None), ("auto", None), (" AUTO ", None),
                                             ("1", 1), ("12", 12)])
def test_budget_is_read_from_the_environment(monkeypatch, value, expected):
    monkeypatch.setenv(BUDGET_VAR, value)
    assert budget() == expected


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_a_wrong_budget_names_the_variable(monkeypatch, value):
    monkeypatch.setenv(BUDGET_VAR, value)
    with pytest.raises(ConfigError, match=BUDGET_VAR):
        budget()


def test_a_share_holds_inside_and_is_undone_after(no_budget, monkeypatch):
    monkeypatch.setenv(BUDGET_VAR, "6")
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    before = torch.get_num_threads()
    with thread_share(3) as each:
        assert each == 2 and torch.get_num_threads() == 2
        assert {name: os.environ[name] for name in ALL_VARS} == dict.fromkeys(ALL_VARS, "2")
        child = subprocess.run([sys.executable, "-c", "import os; print(os.environ["
                                "'MKL_NUM_THREADS'])"], capture_output=True, text=True)
        assert child.stdout.strip() == "2"
    assert torch.get_num_threads() == before
    assert os.environ[BUDGET_VAR] == "6" and os.environ["OMP_NUM_THREADS"] == "5"
    assert "MKL_NUM_THREADS" not in os.environ


PROBE = """
import json, os, subprocess, sys
import flows.common  # what every stage and flow process imports first
import torch
from tasks.threads import BUDGET_VAR, THREAD_VARS
child = subprocess.run([sys.executable, "-c", "import os; print(os.environ['OMP_NUM_THREADS'])"],
                       capture_output=True, text=True).stdout.strip()
print(json.dumps({"threads": torch.get_num_threads(), "interop": torch.get_num_interop_threads(),
                  "env": {k: os.environ.get(k) for k in (BUDGET_VAR, *THREAD_VARS)},
                  "child": child}))
"""


def _probe(env_budget: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ALL_VARS}
    if env_budget is not None:
        env[BUDGET_VAR] = env_budget
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_flow_process_keeps_to_its_budget_and_passes_it_on():
    seen = _probe("3")  # not this machine's default, whatever it has
    assert seen["threads"] == 3 and seen["interop"] == 3 and seen["child"] == "3"
    assert seen["env"] == dict.fromkeys(ALL_VARS, "3")
    untouched = _probe(None)  # no budget: torch keeps its defaults, nothing is exported
    assert untouched["env"] == dict.fromkeys(ALL_VARS) and untouched["child"] == ""


@task(name="thread-probe", cache_policy=NO_CACHE)
def thread_probe(batch: list[int]) -> list[dict]:
    """What a mapped batch sees: its process, torch's threads and the children's environment."""
    import torch

    return [{"pid": os.getpid(), "threads": torch.get_num_threads(),
             "env": {k: os.environ.get(k) for k in ALL_VARS}} for _ in batch]


def _mapped(common: CommonSettings) -> list[dict]:
    return [seen for _, results in map_batches(thread_probe, list(range(8)), 1, 2, common)
            for seen in results]


def test_thread_pool_tasks_share_this_process_threads(prefect_api, no_budget, monkeypatch):
    monkeypatch.setenv(BUDGET_VAR, "4")
    before = torch.get_num_threads()
    seen = _mapped(CommonSettings(task_runner="threads"))
    assert len(seen) == 8 and {s["pid"] for s in seen} == {os.getpid()}
    assert [(s["threads"], s["env"]) for s in seen] == [(2, dict.fromkeys(ALL_VARS, "2"))] * 8
    assert torch.get_num_threads() == before and os.environ[BUDGET_VAR] == "4"
    assert "OMP_NUM_THREADS" not in os.environ


def test_each_dask_worker_process_gets_its_share(prefect_api, no_budget, monkeypatch):
    monkeypatch.setenv(BUDGET_VAR, "4")
    seen = _mapped(CommonSettings(task_runner="dask"))
    pids = {s["pid"] for s in seen}
    assert len(seen) == 8 and len(pids) == 2 and os.getpid() not in pids  # 2 processes at once
    # not Dask's default of one thread a worker, not the whole budget each: half of it
    assert [(s["threads"], s["env"]) for s in seen] == [(2, dict.fromkeys(ALL_VARS, "2"))] * 8
    # Dask writes its workers' variables into this process's environment; they are undone
    assert os.environ[BUDGET_VAR] == "4" and "OMP_NUM_THREADS" not in os.environ
