"""Kinetics annotations -> one clip manifest: parse the official CSVs, validate, quarantine, subset.

A manifest has MANIFEST_COLUMNS (see the data contract). Nothing is dropped silently: a row that
cannot be used lands in the rejects frame (REJECT_COLUMNS) with its file, line, reason and raw text;
only the subset knobs drop rows on purpose, and those are counted in the log.
"""
from __future__ import annotations

import csv
import hashlib
import io
import math
import os
import re
import unicodedata
from pathlib import Path

import pandas as pd

from tasks.config import KineticsSubset
from tasks.errors import ConfigError, DataError
from tasks.logs import get_logger
from tasks.storage import write_json, write_parquet

MANIFEST_COLUMNS = ["clip_id", "youtube_id", "label", "label_dir", "class_index", "split",
                    "time_start", "time_end"]
ANNOTATION_COLUMNS = ["label", "youtube_id", "time_start", "time_end", "split", "line"]
REJECT_COLUMNS = ["file", "line", "reason", "detail", "raw"]
REQUIRED_COLUMNS = ["youtube_id", "time_start", "time_end", "split"]  # label: absent in test CSVs
SPLITS = ("train", "val", "test")
SPLIT_NAMES = {"train": "train", "val": "val", "validate": "val", "validation": "val",
               "test": "test"}
UNLABELED_DIR = "_unlabeled"  # label_dir of test rows without a label (class_index -1)
MAX_DIR_BYTES = 100

YOUTUBE_ID = re.compile(r"[A-Za-z0-9_-]{11}")
_DIR_PUNCT = set("_-()'.")

# reject reasons (the summary counts them)
WRONG_FIELD_COUNT = "wrong number of fields"
BAD_YOUTUBE_ID = "bad youtube_id"
BAD_TIME = "bad time"
BAD_TIME_RANGE = "time_start >= time_end"
BAD_SPLIT = "unknown split"
NO_LABEL = "missing label"
UNKNOWN_LABEL = "label not in class list"
DUPLICATE = "duplicate clip_id"


# ================================================================== names and paths
def make_clip_id(youtube_id: str, time_start: float, time_end: float) -> str:
    """MMAction2-style clip id: `{youtube_id}_{start:06d}_{end:06d}` (whole seconds)."""
    return f"{youtube_id}_{int(time_start):06d}_{int(time_end):06d}"


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def sanitize_label(label: str) -> str:
    """A safe, stable single directory name for a label (spaces -> '_', no separators/controls)."""
    text = unicodedata.normalize("NFC", str(label)).strip()
    out = []
    for ch in text:
        if ch in "/\\" or unicodedata.category(ch).startswith("C"):
            continue  # path separators, NUL, control/format chars, surrogates: dropped
        if ch.isspace():
            out.append("_")
        elif ch.isalnum() or ch in _DIR_PUNCT:
            out.append(ch)
        else:
            out.append("_")  # shell/Windows-hostile punctuation: * ? : < > | " & , ...
    name = "".join(out).strip(".")  # no '.', '..', hidden dirs or trailing dots
    if not name:
        return f"label_{_short_hash(str(label))}"
    if len(name.encode("utf-8")) > MAX_DIR_BYTES:
        cut = name.encode("utf-8")[:MAX_DIR_BYTES - 9].decode("utf-8", "ignore")
        name = f"{cut}_{_short_hash(str(label))}"
    return name


def label_dirs(labels: list[str]) -> dict[str, str]:
    """label -> directory name, unique even where two labels sanitise alike (case-insensitively).

    A label whose sanitised name is itself keeps it; the others in a clash get a hash suffix.
    """
    groups: dict[str, list[str]] = {}
    for label in labels:
        groups.setdefault(sanitize_label(label).casefold(), []).append(label)
    dirs = {}
    for members in groups.values():
        for label in members:
            name = sanitize_label(label)
            clash = len(members) > 1 and name != label
            dirs[label] = f"{name}_{_short_hash(label)}" if clash else name
    return dirs


