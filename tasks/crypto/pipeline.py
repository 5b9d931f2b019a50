"""The crypto next-move pipeline, declared once (see tasks/pipeline.py)."""
from tasks.crypto.paths import CryptoPaths
from tasks.pipeline import LOSSES, MODEL_LOADER, Curve, Out, Pipeline, Reference, Stage

P = CryptoPaths()
# the research notes give no accuracy for next-move prediction; these calibration figures are
# the team's, measured on the shared real sample with simple models (../shared/FIELD-NOTES.md)
FIELD = "field notes (not the research notes): BTC/USDT 1h, 45k real bars, simple models"

PIPELINE = Pipeline(
    name="crypto",
    title="Crypto next-move prediction",
    data_reports=(str(P.ingest_report),),
    model_name="crypto-next-move",
    metrics_file=str(P.metrics),
    results_file=str(P.results),
    summary=(("sharpe", "backtest.sharpe"),),
    headline="test.accuracy",
    baselines=("baselines.majority.accuracy", "baselines.persistence.accuracy"),
    references=(
        Reference("next-bar direction, lagged returns, leak-free", 0.53, FIELD, "test.accuracy"),
        Reference("majority class", 0.50, FIELD, "baselines.majority.accuracy"),
        Reference("leaky recipe (price level, shuffled split), horizon 24", 0.60, FIELD,
                  "leak_audit.leaky.accuracy", when=(("leak_audit.horizon", 24),)),
        Reference("the same model leak-free, horizon 24", 0.49, FIELD,
                  "leak_audit.leak_free.accuracy", when=(("leak_audit.horizon", 24),)),
    ),
    rescorer="tasks.crypto.rescore",
    checks="tasks.crypto.checks",
    test_data_stage="crypto_split",
    data_stages=("crypto_ingest", "crypto_features", "crypto_split"),
    stages=(
        Stage("crypto_ingest", "tasks.crypto.ingest:ingest_stage",
              "candles from the source (demo, file, live via ccxt) into the partitioned store",
              params=("common.seed", "crypto.source", "crypto.exchange", "crypto.symbols",
                      "crypto.timeframe", "crypto.model_symbol", "crypto.drop_incomplete",
                      "crypto.live", "crypto.file", "crypto.demo"),
              outs=(Out(str(P.raw), persist=True), str(P.ingest_report)),
              input_params=("crypto.file.path",)),
        Stage("crypto_features", "tasks.crypto.featurize:features_stage",
              "causal features and forward labels of the model symbol",
              params=("crypto.features", "crypto.label", "crypto.model_symbol"),
              deps=(str(P.raw),), outs=(str(P.features),)),
        Stage("crypto_split", "tasks.crypto.prepare:split_stage",
              "chronological train / train-dev / val / test with purge gaps; leak check",
              params=("crypto.split", "crypto.label.horizon"),
              deps=(str(P.features),), outs=(str(P.splits),)),
        Stage("crypto_train", "tasks.crypto.training:train_stage",
              "baselines, the network, the leak audit and the price-regression illusion",
              params=("common.seed", "common.device", "common.mlflow", "crypto.model",
                      "crypto.train", "crypto.leak_audit", "crypto.label", "crypto.split",
                      "crypto.features", "crypto.source", "crypto.exchange", "crypto.timeframe",
                      "crypto.model_symbol", "crypto.symbols"),
              code_files=(MODEL_LOADER,),
              deps=(str(P.raw), str(P.features), str(P.splits)), outs=(str(P.artifacts),)),
        Stage("crypto_evaluate", "tasks.crypto.report:evaluate_stage",
              "metrics with intervals vs naive baselines, backtest, plots; registers the model",
              params=("common.seed", "common.mlflow", "crypto.evaluate"),
              code_files=(MODEL_LOADER,),
              deps=(str(P.artifacts), str(P.splits)), outs=(str(P.results),),
              metrics=(str(P.metrics),),
              plots=(str(P.plots),),
              curves=(Curve(str(P.curves / "learning_curve.csv"), "crypto: learning curve",
                            "epoch", LOSSES, "loss"),
                      Curve(str(P.curves / "equity.csv"), "crypto: backtest equity",
                            "bar", ("model", "buy_and_hold"), "equity (start = 1)"))),
    ),
)
