"""POST /v1/jobs: tuning runs submitted to the Ray cluster as Ray jobs (Jobs SDK), and their outcome.

    POST /v1/jobs {"config": "tune_configs/router.yaml", "promote": false, "set": ["train.epochs=4"]}
      → 202 {"job_id": "tunestack-tune-…", "status": "PENDING", …}
    GET  /v1/jobs/{job_id}
      → {"status": "RUNNING" | "SUCCEEDED" | "FAILED" | …, "registered": {"family", "version", "stage"}, …}

The config must name a YAML file directly in the app's tune_configs folder (`jobs_configs_dir`,
default: the repository's tune_configs/): the form is checked (no absolute path, no `..`, no
sub-folder), then the resolved file must lie in that folder (a symlink out of it is refused), then
the file (with the `set` overrides) must pass `load_tune_spec` — all before anything is submitted,
each failure a 4xx naming the reason.

The job's entrypoint is `python -m pipeline.cli tune --config FILE [--set K=V …] --result-file
RESULT [--promote]`, with TUNESTACK_HOME set to the home whose registry this app serves, so the
best model is registered where the replicas look. It is registered as the next version but NOT
promoted unless the request says `"promote": true`: a promotion made by the job reaches the
replicas through the registry watch, while the safer default leaves the decision to
POST /v1/models/{family}/promote, which loads and smoke-tests the version first.

The outcome is not scraped from logs: `tunestack tune --result-file` writes a small JSON summary
(registered version, best trial, experiment path, or the error), which GET reads once the job has
SUCCEEDED. Only jobs this app submitted (metadata tunestack=tune, our id prefix) are reported;
any other id is a 404.

Reaching the Jobs API: the dashboard address of the cluster this replica runs on is read from
the GCS (`webui:url`, what `ray.init()` reports as the dashboard URL) unless `jobs_dashboard_address`
is set. With Ray token authentication on (RAY_AUTH_MODE=token), JobSubmissionClient adds the
cluster's token to its requests by itself: a replica inherits the mode and token of its node.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
import time
import uuid
from pathlib import Path

JOB_PREFIX = "tunestack-tune-"
JOB_ID = re.compile(r"^tunestack-tune-[0-9a-f]{16}$")
CONFIG_FORM = re.compile(r"^tune_configs/[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\.ya?ml$")
OVERRIDE_FORM = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,127}=[^\r\n]{0,256}$")
DEFAULT_CONFIGS_DIR = Path(__file__).resolve().parents[1] / "tune_configs"
RESULTS_DIR = "jobs"  # under the home: <home>/jobs/<job id>.json
LOG_TAIL_CHARS = 4000
# Ray's job head answers "No available agent to submit job, please try again later" when its node's
# job agent has not registered within 10 s (ray.dashboard.consts.WAIT_AVAILABLE_AGENT_TIMEOUT): on
# a cluster still starting, or a loaded one, the agent comes up later. Submitting asks again until
# this many seconds have passed before it answers 503.
NO_AGENT = "No available agent"
AGENT_WAIT_S = 60.0


class JobError(Exception):
    """A request the jobs endpoint refuses (status and reason for the HTTP answer)."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


def job_home(registry_root: str, home: str | None) -> Path:
    """The TUNESTACK_HOME a job runs with: `home`, or the folder holding `registry_root`
    (`tunestack serve` serves <home>/registry). The job registers into <home>/registry, so that
    must be the registry this app serves."""
    from pipeline.storage import is_uri

    if is_uri(registry_root):
        raise JobError(
            409,
            f"this app serves the registry at {registry_root}; submitting tuning jobs through the app "
            "needs a registry on a path (run `tunestack tune` as a Ray job with TUNESTACK_STORAGE instead)",
        )
    root = Path(registry_root).resolve()
    h = Path(home).resolve() if home else root.parent
    if (h / "registry").resolve() != root:
        raise JobError(
            409,
            f"jobs register into <home>/registry, but this app serves {root} "
            f"(home {h}); set jobs_home or serve <home>/registry",
        )
    return h


