"""Decode speed: the bare base, LoRA and MixLoRA through our ``GenerationEngine``, and llama.cpp at batch 1.

    python benchmarks/decode.py --json PATH [--models base,lora,mixlora,llama_cpp] [--weights fp32]
                                [--batch 1,16] [--tokens 64] [--repeats 3] [--threads 2]
                                [--base smollm2-135m-instruct] [--unmerged] [--profile DIR] [--quick]
                                [--device cpu|cuda] [--compile]

Models, each on the same base (``--base``, SmolLM2-135M-Instruct by default, weights dequantised to
float32 by ``trainables.lm.base.load_base``):

- ``base``: the bare base;
- ``lora``: the MixLoRA family's plain-LoRA baseline (peft LoRA on all seven projections, rank matched
  to MixLoRA's trainable parameters: 43 on SmolLM2);
- ``mixlora``: 8 LoRA experts top-2 routed per token in every FFN, plus LoRA on attention;
- ``llama_cpp``: llama-cpp-python on the GGUF file the base is converted from (4-bit Q4_1 kernels,
  the bare base, one sequence), batch 1 only; skipped with a message where it is not installed
  (``CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python``).

The adapters are freshly initialised (seeded) with every LoRA B drawn from N(0, 0.02²) (a fresh B is
zero, which would make them no-ops); speed does not depend on trained values. They are prepared as
serving, ``generate`` and ``evaluate`` load a checkpoint (``load_adapter(..., inference=True)``: LoRA
merged into the frozen weights, ``trainables.mixlora.checkpoint.prepare_for_inference``), or, with
``--unmerged``, left as training keeps them.

Each record: ``batch`` sequences (distinct short prompts, left-padded) submitted at once, greedy,
exactly ``--tokens`` tokens each (EOS is ignored: the benchmark empties the engine's EOS set).
``ms_per_token``: the decode step's time: from the batch's first token (prefill done) to its last,
over the ``tokens - 1`` decode steps between them, as the engine's thread (or llama.cpp's) stamps
them; ``tokens_per_s``: ``batch / ms_per_token``; ``wall_s``: the whole run, prefill included.
The members of one batch size (every model and weights asked for) are measured in ``--repeats``
interleaved rounds, each running every member once (on a fresh, warmed-up engine: one engine thread
at a time, as in a replica), and a record keeps the median over the rounds. Its ratios are taken
within each round and summarised as the median and ``_range`` ``[min, max]`` over the rounds:
``x_base`` (lora, mixlora: time per token over the base's with the same weights),
``x_fp32_tokens_per_s`` (the int8 / int4 base: tokens/s over the fp32 base's) and
``x_llama_cpp_tokens_per_s`` (the base at batch 1: tokens/s over llama.cpp's). The process runs
with ``trainables.openmp.DECODE_ENV``, as serving does (a record's ``openmp``).
``--weights``: ``fp32``, and/or ``int8`` / ``int4``: the same model with the frozen base's linear
layers as 8- / 4-bit weights after the LoRA merge (``trainables.lm.quantize``, as ``serve.weights``
loads it; the adapters stay float32); llama_cpp has its own GGUF weights and is measured under ``fp32`` only.

Output: JSON list of ``{model, weights, batch, tokens_per_s, ms_per_token, merged, tokens, repeats,
threads, base, wall_s, device, dtype, compiled, openmp}`` and the ratios above (or ``{model, weights, batch,
skipped}``), and a table of them on stdout. ``--profile DIR``: also a torch.profiler
table per (model, batch) of its decode steps run in a thread of their own as the engine's step runs them
(``profile_decode``; ``DIR/profile_<model>_<weights>_b<batch>.txt``, by self CPU time).
``--quick``: 8 tokens, one repeat, for a smoke run (``--base tiny-llama`` makes it take seconds).
``--device cuda``: the models built as on CPU (float32, LoRA merged), then moved as serving moves them
(``trainables.lm.base.to_device``: bfloat16 on the GPU); int8 and int4 are CPU-only and skipped there, as is
llama_cpp (a CPU baseline). Each record says its ``device``.
``--compile``: the model's forward through ``torch.compile(dynamic=True)`` (the engine calls it as it
would the model); the warm-up run pays the compilation, and a record says ``compiled``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from functools import partial
from pathlib import Path
from typing import Any

from _loadgen import REPO
from serve_lm import FALLBACK_PROMPTS as PROMPTS  # short instructions

sys.path.insert(0, str(REPO))  # the repository's packages, installed or not

from trainables.openmp import DECODE_ENV, apply_decode_env, in_fresh_thread  # noqa: E402

apply_decode_env()  # before torch, as Serve replicas have it (trainables/openmp.py)

import torch  # noqa: E402

MODELS = ("base", "lora", "mixlora", "llama_cpp")
WEIGHTS = ("fp32", "int8", "int4")
Member = tuple[str, str]  # (model, weights)


def log(message: str) -> None:
    """Progress, to stderr."""
    print(message, file=sys.stderr, flush=True)


def build_model(base: str, method: str, merged: bool, weights: str = "fp32", device: str = "cpu",
                compile: bool = False) -> tuple[Any, Any]:
    """``(model, tokenizer)``: the bare base, or the base with fresh non-zero LoRA / MixLoRA adapters;
    ``weights="int8"`` / ``"int4"``: its frozen linear layers then as 8- / 4-bit weights; on ``device`` as
    serving puts it;
    ``compile``: its forward through ``torch.compile(dynamic=True)``."""
    from trainables.lm.base import load_base, to_device
    from trainables.lm.quantize import apply_weights
    from trainables.mixlora.checkpoint import apply_adapters
    from trainables.mixlora.config import MixLoRAConfig

    model, tokenizer = load_base(base)
    if method != "base":
        torch.manual_seed(0)
        apply_adapters(model, MixLoRAConfig(base=base, method=method, dropout=0.0))
        with torch.no_grad():
            for name, param in model.named_parameters():
                if param.requires_grad and (".lora_B." in name or name.endswith(".B")):
                    param.normal_(0.0, 0.02)
        if merged:
            from trainables.mixlora.checkpoint import prepare_for_inference

            prepare_for_inference(model)
    model = to_device(apply_weights(model, weights, device), device).eval()
    return (torch.compile(model, dynamic=True) if compile else model), tokenizer


def prompt_ids(tokenizer: Any, batch: int) -> list[list[int]]:
    return [tokenizer(PROMPTS[i % len(PROMPTS)], add_special_tokens=False)["input_ids"] for i in range(batch)]


def engine_run(engine: Any, ids: list[list[int]], tokens: int) -> tuple[float, float]:
    """One batch through the engine, every row ``tokens`` tokens: ``(ms per decode step, wall s)``."""
    from trainables.lm.engine import SamplingParams

    params = SamplingParams(max_tokens=tokens, temperature=0.0)
    start = time.monotonic()
    streams = [engine.submit(row, params) for row in ids]
    done = [s.collect() for s in streams]
    wall = time.monotonic() - start
    assert all(e.completion_tokens == tokens for e in done), [e.completion_tokens for e in done]
    # the engine's thread stamps each stream's first and latest event: decode runs from the moment the
    # last row has its first token (every row prefilled) to the batch's last token
    first = max(s.first_token_at for s in streams)
    last = max(s.last_event_at for s in streams)
    return 1000 * (last - first) / (tokens - 1), wall


Runner = Callable[[int], tuple[float, float]]  # tokens -> (ms per decode step, wall s) of one batch run


@contextmanager
def engine_runner(model: Any, tokenizer: Any, batch: int) -> Iterator[Runner]:
    """A runner over a fresh ``GenerationEngine`` of ``model`` with ``batch`` rows (EOS off), warmed up;
    the engine is closed on exit."""
    from trainables.lm.engine import GenerationEngine

    engine = GenerationEngine(model, tokenizer, max_batch_size=batch)
    engine.eos = set()  # every row decodes exactly ``tokens`` tokens
    ids = prompt_ids(tokenizer, batch)
    try:
        run = lambda tokens: engine_run(engine, ids, tokens)
        run(8)  # warm-up
        yield run
    finally:
        engine.close()


def measure_rounds(runners: dict[Member, Callable[[], AbstractContextManager[Runner]]], rounds: int,
                   tokens: int) -> dict[Member, list[tuple[float, float]]]:
    """``rounds`` rounds, each running every member once in turn: ``{member: [(ms per step, wall s)
    per round]}``. Interleaved so that a ratio of two members is taken between runs a few seconds
    apart: this VM's speed drifts by 15-20 % over minutes, which member-after-member runs mistook
    for a difference between models. Each run opens its member's runner afresh (``runners``: member ->
    a context manager of a runner): one generation engine, hence one engine thread with its OpenMP
    team, at a time, as in a replica."""
    times: dict[Member, list[tuple[float, float]]] = {member: [] for member in runners}
    for round_ in range(rounds):
        for member, open_runner in runners.items():
            with open_runner() as run:
                times[member].append(run(tokens))
        log(f"  round {round_ + 1}/{rounds}: " + ", ".join(f"{m} {w} {t[-1][0]:.1f} ms" for (m, w), t in times.items()))
    return times


def ratio_fields(name: str, numerator: list[float], denominator: list[float]) -> dict[str, Any]:
    """``{name: median, name_range: [min, max]}`` of the per-round ratios ``numerator[r] / denominator[r]``."""
    per_round = [a / b for a, b in zip(numerator, denominator, strict=True)]
    return {name: round(statistics.median(per_round), 3),
            f"{name}_range": [round(min(per_round), 3), round(max(per_round), 3)]}


def ratios(member: Member, ms: dict[Member, list[float]]) -> dict[str, Any]:
    """The within-round ratios a record carries (module docstring): ``x_base`` (time per token over the
    base's, same weights) for lora / mixlora; for the base, ``x_fp32_tokens_per_s`` (int8, int4) and
    ``x_llama_cpp_tokens_per_s`` (batch 1), throughputs over fp32's and llama.cpp's."""
    model, weights = member
    fields: dict[str, Any] = {}
    if model in ("lora", "mixlora") and ("base", weights) in ms:
        fields |= ratio_fields("x_base", ms[member], ms["base", weights])
    if model == "base" and weights != "fp32" and ("base", "fp32") in ms:
        fields |= ratio_fields("x_fp32_tokens_per_s", ms["base", "fp32"], ms[member])
    if model == "base" and ("llama_cpp", "fp32") in ms:
        fields |= ratio_fields("x_llama_cpp_tokens_per_s", ms["llama_cpp", "fp32"], ms[member])
    return fields


def profile_decode(model: Any, tokenizer: Any, ids: list[list[int]], tokens: int, path: Path) -> None:
    """torch.profiler over ``tokens`` greedy decode steps of the batch, run in this thread as the
    engine's step runs them (one forward over the last tokens with the cache, the mask grown by one,
    argmax, the MoE trace popped); the engine's own thread is invisible to the profiler. Self CPU
    time per op, to ``path``."""
    from trainables.lm.kv_cache import SlabCache

    width, device = max(len(r) for r in ids), next(model.parameters()).device
    pad = tokenizer.pad_token_id or 0
    input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in ids], device=device)  # (B, T)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in ids], device=device)  # (B, T)
    tracers = [m for m in model.modules() if callable(getattr(m, "pop_expert_choices", None))]
    with torch.no_grad():
        cache = SlabCache()  # the engine's cache
        out = model(input_ids=input_ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp_min(0),
                    cache=cache, use_cache=True)
        lengths, next_ids = mask.sum(-1), out.logits[:, -1].argmax(-1)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(tokens):
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                out = model(input_ids=next_ids[:, None], attention_mask=mask, position_ids=lengths[:, None],
                            cache=cache, use_cache=True)
                if tracers:
                    torch.stack([m.pop_expert_choices()[:, -1] for m in tracers], dim=1).cpu()
                lengths, next_ids = lengths + 1, out.logits[:, -1].float().argmax(-1)
    path.write_text(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40))
    log(f"  profile: {path}")


@contextmanager
def llama_cpp_runner(args: argparse.Namespace) -> Iterator[Runner]:
    """A runner over llama-cpp-python on the base's GGUF file: one sequence, greedy, EOS banned; warmed up."""
    from llama_cpp import Llama

    from trainables.lm.base import gguf_path

    # llama.cpp runs on the same libgomp as torch (one soname, loaded once): it too runs in threads that end,
    # so that its OpenMP team does not outlive a run and slow the engines' (trainables/openmp.py)
    llm = in_fresh_thread(Llama, model_path=str(gguf_path()), n_threads=args.threads, n_threads_batch=args.threads,
                          n_ctx=512, verbose=False)
    no_eos = {llm.token_eos(): -1e9}

    def stream(tokens: int) -> tuple[float, float]:
        start = time.monotonic()
        stamps = [time.monotonic() for _ in llm.create_completion(PROMPTS[0], max_tokens=tokens, temperature=0.0,
                                                                     logit_bias=no_eos, stream=True)]
        # a chunk a token, save where llama.cpp holds back a partial UTF-8 character: the first and the last
        # chunk still come with the first and the last token
        return 1000 * (stamps[-1] - stamps[0]) / (tokens - 1), stamps[-1] - start

    run = partial(in_fresh_thread, stream)
    run(8)
    try:
        yield run
    finally:
        llm.close()


