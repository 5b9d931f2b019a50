"""The quora_ingest stage: question pairs from the official TSV by URL, a local TSV/CSV, or demo.

A pair frame has PAIR_COLUMNS; questions keep missing values (the clean stage drops and counts
them). Nothing is dropped silently: a record that cannot be read is quarantined with the line
where it starts in the file, a reason and its raw text.
"""
from __future__ import annotations

import codecs
import csv
import gc
import hashlib
import itertools
import json
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from prefect import task

from tasks.config import QuoraSettings
from tasks.errors import DataError, FetchError
from tasks.logs import get_logger
from tasks.storage import write_json, write_parquet

PAIR_COLUMNS = ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]
QUARANTINE_COLUMNS = ["line", "reason", "detail", "raw"]
LIVE_FILE_NAME = "quora_duplicate_questions.tsv"
DELIMITERS = {"tsv": "\t", "csv": ","}
MISSING_TEXTS = {"", "nan", "NaN"}  # an empty field, or NaN as written by str(float)
INTEGER_TEXT = r"^\s*\d{1,18}\s*$"  # RE2: ASCII digits and spaces only

# quarantine reasons (the report counts them)
BAD_QUOTING = "bad quoting"
UNBALANCED_QUOTE = "unbalanced quote"
WRONG_FIELD_COUNT = "wrong number of fields"
NOT_ZERO_ONE = "is_duplicate not 0/1"

PROGRESS_EVERY_S = 5.0
_PERMANENT_STATUS = {400, 401, 403, 404, 405, 410, 451}


# ================================================================== download
class _Transient(Exception):
    """A failure worth another attempt (5xx, 429, a short body, a restart)."""


@dataclass
class _Progress:
    resumed: bool = False
    validators: dict | None = None


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sidecar(dest: Path, suffix: str) -> Path:
    return dest.with_name(dest.name + suffix)


def _read_record(path: Path) -> dict | None:
    """The checksum record of an earlier download, or None if absent or unreadable."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "sha256" in record else None


def _validators(headers: httpx.Headers) -> dict:
    length = headers.get("Content-Length")
    return {"etag": headers.get("ETag"), "last_modified": headers.get("Last-Modified"),
            "length": int(length) if length and length.isdigit() else None}


def _check_status(response: httpx.Response, url: str) -> None:
    """FetchError for a permanent answer (404, 403, ...), _Transient for 5xx / 408 / 429."""
    code = response.status_code
    if code in _PERMANENT_STATUS or (400 <= code < 500 and code not in (408, 416, 429)):
        raise FetchError(f"{url}: HTTP {code} {response.reason_phrase}".rstrip())
    if code >= 500 or code in (408, 429):
        raise _Transient(f"HTTP {code} {response.reason_phrase}".rstrip())


def _sleep_before_retry(failures: int, backoff: float) -> None:
    time.sleep(backoff * 2 ** max(failures - 1, 0))


def _head(client: httpx.Client, url: str, retries: int, backoff: float) -> dict | None:
    """Length and validators the server reports now: {} without HEAD support, None when it
    cannot be reached (after retries)."""
    log = get_logger()
    for attempt in range(retries + 1):
        try:
            response = client.head(url)
            if response.status_code in (405, 501):
                return {}  # nothing to compare: the caller downloads again
            _check_status(response, url)
            return _validators(response.headers)
        except (_Transient, httpx.TransportError) as exc:
            log.warning("HEAD %s failed (%s), attempt %d of %d", url, exc, attempt + 1, retries + 1)
            if attempt < retries:
                _sleep_before_retry(attempt + 1, backoff)
    return None


def _unchanged(record: dict, head: dict) -> bool:
    """True when every validator both sides know agrees, and at least one was compared."""
    pairs = [(record.get("etag"), head.get("etag")),
             (record.get("last_modified"), head.get("last_modified")),
             (record.get("bytes"), head.get("length"))]
    compared = [(a, b) for a, b in pairs if a is not None and b is not None]
    return bool(compared) and all(a == b for a, b in compared)


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) from `bytes a-b/total` or `bytes */total`."""
    match = re.match(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)", value or "")
    if match is None:
        return None, None
    first, total = match.groups()
    return (int(first) if first else None), (int(total) if total and total != "*" else None)


def _log_progress(url: str, done: int, total: int | None, started: float) -> None:
    rate = done / max(time.monotonic() - started, 1e-6) / 1e6
    if total:
        get_logger().info("downloading %s: %.1f of %.1f MB (%.0f%%, %.1f MB/s)", url, done / 1e6,
                          total / 1e6, 100 * done / total, rate)
    else:
        get_logger().info("downloading %s: %.1f MB (%.1f MB/s)", url, done / 1e6, rate)


