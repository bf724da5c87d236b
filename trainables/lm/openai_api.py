"""The OpenAI API as this server accepts it: the request bodies of ``/v1/completions`` and
``/v1/chat/completions`` (pydantic; a field it does not know is a 400 naming it) and OpenAI's error shape.
The endpoint that answers them: ``trainables.lm.serving``."""

# No `from __future__ import annotations`: FastAPI resolves the models' annotations.
from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from serve.inputs import SafeJSONResponse, Seed, Text

MAX_PROMPTS = 256  # prompts in one /v1/completions request (each answered like a request of its own)
MAX_TOP_LOGPROBS = 20  # alternatives per token (vLLM's limit; OpenAI's is 5 on completions, 20 on chat)


class _Strict(BaseModel):
    """A request part: a field this server does not know is a 400 naming it, never ignored."""

    model_config = ConfigDict(extra="forbid")


class TextPart(BaseModel):
    """One part of a message's ``content`` list; only text parts are understood (others: a 400 naming the
    part's ``type``, or the field a text part does not have)."""

    model_config = ConfigDict(extra="allow")

    type: Text
    text: Text | None = None


class Message(_Strict):
    role: Literal["system", "user", "assistant"]
    content: Text | list[TextPart]  # a list of text parts is joined with newlines (as vLLM does)


class StreamOptions(_Strict):
    include_usage: bool = False  # a last chunk with ``usage`` and no choices


class _Sampling(_Strict):
    model: Text | None = None
    # A temperature that is 0 in float32 (below about 1.4e-45) decodes greedily, as 0 does.
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)  # the likeliest token is always kept, however small top_p is
    stop: Text | list[Text] | None = None
    seed: Seed | None = None  # choice i of n is seeded with seed + i (modulo 2**64)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None  # only with ``stream: true``
    user: Text | None = None  # the client's end-user id: accepted, not used
    logit_bias: dict[Text, Any] | None = None  # only ``{}`` or null: no biasing


class CompletionRequest(_Sampling):
    """The body of ``POST /v1/completions`` (OpenAI's fields that this server honours).

    ``prompt``: a string, a list of strings, a list of token ids, or a list of token-id lists; each
    prompt gets ``n`` choices, numbered ``index = prompt * n + choice`` as OpenAI does.
    """

    prompt: Text | list[Text] | list[StrictInt] | list[list[StrictInt]]
    max_tokens: int = Field(16, ge=0)  # 0 only with ``echo``: score the prompt, generate nothing
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)  # OpenAI's legacy shape, top-k per token
    echo: bool = False  # the prompt before the completion, in the text and (with logprobs) the log-probs
    best_of: int | None = Field(None, ge=1)  # only null or equal to n
    suffix: Text | None = None  # only null or ""


class ChatRequest(_Sampling):
    """The body of ``POST /v1/chat/completions``."""

    messages: list[Message] = Field(..., min_length=1)
    max_tokens: int = Field(16, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # OpenAI's newer name for max_tokens
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)  # needs ``logprobs: true``
    response_format: dict[Text, Any] | None = None  # only ``{"type": "text"}``
    tools: list[Any] | None = None  # only null or []
    tool_choice: Text | dict[Text, Any] | None = None  # only null or "none"
    parallel_tool_calls: bool | None = None  # accepted: without tools it changes nothing
    store: bool | None = None  # only null or false: nothing is stored


class OpenAIError(Exception):
    """A request error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind

    def response(self) -> JSONResponse:
        return SafeJSONResponse(openai_error_body(self.status, self.message, self.param, self.kind),
                                status_code=self.status)


ERROR_TYPES = {404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error"}


def openai_error_body(status: int, message: str, param: str | None = None, kind: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    kind = kind or ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}
