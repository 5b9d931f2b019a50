"""Video train step: BesNet-50 against an I3D-R50 and the 2D frame baseline, side by side.

Every model gets the same clip batch (default 2 x 3 x 8 x 112 x 112, 400 classes). A train step
is forward + cross-entropy + backward + AdamW step in train mode. The rows, and a dense matmul
that gives this machine's peak, take turns step by step, so a busy machine hurts all of them
alike; the median step is reported (and the best). FLOPs are conv and linear multiply-adds x 2
as torch ran them (torch.utils.flop_counter), per clip; a train step counts 3 x the forward.
Peak memory: on CPU each row's peak RSS (VmHWM) in a fresh subprocess running two steps, over
that process's peak before the model was built (so weights, gradients, AdamW state and
activations); on CUDA torch.cuda.max_memory_allocated in that subprocess. The header says how
much of the time other processes kept a task waiting for a CPU (Linux PSI): with OpenMP's
spinning threads a shared 2-core machine slows the steps several-fold, so rerun when it is quiet.

    python -m benchmarks.video_step [--steps 9] [--warmup 1] [--threads 2] [--device cpu]
        [--rows besnet,besnet-d1,i3d,frames,besnet-eval,...] [--no-memory] [--profile]
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from models.besnet import besnet50, i3d_resnet50
from models.frame_baseline import FrameBaseline

MATMUL_SIZE = 2048
MATMUL_REPS = 4  # matmuls per turn of the peak row


@dataclass(frozen=True)
class Row:
    """One model under test: a label, a constructor taking the class count, train or eval."""

    label: str
    build: Callable[[int], nn.Module]
    train: bool = True


ROWS: dict[str, Row] = {
    "besnet": Row("BesNet-50, random dilation {1,2,4}", besnet50),
    "besnet-d1": Row("BesNet-50, fixed dilation 1",
                     lambda n: besnet50(n, dilation_mode="fixed", fixed_dilation=1)),
    "besnet-d2": Row("BesNet-50, fixed dilation 2",
                     lambda n: besnet50(n, dilation_mode="fixed", fixed_dilation=2)),
    "besnet-d4": Row("BesNet-50, fixed dilation 4",
                     lambda n: besnet50(n, dilation_mode="fixed", fixed_dilation=4)),
    "i3d": Row("I3D-R50 (3x3x3 middle, 1x1x1 else)", i3d_resnet50),
    "frames": Row("frame baseline (2D ResNet-50/frame)", lambda n: FrameBaseline(n, depth=50)),
    "besnet-eval": Row("BesNet-50 eval, mean of d {1,2,4}", besnet50, train=False),
    "besnet-eval-12": Row("BesNet-50 eval, mean {1,2} merged",
                          lambda n: besnet50(n, dilations=(1, 2)), train=False),
    "besnet-eval-d1": Row("BesNet-50 eval, fixed dilation 1",
                          lambda n: besnet50(n, dilation_mode="fixed", fixed_dilation=1),
                          train=False),
}
DEFAULT_ROWS = "besnet,besnet-d1,i3d,frames,besnet-eval,besnet-eval-12,besnet-eval-d1"


@dataclass(frozen=True)
class Setup:
    """The input and the machine settings every row shares."""

    batch: int
    frames: int
    size: int
    classes: int
    threads: int
    device: str
    seed: int

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"


def make_batch(setup: Setup) -> tuple[torch.Tensor, torch.Tensor]:
    """The one clip batch (B, 3, T, H, W) and labels every model sees."""
    gen = torch.Generator().manual_seed(setup.seed)
    clips = torch.randn(setup.batch, 3, setup.frames, setup.size, setup.size, generator=gen)
    labels = torch.randint(setup.classes, (setup.batch,), generator=gen)
    if setup.cuda:
        clips = clips.to("cuda", memory_format=torch.channels_last_3d)
    return clips, labels.to(setup.device)


def build_model(row: Row, setup: Setup) -> nn.Module:
    """The row's model on the device, in train or eval mode (CUDA: channels-last)."""
    torch.manual_seed(setup.seed)
    model = row.build(setup.classes).train(row.train)
    if setup.cuda:
        is_3d = any(p.dim() == 5 for p in model.parameters())
        model = model.to("cuda", memory_format=torch.channels_last_3d if is_3d
                         else torch.channels_last)
    return model


