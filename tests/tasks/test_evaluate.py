import json
import math
import time

import numpy as np
import pytest
from sklearn import metrics as skm

from tasks.errors import DataError
from tasks.evaluate import (
    binary_metrics,
    bootstrap_ci,
    choose_threshold,
    default_block_length,
    diagnosis_line,
    error_analysis,
    majority_baseline,
    metrics_with_ci,
    per_class_accuracy,
    plot_confusion,
    plot_roc,
    topk_accuracy,
)


def _noisy_classifier(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    prob = np.clip(0.5 + 0.25 * (2 * y - 1) + rng.normal(0, 0.25, n), 0.01, 0.99)
    return y, prob


# ---------------------------------------------------------------- binary_metrics
def test_binary_metrics_match_hand_computed_values():
    y = np.array([1, 0, 1, 1, 0])
    prob = np.array([0.9, 0.4, 0.3, 0.8, 0.6])  # pred 1,0,0,1,1: tp 2, fn 1, fp 1, tn 1
    m = binary_metrics(y, prob)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["mcc"] == pytest.approx(1 / 6)
    assert m["auc"] == pytest.approx(4 / 6)
    assert m["positive_rate"] == pytest.approx(3 / 5)
    assert m["log_loss"] == pytest.approx(-np.log([0.9, 0.6, 0.3, 0.8, 0.4]).mean())
    assert m["n"] == 5 and isinstance(m["n"], int)
    assert all(type(v) in (float, int) for v in m.values())


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_binary_metrics_match_sklearn(threshold):
    y, prob = _noisy_classifier(500, seed=1)
    prob[:50] = np.round(prob[:50], 1)  # some ties for the AUC
    pred = (prob >= threshold).astype(int)
    m = binary_metrics(y, prob, threshold)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["mcc"] == pytest.approx(skm.matthews_corrcoef(y, pred))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert m["auc"] == pytest.approx(skm.roc_auc_score(y, prob))
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, prob))


def test_binary_metrics_one_class_and_extreme_probabilities():
    m = binary_metrics(np.ones(4), np.array([1.0, 0.0, 0.7, 0.2]))
    assert math.isnan(m["auc"])
    assert math.isfinite(m["log_loss"]) and m["log_loss"] > 5  # clipped, not inf
    assert m["mcc"] == 0.0
    assert m["balanced_accuracy"] == pytest.approx(0.5)  # recall of the only class


def test_binary_metrics_reject_bad_input():
    with pytest.raises(DataError, match="row 1"):
        binary_metrics(np.array([0, 2, 1]), np.array([0.1, 0.2, 0.3]))
    with pytest.raises(DataError, match="prob"):
        binary_metrics(np.array([0, 1]), np.array([0.1, 0.2, 0.3]))
    with pytest.raises(DataError, match="not finite"):
        binary_metrics(np.array([0, 1]), np.array([0.1, np.nan]))


# ---------------------------------------------------------------- bootstrap
def test_default_block_length():
    assert default_block_length(1) == 1
    assert default_block_length(1000) == 10
    assert default_block_length(5000) == 17


def test_ci_contains_point_estimate_and_narrows_with_n():
    names = ["accuracy", "balanced_accuracy", "mcc", "auc", "log_loss", "f1"]
    widths = {}
    for n in (200, 5000):
        y, prob = _noisy_classifier(n, seed=n)
        point = binary_metrics(y, prob)
        cis = bootstrap_ci(y, prob, names, n_resamples=400, block_length=None, seed=0)
        for name in names:
            low, high = cis[name]
            assert low <= point[name] <= high, (n, name, point[name], cis[name])
        widths[n] = {name: cis[name][1] - cis[name][0] for name in names}
    for name in names:
        assert widths[5000][name] < widths[200][name] / 2.5, name


