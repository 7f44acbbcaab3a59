"""The README's commands run as written.

Every fenced `bash` or `python` block in README.md preceded by a `<!-- run -->` comment (optionally
`<!-- run: TAG, TAG -->`) is run, in README order, in one fresh TUNESTACK_HOME, from the repository
root, with this venv's `tunestack` first on PATH. Tags:

  ray      the block starts a local Ray itself (a subprocess: not the session's `ray_cluster`)
  data     needs ../shared/data/us-gaap; skipped when it is absent
  serve    needs a running app: the test starts `tunestack serve --port P` (P free) the first time
           and rewrites `localhost:8000` / `127.0.0.1:8000` in the block to port P — the only
           change made to a block
  slow     long (minutes of ingest); run only with TUNESTACK_README_SLOW=1
  cluster  needs a Ray cluster started by hand (`ray start`, `ray job submit`): not run here

Blocks depend on the ones before them (a tune registers the model that serve loads), so run the
whole module, not single blocks.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import free_port, require_us_gaap
from tests.support.procs import end_session

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
TAGS = {"ray", "data", "serve", "slow", "cluster"}
MARK = re.compile(r"^<!--\s*run(?::\s*(?P<tags>[\w\s,-]*))?\s*-->\s*$")
TIMEOUT_S = {"ray": 900, "serve": 180, "local": 300}


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
    home = tmp_path_factory.mktemp("readme-home")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(
        TUNESTACK_HOME=str(home),
        TUNESTACK_ADMIN_TOKEN=secrets.token_hex(16),
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
    )
    return env


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
            time.sleep(1)
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
def test_readme_block_runs(block, readme_env, serve_app):
    if "cluster" in block.tags:
        pytest.skip(
            "needs a Ray cluster started by hand (ray start --head / ray job submit); "
            "the job-submit path has its own integration test"
        )
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
