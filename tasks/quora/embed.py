"""Question vectors: TF-IDF-weighted and plain means of word vectors, plus token ids.

Everything fitted (TF-IDF vocabulary and idf, gensim vectors, the token-id vocabulary)
sees train questions only; dev and test questions are only transformed.
"""
from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from gensim.models import FastText, KeyedVectors, Word2Vec
from gensim.models.fasttext import FastTextKeyedVectors
from gensim.utils import open as open_maybe_compressed
from prefect import task
from sklearn.feature_extraction.text import TfidfTransformer, TfidfVectorizer

from tasks.config import QuoraSettings
from tasks.errors import ConfigError, DataError
from tasks.logs import get_logger
from tasks.quora.text import (
    FIRST_WORD_ID,
    PAD_ID,
    UNKNOWN_ID,
    build_vocab,
    flatten,
    gc_paused,
    token_ids,
    tokenize,
)
from tasks.storage import read_json, read_parquet, write_json, write_npy, write_parquet

PAIR_COLUMNS = ("id", "question1", "question2", "is_duplicate", "split")
SPLITS = ("train", "train_dev", "dev", "test")
VECTOR_FORMATS = ("glove", "word2vec_text", "word2vec_binary", "spacy")

# gensim logs every epoch and vocabulary step at INFO.
logging.getLogger("gensim").setLevel(logging.WARNING)


# ---------------------------------------------------------------- TF-IDF
def _identity(tokens: list[str]) -> list[str]:
    return tokens


def _count(codes: np.ndarray, lengths: np.ndarray, n_columns: int) -> sp.csr_matrix:
    """float32 (len(lengths), n_columns) term counts from each token's column (-1 = drop)."""
    known = codes >= 0
    if not known.all():
        rows = np.repeat(np.arange(len(lengths)), lengths)
        lengths = np.bincount(rows[known], minlength=len(lengths))
        codes = codes[known]
    indptr = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    counts = sp.csr_matrix((np.ones(len(codes), dtype=np.float32), codes, indptr),
                           shape=(len(lengths), n_columns))
    counts.sum_duplicates()
    return counts


def _rows(matrix: sp.csr_matrix, rows: np.ndarray | None) -> sp.csr_matrix:
    return matrix if rows is None else matrix[np.asarray(rows)]


def fit_tfidf(train_tokens: Sequence[Sequence[str]], min_df: int = 1,
              sublinear_tf: bool = False) -> TfidfVectorizer:
    """A float32 TfidfVectorizer over pre-tokenised questions (its analyzer passes lists through).

    The vocabulary and idf are the ones `TfidfVectorizer.fit` would give, and
    `.transform(token_lists)` works as usual.
    """
    return fit_tfidf_counts(train_tokens, min_df=min_df, sublinear_tf=sublinear_tf)[0]


def fit_tfidf_counts(token_lists: Sequence[Sequence[str]], train_rows: np.ndarray | None = None,
                     min_df: int = 1, sublinear_tf: bool = False,
                     ) -> tuple[TfidfVectorizer, sp.csr_matrix]:
    """The TfidfVectorizer fitted on the rows `train_rows` of `token_lists` (all rows when None)
    and the float32 term counts of every row over its vocabulary (what `count_matrix` gives).

    One pass: every token is hashed once, for the fit and the counts together.
    """
    lengths, flat = flatten(token_lists)
    codes, distinct = pd.factorize(flat)
    by_code = _rows(_count(codes, lengths, len(distinct)), train_rows)
    doc_freq = np.bincount(by_code.indices, minlength=len(distinct))
    kept = np.flatnonzero(doc_freq >= max(min_df, 1))
    if not len(kept):
        raise DataError(f"no token occurs in {min_df} or more training questions",
                        field="question1/question2")
    kept = kept[np.argsort(distinct[kept])]  # alphabetical, like TfidfVectorizer's vocabulary
    column = np.full(len(distinct), -1, dtype=np.int64)
    column[kept] = np.arange(len(kept))
    counts = _count(column[codes], lengths, len(kept))
    idf = TfidfTransformer(smooth_idf=True).fit(_rows(counts, train_rows)).idf_
    vectorizer = tfidf_vectorizer(distinct[kept], idf, sublinear_tf=sublinear_tf, min_df=min_df)
    return vectorizer, counts


