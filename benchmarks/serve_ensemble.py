"""Load test over loopback: the Ray Serve ensemble app vs a minimal Flask server (one forward per request).

    python benchmarks/serve_ensemble.py --json bench.json [--checkpoint DIR] [--requests 256]

Both servers load the same Ensemble MoE checkpoint: ``--checkpoint`` (e.g. a trained one), or
else a small from-config ensemble (BERT + WordPiece and RoBERTa + BPE experts, hidden 256,
4 layers) built here in a temporary folder. The Flask server is the spec's deployment
(``app.run``, threaded, ``model.predict`` on each request's texts); the Serve app is
``serve.app`` (the ensemble's endpoint) with ``--replicas`` replicas and ``@serve.batch`` dynamic batching, run once
per ``--ingress`` mode: ``direct`` (the replica's own HTTP server, no proxy; one replica), ``haproxy``
(HAProxy in front of replicas that run their own HTTP servers; autoscaling works) and ``proxy`` (Ray's
Python HTTP proxy in front, Serve's default). Each server gets the same torch thread count.

Load: ``--requests`` requests (one SST-2 dev sentence each) at each concurrency (1, 8, 32),
from an asyncio/aiohttp client in this process (``_loadgen.closed_loop``), after a short warm-up;
every level is bounded by ``--level-timeout-s`` (requests still unanswered then count as errors).
Output: JSON records ``{"server", "concurrency", "rps", "p50_ms", "p99_ms"}`` (plus ``ingress`` for
Serve, ``requests``, ``errors``, ``wall_s`` and ``mean_batch``, the mean number of requests that
shared a forward pass) and a printed table. Only 127.0.0.1 is used; every process started here is
stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _loadgen import HOST, REPO, closed_loop, data_root, free_port, free_port_pair, percentile

# Ray Serve settings for a CPU-starved box (each can be overridden from the environment): no per-request
# log lines to stderr, and user code on the replica's own event loop (one thread hop less per request).
SERVE_ENV = {"RAY_SERVE_LOG_TO_STDERR": "0", "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}
sys.path.insert(0, str(REPO))  # the repository's packages, installed or not


def request_texts(n: int) -> list[str]:
    """SST-2 dev sentences if the data is there, else synthetic ones."""
    from trainables.ensemble.data import load_sst2

    try:
        texts = [t for t, _ in load_sst2("validation", data_root())]
    except FileNotFoundError:
        texts = [f"a {w} film with {v} acting" for w in ("great", "dull", "warm", "tedious") for v in ("fine", "bad")]
    return [texts[i % len(texts)] for i in range(n)]


def build_small_checkpoint(directory: Path) -> Path:
    """A from-config ensemble (random weights; speed does not depend on them) saved under ``directory``."""
    import torch

    from trainables.ensemble.checkpoint import save_checkpoint
    from trainables.ensemble.config import EnsembleConfig
    from trainables.ensemble.experts import export_experts, small_expert_specs
    from trainables.ensemble.model import EnsembleMoE

    texts = request_texts(872) * 2
    specs = small_expert_specs(hidden_size=256, num_layers=4, vocab_size=4000)
    experts = export_experts(specs, directory / "experts", texts)
    torch.manual_seed(0)
    model = EnsembleMoE.build(EnsembleConfig(experts=experts, max_length=64)).eval()
    return save_checkpoint(model, directory / "model", {"note": "benchmark: small from-config ensemble"})


# -- the Flask baseline (runs in a subprocess) ----------------------------------------------


def flask_main(checkpoint: str, port: int, threads: int) -> None:
    """The spec's deployment: a Flask app that runs one forward pass per request."""
    import torch
    from flask import Flask, jsonify, request

    from trainables.ensemble.checkpoint import load_checkpoint

    torch.set_num_threads(threads)
    model = load_checkpoint(checkpoint)
    app = Flask(__name__)

    @app.post("/predict")
    def predict() -> Any:
        texts = (request.get_json(silent=True) or {}).get("texts")
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            return jsonify({"detail": "texts: expected a non-empty list of strings"}), 422
        return jsonify(model.predict(texts))

    @app.get("/healthz")
    def healthz() -> Any:
        return jsonify({"status": "ok"})

    app.run(host=HOST, port=port, threaded=True)


