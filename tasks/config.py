"""params.yaml -> typed, validated settings. A wrong key, type or value fails fast with its path."""
from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from tasks.errors import ConfigError
from tasks.pipeline import PIPELINES

PARAMS_FILE = Path("params.yaml")
NO_FILE = "inputs/none"  # "no file" for a path param: DVC lists it as a dep, so it must exist


def _no_file(value: Any) -> Any:
    return None if value == NO_FILE else value


NO_FILE_VALIDATOR = BeforeValidator(_no_file)
# a file or folder a stage reads because params.yaml names it: a DVC dependency of that stage
InputPath = Annotated[str | None, NO_FILE_VALIDATOR]


class Section(BaseModel):
    """Every section rejects unknown keys, so a typo is an error, not a silent default."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- common
class MlflowSettings(Section):
    tracking_uri: str = "sqlite:///mlflow.db"
    artifact_dir: str | None = Field("mlartifacts", description=(
        "local directory or URI (s3://...) for new experiments' artifacts; None = the "
        "tracking server's default"))
    experiment_prefix: str = "reprolab"
    register_models: bool = True
    system_metrics: bool = Field(False, description=(
        "sample CPU, memory and GPU use into every new run (MLflow system metrics)"))


class CommonSettings(Section):
    seed: int = 42
    device: Literal["auto", "cpu", "cuda"] = "auto"
    task_runner: Literal["threads", "dask"] = "threads"
    dask_address: str | None = None
    lock_wait: float = Field(3600, ge=0, description=(
        "seconds a run waits for another run on this checkout to finish (tasks/runlock.py)"))
    mlflow: MlflowSettings = MlflowSettings()


# ---------------------------------------------------------------- crypto
def _parse_utc(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)
    text = str(value).strip()
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"not an ISO-8601 date/time: {text!r}") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class CryptoLive(Section):
    since: datetime = datetime(2017, 8, 17, tzinfo=UTC)
    until: datetime | None = None
    page_limit: int | None = Field(None, ge=1, description="candles a request; None = exchange max")
    max_retries: int = Field(5, ge=0)
    backoff_seconds: float = Field(1.0, ge=0)
    rate_limit: bool = True
    api_url: str | None = Field(None, description="send every API call to this base URL (proxy, fake)")
    options: dict[str, Any] = {}
    api_key_env: str = "REPROLAB_EXCHANGE_API_KEY"
    secret_env: str = "REPROLAB_EXCHANGE_SECRET"
    secret_block: str | None = Field(None, description="Prefect Secret block holding 'key:secret'")
    flush_every_pages: int = Field(20, ge=1)

    _utc = field_validator("since", "until", mode="before")(_parse_utc)


class CryptoFile(Section):
    path: InputPath = None
    format: Literal["auto", "generic", "binance", "ccxt_json"] = "auto"
    exchange: str | None = Field(None, description="the file's exchange, if it has no column")
    symbol: str | None = Field(None, description="the file's symbol, if it has no column")


class CryptoDemo(Section):
    n_bars: int = Field(20000, ge=500)
    start: datetime = datetime(2022, 1, 1, tzinfo=UTC)

    _utc = field_validator("start", mode="before")(_parse_utc)


class CryptoFeatures(Section):
    return_lags: list[int] = [1, 2, 3, 6, 12, 24]
    volatility_windows: list[int] = [12, 48]
    volume_window: int = Field(48, ge=2)
    rsi_window: int = Field(14, ge=2)

    @field_validator("return_lags", "volatility_windows")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if not v or min(v) < 1:
            raise ValueError("must be a non-empty list of positive integers")
        return v


class CryptoLabel(Section):
    horizon: int = Field(1, ge=1)
    dead_zone: float = Field(0.0, ge=0)


class WalkForward(Section):
    folds: int = Field(3, ge=0)
    mode: Literal["expanding", "rolling"] = "expanding"


class CryptoSplit(Section):
    window: int = Field(24, ge=1, description="past bars in one model input")
    val_fraction: float = Field(0.15, gt=0)
    test_fraction: float = Field(0.15, gt=0)
    embargo: int = Field(24, ge=0, description="extra bars dropped after each boundary")
    train_dev_fraction: float = Field(0.1, ge=0, lt=0.5, description=(
        "of the training samples, held out in purged runs across the training period"))
    train_dev_blocks: int = Field(5, ge=1, description="how many train-dev runs")
    walk_forward: WalkForward = WalkForward()

    @field_validator("val_fraction", "test_fraction")
    @classmethod
    def _below_one(cls, v: float) -> float:
        if v >= 1:
            raise ValueError("must be < 1")
        return v

    @model_validator(mode="after")
    def _room_for_train(self) -> CryptoSplit:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("val_fraction + test_fraction must leave at least 10% for training")
        return self


class CryptoModel(Section):
    kind: Literal["tcn", "mlp"] = "tcn"
    hidden: int = Field(32, ge=1)
    layers: int = Field(2, ge=1, description="MLP hidden layers")
    kernel_size: int = Field(3, ge=2)
    dilations: list[int] = [1, 2, 4, 8]
    dropout: float = Field(0.1, ge=0, lt=1)
    activation: Literal["relu", "selu"] = "relu"
    erase_relu: bool = False
    residual_scale: float = Field(1.0, gt=0)


class TrainSettings(Section):
    epochs: int = Field(15, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    patience: int = Field(4, ge=1)
    diagnostics_every: int | None = Field(None, ge=1, description=(
        "opt-in gradient diagnostics (shattering, co-activation) every N optimiser steps"))


class CryptoEvaluate(Section):
    bootstrap: int = Field(500, ge=10)
    block_length: int | None = Field(None, ge=1, description="None = n ** (1/3)")
    fee_bps: float = Field(10.0, ge=0)
    reference_error: float | None = Field(None, ge=0, lt=1, description=(
        "best-known error of next-move direction, for avoidable bias (null: unknown)"))


class LeakAudit(Section):
    enabled: bool = True
    horizon: int = Field(24, ge=2)
    model: Literal["mlp", "tcn"] = Field("mlp", description="the network both recipes train")


class CryptoSettings(Section):
    source: Literal["live", "file", "demo"] = "demo"
    exchange: str = "binance"
    symbols: list[str] = ["BTC/USDT"]
    timeframe: str = "1h"
    model_symbol: str | None = None
    drop_incomplete: bool = True
    live: CryptoLive = CryptoLive()
    file: CryptoFile = CryptoFile()
    demo: CryptoDemo = CryptoDemo()
    features: CryptoFeatures = CryptoFeatures()
    label: CryptoLabel = CryptoLabel()
    split: CryptoSplit = CryptoSplit()
    model: CryptoModel = CryptoModel()
    train: TrainSettings = TrainSettings()
    evaluate: CryptoEvaluate = CryptoEvaluate()
    leak_audit: LeakAudit = LeakAudit()

    @field_validator("symbols")
    @classmethod
    def _symbols(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("must list at least one symbol, e.g. BTC/USDT")
        for s in v:
            if "/" not in s:
                raise ValueError(f"{s!r} is not a unified symbol like BTC/USDT")
        return v

    @field_validator("timeframe")
    @classmethod
    def _timeframe(cls, v: str) -> str:
        from tasks.crypto.timeframes import timeframe_ms

        timeframe_ms(v)
        return v

    @model_validator(mode="after")
    def _file_needs_path(self) -> CryptoSettings:
        if self.source == "file" and not self.file.path:
            raise ValueError("source 'file' needs crypto.file.path")
        if self.model_symbol is not None and self.model_symbol not in self.symbols:
            raise ValueError(f"model_symbol {self.model_symbol!r} is not in symbols")
        return self

    @property
    def symbol(self) -> str:
        """The symbol the model is trained on."""
        return self.model_symbol or self.symbols[0]


# ---------------------------------------------------------------- quora
QUORA_TSV_URL = "https://qim.fs.quoracdn.net/quora_duplicate_questions.tsv"


class QuoraLive(Section):
    url: str = QUORA_TSV_URL
    sha256: str | None = Field(None, description="expected checksum; None = record the first")
    timeout_seconds: float = Field(60.0, gt=0)
    retries: int = Field(3, ge=0)
    backoff_seconds: float = Field(1.0, ge=0)


class QuoraFile(Section):
    path: InputPath = None
    format: Literal["auto", "tsv", "csv"] = "auto"


class QuoraDemo(Section):
    n_pairs: int = Field(6000, ge=200)


class QuoraClean(Section):
    min_chars: int = Field(10, ge=0)


class QuoraSplit(Section):
    kind: Literal["random", "question_disjoint"] = "random"
    dev_fraction: float = Field(0.1, gt=0, lt=0.5)
    test_fraction: float = Field(0.1, gt=0, lt=0.5)
    train_dev_fraction: float = Field(0.05, ge=0, lt=0.5,
                                      description="held out of train, same distribution")


class QuoraEmbed(Section):
    vectors: Literal["gensim", "pretrained"] = "gensim"
    algorithm: Literal["word2vec", "fasttext"] = "word2vec"
    pretrained_path: InputPath = None
    pretrained_format: Literal["auto", "glove", "word2vec_text", "word2vec_binary",
                               "spacy"] = "auto"
    dim: int = Field(100, ge=2)
    window: int = Field(5, ge=1)
    min_count: int = Field(2, ge=1)
    epochs: int = Field(10, ge=1)
    weighting: Literal["tfidf", "mean"] = "tfidf"
    max_tokens: int = Field(40, ge=4, description="token ids kept per question (birnn_conv)")
    vocab_size: int = Field(50000, ge=100)


class QuoraModel(Section):
    variant: Literal["siamese", "fc_head", "birnn_conv"] = "fc_head"
    hidden: int = Field(128, ge=2)
    dropout: float = Field(0.1, ge=0, lt=1)
    margin: float = Field(1.0, gt=0, description="contrastive loss margin")
    activation: Literal["relu", "selu"] = "relu"
    erase_relu: bool = False
    residual_scale: float = Field(1.0, gt=0)
    rnn: Literal["gru", "lstm"] = "gru"
    rnn_hidden: int = Field(64, ge=2)
    conv_channels: int = Field(64, ge=2)
    kernel_size: int = Field(3, ge=1)


class QuoraEvaluate(Section):
    bootstrap: int = Field(500, ge=10)
    table: bool = Field(True, description="train the note's configurations side by side")
    reference_error: float | None = Field(0.10, ge=0, lt=1, description=(
        "human-level or best-known error, for avoidable bias (QQP: ~0.10, large transformers)"))


class QuoraSettings(Section):
    source: Literal["live", "file", "demo"] = "demo"
    live: QuoraLive = QuoraLive()
    file: QuoraFile = QuoraFile()
    demo: QuoraDemo = QuoraDemo()
    clean: QuoraClean = QuoraClean()
    split: QuoraSplit = QuoraSplit()
    embed: QuoraEmbed = QuoraEmbed()
    model: QuoraModel = QuoraModel()
    train: TrainSettings = TrainSettings(epochs=20, patience=4)
    evaluate: QuoraEvaluate = QuoraEvaluate()

    @model_validator(mode="after")
    def _sources(self) -> QuoraSettings:
        if self.source == "file" and not self.file.path:
            raise ValueError("source 'file' needs quora.file.path")
        if self.embed.vectors == "pretrained" and not self.embed.pretrained_path:
            raise ValueError("embed.vectors 'pretrained' needs quora.embed.pretrained_path")
        if self.split.dev_fraction + self.split.test_fraction >= 0.8:
            raise ValueError("split.dev_fraction + split.test_fraction must leave >= 20% to train")
        return self


# ---------------------------------------------------------------- kinetics
class KineticsAnnotations(Section):
    train: InputPath = Field(None, description="official CSV: label,youtube_id,time_start,...")
    val: InputPath = None
    test: InputPath = None
    classes: InputPath = Field(None, description="one class name a line (line = class id)")


class KineticsSubset(Section):
    classes: list[str] = Field([], description="keep only these labels; [] = all")
    max_classes: int | None = Field(None, ge=1, description="first N classes (sorted)")
    max_per_class: int | None = Field(None, ge=1, description="cap per class and split")


class KineticsDownload(Section):
    url_template: str = "https://www.youtube.com/watch?v={youtube_id}"
    local_dir: InputPath = Field(None, description="source 'local': a folder of clips")
    max_height: int = Field(360, ge=32)
    concurrency: int = Field(4, ge=1)
    batch_size: int = Field(32, ge=1)
    sleep_seconds: float = Field(0.0, ge=0)
    retries: int = Field(3, ge=0)
    backoff_seconds: float = Field(2.0, ge=0)
    retry_failed: bool = False
    cookies_file: InputPath = None
    duration_tolerance: float = Field(1.0, ge=0, description="seconds a clip may differ")


class KineticsFrames(Section):
    storage: Literal["jpeg", "video"] = "jpeg"
    short_side: int = Field(128, ge=16)
    fps: float = Field(8.0, gt=0)
    jpeg_quality: int = Field(5, ge=2, le=31, description="ffmpeg -q:v (2 best .. 31 worst)")
    workers: int = Field(2, ge=1, description="ffmpeg processes at once (one core each)")
    batch_size: int = Field(32, ge=1, description="clips a Prefect task run")


class KineticsDemo(Section):
    clips_per_class: int = Field(30, ge=2)
    duration: float = Field(2.0, gt=0)
    fps: int = Field(16, ge=4)
    size: int = Field(128, ge=32)


class KineticsDataset(Section):
    frames: int = Field(8, ge=1, description="K frames per clip")
    train_dev_fraction: float = Field(0.05, ge=0, lt=0.5, description=(
        "of each class's training clips, held out of training (train-dev error)"))
    sampling: Literal["uniform", "random_stride"] = "uniform"
    test_clips: int = Field(3, ge=1)
    test_crops: Literal[1, 3] = Field(1, description="1 = centre crop; 3 = left/centre/right")
    crop: int = Field(64, ge=16)
    flip: bool = False


class KineticsModel(Section):
    """BesNet (or the I3D-style ResNet-50) and the research-note switches."""

    arch: Literal["besnet", "i3d"] = "besnet"
    layers: list[int] = Field([1, 1, 1, 1], min_length=4, max_length=4,
                              description="blocks per stage; ResNet-50 = [3, 4, 6, 3]")
    width_multiplier: float = Field(0.125, gt=0, description="x the base width 64")
    dilations: list[int] = Field([1, 2], min_length=1)
    dilation_mode: Literal["random", "fixed"] = "random"
    fixed_dilation: int = Field(1, ge=1)
    temporal_padding: Literal["zeros", "replicate"] = "zeros"
    erase_relu: bool = False
    activation: Literal["relu", "selu"] = "relu"
    dropout: float = Field(0.0, ge=0, lt=1)
    residual_scale: float = Field(1.0, gt=0)
    pretrained: InputPath = Field(None, description="torchvision ResNet-50 ImageNet .pth")

    @field_validator("layers", "dilations")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if any(v < 1 for v in value):
            raise ValueError("every entry must be >= 1")
        return value


class KineticsBaseline(Section):
    """The note's baseline: per-frame 2D ResNet features, pooled over time, then an MLP."""

    enabled: bool = True
    layers: list[int] = Field([1, 1, 1, 1], min_length=4, max_length=4)
    width_multiplier: float = Field(0.125, gt=0)
    pool: Literal["mean", "max"] = "mean"
    hidden: int = Field(128, ge=1)
    dropout: float = Field(0.5, ge=0, lt=1)
    freeze_backbone: bool = False
    pretrained: InputPath = Field(None, description="torchvision ResNet-50 ImageNet .pth")


