"""`make demo`: run every pipeline end to end on `source: demo` (offline) and print the results.

    python -m flows.demo [--help]        (also `reprolab demo`)

The pipelines' flows are imported when the demo runs, so `--help` answers at once.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tasks.pipeline import declaration
from tasks.storage import read_json

console = Console()


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, dict) and set(value) == {"low", "high"}:
        return f"[{value['low']:.3f}, {value['high']:.3f}]"
    return str(value)


def crypto_rows(metrics: dict) -> list[tuple[str, str, str]]:
    test, base, audit, bt = (metrics["test"], metrics["baselines"], metrics["leak_audit"],
                             metrics["backtest"])
    rows = [
        ("test accuracy (95% CI)", f"{test['accuracy']:.3f} {_fmt(test['accuracy_ci'])}",
         metrics["verdict"]["text"]),
        ("baselines: majority / persistence / logistic",
         " / ".join(f"{base[k]['accuracy']:.3f}" for k in ("majority", "persistence", "logistic")),
         "the model must beat these to claim skill"),
        ("test AUC / MCC", f"{test['auc']:.3f} / {test['mcc']:.3f}", ""),
        ("backtest Sharpe vs buy-and-hold", f"{bt['sharpe']:.2f} vs {bt['buy_and_hold_sharpe']:.2f}",
         f"long/flat, {bt['fee_bps']:.0f} bps fees"),
    ]
    if audit:
        rows.append(("leak audit: leaky vs leak-free accuracy",
                     f"{audit['leaky']['accuracy']:.3f} vs {audit['leak_free']['accuracy']:.3f}",
                     f"horizon {audit['horizon']}: the leaky score is an illusion"))
    reg = metrics["regression_illusion"]
    rows.append(("price regressor R² vs copy-last-price R²",
                 f"{reg['regressor']['r2']:.4f} vs {reg['persistence']['r2']:.4f}",
                 f"skill over persistence {reg['skill_vs_persistence']:+.4f}"))
    return rows


def quora_rows(metrics: dict) -> list[tuple[str, str, str]]:
    test, majority = metrics["test"], metrics["baselines"]["majority"]["accuracy"]
    rows = [(f"test accuracy (95% CI), {metrics['config']}",
             f"{test['accuracy']:.3f} {_fmt(test['accuracy_ci'])}",
             f"majority baseline {majority:.3f}"),
            ("test F1 / ROC-AUC", f"{test['f1']:.3f} / {test['roc_auc']:.3f}",
             f"threshold {test['threshold']:.2f} chosen on dev")]
    logistic = metrics["baselines"]["logistic"]
    rows.append(("baseline: logistic regression on pair features (95% CI)",
                 f"{logistic['accuracy']:.3f} {_fmt(logistic['accuracy_ci'])}",
                 metrics["verdict"]["text"]))
    for row in metrics["table"]:
        if not row["main"]:
            rows.append((f"  table: {row['config']}", f"{row['accuracy']:.3f}",
                         f"F1 {row['f1']:.3f}, AUC {row['roc_auc']:.3f}"))
    return rows


def kinetics_rows(metrics: dict) -> list[tuple[str, str, str]]:
    report = read_json(Path("reports/kinetics/data.json"))
    splits = ", ".join(f"{k} {v}" for k, v in sorted(report["per_split"].items()))
    test, views = metrics["test"], f"{metrics['views']} views a clip"
    rows = [("clips extracted (synthetic motion classes)",
             f"{report['clips']} clips, {report['classes']} classes",
             f"{splits}; {report['missing']} missing (see the ledgers under data/kinetics/)"),
            ("BesNet Top-1 (95% CI) / Top-5",
             f"{test['top1']:.3f} {_fmt(test['top1_ci'])} / {test['top5']:.3f}",
             f"{metrics['clips']} {metrics['test_split']} clips, {views}; "
             f"chance {metrics['baselines']['chance']['top1']:.3f}")]
    if "frame_model" in metrics["baselines"]:
        base = metrics["baselines"]["frame_model"]
        rows.append(("frame baseline Top-1 (95% CI) / Top-5",
                     f"{base['top1']:.3f} {_fmt(base['top1_ci'])} / {base['top5']:.3f}",
                     "per-frame features pooled over time: blind to the order of frames"))
    rows.append(("verdict", "", metrics["verdict"]["text"]))
    if "ablation" in metrics:
        abl = metrics["ablation"]["dilation"]
        rows.append(("ablation: random vs fixed temporal dilation",
                     f"{abl['random']:.3f} vs {abl['fixed']:.3f}",
                     f"difference {abl['difference']:+.3f} {_fmt(abl['difference_ci'])}"
                     f"{'' if abl['significant'] else ' (the interval includes 0)'}"))
    return rows


def diagnosis_row(metrics: dict) -> list[tuple[str, str, str]]:
    """Train / train-dev / dev / test error and what the largest gap says to do next."""
    diagnosis = metrics.get("diagnosis")
    if not diagnosis:
        return []
    names = [k for k in ("train", "train_dev", "dev", "test") if k in diagnosis["errors"]]
    largest = diagnosis["largest"]
    return [(f"error {' / '.join(n.replace('_', '-') for n in names)}",
             " / ".join(f"{diagnosis['errors'][n]:.3f}" for n in names),
             f"largest gap: {largest.replace('_', ' ')} {diagnosis[largest]:+.3f} -> "
             f"{diagnosis['next_step'].split(':')[0]}")]


def references_row(metrics: dict) -> list[tuple[str, str, str]]:
    """The research notes' numbers beside ours, and what theirs were measured on."""
    refs = metrics.get("references") or []
    if not refs:
        return []
    lines = [f"{r['theirs']:.2f} / {'—' if r['ours'] is None else format(r['ours'], '.3f')}"
             f"  {r['label']}" for r in refs]
    return [("research notes vs ours", "\n".join(lines), refs[0]["measured_on"])]


