"""Ingest as Ray tasks: the same store as one process, bad input refused from inside a task with
the store untouched, and a two-node `ray.cluster_utils.Cluster` whose nodes both parse."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pipeline.ingest import IngestError, ingest
from pipeline.ingest import run as ingest_run
from pipeline.ingest.tasks import TaskRunner
from pipeline.synth_companyfacts import company_document, synth_companyfacts
from tests.support import COMPANIES, require_us_gaap, tree_digest
from tests.support.golden import GOLDEN, store_digest
from tests.support.procs import venv_env
from tests.support.two_nodes import run_two_nodes

pytestmark = pytest.mark.ray


def test_parallel_ingest_gives_the_recorded_store(ray_cluster, tmp_path, monkeypatch):
    data = require_us_gaap()
    monkeypatch.setattr(ingest_run, "UNIT_BYTES", 1)  # one unit per document: three Ray tasks
    paths = [str(data / f"{t}_companyfacts.json.gz") for t in sorted(COMPANIES)]
    store = str(tmp_path / "s")
    r = ingest(paths, store, embedder="hashed", progress=False, workers=2)
    assert r.workers["parallel"] and r.workers["units"] == 3
    got, golden = store_digest(store), json.loads(GOLDEN.read_text())["all"]
    assert (got["rows"], got["columns"], got["pairs"]) == (golden["rows"], golden["columns"], golden["pairs"])


def test_tasks_get_the_shared_arguments_and_allocate_arrow_memory_from_jemalloc(ray_cluster):
    def call(a: int, b) -> tuple:
        import os

        import pyarrow as pa

        return (
            a + int(b.sum()),
            pa.default_memory_pool().backend_name,
            os.environ["ARROW_DEFAULT_MEMORY_POOL"],
        )

    runner = TaskRunner.start(workers=2)  # the Ray this process already runs
    got = runner.map(call, [{"a": 1}, {"a": 2}], shared={"b": np.arange(4)})  # b: 6, put once
    assert got == [(7, "jemalloc", "jemalloc"), (8, "jemalloc", "jemalloc")]


def test_a_bad_member_fails_the_parallel_ingest_and_leaves_the_store_as_it_was(
    ray_cluster, tmp_path, monkeypatch
):
    store = str(tmp_path / "s")
    good = tmp_path / "good.zip"
    synth_companyfacts(str(good), 3)
    ingest([str(good)], store, embedder="hashed", progress=False)
    before = tree_digest(store)
    bad = tmp_path / "bulk.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        for i in range(3, 9):
            doc = company_document(i)
            if i == 6:
                doc["facts"]["us-gaap"] = [1, 2]
            zf.writestr(f"CIK{doc['cik']:010d}.json", json.dumps(doc))
    monkeypatch.setattr(ingest_run, "UNIT_BYTES", 1)  # one member per task
    with pytest.raises(IngestError) as e:
        ingest([str(bad)], store, embedder="hashed", progress=False, workers=2)
    assert str(e.value).startswith(f"{bad}!CIK") and "taxonomy is not an object" in str(e.value)
    assert tree_digest(store) == before


TWO_NODES = """
from pipeline.ingest import ingest
from pipeline.ingest import run as ingest_run

ingest_run.UNIT_BYTES = 1  # one member per task: more tasks than either node has CPUs
r = ingest([sys.argv[2]], sys.argv[3], embedder="hashed", progress=False, address=cluster.address)
result.update(workers=r.workers, rows=r.rows_after)
"""


def test_two_node_cluster_parses_on_both_nodes(tmp_path):
    bulk = tmp_path / "bulk.zip"
    synth_companyfacts(str(bulk), 8)
    local = str(tmp_path / "local")
    ingest([str(bulk)], local, embedder="hashed", progress=False, workers=1)
    store = str(tmp_path / "cluster")
    env = venv_env(TUNESTACK_HOME=os.environ["TUNESTACK_HOME"])
    result = run_two_nodes(tmp_path, TWO_NODES, [str(bulk), store], env, head_cpus=1)
    assert len(result["nodes"]) == 2 and result["workers"]["nodes"] == 2, result  # tasks ran on both
    assert result["workers"]["units"] == 8
    assert store_digest(store) == store_digest(local)  # the same store as one process writes
    assert Path(store, "manifest.json").exists()
