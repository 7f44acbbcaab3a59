"""No shared disk: the whole pipeline with the store, runs and registry on s3:// (moto's real S3
server over HTTP), on a two-node Ray cluster whose node processes and drivers each have their own
empty TUNESTACK_HOME, so nothing can be found on a shared disk by accident.

ingest straight into the bucket (no rename anywhere: files under a fresh prefix, then one pointer
object) → store verify → train → resume from another driver → tune with ASHA (registers and
promotes v0001) → serve (the model replica pinned to the second node) → query → a registration
that fails between writing its version and the production pointer (v0001 stays live) → register
v0002 → promote from yet another driver → the replica hot-swaps to v0002 → models verify.
(The store's own object-storage cases, append, gc, damage and a failure before the pointer, are
tests/unit/test_ingest_s3.py.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import requests
import yaml

from tests.support import free_ports
from tests.support.procs import REPO, VENV_BIN, end_session, venv_env

pytestmark = pytest.mark.ray

AE = [
    "--set",
    "train.epochs=2",
    "--set",
    "train.patience=0",
    "--set",
    "model.hidden=[32]",
    "--set",
    "model.latent_dim=4",
    "--set",
    "train.batch_size=512",
    "--set",
    "data.val_fraction=0.2",
]  # the Stage-1 autoencoder, tiny: a 4-d latent over the store's 8-d embedding + value. Validation
# is the first val_fraction of the 100 accession folds: the two companies' 32 filings leave the
# first 10 folds empty, the first 20 hold 75 of their 480 facts
LOCAL_AREAS = ("store", "runs", "registry")


def _wait(what: str, check, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(
                f"{what}: process exited ({proc.returncode}):\n{log.read_text()[-3000:] if log else ''}"
            )
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f}s\n{log.read_text()[-3000:] if log else ''}")
        time.sleep(0.5)


class Cluster:
    """`ray start --head` and one `ray start --address` node, each its own process session with its
    own empty TUNESTACK_HOME and the S3 credentials/endpoint (as instance credentials would be)."""

    def __init__(self, tmp: Path, s3_env: dict):
        self.tmp, self.s3_env, self.procs, self.homes = tmp, s3_env, [], []
        self.gcs, dash, agent, agent_grpc, client = free_ports(5)
        self.temp_dir = tempfile.mkdtemp(prefix="rs3", dir="/tmp")  # Ray's socket paths must be short
        self.address = f"127.0.0.1:{self.gcs}"
        common = ["--block", "--disable-usage-stats", "--temp-dir", self.temp_dir]
        head = ["--head", "--port", str(self.gcs), "--num-cpus", "2", "--dashboard-host", "127.0.0.1"]
        head += ["--dashboard-port", str(dash), "--ray-client-server-port", str(client)]
        second = ["--address", self.address, "--num-cpus", "2", "--resources", json.dumps({"second_node": 1})]
        try:
            self._start("head", [*head, *self._agent_ports(agent, agent_grpc), *common])
            self._start("worker", [*second, *self._agent_ports(*free_ports(2)), *common])
        except BaseException:
            self.stop()  # a head whose second node never came up is not left running
            raise

    @staticmethod
    def _agent_ports(listen: int, grpc: int) -> list[str]:
        return ["--dashboard-agent-listen-port", str(listen), "--dashboard-agent-grpc-port", str(grpc)]

    def _start(self, name: str, args: list[str], attempts: int = 5) -> None:
        """Start a node and wait until it has joined. Ray gives a new node 30 s to register and
        gives up otherwise (a heavily loaded machine): then it is started again."""
        home = self.tmp / f"node-{name}-home"
        home.mkdir()
        self.homes.append(home)
        env = venv_env(**self.s3_env, TUNESTACK_HOME=home, RAY_AUTH_MODE="token")
        env.pop("TUNESTACK_STORAGE", None)  # nodes get every location from the drivers, as URIs
        log_path = self.tmp / f"node-{name}.log"
        for _ in range(attempts):
            start = log_path.stat().st_size if log_path.exists() else 0
            proc = subprocess.Popen(
                [str(VENV_BIN / "ray"), "start", *args],
                env=env,
                stdout=open(log_path, "a"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            deadline = time.monotonic() + 240
            while proc.poll() is None and time.monotonic() < deadline:
                if "Ray runtime started" in log_path.read_text()[start:]:  # registered with the GCS
                    self.procs.append(proc)
                    return
                time.sleep(0.25)  # poll interval; the deadline above bounds the wait
            end_session(proc)
        pytest.fail(f"{name} node did not start ({attempts} attempts):\n{log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        for p in reversed(self.procs):
            end_session(p)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture
def world(s3_server, tmp_path):
    prefix = s3_server.uri(s3_server.fresh_prefix("e2e"))
    cluster = Cluster(tmp_path, s3_server.env)
    try:
        yield {"prefix": prefix, "cluster": cluster, "tmp": tmp_path, "s3": s3_server}
    finally:
        cluster.stop()


def _driver_env(world, name: str, cluster: bool = True) -> dict:
    """A driver on 'another machine': its own empty home, the shared storage and (`cluster`) the
    cluster's address."""
    home = world["tmp"] / f"driver-{name}-home"
    home.mkdir(exist_ok=True)
    world["cluster"].homes.append(home)
    env = venv_env(
        **world["s3"].env,
        TUNESTACK_HOME=home,
        TUNESTACK_STORAGE=world["prefix"],
        RAY_ADDRESS=world["cluster"].address,
        RAY_AUTH_MODE="token",
    )
    if not cluster:
        env.pop("RAY_ADDRESS")
    return env


