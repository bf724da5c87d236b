"""Honest MBPP / HumanEval pass@k for the DyLoRA-MoE family: generate, execute, count.

Pipeline: ``mbpp_problems`` / ``humaneval_problems`` load ``CodeProblem``s from the shared
data root; ``generate_completions`` samples ``n`` completions per prompt with Hugging Face
``generate``; ``build_program`` turns each completion into a test program; the sandbox
(``trainables.dylora.sandbox``) runs it; a sample is correct iff the program exits with 0.
``evaluate_code`` does all of this and reports the unbiased pass@k of Chen et al. (2021).

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

Prompts:

- MBPP (standard test split, task ids 11-510): the model is a chat model trained on Code
  Alpaca rendered as a user turn -> assistant answer, so the prompt is the tokenizer's chat
  template around ``"{text}\\nYour code should pass these tests:\\n{asserts}"`` (the test asserts
  are shown, as in the MBPP paper). The code is the first fenced block of the answer
  (```` ```python ```` or bare ```` ``` ````; an unclosed fence runs to the end), the bare code
  before a closing fence, or the whole answer when it has no fence (``extract_code``).
  Program: ``test_setup_code + code + asserts``.
- HumanEval: plain completion of the problem's ``prompt`` (signature + docstring), no chat
  template; the completion is cut at the first Codex stop sequence (``HUMANEVAL_STOP``).

Batched generation pads on the left; row order is sorted by prompt length (stable) to waste
less compute on padding. Results are a deterministic function of (prompts, n, temperature,
seed, batch_size); the global torch RNG is left untouched.

DDP: ``evaluate_code(..., rank, world_size)`` evaluates problems ``i % world_size == rank``;
each result carries ``per_problem = {task_id: (n, c)}``; gather them (e.g.
``torch.distributed.all_gather_object``) and combine with ``merge_results`` or
``merge_counts`` + ``pass_at_k_scores``.
"""

from __future__ import annotations

import ast
import gzip
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch

from trainables.data.registry import local_file

from .sandbox import network_isolated, run_many

Kind = Literal["mbpp", "humaneval"]

MBPP_FILE = ("mbpp", "mbpp.jsonl")
HUMANEVAL_FILE = ("humaneval", "HumanEval.jsonl.gz")
MBPP_TEST_IDS = (11, 510)  # the standard MBPP test split (google-research README)
HUMANEVAL_STOP = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")  # Codex paper stop sequences
FENCE = "```"


@dataclass(frozen=True)
class CodeProblem:
    """One benchmark problem.

    Attributes:
        task_id: "MBPP/11", "HumanEval/0", ...
        prompt: MBPP: the user message (task text + test asserts; the chat template is applied
            by ``build_prompt``); HumanEval: the code prompt (signature + docstring).
        tests: MBPP: the assert lines; HumanEval: the test code defining ``check(candidate)``.
        entry_point: the function under test (HumanEval); None for MBPP.
        kind: "mbpp" or "humaneval".
        setup: MBPP ``test_setup_code`` (usually empty).
        reference: the dataset's reference solution (MBPP ``code``, HumanEval ``canonical_solution``).
    """

    task_id: str
    prompt: str
    tests: str
    entry_point: str | None
    kind: Kind
    setup: str = ""
    reference: str = ""


# ----------------------------------------------------------------------------- pass@k


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): ``1 - C(n-c, k) / C(n, k)`` for ``c`` correct of ``n`` samples.

    Computed as ``1 - prod_{i=n-c+1}^{n} (1 - k / i)``, which never forms the large binomials.
    Returns 1.0 when ``n - c < k`` (every k-subset holds a correct sample).
    """
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def pass_at_k_scores(per_problem: Mapping[str, tuple[int, int]], k_values: Iterable[int]) -> dict[str, float]:
    """``{"pass@k": mean over problems of pass_at_k(n, c, k)}`` for each k no larger than every problem's n."""
    if not per_problem:
        return {}
    n_min = min(n for n, _ in per_problem.values())
    return {
        f"pass@{k}": sum(pass_at_k(n, c, k) for n, c in per_problem.values()) / len(per_problem)
        for k in sorted(set(k_values))
        if 1 <= k <= n_min
    }


