"""The full-scale bill: its arithmetic from its inputs, and every figure traced to a source or
marked assumed."""
from __future__ import annotations

import math
from pathlib import Path

import yaml

from benchmarks import full_scale
from benchmarks.full_scale import INPUTS, Assumed, figures, report

PROFILE = Path(__file__).resolve().parents[2] / "profiles" / "kinetics-400.yaml"


def _figure(label: str) -> float:
    (value,) = [f.value for f in figures() if f.label == label]
    return value


def test_outputs_follow_from_their_inputs():
    clips = 240_000 + 19_906
    assert _figure("download, 360p sections") == clips * 0.7e6 / 8 * 10 / 1e9
    assert _figure("BesNet-50 compiled: full schedule, 1 GPU") == 240_000 / 655 / 3600 * 50
    assert math.isclose(_figure("BesNet-50 compiled: full schedule, 8 GPUs, wall"),
                        240_000 / 655 / 3600 * 50 / (8 * 0.9))
    assert _figure("loader cores per GPU, jpeg, BesNet compiled") == 655 / 161
    assert _figure("requests") == math.ceil(10 * 365.25 * 1440 / 1000) == 5260
    assert math.isclose(_figure("question vectors end to end, this CPU"), 3.92 * 808_580 / 400_000)


def test_an_output_moves_with_its_input(monkeypatch):
    monkeypatch.setitem(INPUTS, "besnet_compiled", full_scale.Measured(1310, "clips/s", "test"))
    assert math.isclose(_figure("BesNet-50 compiled: one epoch, 1 GPU"), 240_000 / 1310 / 3600)


def test_profile_settings_are_the_profiles():
    profile = yaml.safe_load(PROFILE.read_text())
    assert INPUTS["epochs"].value == profile["kinetics.train.epochs"]
    assert INPUTS["clip_frames"].value == profile["kinetics.dataset.frames"]
    assert INPUTS["frame_workers"].value == profile["kinetics.frames.workers"]


def test_every_printed_figure_names_a_source_or_is_marked_assumed():
    text = report()
    inputs, outputs = text.split("\n\n", 1)
    for line in inputs.splitlines()[1:]:
        item = INPUTS[line.split()[0]]
        kinds = ("(assumed): ",) if isinstance(item, Assumed) else ("measured: ", "given: ")
        assert any(kind in line for kind in kinds), line
        assert len(line.split(": ", 1)[1]) > 10, line
    for line in outputs.splitlines():
        if not line.startswith("  "):
            continue  # a section title or a blank line
        if "missing: " in line:
            assert " - " in line, line  # no figure on a missing line
            continue
        names = [n.strip() for n in line.split(" <- ")[1].split(", ")]
        assert names, line
        for name in names:
            if name.startswith("(assumed) "):
                continue
            bare = name.removesuffix(" (assumed)")
            assert bare in INPUTS, line
            assert name.endswith("(assumed)") == isinstance(INPUTS[bare], Assumed), line
