"""The equal-FLOPs budget: counted FLOPs follow the variant's compute, steps fit the budget, the recipe applies it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from orchestrator.config import load_experiment
from orchestrator.experiment import ExperimentError
from trainables.more.budget import forward_flops, plan_steps, train_flops_per_step
from trainables.more.config import MoREConfig
from trainables.more.recipe import MoRERecipe
from trainables.training import WorkerInfo

EXPERIMENT = Path(__file__).resolve().parents[3] / "experiments" / "more_research.yaml"
TINY = MoREConfig(block_size=16, n_layer=3, n_head=2, d_model=32, num_experts=4, top_k=2, expert_hidden=64,
                  num_recurrences=2)


def test_recurrent_variants_cost_more_per_step_and_get_fewer_steps() -> None:
    per_step = {v: train_flops_per_step(dataclasses.replace(TINY, variant=v), batch_size=4)
                for v in ("base", "more_a", "more_b", "more_c", "more_d")}
    assert per_step["base"] < per_step["more_b"] < per_step["more_a"] <= per_step["more_c"]
    assert per_step["more_a"] <= per_step["more_d"]
    budget = 500 * per_step["base"]
    plans = {v: plan_steps(budget, f, max_steps=10_000) for v, f in per_step.items()}
    assert plans["base"].steps == 500
    for v, plan in plans.items():
        assert plan.train_flops <= budget < plan.train_flops + per_step[v]  # the most steps that fit
    assert plans["more_a"].steps < plans["more_b"].steps < plans["base"].steps


def test_flops_scale_with_batch_accumulation_and_workers_and_ignore_the_batch_content() -> None:
    one = forward_flops(TINY, batch_size=2)
    assert forward_flops(TINY, batch_size=4) == 2 * one
    assert train_flops_per_step(TINY, 2, grad_accum_steps=3, world_size=2) == 3 * one * 3 * 2


def test_max_steps_caps_the_budget_and_a_too_small_budget_names_the_field() -> None:
    assert plan_steps(1e18, 1000, max_steps=50).steps == 50
    with pytest.raises(ValueError, match="model.flops_budget: got"):
        plan_steps(999.0, 1000, max_steps=50)


def test_recipe_derives_max_steps_on_its_own_copy_of_the_experiment() -> None:
    exp = load_experiment(EXPERIMENT, ["model.d_model=32", "model.n_head=2", "model.expert_hidden=64",
                                       "model.block_size=16", "train.batch_size=4", "model.variant=more_a",
                                       "model.flops_budget=1e10"])
    recipe = MoRERecipe(exp, WorkerInfo())
    recipe.setup()
    per_step = train_flops_per_step(exp.model, 4)
    assert recipe.flops_plan is not None and recipe.flops_plan.flops_per_step == per_step
    assert recipe.experiment.train.max_steps == int(1e10 // per_step) and exp.train.max_steps == 5000
    assert recipe.mixture is not None and recipe.mixture.names == ("arithmetic",)
    val = recipe.val_tokens.tolist()
    assert "+" in recipe.tokenizer.decode(val[:40]) and "-" not in recipe.tokenizer.decode(val[:2000])


def test_config_errors_name_the_fields() -> None:
    assert "flops_budget: got 0, expected null or > 0" in MoREConfig(flops_budget=0).errors()
    with pytest.raises(ExperimentError) as err:
        load_experiment(EXPERIMENT, ["data.arith_ops=['/']", "model.flops_budget=-1"])
    text = "\n".join(err.value.errors)
    assert "data.arith_ops: got ['/']" in text and "model.flops_budget: got -1" in text
