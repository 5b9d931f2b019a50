"""The three pipelines run small, each registering its model in one throwaway MLflow store
(SQLite + artifact folder): shared by the serving tests (test_serving.py) and the nightly's
rescoring tests (test_rescore.py). Module-scoped: each module that asks runs them once."""
from __future__ import annotations

import mlflow
import pytest
import torch

from tasks import tracking
from tasks.config import load_params
from tests.conftest import ROOT
from tests.tasks.crypto.test_secrets import KEY, SECRET

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    """One MLflow store (SQLite + artifact folder) for the module's pipelines."""
    tmp = tmp_path_factory.mktemp("mlflow")
    return {"common.mlflow.tracking_uri": f"sqlite:///{tmp}/mlflow.db",
            "common.mlflow.artifact_dir": str(tmp / "mlartifacts")}


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread while the pipelines run and their models are compared: the served
    models must give the pipelines' numbers bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def version_of(common, name: str) -> str:
    tracking.configure(common)
    versions = mlflow.MlflowClient().search_model_versions(f"name='{name}'")
    return str(max(int(v.version) for v in versions))


def pyfunc(run: dict):
    """The run's registered model, loaded as a user loads it."""
    tracking.configure(run["common"])
    return tracking.load_model(f"models:/{run['name']}/{run['version']}")


# ---------------------------------------------------------------- the pipelines, small
@pytest.fixture(scope="module")
def crypto(store, one_thread, tmp_path_factory) -> dict:
    """The crypto stages on 3,000 demo candles, with exchange keys in the environment."""
    from tasks.crypto.featurize import build_features
    from tasks.crypto.ingest import ingest_candles
    from tasks.crypto.paths import CryptoPaths
    from tasks.crypto.prepare import build_splits
    from tasks.crypto.report import evaluate_models
    from tasks.crypto.training import train_models
    from tasks.storage import write_json

    params = load_params(ROOT / "params.yaml", {
        **store, "crypto.demo.n_bars": 3000, "crypto.train.epochs": 2,
        "crypto.model.hidden": 8, "crypto.leak_audit.enabled": False,
        "crypto.evaluate.bootstrap": 50, "crypto.split.walk_forward.folds": 2})
    paths = CryptoPaths(tmp_path_factory.mktemp("crypto"))
    crypto, common = params.crypto, params.common
    with pytest.MonkeyPatch.context() as env:
        env.setenv("REPROLAB_EXCHANGE_API_KEY", KEY)
        env.setenv("REPROLAB_EXCHANGE_SECRET", SECRET)
        report = ingest_candles.fn(crypto, paths.raw, common.seed)
        write_json({"partitions": report["partitions"]}, paths.partitions)  # as ingest_stage
        write_json(report, paths.ingest_report)
        build_features.fn(crypto, paths.partitions, paths.features)
        build_splits.fn(crypto, paths.features, paths.splits)
        paths.artifacts.mkdir(parents=True)
        train_models.fn(crypto, common, paths.features, paths.splits, paths.artifacts, CPU,
                        paths.partitions)
        evaluate_models.fn(crypto, common, paths.splits, paths.artifacts, paths.results,
                           paths.metrics, paths.plots, paths.curves)
    return {"paths": paths, "params": params, "common": common, "name": "crypto-next-move",
            "version": version_of(common, "crypto-next-move")}


@pytest.fixture(scope="module")
def quora(store, one_thread, tmp_path_factory) -> dict:
    """The Quora stages on 1,200 demo pairs, the configured model only (fc_head on TF-IDF
    weighted word2vec vectors)."""
    from tasks.quora.clean import clean_questions, split_pairs
    from tasks.quora.embed import embed_questions
    from tasks.quora.ingest import ingest_pairs
    from tasks.quora.paths import QuoraPaths
    from tasks.quora.report import evaluate_models
    from tasks.quora.training import train_models

    params = load_params(ROOT / "params.yaml", {
        **store, "quora.demo.n_pairs": 1200, "quora.train.epochs": 2, "quora.embed.epochs": 2,
        "quora.evaluate.bootstrap": 50, "quora.evaluate.table": False})
    paths, q, common = QuoraPaths(tmp_path_factory.mktemp("quora")), params.quora, params.common
    ingest_pairs.fn(q, paths.raw, common.seed)
    clean_questions.fn(q, paths.raw, paths.clean)
    split_pairs.fn(q, paths.clean, paths.split, common.seed)
    embed_questions.fn(q, paths.split, paths.embed, common.seed)
    paths.artifacts.mkdir(parents=True)
    train_models.fn(q, common, paths.split, paths.embed, paths.artifacts, CPU)
    evaluate_models.fn(q, common, paths.artifacts, paths.results, paths.metrics, paths.plots,
                       paths.curves)
    return {"paths": paths, "params": params, "common": common, "name": "quora-duplicates",
            "version": version_of(common, "quora-duplicates")}


