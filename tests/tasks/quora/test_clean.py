"""Cleaning drops and counts; splits are stratified or truly question-disjoint."""
import numpy as np
import pandas as pd
import pytest

from tasks.config import QuoraSplit
from tasks.errors import LeakError
from tasks.quora.clean import (
    check_disjoint,
    clean_pairs,
    disjoint_split,
    normalise,
    question_groups,
    random_split,
    shared_questions,
)


def _pairs(q1, q2, dup):
    return pd.DataFrame({"id": range(len(q1)), "qid1": 0, "qid2": 0, "question1": q1,
                         "question2": q2, "is_duplicate": dup})


def test_normalise_folds_unicode_and_whitespace():
    out = normalise(pd.Series(["  What\u00a0is\tthis? ", "ﬁne  print", None]))
    assert out.tolist()[:2] == ["What is this?", "fine print"]
    assert out.isna().tolist() == [False, False, True]


def test_clean_drops_missing_and_short_questions_and_counts_them():
    pairs = _pairs(["How do I learn Python fast?", None, "Why?", "What is a good laptop?", "   "],
                   ["What is the best way to learn Python?", "Is this fine?", "Why is the sky blue?",
                    "Which laptop should I buy?", "Anything here at all?"], [1, 0, 0, 1, 0])
    kept, report = clean_pairs(pairs, min_chars=10)
    assert kept["id"].tolist() == [0, 3]
    assert report["dropped"] == {"missing question": 2, "question shorter than 10 chars": 1}
    assert report["pairs_in"] == 5 and report["pairs_kept"] == 2
    assert report["duplicate_share"] == 1.0


def test_random_split_is_stratified_and_seeded():
    labels = np.array([1] * 370 + [0] * 630)
    cfg = QuoraSplit()
    a, b = random_split(labels, cfg, 0), random_split(labels, cfg, 0)
    assert (a == b).all()
    for name in ("train", "dev", "test"):
        assert abs(labels[a == name].mean() - 0.37) < 0.02
    assert abs((a == "test").mean() - 0.1) < 0.01 and (a == "train_dev").any()


def _recurring_pairs(n_pairs: int, n_questions: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    texts = [f"Question number {i} about topic {i % 7}?" for i in range(n_questions)]
    q1, q2 = rng.integers(0, n_questions, n_pairs), rng.integers(0, n_questions, n_pairs)
    return _pairs([texts[i] for i in q1], [texts[i] for i in q2], rng.integers(0, 2, n_pairs))


def test_question_groups_join_pairs_sharing_a_question_case_insensitively():
    pairs = _pairs(["What is A?", "what is a?", "Other question here"],
                   ["What is B?", "What is C?", "Unrelated thing here"], [0, 0, 0])
    groups = question_groups(pairs["question1"], pairs["question2"])
    assert groups[0] == groups[1] != groups[2]


def test_question_disjoint_split_shares_no_question_text():
    pairs = _recurring_pairs(3000, 4000, seed=1)
    split = disjoint_split(pairs, QuoraSplit(), seed=0)
    check_disjoint(pairs, split)
    assert shared_questions(pairs, split) == {"train_dev": 0.0, "dev": 0.0, "test": 0.0}
    assert (split == "test").mean() > 0.05  # the splits are not empty
    random = random_split(pairs["is_duplicate"].to_numpy(), QuoraSplit(), 0)
    assert shared_questions(pairs, random)["test"] > 0.2  # the leak the disjoint split removes
    with pytest.raises(LeakError, match="is in both"):
        check_disjoint(pairs, random)
