"""MixLoRA's routed experts for one token in one C++ call (``kernels/one_token.cpp``; built and cached by
``trainables.lm.cpu_extension``, ``MOE_ORCH_KERNELS_OFF=mixlora_one_token`` turns it off).

Why: decoding one sequence on the CPU, the routed FFN's LoRA half was a dozen small torch ops a layer
(the router's matmul, top-k and softmax, four batched matmuls through the chosen experts' factors, the
activation, sums), about 200 us a SmolLM2 layer with 2 threads, for 0.4 MB of factors. The kernel
routes as ``TopKRouter.choose`` does and reads the chosen experts' factors once on one thread; the
frozen gate|up and down projections stay the base's kernels (int8, int4 or float32).
``MixLoRAFFN._serve`` calls it (``one_token_op``) for one float32 token on the CPU with a SiLU FFN
and stacked frozen gate|up; any other input takes the torch path.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from trainables.lm.cpu_extension import load_cpu_extension

SOURCE = Path(__file__).with_name("kernels") / "one_token.cpp"


@functools.cache
def one_token_op() -> Any | None:
    """``one_token(x (1, D), gate_up (1, 2H), router_weight (E, D), rows (E, W), top_k, renormalize, rank)
    -> mixed (1, H), lora (1, D), logits (1, E), weights (1, k), indices (1, k)`` (kernels/one_token.cpp),
    or None where it is turned off or cannot be built here."""
    ops = load_cpu_extension("mixlora_one_token", SOURCE, "moe_orch_mixlora")
    return None if ops is None else ops.one_token
