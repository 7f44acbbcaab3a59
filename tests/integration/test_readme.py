"""The README's commands run as written.

Every fenced `bash` or `python` block in README.md preceded by a `<!-- run -->` comment (optionally
`<!-- run: TAG, TAG -->`) is run, in README order, in one fresh TUNESTACK_HOME, from the repository
root, with this venv's `tunestack` first on PATH. Tags:

  ray      the block uses Ray: its `tunestack` commands join the module's own `ray start --head`
           (RAY_ADDRESS; not the session's `ray_cluster`)
  data     needs ../shared/data/us-gaap; skipped when it is absent
  serve    needs a running app: the test starts `tunestack serve --port P` (P free) the first time
           and rewrites `localhost:8000` / `127.0.0.1:8000` in the block to port P — the only
           change made to a block
  slow     long (minutes of ingest); run only with TUNESTACK_README_SLOW=1
  cluster  starts a Ray cluster (`ray start --head`) and submits a job to it. Run for real, with
           what a shared test machine needs (cluster_block): free ports and its own Ray temp dir,
           HOME in a temporary folder (its `ray get-auth-token --generate` never touches the
           user's token), a small tune (train.epochs=2, one sample), and no `ray stop` (which
           would end every Ray on the machine): the test ends exactly that cluster's processes,
           then checks that the cluster refused unauthenticated requests and what the job registered

Blocks depend on the ones before them (a tune registers the model that serve loads), so run the
whole module, not single blocks.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.registry import Registry
from pipeline.runtime import LOCAL_ENV
from tests.support import free_port, free_ports, require_us_gaap
from tests.support.pickle_scan import pickles_under, ray_tune_bookkeeping
from tests.support.procs import RayHead, end_session

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
TAGS = {"ray", "data", "serve", "slow", "cluster"}
MARK = re.compile(r"^<!--\s*run(?::\s*(?P<tags>[\w\s,-]*))?\s*-->\s*$")
TIMEOUT_S = {"ray": 900, "serve": 180, "local": 300, "cluster": 900}
SMALL_TUNE = (
    "--set train.epochs=2 --set tune.num_samples=1 --set tune.asha.grace_period=1 --set tune.asha.max_t=2"
)


@dataclass
class Block:
    line: int  # 1-based line of the opening fence
    lang: str
    tags: frozenset
    code: str

    @property
    def id(self) -> str:
        return f"L{self.line}-{'-'.join(sorted(self.tags)) or 'local'}"


def readme_blocks(text: str) -> list[Block]:
    """The marked blocks of a README. A mark must be followed by a bash/python fence."""
    lines = text.splitlines()
    blocks = []
    for i, line in enumerate(lines):
        m = MARK.match(line.strip())
        if not m:
            continue
        tags = frozenset(t.strip() for t in (m.group("tags") or "").split(",") if t.strip())
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        fence = lines[j].strip() if j < len(lines) else ""
        if fence not in ("```bash", "```python"):
            raise ValueError(f"README.md:{i + 1}: a run mark must precede a ```bash or ```python block")
        end = next((k for k in range(j + 1, len(lines)) if lines[k].strip() == "```"), None)
        if end is None:
            raise ValueError(f"README.md:{j + 1}: unclosed code block")
        blocks.append(Block(j + 1, fence[3:], tags, "\n".join(lines[j + 1 : end]) + "\n"))
    return blocks


BLOCKS = readme_blocks(README.read_text())


@pytest.fixture(scope="module")
def readme_env(tmp_path_factory) -> dict:
    """The blocks' environment: a fresh TUNESTACK_HOME, this venv first on PATH, and RAY_ADDRESS of
    one `ray start --head` for the whole module (token auth on, its token under a temporary HOME):
    every `tunestack` command joins it, as it joins RAY_ADDRESS anywhere, instead of starting and
    stopping a local Ray of its own each time (drills elsewhere start local ones)."""
    tmp = tmp_path_factory.mktemp("readme")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    env.update(
        TUNESTACK_HOME=str(tmp / "home"),
        TUNESTACK_ADMIN_TOKEN=secrets.token_hex(16),
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        HOME=str(tmp / "ray-home"),  # ~/.ray/auth_token of this cluster, not the user's
        RAY_AUTH_MODE="token",
    )
    (tmp / "home").mkdir()
    (tmp / "ray-home").mkdir()
    subprocess.run(
        ["ray", "get-auth-token", "--generate"], env=env, capture_output=True, check=True, timeout=120
    )
    # Ray Train polls its workers every 0.2 s, as on the local cluster a command starts (pipeline.runtime)
    head = RayHead(tmp / "ray-head.log", {**env, **LOCAL_ENV})
    env["RAY_ADDRESS"] = head.address
    yield env
    head.stop()


class ServeApp:
    """`tunestack serve` on a free port, started on first use, stopped at the end of the module."""

    def __init__(self, env: dict, log: Path):
        self.env, self.log, self.proc, self.port = env, log, None, None

    def ensure(self, timeout: float = 300.0) -> int:
        if self.proc is not None:
            return self.port
        import requests

        self.port = free_port()
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pipeline.cli", "serve", "--port", str(self.port)],
                cwd=REPO,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(
                    f"tunestack serve exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}"
                )
            try:
                r = requests.get(f"http://127.0.0.1:{self.port}/readyz", timeout=5)
                if r.status_code == 200:
                    return self.port
            except requests.RequestException:
                pass
            time.sleep(0.25)  # poll interval; the deadline above bounds the wait
        pytest.fail(
            f"tunestack serve not ready after {timeout:.0f}s (did the blocks that register models "
            f"run first?):\n{self.log.read_text()[-3000:]}"
        )

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)  # what Ctrl-C does: Serve shuts down, then Ray
        try:
            self.proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            pass
        end_session(self.proc)  # whatever of its Ray is left


def _replace_once(code: str, old: str, new: str) -> str:
    assert code.count(old) == 1, f"the cluster block no longer has {old!r} once: update cluster_block"
    return code.replace(old, new)


def cluster_block(code: str, tmp: Path) -> tuple[str, dict]:
    """The `cluster` block as it runs here, and what the test needs to check it (see the module
    docstring): its ports, Ray temp dir and HOME are its own, its tune is small, `ray stop` is left
    to the test."""
    gcs, dash, client, agent, agent_grpc = free_ports(5)
    temp = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    code = _replace_once(code, "--port 6380", f"--port {gcs}")
    code = _replace_once(
        code,
        "--dashboard-port 8266",
        f"--dashboard-port {dash} --ray-client-server-port {client} --dashboard-agent-listen-port "
        f"{agent} --dashboard-agent-grpc-port {agent_grpc} --temp-dir {temp} --num-cpus 2 "
        "--disable-usage-stats",
    )
    code = _replace_once(code, "http://127.0.0.1:8266", f"http://127.0.0.1:{dash}")
    code = _replace_once(code, "\nray stop\n", "\n")
    code = _replace_once(
        code,
        "tunestack tune --config tune_configs/router.yaml --promote",
        f"tunestack tune --config tune_configs/router.yaml --promote {SMALL_TUNE}",
    )
    (tmp / "home").mkdir(parents=True, exist_ok=True)
    return code, {"dashboard": f"http://127.0.0.1:{dash}", "home": str(tmp / "home"), "temp": temp}


@pytest.fixture(scope="module")
def serve_app(readme_env, tmp_path_factory):
    app = ServeApp(readme_env, tmp_path_factory.mktemp("readme-serve") / "serve.log")
    yield app
    app.stop()


def test_readme_marks_are_well_formed():
    assert len(BLOCKS) >= 6
    for b in BLOCKS:
        assert b.tags <= TAGS, (
            f"README.md:{b.line}: unknown tag(s) {sorted(b.tags - TAGS)}; known: {sorted(TAGS)}"
        )
    # The three ways to use it each have runnable commands.
    assert any("tunestack train" in b.code for b in BLOCKS)
    assert any("serve" in b.tags for b in BLOCKS)
    assert any("ray job submit" in b.code and "cluster" in b.tags for b in BLOCKS)


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_readme_block_runs(block, readme_env, serve_app, tmp_path):
    if "cluster" in block.tags:
        return run_cluster_block(block, readme_env, tmp_path)
    if "slow" in block.tags and not os.environ.get("TUNESTACK_README_SLOW"):
        pytest.skip("slow block: set TUNESTACK_README_SLOW=1 to run it")
    if "data" in block.tags:
        require_us_gaap()
    code = block.code
    if "serve" in block.tags:
        port = serve_app.ensure()
        code = code.replace("localhost:8000", f"localhost:{port}").replace(
            "127.0.0.1:8000", f"127.0.0.1:{port}"
        )
    cmd = ["bash", "-euo", "pipefail", "-c", code] if block.lang == "bash" else [sys.executable, "-c", code]
    kind = "ray" if "ray" in block.tags else "serve" if "serve" in block.tags else "local"
    t0 = time.monotonic()
    proc = subprocess.run(
        cmd, cwd=REPO, env=readme_env, capture_output=True, text=True, timeout=TIMEOUT_S[kind]
    )
    assert proc.returncode == 0, (
        f"README.md:{block.line} ({block.lang}, {time.monotonic() - t0:.0f}s) exited {proc.returncode}\n"
        f"--- block ---\n{code}--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"
    )


def run_cluster_block(block: Block, env: dict, tmp: Path) -> None:
    """Run a `cluster` block (cluster_block) in its own session; end exactly its cluster."""
    import requests

    code, cluster = cluster_block(block.code, tmp)
    env = {k: v for k, v in env.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    env["HOME"] = cluster["home"]
    before = set(Registry(Path(env["TUNESTACK_HOME"]) / "registry").versions("router"))
    t0 = time.monotonic()
    proc = subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", code],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # the cluster's processes stay in this session: end_session ends them
    )
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S["cluster"])
        # the cluster still runs (no `ray stop`): its token auth refuses a request without the token
        refused = requests.get(f"{cluster['dashboard']}/api/jobs/", timeout=30).status_code
    finally:
        end_session(proc)
        shutil.rmtree(cluster["temp"], ignore_errors=True)
    assert proc.returncode == 0, (
        f"README.md:{block.line} (cluster, {time.monotonic() - t0:.0f}s) exited {proc.returncode}\n"
        f"--- block as run ---\n{code}--- output ---\n{out[-6000:]}"
    )
    assert re.search(r"Job 'raysubmit_\w+' succeeded", out), out[-4000:]
    assert refused in (401, 403), f"the cluster's Jobs API answered {refused} without a token"
    registry = Registry(Path(env["TUNESTACK_HOME"]) / "registry")
    new = sorted(set(registry.versions("router")) - before)
    assert len(new) == 1 and registry.get("router")["version"] == new[0], (new, out[-3000:])
    assert registry.verify("router") == []


def test_the_readme_run_wrote_no_pickle(readme_env):
    """After every block (digits train and fine-tune, tunes of both families with promotion, a
    cluster job, Serve): no pickle under TUNESTACK_HOME but Ray Tune's own restore bookkeeping, and
    the registry holds safetensors and JSON only."""
    home = Path(readme_env["TUNESTACK_HOME"])
    registry, tune_root = home / "registry", home / "runs" / "tune"
    assert any(registry.rglob("*.safetensors")), "the README run registered nothing"
    found = pickles_under(home)
    ray_own = {p for p in found if ray_tune_bookkeeping(home / p, tune_root)}
    assert set(found) == ray_own, {p: why for p, why in found.items() if p not in ray_own}
    assert not pickles_under(registry)
    suffixes = {p.suffix for p in registry.rglob("*") if p.is_file()} - {""}
    assert suffixes <= {".safetensors", ".json"}, suffixes
