"""Skips that hide: under CI=true a skipped test fails the run, unless it is marked `cuda`
(CI has no GPU, and no way to get one). Anything else a test skips for, a missing sample, a
browser, a package, is something CI must provide; locally the skip stays a skip, naming what
is missing."""
import os

import pytest

CUDA_REASON = "needs a CUDA device"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"cuda: {CUDA_REASON} (the one skip CI allows)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    marked = [item for item in items if item.get_closest_marker("cuda")]
    if marked and not _cuda():
        for item in marked:
            item.add_marker(pytest.mark.skip(reason=CUDA_REASON))


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if (report.skipped and not hasattr(report, "wasxfail") and os.environ.get("CI") == "true"
            and item.get_closest_marker("cuda") is None):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, where only CUDA-only tests may skip: {reason}"
