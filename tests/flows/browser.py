"""A real headless browser for page tests: Debian's chromium + chromium-driver via Selenium.
Tests that need it skip, naming what is missing, where one of the three is absent."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def chrome(width: int = 1280, height: int = 900) -> Any:
    """A headless Chromium that records console messages and network events."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    binary = next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        pytest.skip("chromium and chromium-driver are not installed (apt-get install chromium "
                    "chromium-driver)")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


def console_errors(browser: Any) -> list[str]:
    return [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def failed_requests(browser: Any) -> list[str]:
    """Requests that failed or answered >= 400 since the last call (DevTools network log)."""
    failed = []
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message.get("params", {})
        if message["method"] == "Network.loadingFailed":
            failed.append(f"{params.get('errorText')} ({params.get('requestId')})")
        elif message["method"] == "Network.responseReceived":
            response = params["response"]
            if response.get("status", 200) >= 400:
                failed.append(f"{response['status']} {response['url']}")
    return failed


def screenshot_is_blank(path: Path) -> bool:
    """True when the screenshot has (almost) a single colour."""
    from PIL import Image

    with Image.open(path) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
    return colours is not None and len(colours) < 8
