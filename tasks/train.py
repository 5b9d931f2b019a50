"""The one training loop for every pipeline: AdamW/SGD, warm-up + cosine LR, early stopping, resume.

Read `fit` top to bottom. Loaders yield `(inputs..., target)`; the inputs are copied to the
device and, if `prepare` is given, turned there into the model's (uint8 clips -> normalised
floats); the model is called as `model(*inputs)` and the loss as `loss_fn(outputs, target)` (a
mean over the batch).
Under torchrun (`tasks.distributed.init_distributed` first) the same loop runs on every rank
with DistributedDataParallel; without a process group it is a plain single-process loop.
A bar over the batches shows epoch, loss and ETA on a terminal; inside a Prefect run the same
progress is a progress artifact (tasks/progress.py).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset

from tasks import distributed
from tasks.diagnostics import GradientDiagnostics
from tasks.errors import ConfigError, DataError, ReproLabError
from tasks.fingerprint import code_digest
from tasks.logs import get_logger
from tasks.progress import Progress
from tasks.storage import write_torch

History = list[dict[str, float]]


# ---------------------------------------------------------------- setup helpers
def resolve_device(setting: str) -> torch.device:
    """common.device -> torch.device; "auto" picks CUDA when there is one."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cpu":
        return torch.device("cpu")
    if setting == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("common.device: 'cuda' asked for but no CUDA device is available; "
                              "use 'auto' or 'cpu'")
        return torch.device("cuda")
    raise ConfigError(f"common.device: must be 'auto', 'cpu' or 'cuda', got {setting!r}")


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _as_tensor(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """Share memory where allowed; read-only arrays (pandas copy-on-write) are copied first."""
    array = np.asarray(array)
    if not array.flags.writeable:
        array = array.copy()
    return torch.as_tensor(array, dtype=dtype)


def tensor_loader(X: np.ndarray, y: np.ndarray, batch_size: int, shuffle: bool, seed: int,
                  y_dtype: torch.dtype = torch.float32,
                  x_dtype: torch.dtype = torch.float32) -> DataLoader:
    """A DataLoader over in-memory arrays with its own seeded shuffle order.

    y is float32 for binary targets; pass y_dtype=torch.int64 for class indices (x_dtype too for token ids).
    """
    if len(X) != len(y):
        raise DataError(f"X has {len(X)} rows but y has {len(y)}")
    dataset = TensorDataset(_as_tensor(X, x_dtype), _as_tensor(y, y_dtype))
    return dataset_loader(dataset, batch_size, shuffle, seed)


def dataset_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int,
                   collate_fn: Callable | None = None) -> DataLoader:
    """A DataLoader over `dataset` with its own seeded shuffle order (the order depends on the
    seed and the dataset's length only, so two datasets of equal length batch alike)."""
    # BatchNorm cannot train on a batch of one sample: drop such a last training batch
    drop_last = shuffle and len(dataset) % batch_size == 1
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                      generator=torch.Generator().manual_seed(seed), collate_fn=collate_fn)


# ---------------------------------------------------------------- config and result
@dataclass(frozen=True)
class FitConfig:
    """Everything `fit` needs to know besides the model and the data."""

    epochs: int
    lr: float
    weight_decay: float = 0.0
    patience: int = 4
    optimizer: Literal["adamw", "sgd"] = "adamw"
    warmup_epochs: int = 0
    cosine: bool = True
    grad_accum: int = 1
    max_grad_norm: float | None = None
    momentum: float = 0.9  # SGD only
    diagnostics_every: int | None = None  # tasks/diagnostics.py, every N optimiser steps
    compile: Literal["auto"] | bool = False  # model.compile(); "auto": on CUDA only
    seed: int = 0

    def __post_init__(self) -> None:
        checks = {
            "epochs": self.epochs >= 1, "lr": self.lr > 0, "patience": self.patience >= 1,
            "optimizer": self.optimizer in ("adamw", "sgd"),
            "warmup_epochs": 0 <= self.warmup_epochs, "grad_accum": self.grad_accum >= 1,
            "max_grad_norm": self.max_grad_norm is None or self.max_grad_norm > 0,
            "diagnostics_every": self.diagnostics_every is None or self.diagnostics_every >= 1,
            "compile": self.compile in ("auto", True, False),
        }
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(f"train.{name}: invalid value {getattr(self, name)!r}")

    @classmethod
    def from_settings(cls, train_settings: Any, seed: int) -> FitConfig:
        """Take every FitConfig field a TrainSettings section has (epochs, lr, ...) plus the seed."""
        known = {f.name for f in fields(cls)} - {"seed"}
        values = {name: getattr(train_settings, name) for name in known
                  if hasattr(train_settings, name)}
        return cls(seed=seed, **values)


