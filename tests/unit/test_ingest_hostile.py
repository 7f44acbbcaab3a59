"""Drills: hostile ingest files fail with an IngestError naming the file, write nothing, and stay
within bounded memory (peak RSS measured in a subprocess against a tiny bad file in the same run).

Bounds (pipeline/ingest/sources.py): a document is read to at most MAX_DOCUMENT_BYTES; a CSV line
to at most MAX_LINE_BYTES; texts to MAX_TEXT_CHARS. A JSON document is parsed whole, so a 100 MB
single-line JSON costs about twice its size while it is refused; a 100 MB CSV line costs ~8 MiB.
Peak RSS is read from /proc (VmHWM, reset after the imports), so it is the ingest's own.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pipeline.ingest import IngestError
from pipeline.ingest.sources import MAX_DOCUMENT_BYTES, MAX_LINE_BYTES, MAX_TEXT_CHARS
from tests.support import tree_digest
from tests.support.store_docs import make_docs, quick_ingest

ROOT = Path(__file__).resolve().parents[2]
MB = 1 << 20
HUGE = 100 * MB
PROBE = """
import json, re, sys
from pipeline.ingest import IngestError, ingest

def status(key):  # MiB
    return int(re.search(key + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1)) / 1024

open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to now: imports do not count
start = status("VmRSS")
try:
    ingest(json.loads(sys.argv[1]), sys.argv[2], embedder="hashed", embed_dim=8, progress=False)
    err = None
except IngestError as e:
    err = str(e)[:400]
print(json.dumps({"error": err, "growth_mb": status("VmHWM") - start}))
"""


@pytest.fixture
def store(tmp_path):
    uri = tmp_path / "store"
    quick_ingest(make_docs(tmp_path / "docs", 1, 2), str(uri))
    return uri


def _probe(paths, store) -> dict:
    """Ingest in a fresh interpreter: its IngestError (or None) and how far its peak RSS rose (MiB)."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps([str(p) for p in paths]), str(store)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _baseline(tmp_path, store) -> float:
    tiny = tmp_path / "tiny.json"
    tiny.write_bytes(b"{not json")
    r = _probe([tiny], store)
    assert "invalid JSON" in r["error"]
    return r["growth_mb"]


