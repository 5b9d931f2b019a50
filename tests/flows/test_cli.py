"""The stage CLI: bad params and bad input end in one clear error line and exit code 2."""
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def _stage(args: list[str], cwd, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "REPROLAB_PARAMS": str(ROOT / "params.yaml"),
           **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "flows.crypto", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_bad_param_fails_fast_naming_the_key(tmp_path):
    proc = _stage(["split", "--set", "crypto.split.test_fraction=1.5"], tmp_path)
    assert proc.returncode == 2
    assert "crypto.split.test_fraction: must be < 1" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "data").exists()  # nothing ran


def test_malformed_override_is_rejected(tmp_path):
    proc = _stage(["split", "--set", "crypto.split.window"], tmp_path)
    assert proc.returncode == 2 and "expected key.path=value" in proc.stderr


@pytest.mark.slow
def test_bad_input_file_is_a_clear_error_from_the_flow(tmp_path, prefect_server):
    bad = tmp_path / "export.csv"
    bad.write_text("time,price\n1,2\n")
    proc = _stage(["ingest", "--set", "crypto.source=file", "--set", f"crypto.file.path={bad}"],
                  tmp_path, {"PREFECT_API_URL": prefect_server})
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: crypto ingest:") and str(bad) in last
    assert "missing column(s)" in last
