"""DyLoRA-MoE skills and stream: the rule-cut Code Alpaca skills, their splits, the phases and the batch stream."""

from __future__ import annotations

import re

import pytest
import torch
from support import SHARED_DATA

from trainables.dylora import stream as st
from trainables.lm.instructions import IGNORE

needs_data = pytest.mark.skipif(not (SHARED_DATA / "code_alpaca" / "new_codealpaca.json").exists(),
                                reason="shared Code Alpaca data not present")
MIN_SIZE = {"python_basics": 500, "web_requests": 80, "sql": 200}


@needs_data
def test_skills_are_disjoint_non_empty_and_large_enough() -> None:
    keys = {}
    for name in st.SKILLS:
        examples = st.load_skill(name, SHARED_DATA)
        assert len(examples) >= MIN_SIZE[name], name
        keys[name] = {st.normalise(e.prompt.split("\n\n")[0]) for e in examples}
        assert len(keys[name]) == len(examples), f"{name} has duplicate instructions"
    names = list(st.SKILLS)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not keys[a] & keys[b], (a, b)
    counts = st.skill_counts(SHARED_DATA, heldout=32)
    assert {n: c["total"] for n, c in counts.items()} == {n: len(st.load_skill(n, SHARED_DATA)) for n in st.SKILLS}


@needs_data
def test_every_skill_example_satisfies_its_rule() -> None:
    http = re.compile(r"requests|urllib|aiohttp|httpx|http\.client|BeautifulSoup|bs4|scrapy")
    for example in st.load_skill("web_requests", SHARED_DATA):
        assert st.is_web_requests(example.answer) and http.search(example.answer), example.prompt
    for example in st.load_skill("sql", SHARED_DATA):
        assert st.is_sql(example.answer) and not st.is_web_requests(example.answer)
        assert re.search(r"\b(SELECT|CREATE|INSERT|UPDATE|DELETE|ALTER|WITH)\b", example.answer, re.I)
    for example in st.load_skill("python_basics", SHARED_DATA):
        assert st.is_python(example.answer) and not st.is_web_requests(example.answer)
        assert not re.search(r"#include|console\.log|public static|System\.out", example.answer)


def test_rules_on_hand_written_answers() -> None:
    assert st.is_web_requests("import requests\nr = requests.get(url)")
    assert st.is_web_requests("from bs4 import BeautifulSoup\nsoup = BeautifulSoup(html, 'html.parser')")
    assert not st.is_web_requests("from urllib.parse import urlparse")
    assert not st.is_web_requests("fetch('https://x.org').then(r => r.json())")
    assert st.is_sql("  ```sql\nSELECT name\nFROM users;")
    assert not st.is_sql("query = 'SELECT * FROM t'")
    assert st.is_python("def f(x):\n    return x + 1")
    assert not st.is_python("function f(x) {\n  return x + 1;\n}")
    assert not st.is_python("The answer is 42.")
    assert st.skill_of("def f():\n    return 1", "new_codealpaca.json") is None  # python_basics: 2k file only
    assert st.skill_of("def f():\n    return 1", "code_alpaca_2k.json") == "python_basics"


@needs_data
@pytest.mark.parametrize("name", st.SKILLS)
def test_splits_are_disjoint_sized_and_deterministic(name: str) -> None:
    train, held = st.skill_splits(name, SHARED_DATA, heldout=32, seed=3, max_train=None)
    assert len(held) == 32 and len(train) + 32 == len(st.load_skill(name, SHARED_DATA))
    assert not {e.prompt for e in train} & {e.prompt for e in held}
    again_train, again_held = st.skill_splits(name, SHARED_DATA, heldout=32, seed=3, max_train=None)
    assert (again_train, again_held) == (train, held)
    cut_train, cut_held = st.skill_splits(name, SHARED_DATA, heldout=32, seed=3, max_train=20)
    assert cut_held == held and cut_train == train[:20]
    assert st.skill_splits(name, SHARED_DATA, heldout=32, seed=4)[1] != held
    with pytest.raises(ValueError):
        st.skill_splits(name, SHARED_DATA, heldout=len(train) + 32, seed=3)


