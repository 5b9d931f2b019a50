"""Small torch trainings side by side: two at once against one alone.

Each run trains a small model of the project on generated tensors in its own process (through
the venv's interpreter, so in the project's environment: tasks/environment.py) and reports its
seconds per epoch (the median of its epochs). Two workloads:
- `tcn`: the crypto TCN of params.yaml (32 channels, dilations 1-8, window 24), batch 256;
- `birnn`: the Quora `birnn_conv` pair model (BiGRU 64 + Conv1d 64 over 40 token ids, 5,000
  words of 100 dims), batch 256.

Two comparisons:
- the default: the thread budget (the TCN, the machine share off). Without it each process
  takes torch's default, every core; with it each gets its share (tasks/threads.py:
  REPROLAB_THREADS, as a Dask worker, a torchrun rank or a worker's flow run gets it). The
  ratios are to the faster of the two runs alone.
- `--machine`: two runs that know nothing of each other (two `dvc repro`, a demo beside a
  nightly), each with the settings a user gets by default, before the machine share
  (REPROLAB_SHARE_CORES=0: every run takes every core) and after (the default: while both
  train, each takes its share of the machine; tasks/threads.py).
  Each run's seconds per epoch alone and two at once, the ratio of the two, and the new run
  alone against the old one alone; medians of `--repeat` repetitions, old and new taking turns
  (who goes first alternates; the runs alone before the runs at once).

Other work on the machine spoils the numbers: before each measurement it waits until the other
processes keep fewer than --quiet cores busy (at most --wait seconds in all, then it measures
anyway and says so), and it prints how many cores they kept busy while it measured (`others`;
a `!` marks more than --quiet).

    python -m benchmarks.threads [--samples 8000] [--epochs 3] [--timeout 150]
    python -m benchmarks.threads --machine [--workloads tcn,birnn] [--repeat 3]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from tasks.threads import BUDGET_VAR, RUNS_VAR, SHARE_VAR, THREAD_VARS, share, thread_env

N_FEATURES, WINDOW, BATCH = 16, 24, 256
VOCAB, TOKENS = 5000, 40
# what a user's shell may hold that changes how OpenMP threads wait or whether runs share the
# machine: every run here starts without them, so it gets the defaults
WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", SHARE_VAR)
SIZES = {"tcn": 5000, "birnn": 1000}  # --machine's samples (pairs) an epoch: ~0.4-0.7 s


def _tcn(samples: int):
    import torch

    from models.sequence import build_sequence_model

    X, y = torch.randn(samples, WINDOW, N_FEATURES), torch.randint(0, 2, (samples,)).float()
    model = build_sequence_model("tcn", N_FEATURES, WINDOW, hidden=32, layers=2, kernel_size=3,
                                 dilations=[1, 2, 4, 8], dropout=0.1, activation="relu",
                                 erase_relu=False, residual_scale=1.0)
    return model, lambda i: (X[i:i + BATCH],), y


def _birnn(samples: int):
    import torch

    from models.siamese import build_pair_model

    def questions() -> torch.Tensor:  # right-padded ids, 5 to TOKENS tokens
        ids = torch.randint(1, VOCAB, (samples, TOKENS))
        lengths = torch.randint(5, TOKENS + 1, (samples, 1))
        return ids.masked_fill(torch.arange(TOKENS) >= lengths, 0)

    a, b, y = questions(), questions(), torch.randint(0, 2, (samples,)).float()
    model = build_pair_model("birnn_conv", vocab_size=VOCAB, emb_dim=100, hidden=128,
                             dropout=0.1, activation="relu", erase_relu=False,
                             residual_scale=1.0, rnn="gru", rnn_hidden=64, conv_channels=64,
                             kernel_size=3)
    return model, lambda i: (a[i:i + BATCH], b[i:i + BATCH]), y


WORKLOADS = {"tcn": _tcn, "birnn": _birnn}


def train(samples: int, epochs: int, workload: str = "tcn") -> dict:
    """Train one workload in this process; its threads and seconds per epoch."""
    from tasks.threads import apply_thread_budget

    apply_thread_budget()  # what every flow process does (flows/common.py), before torch
    import torch
    from torch import nn

    torch.manual_seed(0)
    model, inputs, y = WORKLOADS[workload](samples)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn, seconds, threads = nn.BCEWithLogitsLoss(), [], set()
    for _ in range(epochs):
        started = time.perf_counter()
        for i in range(0, samples, BATCH):
            optimizer.zero_grad()
            loss_fn(model(*inputs(i)), y[i:i + BATCH]).backward()
            optimizer.step()
            threads.add(torch.get_num_threads())
        seconds.append(time.perf_counter() - started)
    return {"threads": "/".join(map(str, sorted(threads, reverse=True))),
            "epoch_seconds": seconds}


def start(args: argparse.Namespace, budget: int | None, workload: str = "tcn",
          samples: int | None = None, extra: dict[str, str] | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in (BUDGET_VAR, *THREAD_VARS)}
    env.update(thread_env(budget) if budget else {})
    env.update(extra or {})
    cmd = [sys.executable, "-m", "benchmarks.threads", "--one", "--workload", workload,
           "--samples", str(samples or args.samples), "--epochs", str(args.epochs)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)


def collect(args: argparse.Namespace, procs: list[subprocess.Popen]) -> list[dict | None]:
    """Each process's result, None for one that failed or ran past the timeout."""
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