def tfidf_vectorizer(words: Sequence[str], idf: Sequence[float], sublinear_tf: bool = False,
                     min_df: int = 1) -> TfidfVectorizer:
    """The fitted float32 TfidfVectorizer of this vocabulary (in column order) and these idf
    weights: how fit_tfidf makes one, and how read_tfidf reads a saved one back."""
    vectorizer = TfidfVectorizer(analyzer=_identity, lowercase=False, dtype=np.float32,
                                 min_df=min_df, sublinear_tf=sublinear_tf)
    vectorizer.vocabulary_ = {str(word): i for i, word in enumerate(words)}
    vectorizer.idf_ = np.asarray(idf, dtype=np.float32)
    return vectorizer


def write_tfidf(vectorizer: TfidfVectorizer, dest: Path) -> Path:
    """The fitted vocabulary and idf weights as JSON (float32 values round-trip exactly)."""
    return write_json({"words": [str(w) for w in vectorizer.get_feature_names_out()],
                       "idf": vectorizer.idf_.tolist(),
                       "sublinear_tf": bool(vectorizer.sublinear_tf)}, dest)


def read_tfidf(path: Path) -> TfidfVectorizer:
    """The vectorizer write_tfidf saved."""
    state = read_json(path)
    return tfidf_vectorizer(state["words"], state["idf"], sublinear_tf=state["sublinear_tf"])


def count_matrix(vectorizer: TfidfVectorizer,
                 token_lists: Sequence[Sequence[str]]) -> sp.csr_matrix:
    """float32 (N, V) term counts over the vectorizer's vocabulary (weights of a plain mean)."""
    lengths, flat = flatten(token_lists)
    # Hash each token against the question set's own distinct words (faster than against the
    # vocabulary), then map those few to vocabulary columns.
    codes, distinct = pd.factorize(flat)
    columns = pd.Index(vectorizer.get_feature_names_out(), dtype=object)
    return _count(columns.get_indexer(distinct)[codes], lengths, len(columns))


def tfidf_from_counts(vectorizer: TfidfVectorizer, counts: sp.csr_matrix) -> sp.csr_matrix:
    """float32 TF-IDF rows from a `count_matrix`, exactly as `vectorizer.transform` computes."""
    transformer = TfidfTransformer(norm=vectorizer.norm, use_idf=vectorizer.use_idf,
                                   smooth_idf=vectorizer.smooth_idf,
                                   sublinear_tf=vectorizer.sublinear_tf)
    transformer.idf_ = vectorizer.idf_
    return sp.csr_matrix(transformer.transform(counts, copy=True), dtype=np.float32)


def tfidf_matrix(vectorizer: TfidfVectorizer,
                 token_lists: Sequence[Sequence[str]]) -> sp.csr_matrix:
    """float32 (N, V) L2-normalised TF-IDF rows; words outside the vocabulary are dropped."""
    return tfidf_from_counts(vectorizer, count_matrix(vectorizer, token_lists))


def question_weights(vectorizer: TfidfVectorizer,
                     token_lists: Sequence[Sequence[str]]) -> dict[str, sp.csr_matrix]:
    """Each question's word weights over the vocabulary, per weighting: `tfidf` (TF-IDF rows)
    and `mean` (term counts: a plain mean)."""
    return weights_from_counts(vectorizer, count_matrix(vectorizer, token_lists))


def weights_from_counts(vectorizer: TfidfVectorizer,
                        counts: sp.csr_matrix) -> dict[str, sp.csr_matrix]:
    """`question_weights` from a `count_matrix` already made."""
    return {"tfidf": tfidf_from_counts(vectorizer, counts), "mean": counts}


# ---------------------------------------------------------------- word vectors
def train_word_vectors(train_tokens: Sequence[Sequence[str]], *, algorithm: str = "word2vec",
                       dim: int = 100, window: int = 5, min_count: int = 2, epochs: int = 10,
                       seed: int = 0) -> KeyedVectors:
    """Word2Vec or FastText (CBOW) vectors of the training questions; same seed, same vectors."""
    models = {"word2vec": Word2Vec, "fasttext": FastText}
    if algorithm not in models:
        raise ConfigError(f"quora.embed.algorithm: {algorithm!r} is not one of {list(models)}")
    # One worker fixes the order of the updates. gensim >= 4 draws the initial vectors from
    # numpy's default_rng(seed), so (unlike gensim 3) PYTHONHASHSEED does not matter.
    model = models[algorithm](vector_size=dim, window=window, min_count=min_count,
                              epochs=epochs, seed=seed, workers=1)
    model.build_vocab(corpus_iterable=train_tokens)
    if len(model.wv) == 0:
        raise DataError(f"no word occurs {min_count} or more times in the training questions",
                        field="question1/question2")
    model.train(corpus_iterable=train_tokens, total_examples=model.corpus_count,
                epochs=model.epochs)
    return model.wv