def safe_path(root: str | os.PathLike, *parts: str | os.PathLike) -> Path:
    """root/parts resolved; DataError if it would land outside root (.., absolute, symlink)."""
    base = Path(root).resolve()
    for part in parts:
        if "\x00" in os.fspath(part):
            raise DataError(f"path part {os.fspath(part)!r} contains NUL", path=base)
    target = base.joinpath(*parts).resolve()
    if not target.is_relative_to(base):
        raise DataError(f"{'/'.join(map(os.fspath, parts))!r} escapes the data folder",
                        path=base)
    return target


# ================================================================== parsing
def _raw_text(row: list[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow(row)
    return buf.getvalue()


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _check_row(values: dict[str, str], has_label: bool) -> tuple[dict | None, str, str]:
    """(record, "", "") for a good row, else (None, reason, detail)."""
    youtube_id = values["youtube_id"].strip()
    if not YOUTUBE_ID.fullmatch(youtube_id):
        return None, BAD_YOUTUBE_ID, f"{youtube_id!r} is not 11 characters of A-Z a-z 0-9 _ -"
    start, end = _number(values["time_start"]), _number(values["time_end"])
    for name, value in (("time_start", start), ("time_end", end)):
        if value is None:
            return None, BAD_TIME, f"{name} {values[name]!r} is not a finite number"
    if start < 0:
        return None, BAD_TIME, f"time_start {start} is negative"
    if start >= end:
        return None, BAD_TIME_RANGE, f"time_start {start} >= time_end {end}"
    split = SPLIT_NAMES.get(values["split"].strip().lower())
    if split is None:
        return None, BAD_SPLIT, f"split {values['split']!r} is not train/val/validate/test"
    label = values.get("label", "").strip() if has_label else ""
    if not label and split != "test":
        return None, NO_LABEL, f"empty label in a {split} row"
    return {"label": label, "youtube_id": youtube_id, "time_start": start, "time_end": end,
            "split": split}, "", ""


def empty_rejects() -> pd.DataFrame:
    return pd.DataFrame({"file": pd.Series(dtype="str"), "line": pd.Series(dtype="int64"),
                         "reason": pd.Series(dtype="str"), "detail": pd.Series(dtype="str"),
                         "raw": pd.Series(dtype="str")})


def _reject_frame(rows: list[dict]) -> pd.DataFrame:
    if not rows:
        return empty_rejects()
    return pd.DataFrame(rows, columns=REJECT_COLUMNS).astype({"line": "int64"})


def read_annotations(path: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame]:
    """An official Kinetics CSV -> (good rows with ANNOTATION_COLUMNS, rejects with REJECT_COLUMNS).

    `line` is the 1-based line where the record starts; split `validate` becomes `val`.
    """
    path = Path(path)
    if not path.exists():
        raise DataError("annotation file missing", path=path)
    good: list[dict] = []
    bad: list[dict] = []
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as fh:
        reader = csv.reader(fh)
        header: list[str] | None = None
        last_line = 0
        for row in reader:
            line, last_line = last_line + 1, reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            if header is None:
                header = [c.strip().strip('"').lower() for c in row]
                missing = [c for c in REQUIRED_COLUMNS if c not in header]
                if missing:
                    raise DataError(f"missing columns {missing}; the header has {header}",
                                    path=path, row=line)
                has_label = "label" in header
                continue
            if len(row) != len(header):
                bad.append({"file": str(path), "line": line, "reason": WRONG_FIELD_COUNT,
                            "detail": f"{len(row)} fields, header has {len(header)}",
                            "raw": _raw_text(row)})
                continue
            record, reason, detail = _check_row(dict(zip(header, row, strict=True)), has_label)
            if record is None:
                bad.append({"file": str(path), "line": line, "reason": reason, "detail": detail,
                            "raw": _raw_text(row)})
            else:
                record["line"] = line
                good.append(record)
    if header is None:
        raise DataError(f"empty: no header (expected {['label', *REQUIRED_COLUMNS]})", path=path)
    frame = pd.DataFrame(good, columns=ANNOTATION_COLUMNS).astype(
        {"label": "str", "youtube_id": "str", "time_start": "float64", "time_end": "float64",
         "split": "str", "line": "int64"})
    if bad:
        get_logger().warning("%s: %d of %d rows rejected", path, len(bad), len(bad) + len(good))
    return frame, _reject_frame(bad)


def read_class_list(path: str | os.PathLike) -> list[str]:
    """Class names, one a line (line order = class id); blank lines ignored, duplicates refused."""
    path = Path(path)
    if not path.exists():
        raise DataError("class list missing", path=path)
    names: list[str] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        name = line.strip()
        if not name:
            continue
        if name in seen:
            raise DataError(f"class {name!r} repeats line {seen[name]}", path=path, row=number)
        seen[name] = number
        names.append(name)
    if not names:
        raise DataError("class list is empty", path=path)
    return names


# ================================================================== manifest
def _rejects_from(frame: pd.DataFrame, reason: str, detail: pd.Series | str) -> pd.DataFrame:
    """Rejects for rows already parsed; `raw` is rebuilt (the row's split may be the file's)."""
    raw = [f"{lab},{yid},{s:g},{e:g},{split}" for lab, yid, s, e, split in
           zip(frame["label"], frame["youtube_id"], frame["time_start"], frame["time_end"],
               frame["split"], strict=True)]
    return pd.DataFrame({"file": frame["file"], "line": frame["line"], "reason": reason,
                         "detail": detail, "raw": pd.Series(raw, index=frame.index, dtype="str")},
                        columns=REJECT_COLUMNS)


def _pick_classes(classes: list[str], subset: KineticsSubset) -> list[str]:
    """The kept class names, in class-list order: subset.classes, then the first max_classes."""
    kept = list(classes)
    if subset.classes:
        unknown = sorted(set(subset.classes) - set(classes))
        if unknown:
            raise ConfigError(f"kinetics.subset.classes: not in the class list: {unknown}")
        wanted = set(subset.classes)
        kept = [c for c in classes if c in wanted]
    if subset.max_classes is not None:
        kept = kept[:subset.max_classes]
    return kept


def build_manifest(annotation_paths: dict[str, str | None], classes_path: str | None,
                   subset: KineticsSubset) -> tuple[pd.DataFrame, list[str], pd.DataFrame]:
    """Annotation CSVs by split -> (manifest, class names, rejects).

    The dict key (train/val/test) sets each file's split. The class list is `classes_path` (line
    order) or the sorted labels; class_index is the position in the kept classes.
    """
    log = get_logger()
    parts, rejects = [], []
    for key, path in annotation_paths.items():
        if not path:
            continue
        split = SPLIT_NAMES.get(str(key).lower())
        if split is None:
            raise ConfigError(f"kinetics.annotations: unknown split {key!r} (train/val/test)")
        good, bad = read_annotations(path)
        differ = int((good["split"] != split).sum())
        if differ:
            log.warning("%s: %d rows name another split; using %r (the file's role)", path,
                        differ, split)
        parts.append(good.assign(split=split, file=str(path)))
        rejects.append(bad)
    if not parts:
        raise ConfigError("kinetics.annotations: no annotation file given (train, val or test)")
    rows = pd.concat(parts, ignore_index=True)

    all_classes = (read_class_list(classes_path) if classes_path
                   else sorted(set(rows.loc[rows["label"] != "", "label"])))
    known = rows["label"].isin(set(all_classes)) | (rows["label"] == "")
    rejects.append(_rejects_from(rows[~known], UNKNOWN_LABEL,
                                 "label " + rows.loc[~known, "label"].map(repr)))
    rows = rows[known]

    rows = rows.assign(clip_id=[make_clip_id(y, s, e) for y, s, e in
                                zip(rows["youtube_id"], rows["time_start"], rows["time_end"],
                                    strict=True)])
    dup = rows["clip_id"].duplicated(keep="first")
    if dup.any():
        first = rows[~dup].drop_duplicates("clip_id").set_index("clip_id")
        where = rows.loc[dup, "clip_id"].map(
            lambda c: f"{c} first at {first.at[c, 'file']} line {first.at[c, 'line']}")
        rejects.append(_rejects_from(rows[dup], DUPLICATE, where))
        log.warning("%d duplicate clip ids dropped (first kept)", int(dup.sum()))
    rows = rows[~dup]

    classes = _pick_classes(all_classes, subset)
    if len(classes) < len(all_classes):
        keep = rows["label"].isin(set(classes))
        log.info("subset: %d of %d classes, %d rows left out (unlabeled rows included)",
                 len(classes), len(all_classes), int((~keep).sum()))
        rows = rows[keep]
    if subset.max_per_class is not None:
        before = len(rows)
        rows = rows.groupby(["label", "split"], sort=False).head(subset.max_per_class)
        log.info("subset: at most %d clips per class and split, %d rows left out",
                 subset.max_per_class, before - len(rows))

    dirs = label_dirs(all_classes)  # from the full list: a dir never changes with the subset
    index = {name: i for i, name in enumerate(classes)}
    manifest = pd.DataFrame({
        "clip_id": rows["clip_id"], "youtube_id": rows["youtube_id"], "label": rows["label"],
        "label_dir": rows["label"].map(lambda lab: dirs[lab] if lab else UNLABELED_DIR),
        "class_index": rows["label"].map(lambda lab: index.get(lab, -1)),
        "split": rows["split"], "time_start": rows["time_start"], "time_end": rows["time_end"],
    }, columns=MANIFEST_COLUMNS).astype(
        {"clip_id": "str", "youtube_id": "str", "label": "str", "label_dir": "str",
         "class_index": "int64", "split": "str", "time_start": "float64",
         "time_end": "float64"}).reset_index(drop=True)
    reject_frame = pd.concat([r for r in rejects if len(r)] or [empty_rejects()],
                             ignore_index=True).astype({"line": "int64"})
    log.info("manifest: %d clips, %d classes, %d rows rejected", len(manifest), len(classes),
             len(reject_frame))
    return manifest, classes, reject_frame


def manifest_summary(manifest: pd.DataFrame, classes: list[str],
                     rejects: pd.DataFrame) -> dict:
    """Counts per split, per class and split, and rejects per reason."""
    per_split = manifest["split"].value_counts()
    per_class: dict[str, dict[str, int]] = {label: {} for label in classes}
    for (label, split), n in manifest.groupby(["label", "split"]).size().items():
        if label in per_class:
            per_class[label][split] = int(n)
    return {
        "clips": int(len(manifest)),
        "classes": len(classes),
        "per_split": {s: int(per_split.get(s, 0)) for s in SPLITS if s in per_split.index},
        "per_class": per_class,
        "unlabeled": int((manifest["label"] == "").sum()),
        "rejected": int(len(rejects)),
        "rejects_by_reason": {str(k): int(v) for k, v in
                              rejects["reason"].value_counts().sort_index().items()},
    }


def write_manifest(manifest: pd.DataFrame, classes: list[str], rejects: pd.DataFrame,
                   out_dir: str | os.PathLike) -> dict:
    """Write manifest.parquet, classes.json and rejects.parquet atomically; return the summary."""
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
    if missing:
        raise DataError(f"manifest lacks columns {missing}")
    out = Path(out_dir)
    write_parquet(manifest[MANIFEST_COLUMNS], out / "manifest.parquet")
    write_json(list(classes), out / "classes.json")
    write_parquet(rejects, out / "rejects.parquet")
    return manifest_summary(manifest, classes, rejects)
