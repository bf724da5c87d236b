"""Load test over loopback: OpenAI-compatible completions from SmolLM2-135M-Instruct on three servers.

    python benchmarks/serve_lm.py --json PATH [--servers serve,hf_naive,llama_cpp] [--concurrency 1,8,32]
                                  [--requests N] [--max-tokens 64] [--threads 2] [--method mixlora|lora|base]
                                  [--weights fp32|int8|int4]

The servers, one at a time, each with the same CPU thread count (``--threads``):

- ``serve``: ours, started as a user would, ``moe-orch serve <checkpoint> --port P serve.max_batch_size=32
  serve.min_replicas=1 serve.max_replicas=1 serve.num_cpus_per_replica=<threads> serve.access_log=false``
  (plus ``serve.ingress=<--ingress>`` and ``serve.weights=<--weights>``): local Ray, Ray Serve, the
  continuous-batching ``GenerationEngine``
  (``trainables.lm.engine``). Stopped with SIGTERM (Serve and the local Ray shut down); every process
  it started is checked to be gone afterwards (and killed by pid if not).
- ``hf_naive``: the server a user writes first: a ``ThreadingHTTPServer`` in a subprocess that loads
  the same checkpoint (``trainables.lm.serving.load_lm``) and calls ``model.generate`` (greedy,
  ``max_new_tokens``) once per request, answering ``/v1/completions`` in OpenAI's shape. It does not
  stream, so its time to first token is its full latency. Concurrent requests run their ``generate``
  calls in parallel threads on the one model (torch releases the GIL in its kernels).
- ``llama_cpp``: llama-cpp-python's OpenAI-compatible server (``python -m llama_cpp.server``) on the
  GGUF file the base is converted from (``trainables.lm.base.gguf_path``). It runs llama.cpp's 4-bit
  Q4_1 kernels directly, while ours and hf_naive run the weights dequantized to float32; and it serves
  the bare base (no adapters). It decodes one request at a time (others queue); it is started with
  ``--interrupt_requests False``, since by default a new request cuts the running one short.
  llama-cpp-python is not a dependency of the project (PyPI has only an sdist; it compiles for
  several minutes): install it with
  ``CMAKE_ARGS="-DGGML_NATIVE=ON" pip install "llama-cpp-python[server]"``. Without it, ``llama_cpp``
  is skipped with a message.

The checkpoint served by ``serve`` and ``hf_naive``: the MixLoRA family on ``smollm2-135m-instruct``
with freshly initialised adapters (``--method mixlora``, the default: 8 LoRA experts, top-2 routed per
token in every FFN, plus LoRA on attention; or ``--method lora``: plain LoRA), saved in a temporary
folder. Speed does not depend on the adapter weights. ``--method base`` serves the bare base, to set against
llama.cpp's bare base: a plain-LoRA checkpoint whose fresh adapters are the identity (B = 0), which ``serve``
merges into the frozen weights at load, so it runs the base's weights and nothing else (``hf_naive`` keeps
peft's unmerged adapters, as a first server would).

Load: plain (chat-free) prompts, short Code Alpaca instructions from the shared data (a fixed list if the
data is missing), ``POST /v1/completions`` with ``max_tokens`` ``--max-tokens`` at temperature 0, closed
loop: ``c`` clients each send the next request when their last one is answered, from an asyncio/aiohttp
client in this process (``_loadgen.closed_loop``), after a short warm-up. Requests per level:
``--requests`` (default 8), at least 2 * c: 8, 16 and 64 at c = 1, 8, 32 (the naive server decodes about
8-12 tokens/s on 2 cores; this keeps a run of all three servers near 15 minutes). Each level is bounded
by ``--level-timeout-s``: requests still unanswered then count as ``unfinished`` (and as errors).
``serve`` and ``llama_cpp`` are asked to stream (``stream: true``): the time to first token is the
arrival of the first SSE ``data:`` chunk. No server is told to ignore EOS (ours cannot), so a
completion may stop early; output tokens are counted
the same way for every server: the returned text re-tokenized with the SmolLM2 tokenizer
(``usage_tokens`` adds the servers' own ``usage.completion_tokens`` where they report it).

llama.cpp's worker threads spin-wait on each other: with ``--threads`` equal to the core count and
other work on the machine, its decode slows down many times over (seen here: 118-182 ms per token
with 2 threads on a busy 2-core box, 14 ms with 1). Run it on an otherwise idle machine.

Output: JSON list of records ``{server, concurrency, requests, rps, output_tokens_per_s, p50_ms, p99_ms,
ttft_p50_ms, errors}`` plus ``ttft_p99_ms``, ``tpot_p50_ms`` (streamed: per request, time per output
token after the first), ``output_tokens``, ``usage_tokens``, ``finished_by_length``, ``unfinished``,
``wall_s``, ``threads``, and for ``serve`` ``mean_running`` / ``max_running`` (the engine's batch, sampled
from ``/healthz`` every 0.5 s while it is busy); and a printed table (stdout). Progress goes to stderr.
Only 127.0.0.1 is used; every process started here is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _loadgen import HOST, REPO, closed_loop, data_root, free_port, free_port_pair, percentile

sys.path.insert(0, str(REPO))  # the repository's packages, installed or not

BASE = "smollm2-135m-instruct"
SERVERS = ("serve", "hf_naive", "llama_cpp")
FALLBACK_PROMPTS = (
    "Write a Python function that reverses a string.",
    "Explain what a hash table is.",
    "Write an SQL query that counts the rows of a table named users.",
    "Describe the difference between a list and a tuple in Python.",
    "Write a JavaScript function that returns the largest number in an array.",
    "What does the HTTP status code 404 mean?",
    "Write a shell command that lists the files in a directory by size.",
    "Explain recursion with a short example.",
)


def log(message: str) -> None:
    """Progress, to stderr."""
    print(message, file=sys.stderr, flush=True)


def prompts(n: int) -> list[str]:
    """``n`` short instructions: Code Alpaca's (no input, under 120 characters), else a fixed list."""
    try:
        records = json.loads((data_root() / "code_alpaca" / "code_alpaca_2k.json").read_text())
        texts = [r["instruction"].strip() for r in records if not r.get("input") and len(r["instruction"]) < 120]
    except (OSError, ValueError, KeyError):
        texts = []
    texts = texts or list(FALLBACK_PROMPTS)
    return [texts[i % len(texts)] + "\n" for i in range(n)]