def merge_counts(parts: Iterable[Mapping[str, tuple[int, int]]]) -> dict[str, tuple[int, int]]:
    """Union of per-rank ``{task_id: (n, c)}`` maps; a task seen twice must have the same counts."""
    merged: dict[str, tuple[int, int]] = {}
    for part in parts:
        for task_id, counts in part.items():
            counts = (int(counts[0]), int(counts[1]))
            if merged.setdefault(task_id, counts) != counts:
                raise ValueError(f"{task_id}: conflicting counts {merged[task_id]} and {counts}")
    return merged


# ----------------------------------------------------------------------------- problems


def mbpp_problems(
    root: str | Path | None = None,
    limit: int | None = None,
    ids: tuple[int, int] = MBPP_TEST_IDS,
    prompt_tests: int | None = None,
) -> list[CodeProblem]:
    """MBPP problems with ``ids[0] <= task_id <= ids[1]`` (default: the standard test split, 500 tasks).

    Args:
        root: data root (``trainables.data.data_root``); reads ``mbpp/mbpp.jsonl``.
        limit: keep only the first ``limit`` problems by task id (a documented subset, e.g.
            "MBPP test split, task ids 11-60" for ``limit=50``); None keeps all.
        ids: inclusive task-id range.
        prompt_tests: how many test asserts the prompt shows (None: all of ``test_list``, as the
            MBPP paper does). The program always runs all of them.
    """
    path = local_file("mbpp", *MBPP_FILE, root=root)
    with path.open(encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    records = sorted((r for r in records if ids[0] <= int(r["task_id"]) <= ids[1]), key=lambda r: int(r["task_id"]))
    problems = []
    for r in records[:limit]:
        shown = r["test_list"][:prompt_tests]
        problems.append(
            CodeProblem(
                task_id=f"MBPP/{r['task_id']}",
                prompt=f"{r['text']}\nYour code should pass these tests:\n" + "\n".join(shown),
                tests="\n".join(r["test_list"]),
                entry_point=None,
                kind="mbpp",
                setup=r.get("test_setup_code") or "",
                reference=r["code"],
            )
        )
    return problems


def humaneval_problems(root: str | Path | None = None, limit: int | None = None) -> list[CodeProblem]:
    """The 164 HumanEval problems in file order (``humaneval/HumanEval.jsonl.gz``); ``limit`` keeps the first N."""
    path = local_file("humaneval", *HUMANEVAL_FILE, root=root)
    with gzip.open(path, "rt", encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [
        CodeProblem(
            task_id=r["task_id"],
            prompt=r["prompt"],
            tests=r["test"],
            entry_point=r["entry_point"],
            kind="humaneval",
            reference=r["canonical_solution"],
        )
        for r in records[:limit]
    ]


# ----------------------------------------------------------------------------- prompts and programs


def build_prompt(problem: CodeProblem, tokenizer: Any) -> str:
    """The text the model continues: MBPP in the chat template (one user turn), HumanEval as is."""
    if problem.kind == "mbpp":
        messages = [{"role": "user", "content": problem.prompt}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return problem.prompt


def truncate_at_stop(text: str, stop: Iterable[str]) -> str:
    """``text`` up to (excluding) the earliest occurrence of any stop string."""
    cut = min((i for s in stop if s and (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]


def extract_code(text: str) -> str:
    """The code in a chat answer: the first fenced block, else the whole text.

    - No fence: the whole answer (the model wrote bare code, as Code Alpaca answers are).
    - The first fence is bare (no language tag) and the text before it is Python with at least
      one statement other than a bare expression (``def``, ``import``, an assignment, ...): the
      answer began with bare code and this fence closes it, so that code is returned.
    - Otherwise the block the first fence opens (the rest of its line is the language tag), up
      to the next fence; an unclosed fence runs to the end.
    """
    start = text.find(FENCE)
    if start < 0:
        return text
    newline = text.find("\n", start)
    tag = text[start + len(FENCE) : newline if newline >= 0 else len(text)].strip()
    head = text[:start]
    if not tag and _has_code(head):
        return head
    if newline < 0:
        return ""
    body = text[newline + 1 :]
    end = body.find(FENCE)
    return body if end < 0 else body[:end]


def _has_code(text: str) -> bool:
    """``text`` parses as Python and has a statement other than a bare expression (prose rarely does)."""
    if not text.strip():
        return False
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return any(not isinstance(node, ast.Expr) for node in tree.body)


def build_program(problem: CodeProblem, completion: str) -> str:
    """The program whose exit code decides whether ``completion`` is correct.

    MBPP: ``setup + extract_code(completion) + asserts``. HumanEval (the official harness):
    ``prompt + completion + test + check(entry_point)``; the completion is expected to be
    already cut at the stop sequences.
    """
    if problem.kind == "mbpp":
        return f"{problem.setup}\n{extract_code(completion)}\n{problem.tests}\n"
    return f"{problem.prompt}{completion}\n{problem.tests}\ncheck({problem.entry_point})\n"


# ----------------------------------------------------------------------------- generation


def generate_completions(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    n: int = 1,
    temperature: float = 0.0,
    max_new_tokens: int = 512,
    batch_size: int = 8,
    seed: int = 0,
    stop: Sequence[str] = (),
) -> list[list[str]]:
    """``n`` completions for each prompt: the decoded new tokens only, cut at the first stop string.

    Greedy when ``n == 1`` or ``temperature <= 0`` (then one generation per prompt, repeated
    ``n`` times: greedy samples are identical); otherwise sampling at ``temperature`` with
    ``top_p=1.0, top_k=0``. Never a repetition penalty. Prompts are tokenized without special
    tokens (a chat template already has them) and left-padded; the tokenizer's padding side,
    the model's train/eval mode and the global RNG are restored afterwards.

    Returns:
        ``completions[i][j]``: the j-th completion of ``prompts[i]``.
    """
    if n < 1 or batch_size < 1:
        raise ValueError(f"need n >= 1 and batch_size >= 1, got n={n}, batch_size={batch_size}")
    greedy = n == 1 or temperature <= 0
    copies = 1 if greedy else n
    rows = [i for i in range(len(prompts)) for _ in range(copies)]  # row -> prompt index
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]] if prompts else []
    order = sorted(range(len(rows)), key=lambda r: -lengths[rows[r]])  # stable: a prompt's copies stay in order
    texts: list[str] = [""] * len(rows)

    device = next(model.parameters()).device
    rng_devices = []  # fork_rng restores these CUDA generators (the CPU one always)
    if device.type == "cuda":
        rng_devices = [device.index if device.index is not None else torch.cuda.current_device()]
    options: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "repetition_penalty": 1.0,
        "no_repeat_ngram_size": 0,
    }
    if greedy:
        options.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        options.update(do_sample=True, temperature=temperature, top_p=1.0, top_k=0)
    if stop:  # stop early (saves compute); the decoded text is cut at the stop strings again below
        options.update(stop_strings=list(stop), tokenizer=tokenizer)

    padding_side, was_training = tokenizer.padding_side, model.training
    tokenizer.padding_side = "left"
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=rng_devices):
            torch.manual_seed(seed)
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                enc = tokenizer(
                    [prompts[rows[r]] for r in batch], return_tensors="pt", padding=True, add_special_tokens=False
                ).to(device)  # input_ids, attention_mask: (B, T), left-padded
                out = model.generate(**enc, **options)  # (B, T + new)
                new = out[:, enc["input_ids"].shape[1] :]  # (B, new): the model's own tokens only
                for r, text in zip(batch, tokenizer.batch_decode(new, skip_special_tokens=True), strict=True):
                    texts[r] = truncate_at_stop(text, stop)
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)

    completions: list[list[str]] = [[] for _ in prompts]
    for r, i in enumerate(rows):
        completions[i].append(texts[r])
    return [c * n if greedy else c for c in completions]


# ----------------------------------------------------------------------------- evaluation


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
