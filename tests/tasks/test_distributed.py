"""torchrun support: one process without torchrun; 2 CPU ranks (gloo) that shard, agree, resume."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, WeightedRandomSampler

from tasks import distributed
from tasks.distributed import DistInfo, init_distributed, shard_eval_loader, shard_train_loader
from tasks.errors import ConfigError
from tasks.train import fit, tensor_loader

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("ddp_worker.py")
THREADS_WORKER = Path(__file__).with_name("threads_worker.py")
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                "MASTER_PORT", "TORCHELASTIC_RUN_ID")
CPU = torch.device("cpu")


def _samples(loader: DataLoader) -> list[int]:
    return torch.cat([batch[1] for batch in loader]).long().tolist()


# ---------------------------------------------------------------- one process, no torchrun
def test_without_torchrun_there_is_one_process_and_no_group(monkeypatch):
    for key in TORCHRUN_ENV:
        monkeypatch.delenv(key, raising=False)
    info = init_distributed("cpu")
    assert info == DistInfo(rank=0, world_size=1, local_rank=0, device=CPU) and info.is_main
    assert not distributed.is_initialized()
    assert (distributed.world_size(), distributed.rank(), distributed.is_main()) == (1, 0, True)
    assert distributed.all_reduce_sum([3, 0.5], CPU) == [3.0, 0.5]
    distributed.barrier()
    distributed.cleanup()
    plain = nn.Linear(2, 1)
    with distributed.grad_sync(plain, sync=False):  # a plain module has nothing to skip
        pass


def test_torchrun_variables_are_checked(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match="WORLD_SIZE: must be an integer"):
        init_distributed("cpu")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ConfigError, match="rank 2 is not in 0..1"):
        init_distributed("cpu")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match="common.device"):
        init_distributed("tpu")
    assert not distributed.is_initialized()


def test_training_shards_split_the_samples_and_reshuffle_each_epoch():
    X, y = np.zeros((20, 2)), np.arange(20)
    loader = tensor_loader(X, y, 4, shuffle=True, seed=0)
    shards = [shard_train_loader(loader, rank, 2, seed=7) for rank in (0, 1)]
    assert [len(s) for s in shards] == [3, 3]  # 10 samples each: 4 + 4 + 2
    for shard in shards:
        shard.sampler.set_epoch(1)
    epoch_1 = [_samples(s) for s in shards]
    assert sorted(epoch_1[0] + epoch_1[1]) == list(range(20))
    for shard in shards:
        shard.sampler.set_epoch(2)
    assert _samples(shards[0]) != epoch_1[0]
    shards[0].sampler.set_epoch(1)
    assert _samples(shards[0]) == epoch_1[0]  # the order is a function of (seed, epoch)
    assert shard_train_loader(shards[0], 0, 2, seed=7) is shards[0]

    ordered = shard_train_loader(tensor_loader(X, y, 4, shuffle=False, seed=0), 1, 2, seed=7)
    assert _samples(ordered) == list(range(1, 20, 2))
    # 18 samples: 9 per rank would end in a batch of one, which BatchNorm cannot train on
    odd = shard_train_loader(tensor_loader(X[:18], y[:18], 4, shuffle=True, seed=0), 0, 2, 7)
    assert len(odd) == 2 and len(_samples(odd)) == 8


def test_validation_shards_hold_every_sample_once():
    X, y = np.zeros((11, 2)), np.arange(11)
    loader = tensor_loader(X, y, 4, shuffle=False, seed=0)
    shards = [_samples(shard_eval_loader(loader, rank, 2)) for rank in (0, 1)]
    assert shards == [[0, 2, 4, 6, 8, 10], [1, 3, 5, 7, 9]]

    weighted = DataLoader(TensorDataset(torch.zeros(4), torch.zeros(4)), batch_size=2,
                          sampler=WeightedRandomSampler([1.0] * 4, 4))
    with pytest.raises(ConfigError, match="WeightedRandomSampler"):
        shard_eval_loader(weighted, 0, 2)
    with pytest.raises(ConfigError, match="training loader"):
        shard_train_loader(weighted, 0, 2, seed=0)


# ---------------------------------------------------------------- 2 ranks under torchrun
def _torchrun(script: Path, out: Path, timeout: float = 180, **extra_env: str) -> None:
    """`torchrun --nproc-per-node 2 --standalone script out` on CPU; fails with its output."""
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
               **extra_env)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--standalone", str(script), str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both ranks
        stdout, stderr = proc.communicate()
    assert proc.returncode == 0, (f"torchrun exited with {proc.returncode}\n--- stdout\n"
                                  f"{stdout[-5000:]}\n--- stderr\n{stderr[-5000:]}")


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> tuple[Path, list[dict]]:
    """One torchrun of ddp_worker.py: its output folder and each rank's saved results."""
    out = tmp_path_factory.mktemp("ddp")
    _torchrun(WORKER, out)
    return out, [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _without_seconds(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def test_both_ranks_end_with_identical_weights_that_training_changed(ddp_run):
    _, (rank0, rank1) = ddp_run
    assert (rank0["rank"], rank0["world_size"], rank0["is_main"]) == (0, 2, True)
    assert (rank1["rank"], rank1["world_size"], rank1["is_main"]) == (1, 2, False)
    assert _equal(rank0["final"], rank1["final"])  # weights and BatchNorm statistics
    assert _equal(rank0["init"], rank1["init"])
    changed = [k for k in rank0["init"] if not torch.equal(rank0["init"][k], rank0["final"][k])]
    assert set(changed) == set(rank0["init"])
    assert "module." not in "".join(rank0["final"])  # the plain module comes back


def test_each_rank_trains_on_its_own_half_of_the_samples(ddp_run):
    _, (rank0, rank1) = ddp_run
    n_train, epochs = len(rank0["train"]), len(rank0["history"])
    half = n_train // 2
    assert len(rank0["seen"]) == len(rank1["seen"]) == epochs * half

    def rows(seen: torch.Tensor, epoch: int) -> set[tuple[float, ...]]:
        return {tuple(r) for r in seen[(epoch - 1) * half: epoch * half].tolist()}

    everything = {tuple(r) for r in rank0["train"].tolist()}
    assert len(everything) == n_train
    for epoch in (1, epochs):
        first, second = rows(rank0["seen"], epoch), rows(rank1["seen"], epoch)
        assert len(first) == len(second) == half and not first & second
        assert first | second == everything
    order = [tuple(r) for r in rank0["seen"][:half].tolist()]
    assert order != [tuple(r) for r in rank0["seen"][half: 2 * half].tolist()]  # set_epoch


def test_ddp_learns_a_separable_problem_and_ranks_agree_on_the_history(ddp_run):
    _, (rank0, rank1) = ddp_run
    history = rank0["history"]
    assert _without_seconds(history) == _without_seconds(rank1["history"])
    assert history[-1]["val_loss"] < 0.75 * history[0]["val_loss"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert rank0["accuracy"] == rank1["accuracy"] > 0.85


def test_ddp_resume_matches_an_uninterrupted_run(ddp_run):
    out, ranks = ddp_run
    for results in ranks:
        assert [r["epoch"] for r in results["resumed_history"]] == [1, 2, 3]
        assert _equal(results["resumed"], results["straight"])
        assert [r["val_loss"] for r in results["resumed_history"]] == \
            [r["val_loss"] for r in results["straight_history"]]
    assert _equal(ranks[0]["resumed"], ranks[1]["resumed"])
    last = [torch.load(out / name, weights_only=True)["model"]
            for name in ("resume.pt", "straight.pt")]
    assert _equal(*last)


@pytest.fixture(scope="module")
def worker():
    """ddp_worker.py as a module, for its data and models in this process."""
    spec = importlib.util.spec_from_file_location("ddp_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_two_ranks_step_like_one_process_on_the_same_global_batches(ddp_run, worker):
    # rank r takes samples r, r+2, ...: 2 ranks x 2 accumulated batches of 16 hold exactly the
    # samples of one ordered batch of 64, so the gradients (averaged by DDP) are the same
    _, ranks = ddp_run
    single = worker.linear_run(grad_accum=1, batch_size=64, device=CPU).state_dict()
    for results in ranks:
        for name, value in single.items():
            torch.testing.assert_close(results["linear"][name], value)
    torch.manual_seed(0)
    assert not torch.equal(nn.Linear(single["1.weight"].shape[1], 1).weight, single["1.weight"])


def test_a_ddp_checkpoint_is_a_plain_checkpoint_one_process_can_resume(ddp_run, worker):
    out, (rank0, _) = ddp_run
    assert not list(out.glob(".*.tmp"))
    # the finished 2-rank run, opened by one process: nothing left to train, same best weights
    result = fit(worker.build_model(), *worker.loaders(), nn.BCEWithLogitsLoss(),
                 worker.learn_config(), CPU, checkpoint_path=out / "learn.pt",
                 on_epoch=lambda row: pytest.fail("trained again"))
    assert _equal(result.model.state_dict(), rank0["final"])
    assert result.history == rank0["history"]


def test_each_rank_gets_its_share_of_the_budget(tmp_path):
    # torchrun gives each rank one thread (OMP_NUM_THREADS=1); the ranks split the budget
    _torchrun(THREADS_WORKER, tmp_path, REPROLAB_THREADS="4")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for seen in ranks:
        assert seen["threads"] == 2, seen
        assert set(seen["env"].values()) == {"2"}, seen  # and their children get the same