def run_together(args: argparse.Namespace, n: int, budget: int | None) -> list[dict | None]:
    """`n` trainings at once, the budget alone deciding their threads (no machine share);
    each one's result, None for one past the timeout."""
    return collect(args, [start(args, budget, extra={SHARE_VAR: "0"}) for _ in range(n)])


def epoch_time(result: dict | None) -> float | None:
    return None if result is None else statistics.median(result["epoch_seconds"])


# ---------------------------------------------------------------- a quiet machine
def busy_cores() -> tuple[float, float]:
    """(cores busy on the machine, cores busy in this process's finished children): CPU
    seconds so far, from /proc/stat and getrusage; read twice for what ran in between."""
    with open("/proc/stat", encoding="ascii") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    busy = (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # user..steal, no guest
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return busy, usage.ru_utime + usage.ru_stime


def others_since(mark: tuple[float, float], seconds: float) -> float:
    """Cores that processes other than this one's children kept busy since `mark`."""
    busy, children = busy_cores()
    return max(0.0, (busy - mark[0]) - (children - mark[1])) / max(seconds, 1e-9)


def wait_quiet(quiet: float, deadline: float) -> tuple[bool, float]:
    """Wait (until the monotonic `deadline` at most) until other processes keep fewer than
    `quiet` cores busy over 1.5 seconds; (whether it got there, the last figure)."""
    while True:
        mark, started = busy_cores(), time.monotonic()
        time.sleep(1.5)
        others = others_since(mark, time.monotonic() - started)
        if others < quiet or time.monotonic() >= deadline:
            return others < quiet, others
        time.sleep(3.0)


# ---------------------------------------------------------------- two independent runs
@dataclass
class Cell:
    """One workload and setting: epoch times over the repetitions, alone and two at once."""
    alone: list[float] = field(default_factory=list)
    together: list[float] = field(default_factory=list)  # both runs of every repetition
    threads: set[str] = field(default_factory=set)
    others: list[float] = field(default_factory=list)
    failed: int = 0


def measure(args: argparse.Namespace, n: int, workload: str, setting: str,
            extra: dict[str, str], cell: Cell, noisy: list[str]) -> list[float]:
    quiet, others = wait_quiet(args.quiet, args.deadline)
    if not quiet:
        noisy.append(f"{workload} {setting} {n} at once: other processes kept {others:.2f} "
                     "cores busy just before")
    with tempfile.TemporaryDirectory(prefix="reprolab-runs-") as runs:
        # its own list of trainings: runs elsewhere on this machine do not change its share
        env = {**extra, RUNS_VAR: runs}
        mark, started = busy_cores(), time.monotonic()
        results = collect(args, [start(args, None, workload, SIZES[workload] * args.scale
                                       // 100, env) for _ in range(n)])
        cell.others.append(others_since(mark, time.monotonic() - started))
    times = [t for r in results if (t := epoch_time(r)) is not None]
    cell.failed += len(results) - len(times)
    cell.threads.update(r["threads"] for r in results if r)
    print(f"  {workload:<6} {setting} {'alone' if n == 1 else f'{n} at once':<9} "
          f"{', '.join(f'{t:.2f}' for t in times) or '-':>11} s/epoch  threads "
          f"{','.join(r['threads'] if r else '?' for r in results):<7} others "
          f"{cell.others[-1]:.2f}", flush=True)
    return times


def compare_machine(args: argparse.Namespace) -> int:
    """Old (REPROLAB_SHARE_CORES=0) against new (defaults), alone and two at once."""
    settings = {"old": {SHARE_VAR: "0"}, "new": {}}
    cells = {(w, s): Cell() for w in args.workloads for s in settings}
    noisy: list[str] = []
    print(f"load average {os.getloadavg()[0]:.2f}; {len(args.workloads)} workloads x "
          f"{args.repeat} repetitions, old and new in turn", flush=True)
    args.deadline = time.monotonic() + args.wait
    for rep in range(args.repeat):
        print(f"repetition {rep + 1}/{args.repeat}", flush=True)
        # the runs alone first, away from the heavy ones at once; who goes first alternates
        order = list(settings) if rep % 2 == 0 else list(reversed(settings))
        for workload in args.workloads:
            for n in (1, 2):
                for name in order:
                    cell = cells[workload, name]
                    times = measure(args, n, workload, name, settings[name], cell, noisy)
                    (cell.alone if n == 1 else cell.together).extend(times)

    def med(values: list[float]) -> float | None:
        return statistics.median(values) if values else None

    def fmt(value: float | None, unit: str = "") -> str:
        return "-" if value is None else f"{value:.2f}{unit}"

    print(f"\n{'workload':<8} {'setting':<7} {'threads':>7} {'alone s/ep':>10} "
          f"{'2 at once':>10} {'at once/alone':>13} {'alone/old alone':>15} {'others':>7}")
    for workload in args.workloads:
        old_alone = med(cells[workload, "old"].alone)
        for name in settings:
            cell = cells[workload, name]
            alone, together = med(cell.alone), med(cell.together)
            ratio = together / alone if alone and together else None
            vs_old = alone / old_alone if alone and old_alone else None
            worst = max(cell.others, default=0.0)
            print(f"{workload:<8} {name:<7} {','.join(sorted(cell.threads)) or '?':>7} "
                  f"{fmt(alone):>10} {fmt(together):>10} {fmt(ratio, 'x'):>13} "
                  f"{fmt(vs_old, 'x'):>15} {worst:>6.2f}{'!' if worst > args.quiet else ' '}"
                  + (f"  ({cell.failed} runs failed or timed out)" if cell.failed else ""))
    print("\nthreads: torch's intra-op threads each run used (a/b: it changed); 2 at once: the "
          "median of both runs; others: the most cores other processes used during one "
          "measurement")
    if noisy:
        print(f"NOT QUIET: {len(noisy)} measurements started on a busy machine (waited "
              f"{args.wait:.0f} s for it in all), e.g. {noisy[0]}; rerun when it is quiet")
    return 0


def compare_budget(args: argparse.Namespace) -> int:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.threads",
        description="Small torch trainings, two at once against one alone: with and without "
                    "the thread budget (default), or two independent runs before and after "
                    "the machine share (--machine).")
    parser.add_argument("--machine", action="store_true",
                        help="two independent runs, old settings (REPROLAB_SHARE_CORES=0) "
                             "against the defaults")
    parser.add_argument("--samples", type=int, default=8000,
                        help="samples an epoch (the budget comparison)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs each run")
    parser.add_argument("--timeout", type=float, default=150,
                        help="seconds for each measurement")
    parser.add_argument("--workloads", type=lambda s: s.split(","), default=list(WORKLOADS),
                        help=f"--machine: comma-separated, of {', '.join(WORKLOADS)}")
    parser.add_argument("--repeat", type=int, default=3, help="--machine: repetitions")
    parser.add_argument("--scale", type=int, default=100,
                        help="--machine: percent of the default sizes "
                             f"({', '.join(f'{k} {v}' for k, v in SIZES.items())} an epoch)")
    parser.add_argument("--quiet", type=float, default=0.5,
                        help="cores other processes may keep busy for a quiet machine")
    parser.add_argument("--wait", type=float, default=120,
                        help="seconds to wait for a quiet machine, in all")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workload", choices=list(WORKLOADS), default="tcn",
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(train(args.samples, args.epochs, args.workload)))
        return 0
    unknown = set(args.workloads) - set(WORKLOADS)
    if unknown:
        parser.error(f"--workloads: unknown {', '.join(sorted(unknown))}")
    for name in WAIT_VARS:  # every run gets the defaults, whatever this shell holds
        os.environ.pop(name, None)
    return compare_machine(args) if args.machine else compare_budget(args)


if __name__ == "__main__":
    sys.exit(main())