def level_requests(requested: int, concurrency: int) -> int:
    """Requests at one level: ``requested``, at least 2 * c (every client sends at least two)."""
    return max(requested, 2 * concurrency)


def build_checkpoint(directory: Path, method: str) -> Path:
    """The MixLoRA family on SmolLM2-135M-Instruct with fresh adapters (seeded), saved under ``directory``;
    ``base``: plain LoRA, whose fresh B factors are zero, so the merged model is the base itself."""
    import torch

    from trainables.lm.base import load_base
    from trainables.mixlora.checkpoint import apply_adapters, save_adapter
    from trainables.mixlora.config import MixLoRAConfig

    cfg = MixLoRAConfig(base=BASE, method="lora" if method == "base" else method, dropout=0.0)
    model, _ = load_base(cfg.base)
    torch.manual_seed(0)
    apply_adapters(model, cfg)
    return save_adapter(model.eval(), cfg, directory / "checkpoint",
                        {"experiment": f"bench-{method}", "note": "benchmarks/serve_lm.py: fresh adapters"})


# -- the hf_naive baseline (runs in a subprocess) ---------------------------------------------------


def hf_naive_main(checkpoint: str, port: int, threads: int) -> None:
    """One ``model.generate`` per request, in the request's own thread (``ThreadingHTTPServer``)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import torch

    from trainables.lm.serving import load_lm

    torch.set_num_threads(threads)
    model, tokenizer, info = load_lm(Path(checkpoint))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def complete(body: dict[str, Any]) -> dict[str, Any]:
        inputs = tokenizer(body["prompt"], return_tensors="pt", add_special_tokens=False)  # (1, T)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=int(body.get("max_tokens", 16)), do_sample=False,
                                 pad_token_id=pad_id)  # (1, T + new)
        new = out[0, inputs["input_ids"].shape[1]:].tolist()
        ended = bool(new) and new[-1] == tokenizer.eos_token_id
        tokens = len(new) - int(ended)
        prompt_tokens = inputs["input_ids"].shape[1]
        return {"id": f"cmpl-{time.time_ns()}", "object": "text_completion", "created": int(time.time()),
                "model": info["name"],
                "choices": [{"index": 0, "text": tokenizer.decode(new, skip_special_tokens=True), "logprobs": None,
                             "finish_reason": "stop" if ended else "length"}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": tokens,
                          "total_tokens": prompt_tokens + tokens}}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the client expects

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self._send(200, {"status": "ok"}) if self.path == "/healthz" else self._send(404, {"detail": "no"})

        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            if self.path != "/v1/completions" or not isinstance(body.get("prompt"), str):
                self._send(400, {"error": {"message": "POST /v1/completions {prompt, max_tokens}"}})
                return
            self._send(200, complete(body))

        def log_message(self, *args: Any) -> None:  # no access log
            pass

    ThreadingHTTPServer((HOST, port), Handler).serve_forever()


# -- starting and stopping servers ---------------------------------------------------------------


@dataclass
class Server:
    """How to start one server, and how to talk to it once it answers ``ready_path``."""

    name: str
    cmd: list[str]
    port: int
    ready_path: str  # GET it until 200
    stream: bool  # ask for SSE (time to first token), else one JSON answer
    env: dict[str, str] | None = None
    batch_probe: str = ""  # a URL whose JSON ``running`` is the engine's batch (sampled under load)
    url: str = ""  # .../v1/completions

    def __post_init__(self) -> None:
        self.url = f"http://{HOST}:{self.port}/v1/completions"


def wait_ready(url: str, proc: subprocess.Popen, timeout_s: float, log_path: Path) -> None:
    """Until ``GET url`` answers 200; RuntimeError if the process exits, TimeoutError after ``timeout_s``."""
    import requests

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the server exited with code {proc.returncode} before answering {url}:\n{tail}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f}s (log: {log_path})")


def stop_tree(proc: subprocess.Popen, sig: int = signal.SIGTERM, grace_s: float = 90.0) -> list[str]:
    """Send ``sig`` to ``proc``, wait up to ``grace_s`` for it to exit, then kill (by pid) whatever it
    started that is still alive. Returns ``name(pid)`` of the processes that had to be killed."""
    import psutil  # a Ray dependency

    try:
        family = psutil.Process(proc.pid).children(recursive=True)  # Ray's raylet, gcs_server, workers...
    except psutil.NoSuchProcess:
        family = []
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    _, alive = psutil.wait_procs(family, timeout=15)
    if family:
        log(f"  {len(family) - len(alive)} of the {len(family)} processes it had started exited with it")
    killed = []
    for p in alive:
        try:
            killed.append(f"{p.name()}({p.pid})")
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)
    return killed


def serve_server(checkpoint: Path, args: argparse.Namespace) -> Server:
    """``moe-orch serve`` as a user runs it, with the benchmark's serve settings as overrides."""
    exe = Path(sys.executable).with_name("moe-orch")
    port = free_port_pair() if args.ingress == "direct" else free_port()
    cmd = [str(exe) if exe.exists() else (shutil.which("moe-orch") or "moe-orch"), "serve", str(checkpoint),
           "--port", str(port), "serve.max_batch_size=32", "serve.min_replicas=1", "serve.max_replicas=1",
           f"serve.num_cpus_per_replica={args.threads}", "serve.access_log=false", f"serve.ingress={args.ingress}",
           f"serve.weights={args.weights}"]
    return Server("serve", cmd, port, "/healthz", True, {"HF_HUB_OFFLINE": "1", "RAY_SERVE_LOG_TO_STDERR": "0"},
                  batch_probe=f"http://{HOST}:{port}/healthz")


