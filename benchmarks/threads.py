"""Two small torch trainings at once, with and without the thread budget, against one alone.

Each run trains the crypto TCN of params.yaml (32 channels, dilations 1-8, window 24) on random
data in its own process and reports its seconds per epoch (the median). Without the budget
each process takes torch's default, every core; with it each gets its share
(tasks/threads.py: REPROLAB_THREADS, as a Dask worker, a torchrun rank or a worker's flow run
gets it). The ratios are to the faster of the two runs alone.

    python -m benchmarks.threads [--samples 8000] [--epochs 3] [--timeout 150]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from tasks.threads import BUDGET_VAR, THREAD_VARS, share, thread_env

N_FEATURES, WINDOW, BATCH = 16, 24, 256


def train(samples: int, epochs: int) -> dict:
    """Train the TCN in this process; its threads and seconds per epoch."""
    import torch
    from torch import nn

    from models.sequence import build_sequence_model
    from tasks.threads import apply_thread_budget

    apply_thread_budget()  # what every flow process does (flows/common.py)
    torch.manual_seed(0)
    X, y = torch.randn(samples, WINDOW, N_FEATURES), torch.randint(0, 2, (samples,)).float()
    model = build_sequence_model("tcn", N_FEATURES, WINDOW, hidden=32, layers=2, kernel_size=3,
                                 dilations=[1, 2, 4, 8], dropout=0.1, activation="relu",
                                 erase_relu=False, residual_scale=1.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn, seconds = nn.BCEWithLogitsLoss(), []
    for _ in range(epochs):
        started = time.perf_counter()
        for i in range(0, samples, BATCH):
            optimizer.zero_grad()
            loss_fn(model(X[i:i + BATCH]), y[i:i + BATCH]).backward()
            optimizer.step()
        seconds.append(time.perf_counter() - started)
    return {"threads": torch.get_num_threads(), "epoch_seconds": seconds}


def start(args: argparse.Namespace, budget: int | None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in (BUDGET_VAR, *THREAD_VARS)}
    env.update(thread_env(budget) if budget else {})
    cmd = [sys.executable, "-m", "benchmarks.threads", "--one", "--samples", str(args.samples),
           "--epochs", str(args.epochs)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)


def run_together(args: argparse.Namespace, n: int, budget: int | None) -> list[dict | None]:
    """`n` trainings at once; each one's result, None for one past the timeout."""
    procs = [start(args, budget) for _ in range(n)]
    deadline, results = time.monotonic() + args.timeout, []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            results.append(json.loads(out.strip().splitlines()[-1]) if proc.returncode == 0
                           else None)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            results.append(None)
    return results


def epoch_time(result: dict | None) -> float | None:
    return None if result is None else statistics.median(result["epoch_seconds"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.threads")
    parser.add_argument("--samples", type=int, default=8000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=150, help="seconds for each setting")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(train(args.samples, args.epochs)))
        return 0
    each = share(2)
    settings = [("alone, default threads", 1, None), (f"alone, budget {each}", 1, each),
                ("2 at once, default threads", 2, None), (f"2 at once, budget {each} each", 2, each)]
    rows = [(label, run_together(args, n, budget)) for label, n, budget in settings]
    # the fastest run alone: what a training takes without a neighbour
    alone = min((t for _, results in rows[:2] if (t := epoch_time(results[0]))), default=None)
    print(f"{'setting':<30} {'threads':>7} {'s/epoch':>16} {'vs alone':>14}")
    for label, results in rows:
        times = [epoch_time(r) for r in results]
        threads = ",".join(str(r["threads"]) if r else "?" for r in results)
        shown = ", ".join(f"{t:.2f}" if t else f">{args.timeout:.0f}" for t in times)
        ratios = ", ".join(f"{t / alone:.1f}x" if t and alone else "-" for t in times)
        print(f"{label:<30} {threads:>7} {shown:>16} {ratios:>14}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
