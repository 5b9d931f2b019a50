"""The quora_train stage: the note's configurations side by side, one shared training loop.

Each configuration is (question vectors, model variant); `birnn_conv` reads token ids instead.
Probabilities: sigmoid of the logit, or for the distance model a logistic calibration of the
negative distance fitted on dev (never test).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from prefect import task

from models.siamese import pair_loss
from tasks import tracking
from tasks.config import CommonSettings, QuoraSettings, flat_params
from tasks.logs import get_logger
from tasks.quora.baseline import FEATURES, logistic_probabilities
from tasks.quora.modeling import (
    build_model,
    calibrate,
    duplicate_scores,
    pair_loader,
    probabilities,
)
from tasks.storage import read_json, read_npy, read_parquet, write_json, write_parquet, write_torch
from tasks.train import FitConfig, fit, seed_everything


def table_configs(settings: QuoraSettings, available: list[str]) -> list[dict]:
    """The note's configurations that the available vectors allow, the configured one marked."""
    src = settings.embed.vectors
    rows = [{"key": "gensim_siamese", "name": "gensim + siamese", "vectors": "gensim_mean",
             "variant": "siamese"},
            {"key": "pretrained_siamese", "name": "pretrained + siamese",
             "vectors": "pretrained_mean", "variant": "siamese"},
            {"key": "tfidf_siamese", "name": f"{src} + tf-idf + siamese",
             "vectors": f"{src}_tfidf", "variant": "siamese"},
            {"key": "tfidf_fc_head", "name": f"{src} + tf-idf + fc_head",
             "vectors": f"{src}_tfidf", "variant": "fc_head"},
            {"key": "birnn_conv", "name": "birnn_conv", "vectors": None, "variant": "birnn_conv"}]
    rows = [r for r in rows if r["vectors"] is None or r["vectors"] in available]
    variant = settings.model.variant
    main_vectors = None if variant == "birnn_conv" else f"{src}_{settings.embed.weighting}"
    main = next((r for r in rows if r["vectors"] == main_vectors and r["variant"] == variant),
                None)
    if main is None:
        main = {"key": f"{main_vectors}_{variant}", "name": f"{main_vectors} + {variant}",
                "vectors": main_vectors, "variant": variant}
        rows.append(main)
    main["main"] = True
    return rows if settings.evaluate.table else [main]