class KineticsTrain(TrainSettings):
    optimizer: Literal["adamw", "sgd"] = "adamw"
    warmup_epochs: int = Field(1, ge=0)
    grad_accum: int = Field(1, ge=1)
    max_grad_norm: float | None = Field(None, gt=0)
    num_workers: Annotated[int, Field(ge=0)] | Literal["auto"] = Field("auto", description=(
        "DataLoader processes decoding clips; auto: cores - 1 on CUDA, 0 on the CPU"))
    compile: Literal["auto", True, False] = Field("auto", description=(
        "torch.compile the model: auto = on CUDA, eager on CPU"))


class KineticsEvaluate(Section):
    ablation_dilation: bool = Field(True, description="also train a fixed-dilation BesNet")
    bootstrap: int = Field(1000, ge=10)
    reference_error: float | None = Field(None, ge=0, lt=1, description=(
        "human-level or best-known Top-1 error, for avoidable bias (null: unknown)"))


class KineticsSettings(Section):
    source: Literal["live", "http", "local", "demo"] = "demo"
    annotations: KineticsAnnotations = KineticsAnnotations()
    subset: KineticsSubset = KineticsSubset()
    download: KineticsDownload = KineticsDownload()
    frames: KineticsFrames = KineticsFrames()
    demo: KineticsDemo = KineticsDemo()
    dataset: KineticsDataset = KineticsDataset()
    model: KineticsModel = KineticsModel()
    baseline: KineticsBaseline = KineticsBaseline()
    train: KineticsTrain = KineticsTrain(epochs=30, batch_size=8, lr=3e-3, weight_decay=1e-4,
                                         patience=8)
    evaluate: KineticsEvaluate = KineticsEvaluate()

    @model_validator(mode="after")
    def _sources(self) -> KineticsSettings:
        if self.source in ("live", "http") and not (self.annotations.train or self.annotations.val):
            raise ValueError(f"source '{self.source}' needs kinetics.annotations.train or .val")
        if self.source == "local" and not self.download.local_dir:
            raise ValueError("source 'local' needs kinetics.download.local_dir")
        return self


