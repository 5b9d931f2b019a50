"""The checkout's run lock: a second run waits its turn (and says for what), gives up after
its wait naming the holder, and the holder's own children go through."""
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.runlock import HELD, LOCK, Busy, run_lock

HOLD = """
import sys, time
from tasks.runlock import run_lock
with run_lock("crypto pipeline", 10):
    print("held", flush=True)
    time.sleep(float(sys.argv[1]))
"""


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    (tmp_path / ".dvc").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(HELD, raising=False)
    return tmp_path


def hold(seconds: float) -> subprocess.Popen:
    """Another process holding the lock for `seconds`, once it printed "held"."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    env.pop(HELD, None)
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(seconds)], stdout=subprocess.PIPE,
                            text=True, env=env)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_waits_for_the_first_and_says_for_what(checkout, caplog):
    holder = hold(2.0)
    started = time.monotonic()
    with caplog.at_level(logging.INFO), run_lock("nightly", 60):
        waited = time.monotonic() - started
    holder.wait()
    assert waited > 0.5  # it did wait: the holder slept 2 s holding the lock
    text = caplog.text
    assert "nightly waits for pid" in text and "(crypto pipeline, since" in text
    assert "the checkout is free" in text


def test_a_run_gives_up_after_its_wait_naming_the_holder(checkout):
    holder = hold(5.0)
    with pytest.raises(Busy, match=r"busy: pid \d+ .*crypto pipeline.*common.lock_wait"):
        with run_lock("nightly", 0.5):
            pass
    holder.kill()
    holder.wait()
    with run_lock("nightly", 5):  # a killed holder's lock is free at once
        pass


def test_the_lock_is_reentrant_and_its_holders_children_go_through(checkout):
    with run_lock("nightly", 1):
        with run_lock("dvc repro crypto_evaluate", 0):  # the same process: no wait
            assert os.environ[HELD] == str((checkout / LOCK).resolve())
            child = subprocess.run(
                [sys.executable, "-c", "from tasks.runlock import run_lock\n"
                 "with run_lock('crypto train', 0): print('ran')"],
                capture_output=True, text=True, env={
                    **os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
            assert child.stdout.strip() == "ran", child.stderr
    assert HELD not in os.environ


def test_outside_a_dvc_repo_there_is_nothing_to_lock(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with run_lock("crypto train", 0):
        assert not (tmp_path / LOCK).exists()


def test_of_torchruns_ranks_the_first_holds_the_lock_for_the_others(checkout, monkeypatch):
    holder = hold(5.0)  # rank 0, say
    monkeypatch.setenv("LOCAL_RANK", "1")
    with run_lock("kinetics train", 0):  # no wait: its sibling holds the lock
        pass
    holder.kill()
    holder.wait()
