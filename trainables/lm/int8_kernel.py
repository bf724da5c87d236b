"""Our CPU matmul for int8 weights at decode (``kernels/int8_matmul.cpp``; built and cached by
``trainables.lm.cpu_extension``).

Why: torch's weight-only int8 kernel (``torch._weight_int8pack_mm``) streamed SmolLM2's int8 weights
at about 11 GB/s on this project's 2-core VM, where llama.cpp's own 8-bit format decoded faster than
its 4-bit one: the int8 decode was bound by the kernel, not by memory (a float32 sum read 24 GB/s).
Ours widens each int8 weight to float32 in registers (AVX-512, else AVX2 + FMA, else plain C++) and
streams a weight row once for up to four rows of activations, which stay float32 (torch's kernel
takes them in bfloat16). Over a SmolLM2 step's 210 projections at one row: 7.2 against 11.1 ms
(docs/benchmarks.md). It is for the few rows of a decode step: ``Int8Linear``
(``trainables.lm.quantize``) calls it up to ``KERNEL_MAX_ROWS`` rows and torch's kernel above (prefill,
lm-eval batches), where torch's is faster (at 16 rows 39.5 against 36.2 ms).

``int8_matmul()`` returns the op, ``(x (M, K) float32, w (N, K) int8, scale (N,) float32) -> (M, N)
float32``, or None where it cannot be had (``MOE_ORCH_KERNELS_OFF=int8_matmul`` turns it off); the
callers then use torch's kernel.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import torch

from trainables.lm.cpu_extension import load_cpu_extension

SOURCE = Path(__file__).with_name("kernels") / "int8_matmul.cpp"
KERNEL_MAX_ROWS = 8  # rows (tokens) up to which Int8Linear calls ours; torch's above (docs/benchmarks.md)

Int8Matmul = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@functools.cache
def int8_matmul() -> Int8Matmul | None:
    """The op (module docstring), built or loaded once per process; None where it is turned off or
    cannot be built here (logged once). A build that computes wrong is not used."""
    ops = load_cpu_extension("int8_matmul", SOURCE, "moe_orch_lm")
    if ops is None:
        return None
    op = ops.int8_matmul
    generator = torch.Generator().manual_seed(0)  # one small product against the dequantized weight's
    x = torch.randn(3, 45, generator=generator)  # 45: the vector loop and the tail
    w = torch.randint(-127, 128, (5, 45), dtype=torch.int8, generator=generator)
    scale = torch.rand(5, generator=generator) / 127
    expected = x.double() @ (w.double() * scale.double()[:, None]).T
    if not torch.allclose(op(x, w, scale).double(), expected, rtol=1e-4, atol=1e-4):
        raise RuntimeError("int8_matmul: the built kernel disagrees with the dequantized matmul")
    return op