# ---------------------------------------------------------------- nightly retraining
PIPELINE_NAMES = tuple(PIPELINES)  # the declared pipelines (tasks/pipeline.py)


class DataChecks(Section):
    """The night's new data against what the champion was trained on, before any training
    (tasks/datachecks.py). A failed check stops that pipeline's night."""

    enabled: bool = True
    max_null_share: float = Field(0.0, ge=0, le=1, description=(
        "share of nulls allowed in a column the model reads"))
    max_out_of_range: float = Field(0.0, ge=0, le=1, description=(
        "share of new rows allowed outside a column's declared range"))
    max_label_shift: float = Field(0.2, ge=0, le=1, description=(
        "largest change of a class's share (total variation) from the champion's data"))
    drift_p_value: float = Field(1e-3, gt=0, lt=1, description=(
        "a column drifted when its two-sample Anderson-Darling p-value is at most this (0.001 "
        "is the test's floor) ..."))
    drift_min_statistic: float = Field(0.25, ge=0, le=1, description=(
        "... and its KS statistic (largest gap of the two CDFs) above this"))
    max_drifted_columns: int = Field(0, ge=0, description="drifted columns allowed")
    min_rows: int = Field(20, ge=1, description=(
        "fewer new rows than this: balance and drift are not tested (the record says so)"))
    reference_rows: int = Field(5000, ge=100, description=(
        "rows of the champion's data kept per column as the reference sample"))