_TEXT_BYTES = bytes(range(32, 256)) + b"\t\n\r\f\v"
_HEADER = re.compile(rb"\s*\d+\s+\d+\s*")


def detect_vector_format(path: Path) -> str:
    """Guess glove / word2vec_text / word2vec_binary from the extension and first bytes."""
    if path.is_dir():
        return "spacy"
    name = path.name.lower().removesuffix(".gz").removesuffix(".bz2")
    if name.endswith(".bin"):
        return "word2vec_binary"
    with open_maybe_compressed(str(path), "rb") as fh:
        head = fh.read(1 << 16)
    if not head.strip():
        raise DataError("empty vectors file", path=path)
    first, _, rest = head.partition(b"\n")
    if not _HEADER.fullmatch(first):
        return "glove"
    # Control bytes after the "count dim" header mean packed floats.
    return "word2vec_binary" if rest[:4096].translate(None, _TEXT_BYTES) else "word2vec_text"


def _load_spacy(name: str) -> KeyedVectors:
    try:
        import spacy
    except ImportError as exc:
        raise ConfigError("quora.embed.pretrained_path: format 'spacy' needs spaCy, which is "
                          "not installed; install spacy and the vectors package, or point "
                          "it at a GloVe or word2vec file") from exc
    try:
        nlp = spacy.load(name)
    except OSError as exc:
        raise DataError(f"spaCy cannot load it ({exc})", path=name) from exc
    vectors, strings = nlp.vocab.vectors, nlp.vocab.strings
    pairs = [(strings[key], row) for key, row in vectors.key2row.items() if key in strings]
    if not pairs:
        raise DataError("the spaCy pipeline has no word vectors", path=name)
    words, rows = zip(*pairs, strict=True)
    kv = KeyedVectors(vector_size=vectors.shape[1], count=len(words), dtype=np.float32)
    kv.add_vectors(list(words), np.asarray(vectors.data, dtype=np.float32)[list(rows)])
    return kv


def load_pretrained(path: str | Path, fmt: str = "auto") -> KeyedVectors:
    """Pretrained vectors: GloVe text, word2vec text/binary (auto-detected), or a spaCy package."""
    if fmt not in ("auto", *VECTOR_FORMATS):
        raise ConfigError(f"quora.embed.pretrained_format: {fmt!r} is not one of "
                          f"{['auto', *VECTOR_FORMATS]}")
    if fmt == "spacy":
        return _load_spacy(str(path))
    path = Path(path)
    if not path.exists():
        raise DataError("pretrained vectors not found (a spaCy package name needs "
                        "quora.embed.pretrained_format: spacy)", path=path)
    if fmt == "auto":
        fmt = detect_vector_format(path)
        if fmt == "spacy":
            return _load_spacy(str(path))
    try:
        kv = KeyedVectors.load_word2vec_format(str(path), binary=fmt == "word2vec_binary",
                                               no_header=fmt == "glove")
    except (ValueError, UnicodeDecodeError, EOFError, IndexError, OSError) as exc:
        raise DataError(f"not a readable {fmt} vectors file ({exc})", path=path) from exc
    if len(kv) == 0 or kv.vector_size < 1:
        raise DataError(f"no vectors in this {fmt} file", path=path)
    return kv


def embedding_matrix(words: Sequence[str], kv: KeyedVectors) -> tuple[np.ndarray, float]:
    """float32 (len(words), dim) rows of `kv` (zeros where it has none) and the covered share."""
    out = np.zeros((len(words), kv.vector_size), dtype=np.float32)
    rows = np.fromiter((kv.key_to_index.get(word, -1) for word in words), dtype=np.int64,
                       count=len(words))
    known = rows >= 0
    out[known] = kv.vectors[rows[known]]
    if isinstance(kv, FastTextKeyedVectors) and kv.bucket:
        for i in np.flatnonzero(~known):  # FastText builds a vector from character n-grams
            out[i] = kv.get_vector(words[i])
    covered = np.any(out != 0, axis=1)
    return out, float(covered.mean()) if len(words) else 0.0


