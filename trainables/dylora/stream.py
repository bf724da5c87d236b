"""Skills cut out of Code Alpaca (and SST-2) by fixed rules, and the unlabelled stream that presents them one
after another.

DyLoRA-MoE (``../shared/specs/dylora-moe.md``) learns skills that arrive in sequence with no task label: the
model only sees batches, and must notice by itself that the distribution changed. This module supplies the
skills and the stream.

Skills
------
Records come from ``<root>/code_alpaca/code_alpaca_2k.json`` (2,017 ``{instruction, input, output}``) and
``<root>/code_alpaca/new_codealpaca.json`` (4,535 ``{instruction, input, output, response}``; ``response`` equals
``output`` in every record, and ``output`` is used). An example's prompt is the instruction, plus ``"\\n\\n"`` and
the input when the input is not empty; its answer is ``output`` (as in ``trainables.lm.instructions``).

The rule, applied in this order (so the skills are disjoint):

1. **Deduplicate.** Records are read 2k file first, then the new file, each in file order. The key is the
   *normalised instruction* (lower case, runs of whitespace collapsed to one space, stripped); only the first
   record with a given key is kept (this drops 2 records).
2. ``web_requests`` (both files): the *answer* matches ``WEB_RE``, i.e. it uses a Python HTTP client or an HTML
   scraping library: ``import requests``, ``requests.<get|post|put|patch|delete|head|options|request|Session>``,
   ``urllib.request``, ``urlopen(``, ``http.client``, ``aiohttp``, ``httpx``, ``BeautifulSoup``, ``from bs4``
   or ``scrapy``. Only the answer is searched: the candidate patterns over the instruction and input
   (``scrape``, ``HTTP GET request``, ``API endpoint``, ``fetch(``) matched mostly JavaScript ``fetch``/axios,
   Node/Express and Flask *servers*, and prose ("What is web scraping?"), which are not this skill;
   ``urllib.parse`` (URL string handling, no request) is not matched either.
3. ``sql`` (both files): the answer, with leading whitespace and an optional opening fence (```` ``` ```` or
   ```` ```sql ````) removed, starts with a SQL statement: ``SELECT ... FROM`` (``FROM`` anywhere after it),
   ``CREATE TABLE``, ``INSERT INTO``, ``UPDATE <name> SET``, ``DELETE FROM``, ``ALTER TABLE`` or ``WITH <name> AS``
   (case-insensitive). SQL embedded in Python, PHP or Java code is therefore not in ``sql``.
4. ``python_basics`` (``code_alpaca_2k.json`` only): the answer contains a Python marker (``PY_RE``: a line
   ``def name(...):``, ``print(``, a line ``import x`` / ``from x import``, a line ``for|while ...:``,
   ``if|elif ...:``, ``else:``, ``class Name(...):``, ``lambda ...:``, or a line starting with ``return``) **and**
   no marker of another language (``NOT_PY_RE``: a line ending in ``;``; ``) {`` at a line end; ``else {``,
   ``do {``, ``try {``; a line that is only ``}`` (optionally ``} else ...``); ``function f(...) {``;
   ``public|private|protected <word>``; ``#include``; ``SELECT ... FROM`` on one line; an HTML tag (``html``,
   ``div``, ``p``, ``table``, ``script``, ...); ``console.log``; ``System.out``; ``std::``; ``=>``; ``===``;
   ``!==``; ``&&``; ``||``; ``x++``/``++x``; a line starting with ``//``; ``/*``; ``var|let|const x =``;
   ``func f(``; ``fn f(``; ``puts``; a line that is only ``end``; ``$name =``; ``int main``; ``printf(``;
   ``import java.``; ``@interface``; a ``def`` line without parentheses, as in Ruby).

One skill is not code: ``sentiment`` (``<root>/sst2/train.tsv``, GLUE SST-2): the first ``SENTIMENT_SIZE``
distinct rows of at least ``SENTIMENT_MIN_WORDS`` words (SST-2's train split mixes short phrases into its
sentences), prompt ``SENTIMENT_PROMPT`` plus ``"\n\n"`` and the review, answer ``positive`` or ``negative``. A
one-word answer after code is the kind of shift that makes sequential fine-tuning forget (docs/dylora.md).

Counts with the shared data (``python -m trainables.dylora.stream [root]`` prints them and 2 samples per skill):
``python_basics`` 725, ``web_requests`` 90, ``sql`` 264. ``skill_splits`` holds out a seeded, fixed-size set per
skill that never trains.

Stream
------
``SkillStream`` is a list of phases ``(skill, optimizer steps)``; ``stream_batches`` yields collated batches
forever. In mode ``"stream"`` each batch comes from the skill of the phase the caller's *current* optimizer step
falls in (``step_fn()`` is read when the next batch is requested, so a prefetching loader would lag by its queue
depth); in mode ``"joint"`` (the joint-training upper bound) every batch draws uniformly from the union of all
the stream's skills from step 0, so a skill's share of the batches is proportional to its size. Each skill (or
the union) is reshuffled every epoch with the given generator; an epoch's incomplete tail is skipped, as in
``trainables.lm.instructions.batches``. Batches carry ``input_ids``, ``attention_mask`` and ``labels`` only: no
skill label reaches the model.
"""

