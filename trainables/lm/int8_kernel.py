"""Our CPU matmul for int8 weights at decode (``kernels/int8_matmul.cpp``), built once per machine.

Why: torch's weight-only int8 kernel (``torch._weight_int8pack_mm``) streamed SmolLM2's int8 weights
at about 11 GB/s on this project's 2-core VM, where llama.cpp's own 8-bit format decoded faster than
its 4-bit one: the int8 decode was bound by the kernel, not by memory. Ours widens each int8 weight to
float32 in registers (AVX-512, else AVX2 + FMA, else plain C++) and streams a weight row once for up
to four rows of activations, which stay float32 (torch's kernel takes them in bfloat16). It is for
the few rows of a decode step: ``Int8Linear`` (``trainables.lm.quantize``) calls it up to
``KERNEL_MAX_ROWS`` rows and torch's kernel above (prefill, lm-eval batches), where torch's is faster.

``int8_matmul()`` returns the op, ``(x (M, K) float32, w (N, K) int8, scale (N,) float32) -> (M, N)
float32``, or None where it cannot be had; the callers then use torch's kernel. The first call on a
machine compiles it with ``-march=native`` (about 10-20 s: torch's C++ headers) into
``$MOE_ORCH_KERNEL_CACHE`` (default ``~/.cache/moe-orch/kernels``), under a name that hashes the source,
the flags, torch's version and the CPU's features, so a shared home on unlike machines keeps one
build each; later calls, in any process, load that file. Each process builds in a directory of its
own and moves the result into place atomically, so processes that start together (Ray workers, Serve
replicas) never wait on each other's lock.

``MOE_ORCH_INT8_KERNEL=torch`` turns it off (torch's kernel everywhere), e.g. to compare the two.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("kernels") / "int8_matmul.cpp"
CFLAGS = ("-O3", "-march=native", "-fopenmp")  # -fopenmp: at::parallel_for runs on torch's OpenMP threads
KERNEL_MAX_ROWS = 8  # rows (tokens) up to which Int8Linear calls ours; torch's above (docs/benchmarks.md)
KERNEL_ENV = "MOE_ORCH_INT8_KERNEL"  # "torch": never ours

Int8Matmul = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def kernel_cache() -> Path:
    """Where built kernels live: ``$MOE_ORCH_KERNEL_CACHE`` or ``~/.cache/moe-orch/kernels``."""
    env = os.environ.get("MOE_ORCH_KERNEL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "moe-orch" / "kernels"


def _cpu_features() -> str:
    """The CPU's feature flags (Linux), else the platform's processor name: what -march=native reads."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _build_name() -> str:
    digest = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join(CFLAGS).encode(), torch.__version__.encode(),
                 platform.machine().encode(), _cpu_features().encode()):
        digest.update(part)
    return f"moe_orch_int8_{digest.hexdigest()[:16]}"


@functools.cache
def int8_matmul() -> Int8Matmul | None:
    """The op (module docstring), built or loaded once per process; None where it is turned off
    (``MOE_ORCH_INT8_KERNEL=torch``) or cannot be built here (no C++ compiler, say): logged once."""
    if os.environ.get(KERNEL_ENV, "").lower() == "torch":
        return None
    name = _build_name()
    built = kernel_cache() / f"{name}.so"
    try:
        if built.exists():
            torch.ops.load_library(str(built))
        else:
            _build(name, built)
        op = torch.ops.moe_orch.int8_matmul
        _check(op)
    except Exception as error:  # a missing compiler, a failed build or load: torch's kernel instead
        log.warning("int8: our CPU kernel is not available (%s: %s); using torch's _weight_int8pack_mm",
                    type(error).__name__, str(error).splitlines()[0] if str(error) else "")
        return None
    return op


def _build(name: str, target: Path) -> None:
    """Compile ``SOURCE`` in a directory of this process's own, load it, then move it to ``target``."""
    from torch.utils.cpp_extension import load  # imports setuptools: only when a build is needed

    log.info("int8: building our CPU kernel (once per machine) into %s", target.parent)
    with tempfile.TemporaryDirectory(prefix="moe-orch-int8-") as build_dir:
        load(name=name, sources=[str(SOURCE)], extra_cflags=list(CFLAGS), build_directory=build_dir,
             is_python_module=False, verbose=False)  # loads the library into this process too
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
        shutil.copyfile(Path(build_dir) / f"{name}.so", partial)
        os.replace(partial, target)  # atomic: another process sees the whole file or none


def _check(op: Int8Matmul) -> None:
    """One small product against the dequantized weight's: a build that computes wrong is not used."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 45, generator=generator)  # 45: the vector loop and the tail
    w = torch.randint(-127, 128, (5, 45), dtype=torch.int8, generator=generator)
    scale = torch.rand(5, generator=generator) / 127
    expected = x.double() @ (w.double() * scale.double()[:, None]).T
    if not torch.allclose(op(x, w, scale).double(), expected, rtol=1e-4, atol=1e-4):
        raise RuntimeError("the built kernel disagrees with the dequantized matmul")