def autocast(setup: Setup):
    """bf16 autocast on CUDA, nothing on CPU (float32)."""
    return torch.autocast("cuda", torch.bfloat16) if setup.cuda else nullcontext()


def sync(setup: Setup) -> None:
    if setup.cuda:
        torch.cuda.synchronize()


def make_step(row: Row, model: nn.Module, clips: torch.Tensor, labels: torch.Tensor,
              setup: Setup) -> Callable[[], None]:
    """A train step (forward, cross-entropy, backward, AdamW) or, for eval rows, a forward."""
    if not row.train:
        def forward() -> None:
            with torch.no_grad(), autocast(setup):
                model(clips)
        return forward

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(setup):
            loss = nn.functional.cross_entropy(model(clips), labels)
        loss.backward()
        optimizer.step()
    return train_step


def matmul_turn(setup: Setup) -> Callable[[], None]:
    """MATMUL_REPS dense square matmuls (float32 on CPU, bf16 on CUDA): the peak row."""
    dtype = torch.bfloat16 if setup.cuda else torch.float32
    gen = torch.Generator().manual_seed(setup.seed)
    a, b = (torch.randn(MATMUL_SIZE, MATMUL_SIZE, generator=gen).to(setup.device, dtype)
            for _ in range(2))

    def turn() -> None:
        for _ in range(MATMUL_REPS):
            torch.mm(a, b)
    return turn


MATMUL_FLOPS = 2 * MATMUL_SIZE**3 * MATMUL_REPS


def forward_flops(model: nn.Module, clips: torch.Tensor, row: Row, setup: Setup) -> int:
    """Conv + linear FLOPs (2 x multiply-adds) of one forward on the batch, as torch ran it."""
    grad = torch.enable_grad() if row.train else torch.no_grad()
    with FlopCounterMode(display=False) as counter, grad, autocast(setup):
        model(clips)
    return counter.get_total_flops()


def trainable_params(model: nn.Module) -> int:
    """Parameters that get gradients (the frame baseline's unused ImageNet fc is left out)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def time_turns(turns: dict[str, Callable[[], None]], warmup: int, steps: int,
               setup: Setup) -> dict[str, list[float]]:
    """Seconds of each of `steps` turns per key, the keys interleaved, after `warmup` rounds."""
    for _ in range(warmup):
        for turn in turns.values():
            turn()
            sync(setup)
    seconds: dict[str, list[float]] = {key: [] for key in turns}
    for _ in range(steps):
        for key, turn in turns.items():
            start = time.perf_counter()
            turn()
            sync(setup)
            seconds[key].append(time.perf_counter() - start)
    return seconds


def cpu_stall_seconds() -> float | None:
    """Seconds some task has waited for a CPU since boot (Linux PSI); None where unavailable."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    return int(line.rsplit("total=", 1)[1]) / 1e6