def _stream_once(client: httpx.Client, url: str, part: Path, state: _Progress) -> None:
    """One GET into `part`: from its current size with Range, or from zero; raises on failure."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        known = state.validators or {}
        if known.get("etag") or known.get("last_modified"):
            # the server answers 200 (whole file) if the file changed since the first bytes
            headers["If-Range"] = known.get("etag") or known["last_modified"]
    with client.stream("GET", url, headers=headers) as response:
        if response.status_code == 416 and offset:
            if _content_range(response.headers.get("Content-Range"))[1] == offset:
                return  # the .part already holds the whole file
            part.unlink()
            raise _Transient("416 Range Not Satisfiable: restarting from zero")
        _check_status(response, url)
        if response.status_code == 206:
            first, total = _content_range(response.headers.get("Content-Range"))
            etag, known_etag = response.headers.get("ETag"), (state.validators or {}).get("etag")
            if first != offset or (etag and known_etag and etag != known_etag):
                part.unlink()
                raise _Transient(f"asked for bytes from {offset} of ETag {known_etag}, got from "
                                 f"{first} of {etag}: restarting from zero")
            mode, state.resumed = "ab", True
            if state.validators is None:  # resuming a .part left by an earlier run
                state.validators = {**_validators(response.headers), "length": total}
        elif response.status_code == 200:
            if offset:
                get_logger().info("%s ignored the Range request: restarting from zero", url)
            mode, offset, state.resumed = "wb", 0, False
            state.validators = _validators(response.headers)
            total = state.validators["length"]
        else:
            raise FetchError(f"{url}: unexpected HTTP {response.status_code}")
        started = last_log = time.monotonic()
        with open(part, mode) as fh:
            for chunk in response.iter_bytes():  # as they arrive: none lost on a cut
                fh.write(chunk)
                if time.monotonic() - last_log >= PROGRESS_EVERY_S:
                    last_log = time.monotonic()
                    _log_progress(url, fh.tell(), total, started)
    size = part.stat().st_size
    if total is not None and size != total:
        if size > total:
            part.unlink()
        raise _Transient(f"incomplete body: {size} of {total} bytes")


def _fetch(client: httpx.Client, url: str, part: Path, retries: int, backoff: float) -> _Progress:
    """GET `url` into `part`, resuming (Range from the .part size) after transient failures."""
    log = get_logger()
    state, failures = _Progress(), 0
    while True:
        before = part.stat().st_size if part.exists() else 0
        if before:
            log.info("resuming %s from byte %d", url, before)
        try:
            _stream_once(client, url, part, state)
            return state
        except (_Transient, httpx.TransportError) as exc:
            after = part.stat().st_size if part.exists() else 0
            failures += 1
            if failures > retries:
                raise FetchError(f"{url}: download failed after {retries + 1} attempt(s): "
                                 f"{str(exc) or type(exc).__name__}") from exc
            log.warning("%s: %s (%s of %s bytes so far); retrying", url,
                        str(exc) or type(exc).__name__, after, (state.validators or {}).get("length"))
            _sleep_before_retry(failures, backoff)


def download(url: str, dest: Path, *, expected_sha256: str | None, timeout: float, retries: int,
             backoff: float) -> dict:
    """Fetch `url` to `dest` (resumable, retried, checksummed); skip it when nothing changed.

    Returns sha256, bytes, resumed, downloaded and changed (the bytes at `dest` differ from before).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part, record_path = _sidecar(dest, ".part"), _sidecar(dest, ".sha256")
    expected = expected_sha256.lower() if expected_sha256 else None
    log = get_logger()
    previous = file_sha256(dest) if dest.exists() else None
    record = _read_record(record_path)
    with httpx.Client(timeout=timeout, follow_redirects=True) as client:
        if previous is not None and expected is not None and previous == expected:
            log.info("%s matches the pinned sha256: not downloading", dest)
            if record is None or record["sha256"] != previous:
                write_json({"url": url, "sha256": previous, "bytes": dest.stat().st_size},
                           record_path)
            return _result(previous, dest, resumed=False, downloaded=False, changed=False)
        if previous is not None and record is not None and record["sha256"] == previous \
                and record.get("url") == url and expected is None:
            head = _head(client, url, retries, backoff)
            if head is None:
                log.warning("could not ask %s whether it changed: keeping %s", url, dest)
                return _result(previous, dest, resumed=False, downloaded=False, changed=False)
            if _unchanged(record, head):
                log.info("%s unchanged on the server: keeping %s", url, dest)
                return _result(previous, dest, resumed=False, downloaded=False, changed=False)
            log.info("%s changed on the server: downloading again", url)
        state = _fetch(client, url, part, retries, backoff)
    sha = file_sha256(part)
    if expected is not None and sha != expected:
        part.unlink()
        raise DataError(f"checksum mismatch for {url}: expected sha256 {expected}, got {sha}; "
                        "the download was deleted", path=dest)
    os.replace(part, dest)
    validators = state.validators or {}
    write_json({"url": url, "sha256": sha, "bytes": dest.stat().st_size,
                "etag": validators.get("etag"), "last_modified": validators.get("last_modified")},
               record_path)
    log.info("downloaded %s to %s: %d bytes, sha256 %s%s", url, dest, dest.stat().st_size, sha,
             " (resumed)" if state.resumed else "")
    return _result(sha, dest, resumed=state.resumed, downloaded=True, changed=sha != previous)


def _result(sha: str, dest: Path, *, resumed: bool, downloaded: bool, changed: bool) -> dict:
    return {"sha256": sha, "bytes": dest.stat().st_size, "resumed": resumed,
            "downloaded": downloaded, "changed": changed}


