"""Pillow's bilinear resize of a box, split in two so the loader does not pay for it.

`Image.resize(size, BILINEAR, box=box)` costs as much CPU as decoding the JPEG. Here the loader
only works out the plan, per axis: for every output pixel the source pixels it reads and their
fixed-point weights, as Pillow's Resample.c computes them (float32 box, float64 centres, weights
normalised then rounded to 22 fractional bits). It hands over the source pixels the plan reads
(the box plus the filter's reach) and the plan; `ResizeBatch.resize` does the weighted sums
on the device, in Pillow's order of passes (vertical first where the height shrinks by more than
twice as many pixels as the width, as Pillow 13 does) with its rounding and clipping after each:
the pixels are bit-identical to Pillow's (tests compare them on random boxes).

A horizontal flip is the same plan with its output pixels in reverse order.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import get_worker_info

PRECISION_BITS = 22  # Resample.c: 32 - 8 bits of a pixel - 2 bits of headroom
HALF = 1 << (PRECISION_BITS - 1)
SUPPORT = 1.0  # the bilinear filter's support at scale 1


@dataclass(frozen=True)
class AxisPlan:
    """One axis of a resize: output pixel i = sum_t source[index[i, t]] * weight[i, t] / 2**22,
    with `index` relative to the first source pixel read (`start`) and `stop` one past the last."""

    index: np.ndarray  # (out, taps) int64
    weight: np.ndarray  # (out, taps) int32
    start: int
    stop: int


def axis_plan(in_size: int, in0: float, in1: float, out_size: int) -> AxisPlan:
    """Pillow's precompute_coeffs + normalize_coeffs_8bpc for the bilinear filter, vectorised
    over the output pixels: the span [in0, in1) of `in_size` source pixels -> `out_size`."""
    in0_f32 = np.float32(in0)
    scale = float(np.float32(in1) - in0_f32) / out_size  # C: (double)(in1 - in0) in float
    filterscale = max(scale, 1.0)
    support = SUPPORT * filterscale
    taps = math.ceil(support) * 2 + 1
    centre = float(in0_f32) + (np.arange(out_size) + 0.5) * scale
    first = np.maximum(np.trunc(centre - support + 0.5).astype(np.int64), 0)
    count = np.minimum(np.trunc(centre + support + 0.5).astype(np.int64), in_size) - first
    offsets = np.arange(taps)
    distance = np.abs(((offsets + first[:, None]) - centre[:, None] + 0.5) * (1.0 / filterscale))
    weights = np.where((offsets < count[:, None]) & (distance < 1.0), 1.0 - distance, 0.0)
    total = np.zeros(out_size)
    for t in range(taps):  # in tap order, as C sums them
        total += weights[:, t]
    weights = np.divide(weights, total[:, None], out=weights, where=total[:, None] != 0)
    fixed = np.trunc(0.5 + weights * (1 << PRECISION_BITS)).astype(np.int32)
    start, stop = int(first[0]), int((first + count).max())
    index = np.minimum(first[:, None] + offsets, stop - 1) - start
    return AxisPlan(index=index, weight=fixed, start=start, stop=stop)


@dataclass(frozen=True)
class BoxPlan:
    """A box of a frame resized to `size` x `size`: the plans of both axes."""

    x: AxisPlan
    y: AxisPlan
    vertical_first: bool = False

    @classmethod
    def of(cls, width: int, height: int, box: tuple[float, float, float, float], size: int,
           flip: bool = False) -> BoxPlan:
        x0, y0, x1, y1 = box
        x = axis_plan(width, x0, x1, size)
        if flip:
            x = AxisPlan(x.index[::-1].copy(), x.weight[::-1].copy(), x.start, x.stop)
        # Pillow 13's choice: the vertical pass first when the height shrinks by more than twice
        # as many pixels as the width does
        vertical_first = height - size > 0 and height - size > (width - size) * 2
        return cls(x=x, y=axis_plan(height, y0, y1, size), vertical_first=vertical_first)

    def source(self, frame: np.ndarray) -> np.ndarray:
        """The pixels of an (H, W, C) frame that the plan reads."""
        return frame[self.y.start:self.y.stop, self.x.start:self.x.stop]

    def tensor(self, taps: int) -> torch.Tensor:
        """(4, size, taps) int32: x index, x weight, y index, y weight; padded with zero weights."""
        rows = [self.x.index, self.x.weight, self.y.index, self.y.weight]
        out = np.zeros((4, rows[0].shape[0], taps), dtype=np.int32)
        for r, row in enumerate(rows):
            out[r, :, :row.shape[1]] = row
        return torch.from_numpy(out)

    @property
    def taps(self) -> int:
        return max(self.x.index.shape[1], self.y.index.shape[1])


@dataclass
class ResizeBatch:
    """A training batch before its resize: `source` (B, K, H, W, C) uint8, each clip's source
    pixels at the top left (the padding after is never read), `plans` (B, 4, size, taps) int32 and
    `vertical_first` (B,) bool. Moves like a tensor (`to`, `pin_memory`); `resize` gives
    (B, C, K, size, size) uint8."""

    source: torch.Tensor
    plans: torch.Tensor
    vertical_first: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> ResizeBatch:
        """On `device`; `vertical_first` stays on the CPU (the passes are chosen there)."""
        return ResizeBatch(self.source.to(device, non_blocking=non_blocking),
                           self.plans.to(device, non_blocking=non_blocking), self.vertical_first)

    def pin_memory(self) -> ResizeBatch:
        return ResizeBatch(self.source.pin_memory(), self.plans.pin_memory(),
                           self.vertical_first)

    def __len__(self) -> int:
        return len(self.source)

    @property
    def device(self) -> torch.device:
        return self.source.device

    def resize(self) -> torch.Tensor:
        """The resized clips, (B, C, K, size, size) uint8, on the batch's device: each pass
        order's clips together (the whole batch at once when it has one order)."""
        groups = [(order, rows) for order in (False, True)
                  if len(rows := (self.vertical_first == order).nonzero().flatten())]
        if len(groups) == 1:
            return _resize(self.source, self.plans, groups[0][0]).permute(0, 2, 1, 3, 4)
        b, k, _, _, c = self.source.shape
        size = self.plans.shape[2]
        out = torch.empty((b, k, c, size, size), dtype=torch.uint8, device=self.source.device)
        for order, rows in groups:
            out[rows] = _resize(self.source[rows], self.plans[rows], order)
        return out.permute(0, 2, 1, 3, 4)  # B, C, K, size, size


def _resize(source: torch.Tensor, plans: torch.Tensor, vertical_first: bool) -> torch.Tensor:
    """(B, K, H, W, C) uint8 -> (B, K, C, size, size) uint8: both passes in the given order."""
    x = source.permute(0, 1, 4, 2, 3).to(torch.int32)  # B, K, C, H, W
    if vertical_first:
        x = _weighted_sums(x.transpose(3, 4), plans[:, 2], plans[:, 3]).transpose(3, 4)
        return _weighted_sums(x, plans[:, 0], plans[:, 1]).to(torch.uint8)
    x = _weighted_sums(x, plans[:, 0], plans[:, 1])  # B, K, C, H, size
    return _weighted_sums(x.transpose(3, 4), plans[:, 2], plans[:, 3]).transpose(3, 4).to(
        torch.uint8)


def _weighted_sums(x: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """One pass along the last axis of int32 (B, K, C, rows, n): (B, size, taps) plans ->
    (B, K, C, rows, size), rounded and clipped to 0..255 as Pillow's clip8."""
    b, k, c, rows, _ = x.shape
    size, taps = index.shape[1], index.shape[2]
    total = torch.full((b, k, c, rows, size), HALF, dtype=torch.int32, device=x.device)
    for t in range(taps):
        at = index[:, :, t].long().view(b, 1, 1, 1, size).expand(b, k, c, rows, size)
        total += x.gather(4, at) * weight[:, :, t].view(b, 1, 1, 1, size)
    return (total >> PRECISION_BITS).clamp_(0, 255)


def collate_resize(items: list[tuple[np.ndarray, BoxPlan, int]]
                   ) -> tuple[ResizeBatch, torch.Tensor]:
    """Training items (source (K, h, w, C) uint8, plan, label) -> (ResizeBatch, labels): the
    sources padded to the batch's largest (the padding is never read: every plan's indices
    stay inside its own source), the plans to its most taps."""
    sources = [source for source, _, _ in items]
    height = max(s.shape[1] for s in sources)
    width = max(s.shape[2] for s in sources)
    k, channels = sources[0].shape[0], sources[0].shape[3]
    batch = _new_batch((len(items), k, height, width, channels))
    for b, s in enumerate(sources):
        batch[b, :, :s.shape[1], :s.shape[2]] = torch.from_numpy(s)
    taps = max(plan.taps for _, plan, _ in items)
    plans = torch.stack([plan.tensor(taps) for _, plan, _ in items])
    vertical_first = torch.tensor([plan.vertical_first for _, plan, _ in items])
    labels = torch.tensor([label for _, _, label in items], dtype=torch.int64)
    return ResizeBatch(batch, plans, vertical_first), labels


def _new_batch(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised uint8 tensor; in a DataLoader worker, made in shared memory so that
    handing it to the main process copies nothing (as torch's default_collate does)."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=torch.uint8)
    storage = torch.UntypedStorage._new_shared(math.prod(shape))
    return torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)