def test_phases_boundaries_and_ends() -> None:
    stream = st.SkillStream([("a", 3), ("b", 2), ("c", 4)])
    assert stream.total_steps == 9
    assert stream.phase_ends() == [3, 5, 9]
    assert stream.boundaries() == [3, 5]
    assert [stream.phase_at(s) for s in range(11)] == [0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 2]
    assert stream.skill_at(4) == "b"
    single = st.SkillStream([("a", 5)])
    assert single.boundaries() == [] and single.phase_ends() == [5] and single.phase_at(7) == 0
    assert st.SkillStream([("a", 1), ("b", 1), ("a", 1)]).skills == ["a", "b"]
    with pytest.raises(ValueError):
        st.SkillStream([("a", 0)])
    with pytest.raises(ValueError):
        stream.phase_at(-1)


def _fake_encoded() -> dict[str, list[tuple[list[int], list[int]]]]:
    """Skill ``a`` uses token ids 100..111, ``b`` 200..207: a batch's skill shows in its first tokens."""
    return {"a": [([100 + i, 7, 8], [IGNORE, 7, 8]) for i in range(12)],
            "b": [([200 + i, 7], [IGNORE, 7]) for i in range(8)]}


def _skill_ids(batch: dict[str, torch.Tensor]) -> set[int]:
    return {int(t) // 100 for t in batch["input_ids"][:, 0]}


def test_stream_mode_follows_the_callers_step() -> None:
    step = [0]
    stream = st.SkillStream([("a", 6), ("b", 4)])
    it = st.stream_batches(stream, _fake_encoded(), batch_size=4, pad_id=0, generator=torch.Generator().manual_seed(0),
                           step_fn=lambda: step[0], mode="stream")
    seen_a: list[int] = []
    for s in range(12):
        step[0] = s
        batch = next(it)
        assert set(batch) == {"input_ids", "attention_mask", "labels"}
        assert _skill_ids(batch) == ({1} if s < 6 else {2}), s
        if s < 3:
            seen_a += batch["input_ids"][:, 0].tolist()
    assert sorted(seen_a) == list(range(100, 112))  # one epoch of skill a: each example exactly once
    batch = next(it)  # the padded shapes follow collate: b rows are 2 tokens long
    assert batch["input_ids"].shape == (4, 2) and batch["attention_mask"].sum() == 8


def test_stream_mode_is_deterministic_for_a_generator_seed() -> None:
    def first_ids(seed: int) -> list[list[int]]:
        it = st.stream_batches(st.SkillStream([("a", 3), ("b", 3)]), _fake_encoded(), 4, 0,
                               torch.Generator().manual_seed(seed), lambda: 0)
        return [next(it)["input_ids"][:, 0].tolist() for _ in range(6)]

    assert first_ids(1) == first_ids(1)
    assert first_ids(1) != first_ids(2)


def test_joint_mode_mixes_every_skill_from_step_zero() -> None:
    calls = []
    it = st.stream_batches(st.SkillStream([("a", 5), ("b", 5)]), _fake_encoded(), batch_size=5, pad_id=0,
                           generator=torch.Generator().manual_seed(0), step_fn=lambda: calls.append(1) or 0,
                           mode="joint")
    batches = [next(it) for _ in range(4)]  # one epoch of the 20-example union
    firsts = sorted(t for b in batches for t in b["input_ids"][:, 0].tolist())
    assert firsts == list(range(100, 112)) + list(range(200, 208))
    assert any(_skill_ids(b) == {1, 2} for b in batches)
    assert not calls  # the step does not matter in joint mode


def test_stream_batches_rejects_bad_inputs() -> None:
    stream = st.SkillStream([("a", 2), ("c", 2)])
    with pytest.raises(KeyError):
        next(st.stream_batches(stream, _fake_encoded(), 2, 0, torch.Generator(), lambda: 0))
    with pytest.raises(ValueError):
        next(st.stream_batches(st.SkillStream([("a", 2)]), _fake_encoded(), 2, 0, torch.Generator(), lambda: 0,
                               mode="mixed"))
    with pytest.raises(ValueError):
        next(st.stream_batches(st.SkillStream([("b", 2)]), _fake_encoded(), 9, 0, torch.Generator(), lambda: 0))