class NightlySettings(Section):
    pipelines: list[str] = list(PIPELINE_NAMES)
    promote_if: Literal["non_inferior", "superior"] = Field("non_inferior", description=(
        "the paired 95% interval of challenger - champion on tonight's test rows: its lower "
        "bound above -margin (non_inferior) or above +margin (superior)"))
    margin: float = Field(0.01, ge=0, description="the rule's margin, in the headline metric")
    bootstrap: int = Field(2000, ge=100, description="paired bootstrap resamples")
    checks: DataChecks = DataChecks()
    push: bool = True
    remote: str | None = Field(None, description="DVC remote to push to; None = the default")

    @field_validator("pipelines")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if not value or len(set(value)) != len(value):
            raise ValueError(f"name each pipeline once, at least one: {value!r}")
        unknown = [name for name in value if name not in PIPELINE_NAMES]
        if unknown:
            raise ValueError(f"unknown pipeline(s) {unknown} (known: {', '.join(PIPELINE_NAMES)})")
        return value


class Params(Section):
    common: CommonSettings = CommonSettings()
    crypto: CryptoSettings = CryptoSettings()
    quora: QuoraSettings = QuoraSettings()
    kinetics: KineticsSettings = KineticsSettings()
    nightly: NightlySettings = NightlySettings()


