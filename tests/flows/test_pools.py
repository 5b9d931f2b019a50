"""Stages on their declared work pool (flows/pools.py): the grouping, and that outside a team's
clone every stage runs where the pipeline runs. (The hand-off itself, a flow run of
run-stages/<pool> on another worker: tests/flows/test_team.py.)"""
from flows.pools import changed_stages, pool_groups, repro_pipeline
from tasks.pipeline import declaration


def test_kinetics_training_is_declared_on_the_gpu_pool():
    assert pool_groups(declaration("kinetics")) == [
        (None, ["kinetics_download", "kinetics_frames", "kinetics_index", "kinetics_split"]),
        ("gpu", ["kinetics_train", "kinetics_baseline"]),
        (None, ["kinetics_evaluate"])]
    assert pool_groups(declaration("crypto")) == [
        (None, [stage.name for stage in declaration("crypto").stages])]


def test_outside_a_team_clone_the_whole_pipeline_runs_here():
    calls = []
    ran = repro_pipeline(declaration("kinetics"), None, "kinetics pipeline",
                         repro=lambda targets: calls.append(targets) or ["kinetics_evaluate"])
    assert calls == [["kinetics_evaluate"]] and ran == ["kinetics_evaluate"]


def test_the_stages_a_hand_off_ran_are_those_whose_lock_entry_changed():
    before = "stages:\n  a: {outs: [{md5: '1'}]}\n  b: {outs: [{md5: '1'}]}\n"
    after = "stages:\n  a: {outs: [{md5: '1'}]}\n  b: {outs: [{md5: '2'}]}\n  c: {}\n"
    assert changed_stages(before, after) == ["b", "c"]
