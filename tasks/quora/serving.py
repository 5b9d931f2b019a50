"""quora-duplicates as an MLflow pyfunc: two questions in, P(duplicate) out.

Every step is the pipeline's own code: the clean stage's normalisation, the embed stage's
tokeniser, its train-fitted TF-IDF vocabulary and word vectors (or its token vocabulary for the
BiRNN model), the trained network and its calibration. This module and what it imports are
shipped with the model (tasks.tracking.log_model).
"""
from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch

from tasks.config import QuoraModel
from tasks.errors import DataError
from tasks.quora.clean import normalise
from tasks.quora.embed import question_weights, read_tfidf, weighted_mean_vectors
from tasks.quora.modeling import build_model, duplicate_scores, probabilities
from tasks.quora.text import FIRST_WORD_ID, token_ids, tokenize
from tasks.storage import read_json, read_npy

MODEL_CLASS = "tasks.quora.serving:DuplicateQuestionsModel"
QUESTIONS = ("question1", "question2")
EXAMPLE_PAIRS = 5
CPU = torch.device("cpu")


def question_tokens(frame: pd.DataFrame) -> list[list[str]]:
    """Tokens of every question1, then every question2, normalised as the clean stage does;
    a missing or empty question is a DataError naming its row and column."""
    missing = [c for c in QUESTIONS if c not in frame.columns]
    if missing:
        raise DataError("the pairs lack columns", field=", ".join(missing))
    texts = []
    for column in QUESTIONS:
        clean = normalise(frame[column].reset_index(drop=True))
        empty = np.flatnonzero((clean.isna() | (clean.str.len() == 0)).to_numpy())
        if len(empty):
            raise DataError("empty question", row=int(empty[0]), field=column)
        texts.extend(clean.tolist())
    return tokenize(texts)


class DuplicateQuestionsModel(mlflow.pyfunc.PythonModel):
    """Question pairs in (columns question1, question2: raw text); out, one row per pair:
    p_duplicate, the probability that they ask the same thing."""

    def load_context(self, context: Any) -> None:
        config, files = context.model_config, context.artifacts
        self.variant, self.vectors = config["variant"], config["vectors"]
        self.calibration, self.max_tokens = config["calibration"], int(config["max_tokens"])
        settings = QuoraModel.model_validate(config["model"])
        if self.vectors is None:  # birnn_conv reads token ids
            self.words = read_json(files["vocab"])["words"]
            dim = int(config["embedding_dim"])
            self.network = build_model(self.variant, settings, embeddings=torch.zeros(
                len(self.words) + FIRST_WORD_ID, dim))
        else:
            self.weighting = self.vectors.rsplit("_", 1)[1]  # e.g. gensim_tfidf -> tfidf
            self.vectorizer = read_tfidf(files["tfidf"])
            self.word_vectors = read_npy(files["word_vectors"])
            self.network = build_model(self.variant, settings,
                                       in_dim=self.word_vectors.shape[1])
        self.network.load_state_dict(torch.load(files["weights"], map_location="cpu",
                                                weights_only=True))
        self.network.eval()

    def inputs(self, tokens: list[list[str]]) -> np.ndarray:
        """What the network reads per question: token ids, or word-vector means."""
        if self.vectors is None:
            return token_ids(tokens, self.words, self.max_tokens).astype(np.int64)
        weights = question_weights(self.vectorizer, tokens)[self.weighting]
        return weighted_mean_vectors(weights, self.word_vectors)

    def predict(self, context: Any, model_input: pd.DataFrame,
                params: dict | None = None) -> pd.DataFrame:
        both = self.inputs(question_tokens(model_input))
        a, b = both[: len(model_input)], both[len(model_input):]
        scores = duplicate_scores(self.network, self.variant, a, b, CPU)
        return pd.DataFrame({"p_duplicate": probabilities(self.variant, scores,
                                                          self.calibration)})


def input_example(pairs: pd.DataFrame) -> pd.DataFrame:
    """The first EXAMPLE_PAIRS test pairs' questions."""
    test = pairs[pairs["split"] == "test"].head(EXAMPLE_PAIRS)
    return test[list(QUESTIONS)].astype(str).reset_index(drop=True)
