"""Question vectors: tokens, ids, the vectorised weighted mean, train-only fitting, file formats."""
import gc
import json
import sys
from collections import Counter
from itertools import chain

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from gensim.models import KeyedVectors
from sklearn.feature_extraction.text import TfidfTransformer, TfidfVectorizer

from tasks.config import QuoraEmbed, QuoraSettings, QuoraSplit
from tasks.errors import ConfigError, DataError
from tasks.quora import embed as embed_module
from tasks.quora.embed import (
    count_matrix,
    detect_vector_format,
    embed_questions,
    embedding_matrix,
    fit_tfidf,
    fit_tfidf_counts,
    load_pretrained,
    question_weights,
    tfidf_matrix,
    tfidf_vectorizer,
    train_word_vectors,
    unique_questions,
    weighted_mean_vectors,
    weights_from_counts,
)
from tasks.quora.text import build_vocab, gc_paused, token_ids, tokenize

TEST_ONLY_WORD = "zyzzyva"


# ---------------------------------------------------------------- text
@pytest.mark.parametrize("text, expected", [
    ("How do I learn Python?", ["how", "do", "i", "learn", "python"]),
    ("Don't stop: it's fine", ["don't", "stop", "it's", "fine"]),
    ("Don\u2019t 'quoted' words", ["don't", "quoted", "words"]),
    ("Is 3.5 > 1,000? Version 2.0.1, end.", ["is", "3.5", "1,000", "version", "2.0.1", "end"]),
    ("snake_case & C++ / e-mail", ["snake", "case", "c", "e", "mail"]),
    ("Café naïve Zürich", ["café", "naïve", "zürich"]),
    ("???", []),
    ("", []),
])
def test_tokenize(text, expected):
    assert tokenize([text]) == [expected]


def test_tokenize_keeps_one_list_per_text():
    assert tokenize(["a b", "", "c"]) == [["a", "b"], [], ["c"]]


def test_gc_paused_nests_and_leaves_the_collector_as_it_was():
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the inner block does not switch it on early
    assert gc.isenabled()
    with pytest.raises(RuntimeError), gc_paused():
        raise RuntimeError("boom")
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_build_vocab_orders_by_frequency_then_alphabet():
    tokens = [["b", "a", "c", "a"], ["c", "d", "e"], ["b"]]
    assert build_vocab(tokens, max_size=10) == ["a", "b", "c", "d", "e"]
    assert build_vocab(tokens, max_size=2) == ["a", "b"]
    assert build_vocab(tokens, max_size=10, min_count=2) == ["a", "b", "c"]


def test_token_ids_pad_unknown_and_truncate():
    ids = token_ids([["a", "x", "c"], [], ["a"] * 6], vocab=["a", "c"], max_tokens=4)
    assert ids.dtype == np.int32 and ids.shape == (3, 4)
    assert ids.tolist() == [[2, 1, 3, 0], [0, 0, 0, 0], [2, 2, 2, 2]]


# ---------------------------------------------------------------- weighting
def _naive_weighted_mean(weights, emb):
    dense = weights.toarray()
    out = np.zeros((dense.shape[0], emb.shape[1]), dtype=np.float64)
    for i, row in enumerate(dense):
        total, acc = 0.0, np.zeros(emb.shape[1])
        for j in np.flatnonzero(row):
            if np.any(emb[j] != 0):
                total += row[j]
                acc += row[j] * emb[j]
        if total > 0:
            out[i] = acc / total
    return out


@pytest.fixture
def random_weights():
    rng = np.random.default_rng(0)
    n, v, d = 60, 40, 8
    emb = rng.standard_normal((v, d)).astype(np.float32)
    emb[::4] = 0  # every fourth word has no vector
    weights = sp.random(n, v, density=0.15, format="csr", dtype=np.float32, random_state=1)
    dense = weights.toarray()
    dense[0] = 0  # no word at all
    dense[1] = 0
    dense[1, [0, 4, 8]] = [0.5, 1.0, 2.0]  # only words without a vector
    dense[2] = 0
    dense[2, [0, 1]] = [100.0, 1.0]  # a heavy word without a vector must not dilute
    return sp.csr_matrix(dense), emb