class JobLauncher:
    def __init__(
        self,
        registry_root: str,
        configs_dir: str | None = None,
        home: str | None = None,
        dashboard_address: str | None = None,
        entrypoint_num_cpus: float = 0.0,
    ):
        self.registry_root, self.home_setting = registry_root, home
        self.configs_dir = Path(configs_dir or DEFAULT_CONFIGS_DIR).resolve()
        self.dashboard_address = dashboard_address
        self.entrypoint_num_cpus = entrypoint_num_cpus
        self._client = None

    # -- checks ---------------------------------------------------------------------------------
    def resolve_config(self, config: str, overrides: list[str]) -> Path:
        """The tune file `config` names, checked; JobError(4xx) with the reason otherwise."""
        if not CONFIG_FORM.match(config) or ".." in config:
            raise JobError(
                422,
                f"config {config!r}: expected tune_configs/FILE.yaml (a file directly in "
                "tune_configs/; no absolute path, sub-folder or '..')",
            )
        path = (self.configs_dir / config.split("/", 1)[1]).resolve()
        if path.parent != self.configs_dir:
            raise JobError(422, f"config {config!r} resolves outside tune_configs/")
        if not path.is_file():
            raise JobError(404, f"config {config!r}: no such file in tune_configs/")
        bad = [o for o in overrides if not OVERRIDE_FORM.match(o)]
        if bad:
            raise JobError(422, f"set: {bad[0]!r} is not KEY=VALUE (dotted key, one line)")
        from pipeline.config import ConfigError
        from pipeline.tune.spec import load_tune_spec

        try:
            load_tune_spec(str(path), overrides)
        except ConfigError as e:
            raise JobError(
                422, f"config {config!r} is not a valid tune file: {e.key}: {str(e).split(': ', 2)[-1]}"
            ) from None
        return path

    # -- the Jobs SDK ---------------------------------------------------------------------------
    def client(self):
        if self._client is None:
            from ray.job_submission import JobSubmissionClient

            address = self.dashboard_address
            if address is None:
                import ray
                from ray._private.services import get_webui_url_from_internal_kv

                if not ray.is_initialized():
                    raise JobError(
                        503, "jobs need a Ray cluster with a dashboard (this app runs without Ray)"
                    )
                url = get_webui_url_from_internal_kv()
                if not url:
                    raise JobError(
                        503,
                        "the cluster runs no dashboard, so it has no Jobs API "
                        "(start Ray with include_dashboard=True)",
                    )
                address = url if "://" in url else f"http://{url}"
            try:
                self._client = JobSubmissionClient(address)
            except Exception as e:  # unreachable dashboard, refused token, version mismatch
                raise JobError(
                    503, f"the Jobs API at {address} is unavailable: {type(e).__name__}: {e}"
                ) from None
        return self._client

    def submit(self, config: str, promote: bool = False, overrides: list[str] | tuple[str, ...] = ()) -> dict:
        overrides = list(overrides)
        path = self.resolve_config(config, overrides)
        home = job_home(self.registry_root, self.home_setting)
        job_id = f"{JOB_PREFIX}{uuid.uuid4().hex[:16]}"
        result = home / RESULTS_DIR / f"{job_id}.json"
        argv = [
            sys.executable,
            "-m",
            "pipeline.cli",
            "tune",
            "--config",
            str(path),
            "--result-file",
            str(result),
        ]
        for o in overrides:
            argv += ["--set", o]
        if promote:
            argv.append("--promote")
        entrypoint = shlex.join(argv)
        client = self.client()
        deadline = time.monotonic() + AGENT_WAIT_S
        while True:
            try:
                client.submit_job(
                    entrypoint=entrypoint,
                    submission_id=job_id,
                    runtime_env={"env_vars": {"TUNESTACK_HOME": str(home)}},
                    metadata={
                        "tunestack": "tune",
                        "config": config,
                        "promote": str(promote).lower(),
                        "set": json.dumps(overrides),
                    },
                    entrypoint_num_cpus=self.entrypoint_num_cpus,
                )
                break
            except Exception as e:
                if NO_AGENT in str(e) and time.monotonic() < deadline:
                    time.sleep(0.5)  # Ray's head has already waited 10 s for the agent
                    continue
                raise JobError(503, f"submitting the job failed: {type(e).__name__}: {e}") from None
        return {
            "job_id": job_id,
            "status": "PENDING",
            "config": config,
            "promote": promote,
            "set": overrides,
            "entrypoint": entrypoint,
        }

    def status(self, job_id: str) -> dict:
        if not JOB_ID.match(job_id):
            raise JobError(404, f"unknown job {job_id!r}")
        client = self.client()
        try:
            info = client.get_job_info(job_id)
        except RuntimeError as e:
            if "404" in str(e) or "does not exist" in str(e):
                raise JobError(404, f"unknown job {job_id!r}") from None
            raise JobError(503, f"the Jobs API failed: {e}") from None
        except Exception as e:
            raise JobError(503, f"the Jobs API failed: {type(e).__name__}: {e}") from None
        meta = info.metadata or {}
        if meta.get("tunestack") != "tune":
            raise JobError(404, f"unknown job {job_id!r}")
        status = str(getattr(info.status, "value", info.status))
        out = {
            "job_id": job_id,
            "status": status,
            "message": info.message,
            "config": meta.get("config"),
            "promote": meta.get("promote") == "true",
            "set": json.loads(meta.get("set") or "[]"),
            "start_time_ms": info.start_time,
            "end_time_ms": info.end_time,
            "registered": None,
        }
        if status in ("SUCCEEDED", "FAILED"):
            result = self.read_result(job_id)
            out["result"] = result
            if result:
                out["registered"] = result.get("registered")
            if status == "FAILED" or not result:
                try:
                    out["logs_tail"] = client.get_job_logs(job_id)[-LOG_TAIL_CHARS:]
                except Exception as e:  # the status is still worth answering with
                    out["logs_tail"] = f"(logs unavailable: {type(e).__name__})"
        return out

    def read_result(self, job_id: str) -> dict | None:
        """The summary `tunestack tune --result-file` wrote, or None (not written, unreadable)."""
        try:
            home = job_home(self.registry_root, self.home_setting)
            return json.loads((home / RESULTS_DIR / f"{job_id}.json").read_text())
        except (OSError, ValueError, JobError):
            return None