@dataclass
class FitResult:
    """The model with its best weights loaded, the per-epoch history and how training ended."""

    model: nn.Module
    history: History = field(default_factory=list)
    best_epoch: int = 0
    best_val_loss: float = math.inf
    stopped_early: bool = False
    diagnostics: list[dict[str, float]] = field(default_factory=list)
    resumed_from_epoch: int = 0  # the last epoch the resumed checkpoint held; 0 = from scratch
    steps_run: int = 0  # optimiser steps this call took (a resumed run: only the remaining ones)


# ---------------------------------------------------------------- small pieces of the loop
def _channels_last(tensor: torch.Tensor) -> torch.Tensor:
    """5-D -> channels_last_3d, 4-D -> channels_last memory layout (same values); others as is."""
    if tensor.dim() == 5:
        return tensor.contiguous(memory_format=torch.channels_last_3d)
    if tensor.dim() == 4:
        return tensor.contiguous(memory_format=torch.channels_last)
    return tensor


def _to_device(model: nn.Module, device: torch.device) -> nn.Module:
    """Move `model` to `device`; on CUDA its conv kernels take the channels-last layout
    (cuDNN's fast path for bf16). Per tensor, as Module.to(memory_format) rejects 4-D with 5-D."""
    model.to(device)
    if device.type == "cuda":
        for param in model.parameters():
            param.data = _channels_last(param.data)
    return model


Prepare = Callable[[torch.Tensor], torch.Tensor]


