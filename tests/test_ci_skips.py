"""Under CI=true a skip fails the run, except a CUDA-only test's (tests/ci_skips.py)."""
import pytest

INNER = """
import pytest

def test_needs_a_sample():
    pytest.skip("../shared/data/x.csv is absent")

@pytest.mark.cuda
def test_on_a_gpu():
    import torch
    assert torch.cuda.is_available()

def test_plain():
    assert True
"""


@pytest.mark.parametrize(("ci", "expected"), [("true", {"passed": 1, "failed": 1, "skipped": 1}),
                                              ("", {"passed": 1, "skipped": 2})])
def test_only_cuda_skips_pass_under_ci(pytester, monkeypatch, ci, expected):
    import torch

    if torch.cuda.is_available():  # the GPU test then runs and passes
        expected = {**expected, "passed": 2, "skipped": expected["skipped"] - 1}
    monkeypatch.setenv("CI", ci)
    pytester.makepyfile(INNER)
    result = pytester.runpytest("-p", "tests.ci_skips", "-p", "no:cacheprovider")
    result.assert_outcomes(**expected)
    if ci:
        result.stdout.fnmatch_lines(["*skipped under CI=true*x.csv is absent*"])
