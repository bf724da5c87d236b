"""What every family on a pretrained causal LM declares alike: the ``base`` field and the ``serve:``
section (``trainables.lm.serving.LMEndpoint``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.contract import WEIGHTS, ServeSection
from orchestrator.schema import override, setting

WEIGHTS_DOC = ("the frozen base's linear layers: fp32, int8 or int4 (8- or 4-bit weights on CPU; adapters stay "
               "float)")


def base_model_setting(default: str = "tiny-llama") -> Any:
    """The ``base:`` field of a family on a pretrained causal LM (a ``trainables.lm.load_base`` name)."""
    return setting(default, nonempty=True, expect="smollm2-135m-instruct, tiny-llama, a hub name or a dir",
                   doc="the frozen base: smollm2-135m-instruct | tiny-llama | a hub name | a local directory")


@dataclass
class LMServe(ServeSection):
    """Serving an LM checkpoint over OpenAI's API: the shared Serve settings plus request limits.

    ``max_batch_size`` is the number of sequences the engine decodes together (continuous batching).
    ``weights: int8`` / ``int4`` serves the frozen base's linear layers as 8- / 4-bit weights
    (``trainables.lm.quantize``).
    ``num_gpus_per_replica`` > 0 puts each replica's model on its GPU in bfloat16 (``trainables.lm.base.to_device``).
    """

    max_batch_size: int = override(ServeSection, "max_batch_size", 16)
    max_ongoing_requests: int | None = setting(64, doc="requests a replica accepts at once (the rest queue at the "
                                                       "proxy)")
    max_tokens_limit: int = setting(512, ge=1, doc="a request asking for more gets 400")
    max_prompt_tokens: int = setting(2048, ge=1, doc="a longer prompt gets 400")
    max_n: int = setting(4, ge=1, doc="choices per request")
    weights: str = setting("fp32", one_of=WEIGHTS, doc=WEIGHTS_DOC)

    def cross_checks(self) -> list[str]:
        errors = super().cross_checks()
        if self.weights != "fp32" and self.num_gpus_per_replica > 0:
            errors.append(f"weights: got {self.weights!r}, expected 'fp32' with serve.num_gpus_per_replica > 0 "
                          f"({self.weights} weights run on CPU)")
        return errors
