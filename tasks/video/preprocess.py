"""The device side of the clip pipeline: the loader hands over uint8 clips (4x fewer bytes to
copy than float32) and the training loop, kinetics_evaluate and the served model turn them into
the model's float input here, after the copy to the device.

Training batches arrive before their resize (tasks/video/resample.py), which runs here first.
The values are the ones the loader used to make on the CPU: x / 255, minus the ImageNet mean,
divided by its std, in float32 and in that order (the same ops: bit-identical on the CPU).
"""
from __future__ import annotations

from functools import cache

import torch

from tasks.video.resample import ResizeBatch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@cache
def _imagenet_stats(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std as (3, 1, 1, 1) float32 on `device`, copied there once."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1).to(device)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1).to(device)
    return mean, std


def normalize_clips(clips: torch.Tensor | ResizeBatch) -> torch.Tensor:
    """uint8 clips (..., C, T, H, W) -> float32 ImageNet-normalised, on the clips' device (a
    batch of single views or of (B, V, C, T, H, W) test views alike); the layout is kept.
    A training batch still to be resized (ResizeBatch) is resized first, there too."""
    if isinstance(clips, ResizeBatch):
        clips = clips.resize()
    if clips.dtype != torch.uint8:
        raise TypeError(f"clips must be uint8 as the clip loader makes them, not {clips.dtype}")
    mean, std = _imagenet_stats(clips.device)
    return clips.float().div_(255.0).sub_(mean).div_(std)