# ================================================================== reading TSV / CSV
def _decode(data: bytes) -> tuple[list[str], np.ndarray]:
    """UTF-8 text as lines, each ending in "\\n"; bytes that are not UTF-8 become U+FFFD. Also
    returns the (1-based) numbers of the lines that needed a replacement."""
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        text, replaced = data.decode("utf-8"), False
    except UnicodeDecodeError:
        text, replaced = data.decode("utf-8", "surrogateescape"), True
    if "\r" in text:  # CRLF stays (csv reads it); a lone CR inside a line becomes a space
        text = re.sub(r"\r(?!\n)", " ", text)
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    bad = []
    if replaced:
        surrogate = re.compile("[\udc80-\udcff]")
        for i, line in enumerate(lines):
            if surrogate.search(line):
                lines[i] = line.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                bad.append(i + 1)
    # csv keeps a newline inside a quoted field only if the line still ends with it
    return [line + "\n" for line in lines], np.array(bad, dtype=np.int64)


def _raw(lines: list[str], first: int, last: int) -> str:
    """Lines first..last (1-based, inclusive) as in the file, without the final line break."""
    return "".join(lines[first - 1:last]).removesuffix("\n").removesuffix("\r")


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Hundreds of thousands of new small lists set off the cyclic GC again and again: pause it."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _header(line: str, delimiter: str) -> list[str]:
    try:
        names = next(csv.reader([line], delimiter=delimiter), [])
    except csv.Error:
        return [line]
    return [n.strip().lower() for n in names]


def _detect_format(first_line: str) -> str:
    """tsv or csv: whichever delimiter makes more of PAIR_COLUMNS appear in the header."""
    score = {fmt: len(set(PAIR_COLUMNS) & set(_header(first_line, d)))
             for fmt, d in DELIMITERS.items()}
    return "csv" if score["csv"] > score["tsv"] else "tsv"


@dataclass
class _Records:
    """What parsing found after the header: well-formed records with their first and last
    lines, broken ones as (line, reason, detail), and blank lines skipped."""

    rows: list[list[str]]
    first: list[int]
    last: list[int]
    broken: list[tuple[int, str, str]]
    blank: int = 0


def _parse_records(lines: list[str], delimiter: str, n_fields: int) -> _Records:
    """csv over the lines after the header (exact line numbers from reader.line_num). A broken
    record quarantines its first line only, and reading restarts on the line after it, so an
    unbalanced quote never swallows the records that follow."""
    out = _Records([], [], [], [])
    line = 1  # the last line read completely
    while True:
        reader = csv.reader(itertools.islice(lines, line, None), delimiter=delimiter,
                            strict=True)
        base, restart = line, None
        try:
            for record in reader:
                end = base + reader.line_num
                if len(record) == n_fields:
                    out.rows.append(record)
                    out.first.append(line + 1)
                    out.last.append(end)
                elif not record:
                    out.blank += 1
                elif end - line > 1:  # an unbalanced quote joined this line with the next ones
                    out.broken.append((line + 1, UNBALANCED_QUOTE,
                                       f"a quoted field runs from line {line + 1} to {end} "
                                       f"({len(record)} fields)"))
                    restart = line + 1
                    break
                else:
                    out.broken.append((line + 1, WRONG_FIELD_COUNT,
                                       f"{len(record)} fields, expected {n_fields}"))
                line = end
        except csv.Error as exc:
            # an error past the record's first line means a quote opened and did not close
            runaway = base + reader.line_num - line > 1 or "end of data" in str(exc)
            out.broken.append((line + 1, UNBALANCED_QUOTE if runaway else BAD_QUOTING, str(exc)))
            restart = line + 1
        if restart is None:
            return out
        line = restart


def _value_reasons(columns: dict[str, pa.Array]) -> tuple[np.ndarray, np.ndarray]:
    """Reason and detail per record (first rule broken), empty strings when fine."""
    n = len(columns["id"])
    reason = np.full(n, "", dtype=object)
    detail = np.full(n, "", dtype=object)
    checks = [(c, f"non-integer {c}", pc.match_substring_regex(columns[c], INTEGER_TEXT))
              for c in ("id", "qid1", "qid2")]
    zero_one = pa.array(["0", "1"], type=pa.large_string())
    checks.append(("is_duplicate", NOT_ZERO_ONE,
                   pc.is_in(pc.utf8_trim_whitespace(columns["is_duplicate"]), value_set=zero_one)))
    for column, text, fine in checks:
        bad = ~fine.to_numpy(zero_copy_only=False)
        for i in np.flatnonzero(bad & (reason == "")):
            reason[i], detail[i] = text, f"{column}={columns[column][i].as_py()!r}"
    return reason, detail


def empty_quarantine() -> pd.DataFrame:
    return pd.DataFrame({"line": pd.Series(dtype="int64"), "reason": pd.Series(dtype="str"),
                         "detail": pd.Series(dtype="str"), "raw": pd.Series(dtype="str")})


def _pairs_frame(ids: dict[str, np.ndarray], questions: dict[str, list | pa.Array],
                 labels: np.ndarray) -> pd.DataFrame:
    """PAIR_COLUMNS with int64 ids, int8 is_duplicate and str questions (missing kept)."""
    return pd.DataFrame({**{c: np.asarray(ids[c], dtype=np.int64) for c in ("id", "qid1", "qid2")},
                         **{c: pd.Series(questions[c], dtype="str") for c in ("question1",
                                                                              "question2")},
                         "is_duplicate": np.asarray(labels, dtype=np.int8)})[PAIR_COLUMNS]