def test_weighted_mean_vectors_matches_a_naive_loop(random_weights):
    weights, emb = random_weights
    out = weighted_mean_vectors(weights, emb)
    assert out.dtype == np.float32 and out.shape == (weights.shape[0], emb.shape[1])
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, _naive_weighted_mean(weights, emb), rtol=1e-5, atol=1e-6)
    assert not out[0].any() and not out[1].any()
    np.testing.assert_allclose(out[2], emb[1], rtol=1e-6)


def test_plain_mean_is_the_same_function_with_counts():
    emb = np.array([[1, 0], [0, 2], [0, 0], [4, 4]], dtype=np.float32)  # word 2 has no vector
    vectorizer = fit_tfidf([["a", "b", "c", "d"]])
    tokens = [["a", "a", "b", "c"], ["c"], ["d", "b", "zzz"]]
    out = weighted_mean_vectors(count_matrix(vectorizer, tokens), emb)
    expected = [np.mean([emb[0], emb[0], emb[1]], axis=0), [0, 0],
                np.mean([emb[3], emb[1]], axis=0)]
    np.testing.assert_allclose(out, expected)


# ---------------------------------------------------------------- TF-IDF
def _identity(tokens):
    return tokens


def test_fit_tfidf_agrees_with_sklearn_fit_and_transform():
    train = tokenize(["the cat sat on the mat", "the dog", "a cat and a dog and a cat", ""])
    other = tokenize(["the zebra and the cat", "unseen words only"])
    for min_df, sublinear in [(1, False), (2, False), (1, True)]:
        ours = fit_tfidf(train, min_df=min_df, sublinear_tf=sublinear)
        ref = TfidfVectorizer(analyzer=_identity, lowercase=False, dtype=np.float32,
                              min_df=min_df, sublinear_tf=sublinear).fit(train)
        assert ours.vocabulary_ == ref.vocabulary_
        np.testing.assert_allclose(ours.idf_, ref.idf_, rtol=1e-6)
        matrix = tfidf_matrix(ours, train + other)
        assert isinstance(matrix, sp.csr_matrix) and matrix.dtype == np.float32
        np.testing.assert_allclose(matrix.toarray(), ref.transform(train + other).toarray(),
                                   rtol=1e-6)
        np.testing.assert_allclose(ours.transform(other).toarray(),
                                   ref.transform(other).toarray(), rtol=1e-6)


def test_tfidf_vocabulary_is_fitted_on_train_only():
    vectorizer = fit_tfidf(tokenize(["how to learn python", "what is python"]))
    assert TEST_ONLY_WORD not in vectorizer.vocabulary_
    row = tfidf_matrix(vectorizer, tokenize([f"{TEST_ONLY_WORD} {TEST_ONLY_WORD}"]))
    assert row.nnz == 0


def test_fit_tfidf_without_tokens_is_a_data_error():
    with pytest.raises(DataError, match="question1/question2"):
        fit_tfidf([[], []])
    with pytest.raises(DataError, match="question1/question2"):
        fit_tfidf_counts([["only", "dev"], []], train_rows=np.array([1]))


def _two_pass_reference(train_tokens, token_lists, min_df=1, sublinear_tf=False):
    """The path before one-pass fitting: fit on the train token lists, then hash every
    question's tokens again to count them (count_matrix, the serving path)."""
    doc_freq = Counter(chain.from_iterable(map(set, train_tokens)))
    words = sorted(word for word, df in doc_freq.items() if df >= min_df)
    train_counts = count_matrix(tfidf_vectorizer(words, np.ones(len(words))), train_tokens)
    idf = TfidfTransformer(smooth_idf=True).fit(train_counts).idf_
    vectorizer = tfidf_vectorizer(words, idf, sublinear_tf=sublinear_tf, min_df=min_df)
    return vectorizer, question_weights(vectorizer, token_lists)


def _assert_same_weights(ours, reference):
    """Same vocabulary, idf and weight matrices, bit for bit (so the same question vectors)."""
    (vectorizer, weights), (ref_vectorizer, ref_weights) = ours, reference
    assert vectorizer.vocabulary_ == ref_vectorizer.vocabulary_
    assert vectorizer.idf_.dtype == np.float32
    assert np.array_equal(vectorizer.idf_, ref_vectorizer.idf_)
    assert vectorizer.sublinear_tf == ref_vectorizer.sublinear_tf
    for name, matrix in ref_weights.items():
        got = weights[name]
        assert got.dtype == np.float32 and got.shape == matrix.shape
        for part in ("indptr", "indices", "data"):
            assert np.array_equal(getattr(got, part), getattr(matrix, part)), (name, part)


