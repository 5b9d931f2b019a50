"""Shared evaluation: binary metrics with bootstrap CIs, thresholds, baselines, top-k, plots.

Every bootstrap metric is computed from per-resample sample counts, so thousands of
resamples are a few matrix products rather than thousands of sklearn calls.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tasks.errors import DataError
from tasks.storage import save_figure

MetricFn = Callable[[np.ndarray, np.ndarray], float]

LOG_LOSS_EPS = 1e-15
CI_METRICS = ("accuracy", "balanced_accuracy", "mcc", "auc", "log_loss", "f1")
METRIC_NAMES = (*CI_METRICS, "positive_rate")
_CHUNK_CELLS = 2_000_000  # resamples x samples held in memory at once


# ---------------------------------------------------------------- inputs
def _binary_labels(labels: np.ndarray, field: str) -> np.ndarray:
    """Check labels are a non-empty run of 0/1; return them as float64."""
    y = np.asarray(labels).reshape(-1)
    if y.size == 0:
        raise DataError("no samples to evaluate", field=field)
    bad = np.flatnonzero((y != 0) & (y != 1))
    if bad.size:
        raise DataError(f"label {y[bad[0]]!r} is not 0 or 1", row=int(bad[0]), field=field)
    return y.astype(np.float64)


def _binary_inputs(y_true: np.ndarray, prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Check labels are 0/1 and probabilities finite and aligned; return float64 copies."""
    y = _binary_labels(y_true, "y_true")
    p = np.asarray(prob, dtype=np.float64).reshape(-1)
    if y.size != p.size:
        raise DataError(f"{y.size} labels but {p.size} probabilities", field="prob")
    bad = np.flatnonzero(~np.isfinite(p))
    if bad.size:
        raise DataError(f"probability {p[bad[0]]} is not finite", row=int(bad[0]), field="prob")
    return y, p


# ---------------------------------------------------------------- metrics from counts
def _auc_from_counts(counts: np.ndarray, y: np.ndarray, prob: np.ndarray) -> np.ndarray:
    """ROC AUC per row of `counts` (how often each sample is drawn); NaN if a class is absent.

    Samples (columns) must be sorted by ascending prob.
    """
    rows, n = counts.shape
    cum_neg = np.zeros((rows, n + 1))
    np.cumsum(counts * (1 - y), axis=1, out=cum_neg[:, 1:])
    pos = counts * y
    tied = np.r_[False, prob[1:] == prob[:-1]]
    if tied.any():  # a tie group counts negatives strictly below it, plus half those level
        first = np.maximum.accumulate(np.where(tied, 0, np.arange(n)))
        ends = np.r_[~tied[1:], True]
        last = np.minimum.accumulate(np.where(ends, np.arange(n), n)[::-1])[::-1]
        below = cum_neg[:, first]
        level = cum_neg[:, last + 1] - below
        wins = np.sum(pos * (below + 0.5 * level), axis=1)
    else:
        wins = np.sum(pos * cum_neg[:, :-1], axis=1)
    pairs = pos.sum(axis=1) * cum_neg[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, wins / pairs, np.nan)


