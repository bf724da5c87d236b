"""The Ray Serve application for any family that declares a serve endpoint: one deployment,
``ModelServer``, that builds the family's endpoint (``orchestrator.contract.ServeEndpoint``)
from a checkpoint in each replica and puts Serve's batching, autoscaling and ingress around it.

- The family supplies the routes and the batched prediction (its ``ServeEndpoint``, found
  through the family registry); this module supplies ``@serve.batch`` (``max_batch_size``
  requests, waiting at most ``batch_wait_timeout_s``; the prediction runs in a worker thread,
  so the event loop keeps queueing the next batch), ``max_ongoing_requests`` (at least the batch
  size), ``autoscaling_config`` (min/max replicas, target ongoing requests), the replica's
  resources (``num_cpus_per_replica``; ``num_gpus_per_replica`` > 0 asks Ray for GPUs, and the
  family's endpoint then runs its model on CUDA, ``ServeSection.device``) and the replica's
  facts for ``/healthz`` (replica id, ingress, threads, OpenMP settings). All of it comes from the family's ``serve:``
  section, which every checkpoint written by ``moe-orch train`` also carries in its metadata.
- The model is read from a checkpoint directory, or downloaded by each replica from an MLflow
  run's ``checkpoint`` artifact (``{"run_id", "tracking_uri"}``; deleted when Serve stops the
  replica), so the same application works with ``serve deploy`` on a cluster (``emit_config``).

Ingress (``serve.ingress``): ``proxy`` (default) puts Ray's HTTP proxy in front of the replicas,
so autoscaling works behind one port. ``direct`` uses Ray Serve's direct ingress: the one replica
runs its own HTTP server on ``host:port``, which saves the proxy hop and the replica's call back
to the proxy for each request body (Ray still starts its proxy on the head node; it gets
``port + 1``). ``haproxy`` keeps both: HAProxy on ``host:port`` balances over replicas that each run
their own HTTP server, and Serve updates its backend list as replicas come and go, so autoscaling
works (``serve.haproxy``: kept on loopback, files private; Serve's Python proxy, HAProxy's backup
while no replica is up, gets ``port + 1``). Ray reads these switches from the environment of its
processes, so they must be set before Ray starts (``ray_env``; ``moe-orch serve`` does it for the
local Ray it starts, a cluster sets them in ``ray start``'s environment), and ``start`` checks that
the replica answers through the ingress asked for.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve import Application

from orchestrator.contract import ServeSection, import_ref, section_from
from orchestrator.registry import load_family
from serve import haproxy
from serve.body_limit import BodyLimit
from trainables.openmp import DECODE_ENV, decode_env, in_fresh_thread

DEPLOYMENT_NAME = "ModelServer"
IMPORT_PATH = "serve.app:app_builder"


def ray_env(settings: ServeSection, local: bool = True) -> dict[str, str]:
    """Environment Ray's processes need for ``settings`` (set it before Ray starts).

    Always: the proxy's ready-check and health-check timeouts and period (Serve reads them only
    from the environment of its controller). ``direct``: turn on Ray Serve's direct ingress and
    pin its HTTP port range to ``settings.port``, so the single replica listens where a proxy
    would have. The replica's shutdown drain (Ray's default 30 s, for load balancers to
    deregister it) becomes 1 s: no balancer sits in front here; in-flight requests are still
    finished. Set that variable yourself to keep a longer one. ``haproxy``: ``haproxy.env`` (HAProxy
    in front of direct-ingress replicas; with ``local``, its private files and the wrapper that keeps
    it on loopback, which ``start`` writes; without, only Ray's switches, for a cluster).
    """
    env = {"RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": str(settings.proxy_ready_timeout_s),
           "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": str(settings.health_check_timeout_s),
           "RAY_SERVE_PROXY_HEALTH_CHECK_PERIOD_S": str(settings.health_check_period_s)}
    if settings.ingress == "haproxy":
        return {**env, **haproxy.env(settings.port, local)}
    if settings.ingress != "direct":
        return env
    drain = "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"
    return {**env, "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
            "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(settings.port),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(settings.port + 1),  # range end is exclusive
            drain: os.environ.get(drain, "1")}


def proxy_port(settings: ServeSection) -> int:
    """Where Serve's HTTP proxy (Ray's, or HAProxy under ``haproxy``) listens: ``settings.port``, or
    ``port + 1`` under direct ingress, where the replica itself takes ``port`` (Ray still starts a proxy
    on the head node in that mode)."""
    return settings.port + 1 if settings.ingress == "direct" else settings.port


def replica_ingress() -> str:
    """The ingress this process (a replica) runs under: ``haproxy``, ``direct`` or ``proxy``."""
    if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1":  # Ray then turns direct ingress on too
        return "haproxy"
    return "direct" if os.environ.get("RAY_SERVE_ENABLE_DIRECT_INGRESS") == "1" else "proxy"


def fetch_checkpoint(source: dict[str, Any]) -> tuple[Path, Path | None]:
    """``(checkpoint dir, temporary folder or None)`` for ``source``: ``{"checkpoint": dir}``, or
    ``{"run_id", "tracking_uri", "artifact_path"}``, whose artifact folder (default ``checkpoint``; a
    registered version's ``registered/step_*``) is downloaded into a fresh temporary folder that the
    caller deletes when done. Other keys (``version``) are labels, not read here."""
    if source.get("checkpoint"):
        return Path(source["checkpoint"]), None
    from orchestrator.tracking import Store

    remove_orphaned_downloads()
    dst = Path(tempfile.mkdtemp(prefix=f"{DOWNLOAD_PREFIX}{source['run_id'][:8]}-pid{os.getpid()}-"))
    try:
        run = Store.at(source.get("tracking_uri")).run(source["run_id"])
        return run.download(source.get("artifact_path") or "checkpoint", dst), dst
    except BaseException:
        shutil.rmtree(dst, ignore_errors=True)
        raise


DOWNLOAD_PREFIX = "moe-orch-"


def remove_orphaned_downloads() -> list[Path]:
    """Delete the checkpoint downloads of replicas that died without cleaning up (SIGKILL, OOM):
    each folder names its replica's pid, and a folder whose process is gone is removed."""
    import psutil  # a Ray dependency

    removed = []
    for folder in Path(tempfile.gettempdir()).glob(f"{DOWNLOAD_PREFIX}*-pid*-*"):
        tag = next((part for part in folder.name.split("-") if part.startswith("pid") and part[3:].isdigit()), None)
        if tag is None:
            continue
        try:
            alive = psutil.Process(int(tag[3:])).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            alive = False
        if not alive:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


@serve.deployment(name=DEPLOYMENT_NAME)
@serve.ingress()
class ModelServer:
    """One replica: the family's endpoint over a checkpoint, its routes served by Serve."""

    def __init__(self, source: dict[str, Any], family: str, settings: dict[str, Any]) -> None:
        import torch

        spec = load_family(family)  # imports trainables, which keeps the model hub offline
        self.settings = section_from(spec.serve, settings)
        torch.set_num_threads(max(1, int(self.settings.num_cpus_per_replica)))
        path, self.download_dir = fetch_checkpoint(source)  # a download is deleted in __del__
        self.family, self.source, self.version = family, source, None  # the label comes with reconfigure
        # loaded in a thread that ends: it leaves no OpenMP team behind to slow the engine's (trainables.openmp)
        self.endpoint = in_fresh_thread(import_ref(spec.endpoint), path, self.settings)
        self.batched.set_max_batch_size(self.settings.max_batch_size)
        self.batched.set_batch_wait_timeout_s(self.settings.batch_wait_timeout_s)
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.swap_lock = asyncio.Lock()

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Serve calls this after ``__init__`` and whenever the deployment's ``user_config``
        (``{"source", "version"}``, see ``serve_config``) changes: a lightweight update, the replica is
        not restarted. A new source is fetched and handed to the endpoint's ``reload`` (families whose
        endpoint has none cannot swap); requests in flight finish on the checkpoint they started on.

        A replica that autoscaling starts after a swap loads the deployment's first source in
        ``__init__``, then the current one here.
        """
        source = {k: v for k, v in (user_config.get("source") or self.source).items() if v}
        version = user_config.get("version")
        async with self.swap_lock:
            if source == self.source and version == self.version:
                return
            reload = getattr(self.endpoint, "reload", None)
            if source == self.source:  # the same files under a new label (the first call after __init__)
                if reload is not None and version:
                    await asyncio.to_thread(reload, None, version)
            elif reload is None:
                raise ValueError(f"family {self.family}: its serve endpoint has no reload(), so it cannot swap "
                                 "checkpoints; redeploy instead")
            else:
                path, download_dir = await asyncio.to_thread(fetch_checkpoint, source)
                try:
                    await asyncio.to_thread(in_fresh_thread, reload, path, version)  # as __init__ loads
                except BaseException:
                    if download_dir is not None:
                        shutil.rmtree(download_dir, ignore_errors=True)
                    raise
                if self.download_dir is not None:  # the old weights are in memory; their files can go
                    shutil.rmtree(self.download_dir, ignore_errors=True)
                self.download_dir = download_dir
            self.source, self.version = source, version

    def __serve_build_asgi_app__(self) -> Any:
        """Serve calls this after ``__init__``: the family's FastAPI app for this replica, behind the
        request-body limit (413 before any parsing)."""
        return replica_app(self.endpoint, self.settings, self.batched, self.health)

    def __del__(self) -> None:
        """Serve calls this when it stops the replica: remove the checkpoint this replica downloaded."""
        if getattr(self, "download_dir", None) is not None:
            shutil.rmtree(self.download_dir, ignore_errors=True)

    def health(self) -> dict[str, Any]:
        """This replica's facts for ``/healthz``: its id, ingress, checkpoint version, torch threads and the
        OpenMP wait settings its process started with (``trainables.openmp``)."""
        import torch

        return {"replica": self.replica, "ingress": replica_ingress(), "source_version": self.version,
                "threads": torch.get_num_threads(), "openmp": {key: os.environ.get(key) for key in DECODE_ENV}}

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def batched(self, items: list[Any]) -> list[Any]:
        """Up to ``max_batch_size`` queued items in one ``predict_batch`` call, in a worker thread."""
        return await asyncio.to_thread(self.endpoint.predict_batch, items)


def replica_app(endpoint: Any, settings: ServeSection, batched: Callable[[Any], Awaitable[Any]],
                health: Callable[[], dict[str, Any]]) -> Any:
    """What each replica serves: the family endpoint's FastAPI app behind the request-body limit (413 before
    any parsing, in the endpoint's own error shape: its optional ``error_body(status, message)``)."""
    api = endpoint.asgi_app(batched, health)
    api.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, error_body=getattr(endpoint, "error_body", None))
    return api


