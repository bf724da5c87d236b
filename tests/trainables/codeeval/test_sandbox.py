"""The code-execution sandbox: real child processes, real files, no mocks."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from trainables.codeeval.sandbox import SandboxResult, network_isolated, run_many, run_program

SLACK_S = 20.0  # timing assertions only bound runaway waits; they never depend on exact timing


def _alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (dead, waiting for its reaper) is not alive."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def _live_members(pgid: int) -> list[int]:
    """Pids of the running (non-zombie) processes of group ``pgid``, from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "(comm)": state, ppid, pgrp, ...
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(stat.parent.name))
    return members


def _wait_group_gone(pgid: int, within_s: float = 10.0) -> bool:
    """True once ``os.killpg(pgid, 0)`` raises ProcessLookupError (polled for ``within_s``).

    Killed orphans are reaped by pid 1, which may take a moment; if only such zombies remain
    at the deadline, no process of the group is running and that counts as gone too.
    """
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return not _live_members(pgid)


def test_exit_code_decides_status() -> None:
    ok = run_program("print('hello')\n")
    assert isinstance(ok, SandboxResult)
    assert (ok.passed, ok.status, ok.returncode) == (True, "passed", 0)
    assert ok.stdout_tail == "hello\n"
    bad = run_program("assert 1 + 1 == 3\n")
    assert (bad.passed, bad.status, bad.returncode) == (False, "failed", 1)
    assert "AssertionError" in bad.stderr_tail


def test_syntax_error_is_a_failure_not_an_exception() -> None:
    result = run_program("def f(:\n    return 1\n")
    assert result.status == "failed" and not result.passed
    assert "SyntaxError" in result.stderr_tail


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    program = f"""
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
grandchild = os.fork()
if grandchild == 0:
    time.sleep(60)
    os._exit(0)
with open({str(pids)!r}, "w") as f:
    f.write(f"{{os.getpgid(0)}} {{os.getpid()}} {{child.pid}} {{grandchild}}")
time.sleep(60)
"""
    start = time.monotonic()
    result = run_program(program, timeout_s=2.0)
    assert time.monotonic() - start < 2.0 + SLACK_S
    assert result.status == "timeout" and not result.passed
    pgid, leader, *children = (int(x) for x in pids.read_text().split())
    assert pgid == leader  # its own session: the program leads a new process group
    assert pgid != os.getpgid(0)
    assert _wait_group_gone(pgid), f"still running after the timeout: {_live_members(pgid)}"
    assert not any(_alive(pid) for pid in children)


def test_children_do_not_outlive_a_normal_exit(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    program = f"""
import os, subprocess, sys
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], stdout=subprocess.DEVNULL)
open({str(pids)!r}, "w").write(f"{{os.getpgid(0)}} {{child.pid}}")
"""
    result = run_program(program, timeout_s=10.0)
    assert result.passed
    pgid, _child = (int(x) for x in pids.read_text().split())
    assert _wait_group_gone(pgid)


def test_memory_limit_gives_memory_error_not_a_crash() -> None:
    result = run_program("block = bytearray(4 * 1024**3)\nprint(len(block))\n", memory_mb=256)
    assert result.status == "failed" and not result.passed
    assert "MemoryError" in result.stderr_tail


def test_cpu_limit_stops_a_busy_loop() -> None:
    start = time.monotonic()
    result = run_program("while True:\n    pass\n", timeout_s=30.0, cpu_s=1)
    assert result.status == "timeout"
    assert time.monotonic() - start < 30.0  # stopped by RLIMIT_CPU, not by the wall clock


def test_empty_environment_and_temporary_cwd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOE_ORCH_SANDBOX_MARKER", "leaked")
    program = (
        "import os, sys\n"
        "print(os.environ.get('MOE_ORCH_SANDBOX_MARKER'), os.environ.get('PATH'))\n"
        "print(os.getcwd())\n"
        "print(sorted(os.listdir('.')))\n"
        "print(sys.flags.isolated, sys.flags.dont_write_bytecode)\n"
    )
    result = run_program(program)
    assert result.passed, result.stderr_tail
    marker, cwd, listing, flags = result.stdout_tail.splitlines()
    assert marker == "None None"
    assert Path(cwd).name.startswith("moe-orch-sandbox-")
    assert Path(cwd) != Path.cwd()
    assert listing == "['program.py']"
    assert flags == "1 1"
    assert not Path(cwd).exists()  # deleted afterwards


@pytest.mark.skipif(not network_isolated(), reason="'unshare -n' does not work here (needs root/CAP_SYS_ADMIN)")
def test_no_network_inside_the_sandbox() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        probe = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).close()\n"
        socket.create_connection(("127.0.0.1", port), timeout=2).close()  # reachable from here
        result = run_program(probe, timeout_s=10.0)
    assert result.status == "failed", result
    assert "Error" in result.stderr_tail  # OSError: network unreachable in the empty namespace
    assert result.network_isolated


def test_output_is_bounded() -> None:
    result = run_program("import sys\nfor _ in range(2000):\n    sys.stdout.write('x' * 10000)\nprint('END')\n")
    assert result.passed
    assert result.stdout_tail.endswith("END\n")
    assert len(result.stdout_tail) <= 500


def test_run_many_preserves_order() -> None:
    sources = [f"raise SystemExit({i % 2})" for i in range(6)]
    results = run_many(sources, workers=2, timeout_s=10.0)
    assert [r.returncode for r in results] == [0, 1, 0, 1, 0, 1]
    assert [r.passed for r in results] == [True, False] * 3
    assert run_many([]) == []