@pytest.fixture(scope="module")
def kinetics(store, one_thread, tmp_path_factory) -> dict:
    """A tiny BesNet (seeded, untrained) logged by the train stage's own code with demo clips
    extracted by the frames stage's code, in the project's layout (tasks.video.paths), then
    scored and registered by kinetics_evaluate on a split of three test clips (also its train
    and val clips: the error analysis reads those)."""
    from tasks.config import flat_params
    from tasks.pipeline import ParamsView
    from tasks.storage import write_json
    from tasks.train import seed_everything
    from tasks.video.demo import render_demo_clips
    from tasks.video.frames import _extract_row, build_index
    from tasks.video.modeling import fresh_model
    from tasks.video.paths import KineticsPaths
    from tasks.video.pipeline import PIPELINE
    from tasks.video.report import evaluate_models
    from tasks.video.splits import ClipSplits, write_splits
    from tasks.video.training import MODEL_FILE, SUMMARY_FILE, log_pyfunc, save_model

    root = tmp_path_factory.mktemp("kinetics")
    paths = KineticsPaths(root)
    params = load_params(ROOT / "params.yaml", {
        **store, "kinetics.demo.clips_per_class": 2, "kinetics.demo.duration": 1.0,
        "kinetics.demo.size": 64, "kinetics.frames.short_side": 64,
        "kinetics.dataset.frames": 4, "kinetics.dataset.crop": 32,
        "kinetics.dataset.test_clips": 2, "kinetics.model.width_multiplier": 0.0625,
        "kinetics.evaluate.bootstrap": 50})
    settings, common = params.kinetics, params.common
    manifest, classes = render_demo_clips(paths.clips, settings.demo, common.seed)
    test = manifest[manifest["split"] == "test"].head(3)
    for row in test.to_dict("records"):
        _extract_row(row, paths.clips, paths.frames, settings.frames)
    index = build_index(test, paths.frames, settings.frames.storage, root)
    paths.manifest.mkdir(parents=True)
    manifest.to_parquet(paths.manifest / "manifest.parquet")
    classes_path = write_json(classes, paths.manifest / "classes.json")
    write_splits(ClipSplits(index, index, index, "test"), paths.split)
    seed_everything(common.seed)
    besnet = paths.artifacts / "besnet"
    weights = save_model(fresh_model("besnet", settings, len(classes), imagenet=False),
                         besnet / MODEL_FILE)
    summary = write_json({"history": [{"epoch": 1, "train_loss": 1.0, "val_loss": 1.0}],
                          "params": flat_params(settings, "kinetics.")}, besnet / SUMMARY_FILE)
    with tracking.run(common, "kinetics", "besnet"):
        tracking.tag_summary(summary)  # evaluate finds the run by it, as after kinetics_train
        log_pyfunc(settings, index, classes_path, weights, paths.clips)
    stage = PIPELINE.stage("kinetics_evaluate")  # it reads its declared params only
    view = ParamsView(params, stage.params, stage.name)
    with pytest.MonkeyPatch.context() as env:
        env.chdir(root)  # the split's frame paths are relative to the project root
        evaluate_models(view.kinetics, view.common, paths.split, classes_path, paths.artifacts,
                        paths.results, paths.metrics, paths.plots, paths.curves, CPU)
    clips = [str(paths.clips / r["label_dir"] / f"{r['clip_id']}.mp4")
             for r in test.to_dict("records")]
    return {"root": root, "paths": paths, "params": params, "settings": settings,
            "common": common, "index": index, "classes": classes, "clips": clips,
            "weights": weights, "name": PIPELINE.model_name,
            "version": version_of(common, PIPELINE.model_name)}
