"""Crypto training memory: windows materialised (the old path) against windows sliced on access.

Each run is a fresh subprocess: demo candles of N one-minute bars -> features and labels -> the
split stage (tasks.crypto.prepare.build_splits, into a temporary folder) -> the training data
path: every segment's windows, one epoch of a small network over every training window (and
validation), then the network's P(up) for every sample of every segment. Peak RSS is the
child's VmHWM: once over the data stages, then (reset) over the training path alone, which
starts with the split stage's outputs loaded, as the train stage does. "eager" is the old path
(sliding_window_view, then a contiguous copy of every segment's windows, and again per segment
for the predictions); "lazy" is the pipeline's (tasks.crypto.split.Windows). Eager at 5M bars
would need most of this machine: it is extrapolated from 1M, not run.

--stages runs the pipeline's own stages instead (ingest, features, split, train: baselines,
network, walk-forward, leak audit, price regressor, the MLflow model), as they are now, with a
small network for one epoch, and prints each stage's peak RSS: minutes at 5M bars.

    python -m benchmarks.crypto_memory [--sizes 1000000,5000000] [--eager-sizes 1000000]
        [--batch-size 1024] [--stages]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from benchmarks.video_step import peak_rss_mib

MODEL = {"kind": "mlp", "hidden": 16, "layers": 1, "dropout": 0.0}


def eager_windows(matrix: np.ndarray, positions: np.ndarray, window: int) -> np.ndarray:
    """The windows as the pipeline built them before: a strided view, then a contiguous copy."""
    view = np.lib.stride_tricks.sliding_window_view(matrix, window, axis=0)  # (T-w+1, F, w)
    return np.ascontiguousarray(view[positions - window + 1].transpose(0, 2, 1))


def build_data(bars: int, folder: Path):
    """Features and labels of `bars` demo candles, through the real split stage; its outputs."""
    from tasks.config import CryptoSettings
    from tasks.crypto.candles import demo_candles
    from tasks.crypto.features import add_labels, compute_features
    from tasks.crypto.prepare import build_splits, load_segments
    from tasks.storage import write_parquet

    settings = CryptoSettings()
    candles = demo_candles(bars, datetime(2015, 1, 1, tzinfo=UTC), "1m", 0)
    frame = add_labels(compute_features(candles, settings.features), settings.label)
    del candles
    write_parquet(frame, folder / "features.parquet")
    del frame
    build_splits.fn(settings, folder / "features.parquet", folder / "splits")
    inputs, samples, _ = load_segments(folder / "splits")
    return settings, inputs, samples


def train_settings(settings, batch_size: int):
    return (settings.model.model_copy(update=MODEL),
            settings.train.model_copy(update={"epochs": 1, "batch_size": batch_size}))


def lazy_path(settings, inputs: np.ndarray, samples, batch_size: int) -> int:
    """The pipeline's path (tasks.crypto.training): Windows per segment, sliced on access."""
    from tasks.crypto.modeling import predict_proba, train_classifier
    from tasks.crypto.training import segment_data

    data = segment_data(inputs, samples, settings.split.window)
    model_cfg, train_cfg = train_settings(settings, batch_size)
    model = train_classifier(model_cfg, train_cfg, {k: v[:2] for k, v in data.items()}, 0,
                             torch.device("cpu")).model
    return sum(len(predict_proba(model, x, torch.device("cpu"))) for x, _, _ in data.values())


def eager_path(settings, inputs: np.ndarray, samples, batch_size: int) -> int:
    """The old path: every segment's windows materialised, and again for its predictions."""
    from tasks.crypto.modeling import build_model
    from tasks.train import FitConfig, fit, predict, seed_everything, tensor_loader

    window, cpu = settings.split.window, torch.device("cpu")
    data = {}
    for name, part in samples.groupby("segment", sort=False):
        pos = part["position"].to_numpy()
        data[name] = (eager_windows(inputs, pos, window), part["target"].to_numpy(), pos)
    model_cfg, train_cfg = train_settings(settings, batch_size)
    seed_everything(0)
    model = build_model(model_cfg, inputs.shape[1], window)
    loaders = (tensor_loader(*data["train"][:2], batch_size, True, 0),
               tensor_loader(*data["val"][:2], batch_size, False, 0))
    model = fit(model, *loaders, torch.nn.BCEWithLogitsLoss(),
                FitConfig.from_settings(train_cfg, 0), cpu).model
    scored = 0
    for _, _, pos in data.values():
        x = eager_windows(inputs, pos, window)
        scored += len(predict(model, tensor_loader(x, np.zeros(len(x)), 1024, False, 0), cpu))
    return scored


