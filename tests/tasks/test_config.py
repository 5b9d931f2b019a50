"""params.yaml validation: the repo's own file loads; every kind of mistake names its key path."""
from pathlib import Path

import pytest
import yaml

from tasks.config import apply_overrides, flat_params, load_params, parse_params, read_raw_params
from tasks.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def _raw() -> dict:
    return read_raw_params(ROOT / "params.yaml")


def test_repo_params_load_with_every_section():
    params = load_params(ROOT / "params.yaml")
    assert params.common.mlflow.tracking_uri == "sqlite:///mlflow.db"
    assert params.crypto.source == "demo"
    assert params.crypto.symbol == params.crypto.symbols[0]


@pytest.mark.parametrize(("override", "expected"), [
    ({"crypto.split.test_fraction": 1.5}, "crypto.split.test_fraction: must be < 1"),
    ({"crypto.split.window": "wide"}, "crypto.split.window: Input should be a valid integer"),
    ({"crypto.split.windw": 3}, "crypto.split.windw: unknown key"),
    ({"crypto.source": "ftp"}, "crypto.source: Input should be 'live', 'file' or 'demo'"),
    ({"crypto.timeframe": "1x"}, "crypto.timeframe: timeframe '1x' is not like"),
    ({"crypto.symbols": ["BTCUSDT"]}, "crypto.symbols: 'BTCUSDT' is not a unified symbol"),
    ({"crypto.source": "file"}, "crypto: source 'file' needs crypto.file.path"),
    ({"common.device": "tpu"}, "common.device: Input should be 'auto', 'cpu' or 'cuda'"),
    ({"kinetics.train.compile": "sometimes"},
     "kinetics.train.compile: Input should be 'auto', True or False"),
    ({"crypto.live.since": "last tuesday"}, "crypto.live.since: not an ISO-8601 date/time"),
])
def test_bad_values_name_the_key_path(override, expected):
    with pytest.raises(ConfigError) as err:
        parse_params(apply_overrides(_raw(), override), "params.yaml")
    assert expected in str(err.value)


def test_several_errors_reported_together():
    raw = apply_overrides(_raw(), {"crypto.split.test_fraction": 2, "crypto.train.lr": -1})
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    assert "crypto.split.test_fraction" in str(err.value)
    assert "crypto.train.lr" in str(err.value)


def test_broken_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("crypto: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_overrides_apply_and_reject_non_sections():
    params = load_params(ROOT / "params.yaml", {"crypto.split.window": 48})
    assert params.crypto.split.window == 48
    with pytest.raises(ConfigError, match="crypto.source.sub: source is not a section"):
        apply_overrides(_raw(), {"crypto.source.sub": 1})


def test_flat_params_are_plain_and_hold_no_credentials(monkeypatch):
    monkeypatch.setenv("REPROLAB_EXCHANGE_API_KEY", "sk-live-123")
    flat = flat_params(load_params(ROOT / "params.yaml").crypto, "crypto.")
    assert flat["crypto.split.window"] == 24
    assert all(not isinstance(v, dict) or k.endswith("options") for k, v in flat.items())
    assert "sk-live-123" not in yaml.safe_dump(flat)