def _metrics_from_counts(counts: np.ndarray, y: np.ndarray, prob: np.ndarray,
                         threshold: float, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Each named metric for every row of `counts`, a (resamples, samples) weight matrix.

    Samples (columns) must be sorted by ascending prob.
    """
    pred = (prob >= threshold).astype(np.float64)
    clipped = np.clip(prob, LOG_LOSS_EPS, 1 - LOG_LOSS_EPS)
    loss = -(y * np.log(clipped) + (1 - y) * np.log(1 - clipped))
    columns = np.stack([y * pred, (1 - y) * pred, y * (1 - pred), (1 - y) * (1 - pred), loss], 1)
    tp, fp, fn, tn, loss_sum = (counts @ columns).T
    n = tp + fp + fn + tn
    out: dict[str, np.ndarray] = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for name in names:
            if name == "accuracy":
                out[name] = (tp + tn) / n
            elif name == "balanced_accuracy":
                # like sklearn: the mean recall of the classes present in y_true
                recalls = np.stack([np.where(tp + fn > 0, tp / (tp + fn), np.nan),
                                    np.where(tn + fp > 0, tn / (tn + fp), np.nan)])
                present = np.isfinite(recalls)
                out[name] = np.where(present, recalls, 0).sum(0) / present.sum(0)
            elif name == "mcc":
                denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
                out[name] = np.where(denom > 0, (tp * tn - fp * fn) / denom, 0.0)
            elif name == "f1":
                denom = 2 * tp + fp + fn
                out[name] = np.where(denom > 0, 2 * tp / denom, 0.0)
            elif name == "log_loss":
                out[name] = loss_sum / n
            elif name == "positive_rate":
                out[name] = (tp + fp) / n
            elif name == "auc":
                out[name] = _auc_from_counts(counts, y, prob)
            else:
                raise ValueError(f"unknown metric {name!r}; known: {', '.join(METRIC_NAMES)}")
    return out


def binary_metrics(y_true: np.ndarray, prob: np.ndarray, threshold: float = 0.5) -> dict:
    """Accuracy, balanced accuracy, MCC, AUC, log loss, F1, n and positive_rate (share predicted 1).

    A sample is predicted 1 when prob >= threshold; AUC is NaN when y_true has one class only.
    """
    y, p = _binary_inputs(y_true, prob)
    order = np.argsort(p, kind="stable")
    values = _metrics_from_counts(np.ones((1, y.size)), y[order], p[order], threshold,
                                  METRIC_NAMES)
    out: dict = {name: float(values[name][0]) for name in METRIC_NAMES}
    out["n"] = int(y.size)
    return out


# ---------------------------------------------------------------- bootstrap
def default_block_length(n: int) -> int:
    """The usual n^(1/3) block length for a block bootstrap of n ordered samples."""
    return max(1, round(n ** (1 / 3)))


def _resample_indices(rng: np.random.Generator, n: int, size: int,
                      block_length: int | None) -> np.ndarray:
    """`size` rows of n indices: iid draws, or circular blocks that keep time order inside."""
    if block_length is None or block_length <= 1:
        return rng.integers(0, n, size=(size, n))
    length = min(block_length, n)
    n_blocks = -(-n // length)
    starts = rng.integers(0, n, size=(size, n_blocks))
    idx = (starts[:, :, None] + np.arange(length)) % n
    return idx.reshape(size, n_blocks * length)[:, :n]


def _counts(idx: np.ndarray, n: int) -> np.ndarray:
    """How often each of n samples appears in each row of `idx`, as a float matrix."""
    rows = idx.shape[0]
    flat = (idx + np.arange(0, rows * n, n)[:, None]).ravel()
    return np.bincount(flat, minlength=rows * n).reshape(rows, n).astype(np.float64)


def bootstrap_ci(y_true: np.ndarray, prob: np.ndarray,
                 metrics: Sequence[str] | Mapping[str, MetricFn], *, n_resamples: int,
                 block_length: int | None, seed: int, alpha: float = 0.05,
                 threshold: float = 0.5) -> dict[str, tuple[float, float]]:
    """Percentile (1 - alpha) CIs per metric: iid resamples when block_length is None or 1,
    circular block resamples (time order kept inside each block) when it is larger.

    `metrics` is metric names (fast, vectorised; see METRIC_NAMES) or a mapping from name to
    fn(y_true, prob) -> float (called once per resample). Resamples with an undefined value
    (AUC with one class) are left out; a metric never defined gets (nan, nan).
    """
    y, p = _binary_inputs(y_true, prob)
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if block_length is not None and block_length < 1:
        raise ValueError(f"block_length must be None or >= 1, got {block_length}")
    named = not isinstance(metrics, Mapping)
    names = list(metrics) if named else list(metrics.keys())
    unknown = [name for name in names if named and name not in METRIC_NAMES]
    if unknown:
        raise ValueError(f"unknown metric {unknown[0]!r}; known: {', '.join(METRIC_NAMES)}")

    n = y.size
    order = np.argsort(p, kind="stable")
    rank = np.empty(n, dtype=np.intp)
    rank[order] = np.arange(n)  # resample in time order, count in probability order
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_CELLS // n)
    values: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for start in range(0, n_resamples, chunk):
        idx = _resample_indices(rng, n, min(chunk, n_resamples - start), block_length)
        if named:
            counts = _counts(rank[idx], n)
            for name, v in _metrics_from_counts(counts, y[order], p[order], threshold,
                                                names).items():
                values[name].append(v)
        else:
            for name, fn in metrics.items():
                values[name].append(np.array([fn(y[row], p[row]) for row in idx], dtype=float))

    out: dict[str, tuple[float, float]] = {}
    for name in names:
        draws = np.concatenate(values[name])
        draws = draws[np.isfinite(draws)]
        if draws.size == 0:
            out[name] = (float("nan"), float("nan"))
            continue
        low, high = np.quantile(draws, [alpha / 2, 1 - alpha / 2])
        out[name] = (float(low), float(high))
    return out


def metrics_with_ci(y_true: np.ndarray, prob: np.ndarray, *, threshold: float = 0.5,
                    n_resamples: int, block_length: int | None, seed: int,
                    alpha: float = 0.05) -> dict:
    """binary_metrics plus "<name>_ci": {"low", "high"} for each of CI_METRICS, and the threshold.

    Intervals are mappings, not lists, so `dvc metrics show` and MLflow list them as numbers.
    """
    out = binary_metrics(y_true, prob, threshold)
    cis = bootstrap_ci(y_true, prob, CI_METRICS, n_resamples=n_resamples,
                       block_length=block_length, seed=seed, alpha=alpha, threshold=threshold)
    for name in CI_METRICS:
        low, high = cis[name]
        out[f"{name}_ci"] = {"low": low, "high": high}
    out["threshold"] = float(threshold)
    return out


# ---------------------------------------------------------------- thresholds and baselines
def choose_threshold(y_true: np.ndarray, prob: np.ndarray, metric: str = "accuracy") -> float:
    """The threshold maximising accuracy or F1 on these (dev/validation, never test) samples.

    Candidates sit midway between neighbouring distinct probabilities; ties go to the one
    nearest 0.5.
    """
    if metric not in ("accuracy", "f1"):
        raise ValueError(f"metric must be 'accuracy' or 'f1', got {metric!r}")
    y, p = _binary_inputs(y_true, prob)
    levels, inverse = np.unique(p, return_inverse=True)
    pos = np.bincount(inverse, weights=y, minlength=levels.size)
    neg = np.bincount(inverse, weights=1 - y, minlength=levels.size)
    # candidate i predicts 1 for every level >= i; the last candidate predicts all 0
    tp = np.r_[np.cumsum(pos[::-1])[::-1], 0.0]
    fp = np.r_[np.cumsum(neg[::-1])[::-1], 0.0]
    fn, tn = pos.sum() - tp, neg.sum() - fp
    if metric == "accuracy":
        score = (tp + tn) / y.size
    else:
        denom = 2 * tp + fp + fn
        score = np.divide(2 * tp, denom, out=np.zeros_like(denom), where=denom > 0)
    candidates = np.r_[levels[0], (levels[:-1] + levels[1:]) / 2, np.nextafter(levels[-1], np.inf)]
    best = np.flatnonzero(score >= score.max() - 1e-12)
    return float(candidates[best[np.argmin(np.abs(candidates[best] - 0.5))]])


def verdict(test: dict, baselines: dict, metric: str = "accuracy") -> dict:
    """Skill only where the model's 95% interval of `metric` clears the strongest baseline;
    `beats` says the same of every baseline, so a reader sees which ones it clears."""
    low = test[f"{metric}_ci"]["low"]
    strongest = max(baselines, key=lambda name: baselines[name][metric])
    value = baselines[strongest][metric]
    skill = bool(low > value)
    text = (f"skill: 95% CI lower bound {low:.3f} > {strongest} {value:.3f}" if skill else
            f"no evidence of skill: 95% CI lower bound {low:.3f} <= {strongest} {value:.3f}")
    return {"metric": metric, "strongest_baseline": strongest, "strongest_value": value,
            "beats_strongest_baseline": skill,
            "beats": {name: bool(low > row[metric]) for name, row in baselines.items()},
            "text": text}


def majority_baseline(y_train: np.ndarray, y_test: np.ndarray) -> dict:
    """Metrics of always predicting the train majority class (ties -> 1) on the test labels.

    The constant probability is the train positive rate, so log loss is the prior's log loss.
    """
    rate = float(_binary_labels(y_train, "y_train").mean())
    y_test = np.asarray(y_test).reshape(-1)
    out = binary_metrics(y_test, np.full(y_test.size, rate), threshold=0.5)
    out["majority_class"] = int(rate >= 0.5)
    out["train_positive_rate"] = rate
    return out


# ---------------------------------------------------------------- multi-class
def mean_ci(values: np.ndarray, *, n_resamples: int, seed: int, alpha: float = 0.05,
            block_length: int | None = None) -> dict[str, float]:
    """{"mean", "low", "high"}: the mean of per-sample values (correct 0/1, or a paired
    difference of two models' correctness) with its percentile bootstrap interval: iid
    resamples, or circular blocks (block_length > 1) for ordered samples, as bootstrap_ci."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise DataError("no values to average", field="values")
    n = values.size
    rng = np.random.default_rng(seed)
    if block_length is None or block_length <= 1:
        counts = rng.multinomial(n, np.full(n, 1 / n), size=n_resamples)
        means = counts @ values / n
    else:
        chunk = max(1, _CHUNK_CELLS // n)
        means = np.concatenate([
            values[_resample_indices(rng, n, min(chunk, n_resamples - start),
                                     block_length)].mean(axis=1)
            for start in range(0, n_resamples, chunk)])
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return {"mean": float(values.mean()), "low": float(low), "high": float(high)}


def lookup(metrics: Mapping[str, Any], dotted: str) -> Any:
    """The value at a dotted key; a list of rows is entered by a row's `key` field."""
    node: Any = metrics
    for part in dotted.split("."):
        if isinstance(node, list):
            node = next((row for row in node if isinstance(row, Mapping)
                         and row.get("key") == part), None)
        elif isinstance(node, Mapping):
            node = node.get(part)
        else:
            node = None
        if node is None:
            raise DataError(f"{dotted}: not in the pipeline's metrics", field=dotted)
    return node


def metric_value(metrics: Mapping[str, Any], dotted: str) -> float:
    """A number from a nested metrics mapping by its dotted key (`test.accuracy`)."""
    return float(lookup(metrics, dotted))


def summary_metrics(results: Mapping[str, Any], pipeline: str, headline: str,
                    extras: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    """The scalars a person compares across experiments, for metrics/<pipeline>.json (what
    `dvc metrics show` and `dvc exp show` list): the headline (named `<pipeline>_<metric>`)
    and its 95% interval, each baseline's headline metric, the verdict (`skill`) and the
    declared `extras` (name, dotted key). The other names are shared by the pipelines, so the
    three files make one table of a few columns, and the headline, which every experiment
    moves, is a column of its own in `dvc exp show`; the rest stays in the results file."""
    metric = headline.rpartition(".")[2]
    ci = lookup(results, f"{headline}_ci")
    out: dict[str, Any] = {f"{pipeline}_{metric}": metric_value(results, headline),
                           "ci_low": float(ci["low"]), "ci_high": float(ci["high"])}
    out.update({name: float(row[metric]) for name, row in results["baselines"].items()})
    out["skill"] = bool(results["verdict"]["beats_strongest_baseline"])
    out.update({name: metric_value(results, key) for name, key in extras})
    return out


def write_results(results: Mapping[str, Any], spec: Any, results_path: Path,
                  metrics_path: Path) -> None:
    """The evaluate stage's two files: every result (the site reads it) and the summary of
    the declared pipeline `spec` (DVC's metrics)."""
    from tasks.storage import write_json

    write_json(results, results_path)
    write_json(summary_metrics(results, spec.name, spec.headline, spec.summary), metrics_path)


def reference_rows(references: Sequence[Any], metrics: Mapping[str, Any]) -> list[dict]:
    """The research notes' numbers beside ours (tasks.pipeline.Reference): each row has the
    label, their value, what they measured on, and ours (None where this run has no
    comparable number, with the reason)."""
    rows = []
    for ref in references:
        ours, why = None, "no comparable number in this pipeline"
        if ref.ours is not None:
            unmet = [f"{key} is not {want}" for key, want in ref.when
                     if _lookup_or_none(metrics, key) != want]
            found = _lookup_or_none(metrics, ref.ours)
            if found is None:
                why = f"{ref.ours} was not measured in this run"
            elif unmet:
                why = "not comparable here: " + ", ".join(unmet)
            else:
                ours, why = float(found), ""
        rows.append({"label": ref.label, "theirs": ref.value, "measured_on": ref.measured_on,
                     "ours": ours, "ours_key": ref.ours, "why_not": why})
    return rows


def _lookup_or_none(metrics: Mapping[str, Any], dotted: str) -> Any:
    try:
        return lookup(metrics, dotted)
    except DataError:
        return None


# ---------------------------------------------------------------- bias / variance / mismatch
NEXT_STEPS = {
    "avoidable_bias": "reduce bias: a bigger model, longer training, a better optimiser or "
                      "architecture",
    "variance": "reduce variance: more training data, regularisation (dropout, weight decay, "
                "augmentation), or a smaller model",
    "data_mismatch": "reduce data mismatch: make training data look like dev/test (collect or "
                     "synthesise it, or train on some of the target distribution)",
    "dev_overfitting": "the dev set is overfit by tuning: get a bigger dev set",
}


def error_analysis(errors: Mapping[str, float], reference_error: float | None) -> dict:
    """'Structuring ML projects': from train, train-dev, dev and test error, the avoidable bias
    (train error above the human-level or best-known error; None when none is configured: how
    much of the train error is avoidable is then unknown, so it cannot drive the advice),
    variance (train-dev - train), data mismatch (dev - train-dev), dev overfitting (test - dev),
    the largest of them and the next step it calls for. Without a train-dev error, variance is
    dev - train and mismatch cannot be told apart from it (None)."""
    missing = [name for name in ("train", "dev", "test") if name not in errors]
    if missing:
        raise DataError(f"error analysis needs {missing} errors", field="errors")
    train, dev, test = (float(errors[k]) for k in ("train", "dev", "test"))
    train_dev = errors.get("train_dev")
    gaps = {"avoidable_bias": None if reference_error is None else train - reference_error,
            "variance": (dev if train_dev is None else float(train_dev)) - train,
            "data_mismatch": None if train_dev is None else dev - float(train_dev),
            "dev_overfitting": test - dev}
    largest = max((k for k, v in gaps.items() if v is not None), key=lambda k: gaps[k])
    return {"errors": {k: float(v) for k, v in errors.items()},
            "reference_error": reference_error,
            **gaps, "largest": largest, "next_step": NEXT_STEPS[largest]}


def diagnosis_line(diagnosis: Mapping) -> str:
    """One log line: the errors, the gaps, the largest and what to do next."""
    errors = " / ".join(f"{k} {v:.3f}" for k, v in diagnosis["errors"].items())
    gaps = ", ".join(f"{k.replace('_', ' ')} {diagnosis[k]:+.3f}" for k in NEXT_STEPS
                     if diagnosis[k] is not None)
    return f"errors {errors}; {gaps}; largest: {diagnosis['largest']} -> {diagnosis['next_step']}"


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 5)) -> dict:
    """{"top1": ..., "top5": ...}: share of samples whose label is among the k highest scores.

    k is capped at the number of classes; a tie with the true class counts against it.
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels).reshape(-1)
    if logits.ndim != 2 or logits.shape[0] != labels.size or labels.size == 0:
        raise DataError(f"logits {logits.shape} do not match {labels.size} labels", field="logits")
    n_classes = logits.shape[1]
    bad = np.flatnonzero((labels < 0) | (labels >= n_classes))
    if bad.size:
        raise DataError(f"label {labels[bad[0]]} outside 0..{n_classes - 1}", row=int(bad[0]),
                        field="labels")
    true_score = logits[np.arange(labels.size), labels][:, None]
    rank = (logits >= true_score).sum(axis=1) - 1  # other classes scoring at least as high
    return {f"top{k}": float(np.mean(rank < min(k, n_classes))) for k in ks}


def per_class_accuracy(pred: np.ndarray, labels: np.ndarray, n_classes: int) -> list[float]:
    """Accuracy (recall) of each class 0..n_classes-1; NaN for a class absent from labels."""
    pred = np.asarray(pred).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if pred.size != labels.size:
        raise DataError(f"{pred.size} predictions but {labels.size} labels", field="pred")
    total = np.bincount(labels, minlength=n_classes)[:n_classes]
    right = np.bincount(labels[pred == labels], minlength=n_classes)[:n_classes]
    return [float(r / t) if t else float("nan") for r, t in zip(right, total, strict=True)]


# ---------------------------------------------------------------- plots
def plot_confusion(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str],
                   dest: str | os.PathLike) -> Path:
    """Confusion matrix (rows true, columns predicted; counts, colour by row share) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(labels)
    y_true = np.asarray(y_true).reshape(-1).astype(int)
    y_pred = np.asarray(y_pred).reshape(-1).astype(int)
    if y_true.size != y_pred.size:
        raise DataError(f"{y_true.size} labels but {y_pred.size} predictions", field="y_pred")
    if y_true.size and (min(y_true.min(), y_pred.min()) < 0 or max(y_true.max(), y_pred.max()) >= k):
        raise DataError(f"class index outside 0..{k - 1}", field="y_true")
    matrix = np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)
    share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)

    side = min(12.0, max(3.0, 0.6 * k + 1.5))
    fig, ax = plt.subplots(figsize=(side + 1, side))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of true class")
    if k <= 30:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if share[i, j] > 0.5 else "black")
    if k <= 50:  # beyond that (Kinetics-400) names would overlap; the colours still show
        ax.set_xticks(range(k), labels, rotation=45, ha="right")
        ax.set_yticks(range(k), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion (n={y_true.size})")
    return save_figure(fig, dest)


def plot_roc(y_true: np.ndarray, prob: np.ndarray, dest: str | os.PathLike) -> Path:
    """ROC curve with its AUC in the title, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    y, p = _binary_inputs(y_true, prob)
    auc = binary_metrics(y, p)["auc"]
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
    if np.isfinite(auc):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, label=f"model (AUC {auc:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"ROC (n={y.size})" if np.isfinite(auc) else "ROC undefined: one class only")
    ax.legend(loc="lower right")
    return save_figure(fig, dest)




def write_learning_curve(history: list[dict], dest: str | os.PathLike) -> Path:
    """The learning curve as data (epoch, train_loss, val_loss): a DVC plot that
    `dvc plots diff` overlays across experiments."""
    import pandas as pd

    from tasks.pipeline import LOSSES
    from tasks.storage import write_text

    columns = ["epoch", *LOSSES]
    frame = pd.DataFrame([{k: h[k] for k in columns} for h in history], columns=columns)
    return write_text(frame.to_csv(index=False, float_format="%.6g"), dest)


def plot_learning_curve(history: list[dict], dest: str | os.PathLike) -> Path:
    """Train and validation loss per epoch from a `fit` history."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax.plot(epochs, [h["val_loss"] for h in history], label="val")
    ax.set(xlabel="epoch", ylabel="loss", title="Learning curve")
    ax.legend()
    return save_figure(fig, dest)
