"""Ray Serve application for Ensemble MoE checkpoints: FastAPI ingress, dynamic batching, autoscaling.

Endpoints (under the route prefix, ``/ensemble`` by default):

- ``POST /predict`` ``{"texts": ["...", ...]}`` -> ``{"labels", "label_ids", "probabilities",
  "gate_weights" (one {expert: weight} per text), "experts", "batch_size"}``; ``batch_size`` is
  the number of requests the replica answered in the same ``@serve.batch`` call.
- ``GET /healthz`` -> ``{"status": "ok", "experts", "replica", "ingress"}``.
- ``GET /docs`` (Swagger UI) and ``GET /openapi.json``.

Bad input is answered with a 4xx and a message; the replica keeps serving:

- malformed JSON, a body that is not an object, missing ``texts``, an empty list, a non-string
  item: 422 (FastAPI/pydantic validation, ``detail`` says what and where);
- more than ``serve.max_texts_per_request`` texts, or a text longer than ``serve.max_text_chars``
  characters: 413. Long texts are *rejected*, not truncated; within that limit each expert
  truncates its own tokens to ``model.max_length``.

Scaling: requests are grouped by ``@serve.batch`` (``max_batch_size`` requests, waiting at most
``batch_wait_timeout_s``) into one forward pass; ``max_ongoing_requests`` is at least the batch
size; ``autoscaling_config`` (min/max replicas, target ongoing requests) comes from the
experiment's ``serve:`` section (``orchestrator.config.ServeSection``), which every checkpoint
written by ``moe-orch train`` also carries in its metadata.

Ingress (``serve.ingress``): ``proxy`` (default) puts Ray's HTTP proxy in front of the replicas,
so autoscaling works behind one port. ``direct`` uses Ray Serve's direct ingress: the one replica
runs its own HTTP server on ``host:port``, which saves the proxy hop and the replica's call back
to the proxy for each request body (Ray still starts its proxy on the head node; it gets
``port + 1``). Ray reads that switch from the environment of its controller and replicas, so it
must be set before Ray starts (``ray_env``; ``moe-orch serve`` does it for the local Ray it
starts, a cluster sets it in ``ray start``'s environment), and ``start`` checks that the replica
really answers directly.

The model is read from a checkpoint directory, or downloaded by each replica from an MLflow
run's ``checkpoint`` artifact (``{"run_id", "tracking_uri"}``), so the same application works
with ``serve deploy`` on a cluster (``emit_config`` writes that file).
"""

# No `from __future__ import annotations` here: FastAPI resolves the route annotations of the
# ingress class inside the replica, where string annotations would not resolve (pydantic ForwardRef).
import asyncio
import dataclasses
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field, StrictStr
from ray import serve
from ray.serve import Application

from orchestrator.config import ServeSection, check_serve

APP_NAME = "ensemble"
DEPLOYMENT_NAME = "EnsembleClassifier"
IMPORT_PATH = "serve.ensemble:app_builder"

api = FastAPI(title="moe-orch Ensemble MoE",
              description="Sentiment (SST-2) from a gate-weighted mixture of HF classifiers.")


class PredictRequest(BaseModel):
    """The body of ``POST /predict``."""

    texts: list[StrictStr] = Field(..., min_length=1, description="Sentences to classify (at least one).",
                                   examples=[["a charming and often affecting journey", "unflinchingly bleak"]])


class PredictResponse(BaseModel):
    """Per text: the predicted label, class probabilities and each expert's gate weight."""

    labels: list[str]
    label_ids: list[int]
    probabilities: list[list[float]]  # (B, C), rows sum to 1
    gate_weights: list[dict[str, float]]  # (B,) of {expert name: weight}, each sums to 1
    experts: list[str]
    batch_size: int  # requests answered by the same batched forward pass


def ray_env(settings: ServeSection) -> dict[str, str]:
    """Environment Ray's processes need for ``settings.ingress`` (set it before Ray starts).

    ``direct``: turn on Ray Serve's direct ingress and pin its HTTP port range to ``settings.port``,
    so the single replica listens where a proxy would have. The replica's shutdown drain (Ray's
    default 30 s, for load balancers to deregister it) becomes 1 s: no balancer sits in front
    here; in-flight requests are still finished. Set that variable yourself to keep a longer one.
    """
    if settings.ingress != "direct":
        return {}
    drain = "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"
    return {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
            "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(settings.port),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(settings.port + 1),  # range end is exclusive
            drain: os.environ.get(drain, "1")}


