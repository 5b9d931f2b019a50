"""`make demo`'s table rows for the error analysis."""
from flows.demo import diagnosis_row
from tasks.evaluate import error_analysis


def test_the_demo_shows_the_errors_and_the_largest_gap():
    metrics = {"diagnosis": error_analysis(
        {"train": 0.05, "train_dev": 0.2, "dev": 0.21, "test": 0.22}, 0.0)}
    [(label, value, note)] = diagnosis_row(metrics)
    assert label == "error train / train-dev / dev / test"
    assert value == "0.050 / 0.200 / 0.210 / 0.220"
    assert note == "largest gap: variance +0.150 -> reduce variance"
    assert diagnosis_row({}) == []
