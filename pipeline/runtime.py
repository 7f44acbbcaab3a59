"""Ray for every command: start a local cluster or join one, token auth, clean-up. Importing this
module does nothing; Ray is imported and started only when a command asks for it.

    ensure_ray()              join $RAY_ADDRESS (or `address`), else start a local cluster
    start_local(**options)    a fresh local cluster (never someone's `ray start`), LOCAL_RAY + options
    releasing_placement_groups()   a with-block: placement groups the block's Train runs left
                              behind are removed when it ends (Ray 2.60 leaks them)
    free_ports(n)             n distinct free loopback ports (Serve's HTTP, a test's `ray start`)

Token auth: Ray >= 2.59 turns it on for a new local cluster itself. A cluster started with
RAY_AUTH_MODE=token (cluster.yaml does) needs the same variable and its token (~/.ray/auth_token)
in every client's environment before `import ray`; a connection refused for that reason is a
UserError saying so.
"""

from __future__ import annotations

import contextlib
import os
import socket

from pipeline.errors import UserError

# A local Ray for one machine. The dashboard stays on 127.0.0.1, and it must run: Ray Train's
# PlacementGroupCleaner asks the state API (served by the dashboard) whether a run's controller
# is alive, and without it the worker group of every finished Tune trial keeps its CPUs.
LOCAL_RAY = dict(include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False)
# Ray Train's controller takes a worker's epoch report only when it polls (every 2 s by default)
# and a worker can be at most one report ahead, so epochs shorter than the poll (a router on 100k
# rows trains one in well under a second) waited for it (bench/training.py). A local cluster's
# processes, the controller included, inherit this from the driver that starts it.
# One machine has no node that the cluster can drain: no preemption watcher actor (a process to
# start for every Train run and Tune trial) is needed.
LOCAL_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


PIN_ADDRESS_HOOK = "pipeline.runtime.pin_cluster_address"


def pin_cluster_address() -> None:
    """Worker-process setup hook of a local cluster: RAY_ADDRESS = this cluster's GCS.

    Ray's state API, called without an address, looks for the Ray instances on this machine and
    gives up when it finds more than one; Ray Train's PlacementGroupCleaner calls it that way from
    inside the cluster, so with a second Ray on the machine (another run, a test's own cluster) it
    failed, the worker group of every finished trial kept its CPUs, and a tune with more trials than
    slots waited forever. With the variable set, every state-API call in a worker asks its own
    cluster."""
    import ray

    os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)


class RayConnectError(UserError):
    """The Ray cluster named by RAY_ADDRESS (or --address) cannot be joined."""


def start_local(**options):
    """Start a fresh local Ray cluster (LOCAL_RAY, sized to this machine, updated by `options`)."""
    for key, value in LOCAL_ENV.items():
        os.environ.setdefault(key, value)
    import ray

    # Token auth: Ray >= 2.59 turns it on for a new local cluster itself (RAY_AUTH_MODE unset: it
    # sets the variable and reloads its cached config; an explicit value is respected). Setting the
    # variable here instead would come after `import ray` cached "disabled": the driver then could
    # not authenticate to the GCS it just started ("Failed to start GCS").
    kwargs = {"num_cpus": os.cpu_count() or 2, **LOCAL_RAY, **options}
    kwargs.setdefault("runtime_env", {}).setdefault("worker_process_setup_hook", PIN_ADDRESS_HOOK)
    # Ray gives a new node 30 s to register with its GCS (a constant in ray._private.node); on a
    # loaded machine that can pass while nothing is broken: one more try after a clean shutdown.
    for attempt in (1, 2):
        try:
            ray.init(address="local", **kwargs)
            return ray
        except Exception as e:
            ray.shutdown()
            if attempt == 2 or "timed out during startup" not in str(e):
                raise
    return ray


def ensure_ray(address: str | None = None, **options):
    """Ray, initialized: join `address` (default $RAY_ADDRESS) when given, else start a local
    cluster. A no-op when this process is already connected. Returns the `ray` module."""
    import ray

    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        if address:
            join(address, **options)
        else:
            start_local(**options)
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    return ray


def join(address: str, **options) -> None:
    """Connect to the cluster at `address`; RayConnectError (with what to check) when it refuses."""
    import ray

    try:
        ray.init(address=address, **{"log_to_driver": False, **options})
    except (ConnectionError, RuntimeError) as e:
        hint = (
            "a cluster with token auth needs RAY_AUTH_MODE=token and its token (~/.ray/auth_token) "
            "in this environment"
            if "auth" in str(e).lower() or "token" in str(e).lower()
            else "is the cluster up (`ray status`), and is the address host:port of its GCS?"
        )
        raise RayConnectError(f"cannot join the Ray cluster at {address}: {e}; {hint}") from e


def job_placement_groups() -> set[str]:
    """Ids of the placement groups this Ray job holds (a group id ends with its job id)."""
    import ray

    job = ray.get_runtime_context().get_job_id()
    return {
        pg
        for pg, t in ray.util.placement_group_table().items()
        if t["state"] == "CREATED" and pg.endswith(job)
    }


def release_placement_groups(ids: set[str]) -> None:
    """Remove placement groups that finished Train runs left behind.

    With Ray 2.60 a finished run's worker group can keep its placement group (the family of Ray
    issue #54305); on a small cluster the next run, Tune trial or Serve replica in the same job
    then waits for CPUs forever. Call only once the runs that created `ids` have ended."""
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    for pg in ids:
        remove_placement_group(PlacementGroup(PlacementGroupID(bytes.fromhex(pg))))


@contextlib.contextmanager
def releasing_placement_groups():
    """Run Train runs (or a whole Tune experiment) in the block; when it ends, however it ends,
    remove the placement groups they created and left behind."""
    before = job_placement_groups()
    try:
        yield
    finally:
        release_placement_groups(job_placement_groups() - before)


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (never Ray's defaults 6379/8265/10001): all n bound
    at once, so no two are the same, then released for the caller to bind."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    """One free TCP port on 127.0.0.1."""
    return free_ports(1)[0]
