"""Overrides written into params.yaml change the overridden values and nothing else."""
import difflib

import pytest
import yaml

from tasks.config import save_overrides
from tasks.errors import ConfigError
from tasks.params_text import with_overrides
from tests.conftest import ROOT

TEXT = """\
# top comment
common:
  seed: 0
  dask_address: null      # join an existing cluster
crypto:
  source: demo            # live | file | demo
  symbols: [BTC/USDT]
  live:
    since: "2017-08-17T00:00:00Z"
    until: ~
  lags:
    - 1
    - 2
  file:
    path: inputs/none     # a candles file
# trailing comment
"""


def changed_lines(before: str, after: str) -> list[str]:
    return [line for line in difflib.unified_diff(before.splitlines(), after.splitlines(),
                                                  lineterm="", n=0)
            if line[:1] in "+-" and not line.startswith(("---", "+++"))]


def test_only_the_overridden_values_change():
    after = with_overrides(TEXT, {"crypto.source": "file", "crypto.file.path": "x/BTC.csv",
                                  "common.dask_address": "tcp://h:8786"})
    assert changed_lines(TEXT, after) == [
        "-  dask_address: null      # join an existing cluster",
        "+  dask_address: tcp://h:8786 # join an existing cluster",
        "-  source: demo            # live | file | demo",
        "+  source: file            # live | file | demo",
        "-    path: inputs/none     # a candles file",
        "+    path: x/BTC.csv       # a candles file",
    ]


def test_lists_quotes_and_nulls_keep_their_style():
    after = with_overrides(TEXT, {"crypto.symbols": ["ETH/USDT", "BTC/USDT"],
                                  "crypto.live.since": "2020-01-01", "crypto.lags": [3]})
    assert "  symbols: [ETH/USDT, BTC/USDT]\n" in after
    assert '    since: "2020-01-01"\n' in after and "    until: ~\n" in after
    assert "  lags: [3]\n  file:\n" in after
    assert yaml.safe_load(after)["crypto"]["lags"] == [3]


def test_a_missing_key_is_added_at_the_end_of_its_section():
    after = with_overrides(TEXT, {"crypto.file.exchange": "binance", "quora.demo.n_pairs": 9})
    assert changed_lines(TEXT, after) == ["+    exchange: binance", "+quora:", "+  demo:",
                                          "+    n_pairs: 9"]
    assert yaml.safe_load(after)["crypto"]["file"] == {"path": "inputs/none",
                                                       "exchange": "binance"}


def test_a_value_that_is_not_a_section_is_an_error():
    with pytest.raises(ConfigError, match="crypto.source.sub: crypto.source is not a section"):
        with_overrides(TEXT, {"crypto.source.sub": 1})


def test_strings_that_would_parse_as_something_else_are_quoted():
    after = with_overrides(TEXT, {"crypto.source": "null", "common.seed": "1: 2"})
    assert yaml.safe_load(after)["crypto"]["source"] == "null"
    assert yaml.safe_load(after)["common"]["seed"] == "1: 2"


def test_the_projects_params_take_every_override_in_place(tmp_path):
    path = tmp_path / "params.yaml"
    original = (ROOT / "params.yaml").read_text()
    path.write_text(original)
    save_overrides(path, {"crypto.evaluate.fee_bps": 3.0, "quora.model.variant": "siamese"})
    assert len(changed_lines(original, path.read_text())) == 4
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="crypto.split.test_fraction"):
        save_overrides(path, {"crypto.split.test_fraction": 1.5})
    assert path.read_bytes() == before