def test_one_pass_fit_and_count_equals_fitting_then_counting_again():
    tokens = tokenize(["the cat sat on the mat", "the dog", "a cat and a dog and a cat", "",
                       f"the {TEST_ONLY_WORD} and the cat", "unseen words only", "the the dog"])
    train_rows = np.array([0, 1, 2, 3, 6])
    train = [tokens[i] for i in train_rows]
    for min_df, sublinear in [(1, False), (2, False), (1, True)]:
        vectorizer, counts = fit_tfidf_counts(tokens, train_rows, min_df=min_df,
                                              sublinear_tf=sublinear)
        _assert_same_weights((vectorizer, weights_from_counts(vectorizer, counts)),
                             _two_pass_reference(train, tokens, min_df, sublinear))
        assert TEST_ONLY_WORD not in vectorizer.vocabulary_ and "unseen" not in vectorizer.vocabulary_
        ref = TfidfVectorizer(analyzer=_identity, lowercase=False, dtype=np.float32,
                              min_df=min_df, sublinear_tf=sublinear).fit(train)
        np.testing.assert_allclose(tfidf_matrix(vectorizer, tokens).toarray(),
                                   ref.transform(tokens).toarray(), rtol=1e-6)


def test_one_pass_weights_are_the_two_pass_weights_on_the_demo_data():
    from tasks.quora.clean import clean_pairs, random_split
    from tasks.quora.ingest import demo_pairs

    pairs, _ = clean_pairs(demo_pairs(6000, seed=42), min_chars=10)
    pairs = pairs.assign(split=random_split(pairs["is_duplicate"].to_numpy(), QuoraSplit(), 42))
    questions, pair_index = unique_questions(pairs)
    in_train = np.zeros(len(questions), dtype=bool)
    in_train[pair_index[(pairs["split"] == "train").to_numpy()].ravel()] = True
    assert 0 < in_train.sum() < len(questions)
    tokens = tokenize(questions)
    vectorizer, counts = fit_tfidf_counts(tokens, np.flatnonzero(in_train))
    ours = weights_from_counts(vectorizer, counts)
    reference = _two_pass_reference([tokens[i] for i in np.flatnonzero(in_train)], tokens)
    _assert_same_weights((vectorizer, ours), reference)
    emb = np.random.default_rng(0).standard_normal((len(vectorizer.vocabulary_), 8),
                                                   dtype=np.float32)
    for name, matrix in reference[1].items():
        assert np.array_equal(weighted_mean_vectors(ours[name], emb),
                              weighted_mean_vectors(matrix, emb))


# ---------------------------------------------------------------- word vectors
SENTENCES = tokenize([f"how do i learn {w} fast and well" for w in
                      ["python", "java", "rust", "go", "math", "chess"]] * 10)


@pytest.mark.parametrize("algorithm", ["word2vec", "fasttext"])
def test_word_vectors_are_deterministic_for_a_seed(algorithm):
    kwargs = dict(algorithm=algorithm, dim=8, window=3, min_count=1, epochs=3)
    first = train_word_vectors(SENTENCES, seed=7, **kwargs)
    second = train_word_vectors(SENTENCES, seed=7, **kwargs)
    other = train_word_vectors(SENTENCES, seed=8, **kwargs)
    assert first.index_to_key == second.index_to_key
    assert np.array_equal(first.vectors, second.vectors)
    assert not np.array_equal(first.vectors, other.vectors)
    assert TEST_ONLY_WORD not in first.key_to_index


def test_word_vectors_need_a_word_above_min_count():
    with pytest.raises(DataError, match="min|times"):
        train_word_vectors([["a"], ["b"]], dim=4, min_count=5, epochs=1)


def test_embedding_matrix_zero_rows_and_coverage():
    kv = KeyedVectors(vector_size=3)
    kv.add_vectors(["a", "c"], np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float32))
    emb, coverage = embedding_matrix(["a", "b", "c", "d"], kv)
    assert emb.dtype == np.float32 and emb.shape == (4, 3)
    assert emb[[1, 3]].sum() == 0 and emb[2].tolist() == [4, 5, 6]
    assert coverage == 0.5


