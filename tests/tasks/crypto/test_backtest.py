import numpy as np
import pytest

from tasks.crypto.backtest import backtest_long_flat, buy_and_hold, plot_equity
from tasks.errors import DataError

RETURNS = np.array([0.1, -0.2, 0.05, 0.1])
KEYS = {"total_return", "sharpe", "max_drawdown", "n_trades", "exposure", "equity"}


def test_always_long_without_fees_compounds_returns():
    out = backtest_long_flat(np.ones(4, dtype=int), RETURNS, fee_bps=0, bars_per_year=365)
    assert set(out) == KEYS
    assert out["equity"] == pytest.approx([1.1, 0.88, 0.924, 1.0164])
    assert out["total_return"] == pytest.approx(0.0164)
    assert out["max_drawdown"] == pytest.approx(-0.2)  # 1.1 -> 0.88
    assert out["n_trades"] == 1 and out["exposure"] == 1.0
    expected = RETURNS.mean() / RETURNS.std(ddof=1) * np.sqrt(365)
    assert out["sharpe"] == pytest.approx(expected)
    assert all(type(out[k]) in (float, int) for k in KEYS - {"equity"})


def test_always_long_equals_buy_and_hold_with_identical_fees():
    long = backtest_long_flat(np.ones(4), RETURNS, fee_bps=10, bars_per_year=365)
    hold = buy_and_hold(RETURNS, fee_bps=10, bars_per_year=365)
    for key in KEYS - {"equity"}:
        assert long[key] == pytest.approx(hold[key]), key
    np.testing.assert_allclose(long["equity"], hold["equity"])
    assert hold["total_return"] == pytest.approx((1 - 0.001) * np.prod(1 + RETURNS) - 1)
    assert hold["n_trades"] == 1


def test_never_long_is_flat():
    out = backtest_long_flat(np.zeros(4), RETURNS, fee_bps=25, bars_per_year=365)
    assert out["total_return"] == 0.0
    assert out["n_trades"] == 0
    assert out["sharpe"] == 0.0
    assert out["max_drawdown"] == 0.0
    assert out["exposure"] == 0.0
    np.testing.assert_array_equal(out["equity"], np.ones(4))


def test_position_applies_to_the_next_return_only():
    out = backtest_long_flat(np.array([0, 1, 0, 0]), np.array([0.5, -0.1, 0.3, 0.2]),
                             fee_bps=0, bars_per_year=1)
    assert out["total_return"] == pytest.approx(-0.1)
    assert out["max_drawdown"] == pytest.approx(-0.1)
    assert out["n_trades"] == 2 and out["exposure"] == 0.25


def test_fees_cost_the_expected_amount():
    position = np.array([1, 0, 1, 0])  # four switches, returns all zero
    out = backtest_long_flat(position, np.zeros(4), fee_bps=25, bars_per_year=365)
    assert out["n_trades"] == 4
    assert out["total_return"] == pytest.approx((1 - 0.0025) ** 4 - 1)
    free = backtest_long_flat(position, RETURNS, fee_bps=0, bars_per_year=365)
    paid = backtest_long_flat(position, RETURNS, fee_bps=25, bars_per_year=365)
    assert 1 + paid["total_return"] == pytest.approx((1 + free["total_return"]) * 0.9975 ** 4)


def test_known_drawdown_after_a_new_peak():
    returns = np.array([0.5, -0.5, 1.0, -0.25, 0.1])  # 1.5, 0.75, 1.5, 1.125, 1.2375
    out = buy_and_hold(returns, fee_bps=0, bars_per_year=12)
    assert out["max_drawdown"] == pytest.approx(-0.5)
    losing = buy_and_hold(np.array([-0.1, -0.1]), fee_bps=0, bars_per_year=12)
    assert losing["max_drawdown"] == pytest.approx(0.81 - 1)  # measured from the start


def test_bad_input_is_rejected():
    with pytest.raises(DataError, match="row 2"):
        backtest_long_flat(np.array([0, 1, 2, 0]), RETURNS, 0, 365)
    with pytest.raises(DataError, match="position"):
        backtest_long_flat(np.ones(3), RETURNS, 0, 365)
    with pytest.raises(DataError, match="next_returns"):
        buy_and_hold(np.array([0.1, np.nan]), 0, 365)
    with pytest.raises(ValueError, match="fee_bps"):
        buy_and_hold(RETURNS, -1, 365)


def test_plot_equity_writes_png(tmp_path):
    rng = np.random.default_rng(0)
    returns = rng.normal(0, 0.01, 300)
    position = (rng.random(300) > 0.5).astype(int)
    curves = {"strategy": backtest_long_flat(position, returns, 10, 8766)["equity"],
              "buy and hold": buy_and_hold(returns, 10, 8766)["equity"]}
    import pandas as pd

    index = pd.date_range("2024-01-01", periods=300, freq="h", tz="UTC")
    for name, x in (("dated.png", index), ("bars.png", None)):
        path = plot_equity(curves, x, tmp_path / name)
        assert path.stat().st_size > 1000
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