def hf_naive_server(checkpoint: Path, args: argparse.Namespace) -> Server:
    port = free_port()
    cmd = [sys.executable, __file__, "--json", "-", "--hf-server", "--checkpoint", str(checkpoint), "--port",
           str(port), "--threads", str(args.threads)]
    return Server("hf_naive", cmd, port, "/healthz", False, {"HF_HUB_OFFLINE": "1"})


def llama_cpp_server(checkpoint: Path, args: argparse.Namespace) -> Server:
    from trainables.lm.base import gguf_path

    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path()), "--host", HOST, "--port",
           str(port), "--n_threads", str(args.threads), "--n_threads_batch", str(args.threads), "--n_ctx", "2048",
           "--interrupt_requests", "False"]  # its default: a new request cuts the running one short
    return Server("llama_cpp", cmd, port, "/v1/models", True)


def skip_reason(server: str) -> str | None:
    """Why ``server`` cannot run here, or None."""
    if server == "llama_cpp":
        import importlib.util

        if importlib.util.find_spec("llama_cpp") is None:
            return ('llama-cpp-python is not installed: CMAKE_ARGS="-DGGML_NATIVE=ON" '
                    'pip install "llama-cpp-python[server]"')
        try:
            from trainables.lm.base import gguf_path

            gguf_path()
        except FileNotFoundError as exc:
            return str(exc)
    return None


