"""The one MLflow helper: tracking URI, runs per pipeline, flat metrics, plots, models."""
from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tasks import fingerprint, provenance
from tasks.config import CommonSettings

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

_stage_inputs: list[str] = []

SUMMARY_TAG = "summary_sha256"  # the digest of the summary file a run wrote (see tag_summary)
# The MLflow UI files an experiment under "Machine learning" (model training) or "GenAI apps &
# agents" by this tag; the value is the UI's CUSTOM_MODEL_DEVELOPMENT (mlflow 3.17's
# server/js bundle: GENAI_DEVELOPMENT="genai_development", CUSTOM_MODEL_DEVELOPMENT=...).
EXPERIMENT_KIND_TAG, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"
PYFUNC_ENTRY = Path(__file__).with_name("pyfunc_entry.py")  # what MLflow runs to load a model
_SECRET = re.compile(r"(api_?key|access_?key|secret|password|token|passphrase|private|"
                     r"credential)", re.IGNORECASE)


def redact(params: Mapping[str, Any]) -> dict[str, Any]:
    """Drop anything that looks like a credential, whatever the caller passed, at any depth
    (a mapping value is redacted the same way: it is logged as its text)."""
    return {k: redact(v) if isinstance(v, Mapping) else v for k, v in params.items()
            if not _SECRET.search(str(k))}


