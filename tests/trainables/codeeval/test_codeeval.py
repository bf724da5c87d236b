"""MBPP / HumanEval evaluation: pass@k, problem loading, programs run in the real sandbox, generation."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from support import SHARED_DATA

from trainables.codeeval import (
    HUMANEVAL_STOP,
    CodeEvalResult,
    build_program,
    build_prompt,
    evaluate_code,
    extract_code,
    generate_completions,
    humaneval_problems,
    mbpp_problems,
    merge_counts,
    merge_results,
    pass_at_k,
    pass_at_k_scores,
    truncate_at_stop,
)
from trainables.codeeval.sandbox import run_many

needs_data = pytest.mark.skipif(
    not (SHARED_DATA / "mbpp" / "mbpp.jsonl").is_file() or not (SHARED_DATA / "humaneval").is_dir(),
    reason=f"MBPP / HumanEval not found under {SHARED_DATA}",
)


# ----------------------------------------------------------------------------- pass@k


def _brute_force(n: int, c: int, k: int) -> float:
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(samples, k))
    return sum(any(s) for s in subsets) / len(subsets)


def test_pass_at_k_matches_brute_force() -> None:
    for n in range(1, 8):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(_brute_force(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_k_edge_cases() -> None:
    assert pass_at_k(10, 0, 1) == 0.0
    assert pass_at_k(10, 10, 10) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(5, 1, 5) == 1.0  # n - c < k: every 5-subset holds the correct one
    assert pass_at_k(200, 1, 100) == pytest.approx(0.5)
    assert pass_at_k(200, 7, 10) == pytest.approx(1 - math.comb(193, 10) / math.comb(200, 10))
    for bad in [(5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)]:
        with pytest.raises(ValueError):
            pass_at_k(*bad)


def test_scores_and_merge() -> None:
    rank0 = {"a": (4, 0), "b": (4, 4)}
    rank1 = {"c": (4, 1)}
    merged = merge_counts([rank0, rank1])
    assert merged == {"a": (4, 0), "b": (4, 4), "c": (4, 1)}
    scores = pass_at_k_scores(merged, (1, 2, 8))  # k = 8 > n is dropped
    assert set(scores) == {"pass@1", "pass@2"}
    assert scores["pass@1"] == pytest.approx((0 + 1 + 0.25) / 3)
    assert scores["pass@2"] == pytest.approx((0 + 1 + 0.5) / 3)
    with pytest.raises(ValueError):
        merge_counts([{"a": (4, 0)}, {"a": (4, 1)}])

    parts = [CodeEvalResult("mbpp", rank0, (1, 2), 3.0), CodeEvalResult("mbpp", rank1, (1, 2), 5.0)]
    result = merge_results(parts)
    assert result.per_problem == merged and result.seconds == 5.0
    metrics = result.metrics()
    assert metrics["mbpp/pass@1"] == pytest.approx(scores["pass@1"])
    assert metrics["mbpp/n_problems"] == 3 and metrics["mbpp/n_samples"] == 12
    assert set(result.metrics("val/mbpp")) == {
        f"val/mbpp/{m}" for m in ("pass@1", "pass@2", "n_problems", "n_samples", "seconds")
    }


# ----------------------------------------------------------------------------- text handling


def test_extract_code_and_stop() -> None:
    assert extract_code("Here:\n```python\ndef f():\n    return 1\n```\nDone.\n```x```") == "def f():\n    return 1\n"
    assert extract_code("```\nx = 1\n```") == "x = 1\n"
    assert extract_code("```py\nx = 1\n") == "x = 1\n"  # unclosed fence: to the end
    assert extract_code("def g(): pass\n") == "def g(): pass\n"
    assert extract_code("def g():\n    return 2\n```\nThis returns 2.") == "def g():\n    return 2\n"  # closing fence
    assert extract_code("Solution\n```\nx = 1\n```") == "x = 1\n"  # a bare word before the fence is not code
    assert extract_code("Here it is:\n```\nx = 1\n```") == "x = 1\n"
    body = "    return a + b\n\n\ndef extra():\n    pass\n"
    assert truncate_at_stop(body, HUMANEVAL_STOP) == "    return a + b\n\n"
    assert truncate_at_stop("    x = 1\n# note\nprint(x)", HUMANEVAL_STOP) == "    x = 1"
    assert truncate_at_stop("no stop here", HUMANEVAL_STOP) == "no stop here"


# ----------------------------------------------------------------------------- problems and programs


@needs_data
def test_mbpp_problems_are_the_test_split() -> None:
    problems = mbpp_problems(SHARED_DATA)
    assert len(problems) == 500
    assert problems[0].task_id == "MBPP/11" and problems[-1].task_id == "MBPP/510"
    subset = mbpp_problems(SHARED_DATA, limit=5)
    assert [p.task_id for p in subset] == [f"MBPP/{i}" for i in range(11, 16)]
    first = subset[0]
    assert first.kind == "mbpp" and first.entry_point is None
    assert "Your code should pass these tests:\nassert " in first.prompt
    assert first.tests.count("assert ") == 3
    assert mbpp_problems(SHARED_DATA, limit=1, prompt_tests=1)[0].prompt.count("assert ") == 1


@needs_data
def test_humaneval_problems() -> None:
    problems = humaneval_problems(SHARED_DATA)
    assert len(problems) == 164
    first = humaneval_problems(SHARED_DATA, limit=1)[0]
    assert first.task_id == "HumanEval/0" and first.entry_point == "has_close_elements"
    assert first.kind == "humaneval" and "def check(candidate)" in first.tests


@needs_data
def test_reference_solutions_pass_and_wrong_ones_fail() -> None:
    mbpp = mbpp_problems(SHARED_DATA, limit=5)
    human = humaneval_problems(SHARED_DATA, limit=5)
    good = [build_program(p, p.reference) for p in mbpp]
    good += [build_program(p, p.reference) for p in human]
    results = run_many(good, workers=2, timeout_s=20.0)
    assert [r.status for r in results] == ["passed"] * 10, [r.stderr_tail for r in results if not r.passed]

    wrong_mbpp = "```python\ndef remove_Occ(s, ch):\n    return s\n```"
    wrong_human = "    return not True\n"
    chat_answer = (
        "Sure!\n```python\ndef remove_Occ(s, ch):\n    s = s.replace(ch, '', 1)\n"
        "    i = s.rfind(ch)\n    return s if i < 0 else s[:i] + s[i + 1:]\n```\nThis removes both."
    )
    bad = run_many([build_program(mbpp[0], wrong_mbpp), build_program(human[0], wrong_human)], timeout_s=20.0)
    assert [r.status for r in bad] == ["failed", "failed"]
    assert "AssertionError" in bad[0].stderr_tail
    (fenced,) = run_many([build_program(mbpp[0], chat_answer)], timeout_s=20.0)
    assert fenced.passed, fenced.stderr_tail


# ----------------------------------------------------------------------------- generation (tiny random model)


@pytest.fixture(scope="module")
def tiny() -> tuple[object, object]:
    from trainables.lm.base import load_base

    return load_base("tiny-llama")


@needs_data
def test_generate_completions_shape_and_determinism(tiny: tuple[object, object]) -> None:
    model, tok = tiny
    prompts = [build_prompt(p, tok) for p in mbpp_problems(SHARED_DATA, limit=2)]
    assert prompts[0].startswith("<|im_start|>user\n") and prompts[0].endswith("<|im_start|>assistant\n")
    side = tok.padding_side
    rng = torch.get_rng_state()
    sampled = generate_completions(model, tok, prompts, n=3, temperature=0.8, max_new_tokens=16, batch_size=4, seed=7)
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG is left alone
    assert tok.padding_side == side
    assert [len(c) for c in sampled] == [3, 3]
    assert all(isinstance(s, str) for c in sampled for s in c)
    again = generate_completions(model, tok, prompts, n=3, temperature=0.8, max_new_tokens=16, batch_size=4, seed=7)
    assert again == sampled
    assert len({s for c in sampled for s in c}) > 1  # sampling varies across samples
    for prompt, samples in zip(prompts, sampled, strict=True):
        assert not any(s.startswith(prompt[:20]) for s in samples)  # new tokens only, never the prompt
    greedy = generate_completions(model, tok, prompts, n=2, temperature=0.0, max_new_tokens=16)
    assert all(len(c) == 2 and c[0] == c[1] for c in greedy)
    assert not model.training


@needs_data
def test_evaluate_code_on_a_random_model(tiny: tuple[object, object]) -> None:
    model, tok = tiny
    problems = mbpp_problems(SHARED_DATA, limit=2)
    lines: list[str] = []
    result = evaluate_code(model, tok, problems, n=1, max_new_tokens=16, batch_size=2, log=lines.append)
    assert result.kind == "mbpp"
    assert result.per_problem == {"MBPP/11": (1, 0), "MBPP/12": (1, 0)}
    assert result.scores == {"pass@1": 0.0}
    assert result.metrics()["mbpp/pass@1"] == 0.0 and result.n_samples == 2
    assert result.examples and result.examples[0]["status"] == "failed"
    assert lines  # progress was logged

    halves = [evaluate_code(model, tok, problems, max_new_tokens=16, rank=r, world_size=2, log=None) for r in range(2)]
    assert [list(h.per_problem) for h in halves] == [["MBPP/11"], ["MBPP/12"]]
    assert merge_results(halves).per_problem == result.per_problem