def _split_batch(batch: Sequence[torch.Tensor], device: torch.device,
                 prepare: Prepare | None = None
                 ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """(inputs..., target) -> (inputs, target) on `device`; a one-element batch is inputs only.

    The copies are non-blocking (asynchronous from a loader's pinned memory on CUDA); inputs
    need only `.to(device, non_blocking=...)`. `prepare`, if given, turns each input into the
    model's on the device (e.g. uint8 clips, or a batch still to be resized, -> normalised
    float32); then on CUDA, 4-D and 5-D inputs take the channels-last layout like the model.
    """
    tensors = [t.to(device, non_blocking=True) for t in batch]
    if len(tensors) == 1:
        inputs, target = tensors, None
    else:
        inputs, target = tensors[:-1], tensors[-1]
    if prepare is not None:
        inputs = [prepare(t) for t in inputs]
    if device.type == "cuda":
        inputs = [_channels_last(t) for t in inputs]
    return inputs, target


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; nothing on CPU."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def compiles(setting: Literal["auto"] | bool, device: torch.device) -> bool:
    """Whether `fit` compiles the model: "auto" on CUDA only (on CPU eager is as fast)."""
    return setting is True or (setting == "auto" and device.type == "cuda")


def _make_optimizer(model: nn.Module, config: FitConfig) -> torch.optim.Optimizer:
    """AdamW or SGD; weight decay on matrices and kernels only, not on biases and norms (nanoGPT)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    return torch.optim.AdamW(groups, lr=config.lr)


def _lr_factor(step: int, warmup_steps: int, total_steps: int, cosine: bool) -> float:
    """Linear warm-up over `warmup_steps`, then cosine decay to zero at `total_steps` (or flat)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if not cosine:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _rng_states(train_loader: DataLoader) -> dict[str, Any]:
    """Every random generator training touches, as weights_only-loadable values."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if torch.cuda.is_available():
        # the current device's generator: the one this process trains on (each rank its own GPU)
        states["cuda_device"] = torch.cuda.get_rng_state()
    if train_loader.generator is not None:
        states["loader"] = train_loader.generator.get_state()
    return states


def _set_rng_states(states: dict[str, Any], train_loader: DataLoader) -> None:
    torch.set_rng_state(states["torch"])
    np_state = states["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda_device" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda_device"])
    if "loader" in states and train_loader.generator is not None:
        train_loader.generator.set_state(states["loader"])


def _load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(f"checkpoint cannot be read ({exc}); delete it to start over",
                        path=path) from exc


# FitConfig fields a resumed run may change: more epochs continue the run, diagnostics only watch
_RESUMABLE_CHANGES = ("epochs", "diagnostics_every")


def run_identity(model: nn.Module, config: FitConfig, extra: str = "") -> str:
    """What a checkpoint must have been written by to be resumed: the caller's `extra` (its
    settings, seed, data and code digests), the code of this loop and of the model's classes,
    and the FitConfig (all but the fields a resumed run may change)."""
    modules = sorted({type(m).__module__ for m in model.modules()} | {__name__})
    settings = {f.name: getattr(config, f.name) for f in fields(config)
                if f.name not in _RESUMABLE_CHANGES}
    decisive = {"extra": extra, "code": code_digest(modules), "config": settings}
    return hashlib.sha256(json.dumps(decisive, sort_keys=True, default=str).encode()).hexdigest()


def _checkpoint_to_resume(path: Path | None, identity: str, main: bool) -> dict[str, Any] | None:
    """The checkpoint at `path` if this run wrote it (same identity), else None: one written by
    other code or settings is never resumed, the run starts from scratch (and overwrites it)."""
    if path is None or not Path(path).exists():
        return None
    ckpt = _load_checkpoint(Path(path))
    if ckpt.get("identity") == identity:
        return ckpt
    if main:
        get_logger().warning(
            "not resuming %s: written by other code or settings (identity %s, this run %s); "
            "training from scratch", path, str(ckpt.get("identity"))[:12], identity[:12])
    return None


def _loss_sums(model: nn.Module, loader: DataLoader, loss_fn: Callable, device: torch.device,
               prepare: Prepare | None = None) -> tuple[float, int]:
    """(sum of the per-sample loss, number of samples) over `loader`, in eval mode."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in loader:
            inputs, target = _split_batch(batch, device, prepare)
            with _autocast(device):
                outputs = model(*inputs)
            total += loss_fn(outputs.float(), target).item() * len(target)
            count += len(target)
    return total, count