from __future__ import annotations

import json
import random
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from trainables.data import data_root
from trainables.lm.instructions import Example, collate

CODE_SKILLS = ("python_basics", "web_requests", "sql")  # cut out of Code Alpaca
SKILLS = (*CODE_SKILLS, "sentiment")
SENTIMENT_PROMPT = "Is the sentiment of this movie review positive or negative?"
SENTIMENT_MIN_WORDS = 8  # SST-2 train mixes phrases into its sentences: keep the sentence-like rows
SENTIMENT_SIZE = 2000
MODES = ("stream", "joint", "replay")
FILES = ("code_alpaca_2k.json", "new_codealpaca.json")

Encoded = tuple[list[int], list[int]]  # (input_ids, labels) of one example (trainables.lm.instructions.encode)

WEB_RE = re.compile(
    r"\bimport requests\b|\brequests\.(get|post|put|patch|delete|head|options|request|Session)\b"
    r"|\burllib\.request\b|\burlopen\(|\bhttp\.client\b|\baiohttp\b|\bhttpx\b|\bBeautifulSoup\b|\bfrom bs4\b"
    r"|\bscrapy\b")
SQL_RE = re.compile(
    r"(SELECT\b[\s\S]*?\bFROM\b|CREATE TABLE\b|INSERT INTO\b|UPDATE \w+ SET\b|DELETE FROM\b|ALTER TABLE\b"
    r"|WITH \w+ AS\b)", re.I)
_FENCE_RE = re.compile(r"^```(sql)?\s*", re.I)
PY_RE = re.compile(
    r"^\s*def \w+\s*\(.*\)\s*(->.*)?:|\bprint\(|^\s*import \w+|^\s*from [\w.]+ import "
    r"|^\s*(for|while) .+:\s*(#.*)?$|^\s*(if|elif) .+:\s*(#.*)?$|^\s*else:\s*$|^\s*class \w+(\(.*\))?:"
    r"|\blambda\b.*:|^\s*return\b", re.M)
NOT_PY_RE = re.compile(
    r";\s*$|\)\s*\{\s*$|\b(else|do|try)\s*\{|^\s*\}\s*(else\b.*)?$|\bfunction\s*\w*\s*\([^)]*\)\s*\{"
    r"|\b(public|private|protected)\s+\w+|#include|\bSELECT\b.*\bFROM\b"
    r"|</?(html|head|body|div|p|span|table|tr|td|th|ul|ol|li|form|input|button|h[1-6]|a|script|style)\b[^>]*>"
    r"|console\.log|System\.out|\bstd::|=>|===|!==|&&|\|\||\w\+\+|\+\+\w|^\s*//|/\*|\b(var|let|const)\s+\w+\s*="
    r"|\bfunc\s+\w+\s*\(|\bfn\s+\w+\s*\(|\bputs\b|^\s*end\s*$|\$\w+\s*=|\bint\s+main\b|\bprintf\(|^\s*import\s+java\."
    r"|@interface|^\s*def \w+[^(\n]*$", re.M)


def normalise(instruction: str) -> str:
    """The deduplication key: lower case, whitespace runs collapsed to one space, stripped."""
    return " ".join(instruction.lower().split())


def is_web_requests(answer: str) -> bool:
    """Rule 2: the answer uses a Python HTTP client or HTML scraping library (``WEB_RE``)."""
    return WEB_RE.search(answer) is not None


def is_sql(answer: str) -> bool:
    """Rule 3: the answer (past leading whitespace and an optional code fence) starts with a SQL statement."""
    return SQL_RE.match(_FENCE_RE.sub("", answer.lstrip())) is not None


def is_python(answer: str) -> bool:
    """Rule 4's language test: a Python marker (``PY_RE``) and no other language's marker (``NOT_PY_RE``)."""
    return PY_RE.search(answer) is not None and NOT_PY_RE.search(answer) is None


def skill_of(answer: str, source: str) -> str | None:
    """The skill of one deduplicated record (rules 2-4 in order), or None; ``source`` is its file name."""
    if is_web_requests(answer):
        return "web_requests"
    if is_sql(answer):
        return "sql"
    if source == FILES[0] and is_python(answer):
        return "python_basics"
    return None


