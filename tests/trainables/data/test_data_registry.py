"""Registry: names, splits, WikiText-2/TinyShakespeare local splits, missing-data errors."""

import pickle
from pathlib import Path

import pytest
from support import SHARED_DATA

from trainables.data import DataNotFoundError, corpora, data_root, list_datasets, load_babi, load_text


@pytest.fixture
def shared_data(monkeypatch: pytest.MonkeyPatch) -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real data not found at {SHARED_DATA}: CI and the README expect ../shared/data beside the repo")
    monkeypatch.setenv("MOE_ORCH_DATA", str(SHARED_DATA))
    monkeypatch.setenv("MOE_ORCH_OFFLINE", "1")
    return SHARED_DATA


@pytest.fixture
def empty_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("MOE_ORCH_DATA", str(tmp_path))
    monkeypatch.setenv("MOE_ORCH_OFFLINE", "1")
    return tmp_path


def test_known_names() -> None:
    assert {"wikitext-2", "tinyshakespeare", "babi-qa2", "babi-qa3", "arithmetic"} <= set(list_datasets())


def test_unknown_name_lists_known_names_and_bad_split_lists_splits() -> None:
    with pytest.raises(KeyError) as info:
        load_text("wikitext-103", "train")
    assert all(name in str(info.value) for name in list_datasets())
    with pytest.raises(ValueError, match="train, validation, test"):
        load_text("wikitext-2", "dev")


def test_data_root_default_is_cwd_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MOE_ORCH_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    assert data_root() == tmp_path / "data"


def test_wikitext2_local_splits(shared_data: Path) -> None:
    valid_lines = (shared_data / "wikitext2" / "valid.txt").read_text().split("\n")
    train, validation = load_text("wikitext-2", "train"), load_text("wikitext-2", "validation")
    assert (train + validation).split("\n") == valid_lines
    assert train.count("\n") == int(0.9 * 3760) and validation.count("\n") == 3760 - 3384
    test = load_text("wikitext-2", "test")
    assert test.startswith(" \n = Robert <unk> = \n")
    assert test.count("\n") == 4358


def test_tinyshakespeare_nanogpt_split(shared_data: Path) -> None:
    text = (shared_data / "tinyshakespeare" / "input.txt").read_text()
    train = load_text("tinyshakespeare", "train")
    validation = load_text("tinyshakespeare", "validation")
    assert train.startswith("First Citizen:") and train + validation == text
    assert len(train) == int(0.9 * len(text))
    assert load_text("tinyshakespeare", "test") == validation


def test_missing_data_names_path_and_env(empty_offline: Path) -> None:
    with pytest.raises(DataNotFoundError) as info:
        load_babi(2, "train")
    message = str(info.value)
    assert str(empty_offline / "babi_en_1k" / "qa2_two-supporting-facts_train.txt") in message
    assert "MOE_ORCH_DATA" in message

    with pytest.raises(DataNotFoundError) as info:
        load_text("wikitext-2", "test")
    message = str(info.value)
    assert str(empty_offline / "wikitext2" / "test.txt") in message
    assert "MOE_ORCH_DATA" in message and "wikitext-2-raw-v1" in message
    assert info.value.tried == (empty_offline / "wikitext2" / "test.txt",)
    assert isinstance(info.value, FileNotFoundError)

    copy = pickle.loads(pickle.dumps(info.value))  # Ray pickles exceptions
    assert str(copy) == message and copy.tried == info.value.tried


def test_wikitext2_online_fallback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MOE_ORCH_DATA", str(tmp_path))
    for flag in ("MOE_ORCH_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(flag, raising=False)
    calls = []
    monkeypatch.setattr(corpora, "_wikitext_online", lambda split: calls.append(split) or "txt")
    assert load_text("wikitext-2", "train") == "txt" and calls == ["train"]

    def offline(split: str) -> str:
        raise ConnectionError("no network")

    monkeypatch.setattr(corpora, "_wikitext_online", offline)
    with pytest.raises(DataNotFoundError, match="no network") as info:
        load_text("wikitext-2", "validation")
    assert str(tmp_path / "wikitext2" / "valid.txt") in str(info.value)