def proxy_port(settings: ServeSection) -> int:
    """Where Ray's HTTP proxy listens: ``settings.port``, or ``port + 1`` under direct ingress, where
    the replica itself takes ``port`` (Ray still starts a proxy on the head node in that mode)."""
    return settings.port + 1 if settings.ingress == "direct" else settings.port


def replica_ingress() -> str:
    """The ingress this process (a replica) runs under: ``direct`` or ``proxy``."""
    return "direct" if os.environ.get("RAY_SERVE_ENABLE_DIRECT_INGRESS") == "1" else "proxy"


def settings_from(data: dict[str, Any] | None) -> ServeSection:
    """A validated ``ServeSection`` from plain data (unknown keys ignored); ValueError listing problems."""
    names = {f.name for f in dataclasses.fields(ServeSection)}
    settings = ServeSection(**{k: v for k, v in (data or {}).items() if k in names})
    errors = check_serve(settings)
    if errors:
        raise ValueError("invalid serve settings:\n  " + "\n  ".join(errors))
    return settings


def fetch_checkpoint(source: dict[str, Any]) -> tuple[Path, Path | None]:
    """``(checkpoint dir, temporary folder or None)`` for ``source``: ``{"checkpoint": dir}``, or
    ``{"run_id", "tracking_uri"}``, whose ``checkpoint`` artifact is downloaded into a fresh temporary
    folder that the caller deletes when done."""
    if source.get("checkpoint"):
        return Path(source["checkpoint"]), None
    from orchestrator import tracking

    dst = Path(tempfile.mkdtemp(prefix=f"moe-orch-{source['run_id'][:8]}-"))
    uri = tracking.resolve_uri(source.get("tracking_uri") or "sqlite:///mlflow.db")
    return tracking.download_artifacts(uri, source["run_id"], "checkpoint", dst), dst


@serve.deployment(name=DEPLOYMENT_NAME)
@serve.ingress(api)
class EnsembleClassifier:
    """One replica: the Ensemble MoE in eval mode behind the FastAPI routes above."""

    def __init__(self, source: dict[str, Any], settings: dict[str, Any]) -> None:
        import torch

        from trainables.ensemble.checkpoint import load_checkpoint, read_checkpoint_config

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.settings = settings_from(settings)
        torch.set_num_threads(max(1, int(self.settings.num_cpus_per_replica)))
        path, self.download_dir = fetch_checkpoint(source)  # a download is deleted in __del__
        self.model = load_checkpoint(path)
        self.label_names = read_checkpoint_config(path)["label_names"]
        self.batched_predict.set_max_batch_size(self.settings.max_batch_size)
        self.batched_predict.set_batch_wait_timeout_s(self.settings.batch_wait_timeout_s)
        self.replica = serve.get_replica_context().replica_id.unique_id

    def __del__(self) -> None:
        """Serve calls this when it stops the replica: remove the checkpoint this replica downloaded."""
        if getattr(self, "download_dir", None) is not None:
            shutil.rmtree(self.download_dir, ignore_errors=True)

    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        """Liveness: the replica is up and its model is loaded."""
        return {"status": "ok", "experts": self.model.expert_names, "replica": self.replica,
                "ingress": replica_ingress()}

    @api.post("/predict", response_model=PredictResponse)
    async def predict(self, request: PredictRequest) -> PredictResponse:
        """Classify ``texts``; 413 if there are too many or one is too long (see the module docstring)."""
        limits = self.settings
        if len(request.texts) > limits.max_texts_per_request:
            raise HTTPException(413, f"texts: got {len(request.texts)} texts, expected at most "
                                     f"{limits.max_texts_per_request} per request")
        for i, text in enumerate(request.texts):
            if len(text) > limits.max_text_chars:
                raise HTTPException(413, f"texts[{i}]: got {len(text)} characters, expected at most "
                                         f"{limits.max_text_chars}")
        return await self.batched_predict(list(request.texts))

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def batched_predict(self, requests: list[list[str]]) -> list[PredictResponse]:
        """One forward pass over every text of up to ``max_batch_size`` requests, split back per request."""
        flat = [text for texts in requests for text in texts]
        out = await asyncio.to_thread(self.model.predict, flat)  # keeps the event loop free to queue the next batch
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