def _kept_pairs(columns: dict[str, pa.Array], keep: np.ndarray) -> pd.DataFrame:
    """The records that passed every check, typed; empty and NaN questions become missing."""
    kept = {c: columns[c].filter(pa.array(keep)) for c in PAIR_COLUMNS}
    missing = pa.array(sorted(MISSING_TEXTS), type=pa.large_string())
    return _pairs_frame(
        {c: pc.cast(pc.utf8_trim_whitespace(kept[c]), pa.int64()).to_numpy()
         for c in ("id", "qid1", "qid2")},
        {c: pc.if_else(pc.is_in(kept[c], value_set=missing), pa.scalar(None, pa.large_string()),
                       kept[c]) for c in ("question1", "question2")},
        pc.cast(pc.utf8_trim_whitespace(kept["is_duplicate"]), pa.int8()).to_numpy())


def _quarantine_frame(bad: list[tuple[int, str, str, str]]) -> pd.DataFrame:
    if not bad:
        return empty_quarantine()
    frame = pd.DataFrame(bad, columns=QUARANTINE_COLUMNS).astype(
        {"line": "int64", "reason": "str", "detail": "str", "raw": "str"})
    return frame.sort_values("line", kind="stable").reset_index(drop=True)


def read_pairs(path: Path, fmt: Literal["auto", "tsv", "csv"] = "auto"
               ) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Read the official Quora TSV or Kaggle's train.csv: (pairs, quarantine, report).

    Quarantine rows have the 1-based line where the record starts, a reason, a detail and the raw
    text; the report counts rows in, kept, quarantined by reason and decode replacements.
    """
    path = Path(path)
    if fmt not in ("auto", *DELIMITERS):
        raise DataError(f"unknown format {fmt!r}; expected auto, tsv or csv", path=path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read the pairs file ({exc.strerror})", path=path) from None
    lines, replaced_lines = _decode(data)
    first_line = lines[0].rstrip("\r\n") if lines else ""
    if not first_line.strip():
        raise DataError(f"no header line; expected {' '.join(PAIR_COLUMNS)}", path=path, row=1)
    fmt = _detect_format(first_line) if fmt == "auto" else fmt
    header = _header(first_line, DELIMITERS[fmt])
    missing = [c for c in PAIR_COLUMNS if c not in header]
    if missing:
        raise DataError(f"missing column(s) {missing} in the header (read as {fmt}); found "
                        f"{header}", path=path, row=1)
    with _gc_paused():
        found = _parse_records(lines, DELIMITERS[fmt], len(header))
        fields = list(zip(*found.rows, strict=True)) or [()] * len(header)
        found.rows = []  # the columns hold the fields now
    columns = {c: pa.array(fields[header.index(c)], type=pa.large_string()) for c in PAIR_COLUMNS}
    reason, detail = _value_reasons(columns)
    first, last = np.array(found.first, dtype=np.int64), np.array(found.last, dtype=np.int64)
    bad = [(line, why, more, _raw(lines, line, line)) for line, why, more in found.broken]
    bad += [(int(first[i]), reason[i], detail[i], _raw(lines, first[i], last[i]))
            for i in np.flatnonzero(reason != "")]
    pairs = _kept_pairs(columns, reason == "")
    quarantine = _quarantine_frame(bad)
    starts = np.concatenate([first, [b[0] for b in found.broken]]).astype(np.int64)
    ends = np.concatenate([last, [b[0] for b in found.broken]]).astype(np.int64)
    report = {"path": str(path), "format": fmt, "rows_in": len(pairs) + len(quarantine),
              "rows_kept": len(pairs),
              "quarantined": {str(k): int(v) for k, v in quarantine["reason"].value_counts().items()},
              "decode_replacements": _records_touching(replaced_lines, starts, ends),
              "missing_questions": int(pairs[["question1", "question2"]].isna().sum().sum()),
              "blank_lines": found.blank}
    return pairs, quarantine, report


def _records_touching(lines: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> int:
    """How many records (first..last line spans) contain one of `lines`."""
    if not len(lines) or not len(starts):
        return 0
    order = np.argsort(starts, kind="stable")
    starts, ends = starts[order], ends[order]
    at = np.searchsorted(starts, lines, side="right") - 1
    inside = (at >= 0) & (ends[np.maximum(at, 0)] >= lines)
    return int(np.unique(at[inside]).size)


# ================================================================== demo pairs
PROGRAMMING = ["Python", "Java", "JavaScript", "C++", "C", "C#", "Go", "Rust", "Ruby", "PHP",
               "Swift", "Kotlin", "Scala", "Haskell", "R", "MATLAB", "Perl", "TypeScript", "SQL",
               "Julia", "Lua", "Dart", "Elixir", "Clojure", "Fortran", "COBOL", "Assembly",
               "Objective-C", "F#", "Erlang"]
SOFTWARE = ["Photoshop", "Excel", "AutoCAD", "Blender", "Git", "Docker", "Kubernetes", "Linux",
            "Unity", "Unreal Engine", "Illustrator", "Final Cut Pro", "Premiere Pro", "Tableau",
            "Power BI", "SolidWorks", "WordPress", "React", "Django", "TensorFlow", "PyTorch",
            "Figma", "Salesforce", "SAP", "Hadoop"]
FIELDS = ["machine learning", "data science", "calculus", "linear algebra", "statistics",
          "organic chemistry", "quantum physics", "economics", "accounting", "philosophy",
          "psychology", "biology", "astronomy", "web development", "graphic design",
          "digital marketing", "ethical hacking", "deep learning", "artificial intelligence",
          "cryptography", "computer networks", "operating systems", "algorithms",
          "data structures", "game development", "blockchain", "investing", "personal finance",
          "public speaking", "creative writing", "photography", "stock trading", "sociology",
          "geometry", "probability"]
INSTRUMENTS = ["guitar", "piano", "violin", "drums", "flute", "cello", "saxophone", "trumpet",
               "ukulele", "harmonica", "bass guitar", "clarinet", "harp", "keyboard", "banjo",
               "mandolin", "sitar", "tabla", "accordion", "trombone"]
LANGUAGES = ["English", "French", "Spanish", "German", "Japanese", "Mandarin", "Korean", "Russian",
             "Arabic", "Italian", "Portuguese", "Hindi", "Dutch", "Swedish", "Turkish", "Greek",
             "Hebrew", "Polish", "Tamil", "Bengali", "Urdu", "Persian", "Thai", "Vietnamese",
             "Indonesian", "Swahili", "Latin", "Sanskrit", "Cantonese", "Norwegian"]
SPORTS = ["swimming", "tennis", "chess", "boxing", "yoga", "skiing", "surfing", "golf",
          "badminton", "cricket", "basketball", "football", "karate", "judo", "rock climbing",
          "skateboarding", "cycling", "running", "table tennis", "volleyball", "snowboarding",
          "fencing", "archery", "horse riding", "ice skating"]
PLACES = ["Paris", "London", "Tokyo", "New York", "Rome", "Barcelona", "Berlin", "Amsterdam",
          "Dubai", "Singapore", "Bangkok", "Istanbul", "Sydney", "Toronto", "Mumbai", "Delhi",
          "Bangalore", "Goa", "Prague", "Vienna", "Lisbon", "Seoul", "Hong Kong", "San Francisco",
          "Los Angeles", "Chicago", "Cape Town", "Rio de Janeiro", "Mexico City", "Buenos Aires",
          "Cairo", "Kyoto", "Bali", "Iceland", "Switzerland", "Norway", "Canada", "Australia",
          "New Zealand", "Japan", "Italy", "Greece", "Thailand", "Vietnam", "Peru", "Kerala",
          "Shimla", "Jaipur", "Edinburgh", "Dublin", "Budapest", "Copenhagen", "Stockholm",
          "Helsinki", "Munich", "Venice", "Florence", "Madrid", "Seattle", "Boston"]
DISHES = ["pizza", "pasta", "biryani", "sushi", "pancakes", "lasagna", "ramen", "butter chicken",
          "paneer tikka", "brownies", "cheesecake", "bread", "hummus", "falafel", "tacos",
          "dumplings", "fried rice", "curry", "risotto", "paella", "dal", "samosa",
          "chocolate cake", "banana bread", "apple pie", "guacamole", "pad thai", "kimchi",
          "noodles", "omelette", "french fries", "ice cream", "cookies", "muffins", "soup",
          "salad", "steak", "meatballs", "pho", "burritos"]
PETS = ["dog", "cat", "rabbit", "hamster", "parrot", "goldfish", "turtle", "guinea pig", "horse",
        "snake", "iguana", "ferret", "hedgehog", "cockatiel", "budgie", "tortoise", "chinchilla",
        "gecko", "puppy", "kitten", "labrador", "German shepherd", "pug", "beagle", "husky",
        "golden retriever", "Persian cat", "Siamese cat", "axolotl", "canary"]
JOBS = ["doctor", "lawyer", "pilot", "software engineer", "data scientist", "teacher", "nurse",
        "architect", "chartered accountant", "civil engineer", "mechanical engineer",
        "electrical engineer", "investment banker", "product manager", "graphic designer",
        "journalist", "psychologist", "dentist", "pharmacist", "chef", "photographer", "actor",
        "writer", "entrepreneur", "police officer", "IAS officer", "scientist", "astronaut",
        "professor", "veterinarian", "web developer", "game developer", "ethical hacker",
        "consultant", "financial analyst", "interior designer", "fashion designer", "musician",
        "economist", "surgeon", "physiotherapist", "marine biologist", "airline pilot",
        "firefighter", "translator", "UX designer", "DevOps engineer", "data analyst",
        "stock broker", "real estate agent"]
EXAMS = ["GRE", "GMAT", "SAT", "ACT", "IELTS", "TOEFL", "JEE", "NEET", "UPSC", "CAT", "GATE",
         "MCAT", "LSAT", "CFA", "CPA exam", "bar exam", "AWS certification", "PMP", "CCNA",
         "USMLE", "CLAT", "AIIMS exam", "SSC CGL", "IBPS PO", "NDA exam"]
DOMAINS = {"programming": PROGRAMMING, "software": SOFTWARE, "fields": FIELDS,
           "instruments": INSTRUMENTS, "languages": LANGUAGES, "sports": SPORTS, "places": PLACES,
           "dishes": DISHES, "pets": PETS, "jobs": JOBS, "exams": EXAMS}
# other names for the same subject: a duplicate may use one
ALIASES = {"JavaScript": ["JS"], "New York": ["NYC", "New York City"], "Mumbai": ["Bombay"],
           "machine learning": ["ML"], "artificial intelligence": ["AI"], "Bangalore": ["Bengaluru"],
           "Los Angeles": ["LA"], "San Francisco": ["SF"], "Kubernetes": ["k8s"],
           "Mandarin": ["Chinese"], "football": ["soccer"], "C++": ["CPP"], "chartered accountant":
           ["CA"], "french fries": ["fries", "chips"], "bass guitar": ["bass"],
           "veterinarian": ["vet"], "Power BI": ["PowerBI"], "puppy": ["young dog"]}
LEARNABLE = ["programming", "software", "fields", "instruments", "languages", "sports"]


@dataclass(frozen=True)
class Family:
    """One kind of question: templates ({s} subject, {a} with article, {o} second subject, {m}
    modifier) and modifier groups, each a list of interchangeable phrasings (same intent)."""

    name: str
    domains: tuple[str, ...]
    templates: tuple[str, ...]
    modifiers: tuple[tuple[str, ...], ...] = (("",),)


FAMILIES = [
    Family("learn", tuple(LEARNABLE), (
        "How do I learn {s}{m}?", "How can I learn {s}{m}?", "What is the best way to learn {s}{m}?",
        "What is a good way to learn {s}{m}?", "Where should I start if I want to learn {s}{m}?",
        "I want to learn {s}{m}. Where do I start?", "What steps should I follow to learn {s}{m}?"),
        (("",), (" quickly", " fast", " in a short time", " as fast as possible"),
         (" for free", " without paying", " at no cost", " without spending money"),
         (" on my own", " by myself", " without a teacher", " through self-study"),
         (" as a beginner", " from scratch", " with no experience", " from zero"))),
    Family("resources", ("programming", "software", "fields", "instruments", "languages", "exams"), (
        "What are the best {m} to learn {s}?", "Which {m} should I use to learn {s}?",
        "Can you recommend some good {m} for learning {s}?", "What are some good {m} for {s}?",
        "Which are the top {m} for {s} beginners?"),
        (("books", "textbooks"), ("websites", "online resources", "sites"),
         ("YouTube channels", "video tutorials", "YouTube videos"),
         ("online courses", "courses", "MOOCs"))),
    Family("career", ("programming", "software", "fields", "languages"), (
        "What jobs can I get if I know {s}?", "What are the career options after learning {s}?",
        "Which jobs need {s}?", "What kind of job can I get with {s}?",
        "Is there a good career in {s}?")),
    Family("difficulty", tuple(LEARNABLE), (
        "Is {s} hard to learn?", "How difficult is it to learn {s}?", "Is learning {s} difficult?",
        "How hard is {s} for a beginner?", "Is {s} easy to pick up?")),
    Family("compare", ("programming", "software", "languages", "places", "jobs", "dishes"), (
        "Which is better, {s} or {o}?", "Which one should I choose: {s} or {o}?",
        "What is better: {o} or {s}?", "Should I go for {s} or {o}?",
        "{s} or {o}: which one is better?", "Which is better, {o} or {s}?")),
    Family("sights", ("places",), (
        "What are the best places to visit in {s}?", "What should I see in {s}?",
        "Which places in {s} should every tourist visit?", "What are the must-see places in {s}?",
        "What are the top tourist attractions in {s}?")),
    Family("season", ("places",), (
        "What is the best time to visit {s}?", "When is the best season to travel to {s}?",
        "Which month is best for a trip to {s}?", "When should I go to {s}?")),
    Family("living_cost", ("places",), (
        "How expensive is it to live in {s}?", "What is the cost of living in {s}?",
        "Is {s} an expensive place to live?", "How much money do I need to live in {s}?")),
    Family("safety", ("places",), (
        "Is {s} safe for tourists?", "How safe is {s} for travellers?",
        "Is it safe to travel to {s}?", "Is {s} dangerous for tourists?")),
    Family("cook", ("dishes",), (
        "How do I make {s}{m}?", "What is a good recipe for {s}{m}?", "How can I cook {s}{m}?",
        "What is the easiest way to make {s}{m}?", "How do you prepare {s}{m}?"),
        ((" at home", " in my kitchen", " myself"), (" without an oven", " on a stove"),
         (" for a party", " for a large group"))),
    Family("healthy", ("dishes",), (
        "Is {s} healthy?", "Is eating {s} good for you?", "Is {s} bad for your health?",
        "How healthy is {s}?", "Can I eat {s} every day?")),
    Family("pet_care", ("pets",), (
        "How do I take care of {a}?", "What is the best way to look after {a}?",
        "What do I need to know before getting {a}?", "How should I care for {a}?")),
    Family("pet_food", ("pets",), (
        "What should I feed {a}?", "What is the best food for {a}?", "What does {a} eat?",
        "What food is good for {a}?")),
    Family("pet_cost", ("pets",), (
        "How much does it cost to keep {a}?", "Is {a} expensive to keep as a pet?",
        "What is the monthly cost of owning {a}?", "How much money do I need to own {a}?")),
    Family("become", ("jobs",), (
        "How do I become {a}{m}?", "What does it take to become {a}{m}?",
        "What steps should I take to become {a}{m}?", "How can I become {a}{m}?"),
        (("",), (" after high school", " after 12th grade", " right after school"),
         (" without a degree", " with no degree", " without going to college"))),
    Family("salary", ("jobs",), (
        "How much does {a} earn?", "What is the average salary of {a}?",
        "How much money does {a} make?", "What is the typical salary for {a}?")),
    Family("work_life", ("jobs",), (
        "What is it like to work as {a}?", "What is a typical day in the life of {a}?",
        "How is life as {a}?", "What do you enjoy about working as {a}?")),
    Family("prepare", ("exams",), (
        "How should I prepare for the {s}{m}?", "What is the best way to prepare for the {s}{m}?",
        "How do I crack the {s}{m}?", "What is a good study plan for the {s}{m}?"),
        (("",), (" without coaching", " on my own", " by self-study"),
         (" in 3 months", " in three months", " in 90 days"),
         (" in one month", " in 30 days", " in a month"))),
    Family("score", ("exams",), (
        "What is a good score in the {s}?", "What score do I need on the {s}?",
        "Which {s} score is considered good?", "What is a competitive {s} score?")),
]
DUPLICATE_SHARE = 0.37
# shares of the non-duplicates: same question about another subject, same question with a
# different modifier, another question about the same subject, an unrelated question
NEGATIVE_MIX = {"topic": 0.38, "modifier": 0.15, "related": 0.22, "unrelated": 0.25}
LABEL_NOISE = 0.03  # share of pairs whose label is flipped, as human labels disagree
TOO_SHORT_SHARE = 0.01
SUBJECT_ZIPF = 0.6  # popularity of the rank-k subject ~ 1 / k ** SUBJECT_ZIPF
TEMPLATE_ZIPF = 0.8  # the same for the phrasings of one question
TOO_SHORT = ["", "", "Why?", "How?", "What?", "Help me", "Hi", "?", "Thanks", "Ok"]


@dataclass(frozen=True)
class Intent:
    family: int
    domain: str
    subject: str
    other: str | None
    modifier: int


def _article(noun: str) -> str:
    first = noun.split()[0]
    vowel_sound = first[0] in "AEFHILMNORSX" if first.isupper() else first[0].lower() in "aeiou"
    return f"{'an' if vowel_sound else 'a'} {noun}"


def _cumulative(weights: np.ndarray) -> np.ndarray:
    cum = np.cumsum(weights, dtype=float)
    return cum / cum[-1]


class _DemoGenerator:
    """Draws intents (popular subjects recur, as in the real data) and renders their questions."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.families_of = {d: [i for i, f in enumerate(FAMILIES) if d in f.domains]
                            for d in DOMAINS}
        self.domain_names = list(DOMAINS)
        sizes = np.array([len(DOMAINS[d]) for d in self.domain_names], dtype=float)
        self.domain_cum = _cumulative(sizes)
        self.subject_cum = {}
        for domain, subjects in DOMAINS.items():
            ranks = self.rng.permutation(len(subjects)) + 1
            # a few subjects are asked about far more often
            self.subject_cum[domain] = _cumulative(1.0 / ranks ** SUBJECT_ZIPF)
        self.template_cum = [_cumulative(1.0 / np.arange(1, len(f.templates) + 1) ** TEMPLATE_ZIPF)
                             for f in FAMILIES]  # the first phrasings are the common ones

    def _draw(self, cumulative: np.ndarray) -> int:
        return int(np.searchsorted(cumulative, self.rng.random(), side="right"))

    def _subject(self, domain: str, avoid: tuple[str | None, ...] = ()) -> str:
        subjects = DOMAINS[domain]
        while True:
            pick = subjects[self._draw(self.subject_cum[domain])]
            if pick not in avoid:
                return pick

    def intent(self, domain: str | None = None, subject: str | None = None,
               family: int | None = None) -> Intent:
        if domain is None:
            domain = self.domain_names[self._draw(self.domain_cum)]
        if family is None:
            family = int(self.rng.choice(self.families_of[domain]))
        subject = subject or self._subject(domain)
        spec = FAMILIES[family]
        other = self._subject(domain, (subject,)) if "{o}" in "".join(spec.templates) else None
        return Intent(family, domain, subject, other, int(self.rng.integers(len(spec.modifiers))))

    def render(self, intent: Intent, template: int | None = None, alias: bool = False) -> str:
        spec = FAMILIES[intent.family]
        if template is None:
            template = self._draw(self.template_cum[intent.family])
        phrasings = spec.modifiers[intent.modifier]
        subject = intent.subject
        if alias and subject in ALIASES:
            subject = ALIASES[subject][int(self.rng.integers(len(ALIASES[subject])))]
        text = spec.templates[template].format(
            s=subject, a=_article(subject), o=intent.other or "",
            m=phrasings[int(self.rng.integers(len(phrasings)))])
        text = text[0].upper() + text[1:]
        roll = self.rng.random()
        if roll < 0.03:  # people leave the question mark out, or write in lower case
            text = text.rstrip("?")
        elif roll < 0.05:
            text = text[0].lower() + text[1:]
        return text

    def duplicate(self) -> tuple[str, str]:
        intent = self.intent()
        first = self.render(intent)
        for _ in range(20):
            second = self.render(intent, alias=self.rng.random() < 0.3)
            if second != first:
                return first, second
        return first, self.render(intent, alias=True) + " Please help."

    def negative(self, kind: str) -> tuple[str, str]:
        intent = self.intent()
        spec = FAMILIES[intent.family]
        same_template = int(self.rng.integers(len(spec.templates)))
        if kind == "topic":
            if intent.other is not None and self.rng.random() < 0.5:
                other = Intent(intent.family, intent.domain, intent.subject,
                               self._subject(intent.domain, (intent.subject, intent.other)),
                               intent.modifier)
            else:
                other = Intent(intent.family, intent.domain,
                               self._subject(intent.domain, (intent.subject, intent.other)),
                               intent.other, intent.modifier)
        elif kind == "modifier" and len(spec.modifiers) > 1:
            choices = [m for m in range(len(spec.modifiers)) if m != intent.modifier]
            other = Intent(intent.family, intent.domain, intent.subject, intent.other,
                           int(self.rng.choice(choices)))
        elif kind in ("related", "modifier") and len(self.families_of[intent.domain]) > 1:
            family = int(self.rng.choice([f for f in self.families_of[intent.domain]
                                          if f != intent.family]))
            other = self.intent(intent.domain, intent.subject, family)
            return self.render(intent), self.render(other)
        else:
            other = self.intent()
            while other.subject == intent.subject:
                other = self.intent()
            return self.render(intent), self.render(other)
        if self.rng.random() < 0.6:
            return self.render(intent, same_template), self.render(other, same_template)
        return self.render(intent), self.render(other)


