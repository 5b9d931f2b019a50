"""GPU train step: BesNet-50 clips/s at batch 32, 224 x 224, bf16, K = 8 and 16 frames.

For a lent GPU. Each case is one model at one clip length, in NCDHW (contiguous) or
channels_last_3d, eager or compiled (the model's own compile(): BesNet's draws the dilations
before its graph, which takes them as data): a train step is forward + cross-entropy + backward +
AdamW under bf16 autocast, timed with CUDA events after warm-up (the first step, which holds
cuDNN autotuning or compilation, is reported on its own). Peak memory is
torch.cuda.max_memory_allocated over the case. FLOPs per clip come from torch's flop counter
on one eager forward (a train step counts 3 x the forward); achieved FLOP/s is given as a share
of a dense bf16 matmul measured in the same run; `graphs` is how many graphs torch.compile made
(random dilation: 1, like fixed). Rows are written to --out as JSON lines as they finish, so a
run cut short keeps what it measured. The ratios at the end include compiled random / compiled
fixed dilation (target <= 1.05).

    python -m benchmarks.gpu_train [--cases default|all] [--steps 10] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.video_step import ROWS

BATCH = 32
SIZE = 224
CLASSES = 400
MATMUL_SIZE = 8192


@dataclass(frozen=True)
class Case:
    """One timed configuration: a video_step row (model) at K frames, layout, compile."""

    row: str
    frames: int
    channels_last: bool
    compiled: bool = False

    @property
    def label(self) -> str:
        layout = "channels_last_3d" if self.channels_last else "NCDHW"
        mode = "compiled" if self.compiled else "eager"
        return f"{ROWS[self.row].label}, K={self.frames}, {layout}, {mode}"


def default_cases() -> list[Case]:
    """Eager layouts at K = 8 and 16 first (cheap), then I3D and eval, then compiled cases."""
    cases = [Case("besnet", k, cl) for k in (8, 16) for cl in (False, True)]
    cases += [Case("i3d", 8, True), Case("besnet-d1", 8, True),
              Case("besnet-eval", 8, True), Case("besnet-eval-d1", 8, True)]
    cases += [Case("besnet-d1", 8, True, compiled=True), Case("besnet", 8, True, compiled=True)]
    return cases


def all_cases() -> list[Case]:
    return [Case(row, k, cl, comp) for row in ("besnet", "besnet-d1", "i3d") for k in (8, 16)
            for cl in (False, True) for comp in (False, True)]


def matmul_peak(reps: int = 10) -> float:
    """bf16 dense matmul FLOP/s on this GPU (mean of `reps` after warm-up)."""
    a, b = (torch.randn(MATMUL_SIZE, MATMUL_SIZE, device="cuda", dtype=torch.bfloat16)
            for _ in range(2))
    for _ in range(3):
        torch.mm(a, b)
    seconds = timed(lambda: torch.mm(a, b), reps)
    return 2 * MATMUL_SIZE**3 / statistics.mean(seconds)


def timed(step, reps: int) -> list[float]:
    """Seconds per call of `step`, each bracketed by CUDA events."""
    out = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        out.append(start.elapsed_time(end) / 1000)
    return out


def clip_batch(case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator(device="cuda").manual_seed(0)
    clips = torch.randn(BATCH, 3, case.frames, SIZE, SIZE, device="cuda", generator=gen)
    if case.channels_last:
        clips = clips.contiguous(memory_format=torch.channels_last_3d)
    labels = torch.randint(CLASSES, (BATCH,), device="cuda", generator=gen)
    return clips, labels


def build(case: Case) -> nn.Module:
    torch.manual_seed(0)
    model = ROWS[case.row].build(CLASSES).train(ROWS[case.row].train).cuda()
    layout = torch.channels_last_3d if case.channels_last else torch.contiguous_format
    return model.to(memory_format=layout)


def forward_flops(model: nn.Module, clips: torch.Tensor) -> float:
    """Forward FLOPs per clip (eager, one clip, bf16 autocast)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad(), \
            torch.autocast("cuda", torch.bfloat16):
        model(clips[:1])
    return counter.get_total_flops()


