"""The DyLoRA-MoE parts without Ray: the two-phase LR scheduler (absolute rates per group), the novelty
detector, the expert pool and its router, the pool checkpoint, and the config checks."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from orchestrator.config import load_experiment
from orchestrator.experiment import ExperimentError
from trainables.dylora.checkpoint import load_pool, save_pool
from trainables.dylora.config import DyLoRAConfig
from trainables.dylora.experts import DyLoRAModel, ExpertManager, content_mask, template_lengths
from trainables.dylora.novelty import NoveltyDetector
from trainables.dylora.schedule import TwoPhaseLRScheduler
from trainables.lm import load_base

REPO = Path(__file__).resolve().parents[3]
TINY_YAML = REPO / "experiments" / "dylora_tiny.yaml"


def _pool(cfg: DyLoRAConfig, seed: int = 0) -> tuple[DyLoRAModel, ExpertManager, object]:
    base, tokenizer = load_base("tiny-llama")
    model = DyLoRAModel(base, cfg)
    model.set_template(tokenizer)
    return model, ExpertManager(model, cfg, seed), tokenizer


# -- TwoPhaseLRScheduler --------------------------------------------------------------------------


def _optimizer(groups: int, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW([{"params": [torch.nn.Parameter(torch.zeros(2))], "expert": g} for g in range(groups)],
                             lr=lr)


def _run(scheduler: TwoPhaseLRScheduler, optimizer: torch.optim.Optimizer, steps: int) -> list[list[float]]:
    """The absolute LR each group gets at optimizer steps 0..steps-1."""
    rates = []
    for _ in range(steps):
        rates.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return rates


def test_two_phase_lr_gives_absolute_rates_per_group() -> None:
    cfg = DyLoRAConfig(seed_steps=8, seed_warmup_steps=2, seed_lr_multiplier=5.0, consolidation_lr_multiplier=0.5)
    optimizer = _optimizer(3, lr=2e-4)
    scheduler = TwoPhaseLRScheduler(optimizer, cfg, [0, None, None])
    rates = _run(scheduler, optimizer, 10)
    # expert 0, born at step 0: warm-up 5e-4, 1e-3; flat 1e-3 until the decay (last 2 of 8 seeding steps)
    # falls to 0.5 x 2e-4 = 1e-4 linearly; then consolidation at 1e-4. Unborn experts get 0.
    expected0 = [5e-4, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 5.5e-4, 1e-4, 1e-4, 1e-4]
    assert [r[0] for r in rates] == pytest.approx(expected0)
    assert all(r[1] == 0.0 and r[2] == 0.0 for r in rates)

    # an expert born after 10 steps seeds from step 10 while expert 0, frozen, gets exactly 0
    scheduler.expert_added(1, 10)
    scheduler.expert_frozen(0, 10)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.0, 5e-4, 0.0])  # applied at once
    rates = _run(scheduler, optimizer, 9)
    assert [r[1] for r in rates] == pytest.approx(expected0[:9])
    assert all(r[0] == 0.0 for r in rates)
    assert scheduler.phase_of(1, 12) == "seeding" and scheduler.phase_of(1, 18) == "consolidation"
    assert scheduler.phase_of(0, 12) == "frozen" and scheduler.phase_of(2, 12) == "unborn"


def test_the_public_lambda_lr_bug_is_not_ours() -> None:
    """LambdaLR multiplies the base LR by what its lambda returns: a lambda returning an absolute
    rate (the public DyLoRA-MoE code) trains at base x rate. Ours never exceeds base x peak."""
    cfg = DyLoRAConfig(seed_steps=4, seed_warmup_steps=0, seed_lr_multiplier=3.0)
    buggy_optimizer = _optimizer(1, lr=1e-4)
    torch.optim.lr_scheduler.LambdaLR(buggy_optimizer, lambda s: 1e-4)  # "absolute" 1e-4 ...
    assert buggy_optimizer.param_groups[0]["lr"] == pytest.approx(1e-8)  # ... gives 1e-8
    optimizer = _optimizer(1, lr=1e-4)
    TwoPhaseLRScheduler(optimizer, cfg, [0])
    assert optimizer.param_groups[0]["lr"] == pytest.approx(3e-4)


def test_cyclical_seeding_and_state_round_trip() -> None:
    cfg = DyLoRAConfig(seed_schedule="cyclical", seed_steps=8, seed_cycle_steps=4, seed_lr_multiplier=3.0,
                       consolidation_lr_multiplier=1.0)
    optimizer = _optimizer(2, lr=1.0)
    scheduler = TwoPhaseLRScheduler(optimizer, cfg, [0, None])
    rates = [r[0] for r in _run(scheduler, optimizer, 9)]
    assert rates == pytest.approx([1.0, 2.0, 3.0, 2.0, 1.0, 2.0, 3.0, 2.0, 1.0])  # two triangles, then 1x
    scheduler.expert_added(1, 9)
    buffer = io.BytesIO()
    torch.save(scheduler.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)  # the checkpoint's train state loads weights-only
    other = TwoPhaseLRScheduler(_optimizer(2, lr=1.0), cfg, [None, None])
    other.load_state_dict(state)
    assert other.births == [0, 9] and other.last_epoch == scheduler.last_epoch
    assert other.get_lr() == pytest.approx(scheduler.get_lr())


# -- NoveltyDetector -------------------------------------------------------------------------------


def test_loss_criterion_is_a_two_sided_change_test_after_the_cooldown() -> None:
    cfg = DyLoRAConfig(single_expert_criterion="loss", detector_window=4, cooldown_steps=2, loss_z_threshold=3.0,
                       detector_patience=2)
    detector = NoveltyDetector(cfg)
    # a noisy plateau around 1.0 after a first outlier, then the loss *drops* to 0.7: an easier skill is new too
    losses = [3.0, 1.05, 0.95, 1.02, 0.98, 1.03, 0.97, 1.0, 0.72, 0.68, 0.71, 0.69, 0.70]
    made = [detector.observe(step, 1, 0.0, loss, pool_full=False) for step, loss in enumerate(losses, start=1)]
    assert made[:7] == [None] * 7  # two full windows are needed
    decided = {d.step: d for d in made if d is not None}
    assert all(d.criterion == "loss" and d.threshold == 3.0 for d in decided.values())
    before, now = [1.03, 0.97, 1.0, 0.72], [0.68, 0.71, 0.69, 0.70]
    m0, m1 = sum(before) / 4, sum(now) / 4
    pooled = (sum((x - m0) ** 2 for x in before) + sum((x - m1) ** 2 for x in now)) / 6
    assert decided[13].value == pytest.approx((m1 - m0) / (pooled * 2 / 4) ** 0.5)  # z of the last two windows
    assert [abs(decided[s].value) > 3.0 for s in range(8, 14)] == [False, False, False, False, True, True]
    # patience 2: the first window over the threshold decides nothing, the second adds the expert
    assert [decided[s].novel for s in range(8, 14)] == [False] * 5 + [True]


def test_prototype_criterion_needs_a_window_and_compares_the_distance() -> None:
    cfg = DyLoRAConfig(single_expert_criterion="prototype", multi_expert_criterion="prototype",
                       distance_threshold=0.01, cooldown_steps=1)
    detector = NoveltyDetector(cfg)
    assert detector.observe(1, 1, 0.0, 1.0, False, distance=None) is None  # the window is not full yet
    quiet = detector.observe(2, 1, 0.0, 1.0, False, distance=0.002)
    assert quiet.criterion == "prototype" and not quiet.novel and quiet.threshold == 0.01
    assert detector.observe(3, 2, 0.9, 1.0, False, distance=0.02).novel  # with two experts too, when configured


def test_entropy_criterion_and_a_full_pool() -> None:
    cfg = DyLoRAConfig(detector_window=3, cooldown_steps=0, entropy_threshold=0.6)
    detector = NoveltyDetector(cfg)
    values = [0.2, 0.3, 0.25, 0.9, 0.95, 0.9]
    made = [detector.observe(s, 2, v, 1.0, pool_full=False) for s, v in enumerate(values)]
    assert [d.novel for d in made if d] == [False, False, True, True]
    assert made[3].criterion == "entropy" and made[3].value == pytest.approx((0.3 + 0.25 + 0.9) / 3)
    full = NoveltyDetector(cfg)
    assert not any(d.novel for d in (full.observe(s, 2, 0.99, 1.0, pool_full=True) for s in range(5)) if d)
    state = detector.state_dict()
    restored = NoveltyDetector(cfg)
    restored.load_state_dict(state)
    assert restored.decisions == detector.decisions and list(restored.entropies) == list(detector.entropies)


# -- the pool, the router, the checkpoint ---------------------------------------------------------


def test_expert_manager_adds_fresh_seeded_experts_with_their_own_groups() -> None:
    cfg = DyLoRAConfig(max_experts=3, rank=4, freeze_old_experts=True)
    model, manager, _ = _pool(cfg, seed=7)
    groups = manager.param_groups(1e-3)
    assert [g["expert"] for g in groups] == [0, 1, 2]
    per_group = [{id(p) for p in g["params"]} for g in groups]
    assert not (per_group[0] & per_group[1]) and len(per_group[0]) == 2 * len(model.expert_linears())
    manager.add_expert(0)
    manager.add_expert(5, prototype=torch.randn(model.config.hidden_size))
    layer = model.expert_linears()[0]
    assert torch.count_nonzero(layer.lora_B[1]) == 0 and torch.count_nonzero(layer.lora_A[1]) > 0
    assert not torch.equal(layer.lora_A[0], layer.lora_A[1])  # each slot its own init
    other_model, other, _ = _pool(cfg, seed=7)
    other.add_expert(0)
    other.add_expert(5)
    assert torch.equal(other_model.expert_linears()[0].lora_A[1], layer.lora_A[1])  # same seed: same on every rank
    assert manager.experts[0].frozen_step == 5 and manager.experts[1].frozen_step is None
    assert model.router.num_active == 2 and model.router.mode == "dense"  # expert 1 is immature
    for step in range(6, 5 + cfg.maturity_steps + 1):
        manager.step_done(step, 1.0)
    assert model.router.mode == "sparse"
    manager.add_expert(50)
    assert manager.full
    with pytest.raises(RuntimeError, match="full"):
        manager.add_expert(51)


def test_router_dense_mixing_then_sparse_delegation() -> None:
    cfg = DyLoRAConfig(max_experts=2, rank=4, router_temperature=0.1)
    model, manager, tokenizer = _pool(cfg)
    d = model.config.hidden_size
    manager.add_expert(0, prototype=torch.nn.functional.one_hot(torch.tensor(0), d).float())
    manager.add_expert(1, prototype=torch.nn.functional.one_hot(torch.tensor(1), d).float())
    features = torch.nn.functional.normalize(torch.tensor([[1.0, 0.2] + [0.0] * (d - 2)]), dim=-1)
    weights, probs = model.router.route(features)
    assert model.router.mode == "dense" and torch.equal(weights, probs) and 0.5 < probs[0, 0] < 1
    model.router.mature[:2] = True
    weights, _ = model.router.route(features)
    assert weights.tolist() == [[1.0, 0.0]]
    model.router.update_prototypes(torch.ones(2, d), torch.tensor([3.0, 0.0]))  # mature prototypes do not move
    assert model.router.prototypes[0, 1] == 0.0


def test_routing_pools_the_prompt_content_only() -> None:
    _, tokenizer = load_base("tiny-llama")
    before, after = template_lengths(tokenizer)
    assert before > 0 and after > 0  # <|im_start|>user\n ... <|im_end|>\n<|im_start|>assistant\n
    prompt = torch.tensor([[0, 1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1, 1]])
    content = content_mask(prompt, 2, 1)
    assert content.tolist() == [[0, 0, 0, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1, 1, 0]]
    assert content_mask(torch.tensor([[1, 1, 0]]), 2, 1).tolist() == [[1, 1, 0]]  # nothing left: whole prompt


def test_pool_checkpoint_reloads_to_identical_logits(tmp_path: Path) -> None:
    cfg = DyLoRAConfig(max_experts=3, rank=4)
    model, manager, _ = _pool(cfg)
    manager.add_expert(0)
    manager.add_expert(4, prototype=torch.randn(model.config.hidden_size))
    with torch.no_grad():
        for layer in model.expert_linears():
            for slot in (0, 1):
                layer.lora_B[slot].normal_(0, 0.05)
    detector = NoveltyDetector(cfg)
    detector.observe(30, 2, 0.5, 1.0, pool_full=False)
    save_pool(model, manager, detector, cfg, tmp_path, {"step": 9})
    assert {p.name for p in tmp_path.iterdir()} == {"config.json", "experts.safetensors"}
    loaded, _, manifest = load_pool(tmp_path)
    assert manifest.extra["num_experts"] == 2 and manifest.extra["pool"]["experts"][0]["frozen_step"] == 4
    assert manifest.extra["detector"]["entropies"] == [0.5]
    ids = torch.randint(3, 250, (2, 10))
    with torch.no_grad():
        assert torch.allclose(model.eval()(ids).logits, loaded(ids).logits, atol=1e-6)


# -- config checks ---------------------------------------------------------------------------------


def test_the_experiment_checks_name_the_bad_field() -> None:
    load_experiment(TINY_YAML)  # valid as shipped
    cases = {
        "train.max_steps=13": "train.max_steps: got 13, expected 12",
        "train.eval_every=4": "train.eval_every: got 4",
        "data.phases=[{skill: cooking, steps: 3}]": "data.phases[0].skill: got 'cooking'",
        "model.method=online": "model.method: got 'online'",
        "model.max_experts=1": "model.max_experts: got 1, expected >= 2",
        "evaluate.k=[1,5]": "evaluate.k: got [1, 5]",
    }
    for override, message in cases.items():
        with pytest.raises(ExperimentError, match=message.replace("[", r"\[").replace("]", r"\]")):
            load_experiment(TINY_YAML, [override])
