"""The storage layer on a local disk and on a real S3-protocol server (moto's, over HTTP): the same
calls, the same answers; conditional writes refuse a stale writer on both."""

from __future__ import annotations

import contextlib
import json
import os
import threading

import pyarrow.fs as pafs
import pytest

from pipeline import home
from pipeline.storage import LOCAL_CAS, S3_CAS, Location, WriteConflict, join_uri, resolve, sha256_bytes


@pytest.fixture(params=["local", "s3"])
def loc(request, tmp_path) -> Location:
    if request.param == "local":
        return resolve(str(tmp_path / "root"))
    return resolve(request.getfixturevalue("s3_prefix"))


def test_join_uri_keeps_scheme_and_options():
    assert join_uri("s3://b/p?endpoint_override=h:1&scheme=http", "runs", "x/") == (
        "s3://b/p/runs/x?endpoint_override=h:1&scheme=http"
    )
    assert join_uri("s3://b", "runs") == "s3://b/runs"
    assert join_uri("/tmp/a", "b", "c") == "/tmp/a/b/c"
    assert join_uri("file:///tmp/a", "b") == "file:///tmp/a/b"


def test_storage_env_places_store_runs_and_registry(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNESTACK_HOME", str(tmp_path / "h"))
    monkeypatch.delenv("TUNESTACK_STORAGE", raising=False)
    assert home.registry_dir() == str(tmp_path / "h" / "registry")
    monkeypatch.setenv("TUNESTACK_STORAGE", "s3://bkt/team?region=eu-west-1")
    assert home.default_store_uri() == "s3://bkt/team/store?region=eu-west-1"
    assert home.runs_dir() == "s3://bkt/team/runs?region=eu-west-1"
    assert home.registry_dir() == "s3://bkt/team/registry?region=eu-west-1"
    assert home.home() == str(tmp_path / "h")  # generated data stays on this machine
    assert home.expand("$TUNESTACK_STORAGE/store") == "s3://bkt/team/store?region=eu-west-1"
    assert home.expand("${TUNESTACK_HOME}/digits.npz") == str(tmp_path / "h" / "digits.npz")


def test_read_write_list_delete(loc):
    assert not loc.exists() and loc.list_files() == [] and loc.list_dir() == {}
    loc.write_bytes_atomic("a/b/c.json", b'{"x": 1}')
    loc.write_bytes_atomic("a/top.bin", b"\x00" * 10)
    loc.write_bytes_atomic("a/top.bin", b"\x01" * 5)  # replaced whole
    assert loc.read_bytes("a/top.bin") == b"\x01" * 5
    assert loc.list_files() == ["a/b/c.json", "a/top.bin"]
    assert loc.list_files("a/b") == ["a/b/c.json"]
    assert loc.list_dir("a") == {"b": True, "top.bin": False}
    assert loc.is_file("a/top.bin") and not loc.is_file("a/b") and loc.exists("a/b")
    assert loc.sha256("a/b/c.json") == sha256_bytes(b'{"x": 1}')
    # no temporary objects are left beside what was written
    assert all(not os.path.basename(f).startswith(".") for f in loc.list_files())
    child = loc.child("a", "b")
    assert (
        child.read_bytes("c.json") == b'{"x": 1}' and resolve(child.uri).read_bytes("c.json") == b'{"x": 1}'
    )
    loc.delete_file("a/top.bin")
    loc.delete_dir("a/b")
    assert loc.list_files() == []


def test_upload_and_download_a_folder(loc, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "one.json").write_text("1")
    (src / "sub" / "two.safetensors").write_bytes(b"2" * 100)
    loc.upload(str(src), "copy")
    assert loc.list_files("copy") == ["copy/one.json", "copy/sub/two.safetensors"]
    assert loc.download("copy", str(tmp_path / "back")) == str(tmp_path / "back")
    assert (tmp_path / "back" / "sub" / "two.safetensors").read_bytes() == b"2" * 100


def test_conditional_writes(loc):
    assert loc.conditional_writes == (LOCAL_CAS if loc.local else S3_CAS)
    assert loc.read_tagged("p.json") == (None, None)
    loc.write_if("p.json", b"one", None)  # create: only if absent
    with pytest.raises(WriteConflict):
        loc.write_if("p.json", b"two", None)
    data, tag = loc.read_tagged("p.json")
    assert data == b"one"
    loc.write_if("p.json", b"three", tag)  # swap: only if unchanged since read
    with pytest.raises(WriteConflict):
        loc.write_if("p.json", b"four", tag)  # stale
    assert loc.read_bytes("p.json") == b"three"
    loc.delete_file("p.json")
    with pytest.raises(WriteConflict):
        loc.write_if("p.json", b"five", tag)  # gone: changed too
    assert not loc.exists("p.json")


def test_s3_uri_options_reach_the_server_without_environment(s3_server, monkeypatch):
    """A URI that carries the endpoint resolves alike in a process without AWS_ENDPOINT_URL."""
    for k, v in s3_server.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    loc = resolve(s3_server.uri(s3_server.fresh_prefix(), options=True))
    loc.write_bytes_atomic("x.json", b"{}")
    assert loc.conditional_writes == S3_CAS
    loc.write_if("ptr.json", b"1", None)
    with pytest.raises(WriteConflict):
        loc.write_if("ptr.json", b"2", None)
    key = loc.join("x.json").split("/", 1)[1]
    assert s3_server.client().get_object(Bucket=s3_server.bucket, Key=key)["Body"].read() == b"{}"
    assert "?endpoint_override=" in loc.child("sub").uri


def test_without_conditional_writes_the_last_writer_wins(tmp_path):
    """A filesystem that is neither local nor S3 has no compare-and-swap: said, not faked."""
    fs = pafs.PyFileSystem(pafs.FSSpecHandler(__import__("fsspec").filesystem("memory")))
    loc = Location(fs, "/nocas", "memory://nocas")
    assert loc.conditional_writes is None
    loc.write_if("p.json", b"a", None)
    loc.write_if("p.json", b"b", None)  # unconditional
    assert loc.read_bytes("p.json") == b"b"


def test_concurrent_swaps_exactly_one_wins(loc):
    """Writers that all read the same tag: one swap goes through, every other one conflicts."""
    loc.write_if("ptr.json", b"0", None)
    _, tag = loc.read_tagged("ptr.json")
    n = 6
    barrier, results = threading.Barrier(n), []
    gate = threading.Lock()  # moto checks a condition and stores in two steps: one PUT at a time
    # (S3 itself decides atomically); every writer still holds the same, stale-for-all-but-one tag

    def swap(i):
        barrier.wait()
        try:
            with gate if not loc.local else contextlib.nullcontext():
                loc.write_if("ptr.json", str(i + 1).encode(), tag)
            results.append(("won", i))
        except WriteConflict:
            results.append(("lost", i))

    threads = [threading.Thread(target=swap, args=(i,)) for i in range(n)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    won = [i for r, i in results if r == "won"]
    assert len(won) == 1 and len(results) == n, results
    assert loc.read_bytes("ptr.json") == str(won[0] + 1).encode()


def test_write_json_atomic_replaces_whole_and_leaves_no_temporary(loc):
    from pipeline.storage import write_json_atomic

    write_json_atomic(loc.uri, "run.json", {"a": 1})
    write_json_atomic(loc.uri, "run.json", {"a": 2, "when": loc})  # not JSON: written as str()
    assert loc.list_files() == ["run.json"]
    assert json.loads(loc.read_bytes("run.json"))["a"] == 2