# how the demo prints each declared pipeline's metrics (tasks/<pipeline>/pipeline.py)
PIPELINES: dict[str, Callable[[dict], list[tuple[str, str, str]]]] = {
    "crypto": crypto_rows, "quora": quora_rows, "kinetics": kinetics_rows}


def parse_args(argv: list[str] | None, prog: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=prog, description="Run every pipeline end to end as Prefect flows driving "
        "`dvc repro` (params.yaml as it is: `source: demo` by default, generated data, offline), "
        "then print a table of the headline metrics and where to look. Reruns only what is "
        "stale.",
        epilog=f"pipelines, in this order: {', '.join(PIPELINES)}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, prog: str = "python -m flows.demo") -> int:
    parse_args(argv, prog)
    table = Table(title="ReproLab demo results (source: demo)", show_lines=True)
    for col in ("pipeline", "metric", "value", "note"):
        table.add_column(col)
    for name, rows in PIPELINES.items():
        start = time.time()
        console.rule(f"[bold]{name} pipeline")
        # flows.<name> imports flows.common first: telemetry off before Prefect is imported
        result = importlib.import_module(f"flows.{name}").pipeline()
        console.print(f"{name}: stages run {result['stages_run'] or 'none (up to date)'} "
                      f"in {time.time() - start:.0f} s")
        metrics = read_json(declaration(name).results_file)
        shown = rows(metrics) + diagnosis_row(metrics) + references_row(metrics)
        for metric, value, note in shown:
            table.add_row(name, metric, value, note)
    console.rule("[bold]report site")
    from flows.report import refresh_site
    from tasks.site import SITE

    refresh_site()
    console.print(table)
    console.print(
        "Where to look:\n"
        f"  results   {(Path.cwd() / SITE / 'index.html').as_uri()}   (open in a browser; "
        "offline, one page per pipeline)\n"
        "  metrics   .venv/bin/dvc metrics show      (plots: plots/<pipeline>/*.png)\n"
        "  runs      .venv/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db"
        "  -> http://127.0.0.1:5000\n"
        "  flows     make server  -> http://127.0.0.1:4200 (this demo's flow runs, and every "
        "later one until make stop)\n"
        "  models    mlflow.pyfunc.load_model('models:/quora-duplicates/latest')"
        "  (README: Use a trained model)\n"
        "  rebuild   .venv/bin/dvc repro             (reruns only what is stale)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
