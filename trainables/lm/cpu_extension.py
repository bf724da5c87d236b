"""Our CPU kernels (C++ torch ops, one source file each), built once per machine and cached.

The kernels: ``int8_matmul`` (int8 weights at decode, ``trainables/lm/int8_kernel.py``) and
``mixlora_one_token`` (MixLoRA's routed experts for one token, ``trainables/mixlora/one_token_kernel.py``).
Each is for the few rows of a decode step on the CPU, where a dozen small torch ops, or torch's own
kernel, cost more than the bytes they read; each caller falls back to plain torch where its kernel
is not available.

``load_cpu_extension(name, source, namespace)`` compiles ``source`` with ``-O3 -march=native -fopenmp``
the first time on a machine (about 10-20 s: torch's C++ headers) into ``$MOE_ORCH_KERNEL_CACHE``
(default ``~/.cache/moe-orch/kernels``), under a name that hashes the source, the flags, torch's version
and the CPU's features, so a shared home on unlike machines keeps one build each; later calls, in any
process, load that file. Each process builds in a directory of its own and moves the result into place
atomically, so processes that start together (Ray workers, Serve replicas) never wait on each other's
lock. ``-fopenmp``: ``at::parallel_for`` then runs on torch's own OpenMP threads.

``MOE_ORCH_KERNELS_OFF`` turns kernels off (plain torch instead), by name (``int8_matmul``,
``mixlora_one_token``, comma-separated) or ``all``: to compare, or to rule a kernel out.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

CFLAGS = ("-O3", "-march=native", "-fopenmp")
KERNELS_OFF_ENV = "MOE_ORCH_KERNELS_OFF"


def kernel_cache() -> Path:
    """Where built kernels live: ``$MOE_ORCH_KERNEL_CACHE`` or ``~/.cache/moe-orch/kernels``."""
    env = os.environ.get("MOE_ORCH_KERNEL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "moe-orch" / "kernels"


def turned_off(name: str) -> bool:
    """Whether ``MOE_ORCH_KERNELS_OFF`` names kernel ``name`` (or says ``all``)."""
    off = {part.strip().lower() for part in os.environ.get(KERNELS_OFF_ENV, "").split(",")}
    return "all" in off or name.lower() in off


def load_cpu_extension(name: str, source: Path, namespace: str) -> Any | None:
    """The torch ops namespace ``namespace`` (``torch.ops.<namespace>``) that ``source`` registers, built
    or loaded (module docstring); None where kernel ``name`` is turned off or cannot be had here (no
    C++ compiler, say: logged as a warning). Call it once per process (cache the result): a library's
    ops can be registered only once."""
    if turned_off(name):
        return None
    built = kernel_cache() / f"{_build_name(name, source)}.so"
    try:
        if built.exists():
            torch.ops.load_library(str(built))
        else:
            _build(built, source)
        return getattr(torch.ops, namespace)
    except Exception as error:  # a missing compiler, a failed build or load: plain torch instead
        log.warning("%s: our CPU kernel is not available (%s: %s); using plain torch", name,
                    type(error).__name__, str(error).splitlines()[0] if str(error) else "")
        return None


def _cpu_features() -> str:
    """The CPU's feature flags (Linux), else the platform's processor name: what -march=native reads."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _build_name(name: str, source: Path) -> str:
    digest = hashlib.sha256()
    for part in (source.read_bytes(), " ".join(CFLAGS).encode(), torch.__version__.encode(),
                 platform.machine().encode(), _cpu_features().encode()):
        digest.update(part)
    return f"moe_orch_{name}_{digest.hexdigest()[:16]}"


def _put_ninja_on_path() -> None:
    """torch's build runs ``ninja`` from PATH; the lock installs it (the ``ninja`` package) beside this
    Python, which is not on PATH when the venv is not activated (``.venv/bin/moe-orch serve ...``)."""
    if shutil.which("ninja") is None:
        with contextlib.suppress(ImportError):
            import ninja

            os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, os.environ.get("PATH", "")])


def _build(target: Path, source: Path) -> None:
    """Compile ``source`` in a directory of this process's own, load it, then move it to ``target``."""
    from torch.utils.cpp_extension import load  # imports setuptools: only when a build is needed

    # a warning, not info: no moe-orch command turns info on, and the user should know what the pause is
    log.warning("%s: building our CPU kernel (once per machine, 10-20 s) into %s", source.name, target.parent)
    _put_ninja_on_path()
    with tempfile.TemporaryDirectory(prefix="moe-orch-kernel-") as build_dir:
        load(name=target.stem, sources=[str(source)], extra_cflags=list(CFLAGS), build_directory=build_dir,
             is_python_module=False, verbose=False)  # loads the library into this process too
        partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(build_dir) / f"{target.stem}.so", partial)
            os.replace(partial, target)  # atomic: another process sees the whole file or none
        except OSError as error:  # a read-only cache: this process keeps the kernel, the next one builds again
            log.warning("%s: built, but not cached (%s); set MOE_ORCH_KERNEL_CACHE to a writable folder",
                        source.name, error)
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
