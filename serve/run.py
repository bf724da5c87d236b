"""``moe-orch serve``: resolve the target, apply ``serve.*`` overrides, then write a Serve config
file or run the app on a Ray session until a stop signal."""

from __future__ import annotations

import dataclasses
import signal
import time
from collections.abc import Callable

from orchestrator.config import Experiment, section_with_overrides
from serve.resolve import TargetError, resolve_target


class ServeError(Exception):
    """A user-facing failure; ``exit_code`` is 2 for bad input, 1 for a failed start."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def serve_target(target: str, experiment: Experiment | None, overrides: tuple[str, ...], emit_path: str | None,
                 host: str | None, port: int | None, tracking_uri: str | None, address: str | None,
                 echo: Callable[[str], None] = print) -> None:
    """Serve TARGET (see ``moe-orch serve --help``); raises ``ServeError``."""
    try:
        found = resolve_target(target, experiment, tracking_uri)
    except (TargetError, ValueError) as exc:
        raise ServeError(str(exc), 2) from exc
    try:
        settings = dataclasses.replace(found.settings, **{k: v for k, v in (("host", host), ("port", port)) if v})
        if experiment is None and overrides:  # a run id or directory: serve.* overrides apply to its settings
            settings, errors = section_with_overrides("serve", settings, overrides)
            if errors:
                raise ServeError("invalid overrides:\n  " + "\n  ".join(errors), 2)
        from serve import app

        if emit_path:
            path = app.emit_config(emit_path, found.source, found.family_ref, found.family.name, settings)
            echo(f"Serve config for {found.description}: {path}")
            return
        _run_until_stopped(found, settings, address, echo)
    finally:
        found.cleanup()


def _run_until_stopped(found, settings, address: str | None, echo: Callable[[str], None]) -> None:  # noqa: ANN001
    from orchestrator.ray_runtime import ray_session
    from serve import app

    with ray_session(address, env=app.ray_env(settings)):
        # SIGTERM (and SIGINT where a non-interactive shell ignores it) stop the app like Ctrl-C; set
        # after ray.init, whose core worker installs its own SIGTERM handler (which aborts the process)
        signal.signal(signal.SIGTERM, _raise_interrupt)
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
            signal.signal(signal.SIGINT, _raise_interrupt)
        try:  # a stop signal while the app is still starting stops it the same way
            try:
                url = app.start({"checkpoint": str(found.local_dir)}, found.family_ref, found.family.name, settings)
            except (RuntimeError, TimeoutError) as exc:
                raise ServeError(str(exc), 1) from exc
            echo(f"serving {found.description} ({found.family.name}, {settings.ingress} ingress)\n"
                 f"  {url}  GET {url}/healthz  docs {url}/docs\nCtrl-C to stop")
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            echo("stopping")
        finally:
            app.shutdown()


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