def step_fn(case: Case, model: nn.Module, clips: torch.Tensor, labels: torch.Tensor):
    if case.compiled:
        model.compile()  # as tasks/train.py's fit does (kinetics.train.compile)
    runner = model
    if not ROWS[case.row].train:
        def forward() -> None:
            with torch.no_grad(), torch.autocast("cuda", torch.bfloat16):
                runner(clips)
        return forward
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", torch.bfloat16):
            loss = nn.functional.cross_entropy(runner(clips), labels)
        loss.backward()
        optimizer.step()
    return train_step


def run_case(case: Case, warmup: int, steps: int, peak: float) -> dict:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    torch._dynamo.utils.counters.clear()
    model = build(case)
    clips, labels = clip_batch(case)
    flops = forward_flops(model, clips)
    step = step_fn(case, model, clips, labels)
    begin = time.perf_counter()
    step()
    torch.cuda.synchronize()
    first_s = time.perf_counter() - begin
    for _ in range(warmup):
        step()
    seconds = timed(step, steps)
    median = statistics.median(seconds)
    work = flops * BATCH * (3 if ROWS[case.row].train else 1)
    return {**asdict(case), "label": case.label, "first_step_s": first_s,
            "median_s": median, "best_s": min(seconds), "clips_per_s": BATCH / median,
            "gflops_per_clip": flops / 1e9, "tflops_per_s": work / median / 1e12,
            "of_peak": work / median / peak,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
            "graphs": torch._dynamo.utils.counters["stats"]["unique_graphs"]}


def print_row(r: dict) -> None:
    print(f"{r['label']:78}{r['median_s']:>8.3f}{r['clips_per_s']:>9.1f}"
          f"{r['gflops_per_clip']:>8.0f}{r['tflops_per_s']:>8.0f}{r['of_peak']:>8.2f}"
          f"{r['peak_gib']:>8.1f}{r['first_step_s']:>8.1f}{r['graphs']:>7}", flush=True)


# (label, numerator row, denominator row, compiled): step-time ratios at K = 8, channels_last_3d
RATIOS = [("BesNet random / fixed dilation, eager", "besnet", "besnet-d1", False),
          ("BesNet random / fixed dilation, compiled", "besnet", "besnet-d1", True),
          ("BesNet random dilation / I3D-R50, eager", "besnet", "i3d", False)]


def print_ratios(results: list[dict]) -> None:
    """Step-time ratios of the rows measured, each with its target."""
    times = {(r["row"], r["frames"], r["channels_last"], r["compiled"]): r["median_s"]
             for r in results if "median_s" in r}
    print(f"\n{'ratios (median step time, K=8, channels_last_3d)':52}{'ratio':>8}  target")
    for label, num, den, compiled in RATIOS:
        a, b = (times.get((row, 8, True, compiled)) for row in (num, den))
        if a is not None and b is not None:
            print(f"{label:52}{a / b:>8.2f}  <= 1.05", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", choices=("default", "all"), default="default")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", type=Path, help="append each case's result as a JSON line")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU (for CPU figures use benchmarks.video_step)")
    torch.backends.cudnn.benchmark = True
    peak = matmul_peak()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, batch {BATCH} x 3 x K x "
          f"{SIZE} x {SIZE}, bf16 autocast; dense bf16 matmul {peak / 1e12:.0f} TFLOP/s")
    print(f"{'':78}{'step s':>8}{'clips/s':>9}{'GFLOPs':>8}{'TFLOP/s':>8}{'of peak':>8}"
          f"{'GiB':>8}{'1st s':>8}{'graphs':>7}")
    cases = default_cases() if args.cases == "default" else all_cases()
    results = []
    for case in cases:
        try:
            result = run_case(case, args.warmup, args.steps, peak)
        except Exception as error:  # one failing case (OOM, a compile error) must not end the run
            result = {**asdict(case), "label": case.label, "error": repr(error)[:300]}
            print(f"{case.label:78}failed: {result['error']}", flush=True)
        else:
            print_row(result)
        finally:
            torch._dynamo.reset()  # compiled graphs hold their model; free it for the next case
        results.append(result)
        if args.out:
            with args.out.open("a") as out:
                out.write(json.dumps(result) + "\n")
    print_ratios(results)


if __name__ == "__main__":
    main()