def tunestack(world, name: str, *args: str, timeout: float = 420, cluster: bool = True) -> str:
    done = subprocess.run(
        [str(VENV_BIN / "tunestack"), *args],
        cwd=REPO,
        env=_driver_env(world, name, cluster),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, f"tunestack {' '.join(args)} ({done.returncode}):\n{out[-4000:]}"
    return done.stdout


def test_pipeline_on_object_storage_with_no_shared_disk(world, monkeypatch):
    from pipeline.registry import Registry
    from pipeline.storage import join_uri, resolve
    from pipeline.store import TripletStore
    from pipeline.synth import write_companyfacts_json

    for k, v in world["s3"].env.items():  # this process reads the bucket to check what was written
        monkeypatch.setenv(k, v)
    prefix, tmp = world["prefix"], world["tmp"]
    docs = []
    for i in range(2):
        docs.append(str(tmp / f"CIK{i}.json"))
        write_companyfacts_json(docs[-1], cik=1000 + i, name=f"Company {i}", facts_per_concept=16, seed=i)

    # ingest → the store on s3 (written by a laptop outside the cluster, as the README does it: the
    # input files are on its own disk), and its verification from another driver
    out = tunestack(
        world, "ingest", "ingest", *docs, "--embedder", "hashed", "--embed-dim", "8", cluster=False
    )
    assert json.loads(out)["store"] == join_uri(prefix, "store")
    assert "match the manifest" in tunestack(world, "verify-store", "store", "verify")
    store = TripletStore(join_uri(prefix, "store"))
    row = store.read_pairs().slice(0, 1).to_pylist()[0]
    query = {"concept": row["concept"], "unit": row["unit"], "value": 1.0e6}

    # train: checkpoints on s3 through Ray's storage_filesystem; resume from another driver
    cfg = "tune_configs/autoencoder.yaml"
    train = json.loads(tunestack(world, "train", "train", "--config", cfg, "--name", "ae-first", *AE))
    assert train["best_checkpoint"].startswith(f"{prefix}/runs/ae-first/checkpoint_epoch")
    resumed = json.loads(tunestack(world, "resume", "train", "--resume", "ae-first"))
    assert resumed["best_checkpoint"] == train["best_checkpoint"]

    # tune with ASHA: 2 trials, experiment and trial checkpoints on s3; the best registered + promoted
    tune_cfg = yaml.safe_load((REPO / cfg).read_text())  # its latent grid (16, 32) exceeds the 9-d input
    tune_cfg["search"]["model.latent_dim"] = {"grid": [2, 4]}
    (tmp / "autoencoder-tune.yaml").write_text(yaml.safe_dump(tune_cfg))
    out = tunestack(
        world,
        "tune",
        "tune",
        "--config",
        str(tmp / "autoencoder-tune.yaml"),
        "--name",
        "ae-tune",
        "--promote",
        *AE,
        "--set",
        "tune.asha.grace_period=1",
        "--set",
        "tune.asha.max_t=2",
    )
    summary = json.loads(out[out.index("{\n") :])
    assert summary["registered"] == {"family": "autoencoder", "version": "v0001", "stage": "production"}
    assert summary["report"]["table"] == f"{prefix}/runs/tune/ae-tune/report.md"
    assert resolve(join_uri(prefix, "runs", "tune", "ae-tune")).is_file("curves.png")

    # serve: the model replica pinned to the second node, reading the registry on s3
    port = free_ports(1)[0]
    conf = tmp / "serve.yaml"
    conf.write_text(yaml.safe_dump(_serve_config(port)))
    log = tmp / "serve.log"
    serve = subprocess.Popen(
        [
            str(VENV_BIN / "tunestack"),
            "serve",
            "--config",
            str(conf),
            "--port",
            str(port),
            "--timeout",
            "300",
        ],
        cwd=REPO,
        env=_driver_env(world, "serve"),
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/v1/encode"
    try:

        def encoded():
            try:
                r = requests.post(url, json=query, timeout=30)
            except requests.RequestException:
                return None
            return r.json() if r.status_code == 200 else None

        assert _wait("encode answers", encoded, 300, serve, log)["model_version"] == "v0001"

        # a registration that dies between its version and the production pointer: v0001 stays live
        reg = Registry(join_uri(prefix, "registry"))
        real_write_if = type(reg.loc).write_if

        def pointer_write_fails(self, rel, data, tag):
            if rel.endswith("production.json"):
                raise OSError("injected fault: the pointer write never reached the bucket")
            return real_write_if(self, rel, data, tag)

        with monkeypatch.context() as m:
            m.setattr(type(reg.loc), "write_if", pointer_write_fails)
            with pytest.raises(OSError, match="injected fault"):
                reg.register("autoencoder", train["best_checkpoint"], config={}, metrics={}, promote=True)
        assert reg.pointer("autoencoder")["version"] == "v0001" and reg.versions("autoencoder") == ["v0001"]
        assert encoded()["model_version"] == "v0001"

        # register v0002 and promote it from another driver: the replica follows the pointer on s3
        ckpt = resolve(train["best_checkpoint"])
        meta = json.loads(ckpt.read_bytes("checkpoint.json"))
        assert reg.register("autoencoder", ckpt.uri, config=meta["config"], metrics={})["version"] == "v0002"
        tunestack(world, "promote", "models", "promote", "autoencoder", "v0002")
        _wait(
            "the replica serves v0002",
            lambda: (encoded() or {}).get("model_version") == "v0002",
            60,
            serve,
            log,
        )
    finally:
        end_session(serve)

    assert "every file matches its sha256" in tunestack(world, "verify-models", "models", "verify")
    # nothing landed on any machine's own disk
    for home in world["cluster"].homes:
        found = [a for a in LOCAL_AREAS if (home / a).exists()]
        assert not found, f"{home} holds {found}: something was written to a local disk"
    assert not os.path.exists(REPO / ".tunestack" / "registry" / "autoencoder" / "v0002")


def _serve_config(port: int) -> dict:
    app_args = {
        "families": {"autoencoder": "encode"},
        "model_deployments": ["autoencoder"],  # its own deployment, model-autoencoder, on the second node
        "poll_interval_s": 0.5,
        "model_num_cpus": 0.1,
        "gateway_num_cpus": 0.1,
    }
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [
            {
                "name": "tunestack",
                "route_prefix": "/",
                "import_path": "serve.app:build_app",
                "args": app_args,
                "deployments": [
                    {"name": "Gateway", "num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1}},
                    {
                        "name": "model-autoencoder",
                        "num_replicas": 1,
                        # on the node that is neither the driver's nor the head's disk
                        "ray_actor_options": {"num_cpus": 0.1, "resources": {"second_node": 0.5}},
                    },
                ],
            }
        ],
    }