# ---------------------------------------------------------------- pretrained files
def _tiny_kv():
    kv = KeyedVectors(vector_size=4)
    kv.add_vectors(["python", "learn", "how", "don't"],
                   np.arange(16, dtype=np.float32).reshape(4, 4) / 10 + 0.1)
    return kv


def _write_glove(path, kv):
    path.write_text("".join(f"{w} {' '.join(f'{x:.6f}' for x in kv[w])}\n"
                            for w in kv.index_to_key))
    return path


@pytest.mark.parametrize("kind", ["glove", "word2vec_text", "word2vec_binary"])
def test_load_pretrained_formats(tmp_path, kind):
    kv = _tiny_kv()
    if kind == "glove":
        path = _write_glove(tmp_path / "glove.6B.4d.txt", kv)
    else:
        path = tmp_path / ("vectors.bin" if kind == "word2vec_binary" else "vectors.vec")
        kv.save_word2vec_format(str(path), binary=kind == "word2vec_binary")
    assert detect_vector_format(path) == kind
    for fmt in ("auto", kind):
        loaded = load_pretrained(path, fmt)
        assert loaded.index_to_key == kv.index_to_key
        np.testing.assert_allclose(loaded.vectors, kv.vectors, rtol=1e-5)


def test_binary_word2vec_is_detected_without_its_extension(tmp_path):
    path = tmp_path / "vectors.w2v"
    _tiny_kv().save_word2vec_format(str(path), binary=True)
    assert detect_vector_format(path) == "word2vec_binary"


@pytest.mark.parametrize("content", [
    b"\x00\xff\xfe garbage \x81\x82\n\x00\x01",
    b"2 4\nonly 0.1 0.2\n",
    b"a 0.1 0.2 0.3\nb 0.1 zero\n",
    b"",
])
def test_garbled_vectors_file_is_a_data_error_naming_it(tmp_path, content):
    path = tmp_path / "broken.txt"
    path.write_bytes(content)
    with pytest.raises(DataError, match="broken.txt"):
        load_pretrained(path, "auto")


def test_missing_vectors_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="nowhere.txt"):
        load_pretrained(tmp_path / "nowhere.txt", "glove")


def test_spacy_missing_is_a_config_error_naming_the_key(monkeypatch):
    monkeypatch.setitem(sys.modules, "spacy", None)  # makes `import spacy` fail
    with pytest.raises(ConfigError, match=r"quora\.embed\.pretrained_path"):
        load_pretrained("en_core_web_md", "spacy")


# ---------------------------------------------------------------- the stage
WORDS = ["python", "java", "rust", "learn", "guitar", "cook", "rice", "travel", "japan",
         "money", "save", "invest", "write", "novel", "run", "marathon", "sleep", "better"]
SPLIT_OF = ["train"] * 6 + ["train_dev", "dev", "test", "test"]


def _pairs(n=300, seed=0):
    rng = np.random.default_rng(seed)
    pool = [f"How do I {' '.join(rng.choice(WORDS, size=rng.integers(2, 6)))}?"
            for _ in range(220)]
    rows = []
    for i in range(n):
        split = SPLIT_OF[i % len(SPLIT_OF)]
        q1, q2 = (pool[j] for j in rng.choice(len(pool), size=2, replace=False))
        if split == "test" and i % 3 == 0:
            q2 = f"What is a {TEST_ONLY_WORD}?"
        rows.append({"id": i, "question1": q1, "question2": q2,
                     "is_duplicate": int(rng.random() < 0.4), "split": split})
    return pd.DataFrame(rows)


@pytest.fixture
def clean_dir(tmp_path):
    path = tmp_path / "clean"
    path.mkdir()
    _pairs().to_parquet(path / "pairs.parquet", index=False)
    return path


def _settings(pretrained_path=None):
    return QuoraSettings(embed=QuoraEmbed(dim=12, window=3, min_count=1, epochs=2,
                                          max_tokens=5, vocab_size=100,
                                          pretrained_path=pretrained_path))