def deployment_options(settings: ServeSection) -> dict[str, Any]:
    """``max_ongoing_requests`` (>= the batch size), ``max_queued_requests``, ``autoscaling_config``,
    ``ray_actor_options`` (``num_cpus``, and ``num_gpus`` only when ``num_gpus_per_replica`` > 0: then Ray
    gives each replica its GPUs and the endpoint runs on ``settings.device``, cuda; ``runtime_env``: the
    OpenMP settings of ``trainables.openmp.DECODE_ENV`` that this process has not set otherwise) and the
    replicas' health checks."""
    return {
        "health_check_period_s": settings.health_check_period_s,
        "health_check_timeout_s": settings.health_check_timeout_s,
        "max_ongoing_requests": settings.max_ongoing_requests or 2 * settings.max_batch_size,
        "max_queued_requests": settings.max_queued_requests,  # over it: 503 from the proxy, no wait
        "autoscaling_config": {"min_replicas": settings.min_replicas, "max_replicas": settings.max_replicas,
                               "target_ongoing_requests": settings.target_ongoing_requests,
                               "upscale_delay_s": settings.upscale_delay_s,
                               "downscale_delay_s": settings.downscale_delay_s},
        "ray_actor_options": {"num_cpus": settings.num_cpus_per_replica,
                              **({"num_gpus": settings.num_gpus_per_replica} if settings.num_gpus_per_replica else {}),
                              # OpenMP workers that spin between a decode step's matmuls (trainables.openmp)
                              "runtime_env": {"env_vars": decode_env()}},
        "logging_config": {"enable_access_log": settings.access_log},
    }


