"""Honest MBPP / HumanEval pass@k: generate, execute, count.

Pipeline: ``mbpp_problems`` / ``humaneval_problems`` load ``CodeProblem``s from the shared
data root (``problems.py``); ``generate_completions`` samples ``n`` completions per prompt with
Hugging Face ``generate`` (``generation.py``); ``build_program`` turns each completion into a test
program; the sandbox (``sandbox.py``) runs it; a sample is correct iff the program exits with 0.
``evaluate_code`` does all of this and reports the unbiased pass@k of Chen et al. (2021)
(``passk.py``).

What the model is credited with (the public DyLoRA-MoE code reported ~99% HumanEval pass@1
by scoring the prompt + completion as model output and decoding with a repetition penalty;
both are avoided here):

- **only the model's own tokens**: the prompt is tokenized on its own and the completion is
  decoded from the new tokens alone (``out[:, prompt_len:]``). The prompt text is never part
  of the completion; for HumanEval it is joined back only when building the program to run,
  exactly as the official harness does (``prompt + completion + test + check(entry_point)``);
- **no logits shaping**: ``repetition_penalty=1.0`` and ``no_repeat_ngram_size=0`` are passed
  explicitly (overriding any value in the model's generation config). Greedy decoding when
  ``n == 1`` or ``temperature == 0``; otherwise plain temperature sampling (``top_p=1.0``,
  ``top_k=0``);
- **real execution** of every sample, with the tests the benchmark defines.

DDP: ``evaluate_code(..., rank, world_size)`` evaluates problems ``i % world_size == rank``;
each result carries ``per_problem = {task_id: (n, c)}``; gather them (e.g.
``torch.distributed.all_gather_object``) and combine with ``merge_results`` or
``merge_counts`` + ``pass_at_k_scores``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from trainables.codeeval.generation import generate_completions
from trainables.codeeval.passk import merge_counts, pass_at_k_scores
from trainables.codeeval.problems import HUMANEVAL_STOP, CodeProblem, build_program, build_prompt
from trainables.codeeval.sandbox import network_isolated, run_many


@dataclass
class CodeEvalResult:
    """Counts and scores of one code evaluation (one rank's share, or merged).

    Attributes:
        kind: "mbpp" or "humaneval" (the default metrics prefix).
        per_problem: ``{task_id: (n samples, c correct)}``.
        k_values: the requested k (scores are reported for k <= n).
        seconds: wall-clock time (generation + execution).
        examples: a few ``{"task_id", "completion", "status", "stderr_tail"}`` for inspection.
        network_isolated: the sandbox ran without network (``unshare -n``).
        settings: decoding settings (n, temperature, max_new_tokens, seed, ...).
    """

    kind: str
    per_problem: dict[str, tuple[int, int]]
    k_values: tuple[int, ...] = (1,)
    seconds: float = 0.0
    examples: list[dict[str, str]] = field(default_factory=list)
    network_isolated: bool = False
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def n_problems(self) -> int:
        """Number of problems evaluated."""
        return len(self.per_problem)

    @property
    def n_samples(self) -> int:
        """Number of executed samples."""
        return sum(n for n, _ in self.per_problem.values())

    @property
    def n_correct(self) -> int:
        """Number of samples whose program passed."""
        return sum(c for _, c in self.per_problem.values())

    @property
    def scores(self) -> dict[str, float]:
        """``{"pass@1": ..., "pass@k": ...}``: the unbiased estimator averaged over problems."""
        return pass_at_k_scores(self.per_problem, self.k_values)

    def metrics(self, prefix: str | None = None) -> dict[str, float]:
        """Flat metrics, e.g. ``{"mbpp/pass@1": 0.12, "mbpp/n_problems": 500, ...}`` (prefix defaults to kind)."""
        p = prefix or self.kind
        out = {f"{p}/{name}": value for name, value in self.scores.items()}
        out.update({f"{p}/n_problems": self.n_problems, f"{p}/n_samples": self.n_samples, f"{p}/seconds": self.seconds})
        return out


def merge_results(results: Sequence[CodeEvalResult]) -> CodeEvalResult:
    """Combine per-rank results (same kind and k): union of counts, slowest rank's seconds, first rank's examples."""
    if not results:
        raise ValueError("merge_results: no results")
    first = results[0]
    return replace(
        first,
        per_problem=merge_counts(r.per_problem for r in results),
        seconds=max(r.seconds for r in results),
        examples=list(first.examples),
        network_isolated=all(r.network_isolated for r in results),
    )


def evaluate_code(
    model: Any,
    tokenizer: Any,
    problems: Sequence[CodeProblem],
    n: int = 1,
    k_values: Sequence[int] = (1,),
    temperature: float = 0.0,
    max_new_tokens: int = 512,
    batch_size: int = 8,
    seed: int = 0,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    cpu_s: int = 10,
    workers: int = 2,
    rank: int = 0,
    world_size: int = 1,
    n_examples: int = 3,
    log: Callable[[str], None] | None = print,
) -> CodeEvalResult:
    """Generate ``n`` completions per problem, run each program in the sandbox, report pass@k.

    Args:
        problems: all of one kind (MBPP or HumanEval).
        n, temperature, max_new_tokens, batch_size, seed: decoding (see ``generate_completions``);
            the chunk of problems starting at local index ``i`` is generated with seed ``seed + i``.
        k_values: pass@k to report (only k <= n is reported).
        timeout_s, memory_mb, cpu_s: sandbox limits per program; ``workers`` programs run at once.
        rank, world_size: evaluate only problems ``i % world_size == rank`` (merge ranks with
            ``merge_results``).
        n_examples: how many (first-sample) completions to keep for inspection.
        log: progress lines (one per chunk of ``batch_size`` problems); None to stay quiet.
    """
    kinds = {p.kind for p in problems}
    if len(kinds) > 1:
        raise ValueError(f"evaluate_code: problems of one kind per call, got {sorted(kinds)}")
    kind = kinds.pop() if kinds else "mbpp"
    stop = HUMANEVAL_STOP if kind == "humaneval" else ()
    mine = [p for i, p in enumerate(problems) if i % world_size == rank]
    isolated = network_isolated()
    say = log or (lambda _line: None)
    say(
        f"{kind}: rank {rank}/{world_size} evaluates {len(mine)} of {len(problems)} problems, n={n}, "
        f"temperature={temperature}, max_new_tokens={max_new_tokens}, sandbox network isolated={isolated}"
    )
    start = time.monotonic()
    per_problem: dict[str, tuple[int, int]] = {}
    examples: list[dict[str, str]] = []
    limits = {"timeout_s": timeout_s, "memory_mb": memory_mb, "cpu_s": cpu_s}
    for lo in range(0, len(mine), batch_size):
        chunk = mine[lo : lo + batch_size]
        prompts = [build_prompt(p, tokenizer) for p in chunk]
        completions = generate_completions(
            model, tokenizer, prompts, n, temperature, max_new_tokens, batch_size, seed + lo, stop
        )
        programs = [build_program(p, c) for p, cs in zip(chunk, completions, strict=True) for c in cs]
        results = run_many(programs, workers=workers, **limits)
        for j, (problem, samples) in enumerate(zip(chunk, completions, strict=True)):
            outcome = results[j * n : (j + 1) * n]
            per_problem[problem.task_id] = (len(samples), sum(r.passed for r in outcome))
            if len(examples) < n_examples:
                examples.append(
                    {
                        "task_id": problem.task_id,
                        "completion": samples[0],
                        "status": outcome[0].status,
                        "stderr_tail": outcome[0].stderr_tail[-200:],
                    }
                )
        done = len(per_problem)
        correct = sum(c for _, c in per_problem.values())
        say(f"{kind}: {done}/{len(mine)} problems, {correct} correct samples, {time.monotonic() - start:.1f} s")
    result = CodeEvalResult(
        kind=kind,
        per_problem=per_problem,
        k_values=tuple(k_values),
        seconds=time.monotonic() - start,
        examples=examples,
        network_isolated=isolated,
        settings={
            "n": n,
            "temperature": temperature,
            "max_new_tokens": max_new_tokens,
            "batch_size": batch_size,
            "seed": seed,
            "repetition_penalty": 1.0,
            "world_size": world_size,
        },
    )
    say(f"{kind}: {result.scores}")
    return result
