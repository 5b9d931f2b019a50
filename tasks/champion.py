"""Champion / challenger in the MLflow model registry, and the alias's history.

The newest version of a registered model that has not been judged yet is the challenger. The
nightly scores it and the champion on the same rows (tonight's test split, each through its
registered pyfunc: tasks/rescore.py) and hands over a `Comparison`. The challenger takes the
`champion` alias only if

- it beats the pipeline's strongest baseline on those rows (the logistic model, the frame
  model: not only the naive ones), and
- the paired 95% interval of (challenger - champion) clears the rule (`nightly.promote_if`):
  `non_inferior`, its lower bound above -margin; `superior`, above +margin.

A champion that cannot be scored (its code no longer loads, say) keeps the alias, and the
verdict says why: it is never replaced silently. Every verdict is written on the judged
version as tags (so no version is judged twice), and every move of the alias, by the nightly
or by hand (`reprolab promote`, `reprolab rollback`), is a span on the version that held it
(`champion_spans`: from, until, why, by): the registry holds the whole history.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from tasks.errors import ReproLabError

CHAMPION = "champion"
SPANS = "champion_spans"  # version tag: JSON list of the spans the version held the alias
RULES = ("non_inferior", "superior")
TAG_LIMIT = 5000          # MLflow's longest model version tag value
WHY_LIMIT = 400


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Comparison:
    """The challenger and the champion scored on the same rows (tonight's test split)."""

    metric: str
    rows: int
    digest: str                        # of those rows
    new: float                         # the challenger's metric
    baseline: str                      # the strongest baseline on the same rows
    baseline_value: float
    old: float | None = None           # the champion's metric (None: no champion, or unscored)
    difference: dict | None = None     # challenger - champion: {"mean", "low", "high"}
    champion_error: str | None = None  # why the champion could not be scored


@dataclass(frozen=True)
class Rule:
    promote_if: str = "non_inferior"
    margin: float = 0.0

    def __post_init__(self) -> None:
        if self.promote_if not in RULES:
            raise ReproLabError(f"promote_if {self.promote_if!r}: one of {', '.join(RULES)}")

    @property
    def bound(self) -> float:
        """The value the interval's lower bound must be above."""
        return -self.margin if self.promote_if == "non_inferior" else self.margin


@dataclass(frozen=True)
class Verdict:
    model: str
    challenger: str | None
    champion: str | None
    promoted: bool
    reason: str
    new: float | None = None
    old: float | None = None
    metric: str | None = None
    difference: dict | None = None
    rule: str | None = None
    margin: float | None = None
    baseline: str | None = None
    baseline_value: float | None = None
    rows: int | None = None
    digest: str | None = None
    by: str = "nightly"
    at: str = field(default_factory=now)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- the registry
def client() -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def versions(mlflow_client: Any, model: str) -> list[Any]:
    found = mlflow_client.search_model_versions(f"name='{model}'")
    return sorted(found, key=lambda v: int(v.version))


def newest_version(mlflow_client: Any, model: str) -> Any | None:
    return (versions(mlflow_client, model) or [None])[-1]


def champion_version(mlflow_client: Any, model: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return mlflow_client.get_model_version_by_alias(model, CHAMPION)
    except MlflowException:  # no alias yet (or no registered model at all)
        return None


def challenger_version(mlflow_client: Any, model: str) -> Any | None:
    """The newest version if it has not been judged yet (no `decision` tag), else None."""
    newest = newest_version(mlflow_client, model)
    return None if newest is None or "decision" in newest.tags else newest


# ---------------------------------------------------------------- the rule
def decide(comparison: Comparison, rule: Rule, has_champion: bool) -> tuple[bool, str]:
    """(promote?, why), from the two models' scores on the same rows: the challenger must beat
    the strongest baseline and clear the rule against the champion; the reason says both."""
    c = comparison
    on_rows = f"on the same {c.rows} test rows ({c.digest})"
    beats = c.new > c.baseline_value
    baseline = (f"{'beats' if beats else 'does not beat'} the strongest baseline {c.baseline} "
                f"{c.baseline_value:.4f}")
    if not has_champion:
        return beats, (f"first model version: no champion yet; {c.metric} {c.new:.4f} "
                       f"{baseline} {on_rows}")
    if c.champion_error is not None or c.difference is None or c.old is None:
        return False, (f"the champion could not be scored on tonight's rows "
                       f"({c.champion_error}): it keeps the alias until a person looks "
                       f"(`reprolab promote` moves it by hand); the challenger {baseline}")
    d = c.difference
    clears = d["low"] > rule.bound
    return clears and beats, (
        f"{c.metric} {c.new:.4f} vs the champion's {c.old:.4f} {on_rows}: difference "
        f"{d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}], lower bound "
        f"{'>' if clears else '<='} {rule.bound:+.4f} ({rule.promote_if}, margin "
        f"{rule.margin}); {baseline}")


def judge(mlflow_client: Any, model: str, challenger: Any, champion: Any | None,
          comparison: Comparison, rule: Rule) -> Verdict:
    """Decide, write the verdict on the challenger, move the alias if it wins."""
    promoted, reason = decide(comparison, rule, champion is not None)
    c = comparison
    verdict = Verdict(model, str(challenger.version),
                      None if champion is None else str(champion.version), promoted, reason,
                      c.new, c.old, c.metric, c.difference, rule.promote_if, rule.margin,
                      c.baseline, c.baseline_value, c.rows, c.digest)
    record(mlflow_client, verdict)
    if promoted:
        move_alias(mlflow_client, model, verdict.challenger, reason, "nightly", verdict.at)
    return verdict


def no_challenger(mlflow_client: Any, model: str) -> Verdict:
    """The verdict of a night with no new model version to judge."""
    newest = newest_version(mlflow_client, model)
    champion = champion_version(mlflow_client, model)
    old = None if champion is None else str(champion.version)
    if newest is None:
        return Verdict(model, None, old, False, "no registered model version")
    return Verdict(model, None, old, False, f"no new model version (v{newest.version} was "
                   f"judged already: {newest.tags.get('decision', '')[:200]})")


def record(mlflow_client: Any, verdict: Verdict) -> None:
    """The verdict as tags on the judged version: it is never judged again."""
    tags = {"decision": ("promoted: " if verdict.promoted else "kept the champion: ")
            + verdict.reason,
            "verdict": json.dumps(verdict.as_dict(), separators=(",", ":"))}
    if verdict.new is not None:
        tags.update(test_metric=str(verdict.metric), test_value=repr(verdict.new),
                    test_data=str(verdict.digest))
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(verdict.model, verdict.challenger, key,
                                            value[:TAG_LIMIT])


# ---------------------------------------------------------------- the alias's history
def spans_of(version: Any) -> list[dict]:
    try:
        return json.loads(version.tags.get(SPANS, "[]"))
    except ValueError:
        return []


def _write_spans(mlflow_client: Any, model: str, version: str, spans: list[dict]) -> None:
    text = json.dumps(spans, separators=(",", ":"))
    while len(text) > TAG_LIMIT and len(spans) > 1:  # the oldest spans go first
        spans = spans[1:]
        text = json.dumps(spans, separators=(",", ":"))
    mlflow_client.set_model_version_tag(model, version, SPANS, text)


def move_alias(mlflow_client: Any, model: str, version: str, why: str, by: str,
               at: str | None = None) -> None:
    """Give `version` the champion alias, closing the span of the version that held it."""
    at = at or now()
    current = champion_version(mlflow_client, model)
    if current is not None and str(current.version) == str(version):
        return
    if current is not None:
        spans = spans_of(current)
        if spans and spans[-1].get("until") is None:
            spans[-1].update(until=at, ended=why[:WHY_LIMIT])
            _write_spans(mlflow_client, model, str(current.version), spans)
    new = mlflow_client.get_model_version(model, str(version))
    seq = 1 + max((span.get("seq", 0) for span in history(mlflow_client, model)), default=0)
    spans = [*spans_of(new), {"seq": seq, "from": at, "until": None, "why": why[:WHY_LIMIT],
                              "by": by}]
    _write_spans(mlflow_client, model, str(version), spans)
    mlflow_client.set_registered_model_alias(model, CHAMPION, str(version))


def history(mlflow_client: Any, model: str) -> list[dict]:
    """Every span any version held the alias, oldest first: seq (its place in the history),
    version, from, until (None: it still holds it), why, by (nightly or person), ended (why it
    lost the alias)."""
    rows = [{"version": str(v.version), **span} for v in versions(mlflow_client, model)
            for span in spans_of(v)]
    return sorted(rows, key=lambda row: (row.get("seq", 0), row["from"]))


def previous_champion(mlflow_client: Any, model: str) -> str | None:
    """The version that held the alias before the current champion (None if none did)."""
    current = champion_version(mlflow_client, model)
    spans = history(mlflow_client, model)
    if current is not None:
        mine = [i for i, s in enumerate(spans) if s["version"] == str(current.version)]
        spans = [s for s in spans[:mine[-1] if mine else len(spans)]
                 if s["version"] != str(current.version)]
    return spans[-1]["version"] if spans else None


def promote(mlflow_client: Any, model: str, version: str, reason: str, by: str = "person"
            ) -> Verdict:
    """Move the alias by hand to `version`, recorded like a nightly verdict."""
    from mlflow.exceptions import MlflowException

    try:
        target = mlflow_client.get_model_version(model, str(version))
    except MlflowException:
        known = ", ".join(str(v.version) for v in versions(mlflow_client, model)) or "none"
        raise ReproLabError(f"{model}: no version {version} (versions: {known})") from None
    champion = champion_version(mlflow_client, model)
    old = None if champion is None else str(champion.version)
    if old == str(target.version):
        raise ReproLabError(f"{model}: v{version} is the champion already")
    verdict = Verdict(model, str(target.version), old, True, f"by hand: {reason}", by=by)
    move_alias(mlflow_client, model, str(target.version), verdict.reason, by, verdict.at)
    if "decision" not in target.tags:  # the nightly does not judge it again
        record(mlflow_client, verdict)
    return verdict


def rollback(mlflow_client: Any, model: str, reason: str) -> Verdict:
    """Give the alias back to the version that held it before the current champion."""
    previous = previous_champion(mlflow_client, model)
    if previous is None:
        raise ReproLabError(f"{model}: no earlier champion to roll back to")
    return promote(mlflow_client, model, previous, f"rollback: {reason}")
