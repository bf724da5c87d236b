"""Run a command (the test suite) with CPU-bound processes beside it, as on a user's busy laptop.

    python tests/under_load.py [--hogs 2] [--max-s 7200] -- python -m pytest

Each hog is a Python busy loop in its own process, at normal priority, that ends by itself after
``--max-s`` seconds; all of them are stopped by pid when the command ends. Exits with the
command's exit code. ``make test-under-load`` runs the suite this way.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

HOG = "import time\nend = time.monotonic() + {max_s}\nwhile time.monotonic() < end:\n    pass\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hogs", type=int, default=2, help="CPU-bound processes to run beside the command")
    parser.add_argument("--max-s", type=float, default=7200, help="each hog stops by itself after this long")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given (put it after --)")
    hogs = [subprocess.Popen([sys.executable, "-c", HOG.format(max_s=args.max_s)]) for _ in range(args.hogs)]
    print(f"under load: {args.hogs} CPU-bound processes (pids {', '.join(str(h.pid) for h in hogs)}) "
          f"beside `{' '.join(command)}`", flush=True)
    started = time.time()
    try:
        code = subprocess.call(command)
    finally:
        for hog in hogs:
            if hog.poll() is None:
                os.kill(hog.pid, signal.SIGKILL)
            hog.wait()
    print(f"under load: the command took {time.time() - started:.0f} s, exit code {code}; "
          f"load average now {os.getloadavg()[0]:.1f}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
