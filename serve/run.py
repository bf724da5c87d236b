"""``moe-orch serve``: resolve the target, apply ``serve.*`` overrides, then write a Serve config
file or run the app on a Ray session until a stop signal."""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from orchestrator.contract import ServeSection, import_ref
from orchestrator.experiment import Experiment
from orchestrator.overrides import section_with_overrides
from serve.resolve import Target, TargetError, resolve_target


class ServeError(Exception):
    """A user-facing failure; ``exit_code`` is 2 for bad input, 1 for a failed start."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def serve_target(target: str, experiment: Experiment | None, overrides: tuple[str, ...], emit_path: str | None,
                 host: str | None, port: int | None, tracking_uri: str | None, address: str | None,
                 echo: Callable[[str], None] = print, follow_s: float | None = None) -> None:
    """Serve TARGET (see ``moe-orch serve --help``); raises ``ServeError``. ``follow_s``: poll a
    ``models:/<name>@<alias>`` TARGET that often and swap the replicas to each new version."""
    if follow_s is not None and not (target.startswith("models:/") and "@" in target):
        raise ServeError(f"--follow: needs a models:/<name>@<alias> target (a registry alias to follow), "
                         f"got {target}", 2)
    try:
        found = resolve_target(target, experiment, tracking_uri)
    except (TargetError, ValueError) as exc:
        raise ServeError(str(exc), 2) from exc
    if follow_s is not None and not hasattr(import_ref(found.family.endpoint or ""), "reload"):
        found.cleanup()
        raise ServeError(f"--follow: family {found.family.name}'s serve endpoint cannot swap checkpoints", 2)
    try:
        settings = dataclasses.replace(found.settings, **{k: v for k, v in (("host", host), ("port", port)) if v})
        if experiment is None and overrides:  # a run id or directory: serve.* overrides apply to its settings
            settings, errors = section_with_overrides("serve", settings, overrides)
            if errors:
                raise ServeError("invalid overrides:\n  " + "\n  ".join(errors), 2)
        if settings.num_gpus_per_replica > 0 and not found.family.runs_on_cuda:
            raise ServeError(f"serve.num_gpus_per_replica: got {settings.num_gpus_per_replica:g}, expected 0 (family "
                             f"{found.family.name} serves on cpu only)", 2)
        from serve import app

        if emit_path:
            path = app.emit_config(emit_path, found.source, found.family_ref, found.family.name, settings)
            echo(f"Serve config for {found.description}: {path}")
            return
        _run_until_stopped(found, settings, address, echo, target if follow_s is not None else None, follow_s)
    finally:
        found.cleanup()


def _run_until_stopped(found: Target, settings: ServeSection, address: str | None, echo: Callable[[str], None],
                       follow: str | None = None, poll_s: float | None = None) -> None:
    from orchestrator.ray_runtime import ray_session
    from serve import app

    with ray_session(address, env=app.ray_env(settings)):
        # SIGTERM (and SIGINT where a non-interactive shell ignores it) stop the app like Ctrl-C; set
        # after ray.init, whose core worker installs its own SIGTERM handler (which aborts the process)
        signal.signal(signal.SIGTERM, _raise_interrupt)
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
            signal.signal(signal.SIGINT, _raise_interrupt)
        try:  # a stop signal while the app is still starting stops it the same way
            source = replica_source(found)
            try:
                url = app.start(source, found.family_ref, found.family.name, settings)
            except (RuntimeError, TimeoutError) as exc:
                raise ServeError(str(exc), 1) from exc
            echo(f"serving {found.description} ({found.family.name}, {settings.ingress} ingress)\n"
                 f"  {url}  GET {url}/healthz  docs {url}/docs\nCtrl-C to stop")
            if follow is None:
                while True:
                    time.sleep(3600)
            follow_alias(follow, found, found.family.name, source, settings, poll_s or 10.0, echo)
        except KeyboardInterrupt:
            echo("stopping")
        finally:
            app.shutdown()


def replica_source(found: Target) -> dict[str, Any]:
    """Where each replica reads the checkpoint: the driver's local copy on one node; on a cluster of several
    nodes, a checkpoint from MLflow is downloaded by each replica itself (``found.source``), since a replica
    on another node cannot see the driver's download."""
    import ray

    on_cluster = sum(1 for node in ray.nodes() if node.get("Alive")) > 1
    if on_cluster and found.download_dir is not None:
        return dict(found.source)
    return {"checkpoint": str(found.local_dir), "version": found.version}


def follow_alias(uri: str, served: Target, app_name: str, first_source: dict[str, Any], settings: ServeSection,
                 poll_s: float, echo: Callable[[str], None], stop: threading.Event | None = None) -> None:
    """Poll the registry alias ``uri`` every ``poll_s`` seconds, until ``stop`` is set (or forever);
    swap the replicas of app ``app_name`` (deployed from ``first_source``, serving ``served``) to each new
    version, checked first: downloaded here, same family. A version that fails is reported, and the
    version served before stays."""
    from orchestrator.tracking import Store
    from serve import app

    store = Store.at(served.source.get("tracking_uri"))
    serving, current = served.version, first_source
    echo(f"following {uri} (every {poll_s:g}s; version {serving} now)")
    stop = stop or threading.Event()
    while not stop.wait(poll_s):
        try:
            version = store.model_version(uri).version
        except (LookupError, ValueError) as exc:
            echo(f"[follow] {exc}")
            continue
        if version == serving:
            continue
        started = time.monotonic()
        try:
            new = resolve_target(f"{uri.split('@')[0]}/{version}", None, store.uri)
        except (TargetError, ValueError) as exc:
            echo(f"[follow] version {version} refused: {exc}")
            serving = version  # not retried until the alias moves again
            continue
        try:
            if new.family.name != served.family.name:
                raise ServeError(f"family {new.family.name}, not {served.family.name}", 1)
            echo(f"[follow] {uri} -> version {version}: swapping the replicas")
            app.swap(first_source, served.family_ref, app_name, settings, new.source)
            current = new.source
            echo(f"[follow] version {version} answering ({time.monotonic() - started:.1f}s)")
        except (ServeError, RuntimeError, TimeoutError) as exc:
            echo(f"[follow] version {version} refused: {exc}; back to the version served before")
            app.deploy(first_source, served.family_ref, app_name, settings, current)
        finally:
            new.cleanup()
            serving = version


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