def weighted_mean_vectors(weights: sp.csr_matrix, emb: np.ndarray) -> np.ndarray:
    """float32 (N, D) weighted means of word vectors; words without a vector (zero rows of
    `emb`) are left out of the denominator, and a row with no known word stays zero."""
    if weights.shape[1] != emb.shape[0]:
        raise ValueError(f"weights have {weights.shape[1]} columns, emb {emb.shape[0]} rows")
    weights = sp.csr_matrix(weights, dtype=np.float32)
    emb = np.asarray(emb, dtype=np.float32)
    has_vector = np.any(emb != 0, axis=1).astype(np.float32)
    sums = np.asarray(weights @ emb, dtype=np.float32)
    totals = (weights @ has_vector)[:, None]
    # A row whose total is 0 has only zero-vector words, so its sum is already 0.
    np.divide(sums, totals, out=sums, where=totals > 0)
    return sums


# ---------------------------------------------------------------- the stage
class _Stopwatch:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, step: str) -> None:
        now = time.perf_counter()
        self.seconds[step] = round(now - self._last, 3)
        self._last = now


def read_pairs(path: Path) -> pd.DataFrame:
    """pairs.parquet with its columns, non-empty questions and known split names checked."""
    pairs = read_parquet(path)
    missing = [c for c in PAIR_COLUMNS if c not in pairs.columns]
    if missing:
        raise DataError("missing column(s); run the quora clean stage", path=path,
                        field=", ".join(missing))
    for column in ("question1", "question2"):
        bad = np.flatnonzero(pairs[column].isna().to_numpy()
                             | (pairs[column].astype(str).str.len() == 0).to_numpy())
        if len(bad):
            raise DataError("empty question", path=path, row=int(bad[0]), field=column)
    bad = np.flatnonzero(~pairs["split"].isin(SPLITS).to_numpy())
    if len(bad):
        raise DataError(f"split {pairs['split'].iloc[bad[0]]!r} is not one of {list(SPLITS)}",
                        path=path, row=int(bad[0]), field="split")
    if not (pairs["split"] == "train").any():
        raise DataError("no train pairs", path=path, field="split")
    return pairs


