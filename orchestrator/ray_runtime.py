"""Owner of ``ray.init`` / ``ray.shutdown``: a local Ray for laptops, or joining a cluster.

- No address (and no ``RAY_ADDRESS``): a local Ray starts with ``num_cpus`` CPUs, on
  loopback only (``start_local_ray``: GCS, raylet, workers, agents and dashboard listen on
  127.0.0.1), and a custom resource ``tune_driver`` (four units per
  CPU) that Tune trial driver functions request instead of a CPU, so the trials' Ray
  Train workers can use every CPU (a trial holding a CPU would starve its own workers on
  a small machine). A driver idles while its workers train, so the units only bound how
  many trials may wait on workers; ``sweep.max_concurrent_trials`` (default: CPUs //
  CPUs per trial) is the real cap, and fractional ``scaling.cpus_per_worker`` can reach it.
- ``--address``/``RAY_ADDRESS``: joins an existing cluster. Ray's token authentication is
  on by default, so the client sets ``RAY_AUTH_MODE=token`` unless already set (the token
  comes from ``RAY_AUTH_TOKEN`` / ``~/.ray/auth_token`` as usual). Clusters should give the
  head node a ``tune_driver`` resource (``ray start --resources='{"tune_driver": 8}'``);
  without one, trial drivers request 0.01 CPU instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

DRIVER_RESOURCE = "tune_driver"
DRIVER_UNITS_PER_CPU = 4  # trial drivers idle while their workers train (module docstring)
# Ray Train V2 knobs that cut per-run overhead on small runs (each can be overridden from the environment):
# the controller polls its workers every 2 s by default, which delays every report and the end of a run;
# the preemption watcher is one more actor per run, useless on a laptop.
TRAIN_ENV_DEFAULTS = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
}


LOOPBACK = "127.0.0.1"
# Ray's servers listen on its node IP. On Linux Ray picks the outward interface, so GCS, raylet,
# workers and agents listen on every interface, and three Prometheus exporters answer there
# without a token. With this switch off (Ray's own default on macOS and Windows) the node IP
# is 127.0.0.1 and every server of the local Ray listens on loopback only. No other node can
# join such a Ray, which is the point: a cluster is started with `ray start` / `ray up`.
CLUSTER_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
LOOPBACK_ONLY_ENV = {CLUSTER_SWITCH: "0"}
# Ray starts its worker processes at nice 15, below everything else on the machine. On a laptop
# busy with anything at normal priority (a build, a browser, another job) the workers then get
# a few percent of a CPU: training, Tune trials and Serve replicas crawl and miss their health
# checks. A local Ray runs the user's own job, so its workers run at normal priority (what Ray's
# job manager does for its own supervisors). Set RAY_worker_niceness to override.
WORKER_NICENESS_ENV = {"RAY_worker_niceness": "0"}


def start_local_ray(num_cpus: int, dashboard: bool = False) -> Any:
    """``ray.init`` of a local Ray that nothing outside this machine can reach (see
    ``LOOPBACK_ONLY_ENV``; the dashboard binds to 127.0.0.1), whose workers run at normal priority
    (``WORKER_NICENESS_ENV``), with ``num_cpus`` CPUs and four ``tune_driver`` units per CPU.
    Ray's token authentication stays on (its default for a new local Ray)."""
    import ray
    from ray._private import ray_constants

    for key, value in {**LOOPBACK_ONLY_ENV, **WORKER_NICENESS_ENV}.items():  # inherited by Ray's processes
        os.environ.setdefault(key, value)
    # the data root of this machine, as the driver sees it (./data is relative to its folder, and Ray's
    # processes run in another): every process of a local Ray reads the same datasets
    from trainables.data.registry import DATA_ENV, data_root

    os.environ[DATA_ENV] = str(data_root())
    # Ray reads the switch once, when it is first imported; this process may have imported it already
    ray_constants.ENABLE_RAY_CLUSTER = os.environ[CLUSTER_SWITCH] != "0"
    return ray.init(num_cpus=num_cpus, resources={DRIVER_RESOURCE: DRIVER_UNITS_PER_CPU * num_cpus},
                    include_dashboard=dashboard,
                    dashboard_host=LOOPBACK)