def child(mode: str, bars: int, batch_size: int) -> dict:
    """One measured run (in its own process): data stages, then the training data path."""
    import logging

    logging.disable(logging.INFO)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        settings, inputs, samples = build_data(bars, Path(tmp))
    data_peak, data_seconds = peak_rss_mib(), time.perf_counter() - started
    reset_peak_rss()
    path = lazy_path if mode == "lazy" else eager_path
    scored = path(settings, inputs, samples, batch_size)
    return {"mode": mode, "bars": bars, "samples": int(len(samples)), "scored": scored,
            "train_windows": int((samples["segment"] == "train").sum()),
            "series_mib": inputs.nbytes / 2**20, "data_peak_mib": data_peak,
            "peak_mib": peak_rss_mib(), "data_seconds": data_seconds,
            "seconds": time.perf_counter() - started}


def stage_calls(params) -> dict:
    """What each crypto stage up to train runs (its Prefect tasks' functions, no server)."""
    from tasks.crypto.featurize import build_features
    from tasks.crypto.ingest import ingest_candles
    from tasks.crypto.paths import CryptoPaths
    from tasks.crypto.prepare import build_splits
    from tasks.crypto.training import train_models
    from tasks.storage import write_json

    paths, crypto, common = CryptoPaths(), params.crypto, params.common

    def ingest() -> None:
        report = ingest_candles.fn(crypto, paths.raw, common.seed)
        write_json({"partitions": report["partitions"]}, paths.partitions)

    def train() -> None:
        paths.artifacts.mkdir(parents=True, exist_ok=True)
        train_models.fn(crypto, common, paths.features, paths.splits, paths.artifacts,
                        torch.device("cpu"), paths.partitions)

    return {"crypto_ingest": ingest,
            "crypto_features": lambda: build_features.fn(crypto, paths.partitions,
                                                         paths.features),
            "crypto_split": lambda: build_splits.fn(crypto, paths.features, paths.splits),
            "crypto_train": train}


def stages_child(bars: int, batch_size: int) -> dict:
    """The crypto stages up to train, in a temporary project folder; each stage's peak RSS."""
    import logging
    import os

    from tasks.config import load_params

    logging.disable(logging.INFO)
    root = Path(__file__).resolve().parents[1]
    peaks, seconds = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        params = load_params(root / "params.yaml", overrides={
            "crypto.timeframe": "1m", "crypto.demo.n_bars": bars, "crypto.train.epochs": 1,
            "crypto.demo.start": "2016-01-01T00:00:00Z",  # 5M minutes end before now
            "crypto.train.batch_size": batch_size, "common.device": "cpu",
            "common.mlflow.tracking_uri": f"sqlite:///{tmp}/mlflow.db",
            "common.mlflow.artifact_dir": f"{tmp}/mlartifacts",
            **{f"crypto.model.{k}": v for k, v in MODEL.items()}})
        os.chdir(tmp)
        for name, call in stage_calls(params).items():
            reset_peak_rss()
            started = time.perf_counter()
            call()
            peaks[name], seconds[name] = peak_rss_mib(), time.perf_counter() - started
        os.chdir(root)
    return {"bars": bars, "peak_mib": peaks, "seconds": seconds}


def report_stages(run: dict, total_gib: float) -> None:
    print(f"\nthe crypto stages at {run['bars']:,} one-minute bars (small network, one epoch); "
          f"machine memory {total_gib:.1f} GiB")
    for name, peak in run["peak_mib"].items():
        print(f"{name:>16}: peak RSS {peak:>7,.0f} MiB ({peak / 1024 / total_gib:5.1%} of the "
              f"machine), {run['seconds'][name]:5.0f} s")


def reset_peak_rss() -> None:
    """Start this process's VmHWM over from its current RSS (Linux: clear_refs 5)."""
    Path("/proc/self/clear_refs").write_text("5")