def demo_pairs(n_pairs: int, seed: int) -> pd.DataFrame:
    """Deterministic templated question pairs (PAIR_COLUMNS), about 37% duplicates.

    Duplicates are paraphrases of one intent; non-duplicates change the subject, the modifier or
    the question, or are unrelated. A few labels are flipped and ~1% of questions are too short.
    """
    gen = _DemoGenerator(seed)
    rng = gen.rng
    n_dup = round(DUPLICATE_SHARE * n_pairs)
    kinds = ["duplicate"] * n_dup
    negatives = rng.choice(list(NEGATIVE_MIX), size=n_pairs - n_dup,
                           p=np.array(list(NEGATIVE_MIX.values())))
    kinds += [str(k) for k in negatives]
    kinds = [kinds[i] for i in rng.permutation(n_pairs)]
    questions, labels = [], []
    for kind in kinds:
        pair = gen.duplicate() if kind == "duplicate" else gen.negative(kind)
        questions.append(list(pair if rng.random() < 0.5 else pair[::-1]))
        labels.append(int(kind == "duplicate"))
    labels = np.array(labels, dtype=np.int8)
    n_flip = round(LABEL_NOISE * n_pairs / 2)  # as many each way: the balance stays put
    flips = [rng.choice(np.flatnonzero(labels == value), size=n_flip, replace=False)
             for value in (1, 0)]
    for flip in flips:
        labels[flip] = 1 - labels[flip]
    for i in rng.choice(n_pairs, size=max(1, round(TOO_SHORT_SHARE * n_pairs)), replace=False):
        questions[i][int(rng.integers(2))] = TOO_SHORT[int(rng.integers(len(TOO_SHORT)))]
    counter, qids = itertools.count(1), {}
    qid_columns: list[list[int]] = [[], []]
    for pair in questions:
        for side, text in enumerate(pair):
            if text == "":  # a missing question gets its own id, as in the real dump
                qid_columns[side].append(next(counter))
            else:
                if text not in qids:
                    qids[text] = next(counter)
                qid_columns[side].append(qids[text])
    return _pairs_frame(
        {"id": np.arange(n_pairs), "qid1": qid_columns[0], "qid2": qid_columns[1]},
        {"question1": [p[0] or None for p in questions],
         "question2": [p[1] or None for p in questions]}, labels)


