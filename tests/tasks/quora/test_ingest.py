"""Quora ingest: resumable checked downloads from a local fake server, the official TSV and
Kaggle CSV with their real-world quirks (quarantined with exact lines), demo pairs, the task."""
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.config import QuoraSettings
from tasks.errors import DataError, FetchError
from tasks.quora.ingest import (
    LIVE_FILE_NAME,
    PAIR_COLUMNS,
    demo_pairs,
    download,
    ingest_pairs,
    read_pairs,
)
from tests.fakes.http_server import FakeFileServer

SHARED = Path(__file__).resolve().parents[4] / "shared" / "data" / "quora"
SAMPLE = SHARED / "quora_pairs_erogol_id100000-125999.tsv"

HEADER = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
GOOD_TSV = HEADER + "".join(
    f"{i}\t{2 * i + 1}\t{2 * i + 2}\tHow do I learn topic {i} quickly?\t"
    f"What is the fastest way to learn topic {i}?\t{i % 2}\n" for i in range(20))


def payload(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def fetch(server: FakeFileServer, dest: Path, name: str = "data.bin", **kwargs) -> dict:
    options = {"expected_sha256": None, "timeout": 5.0, "retries": 2, "backoff": 0.0, **kwargs}
    return download(server.url_for(name), dest, **options)


@pytest.fixture
def server():
    with FakeFileServer() as fake:
        yield fake


# ------------------------------------------------------------------ download
def test_interrupted_download_resumes_from_the_right_offset(server, tmp_path):
    data = payload(300_000)
    server.add("data.bin", data)
    server.cut_after(120_000, times=1)
    dest = tmp_path / "data.bin"
    out = fetch(server, dest)
    gets = server.requests_for("GET")
    assert [g.range for g in gets] == [None, "bytes=120000-"]
    assert gets[1].if_range == server.files["data.bin"].etag  # the resume is tied to the version
    assert dest.read_bytes() == data
    sha = hashlib.sha256(data).hexdigest()
    assert out == {"sha256": sha, "bytes": len(data), "resumed": True, "downloaded": True,
                   "changed": True}
    record = json.loads((tmp_path / "data.bin.sha256").read_text())
    assert record["sha256"] == sha and record["bytes"] == len(data)
    assert record["url"] == server.url_for("data.bin") and record["etag"]
    assert not (tmp_path / "data.bin.part").exists()


def test_a_part_left_by_an_earlier_run_is_resumed(server, tmp_path):
    data = payload(200_000, seed=1)
    server.add("data.bin", data)
    server.cut_after(50_000, times=1)
    dest = tmp_path / "data.bin"
    with pytest.raises(FetchError, match="after 1 attempt"):
        fetch(server, dest, retries=0)
    assert (tmp_path / "data.bin.part").stat().st_size == 50_000 and not dest.exists()
    out = fetch(server, dest)
    assert server.requests_for("GET")[-1].range == "bytes=50000-"
    assert out["resumed"] and dest.read_bytes() == data


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    data = payload(200_000, seed=2)
    server.add("data.bin", data)
    server.cut_after(80_000, times=1)
    server.ignore_range()
    out = fetch(server, tmp_path / "data.bin")
    assert [g.range for g in server.requests_for("GET")] == [None, "bytes=80000-"]
    assert (tmp_path / "data.bin").read_bytes() == data
    assert out["sha256"] == hashlib.sha256(data).hexdigest() and not out["resumed"]


def test_checksum_mismatch_is_a_data_error_and_leaves_no_file(server, tmp_path):
    data = payload(10_000, seed=3)
    server.add("data.bin", data)
    dest = tmp_path / "data.bin"
    wrong = "0" * 64
    with pytest.raises(DataError) as err:
        fetch(server, dest, expected_sha256=wrong)
    message = str(err.value)
    assert str(dest) in message and wrong in message
    assert hashlib.sha256(data).hexdigest() in message
    assert not dest.exists() and not (tmp_path / "data.bin.part").exists()


def test_matching_pinned_checksum_is_kept(server, tmp_path):
    data = payload(10_000, seed=4)
    server.add("data.bin", data)
    dest = tmp_path / "data.bin"
    sha = hashlib.sha256(data).hexdigest()
    assert fetch(server, dest, expected_sha256=sha.upper())["downloaded"]
    server.reset_requests()
    out = fetch(server, dest, expected_sha256=sha)
    assert out["downloaded"] is False and server.requests == []  # the pinned copy is at hand


def test_rerun_unchanged_does_not_download_and_a_change_does(server, tmp_path):
    dest = tmp_path / "data.bin"
    server.add("data.bin", payload(50_000, seed=5))
    first = fetch(server, dest)
    server.reset_requests()
    again = fetch(server, dest)
    assert [r.method for r in server.requests] == ["HEAD"]
    assert again == {**first, "resumed": False, "downloaded": False, "changed": False}

    new = payload(60_000, seed=6)
    server.add("data.bin", new)  # new content, new ETag
    server.reset_requests()
    out = fetch(server, dest)
    assert [r.method for r in server.requests] == ["HEAD", "GET"]
    assert out["downloaded"] and out["changed"] and dest.read_bytes() == new
    assert json.loads((tmp_path / "data.bin.sha256").read_text())["etag"] == \
        server.files["data.bin"].etag


def test_corrupted_local_copy_is_downloaded_again(server, tmp_path):
    data = payload(20_000, seed=7)
    server.add("data.bin", data)
    dest = tmp_path / "data.bin"
    fetch(server, dest)
    dest.write_bytes(b"truncated")
    out = fetch(server, dest)
    assert out["downloaded"] and dest.read_bytes() == data


def test_missing_file_is_a_fetch_error_naming_the_url(server, tmp_path):
    url = server.url_for("nope.tsv")
    with pytest.raises(FetchError, match=re.escape(url) + ".*404"):
        download(url, tmp_path / "nope.tsv", expected_sha256=None, timeout=5, retries=3, backoff=0)
    assert len(server.requests) == 1  # permanent: no retries
    server.add("secret.tsv", b"x")
    server.fail(403, times=None)
    with pytest.raises(FetchError, match="403"):
        fetch(server, tmp_path / "secret.tsv", name="secret.tsv")


def test_transient_500s_are_retried_then_given_up(server, tmp_path):
    data = payload(5_000, seed=8)
    server.add("data.bin", data)
    server.fail(500, times=2)
    assert fetch(server, tmp_path / "a.bin", retries=2)["bytes"] == len(data)

    server.fail(500, times=None)
    server.reset_requests()
    with pytest.raises(FetchError, match=r"data\.bin.*after 3 attempt.*500"):
        fetch(server, tmp_path / "b.bin", retries=2)
    assert len(server.requests_for("GET")) == 3
    assert not (tmp_path / "b.bin").exists()


def test_connection_refused_is_a_fetch_error(tmp_path):
    with FakeFileServer() as fake:
        url = fake.url_for("data.bin")
    with pytest.raises(FetchError, match=re.escape(url)):
        download(url, tmp_path / "data.bin", expected_sha256=None, timeout=2, retries=1, backoff=0)


def test_fake_server_ranges_and_head(server):
    import httpx

    server.add("v.mp4", b"0123456789")
    with httpx.Client() as client:
        head = client.head(server.url_for("v.mp4"))
        assert head.headers["Content-Length"] == "10" and head.content == b""
        assert head.headers["Accept-Ranges"] == "bytes" and head.headers["Last-Modified"]
        part = client.get(server.url_for("v.mp4"), headers={"Range": "bytes=2-4"})
        assert (part.status_code, part.content) == (206, b"234")
        assert part.headers["Content-Range"] == "bytes 2-4/10"
        assert client.get(server.url_for("v.mp4"), headers={"Range": "bytes=-3"}).content == b"789"
        assert client.get(server.url_for("v.mp4"), headers={"Range": "bytes=10-"}).status_code == 416
        stale = client.get(server.url_for("v.mp4"), headers={"Range": "bytes=5-",
                                                             "If-Range": '"old"'})
        assert (stale.status_code, stale.content) == (200, b"0123456789")


# ------------------------------------------------------------------ reading files
def write(tmp_path: Path, text: str | bytes, name: str = "pairs.tsv") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


MESSY = (HEADER.encode()
         + b"1\t1\t2\tHow do I learn Python?\tWhat is the best way to learn Python?\t1\n"     # 2
         + b'2\t3\t4\t"A ""quoted"" word and a\ttab?"\t"Spans\ntwo lines?"\t0\n'             # 3-4
         + b"3\t5\t6\tToo few fields\t0\n"                                                    # 5
         + b"4\t7\t8\tWhat is love?\t\t0\n"                                                   # 6
         + b"5\t9\t10\tWhy is the sky blue?\tWhy is the sea blue?\t2\n"                      # 7
         + b"x6\t11\t12\tIs this id fine?\tNo it is not?\t0\n"                                # 8
         + b'7\t13\t14\t"Bad" quoting here\tAnother question?\t0\n'                          # 9
         + b"8\t15\t16\tCaf\xe9 with a latin-1 byte?\tSome question here?\t0\n"              # 10
         + b"9\t17\t18\tNaN\tIs this kept?\t1\n"                                              # 11
         + b"10\t19\t20\tOne\tTwo\t0\textra\n"                                                # 12
         + b'11\t21\t22\t"Never closed question\tSecond question here?\t0\n'                 # 13
         + b"12\t23\t24\tAfter the broken line?\tStill read correctly?\t1\n"                 # 14
         + b"13\t25\t26\tLast row\tLast question?\t0")                                        # 15


def test_messy_tsv_quarantines_with_exact_lines_and_reasons(tmp_path):
    path = write(tmp_path, MESSY)
    pairs, quarantine, report = read_pairs(path, "auto")
    assert pairs["id"].tolist() == [1, 2, 4, 8, 9, 12, 13]
    assert list(pairs.columns) == PAIR_COLUMNS
    assert quarantine[["line", "reason"]].values.tolist() == [
        [5, "wrong number of fields"], [7, "is_duplicate not 0/1"], [8, "non-integer id"],
        [9, "bad quoting"], [12, "wrong number of fields"], [13, "unbalanced quote"]]
    assert quarantine.loc[quarantine.line == 7, "raw"].item().endswith("blue?\t2")
    assert "'2'" in quarantine.loc[quarantine.line == 7, "detail"].item()
    row = pairs.set_index("id")
    assert row.loc[2, "question1"] == 'A "quoted" word and a\ttab?'
    assert row.loc[2, "question2"] == "Spans\ntwo lines?"
    assert pd.isna(row.loc[4, "question2"]) and pd.isna(row.loc[9, "question1"])
    assert row.loc[8, "question1"] == "Caf\ufffd with a latin-1 byte?"
    assert report == {"path": str(path), "format": "tsv", "rows_in": 13, "rows_kept": 7,
                      "quarantined": {"wrong number of fields": 2, "is_duplicate not 0/1": 1,
                                      "non-integer id": 1, "bad quoting": 1,
                                      "unbalanced quote": 1},
                      "decode_replacements": 1, "missing_questions": 2, "blank_lines": 0}
    assert pairs["is_duplicate"].dtype == np.int8 and pairs["id"].dtype == np.int64


def test_an_unclosed_quote_closed_lines_later_loses_only_its_own_line(tmp_path):
    text = (HEADER + "1\t1\t2\tFirst question here?\tSecond question here?\t0\n"
            + '2\t3\t4\t"Opened but not closed\tWhy is that?\t0\n'
            + '3\t5\t6\tHe said "hi" to me?\tWhat did he say?\t1\n'
            + "4\t7\t8\tFourth question here?\tFifth question here?\t0\n")
    pairs, quarantine, _ = read_pairs(write(tmp_path, text), "tsv")
    assert pairs["id"].tolist() == [1, 3, 4]
    assert pairs.loc[1, "question1"] == 'He said "hi" to me?'
    assert quarantine[["line", "reason"]].values.tolist() == [[3, "unbalanced quote"]]
    assert quarantine["raw"].item().startswith('2\t3\t4\t"Opened')


def test_a_runaway_quote_is_cut_off_and_the_rest_is_read(tmp_path):
    rows = "".join(f"{i}\t{i}\t{i + 1000}\tQuestion number {i}?\tAnother one {i}?\t0\n"
                   for i in range(2, 200))
    text = HEADER + '1\t1\t2\t"Runaway\tq\t0\n' + rows + '999\t1\t2\tq"x\tq\t0\n'
    pairs, quarantine, report = read_pairs(write(tmp_path, text), "tsv")
    assert quarantine["line"].tolist() == [2] and report["rows_kept"] == 199


def test_missing_columns_is_a_data_error_naming_file_and_columns(tmp_path):
    path = write(tmp_path, "id\tqid1\tquestion1\tquestion2\n1\t2\ta\tb\n")
    with pytest.raises(DataError, match=r"missing column\(s\) \['qid2', 'is_duplicate'\]") as err:
        read_pairs(path, "auto")
    assert str(path) in str(err.value)
    with pytest.raises(DataError, match="no header"):
        read_pairs(write(tmp_path, b"", "empty.tsv"), "auto")
    with pytest.raises(DataError, match="cannot read"):
        read_pairs(tmp_path / "absent.tsv", "auto")
    with pytest.raises(DataError, match=r"read as csv"):  # a TSV forced through the CSV reader
        read_pairs(write(tmp_path, GOOD_TSV, "good.tsv"), "csv")


def test_header_only_gives_empty_frames(tmp_path):
    pairs, quarantine, report = read_pairs(write(tmp_path, HEADER), "auto")
    assert pairs.empty and quarantine.empty and list(pairs.columns) == PAIR_COLUMNS
    assert report["rows_in"] == 0 and pairs["is_duplicate"].dtype == np.int8


def test_crlf_bom_and_blank_lines(tmp_path):
    text = "\ufeff" + GOOD_TSV.replace("\n", "\r\n") + "\r\n"
    pairs, quarantine, report = read_pairs(write(tmp_path, text), "auto")
    assert len(pairs) == 20 and quarantine.empty and report["blank_lines"] == 1
    assert pairs.loc[0, "question2"] == "What is the fastest way to learn topic 0?"


def test_kaggle_csv_layout(tmp_path):
    text = ('"id","qid1","qid2","question1","question2","is_duplicate"\n'
            '"0","1","2","What is the step by step guide to invest in share market?",'
            '"What is the step by step guide to invest in share market in india?","0"\n'
            '"1","3","4","How can I, as a ""beginner"", learn?","Multi\nline, with comma","1"\n'
            '"2","5","6","What is this?","","0"\n'
            '"3","7","8","Is this a label?","Maybe not?","yes"\n')
    pairs, quarantine, report = read_pairs(write(tmp_path, text, "train.csv"), "auto")
    assert report["format"] == "csv" and pairs["id"].tolist() == [0, 1, 2]
    assert pairs.loc[1, "question1"] == 'How can I, as a "beginner", learn?'
    assert pairs.loc[1, "question2"] == "Multi\nline, with comma"
    assert pd.isna(pairs.loc[2, "question2"])
    assert quarantine[["line", "reason"]].values.tolist() == [[6, "is_duplicate not 0/1"]]


@pytest.mark.skipif(not SAMPLE.exists(), reason=f"{SAMPLE} (shared real sample) missing")
def test_real_sample():
    pairs, quarantine, report = read_pairs(SAMPLE, "auto")
    assert report["rows_in"] == report["rows_kept"] == 26_000 and quarantine.empty
    assert report["format"] == "tsv" and report["decode_replacements"] == 0
    assert int(pairs["is_duplicate"].sum()) == 9_616
    missing = pairs[pairs["question1"].isna() | pairs["question2"].isna()]
    assert missing["id"].tolist() == [105780] and pd.isna(missing["question2"].item())
    assert pairs["id"].tolist() == list(range(100_000, 126_000))
    quoted = pairs.set_index("id").loc[100003, "question2"]
    assert quoted == 'What did God mean when He said "an eye for an eye "?'


# ------------------------------------------------------------------ demo pairs
def test_demo_pairs_are_deterministic_balanced_and_recurring():
    pairs = demo_pairs(3000, seed=7)
    pd.testing.assert_frame_equal(pairs, demo_pairs(3000, seed=7))
    assert not pairs.equals(demo_pairs(3000, seed=8))
    assert list(pairs.columns) == PAIR_COLUMNS and pairs["id"].is_unique
    assert abs(pairs["is_duplicate"].mean() - 0.37) < 0.01
    texts = pd.concat([pairs["question1"], pairs["question2"]]).dropna()
    counts = texts.value_counts()  # the same questions come back in other pairs, as in Quora's
    assert (counts > 1).mean() > 0.1 and counts.max() >= 5
    qids = pd.concat([pairs["qid1"], pairs["qid2"]])
    by_text = pd.DataFrame({"text": pd.concat([pairs["question1"], pairs["question2"]]),
                            "qid": qids}).dropna()
    assert (by_text.groupby("text")["qid"].nunique() == 1).all()  # one qid per text
    short = texts.str.len() < 10
    unusable = int(short.sum()) + int(pairs[["question1", "question2"]].isna().sum().sum())
    assert 0.005 * len(pairs) <= unusable <= 0.02 * len(pairs)
    subjects = {w for t in texts for w in re.findall(r"[A-Za-z+#]+", t)}
    assert len(subjects) > 300


def test_demo_pairs_are_learnable_but_not_trivial():
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    pairs = demo_pairs(4000, seed=0).dropna()
    vectors = TfidfVectorizer().fit(pd.concat([pairs["question1"], pairs["question2"]]))
    a, b = vectors.transform(pairs["question1"]), vectors.transform(pairs["question2"])
    features = abs(a - b).tocsr()
    labels = pairs["is_duplicate"].to_numpy()
    n = len(labels) * 3 // 4
    model = LogisticRegression(max_iter=1000, C=10).fit(features[:n], labels[:n])
    accuracy = (model.predict(features[n:]) == labels[n:]).mean()
    majority = max(labels[n:].mean(), 1 - labels[n:].mean())
    assert majority + 0.1 < accuracy < 0.97  # bag of words helps, but does not solve it


# ------------------------------------------------------------------ the task
def test_ingest_demo_writes_both_parquet_files(tmp_path):
    settings = QuoraSettings(source="demo", demo={"n_pairs": 500})
    report = ingest_pairs.fn(settings, tmp_path, 3)
    pairs = pd.read_parquet(tmp_path / "pairs.parquet")
    quarantine = pd.read_parquet(tmp_path / "quarantine.parquet")
    pd.testing.assert_frame_equal(pairs, demo_pairs(500, 3))
    assert quarantine.empty and list(quarantine.columns) == ["line", "reason", "detail", "raw"]
    assert report["source"] == "demo" and report["rows_kept"] == 500
    assert report["duplicates"] == int(pairs["is_duplicate"].sum())


def test_ingest_file_writes_pairs_and_quarantine(tmp_path):
    path = write(tmp_path, MESSY)
    settings = QuoraSettings(source="file", file={"path": str(path)})
    report = ingest_pairs.fn(settings, tmp_path / "raw", 0)
    pairs = pd.read_parquet(tmp_path / "raw" / "pairs.parquet")
    quarantine = pd.read_parquet(tmp_path / "raw" / "quarantine.parquet")
    assert len(pairs) == report["rows_kept"] == 7 and len(quarantine) == 6
    assert pairs["is_duplicate"].dtype == np.int8 and pairs["question2"].isna().sum() == 1
    assert quarantine["line"].tolist() == [5, 7, 8, 9, 12, 13]


def test_ingest_live_downloads_then_reads(server, tmp_path):
    server.add(LIVE_FILE_NAME, GOOD_TSV.encode())
    settings = QuoraSettings(source="live", live={"url": server.url_for(LIVE_FILE_NAME),
                                                  "retries": 1, "backoff_seconds": 0})
    report = ingest_pairs.fn(settings, tmp_path, 0)
    assert report["download"]["downloaded"] and report["rows_kept"] == 20
    assert (tmp_path / LIVE_FILE_NAME).read_text() == GOOD_TSV
    assert len(pd.read_parquet(tmp_path / "pairs.parquet")) == 20
    assert ingest_pairs.fn(settings, tmp_path, 0)["download"]["downloaded"] is False
