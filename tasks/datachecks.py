"""The night's data checks: tonight's new rows against a profile of the data the champion was
trained on (schema, nulls, ranges, label balance, drift), before anything is retrained.

Each pipeline's checks module (tasks/<pipeline>/checks.py) gives its rows as a Table; profile()
keeps what a later night compares with (small, JSON-able), check() compares and says why it fails.
Drift, like label balance, needs both a small p-value and a large effect: a few dozen rows of
noise are never a shift, and a tiny shift in many rows is not worth stopping a night for.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from scipy import stats

from tasks.config import DataChecks

POSITIVE = math.ulp(0.0)  # the smallest positive float: low=POSITIVE means "> 0"
NUMERIC_KINDS = "biuf"
KIND_NAMES = {"b": "bool", "i": "integer", "u": "unsigned integer", "f": "float",
              "O": "object", "M": "datetime", "m": "timedelta"}
SIGNIFICANT_DIGITS = 7  # reference sample values are rounded to this: a small profile
PSI_BINS = 10
PSI_EPSILON = 1e-4  # the share given to an empty bin, so PSI stays finite
LABEL_DRAWS = 10_000  # multinomial draws for the label shift's p-value
LABEL_SEED = 0


@dataclass(frozen=True)
class Column:
    """A column the model reads (or a raw value it is derived from) with its valid range
    [low, high], inclusive; drift=False for values that always drift (price levels): those are
    checked for nulls and range only."""

    name: str
    low: float | None = None
    high: float | None = None
    drift: bool = True


@dataclass(frozen=True)
class Table:
    """One row per example; `key` names a column with a stable unique row id (timestamp, pair
    id, clip id); `label` the class column (None: no balance check)."""

    frame: pd.DataFrame
    columns: tuple[Column, ...]
    label: str | None
    key: str

    def rows(self, mask: pd.Series | np.ndarray) -> Table:
        """The same table on the rows `mask` selects (tonight's new ones, say)."""
        return replace(self, frame=self.frame[mask].reset_index(drop=True))


# ------------------------------------------------------------------ the reference
def profile(table: Table, settings: DataChecks, seed: int) -> dict:
    """What a later night compares with: rows, schema, a seeded sample of at most
    `reference_rows` values per drift column (rounded) and the label's class shares."""
    rng = np.random.default_rng(seed)
    samples = {}
    for column in table.columns:
        if not column.drift or column.name not in table.frame:
            continue
        values = finite_values(table.frame[column.name])
        if len(values) > settings.reference_rows:
            values = rng.choice(values, settings.reference_rows, replace=False)
        samples[column.name] = [_rounded(v) for v in np.sort(values)]
    counts = label_counts(table)
    return {"rows": len(table.frame), "key": table.key, "label": table.label,
            "schema": schema(table), "samples": samples,
            "label_shares": _shares(counts) if counts else None}


def schema(table: Table) -> dict[str, str]:
    """{column: numpy dtype kind} of the declared columns and the label that the frame has."""
    names = [c.name for c in table.columns] + ([table.label] if table.label else [])
    return {name: table.frame[name].dtype.kind for name in names if name in table.frame}


def finite_values(values: pd.Series) -> np.ndarray:
    """The finite numbers of a column as float64 (null, NaN, inf and non-numbers left out)."""
    numbers = _numbers(values)
    return numbers[np.isfinite(numbers)]


def label_counts(table: Table) -> dict[str, int]:
    """{class: rows} of the label, missing labels left out ({} without a label column)."""
    if table.label is None or table.label not in table.frame:
        return {}
    labels = table.frame[table.label].dropna()
    counts = labels.map(_class_name).value_counts()
    return {str(k): int(v) for k, v in sorted(counts.items())}


# ------------------------------------------------------------------ the check
def check(new: Table, reference: dict | None, settings: DataChecks) -> dict:
    """Tonight's new rows against the champion's profile (None: no champion yet).

    Returns passed, reasons (one sentence per failure), notes (what was not tested and why)
    and the figures: rows, schema, nulls, out_of_range, duplicate_keys, label_shift (+ its
    p-value) and drift per column (KS statistic, p-value, PSI, drifted).
    """
    frame = new.frame
    result = {"passed": True, "reasons": [], "notes": [], "rows": len(frame),
              "schema": schema(new), "nulls": {}, "out_of_range": {}, "duplicate_keys": 0,
              "label_shift": None, "label_p_value": None, "drift": {}}
    if frame.empty:
        result["notes"].append("no new rows")
        return result
    reasons, notes = result["reasons"], result["notes"]
    if reference is None:
        notes.append("no reference profile (no champion yet): schema, nulls and ranges only")
    reasons += _schema_reasons(new, reference)
    reasons += _key_reasons(new, result)
    for column in new.columns:
        if column.name in frame and frame[column.name].dtype.kind in NUMERIC_KINDS:
            reasons += _value_reasons(column, frame[column.name], settings, result)
    if reference is not None:
        if len(frame) < settings.min_rows:
            notes.append(f"{len(frame)} new rows < min_rows {settings.min_rows}: "
                         "balance and drift not tested")
        else:
            reasons += _label_reasons(new, reference, settings, result)
            reasons += _drift_reasons(new, reference, settings, result)
    result["passed"] = not reasons
    return result


def summary_line(result: dict) -> str:
    """One log line: passed or failed, rows, drift and label shift, then reasons or notes."""
    parts = [f"{result['rows']} new rows"]
    if result["drift"]:
        drifted = sum(d["drifted"] for d in result["drift"].values())
        parts.append(f"{drifted} of {len(result['drift'])} column(s) drifted")
    if result["label_shift"] is not None:
        parts.append(f"label shift {result['label_shift']:.3f}")
    if result["passed"]:
        head, tail = "data checks passed", result["notes"]
    else:
        head, tail = f"data checks FAILED ({len(result['reasons'])})", result["reasons"]
    return f"{head}: {', '.join(parts)}" + "".join(f"; {text}" for text in tail)


def _schema_reasons(new: Table, reference: dict | None) -> list[str]:
    frame, out = new.frame, []
    known = (reference or {}).get("schema", {})
    for column in new.columns:
        name = column.name
        if name not in frame:
            out.append(f"column {name!r} is missing from the new rows")
            continue
        kind = frame[name].dtype.kind
        if kind not in NUMERIC_KINDS:
            out.append(f"column {name!r} is not numeric (dtype {frame[name].dtype})")
        elif name in known and known[name] != kind:
            out.append(f"column {name!r} holds {_kind(kind)} values, the reference "
                       f"{_kind(known[name])}")
    if new.label is not None:
        if new.label not in frame:
            out.append(f"label column {new.label!r} is missing from the new rows")
        elif new.label in known and known[new.label] != frame[new.label].dtype.kind:
            out.append(f"label column {new.label!r} holds {_kind(frame[new.label].dtype.kind)} "
                       f"values, the reference {_kind(known[new.label])}")
    return out


def _key_reasons(new: Table, result: dict) -> list[str]:
    if new.key not in new.frame:
        return [f"key column {new.key!r} is missing from the new rows"]
    keys = new.frame[new.key]
    out = []
    missing = int(keys.isna().sum())
    if missing:
        out.append(f"key {new.key!r} is missing in {_share_text(missing, len(keys))}")
    repeated = keys.dropna().duplicated()
    result["duplicate_keys"] = int(repeated.sum())
    if repeated.any():
        out.append(f"key {new.key!r} repeats in {_share_text(int(repeated.sum()), len(keys))} "
                   f"(first: {keys.dropna()[repeated].iloc[0]!r})")
    return out


def _value_reasons(column: Column, values: pd.Series, settings: DataChecks,
                   result: dict) -> list[str]:
    """Null share and out-of-range share of one numeric column."""
    numbers, n, out = _numbers(values), len(values), []
    finite = np.isfinite(numbers)
    nulls = int((~finite).sum())
    result["nulls"][column.name] = nulls / n
    if nulls / n > settings.max_null_share:
        out.append(f"column {column.name!r} is null, NaN or infinite in {_share_text(nulls, n)}, "
                   f"more than max_null_share {settings.max_null_share:g}")
    if column.low is None and column.high is None:
        return out
    outside = np.zeros(n, dtype=bool)
    if column.low is not None:
        outside |= finite & (numbers < column.low)
    if column.high is not None:
        outside |= finite & (numbers > column.high)
    count = int(outside.sum())
    result["out_of_range"][column.name] = count / n
    if count / n > settings.max_out_of_range:
        worst = numbers[outside][np.argmax(np.abs(numbers[outside]))]
        out.append(f"column {column.name!r} is outside {_range_text(column)} in "
                   f"{_share_text(count, n)} (e.g. {worst:.6g}), more than max_out_of_range "
                   f"{settings.max_out_of_range:g}")
    return out


def _label_reasons(new: Table, reference: dict, settings: DataChecks, result: dict) -> list[str]:
    """Total variation of the class shares from the reference's; fails when above
    max_label_shift and unlikely (p < drift_p_value) for this many rows drawn from the reference."""
    shares = reference.get("label_shares")
    if new.label is None:
        return []
    if not shares:
        result["notes"].append("the reference has no label shares: balance not tested")
        return []
    counts = label_counts(new)
    labelled = sum(counts.values())
    if labelled < settings.min_rows:
        result["notes"].append(f"{labelled} labelled new rows < min_rows {settings.min_rows}: "
                               "balance not tested")
        return []
    shift, p_value = label_shift(counts, shares)
    result["label_shift"], result["label_p_value"] = shift, p_value
    if shift > settings.max_label_shift and p_value < settings.drift_p_value:
        before = ", ".join(f"{k} {v:.1%}" for k, v in shares.items())
        after = ", ".join(f"{k} {v:.1%}" for k, v in _shares(counts).items())
        return [f"label {new.label!r} shares moved by {shift:.3f} (total variation, p "
                f"{p_value:.2g}), more than max_label_shift {settings.max_label_shift:g}: "
                f"{after} in {labelled} new rows, {before} in the reference"]
    return []


def label_shift(counts: dict[str, int], reference: dict[str, float]) -> tuple[float, float]:
    """(total variation distance of the class shares from `reference`, the chance that as many
    rows drawn from the reference shares move at least as far: seeded multinomial draws)."""
    classes = sorted(set(counts) | set(reference))
    n = sum(counts.values())
    observed = np.array([counts.get(c, 0) for c in classes], dtype=float) / n
    expected = np.array([reference.get(c, 0.0) for c in classes], dtype=float)
    expected /= expected.sum()
    shift = 0.5 * float(np.abs(observed - expected).sum())
    draws = np.random.default_rng(LABEL_SEED).multinomial(n, expected, size=LABEL_DRAWS) / n
    far = int((0.5 * np.abs(draws - expected).sum(axis=1) >= shift - 1e-12).sum())
    return shift, (far + 1) / (LABEL_DRAWS + 1)


def _drift_reasons(new: Table, reference: dict, settings: DataChecks, result: dict) -> list[str]:
    samples = reference.get("samples", {})
    for column in new.columns:
        if not column.drift or column.name not in new.frame:
            continue
        if column.name not in samples:
            result["notes"].append(f"column {column.name!r} has no reference sample: "
                                   "drift not tested")
            continue
        values = finite_values(new.frame[column.name])
        if len(values) < settings.min_rows or not samples[column.name]:
            result["notes"].append(f"column {column.name!r} has {len(values)} finite new values "
                                   f"< min_rows {settings.min_rows}: drift not tested")
            continue
        result["drift"][column.name] = drift(values, np.asarray(samples[column.name]), settings)
    drifted = {k: v for k, v in result["drift"].items() if v["drifted"]}
    if len(drifted) <= settings.max_drifted_columns:
        return []
    detail = "; ".join(f"{name} (KS {d['ks']:.3f}, p {d['p_value']:.2g}, PSI {d['psi']:.2f})"
                       for name, d in drifted.items())
    return [f"{len(drifted)} column(s) drifted from the reference, more than max_drifted_columns "
            f"{settings.max_drifted_columns} (KS p < {settings.drift_p_value:g} and statistic > "
            f"{settings.drift_min_statistic:g}): {detail}"]


def drift(values: np.ndarray, sample: np.ndarray, settings: DataChecks) -> dict:
    """New values against the reference sample: the two-sample Anderson-Darling test's p-value
    (it weighs the tails, so it sees a change of scale, e.g. volatility, that KS misses on a
    night's few rows: measured on 24 rows at 8x the scale, AD 100%, KS 85%), the KS statistic
    as the size of the change (so a trivial shift on many rows is not drift), PSI as a figure."""
    p_value = 1.0  # one value throughout, in both: nothing moved
    if np.unique(np.concatenate([values, sample])).size > 1:
        with warnings.catch_warnings():  # scipy warns when it caps the p-value (0.001, 0.25)
            warnings.simplefilter("ignore")
            p_value = float(stats.anderson_ksamp([values, sample]).pvalue)
    ks = float(stats.ks_2samp(values, sample).statistic)
    return {"ks": ks, "p_value": p_value, "psi": population_stability(values, sample),
            "drifted": bool(p_value <= settings.drift_p_value
                            and ks > settings.drift_min_statistic)}


def population_stability(values: np.ndarray, sample: np.ndarray) -> float:
    """PSI over PSI_BINS reference-quantile bins plus one below and one above the reference's
    range; an empty bin counts as PSI_EPSILON of its side."""
    edges = np.unique(np.quantile(sample, np.linspace(0, 1, PSI_BINS + 1)))
    inner = max(len(edges) - 1, 1)

    def shares(x: np.ndarray) -> np.ndarray:
        below, above = x < edges[0], x > edges[-1]
        inside = x[~below & ~above]
        index = np.clip(np.searchsorted(edges, inside, side="right") - 1, 0, inner - 1)
        counts = np.concatenate([[below.sum()], np.bincount(index, minlength=inner),
                                 [above.sum()]])
        return np.clip(counts / len(x), PSI_EPSILON, None)

    p, q = shares(values), shares(sample)
    return float(np.sum((p - q) * np.log(p / q)))


# ------------------------------------------------------------------ helpers
def _numbers(values: pd.Series) -> np.ndarray:
    if values.dtype.kind in NUMERIC_KINDS:
        return values.to_numpy(dtype="float64", na_value=np.nan)
    return pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)


def _rounded(value: float) -> float:
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}")


def _class_name(value: object) -> str:
    """1, 1.0, True and "1" name one class: "1"."""
    if isinstance(value, (bool, np.bool_)):
        return str(int(value))
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _shares(counts: dict[str, int]) -> dict[str, float]:
    total = sum(counts.values())
    return {k: v / total for k, v in counts.items()}


def _kind(kind: str) -> str:
    return KIND_NAMES.get(kind, kind)


def _share_text(count: int, n: int) -> str:
    return f"{count} of {n} rows ({100 * count / n:.3g}%)"


def _range_text(column: Column) -> str:
    if column.low == POSITIVE:
        low = "(0"
    else:
        low = "(-inf" if column.low is None else f"[{column.low:g}"
    high = "inf)" if column.high is None else f"{column.high:g}]"
    return f"{low}, {high}"