def deployment_options(settings: ServeSection) -> dict[str, Any]:
    """``max_ongoing_requests`` (>= the batch size), ``autoscaling_config`` and ``ray_actor_options``."""
    return {
        "max_ongoing_requests": settings.max_ongoing_requests or 2 * settings.max_batch_size,
        "autoscaling_config": {"min_replicas": settings.min_replicas, "max_replicas": settings.max_replicas,
                               "target_ongoing_requests": settings.target_ongoing_requests},
        "ray_actor_options": {"num_cpus": settings.num_cpus_per_replica},
        "logging_config": {"enable_access_log": settings.access_log},
    }


def build_app(source: dict[str, Any], settings: ServeSection) -> Application:
    """The Serve application for a checkpoint ``source`` (see ``fetch_checkpoint``)."""
    source = {k: v for k, v in source.items() if v}
    return EnsembleClassifier.options(**deployment_options(settings)).bind(source, dataclasses.asdict(settings))


def app_builder(args: dict[str, Any]) -> Application:
    """Application builder for Serve config files: ``args`` = ``{checkpoint | run_id + tracking_uri, serve}``."""
    source = {k: args.get(k) for k in ("checkpoint", "run_id", "tracking_uri")}
    return build_app(source, settings_from(args.get("serve")))


def serve_config(source: dict[str, Any], settings: ServeSection) -> dict[str, Any]:
    """A Serve config (``serve deploy`` / ``serve run`` file) equivalent to ``build_app(source, settings)``."""
    source = {k: v for k, v in source.items() if v}
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": settings.host, "port": settings.port},
        "applications": [{
            "name": APP_NAME,
            "route_prefix": settings.route_prefix,
            "import_path": IMPORT_PATH,
            "args": {**source, "serve": dataclasses.asdict(settings)},
            "deployments": [{"name": DEPLOYMENT_NAME, **deployment_options(settings)}],
        }],
    }


def emit_config(path: str | Path, source: dict[str, Any], settings: ServeSection) -> Path:
    """Write ``serve_config`` as YAML to ``path``; returns it."""
    import yaml

    path = Path(path)
    header = ""
    if settings.ingress == "direct":
        env = " ".join(f"{k}={v}" for k, v in ray_env(settings).items())
        header = f"# serve.ingress is 'direct': start Ray with {env} in its environment\n"
    path.write_text(header + yaml.safe_dump(serve_config(source, settings), sort_keys=False))
    return path


def start(source: dict[str, Any], settings: ServeSection, ready_timeout_s: float = 120.0) -> str:
    """Deploy the app answering on ``settings.host:port`` and return its base URL once ``/healthz`` answers.

    Must run inside a Ray session. With ``settings.ingress == "direct"`` that session's Ray must have
    been started with ``ray_env(settings)``; a RuntimeError says so if the replica runs behind a proxy.
    """
    serve.start(http_options={"host": settings.host, "port": proxy_port(settings)})
    serve.run(build_app(source, settings), name=APP_NAME, route_prefix=settings.route_prefix, blocking=False)
    url = f"http://{settings.host}:{settings.port}{settings.route_prefix}"
    try:
        health = wait_healthy(f"{url}/healthz", ready_timeout_s)
    except TimeoutError:
        shutdown()
        raise
    if health.get("ingress", "proxy") != settings.ingress:
        shutdown()
        env = " ".join(f"{k}={v}" for k, v in ray_env(settings).items())
        raise RuntimeError(f"serve.ingress: got 'direct' but the replica runs behind Ray's proxy; "
                           f"start Ray with {env} in its environment")
    return url


def wait_healthy(url: str, timeout_s: float = 120.0) -> dict[str, Any]:
    """The JSON of the first 200 answer of ``url``; TimeoutError after ``timeout_s``."""
    import time

    import requests

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            reply = requests.get(url, timeout=2)
            if reply.status_code == 200:
                return reply.json()
        except requests.RequestException:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f}s")


def shutdown() -> None:
    """Delete every Serve application and stop Serve (the Ray session stays up)."""
    serve.shutdown()