def flatten(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """{'test': {'accuracy': .5}} -> {'test.accuracy': .5}; keeps finite numbers only."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, bool):
            out[name] = float(value)
        elif isinstance(value, (int, float)) and value == value and abs(value) != float("inf"):
            out[name] = float(value)
    return out


def configure(common: CommonSettings) -> str:
    """Point MLflow at the configured store (params.yaml is the one source of truth: MLflow
    itself exports MLFLOW_TRACKING_URI, so that variable is not trusted as a user's choice)."""
    import mlflow

    uri = common.mlflow.tracking_uri
    mlflow.set_tracking_uri(uri)
    return uri


def experiment_id(common: CommonSettings, pipeline: str) -> str:
    """The pipeline's experiment, created as a model-training one (an existing experiment
    without a kind is marked so too; one a user gave another kind keeps it)."""
    import mlflow

    name = f"{common.mlflow.experiment_prefix}-{pipeline}"
    found = mlflow.get_experiment_by_name(name)
    if found is None:
        return mlflow.create_experiment(name, artifact_location=artifact_location(
            common.mlflow.artifact_dir, pipeline), tags={EXPERIMENT_KIND_TAG: TRAINING_KIND})
    if EXPERIMENT_KIND_TAG not in found.tags:
        mlflow.MlflowClient().set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG,
                                                 TRAINING_KIND)
    return found.experiment_id


def artifact_location(artifact_dir: str | None, pipeline: str) -> str | None:
    """Where a new experiment keeps its artifacts: a local directory (made absolute), a URI
    (s3://bucket/prefix, gs://...), or None to let a tracking server use its own default."""
    if artifact_dir is None:
        return None
    if "://" in artifact_dir:
        return f"{artifact_dir.rstrip('/')}/{pipeline}"
    return (Path(artifact_dir).resolve() / pipeline).as_uri()


def set_stage_inputs(paths: list[str]) -> None:
    """The stage about to run reads these paths: every new run gets their DVC hashes as tags."""
    _stage_inputs[:] = [str(p) for p in paths]


def stage_inputs() -> list[str]:
    """The inputs set by the stage runner (none by default)."""
    return list(_stage_inputs)


@contextmanager
def run(common: CommonSettings, pipeline: str, run_name: str, *,
        params: Mapping[str, Any] | None = None, tags: Mapping[str, str] | None = None,
        run_id: str | None = None, nested: bool = False, enabled: bool = True
        ) -> Iterator[Any]:
    """Start (or resume, given `run_id`) an MLflow run in the pipeline's experiment.

    `enabled=False` (every rank but 0 of a torchrun job) yields None and logs nothing.
    A new run is tagged with its provenance (git, lock, input hashes, versions: tasks.provenance)
    and, when common.mlflow.system_metrics is on, samples CPU, memory (and GPU) while it runs.
    """
    import mlflow

    if not enabled:
        yield None
        return
    configure(common)
    if run_id is not None:
        ctx = mlflow.start_run(run_id=run_id, nested=nested)
    else:
        ctx = mlflow.start_run(experiment_id=experiment_id(common, pipeline), run_name=run_name,
                               nested=nested, tags=new_run_tags(pipeline, tags),
                               log_system_metrics=common.mlflow.system_metrics)
    with ctx as active:
        if params:
            log_params(params)
        yield active


def new_run_tags(pipeline: str, tags: Mapping[str, str] | None = None,
                 inputs: list[str] | None = None) -> dict[str, str]:
    """What every new run of the project is tagged with: its pipeline and provenance (git,
    lock, the DVC hashes of its inputs: the stage's unless `inputs` names others, versions)."""
    return {"pipeline": pipeline,
            **provenance.tags(_stage_inputs if inputs is None else inputs), **(tags or {})}


def create_run(common: CommonSettings, pipeline: str, run_name: str, *,
               tags: Mapping[str, str] | None = None, inputs: list[str] | None = None) -> str:
    """A new run not made active (a parent whose children other processes start), tagged
    like every other; returns its id."""
    from mlflow.tracking import MlflowClient

    configure(common)
    client = MlflowClient(common.mlflow.tracking_uri)
    return client.create_run(experiment_id(common, pipeline), run_name=run_name,
                             tags=new_run_tags(pipeline, tags, inputs)).info.run_id


def log_params(params: Mapping[str, Any]) -> None:
    import mlflow

    clean = {k: ("" if v is None else str(v))[:6000] for k, v in redact(params).items()}
    mlflow.log_params(clean)


def log_metrics(metrics: Mapping[str, Any], step: int | None = None, prefix: str = "") -> None:
    import mlflow

    flat = flatten(metrics, prefix)
    if flat:
        mlflow.log_metrics(flat, step=step)


def log_artifacts(*paths: str | os.PathLike, artifact_path: str | None = None) -> None:
    import mlflow

    for path in paths:
        path = Path(path)
        if path.is_dir():
            mlflow.log_artifacts(str(path), artifact_path=artifact_path)
        elif path.exists():
            mlflow.log_artifact(str(path), artifact_path=artifact_path)


def log_model(model_class: str, *, config: Mapping[str, Any],
              artifacts: Mapping[str, str | os.PathLike], input_example: Any,
              name: str = "model") -> Any:
    """Log a registrable pyfunc: `model_class` ("module:Class", a mlflow.pyfunc.PythonModel)
    builds itself from `artifacts` (files copied into the model) and `config` (kept in MLmodel).

    The first-party code the class imports is shipped with it (exactly its import closure) and
    its third-party imports are pinned as requirements, so it loads outside the checkout. MLflow
    infers the signature from `input_example`, predicting on it, and checks that it serves; a
    model that cannot predict on its example is an error here, not a registered model.
    """
    import mlflow.pyfunc

    from tasks.errors import ReproLabError

    module = model_class.partition(":")[0]
    saved = list(sys.path)  # MLflow loads the model to check it, putting its code/ first
    with tempfile.TemporaryDirectory() as tmp:
        try:
            info = mlflow.pyfunc.log_model(
                name=name, python_model=str(PYFUNC_ENTRY),
                model_config={"model_class": model_class, **config},
                artifacts={key: str(path) for key, path in artifacts.items()},
                code_paths=[str(p) for p in fingerprint.copy_closure([module], Path(tmp))],
                input_example=input_example, pip_requirements=requirements([module]))
        finally:
            sys.path[:] = saved
    if info.signature is None:
        raise ReproLabError(f"{model_class} failed to predict on its input example, so MLflow "
                            "inferred no signature (its warning above says why)")
    return info


def requirements(modules: list[str]) -> list[str]:
    """pip pins of the installed distributions behind the modules' third-party imports (a local
    build tag such as torch's +cpu dropped; MLflow pins itself)."""
    found = importlib.metadata.packages_distributions()
    pins = {f"{dist}=={importlib.metadata.version(dist).split('+')[0]}"
            for name in fingerprint.third_party_imports(modules) if name != "mlflow"
            for dist in found.get(name, [])}
    return sorted(pins, key=str.lower)


def load_model(model_uri: str) -> Any:
    """mlflow.pyfunc.load_model for a process that runs this project: the model's shipped code
    is put first on sys.path only while it loads, so later imports still find the checkout's."""
    import mlflow.pyfunc

    saved = list(sys.path)
    try:
        return mlflow.pyfunc.load_model(model_uri)
    finally:
        sys.path[:] = saved


def file_sha256(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def tag_summary(path: str | os.PathLike) -> None:
    """Tag the active run with the digest of the summary file it just wrote, so a later stage
    finds the run from that file alone: DVC outputs carry no run ids (they differ every run)."""
    import mlflow

    mlflow.set_tag(SUMMARY_TAG, file_sha256(path))


def run_that_wrote(common: CommonSettings, pipeline: str, path: str | os.PathLike
                   ) -> str | None:
    """The newest run of the pipeline tagged (tag_summary) with this file's digest, or None
    (e.g. the artifacts came from a DVC remote and the MLflow store is another one)."""
    import mlflow

    configure(common)
    runs = mlflow.search_runs(
        [experiment_id(common, pipeline)], f"tags.{SUMMARY_TAG} = '{file_sha256(path)}'",
        order_by=["attributes.start_time DESC"], max_results=1, output_format="list")
    return runs[0].info.run_id if runs else None


def register_model(common: CommonSettings, run_id: str | None, registered_name: str,
                   artifact: str = "model") -> str | None:
    """Register the model that run `run_id` logged (as `artifact`) under `registered_name`:
    the one place a pipeline's model is registered (its evaluate stage). Returns the version,
    or None when registration is off or the run logged no model (said in the log)."""
    import mlflow

    from tasks.logs import get_logger

    if not common.mlflow.register_models:
        return None
    run = mlflow.get_run(run_id) if run_id else None
    found = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run_id}' AND name = '{artifact}'",
        output_format="list") if run else []
    if not found:
        get_logger().warning("%s not registered: no logged model %r in the training run %s "
                             "(rerun the train stage: dvc repro -f -s <pipeline>_train)",
                             registered_name, artifact, run_id)
        return None
    version = mlflow.register_model(found[0].model_uri, registered_name,
                                    tags=registration_tags(registered_name)).version
    get_logger().info("registered %s version %s", registered_name, version)
    return str(version)


def registration_tags(registered_name: str) -> dict[str, str]:
    """What a version records of the stage that registers it (evaluate), so it can be rebuilt
    and checked byte for byte (`reprolab reproduce`): that stage's provenance (git, lock,
    threads, versions, the DVC hashes of what it read: the trained artifacts, predictions
    included) and the DVC hashes of the files it wrote: the pipeline's metrics and results."""
    from tasks.pipeline import declarations

    written = [path for spec in declarations() if spec.model_name == registered_name
               for path in (spec.metrics_file, spec.results_file)]
    return {**provenance.tags(_stage_inputs),
            **provenance.input_tags(written, prefix=provenance.OUTPUT_TAG)}
