"""Champion / challenger in the MLflow model registry.

The newest version of a registered model that has not been judged yet is the challenger. It
takes the `champion` alias only if its test metric beats the champion's by the margin on the
same test data (the digest of the test split both were scored on). When the test data changed
since the champion was scored (new candles, a new Quora dump, new clips), the two numbers are
not comparable; the challenger, trained and tested on the newer data, is promoted only if it
beats the naive baseline on that data by the margin. Every verdict is written on the version
as tags, so a rerun never judges a version twice.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

CHAMPION = "champion"


@dataclass(frozen=True)
class Score:
    """A model's test metric, the digest of the test data behind it, and the naive baseline's
    value of the same metric on the same data."""

    metric: str
    value: float
    test_data: str
    baseline: float


@dataclass(frozen=True)
class Verdict:
    model: str
    challenger: str | None
    champion: str | None
    promoted: bool
    reason: str
    new: float | None = None
    old: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def client() -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def newest_version(mlflow_client: Any, model: str) -> Any | None:
    versions = mlflow_client.search_model_versions(f"name='{model}'")
    return max(versions, key=lambda v: int(v.version), default=None)


def champion_version(mlflow_client: Any, model: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return mlflow_client.get_model_version_by_alias(model, CHAMPION)
    except MlflowException:  # no alias yet (or no registered model at all)
        return None


def judge(mlflow_client: Any, model: str, score: Score, margin: float) -> Verdict:
    """Judge the newest unjudged version of `model` against the champion; promote or not."""
    challenger = newest_version(mlflow_client, model)
    champion = champion_version(mlflow_client, model)
    old_version = str(champion.version) if champion else None
    if challenger is None:
        return Verdict(model, None, old_version, False, "no registered model version")
    if "decision" in challenger.tags:
        return Verdict(model, None, old_version, False,
                       f"no new model version (v{challenger.version} was judged already: "
                       f"{challenger.tags['decision']})")
    promoted, reason, old = decide(champion, score, margin)
    version = str(challenger.version)
    verdict = Verdict(model, version, old_version, promoted, reason, score.value, old)
    record(mlflow_client, model, version, score, verdict)
    return verdict


def decide(champion: Any | None, score: Score, margin: float) -> tuple[bool, str, float | None]:
    """(promote?, why, the champion's value when comparable)."""
    if champion is None:
        return True, "first model version: no champion yet", None
    old = float(champion.tags.get("test_value", "nan"))
    if champion.tags.get("test_data") == score.test_data and old == old:
        better = score.value >= old + margin
        word = "beats" if better else "does not beat"
        return better, (f"{score.metric} {score.value:.4f} {word} the champion's {old:.4f} + "
                        f"margin {margin} on the same test data"), old
    better = score.value >= score.baseline + margin
    word = "beats" if better else "does not beat"
    return better, (f"test data changed since the champion was scored, so the two are not "
                    f"comparable; {score.metric} {score.value:.4f} {word} the naive baseline "
                    f"{score.baseline:.4f} + margin {margin} on the new data"), None


def record(mlflow_client: Any, model: str, version: str, score: Score, verdict: Verdict) -> None:
    """Tags on the judged version; the alias moves only on promotion."""
    tags = {"test_metric": score.metric, "test_value": repr(score.value),
            "test_data": score.test_data, "baseline_value": repr(score.baseline),
            "decision": ("promoted: " if verdict.promoted else "kept the champion: ")
            + verdict.reason}
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(model, version, key, value[:5000])
    if verdict.promoted:
        mlflow_client.set_registered_model_alias(model, CHAMPION, version)