@lru_cache(maxsize=4)
def _skills_at(folder: str) -> dict[str, tuple[Example, ...]]:
    seen: set[str] = set()
    out: dict[str, list[Example]] = {name: [] for name in CODE_SKILLS}
    for source in FILES:
        for row in json.loads((Path(folder) / source).read_text()):
            key = normalise(row["instruction"])
            if key in seen:
                continue
            seen.add(key)
            skill = skill_of(row["output"], source)
            if skill is not None:
                prompt = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
                out[skill].append(Example(prompt, row["output"]))
    return {name: tuple(examples) for name, examples in out.items()}


@lru_cache(maxsize=2)
def _sentiment_at(path: str) -> tuple[Example, ...]:
    seen: set[str] = set()
    out: list[Example] = []
    with open(path, encoding="utf-8") as f:
        next(f)  # the header: sentence<TAB>label
        for line in f:
            sentence, label = line.rstrip("\n").rsplit("\t", 1)
            sentence = sentence.strip()
            if len(sentence.split()) < SENTIMENT_MIN_WORDS or sentence in seen:
                continue
            seen.add(sentence)
            out.append(Example(f"{SENTIMENT_PROMPT}\n\n{sentence}", "positive" if label == "1" else "negative"))
            if len(out) == SENTIMENT_SIZE:
                break
    return tuple(out)


def read_skill_file(path: str | Path) -> list[Example]:
    """A user's skill (``data.skills: {name: path}``): a JSON-lines file of ``{"instruction", "output"}``
    records, with an optional ``"input"`` appended to the instruction as Code Alpaca's are. ValueError
    naming the file and line of a bad record."""
    path = Path(path)
    examples = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) and row[k].strip()
                                                for k in ("instruction", "output")):
            raise ValueError(f"{path}:{number}: expected an object with non-empty \"instruction\" and \"output\" "
                             "strings")
        extra = row.get("input")
        examples.append(Example(row["instruction"] + (f"\n\n{extra}" if isinstance(extra, str) and extra else ""),
                                row["output"]))
    return examples


def load_skill(name: str, root: str | Path | None = None, files: dict[str, str] | None = None) -> list[Example]:
    """Every example of skill ``name``: a user's file when ``files`` (``data.skills``) names it, else one
    of the built-in ``SKILLS``, in file order (2k file first)."""
    if files and name in files:
        return read_skill_file(files[name])
    if name not in SKILLS:
        raise ValueError(f"unknown skill {name!r}; expected one of {', '.join([*SKILLS, *(files or {})])}")
    if name == "sentiment":
        return list(_sentiment_at(str(data_root(root) / "sst2" / "train.tsv")))
    return list(_skills_at(str(data_root(root) / "code_alpaca"))[name])


def skill_splits(name: str, root: str | Path | None, heldout: int, seed: int,
                 max_train: int | None = None, files: dict[str, str] | None = None
                 ) -> tuple[list[Example], list[Example]]:
    """``(train, heldout)`` of skill ``name``: a ``random.Random(seed)`` shuffle, the first ``heldout`` held out.

    The held-out set depends on ``seed`` and ``heldout`` only (not on ``max_train``) and never overlaps the
    training set, which is the rest of the shuffle, cut to ``max_train`` examples when given.
    """
    examples = load_skill(name, root, files)
    if not 0 < heldout < len(examples):
        raise ValueError(f"heldout={heldout} must be in 1..{len(examples) - 1} for skill {name!r}")
    random.Random(seed).shuffle(examples)
    train = examples[heldout:]
    return (train[:max_train] if max_train is not None else train), examples[:heldout]


def skill_counts(root: str | Path | None = None, heldout: int = 32) -> dict[str, dict[str, int]]:
    """Per skill: ``{"total", "train", "heldout"}`` for a split with ``heldout`` held-out examples."""
    counts = {}
    for name in SKILLS:
        total = len(load_skill(name, root))
        counts[name] = {"total": total, "train": total - heldout, "heldout": heldout}
    return counts


