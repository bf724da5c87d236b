"""Search-space parsing and conversion."""

from __future__ import annotations

from ray import tune

from orchestrator.space import Dim, grid_points, num_grid_points, parse_dim, to_tune_space


def test_parse_dims() -> None:
    assert parse_dim("train.lr", {"loguniform": [1e-4, 1e-2]}) == (Dim("train.lr", "loguniform", (1e-4, 1e-2)), [])
    assert parse_dim("model.top_k", {"randint": [1, 3]})[0].values() == [1, 2, 3]
    dim, errors = parse_dim("x", {"choice": [1], "grid": [2]})
    assert dim is None and errors[0].startswith("sweep.space.x: got ['choice', 'grid'], expected a mapping")


def test_grid_points_cover_every_grid_value() -> None:
    dims = [Dim("model.variant", "grid", ("base", "more_a", "more_c")), Dim("model.top_k", "choice", (1, 2))]
    points = grid_points(dims, seed=0)
    assert [p["model.variant"] for p in points] == ["base", "more_a", "more_c"]
    assert all(p["model.top_k"] in (1, 2) for p in points) and num_grid_points(dims) == 3
    assert grid_points(dims, seed=0) == points  # seeded


def test_to_tune_space() -> None:
    dims = [Dim("a", "grid", (1, 2)), Dim("b", "randint", (1, 3))]
    optuna_space = to_tune_space(dims, "optuna")
    assert isinstance(optuna_space["a"], tune.search.sample.Categorical)
    assert optuna_space["b"].upper == 4  # inclusive hi -> Tune's exclusive upper bound
    assert to_tune_space(dims, "random")["a"] == {"grid_search": [1, 2]}
