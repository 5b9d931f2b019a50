"""Every registered model is a pyfunc that reads raw inputs: crypto candles, Quora question pairs,
Kinetics clip files. Small real pipelines register them in a real MLflow store (SQLite); the
pyfuncs must give what the pipeline computed, load in a fresh Python process that cannot import
this checkout, and answer REST requests from `mlflow models serve`."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from tasks import tracking
from tests.conftest import ROOT, VENV_BIN, free_port, wait_for_http
from tests.tasks.conftest import pyfunc
from tests.tasks.crypto.test_secrets import file_leaks

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_thread")  # the pipelines: tests/tasks/conftest.py


# ---------------------------------------------------------------- what the pipeline computed
def test_crypto_pyfunc_gives_the_pipelines_p_up_from_raw_candles(crypto):
    model = pyfunc(crypto)
    candles = model.input_example
    assert list(candles.columns) == ["timestamp", "open", "high", "low", "close", "volume"]
    assert len(candles) == 500
    out = model.predict(candles)
    preds = pd.read_parquet(crypto["paths"].artifacts / "predictions.parquet")
    preds = preds.drop_duplicates("timestamp").assign(
        timestamp=lambda f: pd.to_datetime(f["timestamp"], utc=True).dt.tz_localize(None))
    both = out.merge(preds, on="timestamp", validate="one_to_one")
    # every candle with enough history has its prediction, but the newest (no next close yet)
    assert len(both) == len(out) - 1 and len(out) > 150
    np.testing.assert_array_equal(both["p_up"].to_numpy(), both["prob_model"].to_numpy())
    # shuffled rows are put back in time order; too few candles is a clear error
    again = model.predict(candles.sample(frac=1, random_state=0))
    pd.testing.assert_frame_equal(again, out)
    with pytest.raises(Exception, match="too few") as error:
        model.predict(candles.tail(100))
    assert type(error.value).__name__ == "DataError"  # the model's own (shipped) DataError


def test_quora_pyfunc_gives_the_pipelines_p_duplicate_from_raw_questions(quora):
    model = pyfunc(quora)
    pairs = pd.read_parquet(quora["paths"].split / "pairs.parquet")
    test = pairs[pairs["split"] == "test"].reset_index(drop=True)
    out = model.predict(test[["question1", "question2"]])
    preds = pd.read_parquet(quora["paths"].artifacts / "predictions.parquet")
    main = json.loads((quora["paths"].artifacts / "train.json").read_text())["main"]["column"]
    expected = preds.loc[preds["split"] == "test", main].to_numpy()
    np.testing.assert_array_equal(out["p_duplicate"].to_numpy(), expected)
    # raw text: the clean stage's normalisation (NFKC, whitespace) is inside the model
    raw = test[["question1", "question2"]].head(5).apply(
        lambda col: "  " + col.str.replace(" ", "\u00a0 ") + "\n")
    np.testing.assert_array_equal(model.predict(raw)["p_duplicate"].to_numpy(), expected[:5])
    assert model.metadata.get_input_schema().input_names() == ["question1", "question2"]


def test_kinetics_pyfunc_ranks_clips_as_kinetics_evaluate_scores_them(kinetics):
    from models.layers import ViewAverage
    from tasks.train import predict
    from tasks.video.modeling import clip_loader
    from tasks.video.preprocess import normalize_clips
    from tasks.video.report import load_trained
    from tasks.video.serving import top_classes

    settings, classes = kinetics["settings"], kinetics["classes"]
    model = load_trained("besnet", settings, len(classes), kinetics["weights"].parents[1])
    loader = clip_loader(kinetics["index"], settings, 0, train=False, root=kinetics["root"])
    log_probs = predict(ViewAverage(model), loader, CPU, normalize_clips)
    expected = top_classes(log_probs, classes, kinetics["clips"])
    served = pyfunc(kinetics)
    out = served.predict(pd.DataFrame({"path": kinetics["clips"]}))
    assert len(out) == 5 * len(kinetics["clips"]) and set(out["label"]) <= set(classes)
    pd.testing.assert_frame_equal(out, expected, check_exact=False, rtol=0, atol=1e-6)
    assert served.input_example["path"].iloc[0] in kinetics["clips"]  # a raw clip file
    with pytest.raises(Exception, match="no such clip file"):
        served.predict(pd.DataFrame({"path": [str(kinetics["root"] / "missing.mp4")]}))


def test_model_artifacts_hold_no_exchange_secrets(crypto):
    tracking.configure(crypto["common"])
    local = Path(mlflow.artifacts.download_artifacts(
        f"models:/{crypto['name']}/{crypto['version']}"))
    assert (local / "MLmodel").exists() and (local / "code" / "tasks").is_dir()
    assert file_leaks(local) == {}


def test_a_model_that_cannot_predict_on_its_example_is_not_logged(crypto):
    from tasks.crypto import serving
    from tasks.errors import ReproLabError

    tracking.configure(crypto["common"])
    uri = f"models:/{crypto['name']}/{crypto['version']}"
    config = dict(mlflow.models.Model.load(uri).flavors["python_function"]["config"])
    config.pop("model_class")
    local = Path(mlflow.artifacts.download_artifacts(uri))
    files = {"weights": local / "artifacts" / "model.pt", "split": local / "artifacts" / "split.json"}
    too_few = pyfunc(crypto).input_example.head(50)  # no candle has 300 bars of history
    with tracking.run(crypto["common"], "crypto", "broken"):
        with pytest.raises(ReproLabError, match="failed to predict on its input example"):
            tracking.log_model(serving.MODEL_CLASS, config=config, artifacts=files,
                               input_example=too_few)


# ---------------------------------------------------------------- outside the checkout
CHILD = r"""
import importlib.util, inspect, json, sys
# The venv installs this project editable: a meta-path finder maps tasks/models/flows to a
# checkout. Without it (and with -I: no PYTHONPATH, no cwd on sys.path) the project cannot
# be imported, so whatever a model imports comes from the code it ships.
sys.meta_path[:] = [f for f in sys.meta_path
                    if not getattr(f, "__module__", "").startswith("__editable__")]
