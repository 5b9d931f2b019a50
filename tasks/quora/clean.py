"""The quora_clean stage: normalise, drop unusable pairs (counted by reason), split.

Two split kinds: stratified random (seeded) and question-disjoint, where no normalised question
text appears on two sides of a split. The same questions recur across pairs in this dataset,
so a random split leaks them; the report gives that overlap for both kinds.
"""
from __future__ import annotations

import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import task
from sklearn.model_selection import train_test_split

from tasks.config import QuoraSettings, QuoraSplit
from tasks.errors import LeakError
from tasks.logs import get_logger
from tasks.storage import read_parquet, write_json, write_parquet

SPLITS = ("train", "train_dev", "dev", "test")


def normalise(texts: pd.Series) -> pd.Series:
    """Unicode NFKC, whitespace runs folded to one space, trimmed; missing stays missing."""
    def one(text: object) -> object:
        if not isinstance(text, str):
            return pd.NA
        return " ".join(unicodedata.normalize("NFKC", text).split())

    return texts.map(one).astype("string")


def clean_pairs(pairs: pd.DataFrame, min_chars: int) -> tuple[pd.DataFrame, dict]:
    """Drop pairs with a missing/empty question or one shorter than `min_chars`; count each."""
    out = pairs.assign(question1=normalise(pairs["question1"]),
                       question2=normalise(pairs["question2"]))
    reason = pd.Series("", index=out.index, dtype=object)
    for col in ("question1", "question2"):
        missing = out[col].isna() | (out[col].str.len() == 0)
        reason[(reason == "") & missing.to_numpy()] = "missing question"
        short = out[col].str.len().fillna(0) < min_chars
        reason[(reason == "") & short.to_numpy()] = f"question shorter than {min_chars} chars"
    kept = out[reason == ""].reset_index(drop=True)
    report = {"pairs_in": len(pairs), "pairs_kept": len(kept),
              "dropped": {str(k): int(v) for k, v in reason[reason != ""].value_counts().items()},
              "duplicate_share": float(kept["is_duplicate"].mean()) if len(kept) else None}
    return kept, report


def random_split(labels: np.ndarray, cfg: QuoraSplit, seed: int) -> np.ndarray:
    """Stratified train / train_dev / dev / test labels, one per pair."""
    idx = np.arange(len(labels))
    rest, test = train_test_split(idx, test_size=cfg.test_fraction, stratify=labels,
                                  random_state=seed)
    dev_share = cfg.dev_fraction / (1 - cfg.test_fraction)
    train, dev = train_test_split(rest, test_size=dev_share, stratify=labels[rest],
                                  random_state=seed)
    out = np.full(len(labels), "train", dtype=object)
    if cfg.train_dev_fraction > 0:
        train, train_dev = train_test_split(train, test_size=cfg.train_dev_fraction,
                                            stratify=labels[train], random_state=seed)
        out[train_dev] = "train_dev"
    out[dev], out[test] = "dev", "test"
    return out


def question_groups(q1: pd.Series, q2: pd.Series) -> np.ndarray:
    """Connected components of the question graph (pairs are edges), by normalised lowercase
    text: pairs in one component share questions, directly or through other pairs."""
    keys = pd.concat([q1.str.lower(), q2.str.lower()], ignore_index=True)
    codes, _ = pd.factorize(keys)
    n = len(q1)
    parent = np.arange(codes.max() + 1)

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in zip(codes[:n], codes[n:], strict=True):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([find(a) for a in codes[:n]])


def disjoint_split(pairs: pd.DataFrame, cfg: QuoraSplit, seed: int) -> np.ndarray:
    """Whole components go to one split, in random order, until each split's share is met."""
    groups = question_groups(pairs["question1"], pairs["question2"])
    sizes = pd.Series(groups).value_counts()
    order = np.random.default_rng(seed).permutation(sizes.index.to_numpy())
    n = len(pairs)
    train_share = 1 - cfg.test_fraction - cfg.dev_fraction
    targets = [("test", cfg.test_fraction * n), ("dev", cfg.dev_fraction * n),
               ("train_dev", train_share * cfg.train_dev_fraction * n)]
    assigned: dict[int, str] = {}
    filled = {name: 0 for name, _ in targets}
    for group in order:
        size = int(sizes[group])
        name = next((s for s, goal in targets if filled[s] + size <= goal * 1.02), "train")
        if name != "train":
            filled[name] += size
        assigned[group] = name
    return np.array([assigned[g] for g in groups], dtype=object)


