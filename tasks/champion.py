"""Champion / challenger in the MLflow model registry.

The newest version of a registered model that has not been judged yet is the challenger. It
takes the `champion` alias only if its test metric beats the champion's by the margin on the
same test data (the digest of the test split both were scored on). When the test data changed
since the champion was scored (new candles, new clips), the pipeline re-scores the champion's
weights on tonight's test data where it can (crypto). Where it cannot (a Quora model reads
word vectors trained on its own data), the two numbers are not comparable; the challenger,
trained and tested on the newer data, is then promoted only if it beats the naive baseline on
that data by the margin. Every verdict is written on the version as tags, so a rerun never
judges a version twice.
"""
from __future__ import annotations

from collections.abc import Callable
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


def judge(mlflow_client: Any, model: str, score: Score, margin: float,
          rescore: Callable[[str], float] | None = None) -> Verdict:
    """Judge the newest unjudged version of `model` against the champion; promote or not.
    `rescore(version)`: that version's metric on tonight's test data, where the pipeline can
    compute it (used when the champion was scored on other test data)."""
    challenger = newest_version(mlflow_client, model)
    champion = champion_version(mlflow_client, model)
    old_version = str(champion.version) if champion else None
    if challenger is None:
        return Verdict(model, None, old_version, False, "no registered model version")
    if "decision" in challenger.tags:
        return Verdict(model, None, old_version, False,
                       f"no new model version (v{challenger.version} was judged already: "
                       f"{challenger.tags['decision']})")
    old, where = champion_value(champion, score, rescore)
    promoted, reason = decide(champion is not None, old, where, score, margin)
    version = str(challenger.version)
    verdict = Verdict(model, version, old_version, promoted, reason, score.value, old)
    record(mlflow_client, model, version, score, verdict)
    if champion is not None and old is not None and where == RESCORED and not promoted:
        # the champion stays: its score on tonight's data is the one to beat from now on
        for key, value in {"test_value": repr(old), "test_data": score.test_data}.items():
            mlflow_client.set_model_version_tag(model, old_version, key, value)
    return verdict


SAME, RESCORED = "on the same test data", "re-scored on tonight's test data"


def champion_value(champion: Any | None, score: Score,
                   rescore: Callable[[str], float] | None) -> tuple[float | None, str]:
    """The champion's metric on the challenger's test data, and how it was obtained; (None, '')
    when there is no champion or it cannot be scored on that data."""
    if champion is None:
        return None, ""
    old = float(champion.tags.get("test_value", "nan"))
    if champion.tags.get("test_data") == score.test_data and old == old:
        return old, SAME
    if rescore is not None:
        return float(rescore(str(champion.version))), RESCORED
    return None, ""


def decide(has_champion: bool, old: float | None, where: str, score: Score, margin: float
           ) -> tuple[bool, str]:
    """(promote?, why)."""
    if not has_champion:
        return True, "first model version: no champion yet"
    if old is not None:
        better = score.value >= old + margin
        word = "beats" if better else "does not beat"
        return better, (f"{score.metric} {score.value:.4f} {word} the champion's {old:.4f} + "
                        f"margin {margin} {where}")
    better = score.value >= score.baseline + margin
    word = "beats" if better else "does not beat"
    return better, (f"test data changed since the champion was scored and it cannot be "
                    f"re-scored on the new data, so the two are not comparable; "
                    f"{score.metric} {score.value:.4f} {word} the naive baseline "
                    f"{score.baseline:.4f} + margin {margin} on the new data")


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