def skip_reason(model: str, weights: str, batch: int, unmerged: bool = False, device: str = "cpu") -> str | None:
    """Why (model, weights, batch) is not measured here, or None."""
    if device != "cpu" and (weights != "fp32" or model == "llama_cpp"):
        return "int8 / int4 weights and llama_cpp are CPU-only here"
    if weights != "fp32" and unmerged and model in ("lora", "mixlora"):
        return "int8 / int4 weights are made after the LoRA merge (not with --unmerged)"
    if model == "llama_cpp" and weights != "fp32":
        return "llama_cpp runs its own GGUF weights (Q4_1): measured under fp32 only"
    if model == "llama_cpp":
        import importlib.util

        if batch != 1:
            return "llama_cpp is measured at batch 1 only"
        if importlib.util.find_spec("llama_cpp") is None:
            return 'llama-cpp-python is not installed: CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python'
    return None


def record(member: Member, batch: int, times: list[tuple[float, float]], args: argparse.Namespace) -> dict:
    """A member's record from its rounds' ``(ms per step, wall s)``: the medians."""
    from trainables.lm.base import inference_dtype

    model, weights = member
    ms, wall = statistics.median(t[0] for t in times), statistics.median(t[1] for t in times)
    return {"model": model, "weights": weights, "batch": batch, "tokens_per_s": round(1000 * batch / ms, 2),
            "ms_per_token": round(ms, 3), "merged": model in ("lora", "mixlora") and not args.unmerged,
            "tokens": args.tokens, "repeats": args.repeats, "threads": args.threads,
            "base": "gguf" if model == "llama_cpp" else args.base, "wall_s": round(wall, 3), "device": args.device,
            # the float weights' dtype (int8, int4: the adapters')
            "dtype": str(inference_dtype(args.device)).removeprefix("torch."),
            "compiled": args.compile, "openmp": {key: os.environ.get(key) for key in DECODE_ENV}}


