"""The ``serve:`` section every LM family shares (``trainables.lm.serving.LMEndpoint``)."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.contract import ServeSection
from orchestrator.schema import fmt


@dataclass
class LMServe(ServeSection):
    """Serving an LM checkpoint over OpenAI's API: the shared Serve settings plus request limits.

    ``max_batch_size`` is the number of sequences the engine decodes together (continuous batching).
    """

    max_batch_size: int = 16
    max_ongoing_requests: int | None = 64  # requests a replica accepts at once (the rest queue at the proxy)
    target_ongoing_requests: float = 16.0
    max_tokens_limit: int = 512  # a request asking for more gets 400
    max_prompt_tokens: int = 2048  # a longer prompt gets 400
    max_n: int = 4  # choices per request

    def errors(self) -> list[str]:
        errors = super().errors()
        for key in ("max_tokens_limit", "max_prompt_tokens", "max_n"):
            if not getattr(self, key) >= 1:
                errors.append(f"{key}: got {fmt(getattr(self, key))}, expected >= 1")
        return errors