# -- load generation ----------------------------------------------------------------------------------


@dataclass
class Answer:
    """One completed request: latency, time to first byte of text, the text, the server's token count."""

    latency_s: float
    ttft_s: float
    text: str
    usage_tokens: int | None
    finish_reason: str | None


async def _complete(session: Any, url: str, prompt: str, max_tokens: int, stream: bool) -> Answer:
    """One ``/v1/completions`` request; streamed requests are read chunk by chunk (SSE ``data:`` lines)."""
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "stream": stream}
    t0 = time.perf_counter()
    async with session.post(url, json=body) as reply:
        if reply.status != 200:
            raise RuntimeError(f"HTTP {reply.status}: {(await reply.text())[:200]}")
        if not stream:
            data = await reply.json(content_type=None)
            latency = time.perf_counter() - t0
            choice = data["choices"][0]
            return Answer(latency, latency, choice["text"], (data.get("usage") or {}).get("completion_tokens"),
                          choice.get("finish_reason"))
        ttft, parts, usage, finish = None, [], None, None
        buffer = b""
        async for raw in reply.content:
            buffer += raw
            if not buffer.endswith(b"\n"):
                continue
            line, buffer = buffer.strip(), b""
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if ttft is None:
                ttft = time.perf_counter() - t0
            if payload == b"[DONE]":
                break
            chunk = json.loads(payload)
            for choice in chunk.get("choices") or []:
                parts.append(choice.get("text") or "")
                finish = choice.get("finish_reason") or finish
            if chunk.get("usage"):
                usage = chunk["usage"].get("completion_tokens")
        latency = time.perf_counter() - t0
        return Answer(latency, ttft if ttft is not None else latency, "".join(parts), usage, finish)


@dataclass
class Level:
    """What one load level brought back."""

    answers: list[Answer]
    errors: int  # failed requests, unfinished ones included
    unfinished: int  # still unanswered when the level's bound ran out
    wall_s: float
    running: list[int]  # serve only: the engine's running sequences, sampled from /healthz during the level


async def _sample_running(session: Any, url: str, samples: list[int], period_s: float = 0.5) -> None:
    """Append ``running`` of ``GET url`` (the engine's batch) to ``samples`` every ``period_s`` until cancelled."""
    while True:
        try:
            async with session.get(url) as reply:
                body = await reply.json(content_type=None)
                if isinstance(body, dict) and isinstance(body.get("running"), int):
                    samples.append(body["running"])
        except Exception:  # noqa: BLE001 (a missed sample is not an error of the level)
            pass
        await asyncio.sleep(period_s)


async def _load(running: Server, texts: list[str], concurrency: int, max_tokens: int, timeout_s: float) -> Level:
    """``concurrency`` closed-loop clients over ``texts``, bounded by ``timeout_s`` (``_loadgen.closed_loop``),
    with the engine's batch sampled meanwhile if the server has a ``batch_probe``."""
    import aiohttp

    def failed(exc: BaseException, failures: int) -> None:
        if failures <= 3:
            log(f"  [{running.name}] request failed: {type(exc).__name__}: {exc}")

    samples: list[int] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as probe:
        sampler = asyncio.create_task(_sample_running(probe, running.batch_probe, samples)) \
            if running.batch_probe else None
        try:
            load = await closed_loop(
                texts, concurrency, lambda session, prompt: _complete(session, running.url, prompt, max_tokens,
                                                                      running.stream), timeout_s, on_error=failed)
        finally:
            if sampler is not None:
                sampler.cancel()
                await asyncio.gather(sampler, return_exceptions=True)
    return Level(load.answers, load.errors, load.unfinished, load.wall_s, samples)


