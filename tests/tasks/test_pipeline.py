"""The pipeline declarations: dvc.yaml generated from them, deps complete, params enforced."""
import subprocess
import sys

import pytest
import yaml

from tasks.config import Params, flat_params, input_path_keys, load_params
from tasks.fingerprint import module_closure, relative
from tasks.pipeline import (
    MODEL_LOADER,
    PIPELINES,
    ParamsView,
    UndeclaredParam,
    declaration,
    declarations,
    render,
    stage_modules,
)
from tests.conftest import ROOT, dotted

PARAMS = load_params(ROOT / "params.yaml")


def test_dvc_yaml_is_generated_from_the_declarations():
    assert (ROOT / "dvc.yaml").read_text() == render(), \
        "dvc.yaml is out of date: run `python -m tasks.pipeline write`"


def test_the_check_command_names_the_fix(tmp_path):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    proc = subprocess.run([sys.executable, "-m", "tasks.pipeline", "check"], cwd=tmp_path,
                          capture_output=True, text=True, env={"PYTHONPATH": str(ROOT)})
    assert proc.returncode == 1 and "python -m tasks.pipeline write" in proc.stderr


def test_every_stage_lists_the_closure_of_the_modules_it_runs():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for spec in declarations():
        for stage in spec.stages:
            code = relative(module_closure(stage_modules(spec, stage)))
            assert stage.module.replace(".", "/") + ".py" in code
            assert set(code) <= set(stages[stage.name]["deps"]), stage.name
            assert callable(stage.callable())
            assert stages[stage.name]["cmd"] == f"python -m flows.{spec.name} {stage.step}"


def test_code_a_stage_runs_by_path_is_a_dependency():
    """The pyfunc loader is copied into every logged model by path (tasks/tracking.py), so no
    import closure sees it: the stages that log and register models declare it."""
    from tasks import tracking

    assert (ROOT / MODEL_LOADER).resolve() == tracking.PYFUNC_ENTRY.resolve()
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for spec in declarations():
        for step in ("train", "evaluate"):
            stage = spec.stage(step)
            assert MODEL_LOADER in stage.code_files, stage.name
            assert MODEL_LOADER in stages[stage.name]["deps"], stage.name
        for stage in spec.stages:
            for rel in stage.code_files:
                assert (ROOT / rel).is_file(), f"{stage.name}: {rel}"
    assert MODEL_LOADER not in stages["crypto_ingest"]["deps"]


def test_stages_do_not_list_code_they_never_import():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert "tasks/crypto/report.py" not in stages["crypto_ingest"]["deps"]
    assert "models/besnet.py" not in stages["kinetics_frames"]["deps"]
    assert "tasks/quora/training.py" not in stages["quora_embed"]["deps"]
    assert "tasks/crypto/split.py" in stages["crypto_train"]["deps"]  # windows, via training


def test_every_path_param_is_a_dependency_of_the_stage_that_reads_it():
    declared = {p for spec in declarations() for s in spec.stages for p in s.input_params}
    assert declared == set(input_path_keys())
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert "${crypto.file.path}" in stages["crypto_ingest"]["deps"]
    assert "${kinetics.model.pretrained}" in stages["kinetics_train"]["deps"]


def test_declared_params_exist_in_params_yaml():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for spec in declarations():
        for stage in spec.stages:
            for key in (*stage.params, *stage.input_params):
                node = raw
                for part in key.split("."):
                    assert isinstance(node, dict) and part in node, f"{stage.name}: {key}"
                    node = node[part]


def test_pydantic_defaults_equal_params_yaml():
    """params.yaml is the one place values live: code that builds settings without it runs
    the same experiment."""
    defaults, shipped = flat_params(Params()), flat_params(PARAMS)
    differ = {k: (defaults.get(k), shipped.get(k)) for k in set(defaults) | set(shipped)
              if defaults.get(k, "<absent>") != shipped.get(k, "<absent>")}
    assert not differ
    # and params.yaml spells out every key: one it lacks would silently take its default
    written = set(dotted(yaml.safe_load((ROOT / "params.yaml").read_text())))
    assert set(defaults) == written, {"only in the models": set(defaults) - written,
                                      "only in params.yaml": written - set(defaults)}


def test_the_full_scale_profile_overrides_known_keys_only():
    profile = yaml.safe_load((ROOT / "profiles/kinetics-400.yaml").read_text())
    full = load_params(ROOT / "params.yaml", profile)
    assert list(full.kinetics.model.layers) == [3, 4, 6, 3]
    assert full.kinetics.dataset.crop == 224 and full.kinetics.model.width_multiplier == 1.0


# ---------------------------------------------------------------- the params view
def _view(*declared: str) -> ParamsView:
    return ParamsView(PARAMS, declared, "crypto_test")


