"""Run untrusted, model-generated Python programs and report whether they exit cleanly.

Code-generation benchmarks (MBPP, HumanEval) execute whatever the model wrote, so every
program runs in a separate, constrained process:

- **fresh working directory**: the program is written to ``program.py`` in a new temporary
  directory, which is its cwd and is deleted afterwards;
- **clean interpreter**: ``sys.executable -I -B program.py`` (isolated mode: no user site,
  no ``PYTHON*`` variables, script dir not trusted; no ``.pyc`` files) with an **empty
  environment** (``env={}``) and stdin from ``/dev/null``;
- **resource limits**, set in the child by ``preexec_fn`` before ``exec``: ``RLIMIT_AS``
  (address space, ``memory_mb``), ``RLIMIT_CPU`` (``cpu_s``; the kernel sends SIGXCPU, then
  SIGKILL one second later), ``RLIMIT_FSIZE`` (16 MB per written file) and ``RLIMIT_CORE`` 0.
  The limits are inherited by everything the program spawns. ``preexec_fn`` only calls
  ``resource.setrlimit`` (imported at module load), which keeps the fork-then-run-Python
  window free of imports and locks, so it is safe from ``run_many``'s worker threads;
- **own session / process group** (``start_new_session=True``): on the wall-clock timeout,
  and also after a normal exit, the whole group is killed with ``os.killpg(pgid, SIGKILL)``,
  so children the program forked or spawned cannot outlive it. The leader is observed with
  ``waitid(..., WNOWAIT)`` and only reaped after the group kill, so its pid (= the pgid)
  cannot be recycled in between;
- **no network**: the command is prefixed with ``unshare -n`` (a new, empty network
  namespace: not even loopback is up) when that works on this machine, which needs root or
  ``CAP_SYS_ADMIN``. ``network_isolated()`` tells (probed once, cached); without it the
  program still runs, a warning is logged once and every ``SandboxResult`` says
  ``network_isolated=False``;
- **bounded output**: stdout and stderr are drained continuously (a chatty program never
  blocks on a full pipe) but only the last 64 KB of each are kept.

Not covered: the program runs as the calling user (root here) and sees the real file
system, so it can read or write files outside its directory; the process count is not
limited (``RLIMIT_NPROC`` does not bind root). This guards against accidents of a
small model's code (infinite loops, huge allocations, stray processes, network calls),
not against a deliberate attacker.

Status: ``"passed"`` (exit code 0), ``"failed"`` (non-zero exit, including a SyntaxError,
an uncaught exception, a MemoryError, or death by a signal other than the CPU limit),
``"timeout"`` (wall-clock timeout, or killed by the CPU-time limit), ``"error"`` (the
sandbox itself could not run the program, e.g. the source could not be written).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PROGRAM_FILE = "program.py"
OUTPUT_LIMIT = 64 * 1024  # bytes of stdout / stderr kept (the tail)
TAIL_CHARS = 500  # characters of stderr / stdout reported in the result
FSIZE_LIMIT = 16 * 1024 * 1024  # bytes per file the program writes
DRAIN_GRACE_S = 1.0  # after the group kill: how long to wait for the pipes to close
_POLL_S = 0.05

STATUSES = ("passed", "failed", "timeout", "error")


@dataclass(frozen=True)
class SandboxResult:
    """The outcome of one sandboxed program.

    Attributes:
        passed: the program exited with code 0.
        status: "passed", "failed", "timeout" or "error" (see the module docstring).
        returncode: the exit code (negative: killed by that signal); None if it never ran.
        stderr_tail: the last ~500 characters of stderr (or the sandbox's own error).
        seconds: wall-clock time of the run.
        stdout_tail: the last ~500 characters of stdout.
        network_isolated: the program ran in an empty network namespace (``unshare -n``).
    """

    passed: bool
    status: str
    returncode: int | None
    stderr_tail: str
    seconds: float
    stdout_tail: str = ""
    network_isolated: bool = False


@functools.cache
def _unshare_path() -> str | None:
    """Absolute path of ``unshare`` if ``unshare -n`` works here (probed once), else None."""
    exe = shutil.which("unshare")
    if exe is None:
        return None
    try:
        probe = subprocess.run(
            [exe, "-n", sys.executable, "-I", "-c", "pass"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return exe if probe.returncode == 0 else None


def network_isolated() -> bool:
    """True when sandboxed programs run without network (``unshare -n`` works on this machine).

    Probed once per process and cached. When False, a warning is logged the first time.
    """
    isolated = _unshare_path() is not None
    if not isolated:
        _warn_no_network()
    return isolated


@functools.cache
def _warn_no_network() -> None:
    log.warning("sandbox: 'unshare -n' is unavailable, generated programs run WITH network access")


def _limits(memory_mb: int, cpu_s: int) -> Callable[[], None]:
    """The ``preexec_fn``: rlimits for the child (runs after fork, before exec; no imports)."""
    memory = memory_mb * 1024 * 1024

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE_LIMIT, FSIZE_LIMIT))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def _tail(data: bytes | bytearray) -> str:
    return bytes(data).decode("utf-8", errors="replace")[-TAIL_CHARS:]


def _exited(pid: int) -> bool:
    """True once ``pid`` has exited; the zombie is NOT reaped (its pid/pgid stays reserved)."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _supervise(proc: subprocess.Popen[bytes], timeout_s: float) -> tuple[bool, bytes, bytes]:
    """Drain the pipes until the program exits or times out; kill its group either way.

    Returns ``(timed_out, stdout_tail, stderr_tail)`` with at most ``OUTPUT_LIMIT`` bytes each.
    """
    assert proc.stdout is not None and proc.stderr is not None
    buffers = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    selector = selectors.DefaultSelector()
    for fd in buffers:
        os.set_blocking(fd, False)
        selector.register(fd, selectors.EVENT_READ)

    def drain(wait_s: float) -> None:
        for key, _ in selector.select(timeout=wait_s):
            try:
                chunk = os.read(key.fd, OUTPUT_LIMIT)
            except BlockingIOError:
                continue
            if not chunk:  # EOF: every writer of this pipe is gone
                selector.unregister(key.fd)
                continue
            buf = buffers[key.fd]
            buf += chunk
            del buf[:-OUTPUT_LIMIT]

    deadline = time.monotonic() + timeout_s
    timed_out = False
    while not _exited(proc.pid):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            timed_out = True
            break
        if selector.get_map():
            drain(min(remaining, _POLL_S))
        else:
            time.sleep(min(remaining, _POLL_S))
    # The leader has exited (not yet reaped) or timed out: kill what is left of its group.
    _kill_group(proc.pid)
    grace = time.monotonic() + DRAIN_GRACE_S
    while selector.get_map() and time.monotonic() < grace:
        drain(_POLL_S)
    selector.close()
    proc.wait()
    return timed_out, bytes(buffers[proc.stdout.fileno()]), bytes(buffers[proc.stderr.fileno()])


def _status(returncode: int, timed_out: bool) -> str:
    if timed_out or returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        return "timeout"  # wall clock, or the CPU-time limit (SIGXCPU, then SIGKILL)
    return "passed" if returncode == 0 else "failed"


def run_program(source: str, timeout_s: float = 10.0, memory_mb: int = 1024, cpu_s: int = 10) -> SandboxResult:
    """Run the Python program ``source`` in the sandbox (see the module docstring); never raises.

    Args:
        source: the whole program; it passes when it exits with code 0.
        timeout_s: wall-clock limit; then the process group is killed (status "timeout").
        memory_mb: address-space limit (``RLIMIT_AS``); a larger allocation raises MemoryError.
        cpu_s: CPU-time limit (``RLIMIT_CPU``).
    Returns:
        A ``SandboxResult``.
    """
    start = time.monotonic()
    unshare = _unshare_path()
    isolated = network_isolated()

    def error(message: str) -> SandboxResult:
        return SandboxResult(False, "error", None, message[-TAIL_CHARS:], time.monotonic() - start, "", isolated)

    try:
        with tempfile.TemporaryDirectory(prefix="moe-orch-sandbox-") as workdir:
            Path(workdir, PROGRAM_FILE).write_text(source, encoding="utf-8", errors="surrogateescape")
            command = [sys.executable, "-I", "-B", PROGRAM_FILE]
            if unshare is not None:
                command = [unshare, "-n", *command]
            proc = subprocess.Popen(
                command,
                cwd=workdir,
                env={},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                preexec_fn=_limits(memory_mb, cpu_s),
                close_fds=True,
            )
            try:
                timed_out, out, err = _supervise(proc, timeout_s)
            finally:
                if proc.returncode is None:  # _supervise failed: the leader is not reaped, its pgid is ours
                    _kill_group(proc.pid)
                    proc.wait()
                proc.stdout.close()  # type: ignore[union-attr]
                proc.stderr.close()  # type: ignore[union-attr]
    except Exception as exc:  # a bad program or a full disk must not crash the evaluation
        return error(f"sandbox error: {type(exc).__name__}: {exc}")
    status = _status(proc.returncode, timed_out)
    return SandboxResult(
        passed=status == "passed",
        status=status,
        returncode=proc.returncode,
        stderr_tail=_tail(err),
        seconds=time.monotonic() - start,
        stdout_tail=_tail(out),
        network_isolated=isolated,
    )


def run_many(sources: list[str], workers: int = 2, **limits: float) -> list[SandboxResult]:
    """Run each program with ``run_program(source, **limits)``, ``workers`` at a time; order preserved.

    Args:
        sources: programs to run.
        workers: concurrent sandboxes (threads, each supervising one child process).
        **limits: ``timeout_s``, ``memory_mb``, ``cpu_s`` for every program.
    """
    if not sources:
        return []
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="sandbox") as pool:
        return list(pool.map(lambda src: run_program(src, **limits), sources))  # type: ignore[arg-type]