def test_named_metrics_agree_with_callables_on_the_same_resamples():
    y, prob = _noisy_classifier(300, seed=3)
    named = bootstrap_ci(y, prob, ["accuracy", "auc", "log_loss"], n_resamples=200,
                         block_length=5, seed=7)
    fns = {
        "accuracy": lambda t, p: skm.accuracy_score(t, p >= 0.5),
        "auc": lambda t, p: skm.roc_auc_score(t, p),
        "log_loss": lambda t, p: skm.log_loss(t, p, labels=[0, 1]),
    }
    called = bootstrap_ci(y, prob, fns, n_resamples=200, block_length=5, seed=7)
    for name in fns:
        assert named[name] == pytest.approx(called[name])


def test_block_bootstrap_is_wider_for_autocorrelated_correctness():
    run = 100  # 20 alternating runs of 100 right then 100 wrong answers
    correct = np.repeat(np.arange(20) % 2 == 0, run)
    y = np.tile([0, 1], correct.size // 2)
    prob = np.where(correct, y, 1 - y) * 0.6 + 0.2
    iid = bootstrap_ci(y, prob, ["accuracy"], n_resamples=500, block_length=None, seed=0)
    block = bootstrap_ci(y, prob, ["accuracy"], n_resamples=500, block_length=run, seed=0)
    iid_width = iid["accuracy"][1] - iid["accuracy"][0]
    block_width = block["accuracy"][1] - block["accuracy"][0]
    assert block_width > 2.5 * iid_width


def test_bootstrap_is_deterministic_by_seed():
    y, prob = _noisy_classifier(400)
    a = bootstrap_ci(y, prob, ["accuracy", "auc"], n_resamples=100, block_length=8, seed=11)
    b = bootstrap_ci(y, prob, ["accuracy", "auc"], n_resamples=100, block_length=8, seed=11)
    c = bootstrap_ci(y, prob, ["accuracy", "auc"], n_resamples=100, block_length=8, seed=12)
    assert a == b
    assert a != c


def test_bootstrap_is_fast():
    y, prob = _noisy_classifier(5000)
    start = time.perf_counter()
    bootstrap_ci(y, prob, ["accuracy", "balanced_accuracy", "mcc", "auc", "log_loss", "f1"],
                 n_resamples=500, block_length=17, seed=0)
    assert time.perf_counter() - start < 2.0


def test_bootstrap_rejects_unknown_metric():
    y, prob = _noisy_classifier(20)
    with pytest.raises(ValueError, match="brier"):
        bootstrap_ci(y, prob, ["brier"], n_resamples=10, block_length=None, seed=0)


def test_metrics_with_ci_is_json_friendly():
    y, prob = _noisy_classifier(300)
    out = metrics_with_ci(y, prob, threshold=0.5, n_resamples=100, block_length=None, seed=0)
    for name in ("accuracy", "balanced_accuracy", "mcc", "auc", "log_loss"):
        assert type(out[name]) is float
        low, high = out[f"{name}_ci"]["low"], out[f"{name}_ci"]["high"]
        assert type(low) is float and low <= out[name] <= high
    assert out["n"] == 300
    json.dumps(out)


# ---------------------------------------------------------------- thresholds, baselines
@pytest.mark.parametrize("metric", ["accuracy", "f1"])
def test_choose_threshold_maximises_the_dev_metric(metric):
    rng = np.random.default_rng(5)
    prob = rng.uniform(0.55, 0.95, 400)  # all above 0.5; truth flips near 0.75
    y = (prob + rng.normal(0, 0.03, 400) > 0.75).astype(int)
    threshold = choose_threshold(y, prob, metric)

    def score(t: float) -> float:
        return binary_metrics(y, prob, t)[metric]

    best = max(score(t) for t in np.r_[np.unique(prob), 1.0])
    assert score(threshold) == pytest.approx(best)
    assert 0.65 < threshold < 0.85
    if metric == "accuracy":
        assert score(threshold) > score(0.5) + 0.2


def test_choose_threshold_hand_example():
    y = np.array([0, 0, 1, 1])
    prob = np.array([0.1, 0.2, 0.3, 0.4])
    assert choose_threshold(y, prob) == pytest.approx(0.25)
    assert binary_metrics(y, prob, choose_threshold(y, prob))["accuracy"] == 1.0


def test_choose_threshold_ties_go_to_the_candidate_nearest_half():
    y = np.array([0, 1, 0, 1])
    prob = np.array([0.1, 0.2, 0.55, 0.9])  # 0.15 and 0.725 both give accuracy 0.75
    assert choose_threshold(y, prob) == pytest.approx(0.725)


def test_majority_baseline():
    out = majority_baseline(np.array([1, 1, 1, 0]), np.array([1, 0, 0, 1, 1]))
    assert out["majority_class"] == 1
    assert out["accuracy"] == pytest.approx(3 / 5)
    assert out["positive_rate"] == 1.0
    assert out["auc"] == pytest.approx(0.5)
    assert out["log_loss"] == pytest.approx(skm.log_loss([1, 0, 0, 1, 1], [0.75] * 5))
    assert majority_baseline(np.array([0, 0, 1]), np.array([1, 1]))["accuracy"] == 0.0


# ---------------------------------------------------------------- multi-class
def test_topk_accuracy_hand_example():
    logits = np.array([
        [0.1, 0.5, 0.2, 0.9],   # label 3: rank 0
        [0.8, 0.1, 0.3, 0.2],   # label 2: rank 1
        [0.1, 0.2, 0.3, 0.4],   # label 0: rank 3
    ])
    labels = np.array([3, 2, 0])
    assert topk_accuracy(logits, labels, ks=(1, 2, 3)) == pytest.approx(
        {"top1": 1 / 3, "top2": 2 / 3, "top3": 2 / 3})
    assert topk_accuracy(logits, labels)["top5"] == 1.0  # k capped at 4 classes


def test_topk_ties_count_against_the_true_class():
    assert topk_accuracy(np.zeros((2, 3)), np.array([0, 1]), ks=(1,))["top1"] == 0.0


def test_per_class_accuracy():
    out = per_class_accuracy(np.array([0, 1, 1, 2, 0]), np.array([0, 1, 2, 2, 1]), 4)
    assert out[:3] == pytest.approx([1.0, 0.5, 0.5])
    assert math.isnan(out[3])


# ---------------------------------------------------------------- plots
def _is_png(path) -> bool:
    return path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_write_png_files(tmp_path):
    y, prob = _noisy_classifier(200)
    roc = plot_roc(y, prob, tmp_path / "plots" / "roc.png")
    confusion = plot_confusion(y, (prob >= 0.5).astype(int), ["down", "up"],
                               tmp_path / "confusion.png")
    one_class = plot_roc(np.ones(5), np.linspace(0, 1, 5), tmp_path / "roc1.png")
    for path in (roc, confusion, one_class):
        assert _is_png(path)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [
        "confusion.png", "roc.png", "roc1.png"]


# ---------------------------------------------------------------- bias / variance / mismatch
@pytest.mark.parametrize(("errors", "reference", "largest"), [
    ({"train": 0.15, "train_dev": 0.16, "dev": 0.17, "test": 0.17}, 0.05, "avoidable_bias"),
    ({"train": 0.06, "train_dev": 0.15, "dev": 0.16, "test": 0.16}, 0.05, "variance"),
    ({"train": 0.06, "train_dev": 0.07, "dev": 0.15, "test": 0.16}, 0.05, "data_mismatch"),
    ({"train": 0.06, "train_dev": 0.07, "dev": 0.08, "test": 0.15}, 0.05, "dev_overfitting"),
])
def test_error_analysis_names_the_largest_gap_and_its_next_step(errors, reference, largest):
    got = error_analysis(errors, reference)
    assert got["largest"] == largest
    assert got["avoidable_bias"] == pytest.approx(errors["train"] - reference)
    assert got["variance"] == pytest.approx(errors["train_dev"] - errors["train"])
    assert got["data_mismatch"] == pytest.approx(errors["dev"] - errors["train_dev"])
    assert got["dev_overfitting"] == pytest.approx(errors["test"] - errors["dev"])
    words = {"avoidable_bias": "bigger model", "variance": "more training data",
             "data_mismatch": "training data look like dev/test", "dev_overfitting": "bigger dev"}
    assert words[largest] in got["next_step"]
    assert largest.split("_")[0] in diagnosis_line(got)


def test_error_analysis_without_train_dev_or_reference():
    got = error_analysis({"train": 0.4, "dev": 0.45, "test": 0.46}, None)
    # a train error of 0.4 with no known floor (a near-random market) is not "avoidable"
    assert got["reference_error"] is None and got["avoidable_bias"] is None
    assert got["variance"] == pytest.approx(0.05) and got["data_mismatch"] is None
    assert got["largest"] == "variance" and "avoidable" not in diagnosis_line(got)
    with pytest.raises(DataError, match="dev"):
        error_analysis({"train": 0.1, "test": 0.2}, 0.0)


# ---------------------------------------------------------------- verdict, the notes' numbers
def test_the_verdict_names_every_baseline_the_interval_clears():
    from tasks.evaluate import verdict

    baselines = {"chance": {"top1": 0.1}, "frame_model": {"top1": 0.6}}
    judged = verdict({"top1": 0.7, "top1_ci": {"low": 0.55, "high": 0.8}}, baselines, "top1")
    assert judged["beats"] == {"chance": True, "frame_model": False}
    assert judged["strongest_baseline"] == "frame_model" and not judged["beats_strongest_baseline"]
    assert judged["text"].startswith("no evidence of skill")


def test_reference_rows_put_ours_beside_theirs_only_where_comparable():
    from tasks.evaluate import reference_rows
    from tasks.pipeline import Reference

    metrics = {"test": {"top1": 0.8}, "besnet_fixed": {"top1": 0.7, "dilation": 1},
               "table": [{"key": "fc", "accuracy": 0.77}]}
    refs = (Reference("random", 0.74, "K400", "test.top1"),
            Reference("d=1", 0.70, "K400", "besnet_fixed.top1", when=(("besnet_fixed.dilation", 1),)),
            Reference("d=2", 0.68, "K400", "besnet_fixed.top1", when=(("besnet_fixed.dilation", 2),)),
            Reference("fc head", 0.84, "dump", "table.fc.accuracy"),
            Reference("frame MLP", 0.65, "K400", "baselines.frame_model.top1"),
            Reference("no counterpart", 0.5, "elsewhere"))
    rows = {r["label"]: r for r in reference_rows(refs, metrics)}
    assert [rows[k]["ours"] for k in ("random", "d=1", "fc head")] == [0.8, 0.7, 0.77]
    assert rows["d=2"]["ours"] is None and "besnet_fixed.dilation is not 2" in rows["d=2"]["why_not"]
    assert rows["frame MLP"]["ours"] is None and "not measured" in rows["frame MLP"]["why_not"]
    assert rows["no counterpart"]["ours"] is None and rows["random"]["theirs"] == 0.74
    assert rows["random"]["measured_on"] == "K400" and rows["random"]["why_not"] == ""


def test_the_summary_holds_the_scalars_to_compare_under_shared_names():
    from tasks.evaluate import summary_metrics

    results = {"test": {"top1": 0.7, "top5": 0.9, "top1_ci": {"low": 0.6, "high": 0.8},
                        "per_class": {"a": 1.0}},
               "baselines": {"chance": {"top1": 0.1, "top5": 0.5},
                             "frame_model": {"top1": 0.5, "top1_ci": {"low": 0.4, "high": 0.6}}},
               "verdict": {"beats_strongest_baseline": True},
               "diagnosis": {"variance": 0.2, "errors": {"train": 0.1}}}
    summary = summary_metrics(results, "kinetics", "test.top1", (("top5", "test.top5"),))
    assert summary == {"kinetics_top1": 0.7, "ci_low": 0.6, "ci_high": 0.8, "chance": 0.1,
                       "frame_model": 0.5, "skill": True, "top5": 0.9}