def build_app(source: dict[str, Any], family: str, settings: ServeSection) -> Application:
    """The Serve application for a checkpoint ``source`` (see ``fetch_checkpoint``) of the family
    registered at ``family`` (a ``"module:FAMILY"`` reference)."""
    source = {k: v for k, v in source.items() if v}
    return ModelServer.options(**deployment_options(settings)).bind(source, family, dataclasses.asdict(settings))


def app_builder(args: dict[str, Any]) -> Application:
    """Application builder for Serve config files: ``args`` = ``{family, serve}`` plus the source's keys
    (``checkpoint``, or ``run_id`` + ``tracking_uri`` + ``artifact_path``; ``version``)."""
    family = args["family"]
    source = {k: v for k, v in args.items() if k not in ("family", "serve")}
    return build_app(source, family, section_from(load_family(family).serve, args.get("serve")))


def serve_config(source: dict[str, Any], family: str, app_name: str, settings: ServeSection,
                 current: dict[str, Any] | None = None) -> dict[str, Any]:
    """A Serve config (``serve deploy`` / ``serve run`` file) equivalent to ``build_app``.

    The replicas start from ``source`` (the application's args) and then answer from ``current``
    (default: ``source``), which travels in the deployment's ``user_config``. Deploying the same
    config with only ``current`` changed is a lightweight update: each running replica's
    ``reconfigure`` swaps its checkpoint without a restart (``swap``; on a cluster, edit
    ``user_config.source`` and ``serve deploy`` again).
    """
    source = {k: v for k, v in source.items() if v}
    current = {k: v for k, v in (current or source).items() if v}
    user_config = {"source": current, "version": current.get("version")}
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": settings.host, "port": proxy_port(settings)},
        "applications": [{
            "name": app_name,
            "route_prefix": settings.route_prefix,
            "import_path": IMPORT_PATH,
            "args": {**source, "family": family, "serve": dataclasses.asdict(settings)},
            "deployments": [{"name": DEPLOYMENT_NAME, **deployment_options(settings), "user_config": user_config}],
        }],
    }


