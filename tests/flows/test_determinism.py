"""Same seed, same machine, same thread count: two `dvc repro` runs of the crypto and Quora
pipelines, in two fresh copies of the repo, write byte-identical metrics and the same DVC hash
for every stage output (no wall-clock or run-specific value lands in a DVC-tracked file)."""
import subprocess

import pytest
import yaml

from tests.flows.repo_copy import repo_env, small_repo

pytestmark = pytest.mark.slow
TARGETS = ["crypto_evaluate", "quora_evaluate"]
METRICS = ["metrics/crypto.json", "metrics/quora.json", "reports/crypto/results.json",
           "reports/quora/results.json"]
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def outputs(lock: dict) -> dict[str, dict[str, str]]:
    """stage -> {out path: DVC hash} from a parsed dvc.lock."""
    return {name: {out["path"]: out.get("md5") for out in stage.get("outs", [])}
            for name, stage in lock["stages"].items()}


def test_two_runs_write_identical_metrics_and_outputs(tmp_path_factory, prefect_server):
    repos = [small_repo(tmp_path_factory.mktemp(f"run{i}")) for i in (1, 2)]
    # both at once, one thread each: the machine's two cores, and each run alike
    procs = [subprocess.Popen(["dvc", "repro", *TARGETS], cwd=repo,
                              env=repo_env(prefect_server, PYTHONPATH=str(repo), **ONE_THREAD),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for repo in repos]
    logs = [proc.communicate(timeout=900)[0] for proc in procs]
    for proc, log in zip(procs, logs, strict=True):
        assert proc.returncode == 0, log[-5000:]

    for rel in METRICS:
        first, second = ((repo / rel).read_bytes() for repo in repos)
        assert first == second, f"{rel} differs between two runs"
    locks = [yaml.safe_load((repo / "dvc.lock").read_text()) for repo in repos]
    first, second = (outputs(lock) for lock in locks)
    assert set(first) >= {*TARGETS, "crypto_train", "quora_train"}
    differ = {stage: {p: (h, second[stage].get(p)) for p, h in outs.items()
                      if second[stage].get(p) != h}
              for stage, outs in first.items()}
    assert {s: d for s, d in differ.items() if d} == {}
    assert locks[0] == locks[1]  # deps and params too
