"""The operator's view: `make server PREFECT_PORT=<a free port>` serves the API and the UI on
that port, and the UI, opened in headless Chromium, talks to that API: its runs page lists a
flow run made here, with no "can't connect" banner (a UI looking for the API on the default
port 4200 shows one)."""
import os
import subprocess
import uuid

import httpx
import pytest
from prefect import flow
from prefect.settings import PREFECT_API_URL, temporary_settings

from tests.conftest import ROOT, VENV_BIN, free_port, send_prefect_logs
from tests.flows.browser import chrome

CONNECT_ERRORS = ("Can't connect to Server API", "Unable to connect to Prefect server")


def make(target: str, env: dict, *args: str) -> subprocess.CompletedProcess:
    # -o: the venv is the test's own; never rebuild it
    proc = subprocess.run(["make", "-o", f"{VENV_BIN}/.installed", target,
                           f"VENV={VENV_BIN.parent}", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"make {target}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`make server` (and its worker) on a free port, home in a temporary folder: base URL."""
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path_factory.mktemp("ui-home")),
           "REPROLAB_POOL": f"test-ui-{uuid.uuid4().hex[:8]}"}
    env.pop("PREFECT_API_URL", None)
    make("server", env, f"PREFECT_PORT={port}")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        make("stop", env)


@pytest.fixture(scope="module")
def flow_run_name(server):
    """The name of a flow run made on that server by this test."""
    name = f"ui-check-{uuid.uuid4().hex[:8]}"

    @flow(name="ui-check")
    def ui_check() -> int:
        return 1

    with temporary_settings(updates={PREFECT_API_URL: f"{server}/api"}):
        ui_check.with_options(flow_run_name=name)()
        send_prefect_logs()
    return name


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium driven by Selenium (skips naming what is missing)."""
    driver = chrome(1400, 1000)
    try:
        yield driver
    finally:
        driver.quit()


def page_text_once_loaded(chrome, url: str, expected: list[str], timeout: float = 60) -> str:
    """The page's visible text once any of `expected` shows (or at the timeout)."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    chrome.get(url)

    def text() -> str:
        return chrome.find_element(By.TAG_NAME, "body").text

    try:
        WebDriverWait(chrome, timeout).until(lambda _: any(s in text() for s in expected))
    except TimeoutException:
        pass
    return text()


def test_make_server_tells_its_ui_the_api_on_its_own_port(server):
    assert httpx.get(f"{server}/ui-settings").json()["api_url"] == f"{server}/api"


def test_the_session_server_tells_its_ui_the_api_on_its_own_port(prefect_server):
    base = prefect_server.removesuffix("/api")
    assert httpx.get(f"{base}/ui-settings").json()["api_url"] == prefect_server


@pytest.mark.parametrize("ui", ["v1", "v2"])  # Prefect's two UIs; `/` opens the default one
def test_the_runs_page_lists_a_flow_run_made_here(browser, server, flow_run_name, ui):
    settings = httpx.get(f"{server}/ui-settings").json()
    if ui not in settings["available_uis"]:
        pytest.skip(f"this Prefect serves no {ui} UI")
    url = f"{server}{settings[f'{ui}_base_url'].rstrip('/')}/runs"
    text = page_text_once_loaded(browser, url, [flow_run_name, *CONNECT_ERRORS])
    assert not any(error in text for error in CONNECT_ERRORS), text[-1000:]
    assert flow_run_name in text, text[-1000:]