def emit_config(path: str | Path, source: dict[str, Any], family: str, app_name: str,
                settings: ServeSection) -> Path:
    """Write ``serve_config`` as YAML to ``path``; returns it."""
    import yaml

    path = Path(path)
    env = " ".join(f"{k}={v}" for k, v in ray_env(settings, local=False).items())
    header = f"# Serve reads these from Ray's environment: start Ray with {env}\n"
    if settings.ingress == "haproxy":
        header += ("# Ray's HAProxy also listens on every interface on RAY_SERVE_HAPROXY_STATS_PORT (8404) and "
                   "RAY_SERVE_HAPROXY_METRICS_PORT (9101), without authentication: firewall them\n")
    path.write_text(header + yaml.safe_dump(serve_config(source, family, app_name, settings), sort_keys=False))
    return path


def start(source: dict[str, Any], family: str, app_name: str, settings: ServeSection,
          ready_timeout_s: float = 120.0) -> str:
    """Deploy the app answering on ``settings.host:port`` and return its base URL once ``/healthz`` answers.

    Must run inside a Ray session. With ``settings.ingress`` ``direct`` or ``haproxy`` that session's Ray
    must have been started with ``ray_env(settings)`` (``haproxy``: this writes the session's folder and
    wrapper first); a RuntimeError says so if the replica answers through another ingress.
    """
    if settings.ingress == "haproxy":
        haproxy.prepare(settings.port)
    deploy(source, family, app_name, settings)
    url = f"http://{settings.host}:{settings.port}{settings.route_prefix.rstrip('/')}"
    try:
        health = wait_healthy(f"{url}/healthz", ready_timeout_s)
    except TimeoutError:
        shutdown()
        raise
    answered = health.get("ingress", "proxy")
    if answered != settings.ingress:
        shutdown()
        env = " ".join(f"{k}={v}" for k, v in ray_env(settings).items())
        raise RuntimeError(f"serve.ingress: got {settings.ingress!r} but the replica answers through "
                           f"{answered!r} ingress; start Ray with {env} in its environment")
    return url


def deploy(source: dict[str, Any], family: str, app_name: str, settings: ServeSection,
           current: dict[str, Any] | None = None) -> None:
    """Deploy (or update) the app from ``serve_config``, as ``serve run config.yaml`` does: through the
    Serve client of this Ray session, without the dashboard, beside the session's other apps.
    Returns once the controller has it."""
    from ray.serve._private.api import serve_start  # what `serve run <config>` calls; no public equivalent
    from ray.serve.schema import ServeDeploySchema

    config = serve_config(source, family, app_name, settings, current)
    client = serve_start(http_options=config["http_options"])
    # A config is the whole declarative state: apps it leaves out are deleted. Keep the others.
    running = client.get_serve_details().get("applications", {})
    others = [app["deployed_app_config"] for name, app in running.items()
              if name != app_name and app.get("deployed_app_config")]
    config["applications"] = others + config["applications"]
    client.deploy_apps(ServeDeploySchema.model_validate(config))


def swap(source: dict[str, Any], family: str, app_name: str, settings: ServeSection, current: dict[str, Any],
         timeout_s: float = 600.0) -> None:
    """Point the running app (deployed from ``source``) at checkpoint ``current`` without restarting its
    replicas (see ``serve_config``), and wait until every replica answers from it; TimeoutError after
    ``timeout_s``, RuntimeError if the update failed."""
    import time

    deploy(source, family, app_name, settings, current)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = serve.status().applications[app_name]
        deployment = status.deployments[DEPLOYMENT_NAME]
        if status.status == "DEPLOY_FAILED" or deployment.status == "DEPLOY_FAILED":
            raise RuntimeError(f"swapping to {current}: {deployment.message or status.message}")
        if status.status == "RUNNING" and deployment.status == "HEALTHY":  # DEPLOYING until every replica swapped
            return
        time.sleep(0.25)
    raise TimeoutError(f"the replicas did not swap to {current} within {timeout_s:.0f}s")


def wait_healthy(url: str, timeout_s: float = 120.0) -> dict[str, Any]:
    """The JSON of the first 200 answer of ``url``; TimeoutError after ``timeout_s``."""
    import time

    import requests

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            reply = requests.get(url, timeout=2)
            if reply.status_code == 200:
                return reply.json()
        except requests.RequestException:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f}s")


def shutdown() -> None:
    """Delete every Serve application and stop Serve (the Ray session stays up), then remove the
    HAProxy files ``start`` set up, if any (``haproxy.cleanup``)."""
    serve.shutdown()
    haproxy.cleanup()
