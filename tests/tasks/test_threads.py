"""The thread budget: the share arithmetic, REPROLAB_THREADS, and each concurrent path that
gives its processes (or threads) their share: a stage process, the mapped task runners; and
the machine share: independent trainings on one machine list themselves and split its cores."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
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


# ---------------------------------------------------------------- runs that share the machine
def test_the_machine_share_divides_its_cores_among_the_trainings():
    assert [threads.machine_share(n, total=8) for n in (0, 1, 2, 3, 9)] == [8, 8, 4, 2, 1]
    assert threads.machine_share(2, total=2) == 1


def test_trainings_on_the_machine_see_each_other_and_leave(tmp_path):
    mine, other = threads.RunList(tmp_path), threads.RunList(tmp_path)
    mine.beat()
    assert mine.active() == 1
    other.beat()
    assert mine.active() == other.active() == 2
    old = time.time() - threads.ACTIVE_SECONDS - 1
    os.utime(other.path, (old, old))  # alive, but has not stepped for a while: not training
    listed = other.path
    assert mine.active() == 1 and listed.exists()
    other.close()
    assert mine.active() == 1 and not listed.exists()
    mine.close()
    assert list(tmp_path.iterdir()) == []


def test_a_training_whose_entry_was_removed_lists_itself_again(tmp_path):
    mine = threads.RunList(tmp_path)
    mine.beat()
    mine.path.unlink()  # a temp-folder cleaner
    mine.beat()
    assert mine.path.exists() and mine.active() == 1
    mine.close()


def test_a_training_that_died_is_not_counted_and_its_entry_goes(tmp_path):
    code = ("import os, sys; from pathlib import Path; from tasks.threads import RunList; "
            "r = RunList(Path(sys.argv[1])); r.beat(); print(r.path, flush=True); os._exit(0)")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=True)
    dead = Path(done.stdout.strip())
    assert dead.exists()  # it never left the list, but its lock went with it
    mine = threads.RunList(tmp_path)
    mine.beat()
    assert mine.active() == 1 and dead.exists()  # just listed: maybe a run being born
    old = time.time() - threads.ACTIVE_SECONDS - 1
    os.utime(dead, (old, old))
    assert mine.active() == 1 and not dead.exists()
    mine.close()


@pytest.fixture
def torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_a_training_takes_its_share_and_gets_its_threads_back(tmp_path, monkeypatch,
                                                               torch_threads):
    monkeypatch.setattr(threads, "cores", lambda: 4)
    torch.set_num_threads(4)
    machine = threads.MachineShare(threads.RunList(tmp_path))
    assert [machine.fit(n) for n in (1, 2, 3, 1)] == [4, 2, 1, 4]
    assert torch.get_num_threads() == 4
    torch.set_num_threads(1)  # code that chose fewer keeps them
    assert [machine.fit(n) for n in (1, 2)] == [1, 1]
    torch.set_num_threads(2)
    assert [machine.fit(n) for n in (4, 1)] == [1, 2] and torch.get_num_threads() == 2


def test_a_process_given_a_thread_count_keeps_it_and_is_counted(tmp_path, monkeypatch,
                                                                 no_budget, torch_threads):
    monkeypatch.setattr(threads, "cores", lambda: 4)
    torch.set_num_threads(3)
    others = threads.RunList(tmp_path)
    others.beat()
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    machine = threads.MachineShare(threads.RunList(tmp_path))
    machine.on_step()
    assert torch.get_num_threads() == 3 and others.active() == 2
    monkeypatch.delenv("OMP_NUM_THREADS")
    machine._local.next = 0.0  # the next check, without waiting for it
    machine.on_step()
    assert torch.get_num_threads() == 2
    machine.close()
    others.close()


ARMED = """
import sys
import tasks.threads as t
t.share_machine()
before = "torch" in sys.modules
import torch
print(before, t._machine is not None)
"""


@pytest.mark.parametrize("setting, armed", [(None, "True"), ("0", "False"), ("off", "False")])
def test_the_machine_share_waits_for_torch_and_can_be_turned_off(setting, armed):
    env = {k: v for k, v in os.environ.items() if k != threads.SHARE_VAR}
    if setting is not None:
        env[threads.SHARE_VAR] = setting
    done = subprocess.run([sys.executable, "-c", ARMED], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["False", armed]  # torch is not imported to arm it


TRAINER = """
import json, time
import flows.common  # what every stage and flow process imports first
import torch
model = torch.nn.Linear(64, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
default, seen, started = torch.get_num_threads(), set(), time.monotonic()
while time.monotonic() - started < 3 * CHECK:
    optimizer.zero_grad()
    model(torch.randn(32, 64)).sum().backward()
    optimizer.step()
    seen.add(torch.get_num_threads())
print(json.dumps({"default": default, "last": torch.get_num_threads(), "seen": sorted(seen)}))
"""


def _train_beside(tmp_path: Path, **env: str) -> dict:
    env = {**{k: v for k, v in os.environ.items() if k not in (*ALL_VARS, threads.SHARE_VAR)},
           threads.RUNS_VAR: str(tmp_path), **env}
    code = TRAINER.replace("CHECK", repr(threads.CHECK_SECONDS))
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def another_training(tmp_path):
    """Another training on this machine, stepping all along."""
    other, stop = threads.RunList(tmp_path), threading.Event()

    def step() -> None:
        while not stop.is_set():
            other.beat()
            stop.wait(0.2)

    beating = threading.Thread(target=step, daemon=True)
    beating.start()
    yield other
    stop.set()
    beating.join()
    other.close()


def test_a_flow_process_training_beside_another_takes_its_share(tmp_path, another_training):
    seen = _train_beside(tmp_path)
    assert seen["last"] == min(seen["default"], threads.machine_share(2))
    assert len(list(tmp_path.glob("*.run"))) == 1  # the trainer left the list at its exit
    # given a thread count, it keeps it; with the share turned off, its default
    assert _train_beside(tmp_path, REPROLAB_THREADS="2")["seen"] == [2]
    alone = _train_beside(tmp_path, **{threads.SHARE_VAR: "0"})
    assert alone["seen"] == [alone["default"]]
