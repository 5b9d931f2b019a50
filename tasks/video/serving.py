"""kinetics-besnet as an MLflow pyfunc: a clip file in, its top-5 classes with scores out.

Every step is the pipeline's own code: the frames stage's ffmpeg extraction (fps, short side,
JPEG or resized mp4), the test-time views of kinetics_evaluate (clips x crops through the same
clip loader, softmax averaged over views) and the trained BesNet. This module and what it
imports are shipped with the model (tasks.tracking.log_model).
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch

from models.layers import ViewAverage
from tasks.config import KineticsSettings
from tasks.errors import DataError
from tasks.storage import read_json
from tasks.train import predict
from tasks.video.frames import extract_clip
from tasks.video.modeling import clip_loader, fresh_model
from tasks.video.preprocess import normalize_clips

MODEL_CLASS = "tasks.video.serving:ActionModel"
TOP_K = 5
CPU = torch.device("cpu")


def extract_frames(paths: list[str], settings: KineticsSettings, workdir: Path) -> pd.DataFrame:
    """Each clip extracted under `workdir` as the frames stage extracts it; the index rows
    (path relative to `workdir`, frame count) the clip loader reads."""
    rows = []
    for i, src in enumerate(paths):
        if not Path(src).is_file():
            raise DataError("no such clip file", path=src, row=i, field="path")
        name = f"clip{i}" + (".mp4" if settings.frames.storage == "video" else "")
        meta = extract_clip(src, workdir / name, settings.frames)
        rows.append({"path": name, "class_index": 0, "n_frames": meta["n_frames"]})
    return pd.DataFrame(rows)


def top_classes(log_probs: np.ndarray, classes: list[str], paths: list[str],
                k: int = TOP_K) -> pd.DataFrame:
    """Long table of each clip's k most probable classes: path, rank (1 = best), label, score
    (the class probability)."""
    k = min(k, len(classes))
    rows = []
    for path, row in zip(paths, log_probs, strict=True):
        best = np.argsort(-row, kind="stable")[:k]
        rows += [{"path": path, "rank": rank, "label": classes[c], "score": float(np.exp(row[c]))}
                 for rank, c in enumerate(best, start=1)]
    return pd.DataFrame(rows, columns=["path", "rank", "label", "score"])


class ActionModel(mlflow.pyfunc.PythonModel):
    """Clips in (column path: video files ffmpeg reads); out, TOP_K rows per clip: path, rank,
    label and score (class probability, the softmax averaged over the test views)."""

    def load_context(self, context: Any) -> None:
        self.settings = KineticsSettings.model_validate(context.model_config["settings"])
        self.classes = read_json(context.artifacts["classes"])
        model = fresh_model("besnet", self.settings, len(self.classes), imagenet=False)
        model.load_state_dict(torch.load(context.artifacts["weights"], map_location="cpu",
                                         weights_only=True))
        self.network = ViewAverage(model).eval()

    def log_probs(self, paths: list[str]) -> np.ndarray:
        """(clips, classes) log of the view-averaged softmax, as kinetics_evaluate scores."""
        with tempfile.TemporaryDirectory(prefix="reprolab-clips-") as tmp:
            index = extract_frames(paths, self.settings, Path(tmp))
            loader = clip_loader(index, self.settings, 0, train=False, root=Path(tmp))
            return predict(self.network, loader, CPU, normalize_clips)

    def predict(self, context: Any, model_input: pd.DataFrame,
                params: dict | None = None) -> pd.DataFrame:
        if "path" not in model_input.columns:
            raise DataError("the input lacks the column", field="path")
        paths = model_input["path"].astype(str).tolist()
        return top_classes(self.log_probs(paths), self.classes, paths)


def serving_settings(settings: Any) -> dict:
    """The settings the served model reads (model shape, test views, frame extraction), as
    plain values: what kinetics_train declares of kinetics.model, .dataset and .frames."""
    frames = {k: getattr(settings.frames, k) for k in ("storage", "fps", "short_side",
                                                        "jpeg_quality")}
    return {"model": {**settings.model.model_dump(mode="json"), "pretrained": None},
            "dataset": dict(settings.dataset), "frames": frames}