def unique_questions(pairs: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    """Distinct question texts in order of first appearance, and int32 (n_pairs, 2) rows of
    question1 and question2 in that table."""
    both = pd.concat([pairs["question1"], pairs["question2"]], ignore_index=True).astype(str)
    codes, uniques = pd.factorize(both)
    pair_index = np.stack([codes[:len(pairs)], codes[len(pairs):]], axis=1).astype(np.int32)
    return [str(q) for q in uniques], pair_index


@task(name="quora-embed")
def embed_questions(settings: QuoraSettings, split_dir: Path, out_dir: Path, seed: int) -> dict:
    """Vectors of every unique question (gensim and, when configured, pretrained; TF-IDF and
    plain means), token ids and the embedding init, all fitted on train questions only."""
    # One token list per question lives through the stage. They hold only strings (no cycles),
    # and every collection would traverse them: the collector stays paused until they are freed.
    with gc_paused():
        return _embed_questions(settings, split_dir, out_dir, seed)


def _embed_questions(settings: QuoraSettings, split_dir: Path, out_dir: Path, seed: int) -> dict:
    cfg, clock, out_dir = settings.embed, _Stopwatch(), Path(out_dir)
    pairs_path = Path(split_dir) / "pairs.parquet"
    pairs = read_pairs(pairs_path)
    questions, pair_index = unique_questions(pairs)
    in_train = np.zeros(len(questions), dtype=bool)
    in_train[pair_index[(pairs["split"] == "train").to_numpy()].ravel()] = True
    clock.lap("read")

    tokens = tokenize(questions)
    train_tokens = [tokens[i] for i in np.flatnonzero(in_train)]
    clock.lap("tokenize")
    if not any(train_tokens):
        raise DataError("train questions have no word tokens", path=pairs_path,
                        field="question1/question2")

    # One pass over the tokens: fitted on train questions, counted for all of them.
    vectorizer, counts = fit_tfidf_counts(tokens, np.flatnonzero(in_train))
    words = list(vectorizer.get_feature_names_out())
    weights = weights_from_counts(vectorizer, counts)
    clock.lap("tfidf")

    kv = train_word_vectors(train_tokens, algorithm=cfg.algorithm, dim=cfg.dim,
                            window=cfg.window, min_count=cfg.min_count, epochs=cfg.epochs,
                            seed=seed)
    clock.lap("train_vectors")
    sources = {"gensim": kv}
    if cfg.pretrained_path:
        sources["pretrained"] = load_pretrained(cfg.pretrained_path, cfg.pretrained_format)
        clock.lap("load_pretrained")

    lengths = np.fromiter(map(len, tokens), dtype=np.int64, count=len(tokens))
    word_counts, n_tokens = np.asarray(counts.sum(axis=0)).ravel(), max(int(lengths.sum()), 1)
    sets, coverage, token_coverage, dims, empty_rows = [], {}, {}, {}, {}
    for source, vectors in sources.items():
        emb, coverage[source] = embedding_matrix(words, vectors)
        write_npy(emb, out_dir / f"word_vectors_{source}.npy")  # what a served model reads
        # Share of all question tokens (dev/test included) that end up with a vector.
        token_coverage[source] = float(word_counts[emb.any(axis=1)].sum() / n_tokens)
        dims[source] = int(emb.shape[1])
        for weighting, matrix in weights.items():
            name = f"{source}_{weighting}"
            question_vectors = weighted_mean_vectors(matrix, emb)
            empty_rows[name] = int((~question_vectors.any(axis=1)).sum())
            write_npy(question_vectors, out_dir / f"vectors_{name}.npy")
            sets.append(name)
        clock.lap(f"weight_{source}")
    for stale in out_dir.glob("vectors_*.npy"):  # e.g. a pretrained set from an earlier run
        if stale.stem.removeprefix("vectors_") not in sets:
            stale.unlink()
    for stale in out_dir.glob("word_vectors_*.npy"):
        if stale.stem.removeprefix("word_vectors_") not in sources:
            stale.unlink()

    vocab = build_vocab(train_tokens, cfg.vocab_size, cfg.min_count)
    ids = token_ids(tokens, vocab, cfg.max_tokens)
    init = np.zeros((len(vocab) + FIRST_WORD_ID, kv.vector_size), dtype=np.float32)
    init[FIRST_WORD_ID:], init_coverage = embedding_matrix(vocab, kv)
    clock.lap("token_ids")

    write_tfidf(vectorizer, out_dir / "tfidf.json")
    write_npy(pair_index, out_dir / "pair_index.npy")
    write_npy(ids, out_dir / "token_ids.npy")
    write_npy(init, out_dir / "embedding_init.npy")
    write_json({"pad_id": PAD_ID, "unknown_id": UNKNOWN_ID, "first_word_id": FIRST_WORD_ID,
                "words": vocab},
               out_dir / "vocab.json")
    write_parquet(pd.DataFrame({"question": questions, "in_train": in_train}),
                  out_dir / "questions.parquet")
    clock.lap("write")

    summary = {
        "pairs": len(pairs), "pairs_by_split": pairs["split"].value_counts().to_dict(),
        "questions": len(questions), "train_questions": int(in_train.sum()),
        "tokens_per_question": {"mean": float(lengths.mean()), "max": int(lengths.max()),
                                "truncated_share": float((lengths > cfg.max_tokens).mean())},
        "tfidf_vocab": len(words), "gensim_vocab": len(kv), "token_vocab": len(vocab),
        "algorithm": cfg.algorithm, "dims": dims, "coverage": coverage,
        "token_coverage": token_coverage,
        "embedding_init_coverage": init_coverage, "sets": sets,
        "primary": f"{cfg.vectors}_{cfg.weighting}", "questions_without_vector": empty_rows,
        "seed": seed,  # no durations: embed.json is a DVC output (they go to the log)
    }
    write_json(summary, out_dir / "embed.json")
    get_logger().info(
        "embed: %d pairs, %d questions (%d train); vocab tfidf %d, gensim %d, tokens %d; "
        "coverage %s; sets %s in %.1f s (%s)", len(pairs), len(questions), summary["train_questions"],
        len(words), len(kv), len(vocab),
        ", ".join(f"{k} {v:.1%} of words, {token_coverage[k]:.1%} of tokens"
                  for k, v in coverage.items()), ", ".join(sets),
        sum(clock.seconds.values()), ", ".join(f"{k} {v:.1f} s" for k, v in clock.seconds.items()))
    return summary


def embed_stage(params) -> dict:
    """quora_embed: question vectors and token ids."""
    from tasks.quora.paths import QuoraPaths

    paths = QuoraPaths()
    return embed_questions(params.quora, paths.split, paths.embed, params.common.seed)