FIRST_PARTY = ("tasks", "models", "flows")
importable = {n: importlib.util.find_spec(n) is not None for n in FIRST_PARTY}
import mlflow


def source_file(value):
    # where a module, function or class was really loaded from (inspect.getfile looks a class
    # up by name in sys.modules, which may hold another copy: read a method's code instead)
    if inspect.ismodule(value):
        return value.__file__
    if inspect.isfunction(value):
        return value.__code__.co_filename
    for attr in vars(value).values() if inspect.isclass(value) else ():
        attr = getattr(attr, "__func__", attr)
        if inspect.isfunction(attr) and attr.__module__ == value.__module__:
            return attr.__code__.co_filename
    return None


def project_files(namespace):
    # the file of the model's module and of the project's modules, classes, functions it uses
    files = {namespace["__file__"]}
    for value in namespace.values():
        name = value.__name__ if inspect.ismodule(value) else getattr(value, "__module__", "")
        if str(name).split(".")[0] in FIRST_PARTY and source_file(value):
            files.add(source_file(value))
    return sorted(files)


mlflow.set_tracking_uri(sys.argv[1])
out = {"importable": importable, "models": {}}
for name, version in json.loads(sys.argv[2]).items():  # one after another, in one process
    model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    # the namespace of the model's module (MLflow wraps predict: unwrap it)
    namespace = inspect.unwrap(type(model.unwrap_python_model()).predict).__globals__
    out["models"][name] = {
        "prediction": model.predict(model.input_example).to_json(
            orient="split", date_format="iso", double_precision=15),
        "project_files": project_files(namespace)}
print(json.dumps(out))
"""


def test_models_load_in_a_fresh_process_that_cannot_import_the_checkout(crypto, quora,
                                                                       kinetics, tmp_path):
    runs = [crypto, quora, kinetics]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # this process's torch threads
    proc = subprocess.run(
        [sys.executable, "-I", "-c", CHILD, crypto["common"].mlflow.tracking_uri,
         json.dumps({r["name"]: r["version"] for r in runs})],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-5000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["importable"] == {"tasks": False, "models": False, "flows": False}
    for run in runs:
        got = out["models"][run["name"]]
        files = [Path(f) for f in got["project_files"]]
        module = next(f for f in files if f.name == "serving.py")  # tasks/<pipeline>/serving.py
        assert module.parts[-4:-2] == ("code", "tasks") and len(files) > 5
        code_dir = module.parents[2]  # the model's own code/, not this checkout
        assert not code_dir.is_relative_to(ROOT)
        assert [f for f in files if not f.is_relative_to(code_dir)] == []
        model = pyfunc(run)
        expected = model.predict(model.input_example)
        pd.testing.assert_frame_equal(
            pd.read_json(io.StringIO(got["prediction"]), orient="split",
                         convert_dates=["timestamp"]), expected, check_dtype=False,
            check_exact=False, rtol=1e-12, atol=0)


def test_a_served_model_answers_rest_invocations(quora, tmp_path):
    uri = f"models:/{quora['name']}/{quora['version']}"
    model = pyfunc(quora)
    pairs = pd.read_parquet(quora["paths"].split / "pairs.parquet").tail(8)
    questions = pairs[["question1", "question2"]].reset_index(drop=True)
    expected = model.predict(questions)["p_duplicate"].tolist()
    port = free_port()
    # `mlflow models serve` runs uvicorn from PATH: this venv's, as in an activated venv
    env = {**os.environ, "MLFLOW_TRACKING_URI": quora["common"].mlflow.tracking_uri,
           "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 - closed in finally
    server = subprocess.Popen(
        [str(VENV_BIN / "mlflow"), "models", "serve", "-m", uri, "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port)], cwd=tmp_path, env=env, stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", 120, server)
        body = {"dataframe_split": questions.to_dict(orient="split", index=False)}
        answer = httpx.post(f"http://127.0.0.1:{port}/invocations", json=body, timeout=60)
        assert answer.status_code == 200, answer.text
        got = [row["p_duplicate"] for row in answer.json()["predictions"]]
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
        bad = httpx.post(f"http://127.0.0.1:{port}/invocations", timeout=60,
                         json={"dataframe_split": {"columns": ["question1"], "data": [["x"]]}})
        assert bad.status_code == 400 and "question2" in bad.text
    finally:
        stop_group(server)
        log.close()


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group `proc` leads (mlflow and its uvicorn), SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue
