"""The loader's split resize: a plan made on the CPU, the weighted sums on the device, and the
pixels bit-identical to Pillow's bilinear box resize (its pass order included)."""
import numpy as np
import pytest
import torch
from PIL import Image

from tasks.video.resample import BoxPlan, axis_plan, collate_resize


def pil_resize(frame: np.ndarray, box, size: int, flip: bool) -> np.ndarray:
    img = Image.fromarray(frame).resize((size, size), Image.Resampling.BILINEAR, box=box)
    if flip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(img)


def random_case(rng: np.random.Generator, k: int = 2):
    width, height = int(rng.integers(8, 400)), int(rng.integers(8, 300))
    frames = rng.integers(0, 256, (k, height, width, 3), dtype=np.uint8)
    box_w, box_h = rng.uniform(1, width), rng.uniform(1, height)
    x0, y0 = rng.uniform(0, width - box_w), rng.uniform(0, height - box_h)
    box = (x0, y0, x0 + box_w, y0 + box_h)
    if rng.random() < 0.2:  # whole pixels, as centre crops and integer boxes are
        box = tuple(float(int(v)) for v in box)
    return frames, box, int(rng.integers(2, 230)), bool(rng.random() < 0.5)


def test_batched_resizes_equal_pillow_on_random_boxes_sizes_and_flips():
    rng = np.random.default_rng(0)
    orders = set()
    for _ in range(40):
        size = int(rng.integers(2, 120))
        cases = []
        for _ in range(4):  # clips of different frame and box sizes share a batch
            frames, box, _, flip = random_case(rng)
            cases.append((frames, box, flip))
        items = []
        for c, (frames, box, flip) in enumerate(cases):
            plan = BoxPlan.of(frames.shape[2], frames.shape[1], box, size, flip)
            orders.add(plan.vertical_first)
            items.append((np.stack([plan.source(f) for f in frames]), plan, c))
        batch, labels = collate_resize(items)
        out = batch.resize()  # B, C, K, size, size
        assert out.dtype == torch.uint8 and labels.tolist() == [0, 1, 2, 3]
        for c, (frames, box, flip) in enumerate(cases):
            for t, frame in enumerate(frames):
                want = pil_resize(frame, box, size, flip)
                np.testing.assert_array_equal(out[c, :, t].permute(1, 2, 0).numpy(), want)
    assert orders == {False, True}  # both of Pillow's pass orders were exercised


def test_the_plan_reads_only_the_pixels_near_the_box():
    plan = axis_plan(340, 50.25, 250.75, 224)
    assert (plan.start, plan.stop) == (50, 251)  # the box and the filter's reach, no more
    assert plan.index.min() == 0 and plan.index.max() == plan.stop - plan.start - 1
    assert np.abs(plan.weight.sum(axis=1) - (1 << 22)).max() <= plan.weight.shape[1]
    identity = axis_plan(100, 10.0, 74.0, 64)  # a whole-pixel crop of the output size
    assert (identity.index[:, 0] == np.arange(64)).all()
    assert (identity.weight[:, 0] == 1 << 22).all() and (identity.weight[:, 1:] == 0).all()


def test_a_resize_batch_moves_like_a_tensor():
    rng = np.random.default_rng(1)
    frames, box, size, flip = random_case(rng)
    plan = BoxPlan.of(frames.shape[2], frames.shape[1], box, size, flip)
    batch, _ = collate_resize([(np.stack([plan.source(f) for f in frames]), plan, 0)])
    moved = batch.to(torch.device("cpu"), non_blocking=True)
    assert len(moved) == 1 and moved.device.type == "cpu"
    assert torch.equal(moved.resize(), batch.resize())


@pytest.mark.cuda
def test_the_resize_on_cuda_equals_the_cpu_one():
    rng = np.random.default_rng(2)
    frames, box, size, flip = random_case(rng, k=4)
    plan = BoxPlan.of(frames.shape[2], frames.shape[1], box, size, flip)
    batch, _ = collate_resize([(np.stack([plan.source(f) for f in frames]), plan, 0)])
    on_gpu = batch.pin_memory().to(torch.device("cuda"), non_blocking=True).resize()
    assert torch.equal(on_gpu.cpu(), batch.resize())
