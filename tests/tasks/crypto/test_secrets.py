"""Exchange API credentials never leave the exchange client: a real live ingest through the
crypto_ingest Prefect flow (real ccxt, the local fake exchange, a real Prefect server), then a
search of everything the run left behind for the key and the secret."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd
import pytest

from flows.crypto import FLOWS  # imported at collection: Prefect sets up logging before caplog
from tests.conftest import send_prefect_logs
from tests.fakes.exchange import FakeBinance

ROOT = Path(__file__).resolve().parents[3]
ingest = FLOWS["ingest"]
KEY, SECRET = "KEY-5d1e7b-FLOWSENTINEL", "SECRET-9c04aa-FLOWSENTINEL"


def leaks(text: str) -> list[str]:
    return [name for name, value in (("key", KEY), ("secret", SECRET)) if value in text]


def file_leaks(root: Path) -> dict[str, list[str]]:
    """Every file under `root` that holds the key or secret: raw bytes, and parquet values
    (compressed pages could hide a string from a byte search)."""
    found = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        text = path.read_bytes().decode("latin-1")
        if path.suffix == ".parquet":
            text += pd.read_parquet(path).astype(str).to_csv()
        if leaks(text):
            found[str(path)] = leaks(text)
    return found


def prefect_records(flow_run_id) -> tuple[list[str], str]:
    """The flow run's logs as the Prefect API holds them, and its flow/task run records."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, LogFilter
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # logs go to the API in batches from a background worker
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id={"any_": [flow_run_id]}))
        runs = [client.read_flow_run(flow_run_id).model_dump_json()]
        runs += [r.model_dump_json() for r in client.read_task_runs(
            flow_run_filter=FlowRunFilter(id={"any_": [flow_run_id]}))]
    return [f"{log.name} {log.message}" for log in logs], "\n".join(runs)


@pytest.fixture
def ccxt_logs_to_prefect():
    """Send ccxt's own (DEBUG, header-bearing) request log to the Prefect API too, as
    PREFECT_LOGGING_EXTRA_LOGGERS=ccxt would."""
    from prefect.logging.handlers import APILogHandler

    logger, handler = logging.getLogger("ccxt"), APILogHandler()
    logger.addHandler(handler)
    yield
    logger.removeHandler(handler)


def test_api_keys_never_leave_the_client_in_a_flow_run(prefect_api, prefect_server, tmp_path,
                                                        tmp_path_factory, monkeypatch, caplog,
                                                        capfd, ccxt_logs_to_prefect):
    monkeypatch.setenv("REPROLAB_EXCHANGE_API_KEY", KEY)
    monkeypatch.setenv("REPROLAB_EXCHANGE_SECRET", SECRET)
    monkeypatch.setenv("REPROLAB_PARAMS", str(ROOT / "params.yaml"))
    monkeypatch.chdir(tmp_path)  # the flow writes data/ and reports/ under the working dir
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="prefect")
    with FakeBinance(count=30) as server:
        server.rate_limit_next(1)  # a retry warning carrying the exchange's error text
        overrides = {"crypto.source": "live", "crypto.exchange": "binance",
                     "crypto.live.api_url": server.url, "crypto.live.rate_limit": False,
                     "crypto.live.options": {"fetchMarkets": {"types": ["spot"]}},
                     "crypto.live.since": "2024-01-01T00:00:00Z", "crypto.live.page_limit": 10,
                     "crypto.live.backoff_seconds": 0.01, "crypto.live.max_retries": 2}
        state = ingest(overrides=overrides, return_state=True)
        server.fail_klines(500, times=None)  # then a run that fails: error text, traceback
        server.append(10)
        failed = ingest(overrides=overrides, return_state=True)
        used = [r.api_key for r in server.requests]
    assert state.is_completed(), state.message
    assert failed.is_failed() and "still failing after 2 retries" in failed.message
    assert KEY in used  # the key really went to the exchange, in its header

    records = [prefect_records(s.state_details.flow_run_id) for s in (state, failed)]
    api_text = "\n".join(line for logs, _ in records for line in logs)
    runs = "\n".join(run for _, run in records) + failed.message
    for text in (api_text, caplog.text):  # the logs are all there
        assert "fetching since" in text and "retry 1/2" in text and "Traceback" in text
    assert "'X-MBX-APIKEY': '***'" in api_text  # ccxt's own request log, scrubbed
    report = tmp_path / "reports/crypto/ingest.json"
    assert report.exists() and "source=live" in report.read_text()
    assert not list(tmp_path.rglob("mlruns")) and not list(tmp_path.rglob("mlflow.db"))

    out = capfd.readouterr()
    prefect_home = next(Path(tmp_path_factory.getbasetemp()).glob("prefect-home*"))
    assert {"python log": leaks(caplog.text), "stdout": leaks(out.out),
            "stderr": leaks(out.err), "Prefect API logs": leaks(api_text),
            "Prefect flow/task runs": leaks(runs)} == {
        "python log": [], "stdout": [], "stderr": [], "Prefect API logs": [],
        "Prefect flow/task runs": []}
    assert file_leaks(tmp_path) == {}  # data/, reports/ and anything else the run wrote
    send_prefect_logs()  # what the runs left queued reaches the server's database first
    stored = b"".join(p.read_bytes() for p in prefect_home.rglob("prefect.db*"))
    for run_state in (state, failed):  # the server's database holds these very runs...
        run_id = run_state.state_details.flow_run_id
        assert str(run_id).encode() in stored or run_id.hex.encode() in stored, run_id
    assert file_leaks(prefect_home) == {}  # ...but not the key or secret (WAL included)
    assert file_leaks(Path(os.environ["PREFECT_HOME"])) == {}  # nor this process's home
