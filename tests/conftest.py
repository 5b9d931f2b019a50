"""Shared fixtures: the project on sys.path, telemetry off, a real Prefect server when asked."""
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

pytest_plugins = ["tests.ci_skips", "tests.servers", "tests.s3", "pytester"]

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
VENV_BIN = Path(sys.executable).parent

for key, value in {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "true",
                   "MLFLOW_DISABLE_TELEMETRY": "true",
                   "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
                   "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore"}.items():
    os.environ.setdefault(key, value)


def pytest_configure(config):
    """Prefect's home (profiles, the ephemeral server's database, stored results) is the
    session's own, never the checkout's .prefect/ that `make demo` fills (the Makefile exports
    it); subprocesses inherit it. Its trainings list themselves in a folder of their own
    (tasks/threads.py, the machine share), so what else trains on the machine never changes
    their thread count: the tests that compare two runs bit for bit stay exact."""
    config._reprolab_prefect_home = tempfile.mkdtemp(prefix="reprolab-tests-prefect-")
    os.environ["PREFECT_HOME"] = config._reprolab_prefect_home
    os.environ["REPROLAB_RUNS_DIR"] = os.path.join(config._reprolab_prefect_home, "runs")


def pytest_unconfigure(config):
    home = getattr(config, "_reprolab_prefect_home", None)
    if home is not None:
        shutil.rmtree(home, ignore_errors=True)


def dotted(tree: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}: a YAML mapping's leaves by dotted key (an empty mapping
    is a leaf)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(dotted(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} not healthy after {timeout:.0f} s")


@pytest.fixture(autouse=True)
def _mlflow_tracking_uri_restored():
    """A test (or the code it runs: tasks.tracking.configure) that points MLflow's global
    tracking URI somewhere leaves it as it found it, so no later test writes there."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if "mlflow" in sys.modules and os.environ.get("MLFLOW_TRACKING_URI") != before:
        import mlflow

        mlflow.set_tracking_uri(before)


@pytest.fixture(scope="session")
def encoded_clip(tmp_path_factory) -> Path:
    """A real encoded video made here, like a Kinetics section: 10 s, 340x256, 28 fps H.264
    with AAC audio, index (moov) at the end, from ffmpeg's lavfi sources (a test that needs
    *a* video never depends on, or skips for, the shared samples)."""
    from tasks.media import ffmpeg_path

    path = tmp_path_factory.mktemp("clip") / "testsrc2.mp4"
    subprocess.run([ffmpeg_path(), "-nostdin", "-loglevel", "error",
                    "-f", "lavfi", "-i", "testsrc2=size=340x256:rate=28:duration=10",
                    "-f", "lavfi", "-i", "sine=frequency=440:duration=10",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest",
                    str(path)], check=True, timeout=120)
    return path


@pytest.fixture
def one_torch_thread():
    """Tiny models run fastest on one thread, and do not fight other processes for the cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def server_env(port: int, **extra: str) -> dict[str, str]:
    """The environment of a `prefect server start` on 127.0.0.1:port whose UI talks to that
    same API (as `make server` sets it): the UI reads PREFECT_UI_API_URL, which otherwise
    falls back to PREFECT_SERVER_API_PORT (4200) whatever `--port` says."""
    url = f"http://127.0.0.1:{port}/api"
    return {**os.environ, "PREFECT_API_URL": "", "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_SERVER_API_PORT": str(port), "PREFECT_UI_API_URL": url, **extra}


@contextlib.contextmanager
def background_server(cmd: list[str], log_path: Path, health_url: str, timeout: float,
                      env: dict | None = None, stop_seconds: float = 20):
    """A server process in its own session, its output in log_path: yields once health_url
    answers, then stops it (SIGTERM, then SIGKILL after stop_seconds)."""
    log = open(log_path, "w")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        wait_for_http(health_url, timeout, proc)
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(stop_seconds)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """A real `prefect server start` on 127.0.0.1 (free port); yields its API URL."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    with background_server([str(VENV_BIN / "prefect"), "server", "start"], home / "server.log",
                           f"{url}/health", 120, server_env(port, PREFECT_HOME=str(home))):
        yield url


@pytest.fixture
def prefect_api(prefect_server):
    """Point this process's Prefect client at the session server (no ephemeral server here)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        yield prefect_server
        send_prefect_logs()


def send_prefect_logs() -> None:
    """Send the logs and events this process's flow runs left queued, while their server is up:
    left for exit, they meet a stopped server and retry for a minute."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    EventsWorker.drain_all(timeout=10)