@dataclass(frozen=True)
class SkillStream:
    """Phases of a skill stream: ``phases[i] = (skill, steps)``; phase 0 covers optimizer steps ``0..n0-1``, etc.

    A skill may appear in more than one phase (a revisit). Steps at or past ``total_steps`` stay in the last phase.
    """

    phases: list[tuple[str, int]]

    def __post_init__(self) -> None:
        if not self.phases:
            raise ValueError("a stream needs at least one phase")
        for skill, steps in self.phases:
            if steps <= 0:
                raise ValueError(f"phase {skill!r} has {steps} steps; every phase needs at least 1")

    @property
    def total_steps(self) -> int:
        """The number of optimizer steps of the whole stream."""
        return sum(steps for _, steps in self.phases)

    @property
    def skills(self) -> list[str]:
        """The distinct skills of the stream, in order of first appearance."""
        return list(dict.fromkeys(skill for skill, _ in self.phases))

    def phase_ends(self) -> list[int]:
        """The step count after which each phase is complete: ``[n0, n0 + n1, ..., total_steps]``."""
        ends, total = [], 0
        for _, steps in self.phases:
            total += steps
            ends.append(total)
        return ends

    def boundaries(self) -> list[int]:
        """The steps at which phases 1, 2, ... start (the true novelty points): ``phase_ends()`` without the last."""
        return self.phase_ends()[:-1]

    def phase_at(self, step: int) -> int:
        """The 0-based phase of optimizer step ``step`` (``total_steps`` and later: the last phase)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        for i, end in enumerate(self.phase_ends()):
            if step < end:
                return i
        return len(self.phases) - 1

    def skill_at(self, step: int) -> str:
        """The skill of the phase of optimizer step ``step``."""
        return self.phases[self.phase_at(step)][0]


class _EpochSampler:
    """Draws ``n`` items at a time from a pool, walking a fresh ``torch.randperm`` each epoch (tails skipped)."""

    def __init__(self, pool: Sequence[Encoded], generator: torch.Generator) -> None:
        if not pool:
            raise ValueError("cannot sample from an empty pool")
        self.pool, self.generator = pool, generator
        self.order: list[int] = []
        self.pos = 0

    def take(self, n: int) -> list[Encoded]:
        if n > len(self.pool):
            raise ValueError(f"batch of {n} from a pool of {len(self.pool)} examples")
        if self.pos + n > len(self.order):
            self.order = torch.randperm(len(self.pool), generator=self.generator).tolist()
            self.pos = 0
        picked = self.order[self.pos:self.pos + n]
        self.pos += n
        return [self.pool[i] for i in picked]


def stream_batches(stream: SkillStream, encoded_by_skill: dict[str, list[Encoded]], batch_size: int, pad_id: int,
                   generator: torch.Generator, step_fn: Callable[[], int],
                   mode: str = "stream", replay_fraction: float = 0.2) -> Iterator[dict[str, torch.Tensor]]:
    """Endless collated batches (``input_ids``, ``attention_mask``, ``labels``) following ``stream``.

    ``mode="stream"``: each batch is ``batch_size`` examples of ``stream.skill_at(step_fn())``, with ``step_fn``
    called when the batch is requested. ``mode="joint"``: each batch is drawn uniformly from the union of all the
    stream's skills, whatever the step (``step_fn`` is not called). ``mode="replay"`` (the DyLoRA-MoE seed's
    80/20 mixture): as ``stream``, but ``round(replay_fraction * batch_size)`` of each batch are drawn from the
    union of the skills of the *earlier* phases other than the current skill (none in the first phase, so it
    is all current there). Every pool is reshuffled per epoch with
    ``generator``; ``encoded_by_skill`` must hold each skill of the stream with at least ``batch_size`` examples.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    missing = [skill for skill in stream.skills if skill not in encoded_by_skill]
    if missing:
        raise KeyError(f"no encoded examples for skill(s) {', '.join(missing)}")
    if mode == "joint":
        union = _EpochSampler([row for skill in stream.skills for row in encoded_by_skill[skill]], generator)
        while True:
            yield collate(union.take(batch_size), pad_id)
    samplers = {skill: _EpochSampler(encoded_by_skill[skill], generator) for skill in stream.skills}
    if mode == "stream":
        while True:
            yield collate(samplers[stream.skill_at(step_fn())].take(batch_size), pad_id)
    replayed = min(batch_size, round(replay_fraction * batch_size))
    earlier: dict[int, _EpochSampler | None] = {}  # phase -> a sampler over its earlier skills' union
    for phase, (skill, _) in enumerate(stream.phases):
        names = list(dict.fromkeys(s for s, _ in stream.phases[:phase] if s != skill))
        rows = [row for s in names for row in encoded_by_skill[s]]
        earlier[phase] = _EpochSampler(rows, generator) if names else None
    while True:
        phase = stream.phase_at(step_fn())
        past = earlier[phase]
        if past is None or replayed == 0:
            yield collate(samplers[stream.phases[phase][0]].take(batch_size), pad_id)
        else:
            yield collate(samplers[stream.phases[phase][0]].take(batch_size - replayed) + past.take(replayed), pad_id)


def print_skills(root: str | Path | None = None, heldout: int = 32, samples: int = 2) -> None:
    """Print each skill's counts (total / train / held-out) and ``samples`` of its examples, for the docs."""
    for name, counts in skill_counts(root, heldout).items():
        print(f"## {name}: total {counts['total']}, train {counts['train']}, held-out {counts['heldout']}")
        for example in load_skill(name, root)[:samples]:
            print(f"--- prompt:\n{example.prompt}\n--- answer:\n{example.answer}\n")


if __name__ == "__main__":
    print_skills(sys.argv[1] if len(sys.argv) > 1 else None)
