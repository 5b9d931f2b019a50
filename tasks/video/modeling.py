"""Kinetics models as kinetics_train builds them and kinetics_evaluate and the served model
(tasks.video.serving) rebuild them, and the clip loader all of them read clips through."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from models.besnet import BesNet
from models.frame_baseline import FrameBaseline
from tasks.config import KineticsSettings
from tasks.errors import DataError
from tasks.video.dataset import ClipDataset
from tasks.video.resample import collate_resize

CPU = torch.device("cpu")


def build_besnet(settings: KineticsSettings, num_classes: int,
                 dilation_mode: str | None = None) -> BesNet:
    """BesNet (or I3D-R50) from kinetics.model; `dilation_mode` overrides it (the ablation)."""
    m = settings.model
    return BesNet(num_classes=num_classes, layers=tuple(m.layers), dilations=tuple(m.dilations),
                  dilation_mode=dilation_mode or m.dilation_mode, fixed_dilation=m.fixed_dilation,
                  temporal_padding=m.temporal_padding, erase_relu=m.erase_relu,
                  activation=m.activation, dropout=m.dropout, residual_scale=m.residual_scale,
                  width_multiplier=m.width_multiplier, variant=m.arch)


def build_baseline(settings: KineticsSettings, num_classes: int) -> FrameBaseline:
    """The per-frame 2D ResNet + temporal pooling + MLP baseline from kinetics.baseline."""
    b = settings.baseline
    return FrameBaseline(num_classes, depth=50, width_multiplier=b.width_multiplier,
                         layers=tuple(b.layers), pool=b.pool, hidden=b.hidden,
                         dropout=b.dropout, freeze_backbone=b.freeze_backbone)


def load_imagenet(model: nn.Module, path: str) -> None:
    """Load a torchvision ResNet-50 ImageNet state dict file: inflated into BesNet, as is into
    the baseline's backbone (its fc is unused)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as exc:
        raise DataError(f"cannot read the ImageNet checkpoint ({exc})", path=path) from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    try:
        if isinstance(model, BesNet):
            model.load_2d(state)
        else:
            model.backbone.load_state_dict(state)
    except (RuntimeError, ValueError) as exc:
        raise DataError(f"not a ResNet-50 of this width/depth ({str(exc)[:300]})",
                        path=path) from None


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def loader_workers(setting: int | str, device: torch.device) -> int:
    """kinetics.train.num_workers as a number. "auto": on CUDA every core but the training
    loop's (of this process's share under torchrun, LOCAL_WORLD_SIZE processes a machine)
    decodes clips; on the CPU none, the model needs the cores."""
    if setting != "auto":
        return int(setting)
    if device.type != "cuda":
        return 0
    processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(0, available_cores() // processes - 1)


def clip_loader(frame: pd.DataFrame, settings: KineticsSettings, seed: int, train: bool,
                root: Path = Path("."), device: torch.device = CPU) -> DataLoader:
    """A DataLoader of (clips, labels): in training one random view a clip, as a ResizeBatch
    (the resize is left to the device), otherwise every test view as uint8; normalise (and
    resize) them on `device` with tasks.video.preprocess.normalize_clips.
    For CUDA: pinned batches (asynchronous copies); workers, if any, persist across epochs."""
    dataset = ClipDataset(frame, root, settings.dataset, train=train, seed=seed,
                          storage=settings.frames.storage)
    t = settings.train
    workers = loader_workers(t.num_workers, device)
    # BatchNorm cannot train on a batch of one: drop such a last training batch
    drop_last = train and len(dataset) % t.batch_size == 1
    return DataLoader(dataset, batch_size=t.batch_size if train else max(1, t.batch_size // 2),
                      shuffle=train, drop_last=drop_last, num_workers=workers,
                      pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                      collate_fn=collate_resize if train else None,
                      generator=torch.Generator().manual_seed(seed))


def fresh_model(name: str, settings: KineticsSettings, num_classes: int,
                imagenet: bool = True) -> nn.Module:
    """The named model of the configured shape; ImageNet weights inflated when configured and
    `imagenet` (not when trained weights are about to be loaded)."""
    if name == "baseline":
        model = build_baseline(settings, num_classes)
        pretrained = imagenet and settings.baseline.pretrained
    else:
        model = build_besnet(settings, num_classes, "fixed" if name == "besnet_fixed" else None)
        pretrained = imagenet and settings.model.pretrained
    if pretrained:
        load_imagenet(model, pretrained)
    return model