# -- load generation ---------------------------------------------------------------------------


async def _predict(session: Any, url: str, text: str) -> tuple[float, int | None]:
    """One ``POST /predict`` of one text: ``(latency s, batch size)``, the batch size if the answer says how
    many requests shared its forward pass (Serve's do); RuntimeError unless HTTP 200."""
    t0 = time.perf_counter()
    async with session.post(url, json={"texts": [text]}) as reply:
        body = await reply.json(content_type=None)
        if reply.status != 200:
            raise RuntimeError(f"HTTP {reply.status}")
        latency = time.perf_counter() - t0
    return latency, body.get("batch_size") if isinstance(body, dict) else None


async def _load(url: str, texts: list[str], concurrency: int, timeout_s: float) -> dict[str, Any]:
    """One level: ``concurrency`` closed-loop clients over ``texts`` (``_loadgen.closed_loop``); its stats."""
    load = await closed_loop(texts, concurrency, lambda session, text: _predict(session, url, text), timeout_s,
                             request_timeout_s=60)
    latencies = [latency for latency, _ in load.answers]
    batch_sizes = [batch for _, batch in load.answers if batch is not None]
    return {"rps": len(latencies) / load.wall_s, "p50_ms": percentile(latencies, 0.50),
            "p99_ms": percentile(latencies, 0.99), "requests": len(latencies), "errors": load.errors,
            "wall_s": load.wall_s, "mean_batch": sum(batch_sizes) / len(batch_sizes) if batch_sizes else 1.0}


def run_levels(server: str, url: str, texts: list[str], levels: list[int], timeout_s: float,
               **extra: Any) -> list[dict[str, Any]]:
    """Warm up, then load ``url`` at each concurrency level; one record per level (``extra`` added to each)."""
    asyncio.run(_load(url, texts[:16], 4, timeout_s))
    records = []
    for c in levels:
        stats = asyncio.run(_load(url, texts, c, timeout_s))
        records.append({"server": server, **extra, "concurrency": c, **stats})
        print(f"  {label(records[-1]):12s} c={c:3d}: {stats['rps']:7.1f} req/s  p50 {stats['p50_ms']:7.1f} ms  "
              f"p99 {stats['p99_ms']:7.1f} ms  mean batch {stats['mean_batch']:4.1f}  "
              f"({stats['requests']} ok, {stats['errors']} errors)", flush=True)
    return records


def label(record: dict[str, Any]) -> str:
    """``flask``, or ``serve/<ingress>``."""
    return f"{record['server']}/{record['ingress']}" if "ingress" in record else record["server"]


def table(records: list[dict[str, Any]]) -> str:
    """One row per server and concurrency, with throughput and p99 relative to Flask at that concurrency."""
    lines = [f"{'server':<13} {'conc.':>5} | {'rps':>7} {'p50 ms':>8} {'p99 ms':>8} {'batch':>5} | "
             f"{'rps / flask':>11} {'p99 / flask':>11}"]
    flask = {r["concurrency"]: r for r in records if r["server"] == "flask"}
    for r in sorted(records, key=lambda r: (r["concurrency"], label(r) != "flask", label(r))):
        f = flask.get(r["concurrency"])
        rel = (f"{r['rps'] / max(f['rps'], 1e-9):10.2f}x {r['p99_ms'] / max(f['p99_ms'], 1e-9):10.2f}x"
               if f else f"{'':>11} {'':>11}")
        lines.append(f"{label(r):<13} {r['concurrency']:>5} | {r['rps']:7.1f} {r['p50_ms']:8.1f} {r['p99_ms']:8.1f} "
                     f"{r['mean_batch']:5.1f} | {rel}")
    return "\n".join(lines)