def level_record(running: Server, args: argparse.Namespace, concurrency: int, level: Level,
                 count_tokens: Callable[[str], int]) -> dict[str, Any]:
    """The JSON record of one level (see the module docstring)."""
    answers, wall = level.answers, level.wall_s
    counts = [count_tokens(a.text) for a in answers]
    tokens = sum(counts)
    # streamed: time per output token after the first, per request (decode speed as a client sees it)
    tpot = [(a.latency_s - a.ttft_s) / (n - 1) for a, n in zip(answers, counts, strict=True) if n > 1]
    usage = [a.usage_tokens for a in answers]
    busy = [n for n in level.running if n > 0]
    record = {"server": running.name, "concurrency": concurrency, "requests": len(answers),
              "rps": len(answers) / wall, "output_tokens_per_s": tokens / wall,
              "p50_ms": percentile([a.latency_s for a in answers], 0.5),
              "p99_ms": percentile([a.latency_s for a in answers], 0.99),
              "ttft_p50_ms": percentile([a.ttft_s for a in answers], 0.5), "errors": level.errors,
              "ttft_p99_ms": percentile([a.ttft_s for a in answers], 0.99),
              "tpot_p50_ms": percentile(tpot, 0.5) if running.stream else None,
              "output_tokens": tokens, "usage_tokens": sum(usage) if usage and None not in usage else None,
              "finished_by_length": sum(a.finish_reason == "length" for a in answers),
              "unfinished": level.unfinished, "wall_s": wall, "threads": args.threads}
    if running.batch_probe:
        record.update(mean_running=sum(busy) / len(busy) if busy else None, max_running=max(busy, default=0))
    if running.name in ("serve", "hf_naive"):
        record["method"] = args.method
    if running.name == "serve":
        record.update(ingress=args.ingress, weights=args.weights)
    return record


def run_levels(running: Server, args: argparse.Namespace, levels: list[int],
               count_tokens: Callable[[str], int]) -> list[dict[str, Any]]:
    """Warm up, then one closed-loop load per concurrency level; one record per level."""
    if args.warmup > 0:
        t0 = time.perf_counter()
        asyncio.run(_load(running, prompts(args.warmup)[::-1], min(args.warmup, 2), args.max_tokens,
                          args.level_timeout_s))
        log(f"  [{running.name}] warm-up: {args.warmup} requests in {time.perf_counter() - t0:.1f}s")
    records = []
    for c in levels:
        level = asyncio.run(_load(running, prompts(level_requests(args.requests, c)), c, args.max_tokens,
                                  args.level_timeout_s))
        r = level_record(running, args, c, level, count_tokens)
        records.append(r)
        batch = f"  engine batch {r['mean_running']:.1f} (max {r['max_running']})" if r.get("mean_running") else ""
        log(f"  [{running.name}] c={c:3d}: {r['rps']:6.2f} req/s  {r['output_tokens_per_s']:7.1f} tok/s  "
            f"p50 {r['p50_ms']:8.0f} ms  p99 {r['p99_ms']:8.0f} ms  ttft p50 {r['ttft_p50_ms']:7.0f} ms{batch}"
            f"  ({r['requests']} ok, {r['errors']} errors, {r['wall_s']:.0f}s)")
    return records


def table(records: list[dict[str, Any]]) -> str:
    """One row per server and concurrency; tokens/s and p99 relative to hf_naive at that concurrency."""
    lines = [f"{'server':<10} {'conc.':>5} {'reqs':>5} | {'rps':>6} {'tok/s':>7} {'p50 ms':>8} {'p99 ms':>8} "
             f"{'ttft p50':>8} {'err':>4} | {'tok/s / naive':>13} {'p99 / naive':>11}"]
    naive = {r["concurrency"]: r for r in records if r["server"] == "hf_naive"}
    for r in sorted(records, key=lambda r: (r["concurrency"], SERVERS.index(r["server"]))):
        n = naive.get(r["concurrency"])
        rel = (f"{r['output_tokens_per_s'] / max(n['output_tokens_per_s'], 1e-9):12.2f}x "
               f"{r['p99_ms'] / max(n['p99_ms'], 1e-9):10.2f}x" if n else f"{'':>13} {'':>11}")
        lines.append(f"{r['server']:<10} {r['concurrency']:>5} {r['requests']:>5} | {r['rps']:6.2f} "
                     f"{r['output_tokens_per_s']:7.1f} {r['p50_ms']:8.0f} {r['p99_ms']:8.0f} {r['ttft_p50_ms']:8.0f} "
                     f"{r['errors']:>4} | {rel}")
    return "\n".join(lines)