# ---------------------------------------------------------------- the loop
def fit(model: nn.Module, train_loader: DataLoader, val_loader: DataLoader, loss_fn: Callable,
        config: FitConfig, device: torch.device, *,
        on_epoch: Callable[[dict], None] | None = None,
        checkpoint_path: Path | None = None, checkpoint_identity: str = "",
        prepare: Prepare | None = None) -> FitResult:
    """Train with early stopping on val loss; return the model with its best weights loaded.

    The LR schedule is per optimizer step: linear warm-up over `warmup_epochs`, then cosine
    decay to zero at the last epoch. With `checkpoint_path`, every epoch is saved and a later
    call resumes from the next epoch exactly (same weights as an uninterrupted run), provided
    the checkpoint's identity (`run_identity`: code, FitConfig and the caller's
    `checkpoint_identity`) is this call's; any other checkpoint is ignored and overwritten.
    `prepare` turns each input on the device into the model's (e.g. uint8 clips -> normalised
    float32), for training, validation and the diagnostics' probe alike.

    In a process group of several ranks (torchrun): DistributedDataParallel, each rank trains
    on its share of `train_loader` and validates on its share of `val_loader`; losses in the
    history are over all ranks; rank 0 alone writes the checkpoint and calls `on_epoch` (meant
    for logging: a history row plus the epoch's `seconds`, which the history leaves out); every rank returns the same weights, in the plain (unwrapped) module.
    """
    log = get_logger()
    n_ranks, main = distributed.world_size(), distributed.is_main()
    identity = (run_identity(model, config, checkpoint_identity)
                if checkpoint_path is not None else "")
    seed_everything(config.seed)  # every rank alike, so rank 0's saved RNG state fits them all
    _to_device(model, device)
    if compiles(config.compile, device):
        # nn.Module.compile, or the model's own (BesNet: after its draw); a model its tests
        # prove one graph (`one_graph`) compiles with fullgraph, so a graph break is an error
        model.compile(fullgraph=getattr(model, "one_graph", False))
    net: nn.Module = model  # what runs forward and backward; `model` holds the state dicts
    if n_ranks > 1:
        rank = distributed.rank()
        train_loader = distributed.shard_train_loader(train_loader, rank, n_ranks, config.seed)
        val_loader = distributed.shard_eval_loader(val_loader, rank, n_ranks)
        net = distributed.wrap_ddp(model, device)
    optimizer = _make_optimizer(model, config)
    if len(train_loader) == 0:
        raise DataError("training loader has no batches")
    steps_per_epoch = math.ceil(len(train_loader) / config.grad_accum)
    warmup_steps = config.warmup_epochs * steps_per_epoch
    total_steps = config.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _lr_factor(step, warmup_steps, total_steps, config.cosine))

    history: History = []
    best_val, best_epoch, best_state = math.inf, 0, None
    start_epoch, stopped_early, steps_run = 1, False, 0

    # every rank resumes from the same file (rank 0 wrote it, the others waited at a barrier)
    ckpt = _checkpoint_to_resume(checkpoint_path, identity, main)
    if ckpt is not None:
        try:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise DataError(f"checkpoint does not match this model/optimizer ({exc}); "
                            "delete it to start over", path=checkpoint_path) from exc
        scheduler.load_state_dict(ckpt["scheduler"])
        _set_rng_states(ckpt["rng"], train_loader)
        history, best_val, best_epoch = ckpt["history"], ckpt["best_val"], ckpt["best_epoch"]
        best_state, stopped_early = ckpt["best_state"], ckpt["stopped_early"]
        start_epoch = ckpt["epoch"] + 1
        # the schedule follows this call's epochs, even if the checkpoint was made with others
        for group, base_lr in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
            group["lr"] = base_lr * _lr_factor(scheduler.last_epoch, warmup_steps, total_steps,
                                               config.cosine)
        if main:
            log.info("resuming from %s at epoch %d", checkpoint_path, start_epoch)

    diagnostics = _diagnostics(config, val_loader, device, prepare) if main else None
    n_batches = len(train_loader)
    # a bar over every batch (terminal only); inside a Prefect run, a progress artifact
    with Progress(config.epochs * n_batches, "train", unit="batch",
                  initial=(start_epoch - 1) * n_batches, quiet=not main) as bar:
        for epoch in range(start_epoch, config.epochs + 1):
            if stopped_early:
                break
            started = time.perf_counter()
            if isinstance(train_loader.sampler, DistributedSampler):
                train_loader.sampler.set_epoch(epoch)  # a new order each epoch, agreed by all ranks
            if hasattr(train_loader.dataset, "set_epoch"):  # per-epoch augmentation (resumable)
                train_loader.dataset.set_epoch(epoch)

            # ---- train one epoch (gradient accumulation over `grad_accum` batches)
            net.train()
            optimizer.zero_grad(set_to_none=True)
            train_total, train_count, lr = 0.0, 0, optimizer.param_groups[0]["lr"]
            for i, batch in enumerate(train_loader):
                inputs, target = _split_batch(batch, device, prepare)
                group_start = (i // config.grad_accum) * config.grad_accum
                group_size = min(config.grad_accum, n_batches - group_start)
                last_of_group = i - group_start + 1 == group_size
                with distributed.grad_sync(net, last_of_group):  # DDP: average grads once per step
                    with _autocast(device):
                        outputs = net(*inputs)
                    loss = loss_fn(outputs.float(), target)
                    (loss / group_size).backward()
                train_total += loss.item() * len(target)
                train_count += len(target)
                bar.update(1, epoch=f"{epoch}/{config.epochs}", loss=train_total / train_count)
                if last_of_group:
                    if config.max_grad_norm is not None:
                        nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                    lr = optimizer.param_groups[0]["lr"]
                    optimizer.step()
                    scheduler.step()
                    steps_run += 1
                    optimizer.zero_grad(set_to_none=True)
                    if diagnostics is not None:
                        diagnostics(scheduler.last_epoch, model)
            if n_ranks > 1:
                distributed.broadcast_buffers(model)  # BatchNorm statistics: rank 0's everywhere

            # ---- validate (sums over all ranks), keep the best weights, decide on early stopping
            val_total, val_count = _loss_sums(model, val_loader, loss_fn, device, prepare)
            train_total, train_count, val_total, val_count = distributed.all_reduce_sum(
                [train_total, train_count, val_total, val_count], device)
            val_loss = val_total / max(val_count, 1)
            if val_loss < best_val:
                best_val, best_epoch = val_loss, epoch
                best_state = {k: v.detach().to("cpu", copy=True)
                              for k, v in model.state_dict().items()}
            stopped_early = epoch - best_epoch >= config.patience and epoch < config.epochs
            row = {"epoch": epoch, "train_loss": train_total / max(train_count, 1),
                   "val_loss": val_loss, "lr": lr}
            history.append(row)  # no wall-clock value: the history lands in DVC-tracked artifacts
            bar.update(0, val_loss=val_loss)
            seconds = time.perf_counter() - started
            if main:
                log.info("epoch %d/%d train_loss %.4f val_loss %.4f lr %.2e (%.1fs)%s", epoch,
                         config.epochs, row["train_loss"], val_loss, lr, seconds,
                         " *" if best_epoch == epoch else "")

            # ---- checkpoint (atomically, rank 0 only), then report
            if checkpoint_path is not None:
                if main:
                    write_torch({
                        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "epoch": epoch,
                        "best_state": best_state, "best_val": best_val, "best_epoch": best_epoch,
                        "stopped_early": stopped_early, "history": history,
                        "rng": _rng_states(train_loader), "identity": identity,
                    }, checkpoint_path)
                distributed.barrier()  # no rank moves on (or returns) before the file is complete
            if on_epoch is not None and main:
                on_epoch({**row, "seconds": seconds})  # the epoch's duration: for MLflow only
            if stopped_early and main:
                log.info("early stop: no val improvement for %d epochs "
                         "(best epoch %d, val_loss %.4f)", config.patience, best_epoch, best_val)

    if best_state is None:
        raise ReproLabError("training diverged: the validation loss was never finite")
    model.load_state_dict(best_state)
    if diagnostics is not None:
        diagnostics.finish()
    return FitResult(model=model, history=history, best_epoch=best_epoch,
                     best_val_loss=best_val, stopped_early=stopped_early,
                     diagnostics=diagnostics.history if diagnostics is not None else [],
                     resumed_from_epoch=start_epoch - 1, steps_run=steps_run)


def _diagnostics(config: FitConfig, val_loader: DataLoader, device: torch.device,
                 prepare: Prepare | None = None) -> GradientDiagnostics | None:
    """The opt-in gradient diagnostics, probing the first validation batch (reading it draws
    nothing from the training RNG, so the run trains exactly as without diagnostics)."""
    if config.diagnostics_every is None:
        return None
    with torch.random.fork_rng(devices=[]):
        inputs, _ = _split_batch(next(iter(val_loader)), device, prepare)
    return GradientDiagnostics(config.diagnostics_every, inputs)


def predict(model: nn.Module, loader: DataLoader, device: torch.device,
            prepare: Prepare | None = None) -> np.ndarray:
    """Raw model outputs (logits) for every batch of `loader`, in order, as one array (each
    input through `prepare` on the device first, as in `fit`).

    Under torchrun every rank predicts the whole loader with its own copy of the model.
    """
    if isinstance(model, DistributedDataParallel):
        model = model.module
    _to_device(model, device)
    model.eval()
    outputs = []
    with torch.no_grad():
        for batch in loader:
            inputs, _ = _split_batch(batch, device, prepare)
            with _autocast(device):
                outputs.append(model(*inputs).float().cpu())
    return torch.cat(outputs).numpy()
