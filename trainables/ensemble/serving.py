"""The Ensemble MoE's Serve endpoint (the family contract's ``endpoint``): routes, request limits,
and one batched forward pass. ``serve/`` wraps it in a Ray Serve deployment (batching,
autoscaling, ingress, checkpoint download); this module imports FastAPI and pydantic, not Ray.

Endpoints (under the route prefix, ``/ensemble`` by default):

- ``POST /predict`` ``{"texts": ["...", ...]}`` -> ``{"labels", "label_ids", "probabilities",
  "gate_weights" (one {expert: weight} per text), "experts", "batch_size"}``; ``batch_size`` is
  the number of requests the replica answered in the same batched forward pass.
- ``GET /healthz`` -> ``{"status": "ok", "experts", "replica", "ingress"}``.
- ``GET /docs`` (Swagger UI) and ``GET /openapi.json``.

Bad input is answered with a 4xx and a message; the replica keeps serving:

- malformed JSON, a body that is not an object, missing ``texts``, an empty list, a non-string
  item, a string that is not Unicode text (a lone surrogate, sent as a ``\ud800`` escape): 422
  (FastAPI/pydantic validation, ``detail`` says what and where, its ``input`` escaped to ASCII);
- a body that is not UTF-8, or JSON that Python cannot read (an integer of over 4,300 digits): 400;
- more than ``serve.max_texts_per_request`` texts, or a text longer than ``serve.max_text_chars``
  characters: 413. Long texts are *rejected*, not truncated; within that limit each expert
  truncates its own tokens to ``model.max_length``.
"""

# No `from __future__ import annotations`: FastAPI resolves the routes' annotations at definition.
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field

from serve.inputs import SafeJSONResponse, Text, validation_errors


class PredictRequest(BaseModel):
    """The body of ``POST /predict``."""

    texts: list[Text] = Field(..., min_length=1, description="Sentences to classify (at least one).",
                                   examples=[["a charming and often affecting journey", "unflinchingly bleak"]])


class PredictResponse(BaseModel):
    """Per text: the predicted label, class probabilities and each expert's gate weight."""

    labels: list[str]
    label_ids: list[int]
    probabilities: list[list[float]]  # (B, C), rows sum to 1
    gate_weights: list[dict[str, float]]  # (B,) of {expert name: weight}, each sums to 1
    experts: list[str]
    batch_size: int  # requests answered by the same batched forward pass


class EnsembleEndpoint:
    """One replica's model: the Ensemble MoE in eval mode, and its FastAPI routes."""

    def __init__(self, checkpoint_dir: Path, settings: Any) -> None:
        from trainables.ensemble.checkpoint import load_checkpoint, read_checkpoint_config

        self.settings = settings  # trainables.ensemble.family.EnsembleServe
        self.model = load_checkpoint(checkpoint_dir)
        self.label_names = read_checkpoint_config(checkpoint_dir)["label_names"]

    def predict_batch(self, requests: Sequence[list[str]]) -> list[PredictResponse]:
        """One forward pass over every text of the batched requests, split back per request."""
        flat = [text for texts in requests for text in texts]
        out = self.model.predict(flat)
        names, answers, start = self.model.expert_names, [], 0
        for texts in requests:
            rows = slice(start, start + len(texts))
            start += len(texts)
            ids = out["labels"][rows]
            answers.append(PredictResponse(
                labels=[self.label_names[i] for i in ids], label_ids=ids, probabilities=out["probabilities"][rows],
                gate_weights=[dict(zip(names, w, strict=True)) for w in out["gate_weights"][rows]],
                experts=names, batch_size=len(requests)))
        return answers

    def check_limits(self, request: PredictRequest) -> None:
        """413 if there are too many texts or one is too long (see the module docstring)."""
        limits = self.settings
        if len(request.texts) > limits.max_texts_per_request:
            raise HTTPException(413, f"texts: got {len(request.texts)} texts, expected at most "
                                     f"{limits.max_texts_per_request} per request")
        for i, text in enumerate(request.texts):
            if len(text) > limits.max_text_chars:
                raise HTTPException(413, f"texts[{i}]: got {len(text)} characters, expected at most "
                                         f"{limits.max_text_chars}")

    def asgi_app(self, batched: Callable[[Any], Awaitable[Any]], health: Callable[[], dict[str, Any]]) -> FastAPI:
        """The replica's routes; ``batched(texts)`` queues one request's texts for ``predict_batch``."""
        api = FastAPI(title="moe-orch Ensemble MoE",
                      description="Sentiment (SST-2) from a gate-weighted mixture of HF classifiers.")

        @api.exception_handler(RequestValidationError)
        async def invalid(_: Request, exc: RequestValidationError) -> SafeJSONResponse:
            """FastAPI's 422, whatever the input it echoes (a lone surrogate, a NaN)."""
            return SafeJSONResponse({"detail": validation_errors(exc.errors())}, status_code=422)

        @api.get("/healthz")
        async def healthz() -> dict[str, Any]:
            """Liveness: the replica is up and its model is loaded."""
            return {"status": "ok", "experts": self.model.expert_names, **health()}

        @api.post("/predict", response_model=PredictResponse)
        async def predict(request: PredictRequest) -> PredictResponse:
            """Classify ``texts``; 413 if there are too many or one is too long."""
            self.check_limits(request)
            return await batched(list(request.texts))

        return api