def measure(mode: str, bars: int, batch_size: int) -> dict:
    out = subprocess.run([sys.executable, "-m", "benchmarks.crypto_memory", "--child", mode,
                          "--sizes", str(bars), "--batch-size", str(batch_size)],
                         cwd=Path(__file__).resolve().parents[1],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{mode} run at {bars} bars failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 2**20
    raise RuntimeError("no MemTotal in /proc/meminfo")


def report(runs: list[dict], total_gib: float) -> None:
    by = {(r["mode"], r["bars"]): r for r in runs}
    sizes = sorted({r["bars"] for r in runs})
    print(f"\nmachine memory {total_gib:.1f} GiB (a third: {total_gib / 3 * 1024:,.0f} MiB); "
          "peak RSS in MiB of the data stages (features + split) and of the training path")
    print(f"{'bars':>10}{'windows':>11}{'series':>8}{'data':>8}{'train eager':>13}"
          f"{'train lazy':>12}{'eager/lazy':>12}{'lazy/machine':>14}")
    for bars in sizes:
        lazy, eager = by.get(("lazy", bars)), by.get(("eager", bars))
        first = lazy or eager
        line = (f"{bars:>10,}{first['samples']:>11,}{first['series_mib']:>8,.0f}"
                f"{first['data_peak_mib']:>8,.0f}")
        line += f"{eager['peak_mib']:>13,.0f}" if eager else f"{'-':>13}"
        line += f"{lazy['peak_mib']:>12,.0f}" if lazy else f"{'-':>12}"
        line += f"{eager['peak_mib'] / lazy['peak_mib']:>11.2f}x" if eager and lazy else " " * 12
        if lazy:
            line += f"{lazy['peak_mib'] / 1024 / total_gib:>14.1%}"
        print(line)
    extrapolate(by, sizes, total_gib)
    print("\nseconds (data stages + training path): " + ", ".join(
        f"{r['mode']} {r['bars']:,}: {r['data_seconds']:.0f} + "
        f"{r['seconds'] - r['data_seconds']:.0f}" for r in runs))


def extrapolate(by: dict, sizes: list[int], total_gib: float) -> None:
    """Eager peak at the sizes run lazily only: the lazy peak plus the windows' extra, scaled
    from the largest size both ran at (the windows grow with the samples)."""
    both = [b for b in sizes if ("eager", b) in by and ("lazy", b) in by]
    if not both:
        return
    ref = max(both)
    extra = (by[("eager", ref)]["peak_mib"] - by[("lazy", ref)]["peak_mib"]) / by[("lazy", ref)][
        "samples"]
    for bars in sizes:
        if ("eager", bars) in by or ("lazy", bars) not in by:
            continue
        lazy = by[("lazy", bars)]
        guess = lazy["peak_mib"] + extra * lazy["samples"]
        print(f"{bars:>10,}: eager EXTRAPOLATED, not run: the lazy peak + {extra * 1e6:,.0f} MiB "
              f"per million windows (as at {ref:,} bars) = ~{guess:,.0f} MiB, "
              f"{guess / 1024 / total_gib:.0%} of the machine")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000000,5000000")
    parser.add_argument("--eager-sizes", default="1000000")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--stages", action="store_true",
                        help="the pipeline's stages (lazy only) instead of the training path")
    parser.add_argument("--child", choices=("eager", "lazy", "stages"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.child == "stages":
        print(json.dumps(stages_child(sizes[0], args.batch_size)))
        return
    if args.child:
        print(json.dumps(child(args.child, sizes[0], args.batch_size)))
        return
    if args.stages:
        for bars in sizes:
            report_stages(measure("stages", bars, args.batch_size), machine_gib())
        return
    runs = []
    for bars in sizes:
        modes = ["eager", "lazy"] if str(bars) in args.eager_sizes.split(",") else ["lazy"]
        for mode in modes:
            runs.append(measure(mode, bars, args.batch_size))
            r = runs[-1]
            print(f"  {mode} at {bars:,} bars: {r['train_windows']:,} training windows, "
                  f"{r['scored']:,} scored; peak RSS data stages {r['data_peak_mib']:,.0f} MiB, "
                  f"training path {r['peak_mib']:,.0f} MiB ({r['seconds']:.0f} s)", flush=True)
    report(runs, machine_gib())


if __name__ == "__main__":
    main()