def _write_repeated(path: Path, head: bytes, unit: bytes, size: int, tail: bytes = b"") -> Path:
    with open(path, "wb") as f:
        f.write(head)
        block = unit * (MB // len(unit))
        for _ in range(size // len(block)):
            f.write(block)
        f.write(tail)
    return path


# ---- 100 MB single line -------------------------------------------------------------------------


@pytest.mark.chaos
def test_csv_with_a_100mb_line_fails_in_bounded_memory(tmp_path, store):
    before = tree_digest(store)
    base = _baseline(tmp_path, store)
    header = b"fy,fp,form,filed,accn,Revenues\n2020,FY,10-K,2021-02-01,a1,5::USD\n"
    bad = _write_repeated(
        tmp_path / "HUGE.csv", header + b"2021,FY,10-K,2022-02-01,a2,", b"9", HUGE, b"::USD\n"
    )
    r = _probe([bad], store)
    print(f"100 MB CSV line: peak RSS +{r['growth_mb']:.0f} MiB (+{base:.0f} MiB for a tiny bad file)")
    assert "HUGE.csv (line 3)" in r["error"] and f"{MAX_LINE_BYTES}-byte limit" in r["error"], r
    assert r["growth_mb"] - base < 3 * MAX_LINE_BYTES / MB + 16  # the line is never read whole
    headless = _write_repeated(tmp_path / "NOLINE.csv", b"", b"x,", HUGE)  # no newline at all
    r = _probe([headless], store)
    assert "NOLINE.csv (line 1)" in r["error"] and r["growth_mb"] - base < 3 * MAX_LINE_BYTES / MB + 16, r
    assert tree_digest(store) == before


@pytest.mark.chaos
@pytest.mark.parametrize(
    "kind, expect",
    [
        ("garbage", "invalid JSON"),
        ("nested", "nested too deeply"),
        ("huge label", f"over the {MAX_TEXT_CHARS}-character limit"),
    ],
)
def test_json_with_a_100mb_line_fails_in_bounded_memory(tmp_path, store, kind, expect):
    before = tree_digest(store)
    base = _baseline(tmp_path, store)
    path = tmp_path / "huge.json"
    if kind == "garbage":
        _write_repeated(path, b'{"cik": 1, "facts": {"us-gaap": {"X": ', b"\x01", HUGE)
    elif kind == "nested":
        _write_repeated(path, b"", b"[", HUGE)
    else:
        _write_repeated(
            path,
            b'{"cik": 1, "entityName": "X", "facts": {"us-gaap": {"Revenues": {"label": "',
            b"a",
            HUGE,
            b'", "units": {"USD": [{"end": "2020-12-31", "val": 1}]}}}}}',
        )
    r = _probe([path], store)
    print(f"100 MB JSON ({kind}): peak RSS +{r['growth_mb']:.0f} MiB (+{base:.0f} MiB for a tiny bad file)")
    assert r["error"].startswith(str(path)) and expect in r["error"], r
    assert r["growth_mb"] - base < 2.2 * HUGE / MB  # the bytes and their text, briefly; then the text + parse
    assert tree_digest(store) == before


# ---- zip bombs and gzip bombs -------------------------------------------------------------------


def _zeros_member(
    zf: zipfile.ZipFile, name: str, size: int, head: bytes = b'{"cik": 1, "facts": {}, "pad": "'
):
    info = zipfile.ZipInfo(name)
    info.compress_type = zipfile.ZIP_DEFLATED
    with zf.open(info, "w", force_zip64=True) as f:
        f.write(head)
        block = b"0" * (4 * MB)
        for _ in range(size // len(block) + 1):
            f.write(block)


@pytest.mark.chaos
def test_zip_member_over_the_cap_is_refused_unread(tmp_path, store):
    before = tree_digest(store)
    bomb = tmp_path / "companyfacts.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("CIK0000000001.json", json.dumps({"cik": 1, "facts": {}}))  # a fine member first
        _zeros_member(zf, "CIK0000000002.json", MAX_DOCUMENT_BYTES)
    assert bomb.stat().st_size < 4 * MB  # > 500 MiB inflated from a few MiB
    base = _baseline(tmp_path, store)
    r = _probe([bomb], store)
    print(f"zip bomb: peak RSS +{r['growth_mb']:.0f} MiB (+{base:.0f} MiB for a tiny bad file)")
    assert f"{bomb}!CIK0000000002.json" in r["error"] and "document limit" in r["error"], r
    assert r["growth_mb"] - base < 32  # refused from its header, never inflated
    assert tree_digest(store) == before


def _lie_about_size(path: Path, declared: int) -> None:
    """Rewrite a one-member zip so both its headers claim `declared` uncompressed bytes."""
    data = bytearray(path.read_bytes())
    local = data.index(b"PK\x03\x04")
    central = data.index(b"PK\x01\x02")
    struct.pack_into("<I", data, local + 22, declared)
    struct.pack_into("<I", data, central + 24, declared)
    path.write_bytes(bytes(data))


@pytest.mark.chaos
def test_zip_member_that_lies_about_its_size_is_refused(tmp_path, store):
    before = tree_digest(store)
    bomb = tmp_path / "liar.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("CIK0000000003.json", b'{"cik": 3, "facts": {}, "pad": "' + b"0" * (64 * MB) + b'"}')
    _lie_about_size(bomb, 1000)
    with pytest.raises(IngestError) as e:
        quick_ingest([str(bomb)], str(store))
    assert str(bomb) in str(e.value) and "CRC" in str(e.value)  # zipfile stops at the declared size
    assert tree_digest(store) == before


@pytest.mark.chaos
def test_gzip_bomb_stops_at_the_cap(tmp_path, store):
    import gzip

    before = tree_digest(store)
    bomb = tmp_path / "bomb.json.gz"
    with gzip.open(bomb, "wb", compresslevel=1) as f:
        block = b"0" * (4 * MB)
        for _ in range(MAX_DOCUMENT_BYTES // len(block) + 2):
            f.write(block)
    # Past STREAM_BYTES a document is parsed as a stream: the zeros fail as JSON at their second
    # byte, before the cap is even reached (parsed whole, it stopped at the cap).
    with pytest.raises(
        IngestError, match=f"inflates past the {MAX_DOCUMENT_BYTES}-byte limit|invalid JSON"
    ) as e:
        quick_ingest([str(bomb)], str(store))
    assert str(e.value).startswith(str(bomb))
    assert tree_digest(store) == before


# ---- path traversal -----------------------------------------------------------------------------


@pytest.mark.chaos
@pytest.mark.parametrize(
    "name",
    [
        "../../etc/x.json",
        "/etc/x.json",
        "..\\..\\x.json",
        "C:/x.json",
        "C:\\x.json",
        "a/../../x.json",
        "ok/..\\..\\x.json",
    ],
)
def test_zip_member_with_a_traversal_name_is_refused(tmp_path, store, name):
    before = tree_digest(store)
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("CIK0000000001.json", json.dumps({"cik": 1, "facts": {}}))
        zf.writestr(zipfile.ZipInfo(name), json.dumps({"cik": 2, "facts": {}}))
    with pytest.raises(IngestError, match="unsafe member name") as e:
        quick_ingest([str(evil)], str(store))
    assert str(e.value).startswith(f"{evil}!")
    assert tree_digest(store) == before