def peak_memory_mib(key: str, setup: Setup) -> float:
    """Run two steps of row `key` in a fresh process; its peak memory over its start, in MiB."""
    cmd = [sys.executable, "-m", "benchmarks.video_step", "--memory-of", key,
           *setup_args(setup)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return float(done.stdout.split()[-1])


def setup_args(setup: Setup) -> list[str]:
    return ["--batch", str(setup.batch), "--frames", str(setup.frames), "--size", str(setup.size),
            "--classes", str(setup.classes), "--threads", str(setup.threads),
            "--device", setup.device, "--seed", str(setup.seed)]


def measure_memory(key: str, setup: Setup) -> float:
    """In this (fresh) process: two steps of row `key`; peak memory growth in MiB."""
    clips, labels = make_batch(setup)
    if setup.cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        base = peak_rss_mib()
    row = ROWS[key]
    step = make_step(row, build_model(row, setup), clips, labels, setup)
    for _ in range(2):
        step()
    sync(setup)
    if setup.cuda:
        return torch.cuda.max_memory_allocated() / 2**20 - base
    return peak_rss_mib() - base


def peak_rss_mib() -> float:
    """This process's peak resident set in MiB: Linux VmHWM, which execve resets (ru_maxrss,
    the fallback, keeps the parent's peak across it)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (
        2**20 if sys.platform == "darwin" else 2**10)


def profile_rows(turns: dict[str, Callable[[], None]], setup: Setup, reps: int = 3,
                 top: int = 14) -> None:
    """Where a step of each row goes: torch.profiler self time of the top ops, ms per step."""
    totals: dict[str, dict[str, float]] = {}
    for key, turn in turns.items():
        with torch.profiler.profile() as prof:
            for _ in range(reps):
                turn()
            sync(setup)
        totals[key] = {e.key: (e.self_device_time_total if setup.cuda
                               else e.self_cpu_time_total) / 1e3 / reps
                       for e in prof.key_averages()}
    ops = sorted(set().union(*totals.values()),
                 key=lambda op: -max(t.get(op, 0.0) for t in totals.values()))[:top]
    where = "GPU" if setup.cuda else "wall"
    print(f"\ntorch.profiler, {reps} steps per row (not interleaved, so noisier than the table):"
          f" self {where} time per step, ms")
    print(f"{'op':40}" + "".join(f"{key:>13}" for key in totals))
    for op in ops:
        print(f"{op[:40]:40}" + "".join(f"{t.get(op, 0.0):>13.0f}" for t in totals.values()))
    print(f"{'all ops':40}" + "".join(f"{sum(t.values()):>13.0f}" for t in totals.values()))


def run(keys: list[str], setup: Setup, warmup: int, steps: int,
        memory: bool) -> tuple[dict, dict[str, Callable[[], None]]]:
    """Build, count and time every row (and the matmul peak); measure memory if asked."""
    clips, labels = make_batch(setup)
    result: dict = {"rows": {}}
    turns: dict[str, Callable[[], None]] = {}
    for key in keys:
        row = ROWS[key]
        model = build_model(row, setup)
        flops = forward_flops(model, clips, row, setup)
        result["rows"][key] = {"params": trainable_params(model),
                               "fwd_flops_per_clip": flops / setup.batch,
                               "step_flops": flops * (3 if row.train else 1)}
        turns[key] = make_step(row, model, clips, labels, setup)
    turns["matmul"] = matmul_turn(setup)
    result["load_before"] = os.getloadavg()
    stall_before, start = cpu_stall_seconds(), time.perf_counter()
    seconds = time_turns(turns, warmup, steps, setup)
    stall_after, wall = cpu_stall_seconds(), time.perf_counter() - start
    result["load_after"] = os.getloadavg()
    if stall_before is not None and stall_after is not None:
        result["stall_share"] = (stall_after - stall_before) / wall
    result["matmul_flops_per_s"] = MATMUL_FLOPS / statistics.median(seconds["matmul"])
    result["matmul_best_flops_per_s"] = MATMUL_FLOPS / min(seconds["matmul"])
    for key in keys:
        r = result["rows"][key]
        r["median_s"], r["best_s"] = statistics.median(seconds[key]), min(seconds[key])
        r["flops_per_s"] = r["step_flops"] / r["median_s"]
        if memory:
            r["peak_mib"] = peak_memory_mib(key, setup)
    del turns["matmul"]
    return result, turns


def print_table(result: dict, setup: Setup, warmup: int, steps: int) -> None:
    rows = result["rows"]
    peak = result["matmul_flops_per_s"]
    print(f"device {setup.device}, {setup.threads} threads, batch {setup.batch} x 3 x "
          f"{setup.frames} x {setup.size} x {setup.size}, {setup.classes} classes, "
          f"{'bf16 autocast, channels-last' if setup.cuda else 'float32'}")
    print(f"{warmup} warm-up + {steps} timed steps per row, rows interleaved; load average "
          f"{result['load_before'][0]:.2f} before, {result['load_after'][0]:.2f} after")
    if "stall_share" in result:
        busy = " (other processes competed: rerun when quiet)" if result["stall_share"] > 0.05 \
            else ""
        print(f"tasks waiting for a CPU (PSI) during the timed steps: "
              f"{result['stall_share']:.0%} of the wall time{busy}")
    print(f"dense matmul {MATMUL_SIZE}^3 (the peak): {peak / 1e9:.0f} GFLOP/s median, "
          f"{result['matmul_best_flops_per_s'] / 1e9:.0f} best")
    print("FLOPs: conv + linear multiply-adds x 2 as run (taps on zero padding included); "
          "a train step\ncounts 3 x the forward; params: trainable ones")
    print()
    print(f"{'':36}{'step s':>8}{'best s':>8}{'clips/s':>9}{'GFLOPs':>8}{'params':>8}"
          f"{'peak':>8}{'GFLOP/s':>9}{'of peak':>8}")
    print(f"{'':36}{'median':>8}{'':>8}{'':>9}{'/clip':>8}{'M':>8}{'MiB':>8}{'':>9}{'':>8}")
    for key, r in rows.items():
        mem = f"{r['peak_mib']:>8.0f}" if "peak_mib" in r else f"{'-':>8}"
        print(f"{ROWS[key].label:36}{r['median_s']:>8.2f}{r['best_s']:>8.2f}"
              f"{setup.batch / r['median_s']:>9.2f}{r['fwd_flops_per_clip'] / 1e9:>8.1f}"
              f"{r['params'] / 1e6:>8.1f}{mem}{r['flops_per_s'] / 1e9:>9.0f}"
              f"{r['flops_per_s'] / peak:>8.2f}")
    print()
    print(f"{'ratios (step time)':44}{'median':>8}{'best':>8}  target")
    for a, b, label, target in [
            ("besnet", "i3d", "BesNet random / I3D-R50", "<= 1.05"),
            ("besnet", "besnet-d1", "BesNet random / fixed dilation 1", "<= 1.05"),
            ("besnet", "besnet-d2", "BesNet random / fixed dilation 2", "<= 1.05"),
            ("besnet", "besnet-d4", "BesNet random / fixed dilation 4", "<= 1.05"),
            ("besnet", "frames", "BesNet random / frame baseline", ""),
            ("besnet-eval", "besnet", "BesNet eval forward / train step", ""),
            ("besnet-eval", "besnet-eval-d1", "eval: mean of {1,2,4} / one dilation", ""),
            ("besnet-eval-12", "besnet-eval-d1", "eval: mean of {1,2} / one dilation", "")]:
        if a in rows and b in rows:
            print(f"{label:44}{rows[a]['median_s'] / rows[b]['median_s']:>8.2f}"
                  f"{rows[a]['best_s'] / rows[b]['best_s']:>8.2f}  {target}")
    if "besnet" in rows and "i3d" in rows:
        bes, i3d = rows["besnet"], rows["i3d"]
        flops = bes["step_flops"] / i3d["step_flops"]
        print(f"{'BesNet random / I3D-R50, time per FLOP':44}"
              f"{bes['median_s'] / i3d['median_s'] / flops:>8.2f}"
              f"{bes['best_s'] / i3d['best_s'] / flops:>8.2f}  (their FLOPs differ "
              f"{flops:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=DEFAULT_ROWS,
                        help=f"comma-separated, from {', '.join(ROWS)}")
    parser.add_argument("--steps", type=int, default=9, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per row first")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--classes", type=int, default=400)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-memory", action="store_true",
                        help="skip the peak-memory subprocesses")
    parser.add_argument("--profile", action="store_true",
                        help="also print where one step of each row goes (torch.profiler)")
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)  # the subprocess's own mode
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    setup = Setup(args.batch, args.frames, args.size, args.classes, args.threads, args.device,
                  args.seed)
    if args.memory_of:
        print(measure_memory(args.memory_of, setup))
        return
    keys = args.rows.split(",")
    unknown = [k for k in keys if k not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {list(ROWS)}")
    result, turns = run(keys, setup, args.warmup, args.steps, not args.no_memory)
    print_table(result, setup, args.warmup, args.steps)
    if args.profile:
        profile_rows(turns, setup)


if __name__ == "__main__":
    main()
