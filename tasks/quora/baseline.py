"""A classical baseline the networks must beat: logistic regression on simple pair features
(TF-IDF cosines, word and character n-gram overlap, shared words, length differences,
word-vector distances), every transform fitted on the training pairs only."""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

FEATURES = ("tfidf_word_cosine", "tfidf_char_cosine", "word_jaccard", "char3_jaccard",
            "shared_words", "len_diff_chars", "len_diff_words", "len_ratio",
            "vector_cosine", "vector_l2")


def _rowwise_cosine(a, b) -> np.ndarray:
    """Cosine of each row pair of two L2-normalised sparse matrices (TF-IDF rows are)."""
    return np.asarray(a.multiply(b).sum(axis=1)).ravel()


def _jaccard(left: list[set], right: list[set]) -> np.ndarray:
    return np.array([len(x & y) / len(x | y) if x | y else 0.0
                     for x, y in zip(left, right, strict=True)])


def _char3(text: str) -> set[str]:
    return {text[i:i + 3] for i in range(max(len(text) - 2, 0))}


def pair_features(q1: pd.Series, q2: pd.Series, vec1: np.ndarray, vec2: np.ndarray,
                  word: TfidfVectorizer, char: TfidfVectorizer) -> np.ndarray:
    """One row of FEATURES per pair; `word` and `char` are TF-IDF models fitted on train."""
    a, b = q1.str.lower().tolist(), q2.str.lower().tolist()
    words_a, words_b = [set(t.split()) for t in a], [set(t.split()) for t in b]
    len_a, len_b = np.array([len(t) for t in a], float), np.array([len(t) for t in b], float)
    nw_a = np.array([len(t.split()) for t in a], float)
    nw_b = np.array([len(t.split()) for t in b], float)
    norms = np.linalg.norm(vec1, axis=1) * np.linalg.norm(vec2, axis=1)
    cosine = np.divide((vec1 * vec2).sum(axis=1), norms, out=np.zeros(len(a)), where=norms > 0)
    return np.column_stack([
        _rowwise_cosine(word.transform(a), word.transform(b)),
        _rowwise_cosine(char.transform(a), char.transform(b)),
        _jaccard(words_a, words_b),
        _jaccard([_char3(t) for t in a], [_char3(t) for t in b]),
        np.array([len(x & y) for x, y in zip(words_a, words_b, strict=True)], float),
        np.abs(len_a - len_b), np.abs(nw_a - nw_b),
        np.minimum(len_a, len_b) / np.maximum(np.maximum(len_a, len_b), 1.0),
        cosine, np.linalg.norm(vec1 - vec2, axis=1)])


def logistic_probabilities(pairs: pd.DataFrame, vec1: np.ndarray, vec2: np.ndarray,
                           seed: int) -> np.ndarray:
    """P(duplicate) for every pair from a logistic regression fitted on the train pairs."""
    train = (pairs["split"] == "train").to_numpy()
    questions = pd.concat([pairs.loc[train, "question1"], pairs.loc[train, "question2"]])
    texts = questions.str.lower().drop_duplicates().tolist()
    word = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True).fit(texts)
    char = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), min_df=2,
                           sublinear_tf=True).fit(texts)
    x = pair_features(pairs["question1"], pairs["question2"], vec1, vec2, word, char)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    model.fit(x[train], pairs.loc[train, "is_duplicate"].to_numpy())
    return model.predict_proba(x)[:, 1]
