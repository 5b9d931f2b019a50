"""The promotion gate and the alias's history, on a real MLflow registry (SQLite)."""
import mlflow
import pytest

from tasks import champion
from tasks.champion import Comparison, Rule
from tasks.errors import ReproLabError

MODEL = "demo-model"


@pytest.fixture
def registry(tmp_path):
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    client.create_registered_model(MODEL)
    return client


def new_version(client) -> str:
    return str(client.create_model_version(MODEL, source="file:///nowhere/model").version)


def comparison(new: float, old: float | None = None, low: float = 0.0, high: float = 0.0,
               baseline: float = 0.5, error: str | None = None) -> Comparison:
    difference = None if old is None else {"mean": new - old, "low": low, "high": high}
    return Comparison("test.accuracy", 400, "abc123", new, "logistic", baseline, old,
                      difference, error)


DEFAULT = Rule("non_inferior", 0.01)


def night(client, compared: Comparison, rule: Rule = DEFAULT):
    """One judged challenger: the newest version against the champion."""
    challenger = champion.challenger_version(client, MODEL)
    current = champion.champion_version(client, MODEL)
    return champion.judge(client, MODEL, challenger, current, compared, rule)


def champion_of(client) -> str | None:
    current = champion.champion_version(client, MODEL)
    return None if current is None else str(current.version)


def test_a_first_version_needs_to_beat_the_strongest_baseline(registry):
    new_version(registry)
    verdict = night(registry, comparison(0.52, baseline=0.54))
    assert not verdict.promoted and champion_of(registry) is None
    assert "does not beat the strongest baseline logistic 0.5400" in verdict.reason
    second = new_version(registry)
    verdict = night(registry, comparison(0.56, baseline=0.54))
    assert verdict.promoted and champion_of(registry) == second
    assert "first model version" in verdict.reason


def test_a_version_is_judged_once_and_the_verdict_is_on_it(registry):
    version = new_version(registry)
    night(registry, comparison(0.6))
    assert champion.challenger_version(registry, MODEL) is None
    tags = registry.get_model_version(MODEL, version).tags
    assert tags["decision"].startswith("promoted: ") and tags["test_data"] == "abc123"
    quiet = champion.no_challenger(registry, MODEL)
    assert not quiet.promoted and f"v{version} was judged already" in quiet.reason


@pytest.mark.parametrize(("rule", "promoted"), [
    (Rule("non_inferior", 0.01), True),   # 0 > -0.01
    (Rule("non_inferior", 0.0), False),   # 0 is not above 0
    (Rule("superior", 0.0), False),
    (Rule("superior", 0.01), False)])
def test_an_equal_challenger_is_promoted_exactly_as_the_rule_says(registry, rule, promoted):
    first = new_version(registry)
    night(registry, comparison(0.7))
    second = new_version(registry)
    verdict = night(registry, comparison(0.7, old=0.7, low=0.0, high=0.0), rule)
    assert verdict.promoted is promoted
    assert champion_of(registry) == (second if promoted else first)
    assert verdict.difference == {"mean": 0.0, "low": 0.0, "high": 0.0}
    assert f"({rule.promote_if}, margin {rule.margin})" in verdict.reason


@pytest.mark.parametrize("rule", [Rule("non_inferior", 0.01), Rule("superior", 0.0)])
def test_a_worse_challenger_is_never_promoted(registry, rule):
    first = new_version(registry)
    night(registry, comparison(0.76))
    new_version(registry)
    verdict = night(registry, comparison(0.685, old=0.764, low=-0.11, high=-0.05), rule)
    assert not verdict.promoted and champion_of(registry) == first
    assert "lower bound <=" in verdict.reason


def test_a_better_challenger_clears_superior(registry):
    new_version(registry)
    night(registry, comparison(0.6))
    second = new_version(registry)
    verdict = night(registry, comparison(0.7, old=0.6, low=0.04, high=0.16),
                    Rule("superior", 0.01))
    assert verdict.promoted and champion_of(registry) == second


def test_a_champion_that_cannot_be_scored_keeps_the_alias_and_the_night_says_so(registry):
    first = new_version(registry)
    night(registry, comparison(0.6))
    new_version(registry)
    verdict = night(registry, comparison(0.9, error="ModuleNotFoundError: tasks.old"))
    assert not verdict.promoted and champion_of(registry) == first
    assert "could not be scored" in verdict.reason and "tasks.old" in verdict.reason


def test_history_promote_and_rollback(registry):
    v1 = new_version(registry)
    night(registry, comparison(0.6))
    v2 = new_version(registry)
    night(registry, comparison(0.7, old=0.6, low=0.02, high=0.1))
    assert champion_of(registry) == v2
    spans = champion.history(registry, MODEL)
    assert [(s["version"], s["by"]) for s in spans] == [(v1, "nightly"), (v2, "nightly")]
    assert spans[0]["until"] == spans[1]["from"] and spans[1]["until"] is None
    assert "difference" in spans[0]["ended"]

    back = champion.rollback(registry, MODEL, "v2 misbehaves in production")
    assert back.promoted and back.by == "person" and champion_of(registry) == v1
    assert "rollback: v2 misbehaves in production" in back.reason
    spans = champion.history(registry, MODEL)
    assert [s["version"] for s in spans] == [v1, v2, v1] and spans[-1]["by"] == "person"

    v3 = new_version(registry)
    hand = champion.promote(registry, MODEL, v3, "checked by hand")
    assert champion_of(registry) == v3 and hand.champion == v1
    assert champion.challenger_version(registry, MODEL) is None  # not judged again at night
    assert champion.rollback(registry, MODEL, "oops").challenger == v1
    with pytest.raises(ReproLabError, match="no version 9"):
        champion.promote(registry, MODEL, "9", "typo")
    with pytest.raises(ReproLabError, match="champion already"):
        champion.promote(registry, MODEL, v1, "again")


def test_no_earlier_champion_is_a_clear_error(registry):
    new_version(registry)
    night(registry, comparison(0.6))
    with pytest.raises(ReproLabError, match="no earlier champion"):
        champion.rollback(registry, MODEL, "why not")


def test_a_rule_outside_the_known_ones_is_refused():
    with pytest.raises(ReproLabError, match="non_inferior, superior"):
        Rule("better", 0.0)
