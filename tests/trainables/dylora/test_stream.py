"""DyLoRA-MoE skills and stream: the rule-cut Code Alpaca skills, their splits, the phases and the batch stream."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from support import SHARED_DATA

from trainables.dylora import stream as st
from trainables.lm.instructions import IGNORE

needs_data = pytest.mark.skipif(not (SHARED_DATA / "code_alpaca" / "new_codealpaca.json").exists(),
                                reason="shared Code Alpaca data not present")
MIN_SIZE = {"python_basics": 500, "web_requests": 80, "sql": 200}
needs_sst2 = pytest.mark.skipif(not (SHARED_DATA / "sst2" / "train.tsv").exists(), reason="shared SST-2 not present")


@needs_data
def test_skills_are_disjoint_non_empty_and_large_enough() -> None:
    keys = {}
    for name in st.CODE_SKILLS:
        examples = st.load_skill(name, SHARED_DATA)
        assert len(examples) >= MIN_SIZE[name], name
        keys[name] = {st.normalise(e.prompt.split("\n\n")[0]) for e in examples}
        assert len(keys[name]) == len(examples), f"{name} has duplicate instructions"
    names = list(st.CODE_SKILLS)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not keys[a] & keys[b], (a, b)
    counts = st.skill_counts(SHARED_DATA, heldout=32)
    assert {n: c["total"] for n, c in counts.items()} == {n: len(st.load_skill(n, SHARED_DATA)) for n in st.SKILLS}


@needs_sst2
def test_the_sentiment_skill_is_distinct_balanced_review_sentences() -> None:
    examples = st.load_skill("sentiment", SHARED_DATA)
    assert len(examples) == st.SENTIMENT_SIZE and len({e.prompt for e in examples}) == len(examples)
    assert all(e.prompt.startswith(st.SENTIMENT_PROMPT + "\n\n") and e.answer in ("positive", "negative")
               for e in examples)
    assert all(len(e.prompt.split("\n\n", 1)[1].split()) >= st.SENTIMENT_MIN_WORDS for e in examples)
    assert 0.4 < sum(e.answer == "positive" for e in examples) / len(examples) < 0.6


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
@needs_sst2
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


def test_replay_mode_mixes_earlier_skills_into_later_phases() -> None:
    """The seed's 80/20: in phase b, 1 of each 5 rows comes from skill a; phase a (first) is all a; a return
    to a replays b (the earlier skills other than the current one)."""
    step = [0]
    fake = {**_fake_encoded(), "c": [([300 + i, 7], [IGNORE, 7]) for i in range(8)]}
    stream = st.SkillStream([("a", 2), ("b", 2), ("a", 2), ("c", 2)])
    it = st.stream_batches(stream, fake, batch_size=5, pad_id=0, generator=torch.Generator().manual_seed(0),
                           step_fn=lambda: step[0], mode="replay", replay_fraction=0.2)
    counts = []
    for s in range(8):
        step[0] = s
        firsts = [int(t) // 100 for t in next(it)["input_ids"][:, 0]]
        counts.append({k: firsts.count(k) for k in sorted(set(firsts))})
    assert counts[:2] == [{1: 5}, {1: 5}]  # the first phase has nothing earlier to replay
    assert counts[2:4] == [{1: 1, 2: 4}, {1: 1, 2: 4}]  # b, with a replayed
    assert counts[4:6] == [{1: 4, 2: 1}, {1: 4, 2: 1}]  # back to a: b is the earlier skill
    assert all(c.get(3) == 4 and c.get(1, 0) + c.get(2, 0) == 1 for c in counts[6:])  # c: one row of a or b
    full = st.stream_batches(stream, fake, 5, 0, torch.Generator().manual_seed(0), lambda: 3, mode="replay",
                             replay_fraction=0.0)
    assert _skill_ids(next(full)) == {2}  # a fraction of 0 is the naive stream


def test_stream_batches_rejects_bad_inputs() -> None:
    stream = st.SkillStream([("a", 2), ("c", 2)])
    with pytest.raises(KeyError):
        next(st.stream_batches(stream, _fake_encoded(), 2, 0, torch.Generator(), lambda: 0))
    with pytest.raises(ValueError):
        next(st.stream_batches(st.SkillStream([("a", 2)]), _fake_encoded(), 2, 0, torch.Generator(), lambda: 0,
                               mode="mixed"))
    with pytest.raises(ValueError):
        next(st.stream_batches(st.SkillStream([("b", 2)]), _fake_encoded(), 9, 0, torch.Generator(), lambda: 0))


def test_a_users_skill_file_is_a_skill_of_the_stream(tmp_path: Path) -> None:
    from trainables.dylora.family import StreamData

    path = tmp_path / "haiku.jsonl"
    rows = [{"instruction": f"Write haiku {i}", "output": f"line {i}"} for i in range(10)]
    rows[0]["input"] = "about rain"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    examples = st.read_skill_file(path)
    assert len(examples) == 10 and examples[0].prompt == "Write haiku 0\n\nabout rain"
    assert examples[1].answer == "line 1"
    train, heldout = st.skill_splits("haiku", None, 3, seed=0, files={"haiku": str(path)})
    assert len(train) == 7 and len(heldout) == 3 and not {e.prompt for e in train} & {e.prompt for e in heldout}

    data = StreamData(phases=[{"skill": "haiku", "steps": 2}, {"skill": "sql", "steps": 2}],
                      skills={"haiku": str(path)})
    assert data.errors() == []
    wrong = StreamData(phases=[{"skill": "limerick", "steps": 2}], skills={"haiku": "missing.jsonl", "sql": str(path)})
    problems = wrong.errors()
    assert any(p.startswith("skills.haiku: got ") and p.endswith("(not found)") for p in problems), problems
    assert any(p.startswith("skills.sql: got a file for a built-in skill") for p in problems), problems
    assert any(p.startswith("phases[0].skill: got 'limerick', expected one of python_basics, web_requests, sql, "
                            "sentiment, haiku") for p in problems), problems


@pytest.mark.parametrize(("line", "message"), [("{not json", "not JSON"),
                                               ('{"instruction": "x"}', 'non-empty "instruction" and "output"'),
                                               ('["a", "b"]', 'non-empty "instruction" and "output"')])
def test_a_bad_line_of_a_skill_file_is_named(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=f"bad.jsonl:2: .*{message}"):
        st.read_skill_file(path)
