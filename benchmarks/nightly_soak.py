"""A month of nights on one checkout: the real nightly flow, night after night, on sources
that grow like real ones, with the nights that go wrong in practice.

    python -m benchmarks.nightly_soak [--nights 30] [--pipelines crypto,quora,kinetics]

A copy of this checkout (CPU-small params, its own MLflow store and DVC cache) reads a
Binance-style candle export that gains a day of hourly candles each night and a Quora dump that
gains 100 pairs; Kinetics renders more demo clips every fifth night. Among the nights:

- a quiet night (no new data anywhere): nothing retrained, seconds;
- a corrupt night (a broken candle feed at 1000x the price; Quora pairs with empty questions):
  stopped before training; the next night's sources are fixed and the held rows pass;
- a worse challenger (a learning rate that leaves every model untrained): never promoted;
  the next night restores the learning rates;
- a drift night (a day of candles at 8x the volatility; Quora questions four times as long):
  stopped; the next night a person accepts it (`--accept-data`).

Per night and pipeline it prints the rows checked, the stages rerun, both models' metric on the
same rows, the difference with its 95% interval, the decision and the seconds; at the end the
champion timeline and the checks that must hold (exit status 1 if one does not).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
PYTHON = ROOT / ".venv" / "bin" / "python"
START_BARS, BARS_A_NIGHT = 2400, 24
START_PAIRS, PAIRS_A_NIGHT = 1200, 100
START_CLIPS, CLIPS_EVERY = 3, 5
WORSE_LR = 1e-9
MIN_NIGHTS, MAX_NIGHTS = 9, 60  # the sources are cut from series of MAX_NIGHTS days


@dataclass
class Plan:
    """Which night does what, for `nights` nights."""

    nights: int
    special: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not MIN_NIGHTS <= self.nights <= MAX_NIGHTS:
            raise SystemExit(f"--nights: {MIN_NIGHTS} (every kind of night, apart) to "
                             f"{MAX_NIGHTS}")
        step = max(2, self.nights // 5)
        follow = {"corrupt": "fixed", "worse": "restored", "drift": "accepted"}
        for i, kind in enumerate(("quiet", "corrupt", "worse", "drift"), start=1):
            self.special[i * step] = kind
            if kind in follow:
                self.special[i * step + 1] = follow[kind]

    def kind(self, night: int) -> str:
        return self.special.get(night, "normal")


# ---------------------------------------------------------------- the growing sources
def candles_for(night: int, drift_nights: list[int]) -> pd.DataFrame:
    """The export as it stands after `night` nights (no growth on quiet nights is the
    caller's business): hourly candles, a drifted day where a drift night added them."""
    from tasks.crypto.candles import demo_candles

    total = START_BARS + BARS_A_NIGHT * night
    frame = demo_candles(START_BARS + BARS_A_NIGHT * MAX_NIGHTS, pd.Timestamp("2024-01-01", tz="UTC")
                         .to_pydatetime(), "1h", seed=11).iloc[:total].copy()
    for drift in drift_nights:  # 8x the day's moves around its first open
        rows = slice(START_BARS + BARS_A_NIGHT * (drift - 1), START_BARS + BARS_A_NIGHT * drift)
        day = frame.iloc[rows]
        base = float(day["open"].iloc[0])
        for column in ("open", "high", "low", "close"):
            frame.loc[day.index, column] = base * np.exp(8 * np.log(day[column] / base))
    return frame


def pairs_for(night: int, drift_nights: list[int]) -> pd.DataFrame:
    from tasks.quora.ingest import demo_pairs

    frame = demo_pairs(START_PAIRS + PAIRS_A_NIGHT * MAX_NIGHTS, seed=5).iloc[
        :START_PAIRS + PAIRS_A_NIGHT * night].copy()
    for drift in drift_nights:  # questions four times as long
        rows = frame.index[START_PAIRS + PAIRS_A_NIGHT * (drift - 1):
                           START_PAIRS + PAIRS_A_NIGHT * drift]
        for column in ("question1", "question2"):
            frame.loc[rows, column] = (frame.loc[rows, column] + " ") * 4
    return frame


def write_sources(work: Path, grown: int, drift_nights: list[int], corrupt: bool) -> None:
    candles = candles_for(grown, drift_nights)
    pairs = pairs_for(grown, drift_nights)
    if corrupt:  # tonight's feed: three consistent candles at 1000x; 30 empty questions
        candles.iloc[-3:, 1:5] *= 1000.0
        pairs.iloc[-30:, pairs.columns.get_loc("question2")] = ""
    candles.to_csv(work / "BTCUSDT-1h.csv", index=False)
    pairs.to_csv(work / "quora.tsv", sep="\t", index=False)


# ---------------------------------------------------------------- the checkout
def make_checkout(work: Path, pipelines: list[str]) -> Path:
    from tests.flows.repo_copy import SMALL, copy_repo, merge

    repo = copy_repo(work / "repo", ROOT)
    params = merge(yaml.safe_load((repo / "params.yaml").read_text()), SMALL)
    merge(params, {"crypto": {"source": "file", "file": {
        "path": str(work / "BTCUSDT-1h.csv"), "format": "auto", "exchange": "binance",
        "symbol": "BTC/USDT"}}, "quora": {"source": "file", "file": {
            "path": str(work / "quora.tsv")}},
        "kinetics": {"demo": {"clips_per_class": START_CLIPS}},
        "nightly": {"pipelines": pipelines}})
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "-c", "user.name=soak", "-c", "user.email=soak@localhost", "commit",
                    "-qam", "soak params"], cwd=repo, check=True)
    return repo


