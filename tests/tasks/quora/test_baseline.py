"""The classical Quora baseline: pair features fitted on train only, logistic regression."""
import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer

from tasks.evaluate import verdict
from tasks.quora.baseline import FEATURES, logistic_probabilities, pair_features


def _fitted(texts):
    word = TfidfVectorizer(ngram_range=(1, 2)).fit(texts)
    char = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4)).fit(texts)
    return word, char


def test_identical_questions_look_identical_and_disjoint_ones_do_not():
    q = pd.Series(["how do i learn python fast", "what is the capital of peru"])
    other = pd.Series(["how do i learn python fast", "why do cats purr at night"])
    vec = np.array([[1.0, 0.0], [0.0, 1.0]])
    x = pair_features(q, other, vec, np.array([[1.0, 0.0], [1.0, 0.0]]), *_fitted(q.tolist()))
    row = dict(zip(FEATURES, x[0], strict=True))
    assert x.shape == (2, len(FEATURES))
    assert row["tfidf_word_cosine"] > 0.999 and row["word_jaccard"] == 1.0
    assert row["len_diff_chars"] == 0 and row["vector_cosine"] == 1.0 and row["vector_l2"] == 0
    second = dict(zip(FEATURES, x[1], strict=True))
    assert second["word_jaccard"] == 0.0 and second["shared_words"] == 0
    assert second["vector_cosine"] == 0.0


def test_the_logistic_baseline_separates_paraphrases_from_topic_changes():
    rng = np.random.default_rng(0)
    topics = [f"topic{i} word{i} thing{i}" for i in range(60)]
    rows = []
    for i in range(600):
        a = topics[rng.integers(60)]
        dup = bool(rng.integers(2))
        b = a if dup else topics[rng.integers(60)]
        rows.append({"question1": f"what about {a}", "question2": f"tell me of {b}",
                     "is_duplicate": int(dup or a == b),
                     "split": "train" if i < 400 else "test"})
    pairs = pd.DataFrame(rows)
    vec = rng.normal(size=(600, 4))
    prob = logistic_probabilities(pairs, vec, vec, seed=0)
    test = pairs["split"] == "test"
    accuracy = ((prob[test] >= 0.5) == pairs.loc[test, "is_duplicate"]).mean()
    assert prob.shape == (600,) and ((prob >= 0) & (prob <= 1)).all()
    assert accuracy > 0.9  # word overlap separates these pairs


def test_the_verdict_needs_the_interval_to_clear_the_strongest_baseline():
    baselines = {"majority": {"accuracy": 0.63}, "logistic": {"accuracy": 0.71}}
    model = {"accuracy": 0.74, "accuracy_ci": {"low": 0.70, "high": 0.78}}
    judged = verdict(model, baselines)
    assert judged["strongest_baseline"] == "logistic" and not judged["beats_strongest_baseline"]
    model["accuracy_ci"]["low"] = 0.72
    assert verdict(model, baselines)["beats_strongest_baseline"]