def test_a_declared_key_reads_through_and_is_recorded():
    view = _view("crypto.split", "common.seed")
    assert view.crypto.split.window == PARAMS.crypto.split.window
    assert view.common.seed == PARAMS.common.seed
    assert view.keys_read == {"crypto.split.window", "common.seed"}


def test_an_undeclared_key_fails_naming_it_and_the_stage():
    view = _view("crypto.split")
    with pytest.raises(UndeclaredParam, match=r"crypto_test.*'crypto\.label\.horizon'"):
        _ = view.crypto.label.horizon


def test_a_declared_leaf_opens_its_sections_and_nothing_beside_it():
    view = _view("crypto.label.horizon")
    assert view.crypto.label.horizon == PARAMS.crypto.label.horizon
    with pytest.raises(UndeclaredParam):
        _ = view.crypto.label.dead_zone
    with pytest.raises(UndeclaredParam):
        view.crypto.label.model_dump()


def test_a_computed_setting_reads_through_the_view():
    assert _view("crypto.model_symbol", "crypto.symbols").crypto.symbol == PARAMS.crypto.symbol
    with pytest.raises(UndeclaredParam):
        _ = _view("crypto.model_symbol").crypto.symbol


def test_iteration_and_flat_params_cover_declared_keys_only():
    flat = flat_params(_view("crypto.split", "crypto.label.horizon").crypto, "crypto.")
    assert "crypto.split.window" in flat and "crypto.label.horizon" in flat
    assert not any(k.startswith(("crypto.model.", "crypto.live.")) for k in flat)
    assert "crypto.label.dead_zone" not in flat


def test_logging_reads_nothing_and_flat_reads_every_declared_leaf():
    """A key only logged or hashed (flat_params) is read by nothing: the end-to-end check of
    unread params.yaml keys must see it as dead; `flat` is for code that uses every value."""
    view = _view("crypto.split", "crypto.label.horizon")
    flat_params(view.crypto, "crypto.")
    assert view.keys_read == set()
    used = view.crypto.flat("crypto.")
    assert used == flat_params(view.crypto, "crypto.")
    assert view.keys_read == set(used)


def test_a_whole_section_copy_needs_the_whole_section():
    assert _view("crypto.model").crypto.model.model_copy(update={"hidden": 3}).hidden == 3
    with pytest.raises(UndeclaredParam):
        _view("crypto.model.kind").crypto.model.model_copy()


def test_the_view_is_read_only_and_rejects_unknown_names():
    view = _view("crypto")
    with pytest.raises(AttributeError):
        view.crypto.source = "live"
    with pytest.raises(AttributeError, match="not a setting"):
        _ = view.crypto.nonsense


# ---------------------------------------------------------------- the declarations
@pytest.mark.parametrize("name", list(PIPELINES))
def test_every_pipeline_has_the_same_shape(name):
    spec = declaration(name)
    steps = [s.step for s in spec.stages]
    assert steps[-1] == "evaluate" and "train" in steps and "split" in steps
    assert steps.index("split") < steps.index("train")
    assert spec.test_data_stage == f"{name}_split"
    split = spec.stage("split")
    for step in ("train", "evaluate"):
        assert any(out in spec.stage(step).deps or _reads_via(spec, step, out)
                   for out in split.out_paths), f"{name}_{step} does not read the split"
    assert spec.last.metrics == (spec.metrics_file,)
    assert all(s.name.startswith(f"{name}_") for s in spec.stages)
    assert set(spec.data_stages) <= {s.name for s in spec.stages}




def _reads_via(spec, step: str, path: str) -> bool:
    """train reads the split through an output of a stage downstream of the split (embed)."""
    deps = spec.stage(step).deps
    return any(path in s.deps and set(s.out_paths) & set(deps) for s in spec.stages)


def test_unknown_names_are_clear_errors():
    with pytest.raises(Exception, match="unknown pipeline 'cats'"):
        declaration("cats")
    with pytest.raises(Exception, match="no stage 'bake'"):
        declaration("crypto").stage("bake")


def test_the_cli_help_lists_every_stage_with_its_params():
    proc = subprocess.run([sys.executable, "-m", "flows.quora", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    for stage in declaration("quora").stages:
        assert stage.step in proc.stdout and stage.doc[:30] in proc.stdout.replace("\n  ", " ")
    assert "params: common.seed, quora.split" in proc.stdout


def test_no_file_is_inputs_none_and_null_is_refused_with_that_advice():
    assert PARAMS.crypto.file.path is None and PARAMS.kinetics.model.pretrained is None
    assert (ROOT / "inputs/none").is_file()
    with pytest.raises(Exception, match=r"crypto\.file\.path: write inputs/none for no file"):
        load_params(ROOT / "params.yaml", {"crypto.file.path": None})
    named = load_params(ROOT / "params.yaml", {"quora.file.path": "some/where.tsv"})
    assert named.quora.file.path == "some/where.tsv"