@dataclass(frozen=True)
class RaySession:
    """What the commands need to know about the Ray they run on."""

    address: str | None  # None = local Ray started by us
    dashboard_url: str | None
    cpus: float
    gpus: float
    has_driver_resource: bool
    nodes: int = 1  # alive Ray nodes

    def trial_resources(self) -> dict[str, float]:
        """Resources of one Tune trial driver function (not of its Train workers)."""
        return {DRIVER_RESOURCE: 1} if self.has_driver_resource else {"CPU": 0.01}


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None,
                dashboard: bool = True, env: dict[str, str] | None = None) -> Iterator[RaySession]:
    """Start (or join) Ray for the duration of the block, then shut down what we started.

    ``env``: variables that Ray's own processes must see (e.g. Serve's ingress switches). They are
    set before a local Ray starts and restored when the block ends; a joined cluster or an already
    running Ray keeps its own.
    """
    import ray

    for key, value in TRAIN_ENV_DEFAULTS.items():  # inherited by Tune trial actors, Train controllers and workers
        os.environ.setdefault(key, value)
    saved_env: dict[str, str | None] = {}
    if not ray.is_initialized() and not (address or os.environ.get("RAY_ADDRESS")):
        saved_env = {key: os.environ.get(key) for key in env or {}}
        os.environ.update(env or {})
    owned = not ray.is_initialized()  # a Ray started by the caller (a notebook, a test) is reused, not stopped
    address = address or os.environ.get("RAY_ADDRESS") or None
    if not owned:
        context = ray.get_runtime_context()
        address = None
    elif address and address != "local":
        os.environ.setdefault("RAY_AUTH_MODE", "token")
        context = ray.init(address=address, log_to_driver=True)
    else:
        context = start_local_ray(num_cpus or os.cpu_count() or 1, dashboard)
        address = None
    try:
        url = getattr(context, "dashboard_url", None) or None if owned else None
        if url and not url.startswith("http"):
            url = f"http://{url}"
        resources = ray.cluster_resources()
        session = RaySession(
            address=address,
            dashboard_url=url,
            cpus=resources.get("CPU", 0.0),
            gpus=resources.get("GPU", 0.0),
            has_driver_resource=resources.get(DRIVER_RESOURCE, 0) > 0,
            nodes=sum(1 for node in ray.nodes() if node.get("Alive")),
        )
        where = f"cluster at {address}" if address else f"{'local' if owned else 'running'} Ray ({session.cpus:g} CPUs)"
        print(f"Ray: {where}; dashboard: {url or 'off'}", flush=True)
        yield session
    finally:
        if owned:
            ray.shutdown()
        for key, previous in saved_env.items():
            if previous is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = previous


def default_concurrency(session: RaySession, num_workers: int, cpus_per_worker: float) -> int:
    """Trials that fit at once: floor(CPUs / (num_workers * cpus_per_worker)), at least 1."""
    return max(1, int(session.cpus // (num_workers * cpus_per_worker)))


def on_every_node(fn: Callable[[], Any]) -> list[tuple[str, Any]]:
    """``fn()`` run once on every alive Ray node (a zero-CPU task pinned to each), as
    ``[("<ip> (<node id prefix>)", result), ...]``. Used before a job starts, for what each node must have."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0)
    def call(f: Callable[[], Any]) -> Any:
        return f()

    alive = [node for node in ray.nodes() if node.get("Alive")]
    found = ray.get([call.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
                     .remote(fn) for node in alive])
    return [(f"{node['NodeManagerAddress']} ({node['NodeID'][:8]})", result)
            for node, result in zip(alive, found, strict=True)]
