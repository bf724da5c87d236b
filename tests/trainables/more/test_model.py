"""The MoRE model: each variant trains, shares parameters as documented, and round-trips."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from trainables.data import ByteTokenizer
from trainables.more import VARIANTS, MoREConfig, MoRELM, load_checkpoint, save_checkpoint

TINY = dict(vocab_size=64, block_size=16, n_layer=3, n_head=2, d_model=32, num_experts=4, top_k=2, expert_hidden=32)


def tiny(variant: str, num_recurrences: int = 2, **overrides) -> MoRELM:
    torch.manual_seed(0)
    return MoRELM(MoREConfig(variant=variant, num_recurrences=num_recurrences, **{**TINY, **overrides}))


def block_params(model: MoRELM) -> int:
    return sum(p.numel() for p in model.blocks.parameters())


def forward_flops(model: MoRELM, idx: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter:
        model(idx)
    return counter.get_total_flops()


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_loss_falls_on_a_tiny_batch(variant: str) -> None:
    model = tiny(variant)
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 64, (4, 16), generator=gen)
    x, y = idx[:, :-1], idx[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    first = None
    for _ in range(40):
        out = model(x, y)
        first = out.loss.item() if first is None else first
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert out.loss.item() < 0.6 * first, f"{variant}: {first:.3f} -> {out.loss.item():.3f}"


@pytest.mark.parametrize("variant", ["more_a", "more_b", "more_c", "more_d"])
def test_recurrent_blocks_share_parameters_while_compute_grows(variant: str) -> None:
    idx = torch.randint(0, 64, (2, 16))
    one, four = tiny(variant, 1), tiny(variant, 4)
    # The recurring blocks are the same modules: their parameters do not grow with R ...
    assert block_params(one) == block_params(four) == block_params(tiny("base"))
    # ... while their compute does, by the documented number of block applications.
    L = TINY["n_layer"]
    expected_apps = {"more_a": 4 * L, "more_b": 2 + (L - 2) * 4, "more_c": 4 * L, "more_d": 4 * L}[variant]
    assert four.block_applications() == expected_apps
    assert len(four(idx).routing) == expected_apps  # one MoE call per block application
    assert forward_flops(four, idx) > 1.5 * forward_flops(one, idx)


def test_total_parameters_per_variant_are_as_documented() -> None:
    D, R = TINY["d_model"], 3
    base = tiny("base").num_parameters()
    assert tiny("more_a", R).num_parameters() == base
    assert tiny("more_b", R).num_parameters() == base
    assert tiny("more_c", R).num_parameters() == base + (R + 2) * D  # branch embeddings + combiner and its norm
    assert tiny("more_d", R).num_parameters() == base + D * D + D  # feedback projection + its norm
    assert tiny("base", 1).num_parameters() == tiny("base", 4).num_parameters()  # R is ignored


def test_active_parameters_exclude_the_unchosen_experts() -> None:
    model = tiny("base")
    per_expert = model.blocks[0].moe.experts.params_per_expert()
    E, k, L = TINY["num_experts"], TINY["top_k"], TINY["n_layer"]
    assert model.num_parameters() - model.num_active_parameters() == L * (E - k) * per_expert
    dense_like = tiny("base", num_experts=2, top_k=2)
    assert dense_like.num_active_parameters() == dense_like.num_parameters()


def test_routing_stats_are_reported_per_layer_and_recurrence_step() -> None:
    out = tiny("more_b", 3)(torch.randint(0, 64, (2, 16)))
    L = TINY["n_layer"]
    seen = [(r.layer, r.step) for r in out.routing]
    assert seen == [(0, 0)] + [(layer, step) for step in range(3) for layer in range(1, L - 1)] + [(L - 1, 0)]
    for r in out.routing:
        assert r.stats.tokens_per_expert.sum().item() == 2 * 16 * TINY["top_k"]
        assert 0.0 <= r.stats.router_entropy.item() <= 1.0


def test_more_d_supervises_every_pass() -> None:
    model = tiny("more_d", 3, load_balance_coef=0.0, z_loss_coef=0.0)
    idx = torch.randint(0, 64, (2, 16))
    out = model(idx[:, :-1], idx[:, 1:])
    # the objective averages all passes, so it differs from the last pass's LM loss
    assert out.loss.item() != pytest.approx(out.lm_loss.item())
    same = tiny("more_a", 3, load_balance_coef=0.0, z_loss_coef=0.0)(idx[:, :-1], idx[:, 1:])
    assert same.loss.item() == pytest.approx(same.lm_loss.item())


@pytest.mark.parametrize("pos_encoding", ["rope", "learned"])
def test_checkpoint_round_trip_gives_identical_logits(tmp_path, pos_encoding: str) -> None:
    model = tiny("more_c", 2, vocab_size=259, pos_encoding=pos_encoding).eval()
    tokenizer = ByteTokenizer()
    save_checkpoint(model, tokenizer, tmp_path / "ckpt", metadata={"step": 7})
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json"}

    loaded, loaded_tokenizer, metadata = load_checkpoint(tmp_path / "ckpt")
    idx = torch.tensor([tokenizer.encode("to be or not to")])
    assert torch.equal(model(idx).logits, loaded(idx).logits)
    assert loaded.cfg == model.cfg
    assert metadata == {"step": 7}
    assert loaded_tokenizer.decode(idx[0].tolist()) == "to be or not to"


def test_loading_something_that_is_not_a_checkpoint_fails_clearly(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_checkpoint(tmp_path)


def test_generation_greedy_is_deterministic_and_sampling_respects_top_k() -> None:
    model = tiny("more_a", 2).eval()
    prompt = torch.randint(0, 64, (2, 5))
    greedy = model.generate(prompt, 8, greedy=True)
    assert greedy.shape == (2, 13)
    assert torch.equal(greedy[:, :5], prompt)
    assert torch.equal(greedy, model.generate(prompt, 8, temperature=0))

    # with top_k=1, sampling can only ever pick the argmax
    sampled = model.generate(prompt, 8, temperature=1.5, top_k=1, generator=torch.Generator().manual_seed(3))
    assert torch.equal(sampled, greedy)
    a = model.generate(prompt, 8, temperature=1.0, generator=torch.Generator().manual_seed(5))
    b = model.generate(prompt, 8, temperature=1.0, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_config_reports_every_error_at_once() -> None:
    errors = MoREConfig(variant="more_z", top_k=5, num_experts=4, d_model=30, n_head=4).errors()
    joined = "\n".join(errors)
    assert "variant: got 'more_z'" in joined
    assert "top_k: got 5, expected <= num_experts (4)" in joined
    assert "d_model: got 30" in joined
    with pytest.raises(ValueError, match="variant"):
        MoRELM(MoREConfig(variant="more_z"))