def start_prefect(work: Path) -> tuple[subprocess.Popen, str]:
    from tests.conftest import free_port, server_env, wait_for_http

    port = free_port()
    home = work / "prefect-home"
    home.mkdir()
    log = open(home / "server.log", "w")  # noqa: SIM115 - the server's, for its lifetime
    proc = subprocess.Popen([str(ROOT / ".venv/bin/prefect"), "server", "start"],
                            env=server_env(port, PREFECT_HOME=str(home)), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    wait_for_http(f"{url}/health", 180, proc)
    return proc, url


# ---------------------------------------------------------------- one night
def night_args(kind: str, night: int, pipelines: list[str], lrs: dict[str, float]) -> list[str]:
    sets: dict[str, object] = {}
    if "kinetics" in pipelines and kind != "quiet" and night % CLIPS_EVERY == 0:
        sets["kinetics.demo.clips_per_class"] = START_CLIPS + night // CLIPS_EVERY
    if kind == "worse":
        sets.update({f"{p}.train.lr": WORSE_LR for p in pipelines})
    if kind == "restored":
        sets.update({f"{p}.train.lr": lrs[p] for p in pipelines})
    args = [arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")]
    return [*args, "--accept-data"] if kind == "accepted" else args


def run_night(repo: Path, env: dict, args: list[str]) -> tuple[int, float, dict, str]:
    started = time.monotonic()
    proc = subprocess.run([str(PYTHON), "-m", "flows.nightly", *args], cwd=repo, env=env,
                          capture_output=True, text=True)
    seconds = time.monotonic() - started
    record = json.loads((repo / "reports/nightly/summary.json").read_text())
    return proc.returncode, seconds, record, proc.stderr[-2000:]


def decision(row: dict) -> str:
    if "error" in row:
        return "FAILED"
    if "stopped" in row:
        return "stopped"
    verdict = row["verdict"]
    if verdict["challenger"] is None:
        return "no new model"
    return "promoted" if verdict["promoted"] else "kept"


def fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def line(night: int, kind: str, row: dict, seconds: float) -> str:
    verdict = row.get("verdict") or {}
    diff = verdict.get("difference")
    interval = (f"{diff['mean']:+.3f} [{diff['low']:+.3f}, {diff['high']:+.3f}]"
                if diff else "")
    checked = (row.get("checks") or {}).get("rows", "")
    stages = len(row.get("stages_run", []))
    return (f"{night:>5} {kind:<9} {row['pipeline']:<9} {checked!s:>6} {stages:>6} "
            f"{fmt(verdict.get('old')):>9} {fmt(verdict.get('new')):>10} {interval:<26} "
            f"{decision(row):<13} {seconds:>7.0f}")


HEADER = (f"{'night':>5} {'kind':<9} {'pipeline':<9} {'rows':>6} {'stages':>6} "
          f"{'champion':>9} {'challenger':>10} {'difference [95% CI]':<26} "
          f"{'decision':<13} {'seconds':>7}")


# ---------------------------------------------------------------- what must hold
def verdicts(history: list[tuple[int, str, dict, float, int]]) -> list[tuple[str, bool]]:
    rows = [(n, kind, row, s, rc) for n, kind, record, s, rc in history
            for row in record["pipelines"]]
    by_kind = {kind: [r for r in rows if r[1] == kind] for kind in
               ("quiet", "corrupt", "worse", "drift", "fixed", "accepted")}
    checks = [
        ("no worse model promoted: the worse night promoted nothing",
         all(decision(r[2]) != "promoted" for r in by_kind["worse"])),
        ("the corrupt night stopped crypto and Quora before training, with reasons",
         all("stopped" in r[2] and "stages_run" not in r[2] and r[2]["checks"]["reasons"]
             for r in by_kind["corrupt"] if r[2]["pipeline"] in ("crypto", "quora"))),
        ("the drift night stopped crypto and Quora before training, with reasons",
         all("stopped" in r[2] and any("drift" in x for x in r[2]["checks"]["reasons"])
             for r in by_kind["drift"] if r[2]["pipeline"] in ("crypto", "quora"))),
        ("the night after the corrupt one passed its checks (the fixed rows released)",
         all(r[2].get("checks", {}).get("passed") for r in by_kind["fixed"])),
        ("the quiet night retrained nothing",
         all(r[2].get("stages_run") == [] for r in by_kind["quiet"])),
        ("no night failed for any other reason",
         not any("error" in r[2] for r in rows)),
    ]
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.nightly_soak",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--nights", type=int, default=30)
    parser.add_argument("--pipelines", default="crypto,quora,kinetics")
    parser.add_argument("--workdir", type=Path, help="keep the checkout here (default: a "
                        "temporary folder, removed at the end)")
    args = parser.parse_args(argv)
    pipelines = args.pipelines.split(",")
    plan = Plan(args.nights)
    with tempfile.TemporaryDirectory(prefix="reprolab-soak-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        return soak(work, plan, pipelines)


def soak(work: Path, plan: Plan, pipelines: list[str]) -> int:
    write_sources(work, 0, [], corrupt=False)
    repo = make_checkout(work, pipelines)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    lrs = {p: params[p]["train"]["lr"] for p in pipelines}
    server, url = start_prefect(work)
    env = {**os.environ, "PREFECT_API_URL": url, "PATH": f"{PYTHON.parent}:{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    history, grown, drifts = [], 0, []
    print(f"soak: {plan.nights} nights of {', '.join(pipelines)} in {repo}; special nights "
          f"{dict(sorted(plan.special.items()))}", flush=True)
    print(HEADER, flush=True)
    try:
        for night in range(1, plan.nights + 1):
            kind = plan.kind(night)
            if kind != "quiet":
                grown += 1
                drifts += [grown] if kind == "drift" else []
            write_sources(work, grown, drifts, corrupt=kind == "corrupt")
            code, seconds, record, err = run_night(repo, env, night_args(kind, night, pipelines,
                                                                        lrs))
            history.append((night, kind, record, seconds, code))
            for row in record["pipelines"]:
                print(line(night, kind, row, seconds), flush=True)
            if code not in (0, 2):
                print(f"  night {night} exited {code}: {err}", flush=True)
            if night == 1:
                first_champions(repo, env, record)
        return report(repo, env, history, pipelines, plan)
    finally:
        os.killpg(server.pid, signal.SIGTERM)


def first_champions(repo: Path, env: dict, record: dict) -> None:
    """Where the first night's model did not beat its strongest baseline (small models on
    small data), a person promotes it, so that every later night has a champion to beat."""
    for row in record["pipelines"]:
        verdict = row.get("verdict") or {}
        if verdict.get("challenger") and not verdict.get("promoted"):
            out = subprocess.run([str(PYTHON), "-m", "flows.cli", "promote", row["pipeline"],
                                  verdict["challenger"], "--reason", "soak: a first champion"],
                                 cwd=repo, env=env, capture_output=True, text=True)
            said = (out.stdout or out.stderr).strip().splitlines() or [""]
            print(f"  by hand: {said[-1]}", flush=True)


def report(repo: Path, env: dict, history: list, pipelines: list[str], plan: Plan) -> int:
    print("\nchampion timelines:")
    for name in pipelines:
        out = subprocess.run([str(PYTHON), "-m", "flows.cli", "champion", name], cwd=repo,
                             env=env, capture_output=True, text=True)
        print(out.stdout or out.stderr)
    from tasks.pipeline import declaration

    targets = [declaration(name).last.name for name in pipelines]  # and what they depend on
    status = subprocess.run([str(ROOT / ".venv/bin/dvc"), "status", "--json", "--with-deps",
                             *targets], cwd=repo, env=env, capture_output=True, text=True)
    stale = set(json.loads(status.stdout or "{}"))
    nights = [p for p in (repo / "reports/nightly/nights").glob("*.json")
              if not p.name.endswith("-by-hand.json")]
    quiet = [s for n, kind, _, s, _ in history if kind == "quiet"]
    checks = [*verdicts(history),
              (f"every night has its record ({len(nights)} of {plan.nights})",
               len(nights) == plan.nights),
              (f"dvc status clean at the end ({sorted(stale) or 'clean'})", not stale)]
    print(f"quiet night: {', '.join(f'{s:.0f} s' for s in quiet)}; "
          f"median night {np.median([s for _, _, _, s, _ in history]):.0f} s")
    for text, ok in checks:
        print(f"  {'ok ' if ok else 'NOT'} {text}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
