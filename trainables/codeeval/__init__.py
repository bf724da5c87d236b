"""Code evaluation shared by the families: sandboxed execution, MBPP / HumanEval, pass@k.

- ``sandbox``: runs an untrusted program in a constrained process (limits, own process group,
  no network where ``unshare -n`` works);
- ``problems``: ``CodeProblem``s of MBPP and HumanEval, their prompts and test programs;
- ``generation``: ``n`` completions per prompt, the model's own tokens only;
- ``passk``: the unbiased pass@k and per-rank counts merged;
- ``evaluate``: ``evaluate_code`` (generate, execute, count) and ``CodeEvalResult``.
"""

from trainables.codeeval.evaluate import CodeEvalResult, evaluate_code, merge_results
from trainables.codeeval.generation import generate_completions
from trainables.codeeval.passk import merge_counts, pass_at_k, pass_at_k_scores
from trainables.codeeval.problems import (
    HUMANEVAL_STOP,
    MBPP_TEST_IDS,
    CodeProblem,
    build_program,
    build_prompt,
    extract_code,
    humaneval_problems,
    mbpp_problems,
    truncate_at_stop,
)
from trainables.codeeval.sandbox import SandboxResult, network_isolated, run_many, run_program

__all__ = [
    "HUMANEVAL_STOP",
    "MBPP_TEST_IDS",
    "CodeEvalResult",
    "CodeProblem",
    "SandboxResult",
    "build_program",
    "build_prompt",
    "evaluate_code",
    "extract_code",
    "generate_completions",
    "humaneval_problems",
    "mbpp_problems",
    "merge_counts",
    "merge_results",
    "network_isolated",
    "pass_at_k",
    "pass_at_k_scores",
    "run_many",
    "run_program",
    "truncate_at_stop",
]
