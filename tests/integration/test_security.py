"""Security drills on the real local Ray (issue 6): no pickle among the artifacts of a demo-like run
(ingest → tune with ASHA → register/promote), the local cluster's dashboard on loopback with token
authentication on.

Serve's loopback bind and the admin token are drilled in test_chaos_serve.py / test_serve.py,
cluster.yaml's ingress in tests/unit/test_cluster_yaml.py, refusing pickled weights in
tests/unit/test_security.py and test_train.py::test_loader_refuses_pickles.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import requests

from tests.support.pickle_scan import pickles_under

pytestmark = [pytest.mark.ray, pytest.mark.chaos]
REPO = Path(__file__).resolve().parents[2]
# Ray Tune's own experiment bookkeeping, pickled by Ray (Tuner.restore reads it), never a model and
# never read by Serve or the registry: <experiment>/tuner.pkl, the search state
# <experiment>/basic-variant-state-<time>.json (a pickle despite its name) and each of Ray's trial
# folders' params.pkl (<experiment>/trial_<id>/; tunestack's own Train runs live in <experiment>/trials/).
RAY_TUNE_BOOKKEEPING = (("tuner.pkl",), ("basic-variant-state-*.json",), ("trial_*", "params.pkl"))


def ray_tune_bookkeeping(path: Path, tune_root: Path) -> bool:
    from fnmatch import fnmatch

    try:
        parts = path.relative_to(tune_root).parts[1:]  # below <tune root>/<experiment>/
    except ValueError:
        return False
    return any(
        len(parts) == len(p) and all(fnmatch(a, b) for a, b in zip(parts, p)) for p in RAY_TUNE_BOOKKEEPING
    )


def test_demo_like_run_writes_no_pickle(ray_cluster, tmp_path, monkeypatch):
    from pipeline.home import default_store_uri, registry_dir, runs_dir
    from pipeline.ingest import ingest
    from pipeline.registry import Registry
    from pipeline.synth import synth_routing, write_companyfacts_json
    from pipeline.tune.run import run_tune

    home = tmp_path / "home"
    monkeypatch.setenv("TUNESTACK_HOME", str(home))
    docs = []
    for i, name in enumerate(["Acme Corp", "Globex Inc", "Initech LLC"]):  # what `tunestack demo` ingests
        docs.append(str(home / "demo-input" / f"CIK{1000 + i:010d}.json.gz"))  # when there is no real data
        Path(docs[-1]).parent.mkdir(parents=True, exist_ok=True)
        write_companyfacts_json(docs[-1], cik=1000 + i, name=name, facts_per_concept=24, seed=i)
    ingest(docs, default_store_uri(), progress=False)
    synth_routing(str(home / "routing"), rows=4000, seed=0, noise=0.1)
    tiny = [
        "train.epochs=2",
        "train.patience=0",
        "tune.num_samples=1",
        "tune.asha.grace_period=1",
        "tune.asha.max_t=2",
    ]
    outs = [
        run_tune(str(REPO / "tune_configs" / f"{family}.yaml"), promote=True, overrides=tiny + extra)
        for family, extra in (("router", []), ("autoencoder", ["model.hidden=[32]"]))
    ]
    assert all(o.registered for o in outs)
    reg = Registry()
    assert {f: reg.get(f)["stage"] for f in ("router", "autoencoder")} == {
        "router": "production",
        "autoencoder": "production",
    }

    files = [p for p in home.rglob("*") if p.is_file()]
    found = pickles_under(home)
    ray_own = {
        p: why for p, why in found.items() if ray_tune_bookkeeping(home / p, Path(runs_dir()) / "tune")
    }
    print(
        f"\n{len(files)} files written under TUNESTACK_HOME; pickles: {found or 'none'}; "
        f"of them Ray Tune's own bookkeeping: {sorted(ray_own) or 'none'}"
    )
    assert set(found) == set(ray_own), {p: w for p, w in found.items() if p not in ray_own}
    for area in (registry_dir(), default_store_uri()):  # what tunestack itself writes and loads
        assert not pickles_under(area) and any(Path(area).rglob("*"))
    suffixes = {p.suffix for p in Path(registry_dir()).rglob("*") if p.is_file()} - {""}
    assert suffixes <= {".safetensors", ".json"}, suffixes


def _dashboard() -> tuple[str, int]:
    import ray

    host, port = ray._private.worker.get_dashboard_url().split(":")
    return host, int(port)


def test_local_ray_dashboard_on_loopback_with_token_auth(ray_cluster):
    import psutil
    from ray._private.authentication.authentication_utils import is_token_auth_enabled

    from pipeline.runtime import LOCAL_RAY

    assert LOCAL_RAY["dashboard_host"] == "127.0.0.1" and "RAY_AUTH_MODE" not in LOCAL_RAY
    assert is_token_auth_enabled()  # Ray >= 2.59's default for a local ray.init(); ensure_ray sets it too
    host, port = _dashboard()
    assert host == "127.0.0.1"
    listening = {
        c.laddr.ip
        for c in psutil.net_connections("inet")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    }
    assert listening == {"127.0.0.1"}, listening
    # The Jobs API (what runs code on the cluster) refuses a caller without the token
    r = requests.get(f"http://{host}:{port}/api/jobs/", timeout=30)
    assert r.status_code in (401, 403), (r.status_code, r.text[:200])
    r = requests.get(f"http://{host}:{port}/api/jobs/", headers={"Authorization": "Bearer wrong"}, timeout=30)
    assert r.status_code in (401, 403), (r.status_code, r.text[:200])
    for ip in {
        a.address
        for addrs in psutil.net_if_addrs().values()
        for a in addrs
        if a.family == socket.AF_INET and not a.address.startswith("127.")
    }:
        with pytest.raises(OSError):
            socket.create_connection((ip, port), timeout=5).close()