# ---------------------------------------------------------------- loading
def _format_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{path or '<root>'}: {msg}")
    return "; ".join(lines)


def apply_overrides(raw: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Set dotted keys (`crypto.split.window`) in a copy of the raw params mapping."""
    out = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        node = out
        parts = dotted.split(".")
        for part in parts[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"{dotted}: {part} is not a section")
            node = nxt
        node[parts[-1]] = value
    return out


def parse_params(raw: Mapping[str, Any], source: str = "params") -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_format_error(exc)}") from None


def read_raw_params(path: str | os.PathLike = PARAMS_FILE) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: not found (run from the project root)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return raw


def load_params(path: str | os.PathLike = PARAMS_FILE,
                overrides: Mapping[str, Any] | None = None) -> Params:
    """Read params.yaml once per call site, apply dotted overrides, validate everything."""
    raw = read_raw_params(path)
    if overrides:
        raw = apply_overrides(raw, overrides)
    check_input_paths(raw, str(path))
    return parse_params(raw, str(path))


def input_path_keys(model: type[BaseModel] | None = None, prefix: str = "") -> list[str]:
    """Dotted keys of every path param (InputPath): each is a DVC dependency of its stage."""
    out: list[str] = []
    for name, info in (model or Params).model_fields.items():
        kind = info.annotation
        if NO_FILE_VALIDATOR in info.metadata:
            out.append(f"{prefix}{name}")
        elif isinstance(kind, type) and issubclass(kind, BaseModel):
            out.extend(input_path_keys(kind, f"{prefix}{name}."))
    return out


def check_input_paths(raw: Mapping[str, Any], source: str) -> None:
    """A path param is a DVC dependency: null would break `dvc repro`, so "no file" is NO_FILE."""
    for dotted in input_path_keys():
        node: Any = raw
        for part in dotted.split("."):
            node = node.get(part, NO_FILE) if isinstance(node, Mapping) else NO_FILE
        if node is None or node == "":
            raise ConfigError(f"{source}: {dotted}: write {NO_FILE} for no file, not null "
                              "(DVC watches this path as a dependency of its stage)")


def save_overrides(path: str | os.PathLike, overrides: Mapping[str, Any]) -> Params:
    """Write dotted overrides into params.yaml itself, so DVC sees them and git shows them:
    validated before anything is written, only the overridden values changed (comments,
    nulls, quotes and list styles stay as written: tasks/params_text.py), atomically."""
    from tasks.params_text import with_overrides
    from tasks.storage import write_text

    params = load_params(path, overrides)
    before = Path(path).read_text()
    after = with_overrides(before, overrides)
    if yaml.safe_load(after) != apply_overrides(yaml.safe_load(before) or {}, overrides):
        raise ConfigError(f"{path}: could not write {', '.join(overrides)} in place")
    write_text(after, path)
    return params


def flat_params(section: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten settings (a model, or a stage's view of its declared params) for MLflow params;
    secrets are never part of settings."""
    from tasks.pipeline import ParamsView

    out: dict[str, Any] = {}
    for key, value in section:
        name = f"{prefix}{key}"
        if isinstance(value, BaseModel | ParamsView):
            out.update(flat_params(value, f"{name}."))
        else:
            out[name] = value.isoformat() if isinstance(value, datetime) else value
    return out