def _inputs(cfg: dict, embed_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    pair_index = read_npy(embed_dir / "pair_index.npy")
    table = (read_npy(embed_dir / "token_ids.npy").astype(np.int64) if cfg["vectors"] is None
             else read_npy(embed_dir / f"vectors_{cfg['vectors']}.npy"))
    return table[pair_index[:, 0]], table[pair_index[:, 1]]


def _build(cfg: dict, settings: QuoraSettings, a: np.ndarray, embed_dir: Path) -> torch.nn.Module:
    if cfg["variant"] == "birnn_conv":
        init = torch.from_numpy(read_npy(embed_dir / "embedding_init.npy"))
        return build_model("birnn_conv", settings.model, embeddings=init)
    return build_model(cfg["variant"], settings.model, in_dim=a.shape[1])


def train_config(cfg: dict, settings: QuoraSettings, pairs: pd.DataFrame, embed_dir: Path,
                 seed: int, device: torch.device) -> tuple[np.ndarray, dict, torch.nn.Module]:
    """Fit one configuration with early stopping on dev; P(duplicate) for every pair."""
    a, b = _inputs(cfg, embed_dir)
    y = pairs["is_duplicate"].to_numpy()
    split = pairs["split"].to_numpy()
    size = settings.train.batch_size
    train, dev = split == "train", split == "dev"
    seed_everything(seed)  # the initial weights follow the seed, whatever ran before
    model = _build(cfg, settings, a, embed_dir)
    result = fit(model, pair_loader(a[train], b[train], y[train], size, True, seed),
                 pair_loader(a[dev], b[dev], y[dev], size, False, seed),
                 pair_loss(cfg["variant"], settings.model.margin),
                 FitConfig.from_settings(settings.train, seed), device,
                 on_epoch=lambda row: tracking.log_metrics(
                     {k: row[k] for k in ("train_loss", "val_loss", "lr", "seconds")},
                     step=row["epoch"]))
    scores = duplicate_scores(result.model, cfg["variant"], a, b, device)
    calibration = calibrate(cfg["variant"], scores, dev, y)
    summary = {"history": result.history, "best_epoch": result.best_epoch,
               "stopped_early": result.stopped_early, "calibration": calibration}
    return probabilities(cfg["variant"], scores, calibration), summary, result.model


def log_pyfunc(settings: QuoraSettings, main: dict, pairs: pd.DataFrame, embed_dir: Path,
               weights: Path) -> None:
    """Log the configured model as the pipeline's pyfunc (tasks.quora.serving) with what it
    reads from raw text: the embed stage's TF-IDF vocabulary and word vectors, or its token
    vocabulary for birnn_conv; the first test pairs are its input example."""
    from tasks.quora import serving

    vectors = main["vectors"]
    if vectors is None:
        artifacts = {"vocab": embed_dir / "vocab.json"}
    else:
        source = vectors.rsplit("_", 1)[0]
        artifacts = {"tfidf": embed_dir / "tfidf.json",
                     "word_vectors": embed_dir / f"word_vectors_{source}.npy"}
    config = {"variant": main["variant"], "vectors": vectors,
              "calibration": main["calibration"], "max_tokens": settings.embed.max_tokens,
              "embedding_dim": read_json(embed_dir / "embed.json")["dims"]["gensim"],
              "model": settings.model.model_dump(mode="json")}
    tracking.log_model(serving.MODEL_CLASS, config=config,
                       artifacts={"weights": weights, **artifacts},
                       input_example=serving.input_example(pairs))


@task(name="quora-train")
def train_models(settings: QuoraSettings, common: CommonSettings, split_dir: Path,
                 embed_dir: Path, out_dir: Path, device: torch.device) -> dict:
    """Train every configuration of the table (or only the configured one); log each to MLflow."""
    log = get_logger()
    pairs = read_parquet(split_dir / "pairs.parquet")
    configs = table_configs(settings, read_json(embed_dir / "embed.json")["sets"])
    predictions = pairs[["id", "is_duplicate", "split"]].copy()
    params = {**flat_params(settings, "quora."), "common.seed": common.seed}
    summary: dict = {"configs": [], "main": None, "params": params}
    with tracking.run(common, "quora", "quora-train", params=params,
                      tags={"stage": "quora_train"}):
        for cfg in configs:
            with tracking.run(common, "quora", cfg["name"], nested=True,
                              params={"config.vectors": cfg["vectors"] or "token_ids",
                                      "config.variant": cfg["variant"]}):
                prob, fitted, model = train_config(cfg, settings, pairs, embed_dir,
                                                   common.seed, device)
                column = f"prob_{len(summary['configs'])}"
                predictions[column] = prob
                entry = {**cfg, "column": column, **fitted}
                summary["configs"].append(entry)
                log.info("%s: best epoch %d of %d", cfg["name"], fitted["best_epoch"],
                         len(fitted["history"]))
                if cfg.get("main"):
                    summary["main"] = entry
                    write_torch(model.cpu().state_dict(), out_dir / "model.pt")
        # in the stage's run; evaluate registers it
        log_pyfunc(settings, summary["main"], pairs, embed_dir, out_dir / "model.pt")
        vectors = read_json(embed_dir / "embed.json")["sets"][0]  # the TF-IDF-weighted set
        predictions["prob_logistic"] = logistic_probabilities(
            pairs, *_inputs({"vectors": vectors}, embed_dir), common.seed)
        summary["baselines"] = {"logistic": {"column": "prob_logistic", "vectors": vectors,
                                             "features": list(FEATURES)}}
        write_parquet(predictions, out_dir / "predictions.parquet")
        write_json(summary, out_dir / "train.json")
        tracking.tag_summary(out_dir / "train.json")  # evaluate finds this run by it
    return summary


def train_stage(params) -> dict:
    """quora_train: the models, their predictions and the train report."""
    from tasks.quora.paths import QuoraPaths
    from tasks.train import resolve_device

    paths = QuoraPaths()
    paths.artifacts.mkdir(parents=True, exist_ok=True)
    return train_models(params.quora, params.common, paths.split, paths.embed, paths.artifacts,
                        resolve_device(params.common.device))