def main() -> None:
    from trainables.ensemble.family import EnsembleServe

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", required=True, help="where to write the JSON records")
    parser.add_argument("--checkpoint", help="an Ensemble MoE checkpoint dir (default: a small from-config one)")
    parser.add_argument("--requests", type=int, default=512, help="requests per concurrency level")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--servers", default="flask,serve", help="which servers to load, comma-separated")
    parser.add_argument("--ingress", default="direct,haproxy,proxy",
                        help="Serve ingress modes to run, comma-separated: direct (needs --replicas 1), haproxy, proxy")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads per server")
    parser.add_argument("--replicas", type=int, default=1, help="Serve replicas (each with --threads torch threads)")
    parser.add_argument("--max-batch-size", type=int, default=EnsembleServe.max_batch_size)
    parser.add_argument("--batch-wait-timeout-s", type=float, default=EnsembleServe.batch_wait_timeout_s,
                        help="@serve.batch wait (default: the serve section's)")
    parser.add_argument("--level-timeout-s", type=float, default=120.0, help="bound on each load level")
    parser.add_argument("--flask-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.flask_server:
        flask_main(args.checkpoint, args.port, args.threads)
        return

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    levels = [int(c) for c in args.concurrency.split(",")]
    texts = request_texts(args.requests)
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        checkpoint = Path(args.checkpoint) if args.checkpoint else build_small_checkpoint(Path(tmp))
        print(f"model: {checkpoint}; {args.requests} requests per level; concurrency {levels}; "
              f"torch threads {args.threads}; {os.cpu_count()} CPUs", flush=True)
        benches = {"flask": bench_flask, "serve": bench_serve}
        records = [r for name in args.servers.split(",") for r in benches[name](checkpoint, args, texts, levels)]
    Path(args.json).write_text(json.dumps(records, indent=2))
    print(table(records))
    print(f"wrote {args.json}")


def bench_flask(checkpoint: Path, args: argparse.Namespace, texts: list[str], levels: list[int]) -> list[dict]:
    port = free_port()
    cmd = [sys.executable, __file__, "--json", "-", "--flask-server", "--checkpoint", str(checkpoint),
           "--port", str(port), "--threads", str(args.threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        from serve.app import wait_healthy

        wait_healthy(f"http://{HOST}:{port}/healthz")
        return run_levels("flask", f"http://{HOST}:{port}/predict", texts, levels, args.level_timeout_s)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def bench_serve(checkpoint: Path, args: argparse.Namespace, texts: list[str], levels: list[int]) -> list[dict]:
    """The Serve app under load, once per ingress mode, each on a fresh local Ray (Ray reads the mode at start)."""
    modes = args.ingress.split(",")
    return [r for ingress in modes for r in bench_serve_ingress(checkpoint, args, texts, levels, ingress)]


def bench_serve_ingress(checkpoint: Path, args: argparse.Namespace, texts: list[str], levels: list[int],
                        ingress: str) -> list[dict]:
    from orchestrator.ray_runtime import ray_session
    from orchestrator.registry import family_ref
    from serve import app
    from trainables.ensemble.family import EnsembleServe

    port = free_port() if ingress == "proxy" else free_port_pair()
    settings = EnsembleServe(port=port, min_replicas=args.replicas, max_replicas=args.replicas,
                            num_cpus_per_replica=args.threads,
                            max_batch_size=args.max_batch_size, batch_wait_timeout_s=args.batch_wait_timeout_s,
                            max_ongoing_requests=2 * args.max_batch_size, access_log=False, ingress=ingress)
    env = {**SERVE_ENV, **app.ray_env(settings)}  # set for this Ray only: the next mode starts its own
    with ray_session(num_cpus=max(args.replicas * args.threads, os.cpu_count() or 1), dashboard=False, env=env):
        try:
            url = app.start({"checkpoint": str(checkpoint)}, family_ref("ensemble"), "ensemble", settings)
            return run_levels("serve", f"{url}/predict", texts, levels, args.level_timeout_s, ingress=ingress)
        finally:
            app.shutdown()


if __name__ == "__main__":
    main()
