"""Kinetics annotation parsing, label directories, manifest building and the failure ledger."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import pandas as pd
import pytest

from tasks.config import KineticsSubset
from tasks.errors import ConfigError, DataError
from tasks.video.ledger import LEDGER_COLUMNS, Ledger
from tasks.video.manifest import (
    BAD_SPLIT,
    BAD_TIME,
    BAD_TIME_RANGE,
    BAD_YOUTUBE_ID,
    DUPLICATE,
    MANIFEST_COLUMNS,
    NO_LABEL,
    REJECT_COLUMNS,
    UNKNOWN_LABEL,
    UNLABELED_DIR,
    WRONG_FIELD_COUNT,
    build_manifest,
    label_dirs,
    make_clip_id,
    read_annotations,
    read_class_list,
    safe_path,
    sanitize_label,
    write_manifest,
)

DATA = Path(__file__).resolve().parents[4] / "shared" / "data" / "kinetics"
HEADER = "label,youtube_id,time_start,time_end,split,is_cc\n"


def _sample(name: str) -> Path:
    path = DATA / name
    if not path.exists():
        pytest.skip(f"sample {path} not present")
    return path


def _csv(tmp_path: Path, text: str, name: str = "ann.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ---------------------------------------------------------------- real files
def test_real_val_csv_parses_every_row() -> None:
    frame, rejects = read_annotations(_sample("kinetics400_val.csv"))
    assert len(frame) == 19_906 and rejects.empty
    assert frame["label"].nunique() == 400
    assert set(frame["split"]) == {"val"}
    assert frame["youtube_id"].str.startswith("-").sum() == 644
    assert (frame["time_end"] - frame["time_start"] == 10).all()
    assert "massaging person's head" in set(frame["label"])
    assert "skiing (not slalom or crosscountry)" in set(frame["label"])
    assert frame["line"].iloc[0] == 2 and frame["line"].iloc[-1] == 19_907


def test_real_manifest_matches_class_file(tmp_path: Path) -> None:
    classes_file = _sample("kinetics400_classes.txt")
    paths = {"train": str(_sample("tiny_kinetics400_train.csv")),
             "val": str(_sample("kinetics400_val.csv"))}
    manifest, classes, rejects = build_manifest(paths, str(classes_file), KineticsSubset())
    listed = read_class_list(classes_file)
    assert classes == listed == sorted(listed) and len(classes) == 400
    assert list(manifest.columns) == MANIFEST_COLUMNS and rejects.empty
    assert manifest["split"].value_counts().to_dict() == {"val": 19_906, "train": 400}
    assert (manifest["label"].map(classes.index) == manifest["class_index"]).all()
    assert manifest["clip_id"].is_unique
    row = manifest[manifest["youtube_id"] == "0wR5jVB-WPk"].iloc[0]
    assert row["clip_id"] == "0wR5jVB-WPk_000417_000427" and row["label_dir"] == "abseiling"
    dirs = dict(zip(manifest["label"], manifest["label_dir"], strict=True))
    assert dirs["massaging person's head"] == "massaging_person's_head"
    assert dirs["passing American football (in game)"] == "passing_American_football_(in_game)"
    assert len(set(dirs.values())) == 400
    summary = write_manifest(manifest, classes, rejects, tmp_path)
    assert json.loads((tmp_path / "classes.json").read_text()) == classes
    assert pd.read_parquet(tmp_path / "manifest.parquet").equals(manifest)
    assert summary["per_split"] == {"train": 400, "val": 19_906}
    assert summary["per_class"]["abseiling"] == {"train": 1, "val": 50}
    assert summary["rejected"] == 0


def test_tiny_csvs_with_quoted_labels() -> None:
    for name, split in (("tiny_kinetics400_train.csv", "train"), ("tiny_kinetics400_val.csv",
                                                                  "val")):
        frame, rejects = read_annotations(_sample(name))
        assert len(frame) == 400 and rejects.empty and set(frame["split"]) == {split}
        assert frame["label"].nunique() == 400
        assert "air drumming" in set(frame["label"])
        assert not frame["label"].str.contains('"').any()


# ---------------------------------------------------------------- validation
def test_bad_rows_are_rejected_with_line_and_reason(tmp_path: Path) -> None:
    path = _csv(tmp_path, HEADER
                + "abseiling,0wR5jVB-WPk,417,427,val,0\n"           # 2 good
                + "abseiling,short,1,11,val,0\n"                    # 3 short id
                + "abseiling,0wR5jVB-WPk,20,20,val,0\n"             # 4 start == end
                + "abseiling,0wR5jVB-WPk,30,25,val,0\n"             # 5 start > end
                + "abseiling,0wR5jVB-WPk,1,11,holdout,0\n"          # 6 unknown split
                + "abseiling,0wR5jVB-WPk,ten,20,val,0\n"            # 7 not a number
                + "abseiling,0wR5jVB-WPk,nan,20,val,0\n"            # 8 NaN
                + "abseiling,0wR5jVB-WPk,1,11,val\n"                # 9 too few fields
                + "\n"                                              # 10 blank: skipped
                + '"air drumming",-3B32lodo2M,59,69,validate,0\n'   # 11 good, validate -> val
                + ",_dbcJuKJQNs,40,50,train,0\n"                    # 12 no label
                + "abseiling,0wR5jVB-WP!,1,11,val,0\n"              # 13 bad character
                + "\"petting animal (not cat)\",_5PV4fkZisA,-1,9,val,0\n"  # 14 negative
                + "massaging person's head,_5PV4fkZisA,0,10,test,0\n")  # 15 good
    frame, rejects = read_annotations(path)
    assert list(frame["line"]) == [2, 11, 15]
    assert list(frame["split"]) == ["val", "val", "test"]
    assert list(frame["label"]) == ["abseiling", "air drumming", "massaging person's head"]
    assert list(rejects.columns) == REJECT_COLUMNS
    got = dict(zip(rejects["line"], rejects["reason"], strict=True))
    assert got == {3: BAD_YOUTUBE_ID, 4: BAD_TIME_RANGE, 5: BAD_TIME_RANGE, 6: BAD_SPLIT,
                   7: BAD_TIME, 8: BAD_TIME, 9: WRONG_FIELD_COUNT, 12: NO_LABEL,
                   13: BAD_YOUTUBE_ID, 14: BAD_TIME}
    assert (rejects["file"] == str(path)).all()
    assert rejects.set_index("line").at[6, "raw"] == "abseiling,0wR5jVB-WPk,1,11,holdout,0"
    assert "holdout" in rejects.set_index("line").at[6, "detail"]


def test_missing_columns_name_file_and_columns(tmp_path: Path) -> None:
    path = _csv(tmp_path, "label,youtube_id,start,end,split\nabseiling,0wR5jVB-WPk,1,11,val\n")
    with pytest.raises(DataError) as err:
        read_annotations(path)
    assert str(path) in str(err.value)
    assert "time_start" in str(err.value) and "time_end" in str(err.value)
    with pytest.raises(DataError, match="empty"):
        read_annotations(_csv(tmp_path, "\n\n", "blank.csv"))
    with pytest.raises(DataError, match="missing"):
        read_annotations(tmp_path / "nope.csv")


def test_test_layout_without_label_column(tmp_path: Path) -> None:
    path = _csv(tmp_path, "youtube_id,time_start,time_end,split\n-3B32lodo2M,59,69,test\n"
                "_dbcJuKJQNs,40,50,test\n")
    frame, rejects = read_annotations(path)
    assert rejects.empty and list(frame["label"]) == ["", ""]
    train = _csv(tmp_path, HEADER + "abseiling,0wR5jVB-WPk,417,427,train,0\n", "train.csv")
    manifest, classes, _ = build_manifest({"train": str(train), "test": str(path)}, None,
                                          KineticsSubset())
    assert classes == ["abseiling"]
    test_rows = manifest[manifest["split"] == "test"]
    assert len(test_rows) == 2 and (test_rows["class_index"] == -1).all()
    assert (test_rows["label_dir"] == UNLABELED_DIR).all()


# ---------------------------------------------------------------- hostile labels
HOSTILE = ["../../etc", "a/b", "x\x00y", "..", ".", ".hidden", "/abs", "back\\slash",
           "tab\there", "", "con:*?<>|", "é" * 200]


@pytest.mark.parametrize("label", HOSTILE)
def test_sanitize_label_gives_one_safe_directory(label: str, tmp_path: Path) -> None:
    name = sanitize_label(label)
    assert name and name == sanitize_label(label)
    assert "/" not in name and "\\" not in name and "\x00" not in name
    assert not name.startswith(".") and name not in (".", "..")
    assert all(ch.isprintable() for ch in name)
    assert len(name.encode()) <= 100
    made = safe_path(tmp_path, name)
    made.mkdir()
    assert made.parent == tmp_path.resolve()


def test_safe_path_refuses_escapes(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    assert safe_path(root, "a", "b.mp4") == root.resolve() / "a" / "b.mp4"
    for parts in (("../../etc",), ("..",), ("a", "..", "..", "x"), ("/etc",)):
        with pytest.raises(DataError, match="escapes"):
            safe_path(root, *parts)
    with pytest.raises(DataError, match="NUL"):
        safe_path(root, "x\x00y")
    (root / "link").symlink_to(tmp_path)  # a symlink out of the root is an escape too
    with pytest.raises(DataError, match="escapes"):
        safe_path(root, "link", "x")


def test_hostile_labels_in_a_csv_stay_inside_the_data_root(tmp_path: Path) -> None:
    rows = [f'"{label}",{i:011d},0,10,train,0' for i, label in
            enumerate(["../../etc", "a/b", "ab", "a b", "a_b", "A_B", "x\x00y", "xy"])]
    path = _csv(tmp_path, HEADER + "\n".join(rows) + "\n")
    manifest, classes, rejects = build_manifest({"train": str(path)}, None, KineticsSubset())
    assert rejects.empty and len(classes) == 8
    assert manifest["label_dir"].is_unique  # clashes (a/b vs ab, a b vs a_b vs A_B) resolved
    assert manifest.set_index("label").at["a_b", "label_dir"] == "a_b"
    root = tmp_path / "clips"
    for label_dir, clip_id in zip(manifest["label_dir"], manifest["clip_id"], strict=True):
        target = safe_path(root, label_dir, f"{clip_id}.mp4")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch()
    assert sorted(p.parent.parent for p in root.rglob("*.mp4")) == [root.resolve()] * 8
    assert not (tmp_path.parent / "etc").exists()


def test_label_dirs_are_stable_and_collision_free() -> None:
    labels = ["a b", "a_b", "A B", "x/y", "xy"]
    dirs = label_dirs(labels)
    assert dirs == label_dirs(list(reversed(labels)))
    assert len({d.casefold() for d in dirs.values()}) == len(labels)
    assert dirs["a_b"] == "a_b" and dirs["xy"] == "xy"


# ---------------------------------------------------------------- classes and subsets
def _labelled_csv(tmp_path: Path) -> Path:
    """Three classes in scrambled order, 3 train + 2 val clips each."""
    rows, n = [], 0
    for label in ["zumba", "archery", "bowling"]:
        for split, count in (("train", 3), ("val", 2)):
            for _ in range(count):
                rows.append(f"{label},{n:011d},{n},{n + 10},{split},0")
                n += 1
    return _csv(tmp_path, HEADER + "\n".join(rows) + "\n")


def test_class_index_is_sorted_and_stable(tmp_path: Path) -> None:
    path = _labelled_csv(tmp_path)
    manifest, classes, _ = build_manifest({"train": str(path)}, None, KineticsSubset())
    assert classes == ["archery", "bowling", "zumba"]
    assert set(manifest["split"]) == {"train"}  # the file's role wins over its split column
    assert manifest.groupby("label")["class_index"].unique().map(list).to_dict() == {
        "archery": [0], "bowling": [1], "zumba": [2]}
    assert manifest["clip_id"].iloc[0] == make_clip_id("00000000000", 0, 10)
    assert manifest["clip_id"].iloc[0] == "00000000000_000000_000010"
    shuffled = _csv(tmp_path, HEADER + "".join(reversed(path.read_text().splitlines(True)[1:])),
                    "shuffled.csv")
    again, classes_again, _ = build_manifest({"train": str(shuffled)}, None, KineticsSubset())
    assert classes_again == classes
    assert (again.set_index("clip_id")["class_index"].sort_index()
            .equals(manifest.set_index("clip_id")["class_index"].sort_index()))


def test_labels_outside_the_class_file_are_rejected(tmp_path: Path) -> None:
    path = _labelled_csv(tmp_path)
    classes_file = _csv(tmp_path, "bowling\n\narchery\n", "classes.txt")
    manifest, classes, rejects = build_manifest({"val": str(path)}, str(classes_file),
                                                KineticsSubset())
    assert classes == ["bowling", "archery"]  # line order is the class id
    assert set(manifest["label"]) == {"bowling", "archery"}
    assert manifest.groupby("label")["class_index"].first().to_dict() == {"bowling": 0,
                                                                          "archery": 1}
    assert len(rejects) == 5 and set(rejects["reason"]) == {UNKNOWN_LABEL}
    assert list(rejects["line"]) == [2, 3, 4, 5, 6]
    assert rejects["raw"].iloc[0] == "zumba,00000000000,0,10,val"
    dup = _csv(tmp_path, "a\nb\na\n", "dup.txt")
    with pytest.raises(DataError, match="repeats"):
        read_class_list(dup)


def test_subsets(tmp_path: Path) -> None:
    lines = _labelled_csv(tmp_path).read_text().splitlines(True)
    path = {split: str(_csv(tmp_path, HEADER + "".join(x for x in lines if f",{split}," in x),
                            f"{split}.csv")) for split in ("train", "val")}
    manifest, classes, _ = build_manifest(path, None, KineticsSubset(classes=["zumba", "archery"]))
    assert classes == ["archery", "zumba"] and set(manifest["label"]) == set(classes)
    assert manifest.groupby("label")["class_index"].first().to_dict() == {"archery": 0,
                                                                          "zumba": 1}
    manifest, classes, _ = build_manifest(path, None, KineticsSubset(max_classes=2))
    assert classes == ["archery", "bowling"] and len(manifest) == 10
    manifest, classes, _ = build_manifest(path, None, KineticsSubset(max_per_class=2))
    assert len(classes) == 3 and len(manifest) == 12
    assert manifest.groupby(["label", "split"]).size().max() == 2
    zumba_train = manifest[(manifest["label"] == "zumba") & (manifest["split"] == "train")]
    assert list(zumba_train["youtube_id"]) == ["00000000000", "00000000001"]  # file order
    manifest, classes, _ = build_manifest(
        path, None, KineticsSubset(classes=["bowling", "zumba"], max_classes=1, max_per_class=1))
    assert classes == ["bowling"] and list(manifest["youtube_id"]) == ["00000000010", "00000000013"]
    with pytest.raises(ConfigError, match="polo"):
        build_manifest(path, None, KineticsSubset(classes=["polo"]))


def test_duplicate_clips_are_dropped_and_counted(tmp_path: Path) -> None:
    train = _csv(tmp_path, HEADER + "archery,0wR5jVB-WPk,0,10,train,0\n"
                 "archery,0wR5jVB-WPk,0,10,train,0\narchery,0wR5jVB-WPk,10,20,train,0\n",
                 "train.csv")
    val = _csv(tmp_path, HEADER + "archery,0wR5jVB-WPk,0,10,val,0\n", "val.csv")
    manifest, _, rejects = build_manifest({"train": str(train), "val": str(val)}, None,
                                          KineticsSubset())
    assert list(manifest["clip_id"]) == ["0wR5jVB-WPk_000000_000010",
                                         "0wR5jVB-WPk_000010_000020"]
    assert list(rejects["reason"]) == [DUPLICATE, DUPLICATE]
    assert list(zip(rejects["file"], rejects["line"], strict=True)) == [(str(train), 3),
                                                                        (str(val), 2)]
    summary = write_manifest(manifest, ["archery"], rejects, tmp_path / "out")
    assert summary["rejects_by_reason"] == {DUPLICATE: 2}
    assert len(pd.read_parquet(tmp_path / "out" / "rejects.parquet")) == 2


# ---------------------------------------------------------------- ledger
def test_ledger_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "ledger.parquet"
    ledger = Ledger(path)
    assert len(ledger) == 0 and list(ledger.frame.columns) == LEDGER_COLUMNS
    assert str(ledger.frame["last_try"].dtype).endswith("UTC]")
    assert ledger.record("a", "download", "timeout", permanent=False) == 1
    assert ledger.record("a", "download", "video unavailable", permanent=True) == 2
    ledger.record("b", "download", "timeout", permanent=False)
    ledger.record("a", "frames", "decode error", permanent=True)
    assert ledger.failed("download") == {"a"} and ledger.failed("frames") == {"a"}
    ledger.save()
    loaded = Ledger(path)
    assert loaded.frame.equals(ledger.frame)
    frame = loaded.frame.set_index(["clip_id", "stage"])
    assert frame.at[("a", "download"), "attempts"] == 2
    assert frame.at[("a", "download"), "reason"] == "video unavailable"
    assert frame["last_try"].dt.tz is not None
    assert loaded.frame.dtypes.astype(str).to_dict()["permanent"] == "bool"
    loaded.clear("a", "download")
    loaded.clear("zzz", "download")  # unknown: no error
    assert loaded.failed("download") == set() and loaded.attempts("b", "download") == 1
    loaded.save()
    assert len(Ledger(path).load()) == 2
    with pytest.raises(ValueError, match="stage"):
        ledger.record("a", "upload", "x", permanent=True)
    path.write_bytes(b"not parquet")
    with pytest.raises(DataError, match="ledger"):
        Ledger(path)


def test_ledger_concurrent_records(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.parquet")
    start = threading.Barrier(8)

    def work(worker: int) -> None:
        start.wait()
        for i in range(200):
            ledger.record("shared", "download", f"w{worker}", permanent=False)
            ledger.record(f"clip{worker}_{i}", "download", "gone", permanent=i % 2 == 0)
            if i % 50 == 0:
                ledger.save()

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert ledger.attempts("shared", "download") == 1600
    assert len(ledger) == 1 + 8 * 200
    assert len(ledger.failed("download")) == 8 * 100
    ledger.save()
    assert Ledger(tmp_path / "ledger.parquet").frame.equals(ledger.frame)
