"""torchrun support: one process per GPU (or CPU process), gradients averaged by DDP.

`torchrun --nproc-per-node N -m flows.<pipeline> <stage>` starts N processes and sets RANK,
WORLD_SIZE and LOCAL_RANK; `init_distributed` joins them into one process group and `fit` then
trains with DistributedDataParallel. Without those variables (a plain `python -m ...`) there is
no process group and every function here acts for a single process. The ranks on one machine
share its cores: each gets its share of the thread budget (tasks/threads.py), not torchrun's
default of one thread.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler

from tasks.errors import ConfigError
from tasks.threads import apply_thread_budget, share


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the run: rank of world_size, its GPU index and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, writes checkpoints and outputs; the other ranks only train."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise ConfigError(f"{name}: must be an integer (torchrun sets it), got {value!r}") from exc


def init_distributed(device_setting: str) -> DistInfo:
    """Join torchrun's process group (nccl on CUDA, gloo on CPU); a lone process joins none."""
    from tasks.train import resolve_device  # here, not at the top: tasks.train imports us

    rank, world = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"RANK/WORLD_SIZE: rank {rank} is not in 0..{world - 1}")
    device = resolve_device(device_setting)
    if world == 1:
        return DistInfo(rank=0, world_size=1, local_rank=local_rank, device=device)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK: {local_rank}, but only {torch.cuda.device_count()} "
                              "CUDA devices are visible; use --nproc-per-node <= GPU count")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not is_initialized():
        apply_thread_budget(share(_env_int("LOCAL_WORLD_SIZE", world)))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)


def is_initialized() -> bool:
    """Whether this process is in a process group."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """How many processes train together (1 without a process group)."""
    return dist.get_world_size() if is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_initialized() else 0


def is_main() -> bool:
    """True on rank 0, and in a run without a process group."""
    return rank() == 0


def barrier() -> None:
    """Wait until every rank gets here (returns at once without a process group)."""
    if world_size() > 1:
        dist.barrier()


def cleanup() -> None:
    """Leave the process group, if this process joined one."""
    if is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: Sequence[float], device: torch.device) -> list[float]:
    """Each value summed over every rank, in float64 (the values themselves for one process)."""
    if world_size() == 1:
        return [float(v) for v in values]
    # nccl reduces tensors on the GPU only, gloo on the CPU: `device` is the training device
    sums = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(sums)
    return sums.tolist()


def broadcast_buffers(module: nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics), as DDP does per forward."""
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)


def wrap_ddp(model: nn.Module, device: torch.device) -> DistributedDataParallel:
    """DistributedDataParallel around `model`; its constructor copies rank 0's weights to all."""
    if device.type != "cuda":
        return DistributedDataParallel(model)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return DistributedDataParallel(model, device_ids=[index])


def grad_sync(net: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """DDP averages gradients in backward; with sync=False (an accumulation group's earlier
    batches) they only add up locally (`no_sync`). Nothing to do for a plain module."""
    if sync or not isinstance(net, DistributedDataParallel):
        return contextlib.nullcontext()
    return net.no_sync()


# ---------------------------------------------------------------- loaders split across ranks
def _with_sampler(loader: DataLoader, sampler: Iterable[int], drop_last: bool) -> DataLoader:
    """`loader` with another sampler: same dataset, batch size, collate, workers and generator."""
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler,
                      num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                      pin_memory=loader.pin_memory, drop_last=drop_last, timeout=loader.timeout,
                      worker_init_fn=loader.worker_init_fn,
                      multiprocessing_context=loader.multiprocessing_context,
                      generator=loader.generator, prefetch_factor=loader.prefetch_factor,
                      persistent_workers=loader.persistent_workers)


def _check_resamplable(loader: DataLoader, role: str) -> None:
    if loader.batch_size is None or not isinstance(loader.sampler,
                                                   (RandomSampler, SequentialSampler)):
        raise ConfigError(f"{role} loader: only a plain shuffled or ordered DataLoader can be "
                          f"split across ranks (this one has a {type(loader.sampler).__name__} "
                          "or a batch_sampler); give it a DistributedSampler yourself")


def shard_train_loader(loader: DataLoader, rank: int, world_size: int, seed: int) -> DataLoader:
    """This rank's share of the training samples: the same loader with a DistributedSampler.

    It shuffles (seed + epoch; call `sampler.set_epoch`) when `loader` shuffled. Every rank gets
    ceil(n / world_size) samples, a few repeated to even out the count, so all take equal steps.
    A loader that already has a DistributedSampler is returned as it is.
    """
    if isinstance(loader.sampler, DistributedSampler):
        return loader
    _check_resamplable(loader, "training")
    sampler = DistributedSampler(loader.dataset, num_replicas=world_size, rank=rank,
                                 shuffle=isinstance(loader.sampler, RandomSampler), seed=seed)
    # a last batch of one sample cannot train BatchNorm (see tasks.train.tensor_loader)
    drop_last = loader.drop_last or len(sampler) % loader.batch_size == 1
    return _with_sampler(loader, sampler, drop_last)


def shard_eval_loader(loader: DataLoader, rank: int, world_size: int) -> DataLoader:
    """Every world_size-th sample from `rank` on: across ranks each sample once, none repeated.

    A loader that already has a DistributedSampler is returned as it is.
    """
    if isinstance(loader.sampler, DistributedSampler):
        return loader
    _check_resamplable(loader, "validation")
    return _with_sampler(loader, range(rank, len(loader.dataset), world_size), drop_last=False)
