"""crypto's rows for the nightly's comparison (tasks/rescore.py): tonight's val (dev) and test
samples as the raw candles the registered pyfunc (tasks.crypto.serving) reads, its P(up)
mapped back onto them by timestamp."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks.config import CryptoFeatures, CryptoSettings, Params
from tasks.crypto import store
from tasks.crypto.features import history_bars
from tasks.crypto.featurize import model_partition
from tasks.crypto.paths import CryptoPaths
from tasks.errors import DataError
from tasks.evaluate import default_block_length
from tasks.rescore import Predictions, Rows, digest
from tasks.storage import read_json, read_parquet

SEGMENTS = {"dev": "val", "test": "test"}  # evaluate chooses the threshold on val


@dataclass(frozen=True)
class Candles:
    """What a model is fed: the model symbol's candles up to the last test row (timestamps UTC
    without a zone, as the pyfunc's signature reads them), and the timestamps of the dev and
    test rows whose P(up) is scored."""

    candles: pd.DataFrame
    dev: np.ndarray   # datetime64[ns], UTC
    test: np.ndarray


def utc_naive(stamps: Any) -> np.ndarray:
    """Timestamps as datetime64[ns] in UTC without a zone (naive ones are read as UTC)."""
    index = pd.DatetimeIndex(pd.to_datetime(stamps, utc=True))
    return index.tz_localize(None).to_numpy(dtype="datetime64[ns]")


def model_candles(settings: CryptoSettings, paths: CryptoPaths) -> pd.DataFrame:
    """The ingested candles of the model symbol, as the features stage reads them."""
    part = model_partition(read_json(paths.partitions), settings.model_symbol, paths.partitions)
    if part["timeframe"] != settings.timeframe:
        raise DataError(f"the ingested {part['symbol']} candles are {part['timeframe']}, "
                        f"crypto.timeframe is {settings.timeframe}", path=paths.partitions,
                        field="timeframe")
    candles = store.load_candles(paths.root / part["path"])  # recorded from the project root
    if candles.empty:
        raise DataError(f"no candles for {part['symbol']} {part['timeframe']}",
                        path=paths.root / part["path"])
    return candles


def rows(params: Params, root: Path = Path(".")) -> Rows:
    """Tonight's val and test samples of data/crypto/splits, with the candles behind them."""
    paths, settings = CryptoPaths(root), params.crypto
    samples = read_parquet(paths.splits / "samples.parquet",
                           columns=["timestamp", "segment", "target"])
    parts = {key: samples[samples["segment"] == name] for key, name in SEGMENTS.items()}
    for key, part in parts.items():
        if part.empty:
            raise DataError(f"no {SEGMENTS[key]} samples", path=paths.splits / "samples.parquet",
                            field="segment")
    dev, test = (utc_naive(parts[key]["timestamp"]) for key in ("dev", "test"))
    candles = model_candles(settings, paths)
    stamps = candles["timestamp"].dt.tz_localize(None)
    candles = candles[stamps <= test.max()].assign(timestamp=stamps).reset_index(drop=True)
    labels = parts["test"]["target"].to_numpy().astype(np.int64)
    return Rows(kind="binary", test_labels=labels, inputs=Candles(candles, dev, test),
                digest=digest(test, labels, test_candles(candles, test)),
                dev_labels=parts["dev"]["target"].to_numpy().astype(np.int64),
                block_length=settings.evaluate.block_length or default_block_length(len(test)))


def test_candles(candles: pd.DataFrame, test: np.ndarray) -> np.ndarray:
    """The candle values of the test rows' span: a revised candle changes the rows' digest
    even where it leaves the labels as they were."""
    span = candles[candles["timestamp"].to_numpy() >= test.min()]
    return span[["open", "high", "low", "close", "volume"]].to_numpy()


def history_needed(model: Any) -> int:
    """Candles the model reads before a row's own (its features' history and input window),
    from the config it was logged with: a champion may have been trained with other ones."""
    config = model.model_config
    return history_bars(CryptoFeatures.model_validate(config["features"])) + \
        int(config["window"]) - 1


def fed_candles(inputs: Candles, history: int) -> pd.DataFrame:
    """The candles from `history` bars before the first dev row to the last test row."""
    stamps = utc_naive(inputs.candles["timestamp"])
    first = int(np.searchsorted(stamps, inputs.dev.min()))
    if first == len(stamps) or stamps[first] != inputs.dev.min():
        raise DataError(f"the val row at {pd.Timestamp(inputs.dev.min())} has no candle",
                        field="timestamp")
    return inputs.candles.iloc[max(0, first - history):].reset_index(drop=True)


def at_rows(p_up: pd.Series, stamps: np.ndarray, segment: str) -> np.ndarray:
    """P(up) of the rows at `stamps`, in their order; a row without one is a DataError."""
    found = p_up.reindex(stamps).to_numpy()
    missing = np.flatnonzero(np.isnan(found))
    if len(missing):
        raise DataError(f"no P(up) for the {segment} row at {pd.Timestamp(stamps[missing[0]])}",
                        row=int(missing[0]), field="timestamp")
    return found


def predict(model: Any, rows: Rows) -> Predictions:
    """The pyfunc's P(up) for the val and test rows, from one call on the candles they need."""
    inputs: Candles = rows.inputs
    out = model.predict(fed_candles(inputs, history_needed(model)))
    p_up = pd.Series(out["p_up"].to_numpy(dtype=np.float64), index=utc_naive(out["timestamp"]))
    return Predictions(test=at_rows(p_up, inputs.test, SEGMENTS["test"]),
                       dev=at_rows(p_up, inputs.dev, SEGMENTS["dev"]))