def table(records: list[dict[str, Any]]) -> str:
    """One line per record: its speed, and its within-round ratios (median [min-max] over the rounds)."""
    lines = [f"{'model':<10} {'weights':<7} {'batch':>5} {'tok/s':>9} {'ms/token':>9}  within-round ratios"]
    for r in records:
        if "skipped" in r:
            lines.append(f"{r['model']:<10} {r['weights']:<7} {r['batch']:>5}   skipped: {r['skipped']}")
            continue
        shown = [f"{label} {r[key]:.2f} [{r[key + '_range'][0]:.2f}-{r[key + '_range'][1]:.2f}]"
                 for key, label in (("x_base", "x base (time/token)"), ("x_fp32_tokens_per_s", "tok/s x fp32"),
                                    ("x_llama_cpp_tokens_per_s", "tok/s x llama.cpp")) if key in r]
        lines.append(f"{r['model']:<10} {r['weights']:<7} {r['batch']:>5} {r['tokens_per_s']:>9.1f} "
                     f"{r['ms_per_token']:>9.2f}  {'; '.join(shown)}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", required=True, help="where to write the JSON records")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated, from " + ", ".join(MODELS))
    parser.add_argument("--weights", default="fp32", help="comma-separated, from " + ", ".join(WEIGHTS))
    parser.add_argument("--batch", default="1,16", help="comma-separated batch sizes")
    parser.add_argument("--tokens", type=int, default=64, help="generated tokens per sequence (at least 2)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="interleaved rounds: each runs every member once (medians kept)")
    parser.add_argument("--threads", type=int, default=2, help="torch (and llama.cpp) CPU threads")
    parser.add_argument("--base", default="smollm2-135m-instruct", help="the base model (tiny-llama for a smoke run)")
    parser.add_argument("--unmerged", action="store_true", help="keep LoRA unmerged, as training does")
    parser.add_argument("--profile", help="also write a torch.profiler table per (model, batch) into this folder")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 8 tokens, one repeat")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model's forward (dynamic shapes)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="where the engine runs (cuda: bfloat16, as serving puts a model there)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here")
    if args.quick:
        args.tokens, args.repeats = 8, 1
    if args.tokens < 2:
        parser.error("--tokens: at least 2 (a decode step's time is taken between the first token and the last)")
    models, weights = args.models.split(","), args.weights.split(",")
    batches = [int(b) for b in args.batch.split(",")]
    for name in models:
        if name not in MODELS:
            parser.error(f"--models: unknown {name!r}, expected some of {', '.join(MODELS)}")
    for name in weights:
        if name not in WEIGHTS:
            parser.error(f"--weights: unknown {name!r}, expected some of {', '.join(WEIGHTS)}")
    torch.set_num_threads(args.threads)
    profile_dir = Path(args.profile) if args.profile else None
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)

    built: dict[Member, tuple[Any, Any]] = {}  # (model, tokenizer) per member, built once for all batches
    records: list[dict[str, Any]] = []
    for batch in batches:
        members: list[Member] = []
        for member in ((m, w) for m in models for w in weights):
            reason = skip_reason(*member, batch, args.unmerged, args.device)
            if reason is not None:
                log(f"{member[0]} {member[1]} batch {batch}: skipped: {reason}")
                records.append({"model": member[0], "weights": member[1], "batch": batch, "skipped": reason})
            else:
                members.append(member)
        log(f"batch {batch}: {', '.join(f'{m} {w}' for m, w in members)}; {args.repeats} rounds of "
            f"{args.tokens} tokens each")
        with ExitStack() as stack:
            runners: dict[Member, Callable[[], AbstractContextManager[Runner]]] = {}
            for member in members:
                if member[0] == "llama_cpp":  # loaded once for the batch size's rounds
                    llama_cpp = stack.enter_context(llama_cpp_runner(args))
                    runners[member] = partial(nullcontext, llama_cpp)
                    continue
                if member not in built:
                    built[member] = in_fresh_thread(build_model, args.base, member[0], not args.unmerged, member[1],
                                                    args.device, args.compile)  # as a Serve replica loads it
                runners[member] = partial(engine_runner, *built[member], batch)
            times = measure_rounds(runners, args.repeats, args.tokens)
        ms = {member: [t[0] for t in rounds] for member, rounds in times.items()}
        for member in members:
            records.append(record(member, batch, times[member], args) | ratios(member, ms))
            if profile_dir is not None and member[0] != "llama_cpp":
                model, tokenizer = built[member]
                # in a thread that ends: the profile's OpenMP team must not outlive it and slow the next
                # batch size's engines (trainables/openmp.py)
                in_fresh_thread(profile_decode, model, tokenizer, prompt_ids(tokenizer, batch), args.tokens,
                                profile_dir / f"profile_{member[0]}_{member[1]}_b{batch}.txt")
    Path(args.json).write_text(json.dumps(records, indent=2))
    print(table(records))


if __name__ == "__main__":
    main()
