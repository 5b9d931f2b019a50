"""The crypto_features stage: causal features and forward labels of the ingested candles the
ingest report names (the partition of the model symbol)."""
from __future__ import annotations

from pathlib import Path

from prefect import task

from tasks.config import CryptoSettings
from tasks.crypto import store
from tasks.crypto.features import add_labels, compute_features, feature_columns
from tasks.errors import DataError
from tasks.logs import get_logger
from tasks.storage import read_json, write_parquet


def model_partition(report: dict, model_symbol: str | None, report_path: Path) -> dict:
    """The ingested partition to model: crypto.model_symbol's, else the first one written."""
    parts = report.get("partitions") or []
    if not parts:
        raise DataError("lists no ingested partitions; run crypto_ingest first", path=report_path,
                        field="partitions")
    if model_symbol is None:
        return parts[0]
    for part in parts:
        if part["symbol"] == model_symbol:
            return part
    held = ", ".join(f"{p['source']} {p['exchange']} {p['symbol']}" for p in parts)
    raise DataError(f"crypto.model_symbol {model_symbol!r} was not ingested (ingested: {held}); "
                    "set it to one of those, or null", path=report_path, field="partitions")


@task(name="crypto-features")
def build_features(settings: CryptoSettings, partitions_file: Path, dest: Path) -> dict:
    """Causal features and forward labels for the model symbol's ingested candles, as one table."""
    part = model_partition(read_json(partitions_file), settings.model_symbol, partitions_file)
    candles = store.load_candles(Path(part["path"]))
    if candles.empty:
        raise DataError(f"no candles for {part['source']} {part['exchange']} {part['symbol']} "
                        f"{part['timeframe']} (listed in {partitions_file}); run crypto_ingest",
                        path=part["path"])
    frame = add_labels(compute_features(candles, settings.features), settings.label)
    write_parquet(frame, dest)
    summary = {"candles": part, "rows": len(frame), "features": feature_columns(frame),
               "labelled": int(frame["target"].notna().sum()),
               "up_share": float(frame["target"].mean())}
    get_logger().info("features (%s %s %s): %d rows, %d features, %d labelled (%.1f%% up)",
                      part["source"], part["exchange"], part["symbol"], summary["rows"],
                      len(summary["features"]), summary["labelled"], 100 * summary["up_share"])
    return summary


def features_stage(params) -> dict:
    """crypto_features: the feature table of the model symbol."""
    from tasks.crypto.paths import CryptoPaths

    paths = CryptoPaths()
    return build_features(params.crypto, paths.partitions, paths.features)