SERVER_SPECS: dict[str, Callable[[Path, argparse.Namespace], Server]] = {
    "serve": serve_server, "hf_naive": hf_naive_server, "llama_cpp": llama_cpp_server}


def bench_server(name: str, checkpoint: Path, args: argparse.Namespace, levels: list[int], work: Path,
                 count_tokens: Callable[[str], int]) -> list[dict[str, Any]]:
    """Start ``name``, load it at every level, stop it and everything it started."""
    server = SERVER_SPECS[name](checkpoint, args)
    log_path = work / f"{name}.log"
    log(f"[{name}] starting: {' '.join(server.cmd[1:])}")
    t0 = time.monotonic()
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(server.cmd, stdout=out, stderr=subprocess.STDOUT, cwd=work,
                                env={**os.environ, **(server.env or {})})
    try:
        wait_ready(f"http://{HOST}:{server.port}{server.ready_path}", proc, args.start_timeout_s, log_path)
        log(f"[{name}] ready after {time.monotonic() - t0:.0f}s")
        return run_levels(server, args, levels, count_tokens)
    finally:
        t0 = time.monotonic()
        killed = stop_tree(proc)
        left = f"; killed by pid after the grace period: {', '.join(killed)}" if killed else "; nothing left behind"
        log(f"[{name}] stopped in {time.monotonic() - t0:.0f}s (exit code {proc.returncode}){left}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", required=True, help="where to write the JSON records")
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated, from " + ", ".join(SERVERS))
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--requests", type=int, default=8,
                        help="requests per level, at least 2 * concurrency (default 8: 8, 16, 64 at c=1, 8, 32)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of every server")
    parser.add_argument("--method", choices=("mixlora", "lora", "base"), default="mixlora",
                        help="the checkpoint's adapters (base: identity LoRA, merged: the bare base)")
    parser.add_argument("--weights", choices=("fp32", "int8", "int4"), default="fp32",
                        help="serve.weights of `moe-orch serve`")
    parser.add_argument("--checkpoint", help="serve this MixLoRA-family checkpoint dir instead of building one")
    parser.add_argument("--ingress", choices=("proxy", "direct", "haproxy"), default="proxy",
                        help="serve.ingress of `moe-orch serve` (proxy: Ray's HTTP proxy, the default)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up requests per server")
    parser.add_argument("--level-timeout-s", type=float, default=600.0, help="bound on each load level")
    parser.add_argument("--start-timeout-s", type=float, default=300.0, help="bound on each server's start")
    parser.add_argument("--hf-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hf_server:
        hf_naive_main(args.checkpoint, args.port, args.threads)
        return

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    levels = [int(c) for c in args.concurrency.split(",")]
    servers = [s for s in args.servers.split(",") if s]
    unknown = [s for s in servers if s not in SERVERS]
    if unknown:
        parser.error(f"--servers: unknown {', '.join(unknown)}; expected some of {', '.join(SERVERS)}")
    from trainables.lm.base import load_tokenizer

    tokenizer = load_tokenizer(BASE)
    count_tokens = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0
    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-serve-lm-") as tmp:
        work = Path(tmp)
        checkpoint = Path(args.checkpoint) if args.checkpoint else build_checkpoint(work, args.method)
        log(f"checkpoint: {checkpoint} ({args.method} on {BASE}); concurrency {levels}; max_tokens "
            f"{args.max_tokens}; {args.threads} threads per server; {os.cpu_count()} CPUs; "
            f"load average {os.getloadavg()[0]:.2f}")
        for name in servers:
            reason = skip_reason(name)
            if reason:
                log(f"[{name}] skipped: {reason}")
                continue
            try:
                records += bench_server(name, checkpoint, args, levels, work, count_tokens)
            except (RuntimeError, TimeoutError) as exc:
                log(f"[{name}] failed: {exc}")
            Path(args.json).write_text(json.dumps(records, indent=2))  # what is measured so far
    Path(args.json).write_text(json.dumps(records, indent=2))
    print(table(records))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