# ================================================================== the stage
@task(name="quora-ingest")
def ingest_pairs(settings: QuoraSettings, raw_dir: Path, seed: int) -> dict:
    """Bring pairs from the configured source to raw_dir/pairs.parquet (+ quarantine.parquet)."""
    raw_dir = Path(raw_dir)
    log = get_logger()
    download_info = None
    if settings.source == "demo":
        pairs, quarantine = demo_pairs(settings.demo.n_pairs, seed), empty_quarantine()
        report = {"path": None, "format": "demo", "rows_in": len(pairs), "rows_kept": len(pairs),
                  "quarantined": {}, "decode_replacements": 0,
                  "missing_questions": int(pairs[["question1", "question2"]].isna().sum().sum()),
                  "blank_lines": 0}
    else:
        if settings.source == "file":
            path, fmt = Path(settings.file.path), settings.file.format
        else:
            live = settings.live
            path, fmt = raw_dir / LIVE_FILE_NAME, "auto"
            download_info = download(live.url, path, expected_sha256=live.sha256,
                                     timeout=live.timeout_seconds, retries=live.retries,
                                     backoff=live.backoff_seconds)
        pairs, quarantine, report = read_pairs(path, fmt)
    report = {"source": settings.source, **report,
              "duplicates": int(pairs["is_duplicate"].sum()),
              "duplicate_share": float(pairs["is_duplicate"].mean()) if len(pairs) else None}
    if download_info is not None:
        report["download"] = download_info
    write_parquet(pairs, raw_dir / "pairs.parquet")
    write_parquet(quarantine, raw_dir / "quarantine.parquet")
    write_json(report, raw_dir / "ingest.json")  # what the report site shows of this data
    log.info("quora ingest (%s): %d of %d pairs kept, %.1f%% duplicates, %d missing question(s)",
             settings.source, report["rows_kept"], report["rows_in"],
             100 * (report["duplicate_share"] or 0), report["missing_questions"])
    if report["quarantined"]:
        log.warning("quarantined %d record(s) to %s: %s", sum(report["quarantined"].values()),
                    raw_dir / "quarantine.parquet", report["quarantined"])
    if report["decode_replacements"]:
        log.warning("%d record(s) had bytes that are not UTF-8 (replaced by U+FFFD)",
                    report["decode_replacements"])
    return report


def ingest_stage(params) -> dict:
    """quora_ingest: the source's pairs into data/quora/raw."""
    from tasks.quora.paths import QuoraPaths

    return ingest_pairs(params.quora, QuoraPaths().raw, params.common.seed)