def test_embed_questions_writes_every_file(tmp_path, clean_dir):
    glove = _write_glove(tmp_path / "glove.txt", _tiny_kv())
    out = tmp_path / "embed"
    summary = embed_questions.fn(_settings(str(glove)), clean_dir, out, seed=3)
    pairs = pd.read_parquet(clean_dir / "pairs.parquet")
    questions = pd.read_parquet(out / "questions.parquet")["question"].tolist()
    n_q = len(questions)
    assert n_q == len(set(pairs["question1"]) | set(pairs["question2"]))

    sets = ["gensim_tfidf", "gensim_mean", "pretrained_tfidf", "pretrained_mean"]
    assert summary["sets"] == sets
    for name in sets:
        vectors = np.load(out / f"vectors_{name}.npy")
        dim = 4 if name.startswith("pretrained") else 12
        assert vectors.dtype == np.float32 and vectors.shape == (n_q, dim)
        assert np.isfinite(vectors).all()

    pair_index = np.load(out / "pair_index.npy")
    assert pair_index.dtype == np.int32 and pair_index.shape == (len(pairs), 2)
    assert [questions[i] for i in pair_index[:, 0]] == pairs["question1"].tolist()
    assert [questions[i] for i in pair_index[:, 1]] == pairs["question2"].tolist()

    ids = np.load(out / "token_ids.npy")
    vocab = json.loads((out / "vocab.json").read_text())["words"]
    init = np.load(out / "embedding_init.npy")
    assert ids.dtype == np.int32 and ids.shape == (n_q, 5)
    assert init.dtype == np.float32 and init.shape == (len(vocab) + 2, 12)
    assert not init[:2].any() and init[2:].any(axis=1).all()
    assert ids.max() < len(vocab) + 2

    # Nothing from dev/test-only text was fitted: the test-only word is unknown everywhere.
    assert TEST_ONLY_WORD not in vocab
    only_test = questions.index(f"What is a {TEST_ONLY_WORD}?")  # no word of it in train
    assert ids[only_test].tolist() == [1, 1, 1, 1, 0]
    for name in sets:
        assert not np.load(out / f"vectors_{name}.npy")[only_test].any()
    report = json.loads((out / "embed.json").read_text())
    assert report["questions"] == n_q and report["sets"] == sets
    assert report["train_questions"] < n_q
    assert 0 < report["coverage"]["pretrained"] < 1 and report["coverage"]["gensim"] == 1.0
    assert "seconds" not in report  # a DVC output carries no wall-clock value

    # Same seed, same vectors; a run without pretrained vectors drops the old pretrained sets.
    again = tmp_path / "again"
    embed_questions.fn(_settings(str(glove)), clean_dir, again, seed=3)
    assert np.array_equal(np.load(again / "vectors_gensim_tfidf.npy"),
                          np.load(out / "vectors_gensim_tfidf.npy"))
    embed_questions.fn(_settings(), clean_dir, out, seed=3)
    assert sorted(p.name for p in out.glob("vectors_*.npy")) == [
        "vectors_gensim_mean.npy", "vectors_gensim_tfidf.npy"]


def test_embed_questions_rejects_a_bad_split(tmp_path):
    pairs = _pairs(40)
    pairs.loc[5, "split"] = "validation"
    (tmp_path / "clean").mkdir()
    pairs.to_parquet(tmp_path / "clean" / "pairs.parquet", index=False)
    with pytest.raises(DataError, match="row 5.*split"):
        embed_questions.fn(_settings(), tmp_path / "clean", tmp_path / "out", seed=0)
    assert gc.isenabled()


def test_embed_questions_keeps_the_collector_paused_while_token_lists_live(
        tmp_path, clean_dir, monkeypatch):
    collector_on = []

    def watched(name, real):
        def call(*args, **kwargs):
            collector_on.append((name, gc.isenabled()))
            return real(*args, **kwargs)
        monkeypatch.setattr(embed_module, name, call)

    for name in ("tokenize", "train_word_vectors", "token_ids"):
        watched(name, getattr(embed_module, name))
    embed_questions.fn(_settings(), clean_dir, tmp_path / "embed", seed=0)
    assert collector_on == [("tokenize", False), ("train_word_vectors", False),
                            ("token_ids", False)]
    assert gc.isenabled()