def shared_questions(pairs: pd.DataFrame, split: np.ndarray) -> dict[str, float]:
    """For each non-train split: the share of its pairs with a question text also in train."""
    text = {s: set(pairs.loc[split == s, "question1"].str.lower())
            | set(pairs.loc[split == s, "question2"].str.lower()) for s in SPLITS}
    out = {}
    for name in SPLITS[1:]:
        part = pairs[split == name]
        seen = part["question1"].str.lower().isin(text["train"]) | \
            part["question2"].str.lower().isin(text["train"])
        out[name] = float(seen.mean()) if len(part) else 0.0
    return out


def check_disjoint(pairs: pd.DataFrame, split: np.ndarray) -> None:
    """LeakError if any normalised question text appears in two splits."""
    owner: dict[str, str] = {}
    for col in ("question1", "question2"):
        for text, name in zip(pairs[col].str.lower(), split, strict=True):
            if owner.setdefault(text, name) != name:
                raise LeakError(f"question {text[:60]!r} is in both {owner[text]} and {name}")


@task(name="quora-clean")
def clean_questions(settings: QuoraSettings, raw_dir: Path, out_dir: Path) -> dict:
    """Write the clean pairs and a report of what was dropped and why."""
    pairs, report = clean_pairs(read_parquet(raw_dir / "pairs.parquet"), settings.clean.min_chars)
    write_parquet(pairs[["id", "question1", "question2", "is_duplicate"]], out_dir / "pairs.parquet")
    write_json(report, out_dir / "clean.json")
    get_logger().info("clean: %d of %d pairs kept, dropped %s, %.1f%% duplicates",
                      report["pairs_kept"], report["pairs_in"], report["dropped"] or "none",
                      100 * (report["duplicate_share"] or 0))
    return report


@task(name="quora-split")
def split_pairs(settings: QuoraSettings, clean_dir: Path, out_dir: Path, seed: int) -> dict:
    """Write the clean pairs with a `split` column (train / train_dev / dev / test) and a report
    of both split kinds: sizes, balance and how many pairs share a question with train."""
    pairs = read_parquet(clean_dir / "pairs.parquet")
    labels = pairs["is_duplicate"].to_numpy()
    kinds = {"random": random_split(labels, settings.split, seed),
             "question_disjoint": disjoint_split(pairs, settings.split, seed)}
    check_disjoint(pairs, kinds["question_disjoint"])
    split = kinds[settings.split.kind]
    report = {"split_kind": settings.split.kind, "splits": {kind: {
        "sizes": {s: int((values == s).sum()) for s in SPLITS},
        "duplicate_share": {s: float(labels[values == s].mean()) for s in SPLITS
                            if (values == s).any()},
        "pairs_sharing_a_train_question": shared_questions(pairs, values)}
        for kind, values in kinds.items()}}
    write_parquet(pairs.assign(split=split.astype(str)), out_dir / "pairs.parquet")
    write_json(report, out_dir / "split.json")
    for kind, stats in report["splits"].items():
        get_logger().info("%s split %s; test pairs sharing a train question: %.1f%%", kind,
                          stats["sizes"], 100 * stats["pairs_sharing_a_train_question"]["test"])
    return report


def clean_stage(params) -> dict:
    """quora_clean: normalised pairs, short and missing questions dropped."""
    from tasks.quora.paths import QuoraPaths

    paths = QuoraPaths()
    return clean_questions(params.quora, paths.raw, paths.clean)


def split_stage(params) -> dict:
    """quora_split: train / train-dev / dev / test, read by train and evaluate alike."""
    from tasks.quora.paths import QuoraPaths

    paths = QuoraPaths()
    return split_pairs(params.quora, paths.clean, paths.split, params.common.seed)
